"""``parttok caption SRC... [--json FILE]``: motion -> text through a tuned language model.

SRC as in ``evaluate``: BVH files, feature or joint ``.npy`` files, folders of them or
HumanML3D-layout folders. One line per clip on stdout; ``--json`` writes one row per clip
(``clip``, ``caption``, ``steps``)."""

from __future__ import annotations

import argparse
import json
import sys

from parttok.cli.common import whole_number
from parttok.cli.generate import add_llm_arguments, checked_output
from parttok.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SRC", help="clips or folders of clips")
    parser.add_argument("--json", metavar="FILE", help="write the captions as a JSON array")
    parser.add_argument("--rig", default="auto", help="BVH rig (default: auto)")
    parser.add_argument(
        "--batch-size", type=whole_number(1), default=8, metavar="N", help="clips per batch"
    )
    add_llm_arguments(parser)
    parser.add_argument("-f", "--force", action="store_true", help="overwrite --json")


def run(args: argparse.Namespace) -> int:
    from parttok.cli.common import exit_status, process_batch
    from parttok.sources import find_clips, load_clip_features

    out = checked_output(args.json, args.force, (".json",)) if args.json else None
    clips = find_clips(args.sources)
    if not clips:
        raise InputError("no clips (.bvh or .npy) among the sources")
    from parttok.llm.base import require_transformers

    require_transformers()
    from parttok.llm.model import MotionLLM

    llm = MotionLLM.from_pretrained(args.llm, base=args.base, checkpoint=args.checkpoint)
    minimum = llm.tokenizer.frames_per_step

    def encode(clip):
        features = load_clip_features(clip.path, args.rig)
        if len(features) < minimum:
            raise InputError(f"{clip.path}: {len(features)} frames, fewer than {minimum}")
        return llm.read_batch([features])[0]

    done, failed = process_batch(clips, encode, "encode", show_progress=False)
    if not done:
        raise InputError("no clip to caption; see the messages above")
    rows = []
    for start in range(0, len(done), args.batch_size):
        chunk = done[start : start + args.batch_size]
        captions = llm.caption([motion for _, motion in chunk])
        for (clip, motion), caption in zip(chunk, captions, strict=True):
            rows.append({"clip": str(clip.path), "caption": caption, "steps": len(motion)})
            print(f"{clip.path}: {caption}")
    if out is not None:
        from parttok.io import write_text

        write_text(out, json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
        print(f"{out}: {len(rows)} caption(s)", file=sys.stderr)
    return exit_status(failed)
