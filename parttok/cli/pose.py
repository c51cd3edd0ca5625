"""``parttok pose KEYPOINTS.json... --out FILE``: 2D keypoints -> 3D pose through a tuned
language model and its pose tokenizer.

Each JSON file holds one object with ``keypoints`` (22 ``[x, y]`` pixels or null for a missing
joint, in the order of ``parttok.skeleton.JOINT_NAMES``, or an object joint name -> ``[x, y]``),
or a list of such objects; the records ``parttok instruct`` writes for its pose task qualify.
FILE's suffix picks the output: ``.npy`` (joints (N, 22, 3), metres, Y up, pelvis above the
origin), ``.json`` (per pose: source, codes, joints) or ``.bvh`` (one frame per pose)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from parttok.cli.common import whole_number
from parttok.cli.generate import add_llm_arguments, add_output_argument, checked_output
from parttok.errors import InputError

OUTPUT_SUFFIXES = (".npy", ".json", ".bvh")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="KEYPOINTS", help="JSON files of keypoints")
    add_output_argument(parser, OUTPUT_SUFFIXES)
    parser.add_argument(
        "--batch-size", type=whole_number(1), default=8, metavar="N", help="poses per batch"
    )
    add_llm_arguments(parser)


def read_poses(path: Path) -> list:
    """The keypoints (22, 2) of each pose in a JSON file."""
    from parttok.instruct import parse_keypoints

    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise InputError(f"{path}: not a readable JSON file ({error})") from None
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(item, dict) and "keypoints" in item for item in items):
        raise InputError(f"{path}: expected an object with 'keypoints' or a list of them")
    return [parse_keypoints(item["keypoints"], f"{path}[{i}]") for i, item in enumerate(items)]


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from parttok.cli.common import exit_status, process_batch

    out = checked_output(args.out, args.force, OUTPUT_SUFFIXES)
    done, failed = process_batch(
        [Path(s) for s in args.sources], read_poses, "read", show_progress=False
    )
    poses = [(str(path), index, pixels) for path, read in done for index, pixels in enumerate(read)]
    if not poses:
        raise InputError("no keypoints to estimate a pose from; see the messages above")
    from parttok.llm.base import require_transformers

    require_transformers()
    from parttok.instruct import pose_joints
    from parttok.llm.model import MotionLLM

    llm = MotionLLM.from_pretrained(args.llm, base=args.base, checkpoint=args.checkpoint)
    codes = []
    for start in range(0, len(poses), args.batch_size):
        chunk = [pixels for _, _, pixels in poses[start : start + args.batch_size]]
        codes += [generated.codes for generated in llm.pose(chunk)]
    features = llm.pose_tokenizer.decode_batch(codes)  # N x (1, 263)
    joints = np.concatenate([pose_joints(f[:1]) for f in features])  # (N, 22, 3)
    write_poses(out, poses, codes, joints)
    print(f"{out}: {len(poses)} pose(s)")
    return exit_status(failed)


def write_poses(out: Path, poses: list, codes: list, joints) -> None:
    """Write the estimated poses as ``out``'s suffix says."""
    from parttok.io import save_npy, write_text

    suffix = out.suffix.lower()
    if suffix == ".npy":
        save_npy(out, joints.astype("float32"))
    elif suffix == ".bvh":
        from parttok.bvh import save_bvh

        save_bvh(out, joints)
    else:
        rows = [
            {"source": source, "index": index, "codes": c.tolist(), "joints": j.round(4).tolist()}
            for (source, index, _), c, j in zip(poses, codes, joints, strict=True)
        ]
        write_text(out, json.dumps(rows, indent=1) + "\n")
