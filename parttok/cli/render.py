"""``parttok render SRC --out FILE [--compare SRC2 | --reconstruct] [--checkpoint PATH]``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from parttok.cli.common import whole_number
from parttok.constants import ANIMATION_SUFFIXES, FPS, TOKEN_SUFFIX
from parttok.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from parttok.tokenizer import Tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", metavar="SRC", help=f"a BVH, a feature or joints .npy, or a {TOKEN_SUFFIX} file"
    )
    parser.add_argument("--out", required=True, help="the animation to write: .gif or .mp4")
    side = parser.add_mutually_exclusive_group()
    side.add_argument("--compare", metavar="SRC2", help="a second motion to show beside SRC")
    side.add_argument(
        "--reconstruct",
        action="store_true",
        help="show SRC beside its reconstruction through the tokenizer",
    )
    parser.add_argument(
        "--checkpoint", help="tokenizer for token files and --reconstruct (default: shipped)"
    )
    parser.add_argument("--caption", help="a title over the animation")
    parser.add_argument(
        "--fps",
        type=whole_number(1),
        default=FPS,
        help=f"playback frames per second (default {FPS})",
    )
    parser.add_argument("--rig", default="auto", help="rig of BVH sources: auto, a name or a YAML")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in ANIMATION_SUFFIXES:
        raise InputError(f"{out}: cannot write {out.suffix or 'no suffix'!r}; use .gif or .mp4")
    from parttok.features import features_to_joints
    from parttok.metrics import joint_errors
    from parttok.render import render_animation
    from parttok.sources import load_clip_features

    loader = _MotionLoader(args.checkpoint, args.rig)
    source = Path(args.source)
    if args.reconstruct:
        if source.suffix.lower() == TOKEN_SUFFIX:
            raise InputError(f"{source}: --reconstruct needs a motion, not tokens")
        features = load_clip_features(source, args.rig)
        reconstruction = loader.tokenizer().reconstruct(features)
        original = features_to_joints(features[: len(reconstruction)])  # (F, 22, 3)
        reconstructed = features_to_joints(reconstruction)
        error = joint_errors(reconstructed, original).mean() * 1000
        motions = [original, reconstructed]
        titles = [source.stem, f"reconstruction ({error:.0f} mm)"]
    else:
        sources = [source] if args.compare is None else [source, Path(args.compare)]
        motions = [loader(path) for path in sources]
        titles = [path.stem for path in sources] if len(sources) > 1 else None
    render_animation(motions, out, titles=titles, caption=args.caption, fps=args.fps)
    print(f"wrote {out} ({max(len(m) for m in motions)} frames)")
    return 0


class _MotionLoader:
    """Reads any source as joints (T, 22, 3), the way the tokenizer sees motion: through
    the HumanML3D features (floor at 0, starting at the origin facing +Z); token files are
    decoded by the tokenizer, loaded once on first need."""

    def __init__(self, checkpoint: str | None, rig: str) -> None:
        self.checkpoint = checkpoint
        self.rig = rig
        self._tokenizer: Tokenizer | None = None

    def tokenizer(self) -> Tokenizer:
        from parttok.tokenizer import Tokenizer

        if self._tokenizer is None:
            self._tokenizer = Tokenizer.from_pretrained(self.checkpoint)
        return self._tokenizer

    def __call__(self, path: Path) -> np.ndarray:
        from parttok.features import features_to_joints
        from parttok.sources import load_clip_features
        from parttok.tokenfile import load_tokens

        if path.suffix.lower() == TOKEN_SUFFIX:
            tokenizer = self.tokenizer()
            tokens = load_tokens(path, expect_identity=tokenizer.identity)
            return features_to_joints(tokenizer.decode(tokens.codes))
        return features_to_joints(load_clip_features(path, self.rig))
