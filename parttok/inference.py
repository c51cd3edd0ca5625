"""Running a tokenizer over many files: clips -> token files and token files -> motion.

Inputs are grouped into batches of similar length and loaded by DataLoader workers while the
model runs. On a CPU the batches go through ``Tokenizer.encode_batch`` / ``decode_batch`` in
a plain loop; with ``--devices N`` or an accelerator, through Lightning's own predict loop
(``Trainer.predict`` with a ``BasePredictionWriter``), which spreads the batches over the
devices. One bad input is reported on stderr and the rest go on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from parttok.constants import DECODE_FORMATS
from parttok.errors import InputError, TokenFileError
from parttok.features import FPS, features_to_joints
from parttok.io import save_npy
from parttok.sources import ClipSource, load_clip_features
from parttok.tokenfile import TokenFile, load_tokens, save_tokens
from parttok.tokenizer import Tokenizer, length_batches


@dataclass(frozen=True)
class FileJob:
    """One input file and the file its result goes to."""

    source: Path
    output: Path

    @property
    def name(self) -> str:
        return self.source.stem


def output_jobs(
    sources: list[ClipSource], out_dir: str | Path, suffix: str, force: bool = False
) -> tuple[list[FileJob], list[FileJob], list[tuple[FileJob, str]]]:
    """Map inputs to outputs under ``out_dir`` mirroring their tree, with ``suffix``.

    Returns (to do, skipped because the output exists and not ``force``, clashes: inputs
    whose output another input already claims).
    """
    todo: list[FileJob] = []
    skipped: list[FileJob] = []
    clashes: list[tuple[FileJob, str]] = []
    claimed: dict[Path, Path] = {}
    for source in sources:
        job = FileJob(source.path, Path(out_dir) / source.relative.with_suffix(suffix))
        if claimed.get(job.output) == job.source:
            continue  # the same input named twice
        if job.output in claimed:
            other = claimed[job.output]
            clashes.append((job, f"{job.source}: output {job.output} already comes from {other}"))
            continue
        claimed[job.output] = job.source
        (skipped if job.output.exists() and not force else todo).append(job)
    return todo, skipped, clashes


@dataclass(frozen=True)
class RunOptions:
    """How a run over many files goes.

    ``workers``: DataLoader processes loading inputs (None: up to 4, one core left for the
    model). ``use_trainer`` None picks Lightning's predict loop when ``devices`` > 1 or an
    accelerator is present; ``devices`` None then means all of the accelerator's devices.
    """

    batch_size: int = 32
    workers: int | None = None
    devices: int | None = None
    use_trainer: bool | None = None
    progress: bool = True


@dataclass(frozen=True)
class _Task:
    """What a run does with each batch: load one input, run the tokenizer on the loaded
    inputs of a batch, write one result."""

    load: Callable[[FileJob], object]
    run: Callable[[Tokenizer, list], list[np.ndarray]]
    write: Callable[[FileJob, object, np.ndarray], None]
    description: str


def encode_files(
    tokenizer: Tokenizer,
    jobs: list[FileJob],
    rig: str = "auto",
    checkpoint_source: str = "",
    options: RunOptions = RunOptions(),
    refine: int = 0,
) -> list[tuple[FileJob, str]]:
    """Encode clip files (BVH, feature or joint ``.npy``) into token files; returns the
    failed jobs with their messages. ``checkpoint_source`` (where the tokenizer was loaded
    from) goes into the token files for error messages; ``refine`` as in
    ``Tokenizer.encode_batch``."""
    task = _Task(
        load=_ClipLoader(rig, tokenizer.frames_per_step),
        run=partial(_encode_batch, refine=refine),
        write=partial(_write_tokens, tokenizer, checkpoint_source, refine),
        description="encoding",
    )
    lengths = [_clip_length_hint(job.source) for job in jobs]
    return _run_files(tokenizer, jobs, lengths, task, options)


def decode_files(
    tokenizer: Tokenizer,
    jobs: list[FileJob],
    output_format: str = "joints",
    options: RunOptions = RunOptions(),
) -> list[tuple[FileJob, str]]:
    """Decode token files into ``<clip>.npy`` features or joints, or ``<clip>.bvh``; token
    files from another checkpoint are refused. Returns the failed jobs with their messages."""
    if output_format not in DECODE_FORMATS:
        raise ValueError(f"format must be one of {DECODE_FORMATS}, got {output_format!r}")
    task = _Task(
        load=_TokenLoader(tokenizer),
        run=_decode_batch,
        write=partial(_write_motion, output_format),
        description="decoding",
    )
    lengths = [_file_size(job.source) for job in jobs]
    return _run_files(tokenizer, jobs, lengths, task, options)


def _run_files(
    tokenizer: Tokenizer, jobs: list[FileJob], lengths: list[int], task: _Task, options: RunOptions
) -> list[tuple[FileJob, str]]:
    """Run ``task`` over ``jobs`` in batches of similar ``lengths``."""
    if not jobs:
        return []
    workers = options.workers
    if workers is None:
        workers = max(0, min(4, (os.cpu_count() or 1) - 1))
    dataset = _Batches(jobs, length_batches(lengths, options.batch_size), task.load)
    loader = DataLoader(dataset, batch_size=1, collate_fn=_only_item, num_workers=workers)
    use_trainer = options.use_trainer
    if use_trainer is None:
        use_trainer = (options.devices or 1) > 1 or _accelerator_available()
    if use_trainer:
        return _predict_with_trainer(tokenizer, jobs, task, loader, options)
    failed: list[tuple[FileJob, str]] = []
    progress = options.progress
    with tqdm(total=len(jobs), desc=task.description, unit="clip", disable=not progress) as bar:
        for batch in loader:
            failed += _finish_batch(tokenizer, jobs, task, batch)
            bar.update(len(batch["loaded"]) + len(batch["errors"]))
    return failed


class _Batches(Dataset):
    """Item i is batch i, loaded: the inputs that loaded and the errors of those that did
    not (a worker process never stops on a bad input)."""

    def __init__(self, jobs: list[FileJob], batches: list[list[int]], load: Callable) -> None:
        self.jobs = jobs
        self.batches = batches
        self.load = load

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, item: int) -> dict[str, list]:
        loaded, errors = [], []
        for index in self.batches[item]:
            try:
                loaded.append((index, self.load(self.jobs[index])))
            except InputError as error:
                errors.append((index, str(error)))
        return {"loaded": loaded, "errors": errors}


def _only_item(items: list[dict]) -> dict:
    """The collate function: a ``_Batches`` item is already a batch (padding and masks are
    the tokenizer's business)."""
    return items[0]


def _finish_batch(
    tokenizer: Tokenizer, jobs: list[FileJob], task: _Task, batch: dict, outputs=None
) -> list[tuple[FileJob, str]]:
    """Run (unless ``outputs`` are given) and write one batch; report and return failures."""
    failed = [(jobs[index], message) for index, message in batch["errors"]]
    inputs = [value for _, value in batch["loaded"]]
    if inputs:
        try:
            if outputs is None:
                outputs = task.run(tokenizer, inputs)
            for (index, value), output in zip(batch["loaded"], outputs, strict=True):
                task.write(jobs[index], value, output)
        except InputError as error:
            failed += [
                (jobs[index], f"{jobs[index].source}: {error}") for index, _ in batch["loaded"]
            ]
    for _, message in failed:
        tqdm.write(f"skipped: {message}", file=sys.stderr)
    return failed


class _Predictor(pl.LightningModule):
    """Lightning's view of a tokenizer: predict_step runs the task on one batch."""

    def __init__(self, tokenizer: Tokenizer, task: _Task) -> None:
        super().__init__()
        self.model = tokenizer.model  # registered, so Lightning places it on the device
        self.tokenizer = tokenizer
        self.task = task

    def on_predict_start(self) -> None:
        self.tokenizer.device = self.device

    def transfer_batch_to_device(self, batch: dict, device, dataloader_idx: int) -> dict:
        return batch  # numpy inputs; the tokenizer pads them and moves them to its device

    def predict_step(self, batch: dict, batch_index: int) -> list[np.ndarray]:
        inputs = [value for _, value in batch["loaded"]]
        return self.task.run(self.tokenizer, inputs) if inputs else []


class _FileWriter(BasePredictionWriter):
    """Writes each batch's results as it comes; collects failures from every process."""

    def __init__(self, tokenizer: Tokenizer, jobs: list[FileJob], task: _Task) -> None:
        super().__init__(write_interval="batch")
        self.tokenizer, self.jobs, self.task = tokenizer, jobs, task
        self.index_of = {job: index for index, job in enumerate(jobs)}
        self.failed: dict[int, str] = {}

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        failures = _finish_batch(self.tokenizer, self.jobs, self.task, batch, prediction)
        self.failed.update({self.index_of[job]: message for job, message in failures})

    def on_predict_end(self, trainer, pl_module) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[dict[int, str]] = [{} for _ in range(trainer.world_size)]
            torch.distributed.all_gather_object(gathered, self.failed)
            for failures in gathered:
                self.failed.update(failures)


def _predict_with_trainer(
    tokenizer: Tokenizer,
    jobs: list[FileJob],
    task: _Task,
    loader: DataLoader,
    options: RunOptions,
) -> list[tuple[FileJob, str]]:
    writer = _FileWriter(tokenizer, jobs, task)
    trainer = pl.Trainer(
        accelerator="auto",
        devices=options.devices or "auto",
        strategy="auto",
        logger=False,
        callbacks=[writer],
        enable_progress_bar=options.progress,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.predict(_Predictor(tokenizer, task), loader, return_predictions=False)
    return [(jobs[index], writer.failed[index]) for index in sorted(writer.failed)]


def _accelerator_available() -> bool:
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # reported when it is loaded


def _clip_length_hint(path: Path) -> int:
    """Roughly how many 20 fps frames a clip has, from its header only (for batching); a
    damaged file counts 0 here and is reported when it is loaded."""
    from parttok.bvh import read_bvh_header
    from parttok.io import read_npy_header

    try:
        if path.suffix.lower() == ".npy":
            shape, _ = read_npy_header(path)
            return shape[0] if shape else 0
        frames, frame_time = read_bvh_header(path)
        return int(frames * frame_time * FPS)
    except (OSError, InputError):
        return 0


class _ClipLoader:
    """Loads one clip as (T, 263) features with at least one step of frames."""

    def __init__(self, rig: str, frames_per_step: int) -> None:
        self.rig = rig
        self.frames_per_step = frames_per_step

    def __call__(self, job: FileJob) -> np.ndarray:
        features = load_clip_features(job.source, self.rig)
        if len(features) < self.frames_per_step:
            raise InputError(
                f"{job.source}: {len(features)} frames, fewer than one token step "
                f"({self.frames_per_step})"
            )
        return features


class _TokenLoader:
    """Loads one token file made by ``tokenizer``'s checkpoint, of its kind, parts and steps
    (a format 1 header is not under its checksum; a damaged part name shows here)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.identity = tokenizer.identity
        self.kind = "codes" if tokenizer.is_quantized else "continuous"
        self.layout = (tokenizer.parts, tokenizer.frames_per_step)

    def __call__(self, job: FileJob) -> TokenFile:
        tokens = load_tokens(job.source, expect_identity=self.identity)
        if tokens.kind != self.kind:
            raise TokenFileError(
                f"{job.source}: holds {tokens.kind}, this tokenizer decodes {self.kind}"
            )
        if (tokens.parts, tokens.frames_per_step) != self.layout:
            raise TokenFileError(
                f"{job.source}: damaged token file (parts {list(tokens.parts)}, "
                f"{tokens.frames_per_step} frames a step; the tokenizer's are "
                f"{list(self.layout[0])}, {self.layout[1]})"
            )
        return tokens


def _encode_batch(
    tokenizer: Tokenizer, clips: list[np.ndarray], refine: int = 0
) -> list[np.ndarray]:
    return tokenizer.encode_batch(clips, batch_size=len(clips), refine=refine)


def _decode_batch(tokenizer: Tokenizer, token_files: list[TokenFile]) -> list[np.ndarray]:
    return tokenizer.decode_batch([tokens.codes for tokens in token_files], len(token_files))


def _write_tokens(
    tokenizer: Tokenizer, checkpoint_source: str, refine: int, job: FileJob, clip: np.ndarray, codes
) -> None:
    tokens = TokenFile.from_tokenizer(
        tokenizer, codes, len(clip), job.name, checkpoint_source, refine
    )
    save_tokens(job.output, tokens)


def _write_motion(output_format: str, job: FileJob, tokens: TokenFile, features) -> None:
    """Write decoded (T, 263) features as features, joints (T, 22, 3) or a BVH."""
    path = job.output
    if output_format == "features":
        save_npy(path, features)
        return
    joints = features_to_joints(features)  # (T, 22, 3)
    if output_format == "joints":
        save_npy(path, joints)
        return
    from parttok.bvh import save_bvh

    save_bvh(path, joints, fps=FPS)
