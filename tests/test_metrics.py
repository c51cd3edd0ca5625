"""Reconstruction and codebook metrics on real joints."""

from __future__ import annotations

import numpy as np

from parttok.features import facing_frame_joints, features_to_joints
from parttok.metrics import (
    acceleration_error,
    clip_metrics,
    codebook_statistics,
    joint_errors,
    procrustes_align,
    summarize,
)


def rotation_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def test_procrustes_removes_rotation_scale_and_translation(humanml3d_dir):
    joints = np.load(humanml3d_dir / "new_joints" / "012314.npy").astype(np.float64)[:20]
    moved = 1.3 * joints @ rotation_y(0.7).T + np.array([0.2, -0.1, 0.5])
    aligned = procrustes_align(moved, joints)
    assert np.abs(aligned - joints).max() < 1e-9
    # a mirrored pose cannot be reached by a rotation: error stays
    mirrored = joints * np.array([-1.0, 1.0, 1.0])
    assert np.abs(procrustes_align(mirrored, joints) - joints).max() > 0.01


def test_pelvis_aligned_error_ignores_translation_and_counts_millimetres(humanml3d_dir):
    vecs = np.load(humanml3d_dir / "new_joint_vecs" / "007005.npy")
    joints = features_to_joints(vecs)
    assert np.abs(joint_errors(joints + 5.0, joints)).max() < 1e-5
    shifted = vecs.copy()
    shifted[:, 4:67] += 0.01  # every non-root joint moved 1 cm on each axis (root frame)
    metrics = summarize([clip_metrics(shifted, vecs)])
    expected = 1000 * np.sqrt(3 * 0.01**2) * 21 / 22
    assert abs(metrics["mpjpe_mm"] - expected) < 0.01
    assert metrics["per_part_mpjpe_mm"]["root"] < 1e-6
    assert metrics["pa_mpjpe_mm"] < metrics["mpjpe_mm"]


def test_facing_frame_error_leaves_out_the_drift_of_the_facing(humanml3d_dir):
    vecs = np.load(humanml3d_dir / "new_joint_vecs" / "012314.npy")
    first = features_to_joints(vecs)[0]  # frame 0 faces +Z: its facing frame is the world's
    np.testing.assert_allclose(facing_frame_joints(vecs)[0], first - first[0], atol=1e-5)
    turned = vecs.copy()
    turned[10, 0] += 0.3  # one frame turns 0.6 rad too far: every later frame faces wrong
    metrics = summarize([clip_metrics(turned, vecs)])
    assert metrics["mpjpe_mm"] > 100 and metrics["facing_mpjpe_mm"] < 1e-6
    later = (len(vecs) - 11) / len(vecs)  # the share of frames after the turn
    assert abs(metrics["facing_error_deg"] - np.degrees(0.6) * later) < 1e-4
    spun = vecs.copy()
    spun[10, 0] += np.pi / 2 + 0.1  # a turn past 180 degrees: 180 - 0.2 rad the shorter way
    facing_error = summarize([clip_metrics(spun, vecs)])["facing_error_deg"]
    assert abs(facing_error - (180 - np.degrees(0.2)) * later) < 1e-4  # float32 features
    posed = vecs.copy()
    posed[:, 4:67] += 0.01  # a pose error shows in both, and not in the facing
    metrics = summarize([clip_metrics(posed, vecs)])
    assert abs(metrics["facing_mpjpe_mm"] - metrics["mpjpe_mm"]) < 0.01
    assert metrics["facing_error_deg"] == 0.0


def test_summary_weights_every_frame_once(humanml3d_dir):
    long = np.load(humanml3d_dir / "new_joint_vecs" / "007005.npy")
    short = long[:40].copy()
    noisy = short.copy()
    noisy[:, 4:67] += 0.02
    rows = [clip_metrics(long, long), clip_metrics(noisy, short)]
    report = summarize(rows)
    assert report["frames"] == len(long) + len(short)
    alone = summarize([rows[1]])["mpjpe_mm"]
    assert abs(report["mpjpe_mm"] - alone * len(short) / report["frames"]) < 1e-6


def test_acceleration_error_is_zero_for_constant_velocity_offsets():
    track = np.cumsum(np.ones((10, 22, 3)), axis=0)
    assert (
        np.abs(acceleration_error(track + 0.5 * np.arange(10)[:, None, None], track)).max() < 1e-9
    )


def test_codebook_usage_and_perplexity():
    codes = [np.array([[0, 1], [1, 1], [2, 1], [3, 1]])]
    stats = codebook_statistics(codes, codebook_size=8, part_names=["a", "b"])
    assert stats["usage"] == {"a": 0.5, "b": 0.125}
    assert abs(stats["perplexity"]["a"] - 4.0) < 1e-9 and abs(stats["perplexity"]["b"] - 1.0) < 1e-9
