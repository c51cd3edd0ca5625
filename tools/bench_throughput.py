"""Encode and decode throughput of a tokenizer beside the T2M-GPT-style baseline, on 2 cores.

    python tools/bench_throughput.py [--checkpoint PATH] [--data SRC] [--frames 200]
        [--batch-size 32] [--long-frames 6000] [--no-write]

Cuts real clips (default: the converted Bandai Namco clips in ``data/bandai`` if present,
else the HumanML3D clips) into windows of ``--frames`` frames, then times
``Tokenizer.encode`` / ``decode`` one clip at a time and ``encode_batch`` / ``decode_batch``
in batches, with torch limited to 2 threads; then, in another process, a few long clips
(``--long-frames``, five minutes by default) through one call each way, where attention across
time must stay linear in the length. Each measurement runs in its own fresh process so its peak
resident memory (``getrusage`` maxrss, Python and torch included) is its own. The
baseline is ``parttok.baselines.ConvVQ`` at its default (T2M-GPT) size with random weights:
the speed of a network does not depend on its weights. Each model runs in float32 and in
bf16-mixed (``Tokenizer.precision``); for the tokenizer, bf16-mixed's codes are compared with
float32's and both reconstructions measured (MPJPE) on the same clips. Writes the
"## encode/decode throughput" section of BENCHMARKS.md with the command, the machine and the
date.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from parttok.features import FPS
from parttok.io import bfloat16_instructions, machine_description, replace_markdown_section
from parttok.tokenizer import PRECISIONS

REPO = Path(__file__).resolve().parents[1]
SECTION = "## encode/decode throughput"
THREADS = 2
HEADER = (
    "| model | parameters | bits/s | encode, batch 1 | encode, batch {b} | decode, batch 1 "
    "| decode, batch {b} | CPU ms / 1k frames, batch {b}, encode / decode | peak memory (MB) "
    "|\n|---|---|---|---|---|---|---|---|---|\n"
)


def load_windows(sources: list[str], frames: int, count: int, max_clips: int) -> np.ndarray:
    """``count`` windows (count, frames, 263) cut from the real clips, end to end."""
    from parttok.sources import find_clips, load_clip_features

    clips = [load_clip_features(clip.path) for clip in find_clips(sources)[:max_clips]]
    stream = np.concatenate(clips)  # (N, 263)
    starts = (np.arange(count) * frames) % max(1, len(stream) - frames + 1)
    if len(stream) < frames:
        stream = np.resize(stream, (frames, stream.shape[1]))
        starts = np.zeros(count, dtype=int)
    return np.stack([stream[start : start + frames] for start in starts])


def best_time(run, repeats: int) -> tuple[float, float]:
    """Wall and CPU seconds (all threads) of the fastest of ``repeats`` runs after one
    warm-up; CPU time barely changes when other processes share the cores, wall time does."""
    run()
    times = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(times)


def measure(
    model: str,
    precision: str,
    statistics: Path,
    windows: np.ndarray,
    batch_size: int,
    single: int,
    repeats: int,
) -> dict:
    """Frames per second each way at batch 1 and batched, in a fresh process; for a trained
    tokenizer also its MPJPE on the windows and, in bf16-mixed, how many codes float32's are."""
    import torch

    torch.set_num_threads(THREADS)
    tokenizer = build_tokenizer(model, statistics, windows)
    tokenizer.precision = precision
    clips = list(windows)
    codes = tokenizer.encode_batch(clips, batch_size)
    frames = len(clips) * windows.shape[1]
    single_frames = single * windows.shape[1]
    timings = {
        "encode_1": best_time(lambda: [tokenizer.encode(c) for c in clips[:single]], repeats),
        "encode_b": best_time(lambda: tokenizer.encode_batch(clips, batch_size), repeats),
        "decode_1": best_time(lambda: [tokenizer.decode(c) for c in codes[:single]], repeats),
        "decode_b": best_time(lambda: tokenizer.decode_batch(codes, batch_size), repeats),
    }
    rates = {
        name: (single_frames if name.endswith("_1") else frames) / wall
        for name, (wall, _) in timings.items()
    }
    cpu_ms = {  # CPU milliseconds per 1,000 frames, batched
        f"{name}_cpu": 1e6 * timings[name][1] / frames for name in ("encode_b", "decode_b")
    }
    result = {
        "name": describe(tokenizer),
        "parameters": sum(p.numel() for p in tokenizer.model.parameters()),
        "bits_per_second": tokenizer.bits_per_second,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **rates,
        **cpu_ms,
    }
    if model != "baseline":
        from parttok.evaluation import evaluate_clips

        named = {str(index): clip for index, clip in enumerate(clips)}
        result["mpjpe_mm"] = evaluate_clips(tokenizer, named, batch_size)["mpjpe_mm"]
        if precision != "32-true":
            tokenizer.precision = "32-true"
            exact = tokenizer.encode_batch(clips, batch_size)
            result["codes_equal"] = float(np.mean(np.concatenate(exact) == np.concatenate(codes)))
    return result


