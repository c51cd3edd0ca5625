"""The 22-joint SMPL body skeleton of HumanML3D: names, tree, target bone lengths, and the
vectorised retargeting, inverse and forward kinematics the 263 format is built on."""

from __future__ import annotations

import numpy as np
import torch
from smplx.joint_names import JOINT_NAMES as _SMPLX_JOINT_NAMES
from torch import Tensor

from parttok.rotations import qbetween, qinv, qmul, qrot

NUM_JOINTS = 22
JOINT_NAMES: tuple[str, ...] = tuple(_SMPLX_JOINT_NAMES[:NUM_JOINTS])
PARENTS: tuple[int, ...] = (
    -1,
    0,
    0,
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    9,
    9,
    12,
    13,
    14,
    16,
    17,
    18,
    19,
)
KINEMATIC_CHAINS: tuple[tuple[int, ...], ...] = (
    (0, 2, 5, 8, 11),
    (0, 1, 4, 7, 10),
    (0, 3, 6, 9, 12, 15),
    (9, 14, 17, 19, 21),
    (9, 13, 16, 18, 20),
)
# Unit direction of each joint's bone in the rest pose (row 0, the root, has none).
RAW_OFFSETS = np.array(
    [
        [0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, -1, 0], [0, 1, 0],
        [0, -1, 0], [0, -1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 0, 0],
        [-1, 0, 0], [0, 0, 1], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0],
        [0, -1, 0],
    ],
    dtype=np.float64,
)  # fmt: skip
# Length in metres of the bone ending at joints 1..21 on HumanML3D's target skeleton,
# measured on the released new_joints (identical across clips to 3e-7 m).
TARGET_BONE_LENGTHS = np.array(
    [
        0.103074, 0.1098834, 0.1315682, 0.3936232, 0.3901882, 0.1431902, 0.432433, 0.4256434,
        0.0573647, 0.1433818, 0.1494191, 0.2193601, 0.1374868, 0.1433828, 0.1030392, 0.131614,
        0.1229844, 0.2568399, 0.2630919, 0.2660118, 0.2698764,
    ]
)  # fmt: skip

# (right_hip, left_hip, right_shoulder, left_shoulder) for the facing direction.
FACE_JOINTS = (2, 1, 17, 16)
LEFT_FOOT = (7, 10)
RIGHT_FOOT = (8, 11)
# Left/right joint pairs; mirroring swaps them and negates X.
MIRROR_PAIRS = ((1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21))
MIRROR_PERMUTATION = np.arange(NUM_JOINTS)
for _left, _right in MIRROR_PAIRS:
    MIRROR_PERMUTATION[_left], MIRROR_PERMUTATION[_right] = _right, _left

# The joint whose rotation the reference IK composes with for each joint: its predecessor in
# its kinematic chain, except that chains start from the root's rotation (so the collars
# 13 and 14 hang off the root rotation, not off spine3, in the 6D features).
IK_PARENTS = np.array(PARENTS)
for _chain in KINEMATIC_CHAINS:
    IK_PARENTS[_chain[1]] = 0

IK_DEPTH = np.zeros(NUM_JOINTS, dtype=int)
for _joint in range(1, NUM_JOINTS):
    IK_DEPTH[_joint] = IK_DEPTH[IK_PARENTS[_joint]] + 1

# ANCESTORS[j, b] = 1 when bone b (ending at joint b) lies on the path root -> j.
ANCESTORS = np.zeros((NUM_JOINTS, NUM_JOINTS))
for _joint in range(1, NUM_JOINTS):
    _node = _joint
    while _node > 0:
        ANCESTORS[_joint, _node] = 1.0
        _node = PARENTS[_node]


# SMPL's two rigid joint groups: a parent whose rotation alone places three children
# (left, right, middle). Rigs disagree on these shapes (Bandai's hips sit level with the
# pelvis, SMPL's 8 cm below it), which no motion explains: conform_rigid_groups fixes them.
RIGID_GROUPS: tuple[tuple[int, tuple[int, int, int]], ...] = ((0, (1, 2, 3)), (9, (13, 14, 12)))
# Unit directions parent -> child in the group's frame (x: right child -> left child; y:
# towards the middle child, square to x; z = x cross y, forward), measured on HumanML3D's
# reference clips (median over their frames, left and right averaged to a symmetric shape;
# tests/test_skeleton.py measures them again).
RIGID_GROUP_SHAPES = np.array(
    [
        [[0.5561, -0.747, -0.3643], [-0.5561, -0.747, -0.3643], [0.0, 1.0, 0.0]],
        [[0.535, 0.8431, -0.0543], [-0.535, 0.8431, -0.0543], [0.0, 1.0, 0.0]],
    ]
)  # fmt: skip


