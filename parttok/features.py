"""The HumanML3D 263-number motion features, both ways, and their statistics.

Layout per frame: root rotation velocity (1, a half angle), root XZ velocity (2), root
height (1), ric positions of joints 1..21 (63), 6D local rotations of joints 1..21 (126),
velocities of all 22 joints (66), foot contacts (4).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from torch import Tensor

from parttok.constants import FPS as FPS
from parttok.errors import FeatureError
from parttok.rotations import qbetween, qinv, qmul, qrot, quat_to_6d
from parttok.skeleton import (
    FACE_JOINTS,
    LEFT_FOOT,
    NUM_JOINTS,
    RIGHT_FOOT,
    facing_direction,
    inverse_kinematics,
    retarget,
)

FEATURE_DIM = 263
KIT_FEATURE_DIM = 251
FOOT_CONTACT_THRESHOLD = 0.002  # squared displacement per frame, m^2 (KIT-ML uses 0.05)
FORWARD_SMOOTHING_SIGMA = 20  # frames

ROOT_ROT_VEL = slice(0, 1)
ROOT_LIN_VEL = slice(1, 3)
ROOT_HEIGHT = slice(3, 4)
RIC = slice(4, 67)
ROT6D = slice(67, 193)
JOINT_VEL = slice(193, 259)
FOOT_CONTACT = slice(259, 263)
# The seven groups whose standard deviation the reference statistics average.
GROUPS = {
    "root_rot_vel": ROOT_ROT_VEL,
    "root_lin_vel": ROOT_LIN_VEL,
    "root_height": ROOT_HEIGHT,
    "ric": RIC,
    "rot6d": ROT6D,
    "joint_vel": JOINT_VEL,
    "foot_contact": FOOT_CONTACT,
}


def _joint_feature_indices(include_velocity: bool = True) -> tuple[tuple[int, ...], ...]:
    """Feature indices belonging to each joint, foot contacts joined to the foot joints."""
    per_joint: list[list[int]] = [[0, 1, 2, 3]]
    for joint in range(1, NUM_JOINTS):
        ric = range(RIC.start + 3 * (joint - 1), RIC.start + 3 * joint)
        rot = range(ROT6D.start + 6 * (joint - 1), ROT6D.start + 6 * joint)
        per_joint.append([*ric, *rot])
    if include_velocity:
        for joint in range(NUM_JOINTS):
            per_joint[joint] += range(JOINT_VEL.start + 3 * joint, JOINT_VEL.start + 3 * joint + 3)
    for contact, joint in enumerate((*LEFT_FOOT, *RIGHT_FOOT)):
        per_joint[joint].append(FOOT_CONTACT.start + contact)
    return tuple(tuple(indices) for indices in per_joint)


# JOINT_FEATURE_INDICES[j] lists the features of joint j: the root has its rotation and XZ
# velocity, height and own velocity (7); joints 1..21 ric (3) + 6D (6) + velocity (3); foot
# joints also their contact. Every one of the 263 features belongs to exactly one joint.
JOINT_FEATURE_INDICES = _joint_feature_indices()
# The pose (single-frame) layout: no velocities, no root motion, no contacts.
POSE_FEATURE_INDICES = tuple(
    tuple(i for i in indices if RIC.start <= i < JOINT_VEL.start or i == ROOT_HEIGHT.start)
    for indices in JOINT_FEATURE_INDICES
)
POSE_FEATURE_DIM = sum(len(indices) for indices in POSE_FEATURE_INDICES)  # 1 + 63 + 126


def check_features(features: np.ndarray, name: str = "features") -> np.ndarray:
    """Validate a (T, 263) feature array; return it as float32 or raise FeatureError."""
    if not isinstance(features, np.ndarray) or features.dtype.kind not in "fiu":
        raise FeatureError(f"{name}: expected a numeric array, got {type(features).__name__}")
    if features.ndim != 2:
        raise FeatureError(f"{name}: expected (frames, 263) features, got shape {features.shape}")
    if features.shape[1] == KIT_FEATURE_DIM:
        raise FeatureError(
            f"{name}: 251 features per frame looks like KIT-ML (21 joints); parttok reads "
            "HumanML3D's 263"
        )
    if features.shape[1] != FEATURE_DIM:
        raise FeatureError(f"{name}: expected 263 features per frame, got {features.shape[1]}")
    if features.shape[0] < 1:
        raise FeatureError(f"{name}: the clip has no frames")
    if not np.isfinite(features).all():
        raise FeatureError(f"{name}: contains NaN or infinite values")
    return features.astype(np.float32, copy=False)


def check_joints(joints: np.ndarray, name: str = "joints", min_frames: int = 2) -> np.ndarray:
    """Validate (T, 22, 3) joint positions; return them as float64 or raise FeatureError."""
    joints = np.asarray(joints)
    if joints.dtype.kind not in "fiu":
        raise FeatureError(f"{name}: expected numeric joints, got {joints.dtype} values")
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3):
        raise FeatureError(f"{name}: expected (frames, 22, 3) joints, got shape {joints.shape}")
    if joints.shape[0] < min_frames:
        raise FeatureError(
            f"{name}: {joints.shape[0]} frame(s); at least {min_frames} are needed for features"
        )
    if not np.isfinite(joints).all():
        raise FeatureError(f"{name}: contains NaN or infinite values")
    return joints.astype(np.float64)


def _yaw_to_face_z(forward: Tensor) -> Tensor:
    """Quaternions (..., 4) turning forward directions (..., 3) onto +Z."""
    return qbetween(forward, forward.new_tensor([0.0, 0.0, 1.0]).expand_as(forward))


def normalize_joints(joints: np.ndarray) -> np.ndarray:
    """Steps 1-4 of the reference: retarget to the target skeleton, put the lowest point on
    the floor, the first root at the XZ origin, and turn the clip to face +Z at frame 0.

    (T, 22, 3) metres, Y up -> (T, 22, 3) float64.
    """
    positions = retarget(check_joints(joints, min_frames=1))
    positions[..., 1] -= positions[..., 1].min()
    positions -= positions[0, 0] * np.array([1.0, 0.0, 1.0])
    first = torch.from_numpy(positions[0])
    forward = facing_direction(first, FACE_JOINTS)
    turn = _yaw_to_face_z(forward / forward.norm())
    return qrot(turn, torch.from_numpy(positions)).numpy()


def foot_contacts(positions: np.ndarray, threshold: float = FOOT_CONTACT_THRESHOLD) -> np.ndarray:
    """(T, 22, 3) -> (T-1, 4) contacts of joints 7, 10, 8, 11: squared step below threshold."""
    feet = list(LEFT_FOOT + RIGHT_FOOT)
    step = np.square(positions[1:, feet] - positions[:-1, feet]).sum(-1)
    return (step < threshold).astype(np.float64)


def joints_to_features(
    joints: np.ndarray, foot_threshold: float = FOOT_CONTACT_THRESHOLD
) -> np.ndarray:
    """(T, 22, 3) positions (metres, Y up, 20 fps) -> (T-1, 263) float32 HumanML3D features,
    by the reference pipeline."""
    positions = normalize_joints(check_joints(joints, min_frames=2))  # (T, 22, 3)
    contacts = foot_contacts(positions, foot_threshold)  # (T-1, 4)
    pos = torch.from_numpy(positions)

    # Root rotation from the smoothed forward, with the reference IK's reversed hip term.
    ik_face_joints = (FACE_JOINTS[1], FACE_JOINTS[0], FACE_JOINTS[2], FACE_JOINTS[3])
    forward = facing_direction(pos, ik_face_joints).numpy()  # (T, 3)
    smoothed = gaussian_filter1d(forward, FORWARD_SMOOTHING_SIGMA, axis=0, mode="nearest")
    smoothed = torch.from_numpy(smoothed / np.linalg.norm(smoothed, axis=-1, keepdims=True))
    root_rotation = _yaw_to_face_z(smoothed)  # (T, 4)
    root_rotation[0] = root_rotation.new_tensor([1.0, 0.0, 0.0, 0.0])

    local_rotations = inverse_kinematics(pos, root_rotation)  # (T, 22, 4)
    rot6d = quat_to_6d(local_rotations[:, 1:]).reshape(len(pos), -1)  # (T, 126)

    root_step = qrot(root_rotation[1:], pos[1:, 0] - pos[:-1, 0])  # (T-1, 3)
    turn_step = qmul(root_rotation[1:], qinv(root_rotation[:-1]))  # (T-1, 4)
    ric = pos - pos[:, :1] * pos.new_tensor([1.0, 0.0, 1.0])
    ric = qrot(root_rotation[:, None], ric)  # (T, 22, 3) in the root's facing frame
    velocity = qrot(root_rotation[:-1, None], pos[1:] - pos[:-1])  # (T-1, 22, 3)

    features = torch.cat(
        (
            torch.arcsin(turn_step[:, 2:3]),
            root_step[:, [0, 2]],
            ric[:-1, 0, 1:2],
            ric[:-1, 1:].reshape(len(pos) - 1, -1),
            rot6d[:-1],
            velocity.reshape(len(pos) - 1, -1),
            torch.from_numpy(contacts),
        ),
        dim=-1,
    )
    return features.numpy().astype(np.float32)


ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, Tensor)


def features_to_joints(features: ArrayOrTensor) -> ArrayOrTensor:
    """(..., T, 263) features -> (..., T, 22, 3) joint positions (HumanML3D's recover_from_ric).

    Accepts numpy (returned as numpy, computed in float64, cast back to the input's float
    dtype) or torch (differentiable, same dtype and device).
    """
    if isinstance(features, np.ndarray):
        dtype = features.dtype if features.dtype.kind == "f" else np.float32
        joints = _recover_joints(torch.from_numpy(np.asarray(features, dtype=np.float64)))
        return joints.numpy().astype(dtype)
    return _recover_joints(features)


def _recover_joints(features: Tensor) -> Tensor:
    if features.shape[-1] != FEATURE_DIM:
        hint = " (251 looks like KIT-ML)" if features.shape[-1] == KIT_FEATURE_DIM else ""
        raise FeatureError(f"expected 263 features per frame, got {features.shape[-1]}{hint}")
    half_angle = _facing(features) / 2.0  # (..., T): the root's yaw quaternion takes half
    zero = torch.zeros_like(half_angle)
    root_rotation = torch.stack((half_angle.cos(), zero, half_angle.sin(), zero), dim=-1)
    inverse_root = qinv(root_rotation)  # (..., T, 4)

    step_xz = torch.nn.functional.pad(features[..., :-1, 1:3], (0, 0, 1, 0))  # (..., T, 2)
    step = torch.stack((step_xz[..., 0], torch.zeros_like(step_xz[..., 0]), step_xz[..., 1]), -1)
    root_xz = torch.cumsum(qrot(inverse_root, step), dim=-2)  # (..., T, 3)
    root = torch.stack((root_xz[..., 0], features[..., 3], root_xz[..., 2]), dim=-1)

    ric = features[..., RIC].unflatten(-1, (NUM_JOINTS - 1, 3))  # (..., T, 21, 3)
    others = qrot(inverse_root[..., None, :], ric)
    others = others + (root * root.new_tensor([1.0, 0.0, 1.0]))[..., None, :]
    return torch.cat((root[..., None, :], others), dim=-2)  # (..., T, 22, 3)


def facing_angles(features: ArrayOrTensor) -> ArrayOrTensor:
    """(..., T, 263) -> (..., T) each frame's facing about the up axis in radians, from frame
    0's, as ``features_to_joints`` integrates it (numpy in float64; torch differentiable)."""
    if isinstance(features, np.ndarray):
        return _facing(torch.from_numpy(np.asarray(features, dtype=np.float64))).numpy()
    return _facing(features)


def _facing(features: Tensor) -> Tensor:
    """The root's turning speed (feature 0, half an angle per frame) applied from the next
    frame on, integrated: (..., T, 263) -> (..., T) radians."""
    shifted = torch.nn.functional.pad(features[..., :-1, 0], (1, 0))
    return 2.0 * torch.cumsum(shifted, dim=-1)


def facing_frame_joints(features: ArrayOrTensor) -> ArrayOrTensor:
    """(..., T, 263) -> (..., T, 22, 3): each frame's joints relative to its pelvis in its own
    facing frame (the ric slice), so no error in the integrated facing carries over to later
    frames (numpy in float64; torch differentiable)."""
    if isinstance(features, np.ndarray):
        source = torch.from_numpy(np.asarray(features, dtype=np.float64))
        return facing_frame_joints(source).numpy()
    ric = features[..., RIC].unflatten(-1, (NUM_JOINTS - 1, 3))  # (..., T, 21, 3), root at height
    height = torch.nn.functional.pad(features[..., ROOT_HEIGHT, None], (1, 1))  # (..., T, 1, 3)
    return torch.nn.functional.pad(ric - height, (0, 0, 1, 0))  # the pelvis at the origin


def compute_statistics(clips: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (263,) of feature clips the reference way: per-dimension mean over all
    frames (clips with NaN skipped), std averaged within each of the seven groups."""
    total = np.zeros(FEATURE_DIM)
    squares = np.zeros(FEATURE_DIM)
    frames = 0
    for clip in clips:  # accumulated per clip in float64: no copy of the whole dataset
        if not np.isfinite(clip).all():
            continue
        clip = clip.astype(np.float64)
        total += clip.sum(axis=0)
        squares += np.square(clip).sum(axis=0)
        frames += len(clip)
    if frames == 0:
        raise FeatureError("no finite clips to compute statistics from")
    mean = total / frames
    std = np.sqrt(np.maximum(squares / frames - np.square(mean), 0.0))
    for group in GROUPS.values():
        std[group] = std[group].mean()
    std = np.where(std < 1e-8, 1.0, std)  # a constant group (e.g. no contacts) stays unscaled
    return mean.astype(np.float32), std.astype(np.float32)
