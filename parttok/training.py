"""Training with pytorch-lightning: the reconstruction losses and the LightningModule that
wraps any parttok model (the part tokenizer or a baseline)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Timer
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from parttok.features import FEATURE_DIM, facing_angles, features_to_joints
from parttok.io import slow_bfloat16
from parttok.metrics import pelvis_aligned


def pose_feature_fill(mean: Tensor, std: Tensor) -> Tensor:
    """Normalised values (263,) of a standing still pose's non-pose features: zero root and
    joint velocities, both feet in contact."""
    raw = torch.zeros(FEATURE_DIM, dtype=mean.dtype, device=mean.device)
    raw[-4:] = 1.0
    return (raw - mean) / std


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of values (B, T, ...) over the frames where mask (B, T) is True."""
    weights = mask.to(values.dtype).reshape(mask.shape + (1,) * (values.dim() - 2))
    count = weights.sum() * values[0, 0].numel()
    return (values * weights).sum() / count.clamp_min(1.0)


def reconstruction_losses(
    reconstruction: Tensor,
    target: Tensor,
    mask: Tensor,
    mean: Tensor,
    std: Tensor,
    feature_indices: Tensor | None = None,
    temporal: bool = True,
) -> dict[str, Tensor]:
    """Feature, velocity, facing and joint-position losses between normalised (B, T, 263)
    tensors, in the target's precision (a model trained in ``bf16-mixed`` reconstructs in
    bfloat16: its frame-to-frame differences would round).

    ``feature_indices`` restricts the feature loss (the pose mode reads only some dims);
    ``temporal`` False drops the velocity and facing terms. Joints are compared pelvis-aligned,
    in metres; the facing (the root's turning speed integrated over the window, as decoding
    integrates it) in radians.
    """
    reconstruction = reconstruction.to(target.dtype)
    if feature_indices is not None:
        reconstruction = target.clone().index_copy_(
            -1, feature_indices, reconstruction.index_select(-1, feature_indices)
        )
    losses = {
        "features": _masked_mean(F.smooth_l1_loss(reconstruction, target, reduction="none"), mask)
    }
    if temporal:
        step_mask = mask[:, 1:] & mask[:, :-1]
        velocity_error = F.smooth_l1_loss(
            reconstruction.diff(dim=1), target.diff(dim=1), reduction="none"
        )
        losses["velocity"] = _masked_mean(velocity_error, step_mask)
    raw, target_raw = reconstruction * std + mean, target * std + mean
    if temporal:
        turned = facing_angles(raw)[..., 1:] - facing_angles(target_raw)[..., 1:]  # (B, T - 1)
        losses["facing"] = _masked_mean(turned.abs(), mask[:, 1:])
    joints = pelvis_aligned(features_to_joints(raw))  # (B, T, 22, 3) metres
    target_joints = pelvis_aligned(features_to_joints(target_raw))
    losses["joints"] = _masked_mean((joints - target_joints).norm(dim=-1), mask)
    return losses