def rigid_group_frames(joints: np.ndarray, group: int) -> np.ndarray:
    """(T, 22, 3) -> (T, 3, 3) frames of rigid group ``group``: columns x, y, z (see
    RIGID_GROUP_SHAPES)."""
    parent, (left, right, middle) = RIGID_GROUPS[group]
    x = unit_vectors(joints[:, left] - joints[:, right])
    up = joints[:, middle] - joints[:, parent]
    y = unit_vectors(up - (up * x).sum(-1, keepdims=True) * x)
    return np.stack((x, y, np.cross(x, y)), axis=-1)


def rigid_group_directions(joints: np.ndarray, group: int) -> np.ndarray:
    """(T, 22, 3) -> (T, 3, 3): unit directions parent -> each child (rows) in the frame of
    rigid group ``group``."""
    parent, children = RIGID_GROUPS[group]
    frames = rigid_group_frames(joints, group)  # (T, 3, 3)
    directions = unit_vectors(joints[:, list(children)] - joints[:, [parent]])  # (T, 3, 3)
    return np.einsum("tij,tki->tkj", frames, directions)  # frame^T @ each direction


def conform_rigid_groups(joints: np.ndarray) -> np.ndarray:
    """Give a rig's pelvis and spine3 groups SMPL's shape, keeping the motion.

    Per group: the rotation that best fits SMPL's shape onto the clip's median shape
    (Kabsch, in the group's frame) places SMPL's shape; each frame's deviation from the
    median is added back, so rigs whose groups bend keep that bend. Bone lengths are
    kept and everything below a moved child moves with it; frames where a group has no
    frame (a child on its parent, both sides at one point) keep their bones.
    (T, 22, 3) -> (T, 22, 3).
    """
    joints = np.asarray(joints, dtype=np.float64)
    bones = joints[:, 1:] - joints[:, list(PARENTS[1:])]  # (T, 21, 3)
    for group, (_, children) in enumerate(RIGID_GROUPS):
        index = [child - 1 for child in children]
        lengths = np.linalg.norm(bones[:, index], axis=-1, keepdims=True)  # (T, 3, 1)
        across = joints[:, children[0]] - joints[:, children[1]]
        # Frames where a child sits on the parent or the two sides coincide have no frame.
        usable = (lengths.min(axis=(1, 2)) > 1e-6) & (np.linalg.norm(across, axis=-1) > 1e-6)
        if not usable.any():
            continue
        frames = rigid_group_frames(joints[usable], group)  # (U, 3, 3)
        directions = rigid_group_directions(joints[usable], group)  # (U, 3, 3)
        median = unit_vectors(np.median(directions, axis=0))  # (3, 3)
        fitted = RIGID_GROUP_SHAPES[group] @ _best_rotation(RIGID_GROUP_SHAPES[group], median).T
        local = unit_vectors(fitted + (directions - median))  # (U, 3, 3)
        world = np.einsum("tij,tkj->tki", frames, local)  # frame @ each direction
        bones[np.ix_(usable, index)] = world * lengths[usable]
    bones = np.concatenate((np.zeros_like(bones[:, :1]), bones), axis=1)  # (T, 22, 3)
    return joints[:, :1] + np.einsum("jb,tbc->tjc", ANCESTORS, bones)


