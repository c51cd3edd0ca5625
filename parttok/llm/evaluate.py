"""Measures of a tuned motion language model, by a judge that shares no weights with it.

- text-to-motion: for each held-out clip, a motion generated from its caption (its length
  requested), recognised by ``MotionJudge`` (content and style accuracy), FID and diversity
  in the judge's embedding; the same for the real clips as the ceiling;
- captioning: content and style named in the caption of each held-out clip's tokens, and
  BLEU-4 (sacrebleu) and ROUGE-L (rouge-score) against its reference caption;
- prediction: MPJPE of the predicted second half of each clip against "hold the last pose";
- pose: MPJPE and PA-MPJPE of the 3D pose estimated from one frame's detector-like 2D
  keypoints (random camera, pixel noise, missing joints, as ``parttok instruct`` makes
  them), with the pose tokenizer's own reconstruction of that frame as the floor;
- language kept: accuracy on general questions and the KL divergence of the next-token
  distribution from the base's, on those questions' prompts.

Captions held out of tuning (``exclude_captions`` of the tuning config) are reported apart:
``seen`` and ``unseen`` content x style pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from parttok.data import HumanML3DFolder
from parttok.errors import InputError
from parttok.features import features_to_joints
from parttok.llm.recogniser import MotionJudge, caption_labels, diversity, frechet_distance

QUESTIONS_FILE = Path(__file__).resolve().parent / "general_questions.yaml"


@dataclass(frozen=True)
class LabelledClip:
    """A real clip with the content and style its caption names."""

    clip_id: str
    features: np.ndarray  # (T, 263) raw
    caption: str
    content: int
    style: int


def labelled_clips(folders: list[str], split: str | None, limit: int | None = None):
    """Clips whose first caption names a Bandai Namco content and style (others skipped),
    at most ``limit`` evenly spaced ones."""
    clips = []
    for folder in map(HumanML3DFolder, folders):
        for clip_id in folder.ids(split):
            captions = folder.captions(clip_id)
            if not captions:
                continue
            content, style = caption_labels(captions[0].text)
            if content is None or style is None:
                continue
            clips.append(
                LabelledClip(clip_id, folder.features(clip_id), captions[0].text, content, style)
            )
    if limit is not None and len(clips) > limit:
        clips = [clips[int(i * len(clips) / limit)] for i in range(limit)]
    return clips


def train_judge(folders: list[str], split: str = "train", steps: int = 1500) -> MotionJudge:
    """A recogniser trained on the real clips of ``split``."""
    clips = labelled_clips(folders, split)
    if not clips:
        raise InputError("no clips with content and style captions to train the judge on")
    return MotionJudge.train(
        [c.features for c in clips], [(c.content, c.style) for c in clips], steps=steps
    )


def _accuracy(predicted: np.ndarray, truth: np.ndarray, rows: np.ndarray) -> float | None:
    return float((predicted[rows] == truth[rows]).mean()) if rows.any() else None


def _by_pair(values: dict, seen: np.ndarray, compute) -> dict:
    return {"all": compute(np.ones_like(seen)), "seen": compute(seen), "unseen": compute(~seen)}


def text_to_motion(llm, judge: MotionJudge, clips: list[LabelledClip], seen, batch_size=16, seed=0):
    """Generated motion from each clip's caption, at its length, judged like real motion."""
    steps = [max(1, len(c.features) // llm.vocab.frames_per_step) for c in clips]
    seconds = [s * llm.vocab.frames_per_step / llm.vocab.fps for s in steps]
    generated = []
    for start in range(0, len(clips), batch_size):
        chunk = slice(start, start + batch_size)
        generated += llm.generate(
            [c.caption for c in clips[chunk]], seconds=seconds[chunk], seed=seed + start
        )
    features = [llm.tokenizer.decode(g.codes) for g in generated]
    content, style, embedding = judge.judge(features)
    real_content, real_style, real_embedding = judge.judge([c.features for c in clips])
    truth_content = np.array([c.content for c in clips])
    truth_style = np.array([c.style for c in clips])
    lengths = np.array([len(g.codes) for g in generated])

    def scores(rows, predicted_content, predicted_style, embeddings):
        return {
            "content_accuracy": _accuracy(predicted_content, truth_content, rows),
            "style_accuracy": _accuracy(predicted_style, truth_style, rows),
            "clips": int(rows.sum()),
        } | ({"diversity": diversity(embeddings[rows])} if rows.sum() > 1 else {})

    result = {}
    for name, rows in (("all", np.ones(len(clips), bool)), ("seen", seen), ("unseen", ~seen)):
        result[name] = {
            "generated": scores(rows, content, style, embedding),
            "real": scores(rows, real_content, real_style, real_embedding),
        }
        if rows.sum() > 2:
            result[name]["generated"]["fid"] = frechet_distance(
                embedding[rows], real_embedding[rows]
            )
    result["length_steps_error"] = float(np.abs(lengths - np.array(steps)).mean())
    return result, generated


def captioning(llm, clips: list[LabelledClip], seen, batch_size=16):
    """Content and style named in captions of the clips' tokens; BLEU-4 and ROUGE-L."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    motions = llm.read_batch([c.features for c in clips])
    captions = []
    for start in range(0, len(motions), batch_size):
        captions += llm.caption(motions[start : start + batch_size])
    named = [caption_labels(text) for text in captions]
    content = np.array([-1 if n[0] is None else n[0] for n in named])
    style = np.array([-1 if n[1] is None else n[1] for n in named])
    truth_content = np.array([c.content for c in clips])
    truth_style = np.array([c.style for c in clips])
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    result = {}
    for name, rows in (("all", np.ones(len(clips), bool)), ("seen", seen), ("unseen", ~seen)):
        if not rows.any():
            continue
        hypotheses = [captions[i] for i in np.flatnonzero(rows)]
        references = [clips[i].caption for i in np.flatnonzero(rows)]
        bleu = BLEU(max_ngram_order=4).corpus_score(hypotheses, [references]).score
        rouge = np.mean(
            [
                scorer.score(r, h)["rougeL"].fmeasure
                for r, h in zip(references, hypotheses, strict=True)
            ]
        )
        result[name] = {
            "content_accuracy": _accuracy(content, truth_content, rows),
            "style_accuracy": _accuracy(style, truth_style, rows),
            "bleu4": float(bleu),
            "rouge_l": float(rouge),
            "clips": int(rows.sum()),
        }
    examples = [
        {"clip": c.clip_id, "reference": c.caption, "caption": t}
        for c, t in zip(clips[:5], captions[:5], strict=False)
    ]
    return result, examples


def prediction(llm, clips: list[LabelledClip], batch_size=16, seed=0):
    """MPJPE (mm) of the continuation of each clip's first half, against holding its last
    pose, on the second half's frames."""
    fps_step = llm.vocab.frames_per_step
    codes = llm.tokenizer.encode_batch([c.features for c in clips])
    errors, holds = [], []
    for start in range(0, len(clips), batch_size):
        chunk = list(range(start, min(start + batch_size, len(clips))))
        usable = [i for i in chunk if len(codes[i]) >= 4]
        groups: dict[int, list[int]] = {}
        for i in usable:
            groups.setdefault(len(codes[i]) - len(codes[i]) // 2, []).append(i)
        for rest, indices in groups.items():
            prompts = [codes[i][: len(codes[i]) // 2] for i in indices]
            seconds = rest * fps_step / llm.vocab.fps
            predicted = llm.predict(prompts, seconds=seconds, seed=seed + start)
            for i, prompt, answer in zip(indices, prompts, predicted, strict=True):
                whole = np.concatenate([prompt, answer.codes])
                joints = features_to_joints(llm.tokenizer.decode(whole))  # (T, 22, 3)
                real = features_to_joints(clips[i].features[: len(joints)])
                cut = len(prompt) * fps_step
                future = slice(cut, min(len(joints), len(real)))
                errors.append(np.linalg.norm(joints[future] - real[future], axis=-1).mean())
                hold = np.repeat(real[cut - 1 : cut], future.stop - cut, axis=0)
                holds.append(np.linalg.norm(hold - real[future], axis=-1).mean())
    return {
        "mpjpe_mm": 1000 * float(np.mean(errors)),
        "hold_last_pose_mm": 1000 * float(np.mean(holds)),
        "clips": len(errors),
    }


def pose_estimation(llm, clips: list[LabelledClip], batch_size=16, seed=0, noise=3.0, missing=0.1):
    """MPJPE and PA-MPJPE (mm) of poses estimated from keypoints of one random frame per
    clip, and the same for the pose tokenizer's reconstruction of that frame (the floor)."""
    import random

    from parttok.instruct import detected_keypoints, pose_joints, random_camera
    from parttok.metrics import joint_errors, procrustes_align

    rng = random.Random(seed)
    frames = [c.features[rng.randrange(len(c.features))][None] for c in clips]  # (1, 263) each
    truth = np.concatenate([pose_joints(f) for f in frames])  # (N, 22, 3)
    keypoints = [
        detected_keypoints(random_camera(rng).project(joints), rng, noise, missing)
        for joints in truth
    ]
    codes = []
    for start in range(0, len(clips), batch_size):
        codes += [g.codes for g in llm.pose(keypoints[start : start + batch_size], seed=seed)]
    tokenizer = llm.pose_tokenizer
    estimated = np.concatenate([pose_joints(f[:1]) for f in tokenizer.decode_batch(codes)])
    floor_codes = tokenizer.encode_batch(frames)
    floor = np.concatenate([pose_joints(f[:1]) for f in tokenizer.decode_batch(floor_codes)])

    def errors(joints: np.ndarray) -> dict:
        return {
            "mpjpe_mm": 1000 * float(joint_errors(joints, truth).mean()),
            "pa_mpjpe_mm": 1000 * float(np.linalg.norm(
                procrustes_align(joints, truth) - truth, axis=-1).mean()),
        }  # fmt: skip

    return {**errors(estimated), "floor": errors(floor), "clips": len(clips)}


def load_questions(path: str | Path = QUESTIONS_FILE) -> list[tuple[str, list[str]]]:
    """(question, accepted answers) pairs of a general-question file."""
    rows = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return [(row["q"], [str(a).lower() for a in row["a"]]) for row in rows]


def _right(answer: str, accepted: list[str]) -> bool:
    import re

    text = answer.lower()
    return any(re.search(r"(?<![a-z0-9])" + re.escape(a) + r"(?![a-z0-9])", text) for a in accepted)


def general_answers(chat, questions) -> list[bool]:
    """Whether ``chat`` (a list of prompts -> answers function) answers each question right."""
    answers = []
    for start in range(0, len(questions), 16):
        answers += chat([q for q, _ in questions[start : start + 16]])
    return [_right(a, accepted) for a, (_, accepted) in zip(answers, questions, strict=True)]


@torch.no_grad()
def next_token_kl(model, base_model, hf_tokenizer, prompts: list[str], router=None) -> float:
    """Mean KL(base || tuned) of the next-token distribution after each chat prompt, over
    the base's vocabulary (the tuned model's motion tokens count as mass it moved away);
    a MoE-LoRA's ``router`` weights the tuned model's experts."""
    from parttok.llm.chat import prompt_text

    if router is not None:
        router(prompts)
    hf_tokenizer.padding_side = "left"
    texts = [prompt_text(hf_tokenizer, p) for p in prompts]
    batch = hf_tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    base_logits = base_model(**batch).logits[:, -1].float()  # (B, V)
    tuned_all = model(**batch).logits[:, -1].float()  # (B, V + motion tokens)
    tuned_logits = tuned_all[:, : base_logits.shape[1]]
    log_p = torch.log_softmax(base_logits, -1)
    log_q = tuned_logits - torch.logsumexp(tuned_all, -1, keepdim=True)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