class TokenizerModule(pl.LightningModule):
    """Trains a parttok model on normalised feature windows.

    Args:
        model: a parttok model (``PartTokenizer``, ``ConvVQ`` or ``ResidualConvVQ``).
        lr: peak AdamW learning rate, reached after ``warmup_steps`` and decayed by a cosine
            to ``lr * final_lr_fraction`` at the trainer's ``max_steps`` (constant when unset).
        feature_weight, velocity_weight, facing_weight, joint_weight: loss weights (facing
            error in radians, joint loss in metres).
        export_dir: where to write the tokenizer (safetensors + config) when training ends;
            default ``<trainer.default_root_dir>/tokenizer``.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 30,
        final_lr_fraction: float = 0.05,
        feature_weight: float = 1.0,
        velocity_weight: float = 0.5,
        facing_weight: float = 0.0,
        joint_weight: float = 5.0,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.train_started: float | None = None  # monotonic clock at this session's start
        self.register_buffer("mean", torch.zeros(FEATURE_DIM))
        self.register_buffer("std", torch.ones(FEATURE_DIM))
        indices = getattr(model, "input_feature_indices", None)
        self.register_buffer(
            "feature_indices",
            torch.as_tensor(indices, dtype=torch.long) if indices is not None else None,
            persistent=False,
        )

    @property
    def is_pose_model(self) -> bool:
        return self.model.frames_per_step == 1

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if (
            stage == "fit"
            and datamodule is not None
            and getattr(datamodule, "mean", None) is not None
        ):
            self.mean.copy_(torch.as_tensor(np.asarray(datamodule.mean)))
            self.std.copy_(torch.as_tensor(np.asarray(datamodule.std)))

    def _prepare_target(self, features: Tensor) -> Tensor:
        if not self.is_pose_model:
            return features
        # A pose has no motion: its velocities and contacts are those of standing still.
        keep = torch.zeros(FEATURE_DIM, dtype=torch.bool, device=features.device)
        keep[self.feature_indices] = True
        return torch.where(keep, features, pose_feature_fill(self.mean, self.std))

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        target = self._prepare_target(batch["features"])
        mask = batch["mask"]
        output = self.model(target, mask)
        losses = reconstruction_losses(
            output.reconstruction,
            target,
            mask,
            self.mean,
            self.std,
            self.feature_indices,
            temporal=not self.is_pose_model,
        )
        total = self.weighted_loss(losses) + output.aux_loss
        size = target.shape[0]
        self.log(f"{stage}/loss", total, prog_bar=True, batch_size=size)
        self.log(f"{stage}/mpjpe_mm", 1000 * losses["joints"], prog_bar=True, batch_size=size)
        for name, value in losses.items():
            self.log(f"{stage}/{name}", value, batch_size=size)
        self.log(f"{stage}/aux", output.aux_loss, batch_size=size)
        return total

    def weighted_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """The reconstruction terms (``reconstruction_losses``) summed with their weights; a
        term the losses lack (pose mode: velocity, facing) counts zero."""
        weights = self.hparams
        return (
            weights.feature_weight * losses["features"]
            + weights.velocity_weight * losses.get("velocity", 0.0)
            + weights.facing_weight * losses.get("facing", 0.0)
            + weights.joint_weight * losses["joints"]
        )

    def training_step(self, batch: dict[str, Tensor], batch_index: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_index: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        warmup = max(1, self.hparams.warmup_steps)
        floor = self.hparams.final_lr_fraction

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = self._training_progress(step)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _training_progress(self, step: int) -> float:
        """Fraction of the run done: by ``max_steps`` or by ``max_time``, whichever is further
        along, so a run that ``max_time`` stops before its last step still decays its rate."""
        by_steps = min(1.0, step / self.trainer.max_steps) if self.trainer.max_steps > 0 else 0.0
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
        remaining = timer.time_remaining("train") if timer is not None else None
        if remaining is None:
            return by_steps
        elapsed = timer.time_elapsed("train")
        return max(by_steps, min(1.0, elapsed / max(elapsed + remaining, 1e-9)))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What Tokenizer.from_pretrained needs to rebuild the model from a .ckpt safely.
        checkpoint["parttok"] = {
            "model_class": type(self.model).__name__,
            "model_config": self.model.config,
        }

    def on_train_start(self) -> None:
        self.train_started = time.monotonic()
        slow = slow_bfloat16(self.trainer.precision, self.device.type)
        if slow:
            rank_zero_warn(f"{slow}: train with --trainer.precision 32-true")

    def on_train_end(self) -> None:
        from parttok.tokenizer import Tokenizer

        if self.trainer.global_rank != 0:
            return
        target = self.hparams.export_dir
        if target is None:
            target = str(Path(self.trainer.default_root_dir) / "tokenizer")
        tokenizer = Tokenizer(self.model, self.mean.cpu().numpy(), self.std.cpu().numpy())
        training: dict = {"global_step": int(self.global_step)}
        if self.train_started is not None:  # this session's wall clock (not before a resume)
            training["seconds"] = round(time.monotonic() - self.train_started, 1)
        tokenizer.save_pretrained(target, training=training)
