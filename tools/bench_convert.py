"""Benchmark ``parttok convert`` over all 2,902 Bandai Namco 2 clips.

    python tools/bench_convert.py [--data FOLDER] [--jobs 2] [--limit N] [--no-write]

Runs the real command (``python -m parttok convert``, startup included) into a temporary
folder, then prints a markdown table row (wall time, source and output frames per second,
peak memory of the largest process) and writes it into the "## convert" section of
BENCHMARKS.md with the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from parttok.io import extract_once, machine_description, replace_markdown_section

REPO = Path(__file__).resolve().parents[1]
HEADER = (
    "| clips | jobs | wall time (s) | CPU time (s) | source frames | source frames/s "
    "| output frames | output frames/s | peak memory (MB) | load average |\n"
    "|---|---|---|---|---|---|---|---|---|---|\n"
)


def source_frames(path: Path) -> int:
    """The ``Frames:`` count in a BVH header (at the file's own rate)."""
    with open(path, "rb") as stream:
        head = stream.read(1 << 16)
    match = re.search(rb"Frames:\s*(\d+)", head)
    return int(match[1]) if match else 0


def output_frames(out: Path) -> int:
    """Feature rows written: the sum of the first dimension of every new_joint_vecs file."""
    return sum(len(np.load(p, mmap_mode="r")) for p in (out / "new_joint_vecs").glob("*.npy"))


def run(files: list[Path], source: Path, jobs: int, out: Path) -> dict:
    command = [sys.executable, "-m", "parttok", "convert", str(source), "--out", str(out)]
    command += ["--jobs", str(jobs)]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    finished = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if finished.returncode not in (0, 2):
        sys.stderr.write(finished.stderr[-4000:])
        raise SystemExit(f"convert failed with status {finished.returncode}")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, children.ru_maxrss)
    frames_in = sum(source_frames(path) for path in files)
    frames_out = output_frames(out)
    return {
        "clips": len(files),
        "converted": len(list((out / "new_joint_vecs").glob("*.npy"))),
        "jobs": jobs,
        "wall": wall,
        "cpu": children.ru_utime + children.ru_stime,
        "load": load,
        "frames_in": frames_in,
        "frames_out": frames_out,
        "peak_mb": peak_kb / 1024,
        "summary": finished.stderr.strip().splitlines()[-1] if finished.stderr.strip() else "",
    }


def table_row(result: dict) -> str:
    return (
        f"| {result['clips']} | {result['jobs']} | {result['wall']:.1f} | {result['cpu']:.1f} | "
        f"{result['frames_in']:,} | {result['frames_in'] / result['wall']:,.0f} | "
        f"{result['frames_out']:,} | {result['frames_out'] / result['wall']:,.0f} | "
        f"{result['peak_mb']:.0f} | {result['load']:.1f} |"
    )


def update_benchmarks(path: Path, result: dict, command: str) -> None:
    """Replace (or add) the "## convert" section of BENCHMARKS.md."""
    section = (
        "## convert\n\n"
        "`parttok convert` over Bandai Namco Research Motion Dataset 2 (30 fps BVH -> "
        "HumanML3D features at 20 fps), measured by `tools/bench_convert.py`: wall time of "
        "the whole command (interpreter start-up and the index included), frames per "
        "second counted at the source rate and as feature rows written, CPU time of all its "
        "processes, peak resident memory of the largest process, and the machine's 1-minute "
        "load average when it started (other jobs sharing the CPUs inflate the wall time, "
        "not the CPU time).\n\n"
        f"- command: {command}\n"
        f"- machine: {machine_description()}\n"
        f"- date: {datetime.date.today().isoformat()}\n\n"
        f"{HEADER}{table_row(result)}\n"
    )
    replace_markdown_section(path, section)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("PARTTOK_DATA", REPO.parent / "shared" / "data"))
    parser.add_argument("--data", type=Path, help="folder of Bandai Namco 2 (with data/*.bvh)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--limit", type=int, help="only the first N clips (a quick check)")
    parser.add_argument("--benchmarks", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    data = args.data or extract_once(shared / "bandai-namco-2.tar.xz")
    source = data / "data" if (data / "data").is_dir() else data
    files = sorted(source.glob("*.bvh"))
    if not files:
        raise SystemExit(f"{source}: no .bvh files")
    with tempfile.TemporaryDirectory(prefix="parttok-bench-") as scratch:
        if args.limit:
            files = files[: args.limit]
            subset = Path(scratch) / "subset"
            subset.mkdir()
            for path in files:
                (subset / path.name).symlink_to(path)
                if path.with_suffix(".json").is_file():
                    (subset / path.with_suffix(".json").name).symlink_to(path.with_suffix(".json"))
            shutil.copytree(source.parent / "cfg", Path(scratch) / "cfg", dirs_exist_ok=True)
            source = subset
        result = run(files, source, args.jobs, Path(scratch) / "out")
    command = (
        f"`python tools/bench_convert.py --jobs {args.jobs}`, which runs `parttok convert "
        f"BANDAI/data --out TMP --jobs {args.jobs}` on the extracted archive"
    )
    print(result["summary"])
    print(HEADER + table_row(result))
    if result["converted"] != len(files):
        print(f"warning: {len(files) - result['converted']} clip(s) failed", file=sys.stderr)
    if not args.no_write:
        update_benchmarks(args.benchmarks, result, command)
        print(f"updated {args.benchmarks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
