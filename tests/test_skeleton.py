"""Conforming a rig's rigid joint groups (pelvis, spine3) to SMPL's shape on real clips."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pytest

from parttok.bvh import load_bvh
from parttok.errors import RigError
from parttok.rigs import parse_rig, preset
from parttok.skeleton import (
    PARENTS,
    RIGID_GROUP_SHAPES,
    RIGID_GROUPS,
    bone_lengths,
    conform_rigid_groups,
    rigid_group_directions,
)


def _angles_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def test_shapes_are_humanml3d_medians(humanml3d_dir):
    clips = [
        np.load(path).astype(np.float64) for path in sorted(humanml3d_dir.glob("new_joints/*.npy"))
    ]
    for group in range(len(RIGID_GROUPS)):
        directions = np.concatenate([rigid_group_directions(clip, group) for clip in clips])
        median = np.median(directions, axis=0)
        left = (median[0] + median[1] * [-1.0, 1.0, 1.0]) / 2  # left and mirrored right
        left /= np.linalg.norm(left)
        np.testing.assert_allclose(RIGID_GROUP_SHAPES[group][0], left, atol=2e-3)
        # The middle child defines the frame's y: no z, and nearly no x (SMPL is symmetric).
        assert median[2, 2] == 0.0 and abs(median[2, 0]) < 0.15


@pytest.mark.parametrize(
    "name", ["dataset-2_walk_normal_001", "dataset-2_raise-up-both-hands_active_001"]
)
def test_bandai_groups_take_smpl_shape(bandai_dir, name, tmp_path):
    path = bandai_dir / "data" / f"{name}.bvh"
    conformed = load_bvh(path).joints.astype(np.float64)
    unconformed_rig = tmp_path / "bandai-as-is.yaml"
    text = (files("parttok") / "rigs" / "bandai-namco.yaml").read_text(encoding="utf-8")
    unconformed_rig.write_text(text + "conform: false\n", encoding="utf-8")
    raw = load_bvh(path, rig=unconformed_rig).joints.astype(np.float64)
    for group in range(len(RIGID_GROUPS)):
        shape = RIGID_GROUP_SHAPES[group]
        before = _angles_degrees(np.median(rigid_group_directions(raw, group), 0), shape)
        after = _angles_degrees(np.median(rigid_group_directions(conformed, group), 0), shape)
        assert after.max() < 6.0, (group, after)
        if group == 0:  # Bandai's hips sit level with the pelvis: about 25 degrees off
            assert before[:2].min() > 20.0, before


def test_conform_keeps_lengths_motion_and_smpl_shapes(humanml3d_dir):
    joints = np.load(humanml3d_dir / "new_joints" / "012314.npy").astype(np.float64)
    conformed = conform_rigid_groups(joints)
    np.testing.assert_allclose(bone_lengths(conformed), bone_lengths(joints), atol=1e-9)
    np.testing.assert_array_equal(conformed[:, 0], joints[:, 0])
    # An SMPL clip is already (close to) the shape: joints move by at most a few cm.
    moved = np.linalg.norm(conformed - joints, axis=-1)
    assert moved.max() < 0.05 and moved.mean() < 0.02
    # Limb bones below the groups keep their directions (the motion).
    limbs = [4, 5, 7, 8, 15, 16, 17, 18, 19, 20]  # bones ending at knees, ankles, elbows...
    before = joints[:, 1:] - joints[:, list(PARENTS[1:])]
    after = conformed[:, 1:] - conformed[:, list(PARENTS[1:])]
    assert _angles_degrees(before[:, limbs], after[:, limbs]).max() < 1e-4


def test_conform_follows_a_turning_body(humanml3d_dir):
    """Rotating a clip then conforming equals conforming then rotating (no world axis)."""
    joints = np.load(humanml3d_dir / "new_joints" / "007005.npy").astype(np.float64)
    angle = np.radians(70.0)
    turn = np.array(
        [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    )
    tilt = np.array([[1, 0, 0], [0, np.cos(0.4), -np.sin(0.4)], [0, np.sin(0.4), np.cos(0.4)]])
    rotation = tilt @ turn
    np.testing.assert_allclose(
        conform_rigid_groups(joints @ rotation.T),
        conform_rigid_groups(joints) @ rotation.T,
        atol=1e-9,
    )


def test_smpl_preset_does_not_conform_and_flag_is_checked():
    assert preset("smpl").conform is False
    assert preset("bandai-namco").conform is True
    mapping = {"joints": {joint: joint for joint in preset("smpl").source_names}}
    with pytest.raises(RigError, match="'conform' must be true or false"):
        parse_rig({**mapping, "conform": "sometimes"}, "mine", "mine.yaml")


def test_conform_keeps_degenerate_groups(humanml3d_dir):
    """A neck on spine3 leaves that group without a frame: its bones stay as they were."""
    joints = np.load(humanml3d_dir / "new_joints" / "012314.npy").astype(np.float64)
    joints[:, 12] = joints[:, 9]
    conformed = conform_rigid_groups(joints)
    assert np.isfinite(conformed).all()
    np.testing.assert_allclose(bone_lengths(conformed), bone_lengths(joints), atol=1e-9)
    spine3 = [9, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]  # moved only with spine1 (pelvis group)
    np.testing.assert_allclose(
        conformed[:, spine3] - conformed[:, [9]], joints[:, spine3] - joints[:, [9]], atol=1e-9
    )
    assert conform_rigid_groups(joints[:1]).shape == (1, 22, 3)
