"""PNG figures of what a tokenizer does: a clip's token timeline, per-part codebook usage
over a dataset, and per-part reconstruction error over time.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot state, no GUI back-end) and
written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from parttok.errors import InputError
from parttok.features import FPS, check_joints
from parttok.io import atomic_path
from parttok.metrics import REPORT_PARTS, codebook_statistics, joint_errors
from parttok.render import PART_COLORS

_DPI = 100
_FALLBACK_COLORS = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#9467bd", "#2ca02c")
_ANNOTATE_MAX_STEPS = 30  # write the code ids into the cells up to this many steps


def part_color(name: str, index: int = 0) -> str:
    """The colour of a body part: the fixed palette for the six report parts, else a
    fallback by position."""
    return PART_COLORS.get(name, _FALLBACK_COLORS[index % len(_FALLBACK_COLORS)])


def plot_token_timeline(
    codes: np.ndarray,
    part_names: Sequence[str],
    path: str | os.PathLike,
    frames_per_step: int = 4,
    fps: int = FPS,
    codebook_size: int | None = None,
    title: str | None = None,
) -> Path:
    """Codes (S, P) as a parts x time image, colour = code id, a mark where a part's code
    changes from the step before. Returns the written path."""
    codes = _check_codes(codes, part_names)
    steps, parts = codes.shape
    size = codebook_size or int(codes.max()) + 1
    seconds = steps * frames_per_step / fps
    figure = Figure(
        figsize=(min(12.0, max(5.0, 0.16 * steps + 3)), 0.45 * parts + 1.3),
        dpi=_DPI,
        layout="constrained",
    )
    axes = figure.add_subplot()
    image = axes.imshow(
        codes.T,  # (P, S)
        aspect="auto",
        interpolation="nearest",
        cmap="turbo",
        vmin=0,
        vmax=max(size - 1, 1),
        extent=(0, seconds, parts - 0.5, -0.5),
    )
    step_seconds = frames_per_step / fps
    changed_step, changed_part = np.nonzero(codes[1:] != codes[:-1])  # change before step + 1
    boundaries = (changed_step + 1) * step_seconds
    axes.add_collection(
        LineCollection(
            np.stack(
                (
                    np.column_stack((boundaries, changed_part - 0.5)),
                    np.column_stack((boundaries, changed_part + 0.5)),
                ),
                axis=1,
            ),  # (changes, 2 ends, xy)
            colors="white",
            linewidths=1.5,
        )
    )
    if steps <= _ANNOTATE_MAX_STEPS:
        red, green, blue = image.cmap(image.norm(codes))[..., :3].transpose(2, 0, 1)
        dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # (S, P)
        for step, part in np.ndindex(steps, parts):
            axes.text(
                (step + 0.5) * step_seconds,
                part,
                str(codes[step, part]),
                ha="center",
                va="center",
                fontsize=6,
                color="white" if dark[step, part] else "black",
            )
    changes = (codes[1:] != codes[:-1]).sum(0)  # (P,)
    labels = [f"{name} ({count} changes)" for name, count in zip(part_names, changes, strict=True)]
    axes.set_yticks(range(parts), labels)
    axes.set_xlabel("time (s)")
    axes.set_title(title or f"tokens: {steps} steps x {parts} parts, {size} codes per part")
    figure.colorbar(image, ax=axes, label="code id", pad=0.01)
    return _save(figure, path)


def plot_codebook_usage(
    codes_list: Sequence[np.ndarray],
    codebook_size: int,
    part_names: Sequence[str],
    path: str | os.PathLike,
) -> Path:
    """Per-part histograms of how often each code is used over clips of codes (S, P), with
    each part's usage and perplexity. Returns the written path."""
    if not codes_list:
        raise InputError(f"{path}: no codes to plot")
    stacked = np.concatenate([_check_codes(c, part_names) for c in codes_list])  # (N, P)
    if stacked.max() >= codebook_size:
        raise InputError(f"{path}: code {stacked.max()} outside a codebook of {codebook_size}")
    statistics = codebook_statistics([stacked], codebook_size, list(part_names))
    parts = len(part_names)
    figure = Figure(figsize=(8.0, 1.2 * parts + 0.8), dpi=_DPI, layout="constrained")
    axes_list = figure.subplots(parts, 1, sharex=True, squeeze=False)[:, 0]
    for index, (axes, name) in enumerate(zip(axes_list, part_names, strict=True)):
        counts = np.bincount(stacked[:, index], minlength=codebook_size)
        axes.bar(np.arange(codebook_size), counts, width=1.0, color=part_color(name, index))
        axes.set_ylabel("count", fontsize=7)
        axes.tick_params(labelsize=7)
        axes.set_title(
            f"{name}: {statistics['usage'][name]:.0%} of codes used, "
            f"perplexity {statistics['perplexity'][name]:.1f}",
            fontsize=8,
            loc="left",
        )
    axes_list[-1].set_xlim(-0.5, codebook_size - 0.5)
    axes_list[-1].set_xlabel("code id")
    figure.suptitle(f"codebook usage over {len(codes_list)} clips, {len(stacked)} steps")
    return _save(figure, path)


