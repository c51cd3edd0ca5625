"""Rigs: how a BVH skeleton maps onto the 22 SMPL body joints, presets, auto-detection and
user mapping files.

A mapping file is YAML (the presets in ``parttok/rigs/*.yaml`` are examples)::

    name: my-rig                 # optional, defaults to the file's stem
    up: y                        # optional: x, y or z, "-" for a negative axis; detected
                                 # from the motion when absent
    conform: true                # optional (default true): give the pelvis (hips, spine1)
                                 # and spine3 (neck, collars) groups SMPL's shape
    joints:                      # all 22 SMPL joints (parttok.skeleton.JOINT_NAMES)
      pelvis: Hips               # a joint of the file
      spine1: {along: [Hips, Spine, Chest], at: 0.396}
      left_collar: {Chest: 1, Neck: 1, UpperArm_L: 1}
      ...

An SMPL joint is one joint of the file; or ``{along: [A, B, ...], at: f}``, the point at
fraction ``f`` of the arc length of the chain A -> B -> ... (measured on the clip, so it
follows the chain as it bends); or ``{A: wa, B: wb, ...}``, the weighted mean of joints
(weights are normalised). File joint names match case-insensitively and ignore a
namespace prefix ("mixamorig:Hips" matches Hips).

Presets: ``smpl`` (the names save_bvh writes), ``cmu-motionbuilder`` and ``cmu-3dsmax``
(the two namings of the CMU BVH conversions), ``bandai-namco`` and ``character-creator``
(``CC_Base_*``). Where a rig lacks one of SMPL's three spine joints, spine1 and spine2 are
the points at SMPL's own arc-length fractions (0.396, 0.827) of the pelvis -> spine3 chain;
where the clavicle starts inside the spine (CMU), the collar is the mean of spine3, neck and
shoulder, which fits HumanML3D's own collars to 2 cm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from parttok.errors import RigError
from parttok.skeleton import JOINT_NAMES, NUM_JOINTS, unit_vectors

PRESET_NAMES = ("smpl", "cmu-motionbuilder", "cmu-3dsmax", "bandai-namco", "character-creator")
UP_AXES = ("x", "y", "z", "-x", "-y", "-z")
# Proper rotations taking each up axis onto +Y (applied to row vectors: p @ M.T).
_TO_Y_UP = {
    "y": np.eye(3),
    "z": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
    "-z": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),
    "x": np.array([[0, -1.0, 0], [1, 0, 0], [0, 0, 1]]),
    "-x": np.array([[0, 1.0, 0], [-1, 0, 0], [0, 0, 1]]),
    "-y": np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]]),
}
_PELVIS, _NECK = JOINT_NAMES.index("pelvis"), JOINT_NAMES.index("neck")
_ANKLES = [JOINT_NAMES.index("left_ankle"), JOINT_NAMES.index("right_ankle")]


@dataclass(frozen=True)
class Source:
    """Where one SMPL joint comes from: a weighted mean of file joints, or (``at`` set) the
    point at that fraction of the arc length of the chain ``names``."""

    names: tuple[str, ...]
    weights: tuple[float, ...] = (1.0,)
    at: float | None = None


@dataclass(frozen=True)
class Rig:
    """A mapping of the 22 SMPL joints (in JOINT_NAMES order) onto a file's joints."""

    name: str
    sources: tuple[Source, ...]
    up: str | None = None  # None: detect from the motion
    conform: bool = True  # give the pelvis and spine3 groups SMPL's shape on import

    @property
    def source_names(self) -> list[str]:
        """Every file joint the mapping uses, each once."""
        return list(dict.fromkeys(name for source in self.sources for name in source.names))

    def missing(self, file_names: list[str]) -> list[str]:
        """The joints this rig needs that ``file_names`` lacks."""
        present = {_key(name) for name in file_names}
        return [name for name in self.source_names if _key(name) not in present]

    def indices(self, file_names: list[str], path: str | os.PathLike) -> list[int]:
        """Index in ``file_names`` of each of ``source_names``; RigError if any is missing."""
        missing = self.missing(file_names)
        if missing:
            raise RigError(
                f"{path}: rig '{self.name}' needs joints the file lacks: {', '.join(missing)}; "
                "write a mapping file and pass --rig FILE"
            )
        lookup = {_key(name): i for i, name in reversed(list(enumerate(file_names)))}
        return [lookup[_key(name)] for name in self.source_names]

    def apply(self, positions: np.ndarray) -> np.ndarray:
        """(F, K, 3) positions of ``source_names`` -> (F, 22, 3) SMPL joint positions."""
        column = {name: k for k, name in enumerate(self.source_names)}
        weights = np.zeros((NUM_JOINTS, len(column)))  # (22, K)
        for joint, source in enumerate(self.sources):
            cols = [column[name] for name in source.names]
            if source.at is None:
                np.add.at(weights[joint], cols, source.weights)
            else:
                segment, fraction = _chain_point(positions[:, cols], source.at)
                weights[joint, cols[segment]] += 1.0 - fraction
                weights[joint, cols[segment + 1]] += fraction
        return weights @ positions  # (22, K) @ (F, K, 3) -> (F, 22, 3)


