"""``parttok encode SRC... --out DIR``: clips -> one token file per clip, mirroring the tree."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from parttok.cli.common import add_refine_argument, exit_status, whole_number
from parttok.constants import PRECISIONS, TOKEN_SUFFIX
from parttok.errors import InputError

if TYPE_CHECKING:
    from parttok.inference import FileJob, RunOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources", nargs="+", metavar="SRC", help="BVH, feature or joint .npy, or folders"
    )
    parser.add_argument("--out", required=True, help="folder for the token files")
    parser.add_argument("--checkpoint", help="tokenizer folder or .ckpt (default: shipped model)")
    parser.add_argument("--rig", default="auto", help="rig of BVH sources: auto, a name or a YAML")
    add_refine_argument(parser)
    add_run_arguments(parser)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """--precision, for every command that runs the model."""
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="32-true",
        help="bf16-mixed: bfloat16 matrix products, decoding 2.4x as fast on a CPU with bfloat16 "
        "instructions; a few codes in a hundred differ",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by encode and decode."""
    parser.add_argument("--batch-size", type=whole_number(1), default=32, help="clips per batch")
    add_precision_argument(parser)
    parser.add_argument(
        "--devices",
        type=whole_number(1),
        help="devices for Lightning's predict loop (default: all GPUs if any, else the CPU)",
    )
    parser.add_argument(
        "--workers",
        type=whole_number(0),
        help="processes loading inputs (default: up to 4, cores - 1; 0: load in this process)",
    )
    parser.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from parttok.inference import encode_files, output_jobs
    from parttok.io import ensure_output_dir
    from parttok.sources import find_clips
    from parttok.tokenfile import SHIPPED_MODEL
    from parttok.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(args.checkpoint, precision=args.precision)
    tokenizer.check_refine(args.refine)
    clips = find_clips(args.sources)
    ensure_output_dir(args.out)
    todo, skipped, clashes = output_jobs(clips, args.out, TOKEN_SUFFIX, args.force)
    todo, unreadable = readable_sources(todo)
    report_plan(todo, skipped, clashes + unreadable)
    source = str(Path(args.checkpoint).resolve()) if args.checkpoint else SHIPPED_MODEL
    failed = encode_files(
        tokenizer,
        todo,
        rig=args.rig,
        checkpoint_source=source,
        options=run_options(args),
        refine=args.refine,
    )
    return exit_status(clashes + unreadable + failed)


def readable_sources(jobs: list[FileJob]) -> tuple[list[FileJob], list[tuple[FileJob, str]]]:
    """The jobs whose source has a sound ``.npy`` or BVH header, and the others with the
    reason: batching reads each clip's length from its header before anything is encoded."""
    from parttok.bvh import read_bvh_header
    from parttok.io import read_npy_header

    readable: list[FileJob] = []
    unreadable: list[tuple[FileJob, str]] = []
    for job in jobs:
        try:
            if job.source.suffix.lower() == ".npy":
                read_npy_header(job.source)
            elif job.source.suffix.lower() == ".bvh":
                read_bvh_header(job.source)
            readable.append(job)
        except InputError as error:
            unreadable.append((job, str(error)))
    return readable, unreadable


def run_options(args: argparse.Namespace) -> RunOptions:
    from parttok.inference import RunOptions

    return RunOptions(
        batch_size=args.batch_size,
        workers=args.workers,
        devices=args.devices,
        progress=not args.quiet,
    )


def report_plan(todo: list, skipped: list, refused: list) -> None:
    """Say what will be done before doing it."""
    for _, message in refused:
        print(f"skipped: {message}", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} output(s) exist already, skipped (-f overwrites)")
    if not todo:
        print("nothing to do")