def _best_rotation(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The rotation R minimising sum |R s_k - t_k|^2 over rows s_k, t_k (Kabsch)."""
    u, _, vt = np.linalg.svd(source.T @ target)
    flip = np.sign(np.linalg.det(vt.T @ u.T))
    return vt.T @ np.diag([1.0, 1.0, flip]) @ u.T


def unit_vectors(vectors: np.ndarray) -> np.ndarray:
    """(..., 3) -> the same directions with length 1 (zero vectors stay zero)."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def target_offsets() -> np.ndarray:
    """(22, 3) rest-pose offsets of the target skeleton: direction times bone length."""
    return RAW_OFFSETS * np.concatenate(([0.0], TARGET_BONE_LENGTHS))[:, None]


def bone_lengths(joints: np.ndarray) -> np.ndarray:
    """(..., 22, 3) positions -> (..., 21) lengths of the bones ending at joints 1..21."""
    return np.linalg.norm(joints[..., 1:, :] - joints[..., list(PARENTS[1:]), :], axis=-1)


def retarget(joints: np.ndarray, lengths: np.ndarray = TARGET_BONE_LENGTHS) -> np.ndarray:
    """Put (T, 22, 3) positions on a skeleton with the given bone lengths.

    Equal to the reference's IK followed by FK with the target offsets: each bone keeps its
    direction and takes the target length; the root path is scaled by the ratio of leg
    lengths (bones ending at joints 5 and 8, measured on frame 0).
    """
    bones = joints[:, 1:] - joints[:, list(PARENTS[1:])]  # (T, 21, 3)
    length = np.linalg.norm(bones, axis=-1, keepdims=True)
    directions = bones / np.maximum(length, 1e-12)
    source_leg = length[0, 4, 0] + length[0, 7, 0]
    scale = (lengths[4] + lengths[7]) / max(source_leg, 1e-12)
    new_bones = np.concatenate((np.zeros_like(bones[:, :1]), directions * lengths[:, None]), 1)
    # (22, 22) @ (T, 22, 3): each joint is the root plus the bones on its path.
    return joints[:, :1] * scale + np.einsum("jb,tbc->tjc", ANCESTORS, new_bones)


def facing_direction(joints: Tensor, face_joints: tuple[int, int, int, int]) -> Tensor:
    """(..., 22, 3) -> (..., 3) forward vectors on the ground plane, not normalised.

    ``face_joints`` is (a, b, c, d): across = unit((a - b) + (c - d)), forward = up x across
    (the reference smooths this before normalising).
    """
    a, b, c, d = face_joints
    across = joints[..., a, :] - joints[..., b, :] + joints[..., c, :] - joints[..., d, :]
    across = across / across.norm(dim=-1, keepdim=True)
    up = across.new_tensor([0.0, 1.0, 0.0]).expand_as(across)
    return torch.linalg.cross(up, across, dim=-1)


def inverse_kinematics(joints: Tensor, root_rotation: Tensor) -> Tensor:
    """Local joint quaternions (T, 22, 4) from positions (T, 22, 3), as the reference does.

    The global rotation of each bone is the shortest arc from its rest direction to its
    current direction; a joint's local rotation is that relative to its IK parent (see
    ``IK_PARENTS``). ``root_rotation`` (T, 4) is joint 0's rotation.
    """
    bones = joints[:, 1:] - joints[:, list(PARENTS[1:])]  # (T, 21, 3)
    rest = torch.as_tensor(RAW_OFFSETS[1:], dtype=joints.dtype)
    bone_rotation = qbetween(rest.expand_as(bones), bones / bones.norm(dim=-1, keepdim=True))
    global_rotation = torch.cat((root_rotation[:, None], bone_rotation), dim=1)  # (T, 22, 4)
    local = qmul(qinv(global_rotation[:, IK_PARENTS[1:]]), bone_rotation)  # (T, 21, 4)
    return torch.cat((root_rotation[:, None], local), dim=1)


def forward_kinematics(
    local_rotations: Tensor, root_position: Tensor, offsets: np.ndarray | None = None
) -> Tensor:
    """Positions (T, 22, 3) from local quaternions (T, 22, 4) in the reference convention
    (chains composed from the root rotation), root positions (T, 3) and offsets (22, 3)."""
    offsets_t = torch.as_tensor(
        target_offsets() if offsets is None else offsets, dtype=local_rotations.dtype
    )
    global_rotation = local_rotations
    for depth in range(1, int(IK_DEPTH.max()) + 1):  # compose one tree level at a time
        level = torch.as_tensor(IK_DEPTH == depth)[None, :, None]
        composed = qmul(global_rotation[:, IK_PARENTS.clip(0)], local_rotations)
        global_rotation = torch.where(level, composed, global_rotation)  # (T, 22, 4)
    bones = qrot(global_rotation[:, 1:], offsets_t[1:])  # (T, 21, 3)
    bones = torch.cat((torch.zeros_like(bones[:, :1]), bones), dim=1)
    ancestors = torch.as_tensor(ANCESTORS, dtype=bones.dtype)
    return root_position[:, None] + torch.einsum("jb,tbc->tjc", ancestors, bones)
