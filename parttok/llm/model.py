"""A tuned motion language model at work: text -> motion, motion -> text, motion -> more,
2D keypoints -> 3D pose.

``MotionLLM.from_pretrained(path)`` loads a model that ``parttok tune`` exported (None: the
one shipped with parttok) with the motion tokenizer its codes belong to. Motion answers are
decoded under ``MotionGrammar``: the start token, then one code token per part in the
vocabulary's order, step after step, then the end token, so every answer parses; a requested
duration fixes the number of steps. Captions are decoded greedily with the motion tokens
suppressed. Sampling is seeded: the same seed gives the same motion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from parttok.errors import InputError, TokenParseError
from parttok.instruct import load_templates
from parttok.llm.chat import prompt_text
from parttok.llm.features import FEATURE_TOKEN
from parttok.llm.store import load_tuned
from parttok.tokens import Vocabulary, codes_to_text, text_to_codes

MAX_SECONDS = 20.0


class MotionGrammar:
    """A logits processor that lets a batch of answers say only ``vocab``'s motions:
    ``start``, then steps of one code token per part in order, then ``end`` and ``eos``.

    ``steps``: exactly that many steps (a requested duration); otherwise between
    ``min_steps`` and ``max_steps``. ``prompt_length``: where the answers begin.
    """

    def __init__(
        self,
        hf_tokenizer,
        vocab: Vocabulary,
        prompt_length: int,
        min_steps: int = 1,
        max_steps: int = 50,
        steps: int | None = None,
    ) -> None:
        ids = hf_tokenizer.convert_tokens_to_ids
        self.start, self.end = ids(vocab.start), ids(vocab.end)
        self.stop = hf_tokenizer.eos_token_id
        parts = np.arange(vocab.num_parts)[:, None]
        codes = np.arange(vocab.codebook_size)[None, :]
        self.part_ids = torch.tensor(
            [ids(list(row)) for row in vocab.code_tokens[parts, codes]]
        )  # (P, K)
        self.prompt_length = prompt_length
        self.min_steps, self.max_steps = (steps, steps) if steps else (min_steps, max_steps)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        answer = input_ids[:, self.prompt_length :]  # (B, n): every row is n tokens along
        allowed = torch.zeros_like(scores, dtype=torch.bool)  # (B, V)
        count = answer.shape[1]
        if count == 0:
            allowed[:, self.start] = True
        else:
            codes = count - 1
            part, steps = codes % len(self.part_ids), codes // len(self.part_ids)
            if steps < self.max_steps:
                allowed[:, self.part_ids[part]] = True
            if part == 0 and steps >= self.min_steps:
                allowed[:, self.end] = True
            ended = (answer == self.end).any(dim=1) | (answer == self.stop).any(dim=1)
            allowed[ended] = False
            allowed[ended, self.stop] = True
        return scores.masked_fill(~allowed, float("-inf"))


def answers(
    model,
    hf_tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    processor=None,
    sample=False,
    router=None,
    **kw,
) -> list[str]:
    """Answers (texts) of ``model`` to chat prompts, batched with left padding; a logits
    ``processor`` constrains them; a MoE-LoRA's ``router`` weights its experts first."""
    if router is not None:
        router(prompts)
    texts = [prompt_text(hf_tokenizer, p) for p in prompts]
    hf_tokenizer.padding_side = "left"
    batch = hf_tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    extra = {"logits_processor": [processor]} if processor is not None else {}
    with torch.inference_mode():
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            pad_token_id=hf_tokenizer.pad_token_id,
            eos_token_id=hf_tokenizer.eos_token_id,
            **extra,
            **kw,
        )
    generated = out[:, batch["input_ids"].shape[1] :]
    return [hf_tokenizer.decode(row, skip_special_tokens=True) for row in generated]


@dataclass(frozen=True)
class Generated:
    """A motion an LLM wrote: codes (S, P) and the text they came from."""

    codes: np.ndarray
    text: str


