"""Reconstruction and codebook metrics, vectorised over frames and clips."""

from __future__ import annotations

import numpy as np

from parttok.features import ArrayOrTensor, facing_angles, facing_frame_joints, features_to_joints

# Joint groups used to report per-part error for every model (the six-part default).
REPORT_PARTS = {
    "root": [0],
    "torso": [3, 6, 9, 12, 15],
    "left_arm": [13, 16, 18, 20],
    "right_arm": [14, 17, 19, 21],
    "left_leg": [1, 4, 7, 10],
    "right_leg": [2, 5, 8, 11],
}


def pelvis_aligned(joints: ArrayOrTensor) -> ArrayOrTensor:
    """(..., 22, 3) -> positions relative to the pelvis (numpy, or torch differentiably)."""
    return joints - joints[..., :1, :]


def joint_errors(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pelvis-aligned per-joint L2 errors (..., 22) in the input's units."""
    return np.linalg.norm(pelvis_aligned(predicted) - pelvis_aligned(target), axis=-1)


def procrustes_align(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Similarity-align each predicted pose (F, J, 3) onto its target (rotation, scale,
    translation), batched over frames."""
    mu_p = predicted.mean(axis=-2, keepdims=True)
    mu_t = target.mean(axis=-2, keepdims=True)
    p, t = predicted - mu_p, target - mu_t
    covariance = np.einsum("fji,fjk->fik", p, t)  # (F, 3, 3)
    u, s, vt = np.linalg.svd(covariance)
    reflection = np.sign(np.linalg.det(np.einsum("fij,fjk->fik", u, vt)))
    s[:, -1] *= reflection
    u[:, :, -1] *= reflection[:, None]
    rotation = np.einsum("fij,fjk->fik", u, vt)  # p @ rotation ~ t
    scale = s.sum(-1) / np.square(p).sum(axis=(-2, -1)).clip(1e-12)
    return scale[:, None, None] * np.einsum("fji,fik->fjk", p, rotation) + mu_t


def acceleration_error(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-frame mean L2 error of joint accelerations (F-2,), in units per frame squared."""
    accel_p = predicted[2:] - 2 * predicted[1:-1] + predicted[:-2]
    accel_t = target[2:] - 2 * target[1:-1] + target[:-2]
    return np.linalg.norm(accel_p - accel_t, axis=-1).mean(-1)


def clip_metrics(predicted_features: np.ndarray, target_features: np.ndarray) -> dict:
    """Errors of one reconstructed clip (raw features, same length), in millimetres."""
    predicted = features_to_joints(predicted_features.astype(np.float64))
    target = features_to_joints(target_features.astype(np.float64))
    errors = joint_errors(predicted, target) * 1000  # (F, 22) mm
    aligned = procrustes_align(pelvis_aligned(predicted), pelvis_aligned(target))
    pa_errors = np.linalg.norm(aligned - pelvis_aligned(target), axis=-1) * 1000
    accel = acceleration_error(predicted, target) * 1000 if len(target) > 2 else np.zeros(0)
    facing_errors = np.linalg.norm(
        facing_frame_joints(predicted_features) - facing_frame_joints(target_features), axis=-1
    )  # (F, 22) m
    turned = facing_angles(predicted_features) - facing_angles(target_features)  # (F,) rad
    facing_error = np.degrees(np.abs(np.angle(np.exp(1j * turned))))  # (F,) in [0, 180]
    return {
        "frames": int(len(target)),
        "mpjpe_sum": float(errors.mean(-1).sum()),
        "pa_mpjpe_sum": float(pa_errors.mean(-1).sum()),
        "facing_mpjpe_sum": float(1000 * facing_errors.mean(-1).sum()),
        "facing_error_sum": float(facing_error.sum()),
        "part_sums": {
            name: float(errors[:, joints].mean(-1).sum()) for name, joints in REPORT_PARTS.items()
        },
        "accel_sum": float(accel.sum()),
        "accel_frames": int(len(accel)),
    }


def summarize(rows: list[dict]) -> dict:
    """Frame-weighted means over clips: every frame of every clip counts once."""
    frames = sum(row["frames"] for row in rows)
    accel_frames = sum(row["accel_frames"] for row in rows)
    return {
        "clips": len(rows),
        "frames": frames,
        "mpjpe_mm": sum(r["mpjpe_sum"] for r in rows) / max(frames, 1),
        "pa_mpjpe_mm": sum(r["pa_mpjpe_sum"] for r in rows) / max(frames, 1),
        "facing_mpjpe_mm": sum(r["facing_mpjpe_sum"] for r in rows) / max(frames, 1),
        "facing_error_deg": sum(r["facing_error_sum"] for r in rows) / max(frames, 1),
        "per_part_mpjpe_mm": {
            name: sum(r["part_sums"][name] for r in rows) / max(frames, 1) for name in REPORT_PARTS
        },
        "accel_error": sum(r["accel_sum"] for r in rows) / max(accel_frames, 1),
    }


def codebook_statistics(codes: list[np.ndarray], codebook_size: int, part_names: list[str]) -> dict:
    """Per-part usage (fraction of codes ever used) and perplexity over all steps of all clips."""
    stacked = np.concatenate(codes, axis=0)  # (steps, P)
    usage, perplexity = {}, {}
    for part, name in enumerate(part_names):
        counts = np.bincount(stacked[:, part], minlength=codebook_size)
        probabilities = counts / max(counts.sum(), 1)
        nonzero = probabilities[probabilities > 0]
        usage[name] = float((counts > 0).mean())
        perplexity[name] = float(np.exp(-(nonzero * np.log(nonzero)).sum()))
    return {"usage": usage, "perplexity": perplexity}
