"""``parttok tune --config configs/llm_cpu.yaml [--overrides]``: instruction-tune a
pretrained LLM on motion tokens (LightningCLI ``fit`` of ``parttok.llm.tune``).

Checkpoints (trainable weights only) and logs go under ``trainer.default_root_dir``; the
tuned model is exported to ``<default_root_dir>/llm`` when training ends. Resume after a
kill with ``--ckpt_path last``.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("args", nargs=argparse.REMAINDER, help="LightningCLI arguments")


def run(args: argparse.Namespace) -> int:
    return run_tune(args.args)


def run_tune(argv: list[str]) -> int:
    """Tune a MotionLanguageModule on a ConversationDataModule (YAML and flags)."""
    from parttok.cli.train import run_lightning_cli
    from parttok.llm.base import require_transformers

    require_transformers()
    from parttok.llm.tune import ConversationDataModule, MotionLanguageModule

    return run_lightning_cli(argv, MotionLanguageModule, ConversationDataModule)


if __name__ == "__main__":
    sys.exit(run_tune(sys.argv[1:]))
