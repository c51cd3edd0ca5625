"""``parttok train --config configs/NAME.yaml [--overrides]``: LightningCLI ``fit``.

Everything a run writes goes under ``trainer.default_root_dir``: ``checkpoints/`` (every
``--checkpoint.every_n_train_steps`` steps and ``last.ckpt``), ``logs/`` (CSV),
``tensorboard/`` and, when training ends, ``tokenizer/`` (the exported model).
Resume after a kill with ``--ckpt_path last``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from parttok.data import MotionDataModule
from parttok.training import TokenizerModule


class ParttokCLI(LightningCLI):
    """LightningCLI with checkpoints and logs placed under the run's root directory."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {"checkpoint.every_n_train_steps": 200, "checkpoint.save_last": True,
             "checkpoint.save_top_k": 0}
        )  # fmt: skip
        parser.link_arguments(
            "trainer.default_root_dir",
            "checkpoint.dirpath",
            compute_fn=lambda root: str(Path(root or ".") / "checkpoints"),
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str]) -> None:
        """Parse ``args``: ``parttok train`` passes its own arguments, so the ``parttok`` command
        line in ``sys.argv`` is not a clash (LightningCLI would warn). ``sys.argv`` stays as
        it is: Lightning's DDP launcher starts the other processes from it."""
        self.config = parser.parse_args(args)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.logger in (None, True):
            root = config.trainer.default_root_dir or "."
            config.trainer.logger = False  # replaced by the loggers below once instantiated
            self._run_loggers = [
                CSVLogger(root, name="logs", version=""),
                TensorBoardLogger(root, name="tensorboard", version=""),
            ]
        else:
            self._run_loggers = None

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        if self._run_loggers:
            trainer.loggers = self._run_loggers
        return trainer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("args", nargs=argparse.REMAINDER, help="LightningCLI arguments")


def run(args: argparse.Namespace) -> int:
    return run_lightning_cli(args.args)


def run_lightning_cli(argv: list[str], module_class=None, data_class=None) -> int:
    """Fit ``module_class`` on ``data_class`` (default: a TokenizerModule on a
    MotionDataModule), configured by YAML and flags."""
    ParttokCLI(
        module_class or TokenizerModule,
        data_class or MotionDataModule,
        args=["fit", *argv],
        save_config_kwargs={"overwrite": True},
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_lightning_cli(sys.argv[1:]))
