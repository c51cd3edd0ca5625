"""The LightningCLI behind ``parttok train`` and ``parttok tune`` (see ``parttok.cli.train``),
apart from it so that ``parttok --help`` builds every command's parser without Lightning."""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ArgumentError, Namespace
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from parttok.data import HumanML3DFolder, MotionDataModule
from parttok.errors import CheckpointError, InputError
from parttok.tokenizer import read_lightning_checkpoint


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
        it is: Lightning's DDP launcher starts the other processes from it. A bad argument
        is one InputError line, not the usage of every Lightning option (the parsers are made
        with ``exit_on_error`` off); then ``check_inputs``, before Lightning reads the
        checkpoint's hyperparameters."""
        try:
            self.config = parser.parse_args(args)
        except ArgumentError as error:
            message = " ".join(str(error).split())
            raise InputError(f"{message} (--help lists the options)") from None
        subcommand = self.config.get("subcommand")
        self.check_inputs(self.config[subcommand] if subcommand else self.config)

    def check_inputs(self, config: Namespace) -> None:
        """Raise a one-line error, before anything is built or written, for a data folder not
        in the HumanML3D layout or a checkpoint to resume from that torch cannot load with
        ``weights_only`` (damaged, or a pickle that would run code)."""
        if self.datamodule_class is MotionDataModule:
            for folder in config.get("data.data_dirs") or []:
                HumanML3DFolder(folder)  # InputError unless in the HumanML3D layout
        resumed = resume_checkpoint(config)
        if resumed is not None and config.get("weights_only") is not False:
            read_lightning_checkpoint(resumed)  # CheckpointError unless it loads safely

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.logger in (None, True):
            root = config.trainer.default_root_dir or "."
            config.trainer.logger = False  # replaced by the loggers below once instantiated
            csv_logger = CSVLogger(root, name="logs")  # logs/version_N: runs never overwrite
            self._run_loggers = [
                csv_logger,
                TensorBoardLogger(root, name="tensorboard", version=csv_logger.version),
            ]
        else:
            self._run_loggers = None

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        if self._run_loggers:
            trainer.loggers = self._run_loggers
        return trainer


def resume_checkpoint(config: Namespace) -> Path | None:
    """The file ``--ckpt_path`` makes Lightning resume from: a path, or "last" (the newest
    ``last*.ckpt`` in the checkpoint folder, if any); None for none or one it resolves
    itself ("best", "hpc", a URL or a registry name). A missing file is a CheckpointError."""
    name = str(config.get("ckpt_path") or "")
    if not name or name in ("best", "hpc") or "://" in name or name.startswith("registry:"):
        return None
    if name == "last":
        root = Path(config.get("trainer.default_root_dir") or ".")
        found = list(
            Path(config.get("checkpoint.dirpath") or root / "checkpoints").glob("last*.ckpt")
        )
        return max(found, key=lambda path: path.stat().st_mtime) if found else None
    if not Path(name).is_file():
        raise CheckpointError(f"{name}: no such checkpoint to resume from")
    return Path(name)
