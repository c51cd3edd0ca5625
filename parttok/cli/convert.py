"""``parttok convert SRC... --out DIR``: BVH files, folders of them, joint/feature ``.npy``
files or HumanML3D-layout folders -> a folder in the HumanML3D layout."""

from __future__ import annotations

import argparse
import os
import sys

from parttok.cli.common import exit_status, whole_number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SRC",
        help="BVH files, folders searched recursively for BVH, (T, 22, 3) joint or (T, 263) "
        "feature .npy files, or folders in the HumanML3D layout (new_joints/)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--rig",
        default="auto",
        help="how BVH joints map onto the 22 SMPL joints: auto (detect from joint names), "
        "a preset name, or a YAML mapping file (default: auto)",
    )
    parser.add_argument(
        "--jobs",
        type=whole_number(1),
        default=os.cpu_count() or 1,
        metavar="N",
        help="parallel processes (default: the number of CPUs)",
    )
    parser.add_argument(
        "-f", "--force", action="store_true", help="convert again clips whose outputs exist"
    )


def run(args: argparse.Namespace) -> int:
    from parttok.data import convert_sources

    report = convert_sources(args.sources, args.out, args.rig, args.jobs, args.force)
    print(
        f"converted {len(report.converted)} clip(s) ({report.frames} frames), "
        f"{len(report.skipped)} already done, {len(report.failed)} failed; "
        f"{report.out} holds {report.total_clips} clip(s)",
        file=sys.stderr,
    )
    if report.stale:
        print(
            f"{len(report.stale)} clip(s) in {report.out} (first: {report.stale[0]}) are from an"
            " older import: convert their sources into it too, or use a new folder",
            file=sys.stderr,
        )
    return exit_status(report.failed)
