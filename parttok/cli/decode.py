"""``parttok decode TOKENS... --out DIR``: token files -> ``<clip>.npy`` or ``<clip>.bvh``."""

from __future__ import annotations

import argparse

from parttok.cli.common import exit_status
from parttok.cli.encode import add_run_arguments, report_plan, run_options
from parttok.constants import DECODE_FORMATS, TOKEN_SUFFIX


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources", nargs="+", metavar="TOKENS", help=f"{TOKEN_SUFFIX} files or folders"
    )
    parser.add_argument("--out", required=True, help="folder for the decoded clips")
    parser.add_argument(
        "--format",
        choices=DECODE_FORMATS,
        default="joints",
        help="joints: (T, 22, 3) .npy in metres; features: (T, 263) .npy; bvh: a BVH file",
    )
    parser.add_argument(
        "--checkpoint", help="the tokenizer that made the tokens (default: shipped model)"
    )
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from parttok.inference import decode_files, output_jobs
    from parttok.io import ensure_output_dir
    from parttok.sources import find_clips
    from parttok.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(args.checkpoint, precision=args.precision)
    suffix = ".bvh" if args.format == "bvh" else ".npy"
    clips = find_clips(args.sources, suffixes=(TOKEN_SUFFIX,))
    ensure_output_dir(args.out)
    todo, skipped, clashes = output_jobs(clips, args.out, suffix, args.force)
    report_plan(todo, skipped, clashes)
    failed = decode_files(tokenizer, todo, args.format, run_options(args))
    return exit_status(clashes + failed)
