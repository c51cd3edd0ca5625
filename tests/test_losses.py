"""The reconstruction losses training minimises, on a HumanML3D reference clip."""

import math

import numpy as np
import pytest
import torch

from parttok.data import HumanML3DFolder
from parttok.model import PartTokenizer
from parttok.training import TokenizerModule, reconstruction_losses


@pytest.fixture(scope="module")
def clip(humanml3d_dir):
    reference = HumanML3DFolder(humanml3d_dir)
    features = torch.from_numpy(reference.features(reference.ids()[0])[:64]).double()
    mean = torch.from_numpy(reference.mean).double()
    std = torch.from_numpy(reference.std).double()
    return (features - mean) / std, mean, std  # (64, 263) normalised


def _losses(reconstruction, target, mean, std, temporal=True):
    mask = torch.ones(1, len(target), dtype=torch.bool)
    return reconstruction_losses(reconstruction[None], target[None], mask, mean, std,
                                 temporal=temporal)  # fmt: skip


def test_a_perfect_reconstruction_has_no_loss(clip):
    target, mean, std = clip
    for name, value in _losses(target, target, mean, std).items():
        assert value.item() == pytest.approx(0.0, abs=1e-12), name


def test_a_wrong_turn_is_counted_in_every_later_frame(clip):
    target, mean, std = clip
    degrees, frame = 10.0, 40
    reconstruction = target.clone()
    # 10 degrees more turn at frame 40: the turning speed is half the angle, normalised
    reconstruction[frame, 0] += math.radians(degrees) / 2 / std[0]
    losses = _losses(reconstruction, target, mean, std)
    frames_after = len(target) - 1 - frame  # frames 41..63 face 10 degrees further
    expected = math.radians(degrees) * frames_after / (len(target) - 1)
    assert losses["facing"].item() == pytest.approx(expected, rel=1e-9)
    assert losses["joints"].item() > 0.0
    # the same error late in the window turns fewer frames
    later = target.clone()
    later[60, 0] += math.radians(degrees) / 2 / std[0]
    assert _losses(later, target, mean, std)["facing"] < losses["facing"]


def test_a_pose_has_no_facing_or_velocity_loss(clip):
    target, mean, std = clip
    losses = _losses(target + 0.1, target, mean, std, temporal=False)
    assert set(losses) == {"features", "joints"}
    assert np.isclose(losses["features"].item(), 0.5 * 0.1**2)  # smooth L1 below its beta


def test_training_weighs_each_term(clip):
    target, mean, std = clip
    wrong = target.clone()
    wrong[40, 0] += math.radians(10.0) / 2 / std[0]  # a wrong turn, and every feature off
    losses = _losses(wrong + 0.01, target, mean, std)
    module = TokenizerModule(
        PartTokenizer(), feature_weight=1.0, velocity_weight=0.0, facing_weight=0.0,
        joint_weight=0.0,
    )  # fmt: skip
    assert module.weighted_loss(losses).item() == pytest.approx(losses["features"].item())
    facing = TokenizerModule(PartTokenizer(), facing_weight=0.25)
    plain = TokenizerModule(PartTokenizer(), facing_weight=0.0)
    difference = facing.weighted_loss(losses) - plain.weighted_loss(losses)
    assert difference.item() == pytest.approx(0.25 * losses["facing"].item())
    assert losses["facing"].item() > 0.0


def test_a_bfloat16_reconstruction_is_measured_in_the_targets_precision(clip):
    """Trained in ``bf16-mixed``, the model reconstructs in bfloat16: the losses are those of
    the same values in float32 (its frame-to-frame differences are not rounded)."""
    target, mean, std = (tensor.float() for tensor in clip)
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    reconstruction = (target + 0.05 * noise).bfloat16()
    mixed = _losses(reconstruction, target, mean, std)
    full = _losses(reconstruction.float(), target, mean, std)
    for name, value in full.items():
        assert mixed[name].dtype == torch.float32
        assert torch.equal(mixed[name], value), name
