"""Composing body-part codes: one clip's codes with some parts taken from another clip, and
how faithfully the decoded motion keeps each source's parts.

Whole-body codes (one code per step) cannot do this; part codes can, if the decoder keeps
the parts apart. ``composition_errors`` measures it: the taken parts should follow the
donor (relative to where they attach), the kept parts the base.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from parttok.baselines import is_whole_body
from parttok.errors import InputError
from parttok.features import facing_frame_joints
from parttok.skeleton import NUM_JOINTS, PARENTS
from parttok.tokenizer import Tokenizer


def part_joints(tokenizer: Tokenizer) -> dict[str, tuple[int, ...]]:
    """Part name -> SMPL joint indices of a part-based tokenizer."""
    parts = getattr(tokenizer.model, "config", {}).get("parts")
    if not tokenizer.is_quantized or not isinstance(parts, dict):
        raise InputError("composition needs a quantized part tokenizer (PartTokenizer codes)")
    return {name: tuple(joints) for name, joints in parts.items()}


def part_indices(parts: Sequence[str], available: Sequence[str]) -> list[int]:
    """The column of each named part among a tokenizer's ``available`` parts; InputError for
    no names, unknown names, or whole-body codes (the baselines'), which are not parts."""
    if is_whole_body(available):
        raise InputError(
            f"codes of parts {list(available)} are whole-body: only part codes compose"
        )
    unknown = [part for part in parts if part not in available]
    if unknown or not parts:
        raise InputError(
            f"unknown part(s) {unknown or list(parts)}; the codes have {list(available)}"
        )
    return [list(available).index(part) for part in parts]


def compose_codes(base: np.ndarray, donor: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """Codes (S, P) of ``base`` with the part ``columns`` taken from ``donor`` (S', P): a
    shorter donor repeats from its start, a longer one is cut to S steps."""
    base, donor = np.asarray(base), np.asarray(donor)
    if base.ndim != 2 or donor.ndim != 2 or base.shape[1] != donor.shape[1]:
        raise InputError(f"codes of shape {base.shape} and {donor.shape} do not compose")
    if len(base) == 0 or len(donor) == 0:
        raise InputError("cannot compose empty codes")
    if not all(0 <= column < base.shape[1] for column in columns):
        raise InputError(f"part columns {list(columns)} outside 0..{base.shape[1] - 1}")
    composite = base.copy()
    aligned = np.resize(donor, base.shape)  # (S, P): the donor's steps, wrapped
    composite[:, list(columns)] = aligned[:, list(columns)]
    return composite


def local_positions(features: np.ndarray, joints: Sequence[int], anchor: int) -> np.ndarray:
    """(T, 263) features -> (T, J, 3) positions of ``joints`` relative to joint ``anchor``,
    in the body's facing frame (the features' root-relative positions)."""
    positions = facing_frame_joints(features)  # (T, 22, 3)
    return positions[:, list(joints)] - positions[:, [anchor]]


def composition_errors(
    tokenizer: Tokenizer,
    base: np.ndarray,
    donor: np.ndarray,
    parts: Sequence[str],
) -> tuple[dict[str, float], np.ndarray]:
    """Encode ``base`` and ``donor`` features, give the base the donor's ``parts``, decode.

    Returns the errors in mm and the composite's features (T, 263):
    ``taken_mm``: the taken parts' joints, each relative to where its part attaches (the
    parent of the part's first joint), composite vs the donor's own reconstruction;
    ``kept_mm``: every other joint but the root, relative to the pelvis, composite vs the
    base's reconstruction; ``before_mm``: the taken parts in the base's reconstruction vs
    the donor's (how much composing had to change them).
    """
    groups = part_joints(tokenizer)
    indices = part_indices(parts, list(groups))
    if any(0 in groups[part] for part in parts):
        raise InputError("a part holding the root has no attachment to measure from")
    for name, clip in (("base", base), ("donor", donor)):
        if len(clip) < tokenizer.frames_per_step:
            raise InputError(f"the {name} clip has {len(clip)} frames, fewer than one step")
    base_codes, donor_codes = tokenizer.encode_batch([base, donor])
    donor_codes = np.resize(donor_codes, base_codes.shape)  # aligned with the composite
    composite_codes = compose_codes(base_codes, donor_codes, indices)
    base_out, donor_out, composite = tokenizer.decode_batch(
        [base_codes, donor_codes, composite_codes]
    )
    taken = [joint for part in parts for joint in groups[part]]
    kept = [joint for joint in range(1, NUM_JOINTS) if joint not in taken]

    def taken_error(a: np.ndarray, b: np.ndarray) -> float:
        errors = []
        for part in parts:
            joints = groups[part]
            anchor = max(PARENTS[min(joints)], 0)
            difference = local_positions(a, joints, anchor) - local_positions(b, joints, anchor)
            errors.append(np.linalg.norm(difference, axis=-1))  # (T, J)
        return float(np.concatenate(errors, axis=1).mean() * 1000)

    kept_difference = local_positions(composite, kept, 0) - local_positions(base_out, kept, 0)
    errors = {
        "taken_mm": taken_error(composite, donor_out),
        "kept_mm": float(np.linalg.norm(kept_difference, axis=-1).mean() * 1000),
        "before_mm": taken_error(base_out, donor_out),
    }
    return errors, composite
