"""Compose body-part codes across real clips and measure how well the parts stay apart.

    python tools/compose.py [--checkpoint PATH] [--data data] [--pairs 16] [--no-write]

Pairs Bandai Namco 2 validation clips (never trained on) by action: a walk given the right
arm of a one-hand wave, a walk given the left arm of a one-hand raise, a walk given both arms
of a two-hand raise, a two-hand wave given the legs of a walk, and the HumanML3D reference
clips given the right arm of a wave. For each, ``parttok.composition.composition_errors``:
the taken parts against the donor's reconstruction, the kept parts against the base's, and
how far apart the two were before composing. Writes the "## Composing body parts" section
of BENCHMARKS.md and the three-panel figure notebooks/figures/compose.gif (base, donor,
composite).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

from parttok.composition import composition_errors
from parttok.data import HumanML3DFolder
from parttok.features import features_to_joints
from parttok.io import machine_description, replace_markdown_section
from parttok.render import render_animation
from parttok.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Composing body parts"
FIGURE = REPO / "notebooks" / "figures" / "compose.gif"
# (name, base action, donor action, parts taken from the donor); the first makes the figure
COMPOSITIONS = (
    ("walk + right arm of a wave", "walk", "wave-right-hand", ("right_arm",)),
    ("walk + left arm of a raise", "walk", "raise-up-left-hand", ("left_arm",)),
    ("walk + both arms of a raise", "walk", "raise-up-both-hands", ("left_arm", "right_arm")),
    ("two-hand wave + legs of a walk", "wave-both-hands", "walk", ("left_leg", "right_leg")),
)


def action(clip_id: str) -> str:
    """Bandai Namco 2 ids are dataset-2_<action>_<style>_<number>."""
    return clip_id.split("_")[1]


def measure(tokenizer: Tokenizer, data: Path, shared: Path, pairs: int) -> tuple[list, dict]:
    """Rows (name, pairs, mean errors) and the figure's example (base, donor, composite)."""
    bandai = HumanML3DFolder(data / "bandai")
    by_action: dict[str, list[str]] = {}
    for clip_id in bandai.ids("val"):
        by_action.setdefault(action(clip_id), []).append(clip_id)
    reference = HumanML3DFolder(shared / "humanml3d")
    bases = {name: reference.features(name) for name in reference.ids()}
    cases = [
        (name, [(bandai.features(b), bandai.features(d)) for b, d in zip(
            by_action[base][:pairs], by_action[donor][:pairs], strict=False
        )], parts)
        for name, base, donor, parts in COMPOSITIONS
    ]  # fmt: skip
    waves = by_action["wave-right-hand"]
    cases.append(
        (
            "HumanML3D clips (unseen) + right arm of a wave",
            [
                (clip, bandai.features(waves[i % len(waves)]))
                for i, clip in enumerate(bases.values())
            ],
            ("right_arm",),
        )
    )
    rows, example = [], {}
    for name, clip_pairs, parts in cases:
        errors = []
        for base, donor in clip_pairs:
            result, composite = composition_errors(tokenizer, base, donor, parts)
            errors.append(result)
            if not example:
                example = {"base": base, "donor": donor, "composite": composite, "name": name}
        mean = {key: float(np.mean([e[key] for e in errors])) for key in errors[0]}
        rows.append((name, len(errors), mean))
    return rows, example


def table(rows: list) -> str:
    lines = [
        "| composition | pairs | taken parts vs donor (mm) | kept parts vs base (mm) "
        "| taken parts before composing (mm) |",
        "|---|---|---|---|---|",
    ]
    for name, count, mean in rows:
        lines.append(
            f"| {name} | {count} | {mean['taken_mm']:.1f} | {mean['kept_mm']:.1f} "
            f"| {mean['before_mm']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="default: the shipped model")
    parser.add_argument("--data", type=Path, default=REPO / "data")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--pairs", type=int, default=16, help="clip pairs per composition")
    parser.add_argument(
        "--no-write", action="store_true", help="print the table only (no BENCHMARKS, figure)"
    )
    args = parser.parse_args()
    tokenizer = Tokenizer.from_pretrained(args.checkpoint)
    start = time.monotonic()
    rows, example = measure(tokenizer, args.data, args.shared, args.pairs)
    seconds = time.monotonic() - start
    print(table(rows))
    if args.no_write:
        return 0
    command = "python tools/compose.py" + (
        f" --checkpoint {args.checkpoint}" if args.checkpoint else ""
    )
    section = (
        f"{SECTION}\n\n"
        "Codes of one clip with some parts' codes taken from another, decoded "
        f"(`{command}`, tokenizer {tokenizer.identity}, {seconds:.0f} s; "
        f"{machine_description()}; {datetime.date.today()}). Clips from the Bandai Namco 2 "
        "validation split, never trained on, paired by action. Errors are mean joint "
        "distances: a taken part's joints relative to where the part attaches (spine3 for "
        "arms, the pelvis for legs) against the donor's own reconstruction; the kept joints "
        "relative to the pelvis against the base's reconstruction. The last column is how "
        "far the taken parts were from the donor's before composing: the change the codes "
        "made. Whole-body codes (T2M-GPT, the residual VQ) have one code per step and cannot "
        "be composed this way.\n\n"
        f"{table(rows)}\n\n"
        f"![composition](notebooks/figures/{FIGURE.name})\n"
    )
    replace_markdown_section(REPO / "BENCHMARKS.md", section)
    _, base, donor, _ = COMPOSITIONS[0]
    motions = [features_to_joints(example[key]) for key in ("base", "donor", "composite")]
    length = min(len(m) for m in motions)
    render_animation(
        [m[:length] for m in motions],
        FIGURE,
        titles=[f"base: {base}", f"donor: {donor}", "composite"],
        caption=example["name"],
        panel_pixels=320,
    )
    print(f"wrote BENCHMARKS.md ({SECTION}) and {FIGURE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
