"""``parttok evaluate SRC... [--checkpoint PATH] [--json FILE]``."""

from __future__ import annotations

import argparse
import json

from parttok.cli.common import add_refine_argument, exit_status, process_batch, whole_number
from parttok.cli.encode import add_precision_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SRC", help="BVH, feature .npy, or folders")
    parser.add_argument("--checkpoint", help="tokenizer folder or .ckpt (default: shipped model)")
    parser.add_argument("--json", help="write the full report (with per-clip rows) here")
    parser.add_argument("--rig", default="auto", help="rig of BVH sources: auto, a name or a YAML")
    parser.add_argument("--batch-size", type=whole_number(1), default=32)
    add_precision_argument(parser)
    add_refine_argument(parser)
    parser.add_argument("--report", help="also write a markdown report with figures to this folder")
    parser.add_argument(
        "--split",
        choices=("train", "val", "test", "all"),
        default="all",
        help="HumanML3D-layout folders: only the clips <split>.txt lists (default: all)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from parttok.evaluation import evaluate_clips, format_table, round_trip
    from parttok.io import write_text
    from parttok.sources import find_clips, load_clip_features
    from parttok.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(args.checkpoint, precision=args.precision)
    tokenizer.check_refine(args.refine)
    clips = find_clips(args.sources, split=None if args.split == "all" else args.split)
    loaded, failed = process_batch(
        clips,
        lambda clip: load_clip_features(clip.path, args.rig),
        "loading",
        show_progress=not args.quiet,
    )
    usable = {str(clip.relative.with_suffix("")): features for clip, features in loaded}
    usable = {n: f for n, f in usable.items() if len(f) >= tokenizer.frames_per_step}
    if not usable:
        print("no usable clips to evaluate")
        return 2
    trip = round_trip(tokenizer, list(usable.values()), args.batch_size, refine=args.refine)
    report = evaluate_clips(tokenizer, usable, trip=trip)
    report["failed"] = [{"clip": str(clip.path), "error": error} for clip, error in failed]
    print(format_table(report))
    if args.json:
        write_text(args.json, json.dumps(report, indent=2) + "\n")
    if args.report:
        from parttok.report import write_report

        write_report(args.report, tokenizer, usable, report, codes=trip.codes)
    return exit_status(failed)
