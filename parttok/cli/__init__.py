"""The ``parttok`` command line: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import importlib
import sys

from parttok.errors import ParttokError

# sub-command -> (module in parttok.cli, one-line help)
COMMANDS = {
    "convert": ("convert", "BVH or HumanML3D joints -> the HumanML3D 263-feature layout"),
    "train": ("train", "train a tokenizer from a YAML config (LightningCLI)"),
    "evaluate": ("evaluate", "encode, decode and measure reconstruction error"),
    "encode": ("encode", "motion -> token files"),
    "decode": ("decode", "token files -> features, joints or BVH"),
    "vocab": ("vocab", "export the token vocabulary for a language model"),
    "instruct": ("instruct", "build instruction-tuning conversations"),
    "render": ("render", "animate motion as GIF or MP4, side by side"),
    "compose": ("compose", "token files -> one with some parts' codes from another"),
    "tune": ("tune", "instruction-tune a language model on motion tokens (LightningCLI)"),
    "generate": ("generate", "text -> motion through a tuned language model"),
    "caption": ("caption", "motion -> text through a tuned language model"),
    "pose": ("pose", "2D keypoints -> 3D pose through a tuned language model"),
    "evaluate-llm": ("evaluate_llm", "measure a tuned language model on held-out clips"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; with ``only``, just that sub-command's (imports stay light)."""
    from parttok import __version__

    parser = argparse.ArgumentParser(
        prog="parttok",
        description="Body-part motion tokens for language models.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"parttok {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if only is not None and name != only:
            continue
        module = _command_module(module_name)
        if module is None:
            continue
        sub = commands.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def _command_module(module_name: str):
    try:
        return importlib.import_module(f"parttok.cli.{module_name}")
    except ModuleNotFoundError as error:
        if error.name == f"parttok.cli.{module_name}":
            return None
        raise


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``parttok`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["train"], ["tune"]):  # LightningCLI parses their arguments
        try:
            if argv[0] == "train":
                from parttok.cli.train import run_lightning_cli

                return run_lightning_cli(argv[1:])
            from parttok.cli.tune import run_tune

            return run_tune(argv[1:])
        except ParttokError as error:
            print(f"parttok {argv[0]}: error: {error}", file=sys.stderr)
            return 2
    args = build_parser(argv[0] if argv and argv[0] in COMMANDS else None).parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ParttokError as error:
        print(f"parttok {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"parttok {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
