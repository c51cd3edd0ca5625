"""Reconstruction evaluation: encode, decode and compare clips, with codebook statistics."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from parttok.metrics import clip_metrics, codebook_statistics, summarize
from parttok.tokenizer import Tokenizer


@dataclass(frozen=True)
class RoundTrip:
    """Clips through a tokenizer, in order: their codes (None with the codebooks bypassed),
    their reconstructions (raw features), the seconds encoding took and the whole trip's, and
    the ``refine`` count the codes were chosen with."""

    codes: list[np.ndarray] | None
    reconstructions: list[np.ndarray]
    encode_seconds: float
    seconds: float
    refine: int = 0


def round_trip(
    tokenizer: Tokenizer,
    clips: list[np.ndarray],
    batch_size: int = 32,
    quantize: bool = True,
    refine: int = 0,
) -> RoundTrip:
    """Encode and decode ``clips`` (raw (T, 263) features); ``quantize`` False bypasses the
    codebooks (``Tokenizer.reconstruct_batch``), ``refine`` chooses codes through the decoder
    among that many nearest (``Tokenizer.encode_batch``)."""
    start = time.perf_counter()
    if not quantize:
        reconstructions = tokenizer.reconstruct_batch(clips, batch_size=batch_size, quantize=False)
        seconds = time.perf_counter() - start
        return RoundTrip(None, reconstructions, seconds, seconds)
    codes = tokenizer.encode_batch(clips, batch_size=batch_size, refine=refine)
    encoded = time.perf_counter()
    reconstructions = tokenizer.decode_batch(codes, batch_size=batch_size)
    end = time.perf_counter()
    return RoundTrip(codes, reconstructions, encoded - start, end - start, refine)


def evaluate_clips(
    tokenizer: Tokenizer,
    clips: dict[str, np.ndarray],
    batch_size: int = 32,
    quantize: bool = True,
    refine: int = 0,
    trip: RoundTrip | None = None,
) -> dict:
    """Metrics of ``tokenizer`` on named raw feature clips (T, 263).

    Every frame of every clip counts once in the means (frame-weighted); joints are compared
    pelvis-aligned in millimetres. ``facing_mpjpe_mm`` compares each frame in its own facing
    frame: MPJPE without the drift of the facing the root's turning speed integrates to;
    ``facing_error_deg`` is that drift, the mean angle between the facings in degrees.
    ``quantize`` and ``refine`` as in ``round_trip``; ``trip``: the clips' round trip if one
    was made already (then ``quantize`` and ``refine`` are its own), so that a caller who
    needs the codes too (a report's figures) does not encode twice.
    """
    names = list(clips)
    if trip is None:
        trip = round_trip(tokenizer, [clips[n] for n in names], batch_size, quantize, refine)
    codes, reconstructions = trip.codes, trip.reconstructions
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
    report["refine"] = trip.refine
    report["round_trip_frames_per_second"] = report["frames"] / max(trip.seconds, 1e-9)
    if tokenizer.is_quantized and codes is not None:
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
