"""``parttok train --config configs/NAME.yaml [--overrides]``: LightningCLI ``fit``.

Everything a run writes goes under ``trainer.default_root_dir``: ``checkpoints/`` (every
``--checkpoint.every_n_train_steps`` steps and ``last.ckpt``), ``logs/version_N/`` (the
resolved ``config.yaml`` and ``metrics.csv``; each start, a resume too, takes the next N),
``tensorboard/version_N/`` and, when training ends, ``tokenizer/`` (the exported model).
Resume after a kill with ``--ckpt_path last``.

Before anything is built or written, a bad flag, a data folder not in the HumanML3D layout
or a checkpoint to resume from that does not load safely is one line (``parttok train:
error: ...``, exit status 2).
"""

from __future__ import annotations

import argparse
import sys

# Lightning and the model are imported when a run starts (parttok.cli.lightning_cli), not
# by ``parttok --help``, which builds this parser.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("args", nargs=argparse.REMAINDER, help="LightningCLI arguments")


def run(args: argparse.Namespace) -> int:
    return run_lightning_cli(args.args)


def run_lightning_cli(argv: list[str], module_class=None, data_class=None) -> int:
    """Fit ``module_class`` on ``data_class`` (default: a TokenizerModule on a
    MotionDataModule), configured by YAML and flags."""
    from parttok.cli.lightning_cli import ParttokCLI
    from parttok.data import MotionDataModule
    from parttok.training import TokenizerModule

    ParttokCLI(
        module_class or TokenizerModule,
        data_class or MotionDataModule,
        args=["fit", *argv],
        save_config_kwargs={"overwrite": True},
        parser_kwargs={  # misspelt options are errors, not prefixes of real ones
            "exit_on_error": False,
            "allow_abbrev": False,
            "fit": {"exit_on_error": False, "allow_abbrev": False},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_lightning_cli(sys.argv[1:]))
