"""``parttok instruct SRC... --out FILE.jsonl``: instruction-tuning conversations
(text-to-motion, captioning, prediction, pose estimation) from captioned clips."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from parttok.cli.common import add_refine_argument
from parttok.errors import InputError

DEFAULT_TASKS = "t2m,caption,pose,predict"  # parttok.instruct.TASKS, without importing torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SRC",
        help="folders in the HumanML3D layout (new_joint_vecs/ and texts/)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="output: .jsonl (one conversation a line) or .json (one JSON array)",
    )
    parser.add_argument("--checkpoint", metavar="PATH", help="motion tokenizer (default: shipped)")
    parser.add_argument(
        "--pose-checkpoint",
        metavar="PATH",
        help="pose tokenizer (default: the shipped one; 'none': no pose task)",
    )
    parser.add_argument(
        "--format",
        choices=("messages", "llava"),
        default="messages",
        help="chat 'messages' (default) or LLaVA 'conversations'",
    )
    parser.add_argument(
        "--templates",
        metavar="YAML",
        help="template file (default: the one shipped in parttok, instruct_templates.yaml)",
    )
    parser.add_argument(
        "--tasks",
        default=DEFAULT_TASKS,
        help=f"comma-separated, from {DEFAULT_TASKS} (default: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="templates, cuts, frames, cameras")
    parser.add_argument("--naming", choices=("parttok", "motiongpt"), default="parttok")
    parser.add_argument(
        "--pose-input",
        choices=("keypoints", "image"),
        default="keypoints",
        help="pose prompts: 2D keypoints as text (default) or an <image> placeholder",
    )
    parser.add_argument(
        "--min-frames",
        type=int,
        default=20,
        metavar="N",
        help="leave out (sub-)clips shorter than this (default: 20, one second)",
    )
    camera = parser.add_argument_group(
        "pose keypoints",
        "a random camera per pose (position, height, yaw, pitch, focal length) unless one of "
        "--focal/--camera-distance/--elevation/--azimuth fixes the camera",
    )
    camera.add_argument("--focal", type=float, help="camera focal length, pixels (fixed: 600)")
    camera.add_argument("--camera-distance", type=float, help="camera to pelvis, metres (4)")
    camera.add_argument("--elevation", type=float, help="camera elevation, degrees (10)")
    camera.add_argument("--azimuth", type=float, help="camera azimuth, degrees, 0 = in front (0)")
    camera.add_argument(
        "--keypoint-noise", type=float, default=3.0, help="pixel noise, std (default: 3)"
    )
    camera.add_argument(
        "--missing-joints",
        type=float,
        default=0.1,
        help="probability that a keypoint is missing (default: 0.1)",
    )
    parser.add_argument(
        "--split",
        choices=("train", "val", "test", "all"),
        default="all",
        help="only the clips each folder's <split>.txt lists (default: all clips)",
    )
    add_refine_argument(parser)
    parser.add_argument("-f", "--force", action="store_true", help="overwrite the output")


def run(args: argparse.Namespace) -> int:
    from parttok.cli.common import exit_status
    from parttok.instruct import (
        Camera,
        InstructSettings,
        build_conversations,
        load_templates,
        summary,
        write_conversations,
    )
    from parttok.tokenizer import POSE_DIR, Tokenizer

    out = Path(args.out)
    if out.exists() and not args.force:
        raise InputError(f"{out}: exists (-f overwrites)")
    tasks = tuple(task.strip() for task in args.tasks.split(",") if task.strip())
    if args.keypoint_noise < 0 or not 0 <= args.missing_joints < 1:
        raise InputError("--keypoint-noise must be >= 0 and --missing-joints in [0, 1)")
    fixed = {
        "focal": args.focal,
        "distance": args.camera_distance,
        "elevation": args.elevation,
        "azimuth": args.azimuth,
    }
    settings = InstructSettings(
        tasks=tasks,
        seed=args.seed,
        naming=args.naming,
        pose_input=args.pose_input,
        min_frames=args.min_frames,
        camera=Camera(**{name: value for name, value in fixed.items() if value is not None}),
        random_camera=all(value is None for value in fixed.values()),
        keypoint_noise=args.keypoint_noise,
        missing_joints=args.missing_joints,
        refine=args.refine,
        split=None if args.split == "all" else args.split,
    )
    templates = load_templates(args.templates)
    tokenizer = Tokenizer.from_pretrained(args.checkpoint)
    pose_source = args.pose_checkpoint or (POSE_DIR if "pose" in settings.tasks else None)
    pose_tokenizer = (
        None if pose_source in (None, "none") else Tokenizer.from_pretrained(pose_source)
    )
    for used in (tokenizer, pose_tokenizer):  # --refine applies to both
        if used is not None:
            used.check_refine(args.refine)
    report = build_conversations(
        args.sources, tokenizer, templates, settings, pose_tokenizer, show_progress=True
    )
    if "pose" in report.skipped_tasks:
        print("pose task skipped: no pose tokenizer (--pose-checkpoint)", file=sys.stderr)
    if not report.records:
        raise InputError("no conversations made; see the messages above")
    write_conversations(report.records, out, args.format)
    print(f"{out}: {summary(report)}")
    return exit_status(report.failed)
