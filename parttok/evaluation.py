"""Reconstruction evaluation: encode, decode and compare clips, with codebook statistics."""

from __future__ import annotations

import time

import numpy as np

from parttok.metrics import clip_metrics, codebook_statistics, summarize
from parttok.tokenizer import Tokenizer


def evaluate_clips(
    tokenizer: Tokenizer,
    clips: dict[str, np.ndarray],
    batch_size: int = 32,
    quantize: bool = True,
    refine: int = 0,
) -> dict:
    """Metrics of ``tokenizer`` on named raw feature clips (T, 263).

    Every frame of every clip counts once in the means (frame-weighted); joints are compared
    pelvis-aligned in millimetres. ``facing_mpjpe_mm`` compares each frame in its own facing
    frame: MPJPE without the drift of the facing the root's turning speed integrates to;
    ``facing_error_deg`` is that drift, the mean angle between the facings in degrees.
    ``quantize`` False measures the model with its codebooks bypassed
    (``Tokenizer.reconstruct_batch``): no codes, so no codebook statistics. ``refine``: codes
    chosen through the decoder among that many nearest (``Tokenizer.encode_batch``).
    """
    names = list(clips)
    start = time.perf_counter()
    if quantize:
        codes = tokenizer.encode_batch(
            [clips[n] for n in names], batch_size=batch_size, refine=refine
        )
        reconstructions = tokenizer.decode_batch(codes, batch_size=batch_size)
    else:
        reconstructions = tokenizer.reconstruct_batch(
            [clips[n] for n in names], batch_size=batch_size, quantize=False
        )
    seconds = time.perf_counter() - start
    rows = []
    for name, reconstruction in zip(names, reconstructions, strict=True):
        row = clip_metrics(reconstruction, clips[name][: len(reconstruction)])
        rows.append({"clip": name, **row})
    report = summarize(rows)
    report["per_clip"] = [  # each clip's own means: MPJPE, PA-MPJPE, facing, per part, accel
        {"clip": row["clip"], **{k: v for k, v in summarize([row]).items() if k != "clips"}}
        for row in rows
    ]
    report["bits_per_second"] = tokenizer.bits_per_second
    report["tokens_per_second"] = tokenizer.num_parts * tokenizer.fps / tokenizer.frames_per_step
    report["parts"] = list(tokenizer.parts)
    report["checkpoint"] = tokenizer.identity
    report["precision"] = tokenizer.precision
    report["refine"] = refine
    report["round_trip_frames_per_second"] = report["frames"] / max(seconds, 1e-9)
    if tokenizer.is_quantized and quantize:
        report.update(codebook_statistics(codes, tokenizer.codebook_size, list(tokenizer.parts)))
    return report


def format_table(report: dict) -> str:
    """A plain-text summary of an evaluation report."""
    lines = [
        f"clips {report['clips']}, frames {report['frames']}, checkpoint {report['checkpoint']}"
        f" ({report['precision']})",
        f"MPJPE {report['mpjpe_mm']:.1f} mm   PA-MPJPE {report['pa_mpjpe_mm']:.1f} mm   "
        f"in the facing frame {report['facing_mpjpe_mm']:.1f} mm   "
        f"accel {report['accel_error']:.2f} mm/frame^2   "
        f"facing {report['facing_error_deg']:.1f} deg off",
        f"{report['bits_per_second']:.0f} bits/s, {report['tokens_per_second']:.0f} tokens/s",
        "",
        f"{'part':<12}{'MPJPE mm':>10}",
    ]
    lines += [f"{name:<12}{value:>10.1f}" for name, value in report["per_part_mpjpe_mm"].items()]
    if "usage" in report:
        lines += ["", f"{'codebook':<12}{'usage':>8}{'perplexity':>12}"]
        lines += [
            f"{name:<12}{report['usage'][name]:>8.0%}{report['perplexity'][name]:>12.1f}"
            for name in report["usage"]
        ]
    return "\n".join(lines)