def _chain_point(chain: np.ndarray, at: float) -> tuple[int, float]:
    """The segment of a chain (F, n, 3) holding the point at fraction ``at`` of its arc
    length, and the fraction along that segment (segment lengths: medians over frames)."""
    lengths = np.median(np.linalg.norm(np.diff(chain, axis=1), axis=-1), axis=0)  # (n-1,)
    ends = np.cumsum(lengths)
    target = at * ends[-1]
    segment = min(int(np.searchsorted(ends, target)), len(lengths) - 1)
    start = ends[segment] - lengths[segment]
    fraction = (target - start) / lengths[segment] if lengths[segment] > 0 else 0.0
    return segment, float(fraction)


@cache
def _key(name: str) -> str:
    """Joint names compare case-insensitively, without a namespace prefix."""
    return name.rsplit(":", 1)[-1].strip().lower()


def parse_rig(mapping: object, name: str, origin: str) -> Rig:
    """Build a Rig from a parsed YAML mapping (see the module docstring)."""
    if not isinstance(mapping, dict) or not isinstance(mapping.get("joints"), dict):
        raise RigError(f"{origin}: a rig file needs a 'joints:' mapping of SMPL joint names")
    joints = mapping["joints"]
    unknown = [str(key) for key in joints if key not in JOINT_NAMES]
    if unknown:
        raise RigError(
            f"{origin}: unknown SMPL joint(s) {', '.join(unknown)}; "
            f"expected {', '.join(JOINT_NAMES)}"
        )
    absent = [joint for joint in JOINT_NAMES if joint not in joints]
    if absent:
        raise RigError(f"{origin}: the mapping lacks SMPL joint(s) {', '.join(absent)}")
    up = mapping.get("up")
    if up is not None and str(up).lower() not in UP_AXES:
        raise RigError(f"{origin}: 'up' must be one of {', '.join(UP_AXES)}, got {up!r}")
    conform = mapping.get("conform", True)
    if not isinstance(conform, bool):
        raise RigError(f"{origin}: 'conform' must be true or false, got {conform!r}")
    sources = tuple(_parse_source(joints[joint], joint, origin) for joint in JOINT_NAMES)
    return Rig(
        str(mapping.get("name") or name),
        sources,
        None if up is None else str(up).lower(),
        conform,
    )