def measure_long(
    model: str, precision: str, statistics: Path, clips: np.ndarray, repeats: int
) -> dict:
    """Frames per second each way and peak memory for ``clips`` (N, frames, 263) passed to one
    call of ``encode_batch`` / ``decode_batch``, in a fresh process."""
    import torch

    torch.set_num_threads(THREADS)
    tokenizer = build_tokenizer(model, statistics, clips)
    tokenizer.precision = precision
    clips = list(clips)
    codes = tokenizer.encode_batch(clips, len(clips))
    frames = sum(map(len, clips))
    encode = best_time(lambda: tokenizer.encode_batch(clips, len(clips)), repeats)
    decode = best_time(lambda: tokenizer.decode_batch(codes, len(codes)), repeats)
    return {
        "name": describe(tokenizer),
        "encode": frames / encode[0],
        "decode": frames / decode[0],
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def in_fresh_process(function, *args) -> dict:
    """``function(*args)`` in a process of its own (its peak memory its own)."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        return pool.submit(function, *args).result()


def build_tokenizer(model: str, statistics: Path, windows: np.ndarray):
    """``baseline``: ConvVQ at its default size with random weights, normalised by the
    statistics in the folder ``statistics``, its codebook k-means-initialised on the first
    windows; anything else: a tokenizer path ("" for the shipped model)."""
    import torch

    from parttok.tokenizer import Tokenizer

    if model != "baseline":
        return Tokenizer.from_pretrained(model or None)
    from parttok.baselines import ConvVQ

    torch.manual_seed(0)
    network = ConvVQ()
    mean = np.load(statistics / "Mean.npy")
    std = np.load(statistics / "Std.npy")
    sample = torch.from_numpy((windows[:16] - mean) / std).float()  # (16, frames, 263)
    network.train()(sample, torch.ones(sample.shape[:2], dtype=torch.bool))
    return Tokenizer(network.eval(), mean, std)


def describe(tokenizer) -> str:
    config = tokenizer.model.config
    name = type(tokenizer.model).__name__
    if name == "PartTokenizer":
        name = (
            f"parttok {tokenizer.identity} ({tokenizer.num_parts} parts x "
            f"{tokenizer.codebook_size}, dim {config.get('dim')}, depth "
            f"{config.get('encoder_depth')}+{config.get('decoder_depth')})"
        )
    else:
        name = f"{name} (T2M-GPT size, random weights)"
    return f"{name}, {tokenizer.precision}"


def table_row(result: dict) -> str:
    rates = " | ".join(
        f"{result[name]:,.0f}" for name in ("encode_1", "encode_b", "decode_1", "decode_b")
    )
    cpu = f"{result['encode_b_cpu']:.0f} / {result['decode_b_cpu']:.0f}"
    return (
        f"| {result['name']} | {result['parameters'] / 1e6:.2f} M | "
        f"{result['bits_per_second']:.0f} | {rates} | {cpu} | {result['peak_mb']:.0f} |"
    )


def _shown(source: str) -> str:
    path = Path(source).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("PARTTOK_DATA", REPO.parent / "shared" / "data"))
    converted = REPO / "data" / "bandai"
    default_data = converted if converted.is_dir() else shared / "humanml3d"
    parser.add_argument("--checkpoint", default="", help="tokenizer (default: shipped model)")
    parser.add_argument("--data", nargs="+", default=[str(default_data)], help="real clips")
    parser.add_argument("--frames", type=int, default=200, help="frames per clip")
    parser.add_argument("--clips", type=int, default=128, help="clips per batched run")
    parser.add_argument("--single", type=int, default=32, help="clips per batch-1 run")
    parser.add_argument("--max-sources", type=int, default=400, help="source clips to read")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--long-frames", type=int, default=6000, help="frames per long clip")
    parser.add_argument("--long-clips", type=int, default=4, help="long clips in one call")
    parser.add_argument("--label", help="name of the tokenizer in the table")
    parser.add_argument("--benchmarks", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    windows = load_windows(args.data, args.frames, args.clips, args.max_sources)
    long_clips = load_windows(args.data, args.long_frames, args.long_clips, args.max_sources)
    statistics = shared / "humanml3d"
    single = min(args.single, args.clips)
    results, long_results = [], []
    for model in (args.checkpoint, "baseline"):
        for precision in PRECISIONS:
            results.append(
                in_fresh_process(
                    measure,
                    model,
                    precision,
                    statistics,
                    windows,
                    args.batch_size,
                    single,
                    args.repeats,
                )
            )
            long_results.append(
                in_fresh_process(measure_long, model, precision, statistics, long_clips, 3)
            )
    if args.label:
        for result in results[: len(PRECISIONS)] + long_results[: len(PRECISIONS)]:
            result["name"] = f"{args.label}, {result['name'].rsplit(', ', 1)[-1]}"
    data = ", ".join(_shown(source) for source in args.data)
    command = "python tools/bench_throughput.py"
    command += f" --checkpoint {args.checkpoint}" if args.checkpoint else ""
    command += f' --label "{args.label}"' if args.label else ""
    table = HEADER.format(b=args.batch_size) + "\n".join(map(table_row, results)) + "\n"
    seconds = args.long_frames / FPS
    long_table = (
        f"| model | encode, {args.long_clips} clips of {seconds:.0f} s | decode | peak memory "
        "(MB) |\n|---|---|---|---|\n"
        + "\n".join(
            f"| {r['name']} | {r['encode']:,.0f} | {r['decode']:,.0f} | {r['peak_mb']:.0f} |"
            for r in long_results
        )
        + "\n"
    )
    exact, mixed = results[0], results[1]
    precision_note = (
        f"bf16-mixed (`--precision bf16-mixed`, `Tokenizer.precision`): bfloat16 matrix "
        f"products, the code search in float32. On these {args.clips} clips "
        f"{100 * mixed['codes_equal']:.1f}% of the tokenizer's codes are float32's, and it "
        f"reconstructs them at {mixed['mpjpe_mm']:.2f} mm MPJPE (float32: "
        f"{exact['mpjpe_mm']:.2f} mm); batched, it encodes "
        f"{mixed['encode_b'] / exact['encode_b']:.2f}x and decodes "
        f"{mixed['decode_b'] / exact['decode_b']:.2f}x as fast as float32 on this CPU "
        f"(bfloat16 instructions: {', '.join(bfloat16_instructions() or ['none'])}; without "
        "them bf16-mixed is slower).\n\n"
    )
    section = (
        f"{SECTION}\n\n"
        f"Frames per second through `Tokenizer.encode`/`decode` (batch 1) and "
        f"`encode_batch`/`decode_batch` (batch {args.batch_size}), numpy in and out, "
        f"normalisation and padding included, on {args.clips} clips of {args.frames} frames "
        f"cut from {data} (batch 1: the first {min(args.single, args.clips)}); the best of "
        f"{args.repeats} runs after a warm-up. CPU time is summed over both threads and "
        "depends little on other load; frames per second are wall-clock. Peak memory: maxrss "
        "of the process that ran the model (Python and torch included). The baseline is the "
        "T2M-GPT VQ-VAE (`parttok.baselines.ConvVQ` at its default size) with random "
        "weights, measured in the same run. Long clips: frames per second (wall clock, best "
        f"of 3) of {args.long_clips} clips of {args.long_frames} frames ({seconds:.0f} s at "
        f"{FPS} fps, cut end to end from the same clips) through one call of `encode_batch` and "
        "`decode_batch`, which takes at most `parttok.tokenizer.BATCH_FRAMES` padded frames "
        "in a pass (a five-minute clip alone), and the peak memory of that process; local "
        "attention across time keeps both linear in a clip's length.\n\n"
        f"- command: `{command}`\n"
        f"- machine: {machine_description()}\n"
        f"- date: {datetime.date.today().isoformat()} (load average {load:.1f} at the start"
        f"{': other processes shared the cores' if load >= 1 else ''})\n\n"
        f"{table}\n{precision_note}{long_table}"
    )
    print(table)
    print(long_table)
    if not args.no_write:
        replace_markdown_section(args.benchmarks, section)
        print(f"updated {args.benchmarks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
