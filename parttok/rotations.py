"""Batched, differentiable rotation functions in torch.

Quaternions are (w, x, y, z) in the last axis; rotation matrices are (..., 3, 3) acting on
column vectors; 6D is the first two matrix columns concatenated (HumanML3D's "cont6d").
Every function broadcasts over leading axes and keeps the input's dtype and device.
"""

from __future__ import annotations

import torch
from torch import Tensor

_EPS = 1e-12


def qnormalize(q: Tensor) -> Tensor:
    """Unit quaternion(s)."""
    return q / q.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def qinv(q: Tensor) -> Tensor:
    """Inverse of unit quaternions (the conjugate)."""
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def qmul(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b (apply b, then a)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        dim=-1,
    )


def qrot(q: Tensor, v: Tensor) -> Tensor:
    """Rotate vectors v (..., 3) by unit quaternions q (..., 4)."""
    shape = torch.broadcast_shapes(q.shape[:-1], v.shape[:-1])
    q, v = q.expand(shape + (4,)), v.expand(shape + (3,))
    axis = q[..., 1:]
    uv = torch.linalg.cross(axis, v, dim=-1)
    uuv = torch.linalg.cross(axis, uv, dim=-1)
    return v + 2.0 * (q[..., :1] * uv + uuv)


def qbetween(u: Tensor, v: Tensor) -> Tensor:
    """The shortest-arc rotation taking direction u onto direction v (HumanML3D's formula)."""
    u, v = torch.broadcast_tensors(u, v)
    w = (u.square().sum(-1, keepdim=True) * v.square().sum(-1, keepdim=True)).sqrt()
    w = w + (u * v).sum(-1, keepdim=True)
    return qnormalize(torch.cat((w, torch.linalg.cross(u, v, dim=-1)), dim=-1))


def quat_to_matrix(q: Tensor) -> Tensor:
    """(..., 4) unit quaternions -> (..., 3, 3) rotation matrices."""
    w, x, y, z = qnormalize(q).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z),
        2 * (x * y - w * z),
        2 * (x * z + w * y),
        2 * (x * y + w * z),
        1 - 2 * (x * x + z * z),
        2 * (y * z - w * x),
        2 * (x * z - w * y),
        2 * (y * z + w * x),
        1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(m: Tensor) -> Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions with w >= 0."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # Four candidate solutions; take the one with the largest (best conditioned) pivot.
    candidates = torch.stack(
        (
            torch.stack((1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01), -1),
            torch.stack((m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20), -1),
            torch.stack((m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21), -1),
            torch.stack((m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22), -1),
        ),
        dim=-2,
    )  # (..., 4 candidates, 4)
    pivots = torch.stack(
        (1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), -1
    )
    best = pivots.argmax(-1, keepdim=True)  # (..., 1)
    q = torch.gather(candidates, -2, best[..., None].expand(best.shape + (4,))).squeeze(-2)
    q = qnormalize(q)
    return torch.where(q[..., :1] < 0, -q, q)


def matrix_to_6d(m: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 6): first column, then second column."""
    return torch.cat((m[..., :, 0], m[..., :, 1]), dim=-1)


def quat_to_6d(q: Tensor) -> Tensor:
    """(..., 4) -> (..., 6), HumanML3D's continuous 6D rotation."""
    return matrix_to_6d(quat_to_matrix(q))


def sixd_to_matrix(d6: Tensor) -> Tensor:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt on the two stored columns."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    b2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = b2 / b2.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-1)


_AXES = {"X": 0, "Y": 1, "Z": 2}


def axis_angle_matrix(axis: str, angle: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) about one named axis by angles (...) in radians."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == "X":
        rows = (one, zero, zero, zero, c, -s, zero, s, c)
    elif axis == "Y":
        rows = (c, zero, s, zero, one, zero, -s, zero, c)
    elif axis == "Z":
        rows = (c, -s, zero, s, c, zero, zero, zero, one)
    else:
        raise ValueError(f"unknown rotation axis {axis!r}")
    return torch.stack(rows, dim=-1).reshape(angle.shape + (3, 3))


def euler_to_matrix(angles: Tensor, order: str) -> Tensor:
    """Intrinsic Euler angles (..., 3) in radians, applied in ``order`` (e.g. "ZXY", as BVH
    lists its channels) -> (..., 3, 3): R = R_order[0] @ R_order[1] @ R_order[2]."""
    m = axis_angle_matrix(order[0], angles[..., 0])
    for i in (1, 2):
        m = m @ axis_angle_matrix(order[i], angles[..., i])
    return m


def matrix_to_euler(m: Tensor, order: str) -> Tensor:
    """Inverse of :func:`euler_to_matrix` for a Tait-Bryan order (three distinct axes)."""
    i, j, k = (_AXES[a] for a in order)
    # sign of the permutation (i, j, k): +1 for cyclic orders such as XYZ, YZX, ZXY
    sign = 1.0 if (j - i) % 3 == 1 else -1.0
    middle = torch.asin((sign * m[..., i, k]).clamp(-1.0, 1.0))
    first = torch.atan2(-sign * m[..., j, k], m[..., k, k])
    last = torch.atan2(-sign * m[..., i, j], m[..., i, i])
    return torch.stack((first, middle, last), dim=-1)