def _parse_source(value: object, joint: str, origin: str) -> Source:
    if isinstance(value, str) and value.strip():
        return Source((value.strip(),))
    if isinstance(value, dict) and "along" in value:
        chain, at = value.get("along"), value.get("at")
        if (
            not isinstance(chain, list)
            or len(chain) < 2
            or not all(isinstance(n, str) for n in chain)
            or not isinstance(at, int | float)
            or not 0.0 <= at <= 1.0
        ):
            raise RigError(
                f"{origin}: {joint}: 'along' needs a list of two or more joint names and "
                "'at' a number from 0 to 1"
            )
        return Source(tuple(chain), at=float(at))
    if isinstance(value, dict) and value:
        weights = [w for w in value.values() if isinstance(w, int | float) and w >= 0]
        if len(weights) != len(value) or not all(isinstance(n, str) for n in value):
            raise RigError(f"{origin}: {joint}: weights must be non-negative numbers")
        total = float(sum(weights))
        if total <= 0:
            raise RigError(f"{origin}: {joint}: the weights sum to zero")
        return Source(tuple(value), tuple(float(w) / total for w in weights))
    raise RigError(
        f"{origin}: {joint}: expected a joint name, {{along: [...], at: f}} or "
        f"{{joint: weight, ...}}, got {value!r}"
    )


def load_rig_file(path: str | os.PathLike) -> Rig:
    """Read a YAML mapping file; any problem raises RigError."""
    path = Path(path)
    try:
        mapping = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise RigError(f"{path}: cannot read the rig file ({error.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        reason = str(error).splitlines()[0]
        raise RigError(f"{path}: not a valid YAML rig file ({reason})") from None
    return parse_rig(mapping, path.stem, str(path))


@cache
def preset(name: str) -> Rig:
    """A shipped rig preset by name."""
    if name not in PRESET_NAMES:
        raise RigError(f"unknown rig preset {name!r}; presets: {', '.join(PRESET_NAMES)}")
    text = (resources.files("parttok") / "rigs" / f"{name}.yaml").read_text(encoding="utf-8")
    return parse_rig(yaml.safe_load(text), name, f"preset {name}")


def detect_rig(file_names: list[str], path: str | os.PathLike) -> Rig:
    """The first preset whose joints are all in the file; RigError naming the closest
    preset's missing joints when none fits."""
    candidates = [preset(name) for name in PRESET_NAMES]
    for rig in candidates:
        if not rig.missing(file_names):
            return rig
    closest = min(candidates, key=lambda rig: len(rig.missing(file_names)))
    shown = ", ".join(file_names[:6]) + (", ..." if len(file_names) > 6 else "")
    raise RigError(
        f"{path}: unknown skeleton (joints {shown}); no preset fits (closest: "
        f"{closest.name}, missing {', '.join(closest.missing(file_names)[:5])}); "
        "write a mapping file and pass --rig FILE"
    )


def select_rig(rig: str | os.PathLike, file_names: list[str], path: str | os.PathLike) -> Rig:
    """Resolve a ``rig`` argument: "auto", a preset name, or a YAML mapping file."""
    text = str(rig)
    if text == "auto":
        return detect_rig(file_names, path)
    if text in PRESET_NAMES:
        return preset(text)
    if Path(text).is_file() or text.lower().endswith((".yaml", ".yml")):
        return load_rig_file(text)
    raise RigError(
        f"unknown rig {text!r}: use auto, a preset ({', '.join(PRESET_NAMES)}) or a YAML file"
    )


def detect_up(joints: np.ndarray) -> str:
    """The up axis of (F, 22, 3) SMPL joints: the axis the torso and legs point along on
    average (assumes the body is upright for most of the clip)."""
    torso = joints[:, _NECK] - joints[:, _PELVIS]
    legs = joints[:, _PELVIS] - joints[:, _ANKLES].mean(axis=1)
    direction = unit_vectors(torso).mean(axis=0) + unit_vectors(legs).mean(axis=0)  # (3,)
    axis = int(np.argmax(np.abs(direction)))
    return ("-" if direction[axis] < 0 else "") + "xyz"[axis]


def to_y_up(joints: np.ndarray, up: str) -> np.ndarray:
    """Rotate (..., 3) positions whose up axis is ``up`` so that up is +Y (a rotation,
    so left and right are kept)."""
    return joints if up == "y" else joints @ _TO_Y_UP[up].T
