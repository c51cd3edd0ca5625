"""Motion understanding through four inputs, tuned alike (same base, captioning data, steps
and evaluator): (a) part tokens, (b) whole-body tokens, (c) continuous part features,
(d) continuous whole-body features (one vector per step: the part encoder's features side by
side, or a whole-body tokenizer's encoder features).

    python tools/compare_inputs.py --steps 120 --limit 50 --out runs/inputs \\
        [--whole-body CKPT --whole-body-data DIR] [--benchmarks BENCHMARKS.md]

Features are read through a projector trained as LLaVA trains: a quarter of the steps with
the LLM frozen (the projector alone), the rest with LoRA. Whole-body tokens need a trained
whole-body tokenizer (``parttok train --config configs/cpu.yaml --config
configs/t2mgpt.yaml``) and its conversations (``parttok instruct ... --checkpoint CKPT``);
without them (b) is left out. A finished run is not run again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from llm_runs import evaluate_run, tune_run

SECTION = "## Motion into the LLM: tokens or continuous features"
CAPTIONS = ["--data.tasks", "[caption]"]


def variants(whole_body: str | None, whole_body_data: Path | None) -> dict[str, dict]:
    """Name -> how to tune it: configs, arguments, whether through features."""
    table = {
        "(a) part tokens": {"configs": ["llm_cpu.yaml"], "extra": CAPTIONS, "features": False},
        "(c) part features": {
            "configs": ["llm_cpu.yaml", "llm_features.yaml"],
            "extra": ["--model.feature_pooling", "parts"],
            "features": True,
        },
        "(d) whole-body features (parts side by side)": {
            "configs": ["llm_cpu.yaml", "llm_features.yaml"],
            "extra": ["--model.feature_pooling", "steps"],
            "features": True,
        },
    }
    if whole_body and whole_body_data:
        data = ["--data.train_path", str(whole_body_data / "train.jsonl")]
        data += ["--data.val_path", str(whole_body_data / "val.jsonl")]
        table["(b) whole-body tokens"] = {
            "configs": ["llm_cpu.yaml"],
            "extra": [*CAPTIONS, "--model.tokenizer", whole_body, *data],
            "features": False,
        }
        table["(d) whole-body encoder features"] = {
            "configs": ["llm_cpu.yaml", "llm_features.yaml"],
            "extra": ["--model.tokenizer", whole_body, *data],
            "features": True,
        }
    return dict(sorted(table.items()))


def tune_variant(run: Path, spec: dict, steps: int) -> dict:
    """Tokens: ``steps`` of LoRA. Features: a quarter with the LLM frozen, then the rest
    with LoRA from that projector."""
    if not spec["features"]:
        return tune_run(run, spec["configs"], spec["extra"], steps)
    align_steps = max(1, steps // 4)
    aligned = tune_run(
        run / "align", spec["configs"], [*spec["extra"], "--model.adapter", "none"], align_steps
    )
    init = ["--model.projector_init", str(run / "align" / "llm")]
    tuned = tune_run(run, spec["configs"], [*spec["extra"], *init], steps - align_steps)
    tuned["seconds"] = (tuned["seconds"] or 0) + (aligned["seconds"] or 0)
    return tuned


def tokens_per_second(run: Path) -> float:
    """Prompt tokens (or placeholders) per second of motion."""
    meta = json.loads((run / "llm" / "parttok_llm.json").read_text())
    vocab = meta["vocabularies"][0]
    steps = vocab["fps"] / vocab["frames_per_step"]
    motion_input = meta.get("motion_input", {"kind": "tokens"})
    per_step = 1 if motion_input.get("pooling") == "steps" else len(vocab["parts"])
    return steps * per_step


def slug(name: str) -> str:
    """A folder name for a variant."""
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def markdown(rows: dict, steps: int, limit: int, machine: str, date: str) -> str:
    from parttok.cli.evaluate_llm import _pct

    lines = [
        SECTION,
        "",
        f"`python tools/compare_inputs.py --steps {steps} --limit {limit}`, {date}, {machine}: "
        f"each input tuned {steps} steps on the same captioning conversations, then "
        f"captions of {limit} held-out Bandai Namco clips. Features are read, never written: "
        "a features model cannot do text-to-motion or prediction.",
        "",
        "| input | tokens per second of motion | tune time | caption content | caption style | "
        "BLEU-4 | ROUGE-L |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        caption = row["eval"]["caption"]["all"]
        lines.append(
            f"| {name} | {row['tokens_per_second']:g} | {row['tune']['seconds'] / 60:.0f} min | "
            f"{_pct(caption['content_accuracy'])} | {_pct(caption['style_accuracy'])} | "
            f"{caption['bleu4']:.1f} | {caption['rouge_l']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120, help="tuning steps per input")
    parser.add_argument("--limit", type=int, default=50, help="held-out clips captioned")
    parser.add_argument("--out", type=Path, default=Path("runs") / "inputs")
    parser.add_argument("--whole-body", metavar="CKPT", help="a whole-body tokenizer")
    parser.add_argument("--whole-body-data", type=Path, metavar="DIR", help="its conversations")
    parser.add_argument("--benchmarks", type=Path, help="replace the section in this file")
    args = parser.parse_args()
    from parttok.io import machine_description, replace_markdown_section, write_text

    started, rows = time.monotonic(), {}
    chosen = variants(args.whole_body, args.whole_body_data)
    for name, spec in chosen.items():
        run = args.out / slug(name)
        rows[name] = {"tune": tune_variant(run, spec, args.steps)}
        rows[name]["eval"] = evaluate_run(run, "caption", args.limit)
        rows[name]["tokens_per_second"] = tokens_per_second(run)
    text = markdown(rows, args.steps, args.limit, machine_description(), time.strftime("%Y-%m-%d"))
    write_text(args.out / "inputs.json", json.dumps(rows, indent=1, sort_keys=True) + "\n")
    write_text(args.out / "inputs.md", text)
    if args.benchmarks:
        replace_markdown_section(args.benchmarks, text)
    print(text)
    print(f"{time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
