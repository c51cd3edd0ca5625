"""The 263 format both ways, checked against the reference clips in ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parttok import features as F
from parttok.errors import FeatureError
from parttok.skeleton import TARGET_BONE_LENGTHS, bone_lengths

CLIPS = ["000000", "007005", "012314", "M010655"]


def load(humanml3d_dir, clip):
    vecs = np.load(humanml3d_dir / "new_joint_vecs" / f"{clip}.npy")
    joints = np.load(humanml3d_dir / "new_joints" / f"{clip}.npy")
    return vecs, joints


@pytest.mark.parametrize("clip", CLIPS)
def test_features_to_joints_matches_reference(humanml3d_dir, clip):
    vecs, joints = load(humanml3d_dir, clip)
    recovered = F.features_to_joints(vecs)
    assert isinstance(recovered, np.ndarray) and recovered.dtype == vecs.dtype
    assert recovered.shape == joints.shape
    assert np.abs(recovered - joints).max() < 1e-5


@pytest.mark.parametrize("clip", CLIPS)
def test_joints_to_features_matches_reference(humanml3d_dir, clip):
    vecs, joints = load(humanml3d_dir, clip)
    features = F.joints_to_features(joints)
    assert features.shape == (len(joints) - 1, 263) and features.dtype == np.float32
    rows = len(features) - 60 + 1  # the reference smooths over the frame we lack at the end
    for name, group in F.GROUPS.items():
        error = np.abs(features[:rows, group] - vecs[:rows, group]).max()
        assert error < 1e-4, f"{name} differs by {error}"
    np.testing.assert_array_equal(
        features[:, F.FOOT_CONTACT], vecs[: len(features), F.FOOT_CONTACT]
    )
    assert np.abs(F.features_to_joints(features) - joints[:-1]).max() < 1e-5


def test_torch_recovery_is_batched_and_differentiable(humanml3d_dir):
    vecs, joints = load(humanml3d_dir, "012314")
    batch = torch.tensor(np.stack([vecs[:100], vecs[50:150]]), requires_grad=True)
    recovered = F.features_to_joints(batch)
    assert recovered.shape == (2, 100, 22, 3) and recovered.dtype == torch.float32
    assert torch.allclose(recovered[0], torch.from_numpy(joints[:100]), atol=1e-5)
    recovered.square().sum().backward()
    assert batch.grad is not None and torch.isfinite(batch.grad).all()
    assert batch.grad[..., F.RIC].abs().sum() > 0 and batch.grad[..., 0].abs().sum() > 0


def test_normalize_joints_retargets_floors_and_faces_z(humanml3d_dir):
    _, joints = load(humanml3d_dir, "007005")
    # a taller performer, turned 90 degrees and moved away from the origin
    turn = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    moved = joints @ turn.T * 1.2 + np.array([3.0, 0.5, -2.0])
    normal = F.normalize_joints(moved)
    np.testing.assert_allclose(
        bone_lengths(normal), np.broadcast_to(TARGET_BONE_LENGTHS, (len(normal), 21)), atol=1e-6
    )
    assert abs(normal[..., 1].min()) < 1e-9
    np.testing.assert_allclose(normal[0, 0, [0, 2]], 0.0, atol=1e-9)
    np.testing.assert_allclose(normal, F.normalize_joints(joints), atol=1e-5)


def test_statistics_average_std_within_groups(humanml3d_dir):
    clips = [load(humanml3d_dir, clip)[0] for clip in CLIPS]
    mean, std = F.compute_statistics(clips + [np.full((5, 263), np.nan)])
    frames = np.concatenate(clips)
    np.testing.assert_allclose(mean, frames.mean(0), rtol=1e-5, atol=1e-6)
    for group in F.GROUPS.values():
        assert np.ptp(std[group]) == 0
    np.testing.assert_allclose(std[F.RIC][0], frames[:, F.RIC].std(0).mean(), rtol=1e-5)


def test_layout_covers_every_feature_once():
    indices = sorted(i for joint in F.JOINT_FEATURE_INDICES for i in joint)
    assert indices == list(range(263))
    assert len(F.JOINT_FEATURE_INDICES[0]) == 7
    assert F.POSE_FEATURE_DIM == 1 + 63 + 126


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((10, 251), np.float32), "KIT-ML"),
        (np.zeros((10, 200), np.float32), "263"),
        (np.full((10, 263), np.nan, np.float32), "NaN"),
        (np.zeros((0, 263), np.float32), "no frames"),
    ],
)
def test_bad_features_raise_clear_errors(array, message):
    with pytest.raises(FeatureError, match=message):
        F.check_features(array)


def test_one_frame_clip_has_no_features():
    with pytest.raises(FeatureError, match="at least 2"):
        F.joints_to_features(np.zeros((1, 22, 3)))
