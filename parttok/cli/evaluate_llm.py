"""``parttok evaluate-llm FOLDER... --json FILE``: measure a tuned language model on held-out
clips (text-to-motion, captioning, prediction, pose estimation) and on general questions
(language kept).

The judge (``parttok.llm.recogniser``) is trained here on the ``--judge-split`` clips of the
same folders and shares no weights with the model. ``--exclude-from CONFIG`` reads the
captions held out of tuning from a ``parttok tune`` config, so seen and unseen content x
style pairs are reported apart. ``--benchmarks FILE`` puts the tables into a markdown file's
"Language model" section; nothing else is rewritten."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

from parttok.cli.generate import add_llm_arguments, checked_output
from parttok.errors import InputError

SECTION = "## Language model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="HumanML3D-layout folders")
    parser.add_argument("--json", required=True, metavar="FILE", help="write the figures here")
    parser.add_argument(
        "--split", default="test", help="clips measured (default: test; never tuned on)"
    )
    parser.add_argument(
        "--judge-split", default="train", help="clips the judge learns from (default: train)"
    )
    parser.add_argument(
        "--exclude-from",
        metavar="YAML",
        help="a tune config whose data.exclude_captions were held out (unseen pairs)",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="at most N clips (evenly spaced)")
    parser.add_argument(
        "--tasks",
        default="t2m,caption,predict,pose,language",
        help="comma-separated from t2m, caption, predict, pose, language (default: all; pose "
        "only when the model was tuned with a pose tokenizer)",
    )
    parser.add_argument("--judge-steps", type=int, default=1500, help="judge training steps")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--benchmarks", metavar="FILE", help="also write the markdown section here")
    add_llm_arguments(parser)
    parser.add_argument("-f", "--force", action="store_true", help="overwrite --json")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import yaml

    out = checked_output(args.json, args.force, (".json",))
    tasks = {t.strip() for t in args.tasks.split(",") if t.strip()}
    unknown = tasks - {"t2m", "caption", "predict", "pose", "language"}
    if unknown or not tasks:
        raise InputError(f"unknown task(s) {sorted(unknown)}")
    held_out: set[str] = set()
    if args.exclude_from:
        try:
            config = yaml.safe_load(Path(args.exclude_from).read_text(encoding="utf-8"))
            held_out = set((config.get("data") or {}).get("exclude_captions") or [])
        except (OSError, yaml.YAMLError, AttributeError) as error:
            raise InputError(f"{args.exclude_from}: unreadable config ({error})") from None
    from parttok.llm.base import require_transformers

    require_transformers()
    import torch

    from parttok.llm import evaluate as ev
    from parttok.llm.model import MotionLLM

    torch.manual_seed(args.seed)
    started = time.monotonic()
    llm = MotionLLM.from_pretrained(args.llm, base=args.base, checkpoint=args.checkpoint)
    if llm.projector is not None and tasks & {"t2m", "predict", "pose"}:
        print("a features model reads motion but cannot write it: t2m, predict and pose are "
              "left out", file=sys.stderr)  # fmt: skip
        tasks -= {"t2m", "predict", "pose"}
    clips = ev.labelled_clips(args.folders, args.split, args.limit)
    if not clips:
        raise InputError(f"no labelled clips in the {args.split!r} split of {args.folders}")
    seen = np.array([c.caption not in held_out for c in clips])
    report: dict = {
        "llm": args.llm or "shipped",
        "adapter": llm.meta["adapter"],
        "split": args.split,
        "clips": len(clips),
        "unseen_clips": int((~seen).sum()),
        "date": datetime.date.today().isoformat(),
    }
    if {"t2m", "caption"} & tasks:
        judge = ev.train_judge(args.folders, args.judge_split, args.judge_steps)
    gates: dict[str, list[float]] = {}

    def gated(task: str, compute):
        """``compute()``, recording a MoE-LoRA's mean gate weights over the task's prompts."""
        if llm.router is None:
            return compute()
        llm.router.history = []
        try:
            return compute()
        finally:
            gates[task] = [round(float(w), 4) for w in torch.cat(llm.router.history).mean(0)]
            llm.router.history = None

    if "t2m" in tasks:
        report["t2m"], _ = gated(
            "t2m", lambda: ev.text_to_motion(llm, judge, clips, seen, seed=args.seed)
        )
        print(_line("t2m", report["t2m"]["all"]["generated"]), file=sys.stderr)
    if "caption" in tasks:
        report["caption"], report["caption_examples"] = gated(
            "caption", lambda: ev.captioning(llm, clips, seen)
        )
        print(_line("caption", report["caption"]["all"]), file=sys.stderr)
    if "predict" in tasks:
        report["predict"] = gated("predict", lambda: ev.prediction(llm, clips, seed=args.seed))
        print(_line("predict", report["predict"]), file=sys.stderr)
    if "pose" in tasks and llm.pose_vocab is not None:
        report["pose"] = gated("pose", lambda: ev.pose_estimation(llm, clips, seed=args.seed))
        print(_line("pose", report["pose"]), file=sys.stderr)
    if "language" in tasks:
        report["language"] = gated("language", lambda: _language(llm, ev))
        print(_line("language", report["language"]), file=sys.stderr)
    if gates:
        report["gate"] = gates
        for task, weights in gates.items():
            print(f"gate on {task}: {', '.join(f'{w:.3f}' for w in weights)}", file=sys.stderr)
    report["seconds"] = round(time.monotonic() - started, 1)
    from parttok.io import write_text

    write_text(out, json.dumps(report, indent=1, sort_keys=True) + "\n")
    print(f"{out}: written")
    if args.benchmarks:
        from parttok.io import machine_description, replace_markdown_section

        replace_markdown_section(args.benchmarks, markdown(report, machine_description()))
    return 0


def _language(llm, ev) -> dict:
    """General-question accuracy of the tuned model and its base, and the KL between them."""
    from parttok.llm.base import load_base
    from parttok.llm.model import answers

    questions = ev.load_questions()
    base_model, base_tokenizer = load_base(llm.meta["base"])

    def base_chat(prompts: list[str]) -> list[str]:
        return [a.strip() for a in answers(base_model, base_tokenizer, prompts, 32)]

    base_right = ev.general_answers(base_chat, questions)
    tuned_right = ev.general_answers(llm.chat, questions)
    known = [i for i, right in enumerate(base_right) if right]
    prompts = [q for q, _ in questions]
    kl = ev.next_token_kl(llm.model, base_model, llm.hf_tokenizer, prompts, llm.router)
    return {
        "questions": len(questions),
        "base_accuracy": sum(base_right) / len(questions),
        "tuned_accuracy": sum(tuned_right) / len(questions),
        "kept_of_base_right": (sum(tuned_right[i] for i in known) / len(known)) if known else None,
        "kl_from_base": kl,
    }


def _line(task: str, figures: dict) -> str:
    shown = ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
        for k, v in figures.items()
        if not isinstance(v, dict)
    )
    return f"{task}: {shown}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown(report: dict, machine: str) -> str:
    """The BENCHMARKS.md section of an evaluate-llm report."""
    lines = [
        SECTION,
        "",
        f"`parttok evaluate-llm` on {report['clips']} held-out clips ({report['split']} split; "
        f"{report['unseen_clips']} of content x style pairs never tuned on), {report['date']}, "
        f"{machine}.",
        "",
    ]
    if "t2m" in report:
        lines += [
            "| text-to-motion | content | style | FID | diversity | clips |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("all", "seen", "unseen"):
            for kind in ("generated", "real"):
                row = report["t2m"][name][kind]
                fid = row.get("fid")
                lines.append(
                    f"| {name}, {kind} | {_pct(row['content_accuracy'])} | "
                    f"{_pct(row['style_accuracy'])} | {'-' if fid is None else f'{fid:.2f}'} | "
                    f"{row.get('diversity', float('nan')):.2f} | {row['clips']} |"
                )
        lines.append("")
    if "caption" in report:
        lines += [
            "| captioning | content | style | BLEU-4 | ROUGE-L | clips |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in report["caption"].items():
            lines.append(
                f"| {name} | {_pct(row['content_accuracy'])} | {_pct(row['style_accuracy'])} | "
                f"{row['bleu4']:.1f} | {row['rouge_l']:.3f} | {row['clips']} |"
            )
        lines.append("")
    if "predict" in report:
        row = report["predict"]
        lines += [
            f"Prediction (second half from the first): MPJPE {row['mpjpe_mm']:.1f} mm against "
            f"{row['hold_last_pose_mm']:.1f} mm for holding the last pose ({row['clips']} clips).",
            "",
        ]
    if "pose" in report:
        row = report["pose"]
        lines += [
            f"Pose from detector-like 2D keypoints: MPJPE {row['mpjpe_mm']:.1f} mm, PA-MPJPE "
            f"{row['pa_mpjpe_mm']:.1f} mm; the pose tokenizer's own reconstruction "
            f"{row['floor']['mpjpe_mm']:.1f} / {row['floor']['pa_mpjpe_mm']:.1f} mm "
            f"({row['clips']} clips).",
            "",
        ]
    if "gate" in report:
        zero = bool(report.get("adapter", {}).get("zero_expert"))
        width = len(next(iter(report["gate"].values())))
        names = [("zero" if zero and e == 0 else f"expert {e + (not zero)}") for e in range(width)]
        lines += [
            "| mean gate weight | " + " | ".join(names) + " |",
            "|---|" + "---|" * width,
            *(
                f"| {task} | " + " | ".join(f"{w:.3f}" for w in weights) + " |"
                for task, weights in report["gate"].items()
            ),
            "",
        ]
    if "language" in report:
        row = report["language"]
        lines += [
            f"Language kept ({row['questions']} general questions): "
            f"base {_pct(row['base_accuracy'])}, tuned {_pct(row['tuned_accuracy'])} "
            f"({_pct(row['kept_of_base_right'])} of those "
            f"the base answers right); KL from the base {row['kl_from_base']:.3f} nats.",
            "",
        ]
    return "\n".join(lines)
