"""The markdown evaluation report: the metrics table of ``evaluate_clips`` and the figures
that explain it (token timeline, codebook usage, per-part error, a side-by-side animation)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from parttok.features import features_to_joints
from parttok.io import write_text
from parttok.plots import plot_codebook_usage, plot_part_error, plot_token_timeline
from parttok.render import render_animation
from parttok.tokenizer import Tokenizer

REPORT_FILE = "report.md"
TIMELINE_FILE = "timeline.png"
USAGE_FILE = "codebook_usage.png"
PART_ERROR_FILE = "part_error.png"
ANIMATION_FILE = "reconstruction.gif"
WORST_CLIPS_SHOWN = 10


def write_report(
    folder: str | os.PathLike,
    tokenizer: Tokenizer,
    clips: dict[str, np.ndarray],
    report: dict,
    animation_seconds: float | None = 6.0,
    codes: Sequence[np.ndarray] | None = None,
) -> Path:
    """Write ``report.md`` and its figures into ``folder``; returns the markdown's path.

    ``clips`` are the raw (T, 263) features that ``report`` (from ``evaluate_clips``) was
    measured on, ``codes`` their codes in the same order if the caller has them (its
    ``RoundTrip``; else they are encoded again, refined as the report says). The figures show
    the clip with the largest error; the animation (original beside reconstruction, its first
    ``animation_seconds``; None for none) is a GIF.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = _worst_clip(report, clips)
    features = clips[name]
    if codes is None:  # the codes the report measured
        codes = tokenizer.encode_batch(list(clips.values()), refine=report.get("refine", 0))
    clip_codes = codes[list(clips).index(name)]
    reconstruction = tokenizer.decode(clip_codes)
    original_joints = features_to_joints(features[: len(reconstruction)])  # (F, 22, 3)
    reconstructed_joints = features_to_joints(reconstruction)
    figures = []
    if tokenizer.is_quantized:
        plot_token_timeline(
            clip_codes,
            tokenizer.parts,
            folder / TIMELINE_FILE,
            tokenizer.frames_per_step,
            tokenizer.fps,
            codebook_size=tokenizer.codebook_size,
            title=f"tokens of {name}",
        )
        figures.append((f"Tokens of `{name}`", TIMELINE_FILE))
        plot_codebook_usage(codes, tokenizer.codebook_size, tokenizer.parts, folder / USAGE_FILE)
        figures.append(("Codebook usage", USAGE_FILE))
    plot_part_error(
        original_joints,
        reconstructed_joints,
        folder / PART_ERROR_FILE,
        tokenizer.fps,
        title=f"per-part error of {name}",
    )
    figures.append((f"Per-part error over time of `{name}`", PART_ERROR_FILE))
    if animation_seconds is not None:
        frames = max(1, int(animation_seconds * tokenizer.fps))
        render_animation(
            [original_joints[:frames], reconstructed_joints[:frames]],
            folder / ANIMATION_FILE,
            titles=["original", "reconstruction"],
            caption=name,
            fps=tokenizer.fps,
        )
        figures.append((f"`{name}`: original and reconstruction", ANIMATION_FILE))
    path = folder / REPORT_FILE
    write_text(path, format_markdown(report, figures))
    return path


def _worst_clip(report: dict, clips: dict[str, np.ndarray]) -> str:
    """The clip with the largest MPJPE in the report, else the first clip."""
    rows = [row for row in report.get("per_clip", []) if row["clip"] in clips]
    if not rows:
        return next(iter(clips))
    return max(rows, key=lambda row: row["mpjpe_mm"])["clip"]


def format_markdown(report: dict, figures: list[tuple[str, str]]) -> str:
    """The report as markdown: summary, per-part and codebook tables, figures, worst clips."""
    lines = [
        "# parttok evaluation report",
        "",
        f"Checkpoint `{report['checkpoint']}`: {report['clips']} clips, {report['frames']} frames.",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| MPJPE (mm) | {report['mpjpe_mm']:.1f} |",
        f"| PA-MPJPE (mm) | {report['pa_mpjpe_mm']:.1f} |",
        f"| acceleration error (mm/frame²) | {report['accel_error']:.2f} |",
        f"| bits per second | {report['bits_per_second']:.0f} |",
    ]
    if "tokens_per_second" in report:
        lines.append(f"| tokens per second | {report['tokens_per_second']:.0f} |")
    if refine := report.get("refine", 0):
        lines.append(f"| codes | refined among the {refine} nearest (`--refine {refine}`) |")
    lines += ["", "| part | MPJPE (mm) |", "|---|---:|"]
    lines += [f"| {name} | {value:.1f} |" for name, value in report["per_part_mpjpe_mm"].items()]
    if "root" in report["per_part_mpjpe_mm"]:
        lines += [
            "",
            "Joints are compared pelvis-aligned, so the root's own error is 0; the per-part "
            "error figure shows the drift of its position in one clip.",
        ]
    if "usage" in report:
        lines += ["", "| codebook | usage | perplexity |", "|---|---:|---:|"]
        lines += [
            f"| {name} | {report['usage'][name]:.0%} | {report['perplexity'][name]:.1f} |"
            for name in report["usage"]
        ]
    for caption, file_name in figures:
        alt = caption.replace("`", "")
        lines += ["", f"## {caption}", "", f"![{alt}]({file_name})"]
    rows = sorted(report.get("per_clip", []), key=lambda row: -row["mpjpe_mm"])
    if rows:
        lines += [
            "",
            f"## Clips with the largest error (of {len(rows)})",
            "",
            "| clip | frames | MPJPE (mm) | PA-MPJPE (mm) |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['clip']} | {r['frames']} | {r['mpjpe_mm']:.1f} | {r['pa_mpjpe_mm']:.1f} |"
            for r in rows[:WORST_CLIPS_SHOWN]
        ]
    if report.get("failed"):
        lines += ["", f"{len(report['failed'])} input(s) could not be read:", ""]
        lines += [f"- {row['error']}" for row in report["failed"]]
    return "\n".join(lines) + "\n"
