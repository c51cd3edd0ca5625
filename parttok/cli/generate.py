"""``parttok generate "TEXT" --out FILE``: text -> motion through a tuned language model.

FILE's suffix picks the output: ``.bvh``, ``.gif``/``.mp4`` (an animation), ``.ptok`` (the
tokens) or ``.npy`` (joints (T, 22, 3), metres, Y up, 20 fps)."""

from __future__ import annotations

import argparse
from pathlib import Path

from parttok.errors import InputError

OUTPUT_SUFFIXES = (".bvh", ".gif", ".mp4", ".ptok", ".npy")


def add_llm_arguments(parser: argparse.ArgumentParser) -> None:
    """--llm, --base and --checkpoint: which tuned model, on which base, with which tokenizer."""
    parser.add_argument(
        "--llm", metavar="PATH", help="a tuned model folder from `parttok tune` (default: shipped)"
    )
    parser.add_argument(
        "--base", metavar="PATH", help="the base model it was tuned from, if not where recorded"
    )
    parser.add_argument(
        "--checkpoint", metavar="PATH", help="its motion tokenizer, if not the recorded one"
    )


def add_output_argument(parser: argparse.ArgumentParser, suffixes: tuple[str, ...]) -> None:
    """--out FILE (or --output), its suffix one of ``suffixes``, and -f to overwrite it."""
    parser.add_argument(
        "--out", "--output", required=True, metavar="FILE", help="output: " + ", ".join(suffixes)
    )
    parser.add_argument("-f", "--force", action="store_true", help="overwrite the output")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="what the person does, e.g. 'a person waves the right hand'")
    add_output_argument(parser, OUTPUT_SUFFIXES)
    parser.add_argument(
        "--seconds", type=float, metavar="S", help="duration (default: the model's choice)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="sampling temperature; 0 decodes greedily (default: 1.0)",
    )
    add_llm_arguments(parser)


def checked_output(path: str, force: bool, suffixes: tuple[str, ...]) -> Path:
    """The output path, refused before any work if its suffix or its place is wrong."""
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise InputError(f"{out}: the output must end in one of {', '.join(suffixes)}")
    if out.is_dir():
        raise InputError(f"{out}: is a folder")
    if out.exists() and not force:
        raise InputError(f"{out}: exists (-f overwrites)")
    if out.parent != Path() and not out.parent.is_dir():
        raise InputError(f"{out.parent}: no such folder")
    return out


def run(args: argparse.Namespace) -> int:
    if not args.text.strip():
        raise InputError("the description is empty")
    out = checked_output(args.out, args.force, OUTPUT_SUFFIXES)
    from parttok.llm.base import require_transformers

    require_transformers()
    from parttok.llm.model import MotionLLM

    llm = MotionLLM.from_pretrained(args.llm, base=args.base, checkpoint=args.checkpoint)
    if args.seconds is not None:
        llm.steps_for(args.seconds)  # checks the range
    generated = llm.generate(
        args.text, seconds=args.seconds, seed=args.seed, temperature=args.temperature
    )[0]
    write_motion(out, llm.tokenizer, generated.codes, args.text)
    seconds = len(generated.codes) * llm.vocab.frames_per_step / llm.vocab.fps
    print(f"{out}: {len(generated.codes)} steps ({seconds:.1f} s) for {args.text!r}")
    return 0


def write_motion(out: Path, tokenizer, codes, text: str) -> None:
    """Write codes (S, P) as ``out``'s format says."""
    from parttok.features import features_to_joints
    from parttok.io import save_npy
    from parttok.tokenfile import TokenFile, save_tokens

    suffix = out.suffix.lower()
    features = tokenizer.decode(codes)  # (S * frames_per_step, 263)
    if suffix == ".ptok":
        tokens = TokenFile.from_tokenizer(tokenizer, codes, len(features), source=text)
        save_tokens(out, tokens)
        return
    joints = features_to_joints(features)  # (T, 22, 3)
    if suffix == ".npy":
        save_npy(out, joints)
    elif suffix == ".bvh":
        from parttok.bvh import save_bvh

        save_bvh(out, joints)
    else:
        from parttok.render import render_animation

        render_animation([joints], out, caption=text)
