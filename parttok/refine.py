"""Codes chosen by what they decode to (analysis by synthesis), not only by where the
encoder's latents fall.

``refine_codes`` starts from the nearest codes and, part by part, tries each step's
``candidates`` nearest codes through the decoder, keeping at every step the one whose frames
come out closest to the input (pelvis-aligned joints as MPJPE compares them, plus the joints
in each frame's facing frame; pose mode: the latter only). Even steps are tried together,
then odd ones, so a step's neighbours hold still while it is judged. The part holding the
pelvis comes last: its codes carry the root's trajectory, whose errors integrate. Every clip
ends with the codes of the lowest total error seen, so refined codes never reconstruct worse
than the nearest ones by that measure. The whole-body baselines get the same search (the
residual VQ layer by layer, finest first). Same tokens, codebooks and decoder; only encoding
costs more (``candidates`` decodes per part and half-sweep).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from parttok.features import facing_frame_joints, features_to_joints
from parttok.metrics import pelvis_aligned


@torch.no_grad()
def refine_codes(
    model: nn.Module,
    features: Tensor,
    mask: Tensor,
    mean: Tensor,
    std: Tensor,
    candidates: int = 8,
    sweeps: int = 1,
) -> Tensor:
    """Normalised features (B, T, 263) with mask (B, T) -> codes (B, S, P) chosen among each
    step's ``candidates`` nearest by the error of what they decode to (see the module
    docstring); ``mean`` and ``std`` (263,) the model's normalisation. -1 at padded steps."""
    if not getattr(model, "has_codebooks", False):
        raise ValueError(f"refining codes needs codebooks, which this {type(model).__name__} lacks")
    if candidates < 1 or sweeps < 1:
        raise ValueError(f"need candidates >= 1 and sweeps >= 1, got {candidates}, {sweeps}")
    options = model.candidate_codes(features, mask, candidates)  # (B, S, P, K)
    codes = options[..., 0].clone()  # (B, S, P): the nearest
    target = _JointError(features, mask, mean, std, model.frames_per_step, model.temporal)
    best, lowest = codes.clone(), torch.full((len(codes),), float("inf"), device=codes.device)
    steps = codes.shape[1]
    for sweep in range(sweeps if candidates > 1 else 0):
        for part in _refined_parts(model):
            for phase in (0, 1):
                chosen = torch.arange(phase, steps, 2, device=codes.device)
                tried = options[:, chosen, part].permute(2, 0, 1)  # (K, B, chosen)
                if sweep == 0:  # these codes are still the nearest, trial 0's: not again
                    tried = tried[1:]
                trials = codes.repeat(len(tried) + 1, 1, 1)  # (N + 1) * B rows, trial 0 now
                trials[len(codes) :, chosen, part] = tried.flatten(0, 1)
                decoded = model.decode(trials, mask.repeat(len(tried) + 1, 1))
                errors = target.step_errors(decoded)  # (N + 1, B, S)
                total = errors[0].sum(-1)  # (B,) of the codes as they are
                better = total < lowest
                best[better], lowest[better] = codes[better], total[better]
                pick = errors[:, :, chosen].argmin(0)  # (B, chosen): 0 keeps the code
                now = codes[:, chosen, part]
                picked = tried.gather(0, (pick - 1).clamp_min(0)[None])[0]
                codes[:, chosen, part] = torch.where(pick == 0, now, picked)
    total = target.step_errors(model.decode(codes, mask))[0].sum(-1)
    better = total < lowest
    best[better] = codes[better]
    return best


def _refined_parts(model: nn.Module) -> list[int]:
    """The code columns tried, in order: a PartTokenizer's parts, the one holding the pelvis
    last in motion mode (its codes carry the root's trajectory); every column of the
    whole-body baselines (their body code, or each residual layer, carries the trajectory and
    all the rest), the residual VQ's finest layer first and its coarsest last."""
    if "parts" not in model.config:
        return list(reversed(range(model.num_parts)))
    parts = list(model.config["parts"].values())
    holds_trajectory = [model.temporal and 0 in joints for joints in parts]
    return sorted(range(len(parts)), key=lambda part: holds_trajectory[part])  # stable


class _JointError:
    """Per-step joint errors of decoded clips against the clips they came from."""

    def __init__(
        self, features: Tensor, mask: Tensor, mean: Tensor, std: Tensor, step: int, world: bool
    ) -> None:
        self.mean, self.std, self.step, self.world = mean, std, step, world
        self.frame_mask = mask.to(torch.float32)  # (B, T)
        self.target = self._joints(features)

    def _joints(self, features: Tensor) -> list[Tensor]:
        """Normalised features (..., T, 263) -> the joints compared: pelvis-aligned (motion
        mode) and in each frame's facing frame, each (..., T, 22, 3)."""
        raw = features.float() * self.std + self.mean
        joints = [facing_frame_joints(raw)]
        if self.world:
            joints.append(pelvis_aligned(features_to_joints(raw)))
        return joints

    def step_errors(self, decoded: Tensor) -> Tensor:
        """Decoded normalised features ((N * B), T, 263), N trials of the B clips ->
        (N, B, S) summed mean joint errors (metres) over each step's real frames."""
        batch, frames = self.frame_mask.shape
        decoded = decoded.view(-1, batch, frames, decoded.shape[-1])  # (N, B, T, 263)
        error = sum(
            (joints - target).norm(dim=-1).mean(-1)  # (N, B, T)
            for joints, target in zip(self._joints(decoded), self.target, strict=True)
        )
        error = error * self.frame_mask
        return error.view(*error.shape[:2], -1, self.step).sum(-1)  # (N, B, S)
