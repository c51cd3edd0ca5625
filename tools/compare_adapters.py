"""Language kept against motion learned, for three adapters tuned alike: plain LoRA, MoE-LoRA
without the zero expert and MoE-LoRA with it (HMVLM), on the same data (motion conversations
and general ones answered by the base), steps and evaluator.

    python tools/llm_data.py --general
    python tools/compare_adapters.py --steps 80 --limit 50 --out runs/adapters \\
        [--benchmarks BENCHMARKS.md]

Each adapter is tuned with ``parttok tune`` (configs/llm_cpu.yaml + configs/llm_moe.yaml) and
measured with ``parttok evaluate-llm --tasks caption,language``; a finished step is not run
again. Writes ``OUT/adapters.json``, ``OUT/adapters.md`` and ``OUT/gate.png`` (the gate's
mean weight per task, HMVLM's Table 3); only ``--benchmarks FILE`` replaces its section there
(and the figure beside it, notebooks/figures/gate.png).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from llm_runs import evaluate_run, tune_run

SECTION = "## Adapters: language kept against motion learned"
FIGURE = "notebooks/figures/gate.png"  # written with --benchmarks
VARIANTS = {
    "LoRA (r 16)": [
        "--model.adapter",
        "lora",
        "--model.lora_rank",
        "16",
        "--model.lora_alpha",
        "32",
    ],
    "MoE-LoRA, no zero expert": ["--model.zero_expert", "false"],
    "MoE-LoRA + zero expert": [],
}


def markdown(rows: dict, steps: int, limit: int, machine: str, date: str) -> str:
    from parttok.cli.evaluate_llm import _pct

    lines = [
        SECTION,
        "",
        f"`python tools/compare_adapters.py --steps {steps} --limit {limit}`, {date}, {machine}:",
        f"each adapter tuned {steps} steps from the base on the same conversations (t2m, "
        "caption, predict and the base's own answers to general prompts), then captioning on "
        f"{limit} held-out Bandai Namco clips and the 100 general questions.",
        "",
        "| adapter | tune time | file | caption content | caption style | BLEU-4 | general "
        "questions (base) | KL from base | zero-expert weight: captions / questions |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        caption, language = row["eval"]["caption"]["all"], row["eval"]["language"]
        gate = row["eval"].get("gate", {})
        zero = row["tune"]["adapter"].get("zero_expert")
        weights = f"{gate['caption'][0]:.3f} / {gate['language'][0]:.3f}" if zero and gate else "-"
        lines.append(
            f"| {name} | {row['tune']['seconds'] / 60:.0f} min | "
            f"{row['tune']['bytes'] / 1e6:.1f} MB | {_pct(caption['content_accuracy'])} | "
            f"{_pct(caption['style_accuracy'])} | {caption['bleu4']:.1f} | "
            f"{_pct(language['tuned_accuracy'])} ({_pct(language['base_accuracy'])}) | "
            f"{language['kl_from_base']:.3f} | {weights} |"
        )
    return "\n".join(lines) + f"\n\n![mean gate weight per task]({FIGURE})\n"


def plot(rows: dict, path: Path) -> None:
    """Grouped bars: each MoE variant's mean gate weight per expert, per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gated = {n: r["eval"]["gate"] for n, r in rows.items() if r["eval"].get("gate")}
    figure, axes = plt.subplots(1, len(gated), figsize=(5 * len(gated), 3.2), squeeze=False)
    for axis, (name, gate) in zip(axes[0], gated.items(), strict=True):
        zero = rows[name]["tune"]["adapter"].get("zero_expert")
        tasks = list(gate)
        experts = len(gate[tasks[0]])
        width = 0.8 / experts
        for e in range(experts):
            label = "zero" if zero and e == 0 else f"expert {e + (not zero)}"
            xs = [t + (e - experts / 2 + 0.5) * width for t in range(len(tasks))]
            axis.bar(xs, [gate[t][e] for t in tasks], width, label=label)
        axis.set_xticks(
            range(len(tasks)), ["captions" if t == "caption" else "questions" for t in tasks]
        )
        axis.set_ylim(0, 1)
        axis.set_title(name)
        axis.set_ylabel("mean gate weight")
        axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80, help="tuning steps per adapter")
    parser.add_argument("--limit", type=int, default=50, help="held-out clips captioned")
    parser.add_argument("--out", type=Path, default=Path("runs") / "adapters")
    parser.add_argument("--benchmarks", type=Path, help="replace the section in this file")
    args = parser.parse_args()
    from parttok.io import machine_description, replace_markdown_section, write_text

    started, rows = time.monotonic(), {}
    for index, (name, extra) in enumerate(VARIANTS.items()):
        run = args.out / f"adapter{index}"
        configs = ["llm_cpu.yaml", "llm_moe.yaml"]
        rows[name] = {"tune": tune_run(run, configs, extra, args.steps)}
        rows[name]["eval"] = evaluate_run(run, "caption,language", args.limit)
    date = time.strftime("%Y-%m-%d")
    text = markdown(rows, args.steps, args.limit, machine_description(), date)
    write_text(args.out / "adapters.json", json.dumps(rows, indent=1, sort_keys=True) + "\n")
    write_text(args.out / "adapters.md", text)
    plot(rows, args.out / "gate.png")
    if args.benchmarks:
        replace_markdown_section(args.benchmarks, text)
        plot(rows, args.benchmarks.parent / FIGURE)
    print(text)
    print(f"{time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