def part_error_over_time(original: np.ndarray, reconstructed: np.ndarray) -> dict:
    """Per-part mean joint error (mm) per frame, over the frames both clips have: part name
    -> (F,), plus ``"all"`` for the mean over the 22 joints.

    Joints are compared pelvis-aligned, as the metrics do; the ``root`` part (the pelvis
    alone, always zero once aligned) is the error of the root's position instead, the drift
    of the trajectory.
    """
    original = check_joints(original, name="original joints", min_frames=1)
    reconstructed = check_joints(reconstructed, name="reconstructed joints", min_frames=1)
    frames = min(len(original), len(reconstructed))
    original, reconstructed = original[:frames], reconstructed[:frames]
    errors = joint_errors(reconstructed, original) * 1000  # (F, 22) mm
    curves = {name: errors[:, joints].mean(-1) for name, joints in REPORT_PARTS.items()}
    curves["root"] = np.linalg.norm(reconstructed[:, 0] - original[:, 0], axis=-1) * 1000
    curves["all"] = errors.mean(-1)
    return curves


def plot_part_error(
    original_joints: np.ndarray,
    reconstructed_joints: np.ndarray,
    path: str | os.PathLike,
    fps: int = FPS,
    title: str | None = None,
) -> Path:
    """Per-part reconstruction error (mm) over time for joints (T, 22, 3) in metres (see
    ``part_error_over_time``). Returns the written path."""
    curves = part_error_over_time(original_joints, reconstructed_joints)
    overall, drift = curves.pop("all"), curves.pop("root")
    seconds = np.arange(len(overall)) / fps
    figure = Figure(figsize=(8.0, 4.2), dpi=_DPI, layout="constrained")
    pose_axes, root_axes = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    for index, (name, curve) in enumerate(curves.items()):
        pose_axes.plot(seconds, curve, color=part_color(name, index), linewidth=1.3, label=name)
    pose_axes.plot(seconds, overall, "k--", linewidth=1.3, label="all joints")
    pose_axes.set_ylabel("pose error (mm)")
    pose_axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    pose_axes.set_title(title or f"per-part error, mean {overall.mean():.1f} mm (pelvis-aligned)")
    root_axes.plot(seconds, drift, color=part_color("root"), linewidth=1.3)
    root_axes.set_ylabel("root (mm)")
    root_axes.set_xlabel("time (s)")
    for axes in (pose_axes, root_axes):
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
    return _save(figure, path)


def _check_codes(codes: np.ndarray, part_names: Sequence[str]) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != len(part_names) or len(codes) == 0:
        raise InputError(
            f"expected codes (steps, {len(part_names)}) with at least one step, got {codes.shape}"
        )
    if codes.dtype.kind not in "iu" or codes.min() < 0:
        raise InputError("codes must be non-negative integers")
    return codes.astype(np.int64)


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"{path}: figures are written as .png")
    canvas = FigureCanvasAgg(figure)
    with atomic_path(path) as temporary:
        canvas.print_png(temporary)
    return path