class MotionLLM:
    """A tuned language model and the motion tokenizer of its vocabulary."""

    def __init__(
        self,
        model,
        hf_tokenizer,
        vocabularies: list[Vocabulary],
        tokenizer,
        meta: dict,
        pose_tokenizer=None,
        router=None,
    ):
        self.model, self.hf_tokenizer, self.router = model, hf_tokenizer, router
        self.projector: torch.nn.Module | None = None  # a features model's (reads, not writes)
        self.feature_token_id: int | None = None
        self.vocab = vocabularies[0] if vocabularies else None
        self.pose_vocab = vocabularies[1] if len(vocabularies) > 1 else None
        self.vocabularies = vocabularies
        self.tokenizer, self.pose_tokenizer = tokenizer, pose_tokenizer
        self.meta = meta
        self.templates = load_templates()
        self.motion_token_ids = sorted(set(meta["token_ids"]))

    @classmethod
    def from_pretrained(
        cls, path: str | Path | None = None, base: str | None = None, checkpoint: str | None = None
    ) -> MotionLLM:
        """Load a tuned model folder (None: shipped) on its base (or ``base``) with its motion
        tokenizer (the recorded one, or ``checkpoint``)."""
        from parttok.tokenizer import Tokenizer

        tuned = load_tuned(path, base)
        meta, vocabularies = tuned.meta, tuned.vocabularies
        source = checkpoint or meta["tokenizers"][0]
        tokenizers = [Tokenizer.from_pretrained(source)]
        if len(vocabularies) > 1 and meta["tokenizers"][1:]:
            tokenizers.append(Tokenizer.from_pretrained(meta["tokenizers"][1]))
        for vocab, tokenizer in zip(vocabularies, tokenizers, strict=False):
            if vocab.identity not in (None, tokenizer.identity):
                raise InputError(
                    f"the language model's tokens belong to tokenizer {vocab.identity}, "
                    f"not {tokenizer.identity} (pass the right one with --checkpoint)"
                )
        pose = tokenizers[1] if len(tokenizers) > 1 else None
        llm = cls(tuned.model, tuned.hf_tokenizer, vocabularies, tokenizers[0], meta, pose)
        llm.router, llm.projector = tuned.router, tuned.projector
        llm.feature_token_id = tuned.feature_token_id
        return llm

    # --- prompts -------------------------------------------------------------------------
    def _prompt(self, group: str, with_seconds: bool, **values: str) -> str:
        """The first template of ``group`` that uses ``{seconds}`` exactly when asked."""
        for template in self.templates[group]:
            if ("{seconds}" in template.user) == with_seconds:
                return template.user.format(**values)
        return self.templates[group][0].user.format(**values)

    def steps_for(self, seconds: float) -> int:
        """Steps of codes for a duration in seconds."""
        if not 0 < seconds <= MAX_SECONDS:
            raise InputError(f"seconds must be in (0, {MAX_SECONDS:g}], got {seconds:g}")
        return max(1, round(seconds * self.vocab.fps / self.vocab.frames_per_step))

    def _seconds_text(self, steps: int) -> str:
        return f"{steps * self.vocab.frames_per_step / self.vocab.fps:.1f}"

    # --- generation ----------------------------------------------------------------------
    def _run(self, prompts: list[str], max_new_tokens: int, processor=None, sample=False, **kw):
        return answers(
            self.model,
            self.hf_tokenizer,
            prompts,
            max_new_tokens,
            processor,
            sample,
            self.router,
            **kw,
        )

    def generate(
        self,
        texts: list[str] | str,
        seconds: float | list[float | None] | None = None,
        seed: int = 0,
        temperature: float = 1.0,
        top_k: int = 20,
        max_seconds: float = 10.0,
    ) -> list[Generated]:
        """Motions for descriptions; a duration (or one per text) fixes the length."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or any(not t.strip() for t in texts):
            raise InputError("the description is empty")
        durations = seconds if isinstance(seconds, list) else [seconds] * len(texts)
        results: list[Generated] = []
        groups: dict[int | None, list[int]] = {}
        for index, duration in enumerate(durations):
            groups.setdefault(None if duration is None else self.steps_for(duration), []).append(
                index
            )
        out: dict[int, Generated] = {}
        for steps, indices in groups.items():
            prompts = [
                self._prompt(
                    "t2m",
                    steps is not None,
                    caption=texts[i].strip(),
                    seconds=self._seconds_text(steps or 1),
                    motion="",
                )
                for i in indices
            ]
            limit = steps or self.steps_for(max_seconds)
            for i, generated in zip(
                indices, self._motions(prompts, limit, steps, seed, temperature, top_k), strict=True
            ):
                out[i] = generated
        results = [out[i] for i in range(len(texts))]
        return results

    def predict(
        self,
        codes: list[np.ndarray],
        seconds: float = 2.0,
        seed: int = 0,
        temperature: float = 1.0,
        top_k: int = 20,
    ) -> list[Generated]:
        """Continuations (``seconds`` long) of motions given as codes (S, P)."""
        steps = self.steps_for(seconds)
        prompts = [
            self._prompt(
                "predict",
                True,
                motion=codes_to_text(c, self.vocab),
                seconds=self._seconds_text(steps),
                continuation="",
            )
            for c in codes
        ]
        return self._motions(prompts, steps, steps, seed, temperature, top_k)

    def pose(
        self, keypoints: list[np.ndarray], seed: int = 0, temperature: float = 0.0
    ) -> list[Generated]:
        """3D poses (codes (1, P) of the pose tokenizer) from 2D keypoints, each (22, 2)
        pixels with NaN rows for missing joints; greedy unless ``temperature`` > 0."""
        if self.pose_vocab is None or self.pose_tokenizer is None:
            raise InputError("this language model was not tuned for pose estimation")
        from parttok.instruct import keypoints_text

        prompts = []
        for pixels in keypoints:
            pixels = np.asarray(pixels, dtype=np.float64)
            if pixels.shape != (22, 2) or np.isnan(pixels).any(axis=1).all():
                raise InputError("keypoints must be 22 (x, y) pairs, not all missing")
            prompts.append(self._prompt("pose", False, keypoints=keypoints_text(pixels), pose=""))
        return self._motions(prompts, 1, 1, seed, temperature, 20, self.pose_vocab)

    def _motions(
        self, prompts, limit, steps, seed, temperature, top_k, vocab=None
    ) -> list[Generated]:
        if self.projector is not None:
            raise InputError("this language model reads motion features; it cannot write motion")
        vocab = vocab or self.vocab
        tok = self.hf_tokenizer
        tok.padding_side = "left"
        length = tok(
            [prompt_text(tok, p) for p in prompts], padding=True, add_special_tokens=False
        )["input_ids"]
        grammar = MotionGrammar(tok, vocab, len(length[0]), max_steps=limit, steps=steps)
        torch.manual_seed(seed)
        answers = self._run(
            prompts,
            max_new_tokens=limit * vocab.num_parts + 3,
            processor=grammar,
            sample=temperature > 0,
            **({"temperature": temperature, "top_k": top_k} if temperature > 0 else {}),
        )
        results = []
        for answer in answers:
            try:
                parsed = text_to_codes(answer, vocab, repair=False)
            except TokenParseError as error:
                raise InputError(f"the model's answer did not parse ({error})") from None
            results.append(Generated(parsed.codes, answer))
        return results

    def read_batch(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """What this model reads of raw clips (T, 263): codes (S, P), or for a features model
        the tokenizer's encoder features (S, P, d)."""
        if self.projector is None:
            return self.tokenizer.encode_batch(clips)
        return self.tokenizer.latents_batch(clips)

    def caption(self, motions: list[np.ndarray], max_new_tokens: int = 40) -> list[str]:
        """A caption for each motion (what ``read_batch`` gives: codes (S, P), or encoder
        features (S, P, d) for a features model), decoded greedily."""
        from parttok.llm.features import pooled

        rows = [None] * len(motions)
        if self.projector is not None:
            rows = [pooled(m, self.meta["motion_input"]["pooling"]) for m in motions]
        prompts = []
        for motion, row in zip(motions, rows, strict=True):
            text = (
                codes_to_text(motion, self.vocab)
                if row is None
                else self.vocab.start + FEATURE_TOKEN * len(row) + self.vocab.end
            )
            prompts.append(
                self._prompt(
                    "caption",
                    False,
                    motion=text,
                    caption="",
                    seconds=self._seconds_text(len(motion)),
                )
            )
        if self.projector is None:
            answers = self._run(prompts, max_new_tokens, suppress_tokens=self.motion_token_ids)
        else:
            answers = self._read_features(prompts, rows, max_new_tokens)
        return [answer.strip() for answer in answers]

    def _read_features(self, prompts: list[str], rows: list[np.ndarray], max_new_tokens: int):
        """Greedy answers to prompts whose placeholders take the feature ``rows``."""
        from parttok.llm.features import embeddings_with_features

        tok = self.hf_tokenizer
        tok.padding_side = "left"
        texts = [prompt_text(tok, p) for p in prompts]
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        if self.router is not None:
            self.router(prompts)
        with torch.inference_mode():
            embeds = embeddings_with_features(
                self.model.get_input_embeddings(),
                batch["input_ids"],
                [torch.from_numpy(r) for r in rows],
                self.projector,
                self.feature_token_id,
            )
            out = self.model.generate(
                inputs_embeds=embeds,
                attention_mask=batch["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                suppress_tokens=self.motion_token_ids,
            )
        return [tok.decode(row, skip_special_tokens=True) for row in out]

    def chat(self, prompts: list[str], max_new_tokens: int = 32) -> list[str]:
        """Greedy answers to plain prompts (what the language-retention check asks)."""
        return [a.strip() for a in self._run(prompts, max_new_tokens)]
