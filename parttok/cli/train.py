"""``parttok train --config configs/NAME.yaml [--overrides]``: LightningCLI fit."""

from __future__ import annotations

import argparse
import sys

from pytorch_lightning.cli import LightningCLI

from parttok.data import MotionDataModule
from parttok.training import TokenizerModule


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("args", nargs=argparse.REMAINDER, help="LightningCLI arguments")


def run(args: argparse.Namespace) -> int:
    return run_lightning_cli(args.args)


def run_lightning_cli(argv: list[str]) -> int:
    """Fit a TokenizerModule on a MotionDataModule, configured by YAML and flags.

    ``parttok train --config configs/cpu.yaml --trainer.max_time 00:00:30:00`` trains;
    ``--ckpt_path last`` resumes from the last checkpoint of the run directory.
    """
    LightningCLI(
        TokenizerModule,
        MotionDataModule,
        args=["fit", *argv],
        save_config_kwargs={"overwrite": True},
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_lightning_cli(sys.argv[1:]))
