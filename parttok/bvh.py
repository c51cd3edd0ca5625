"""BVH in and out: a vectorised reader with forward kinematics, ``load_bvh`` (any rig onto the
22 SMPL joints, metres, Y up, 20 fps) and ``save_bvh`` (joints -> a BVH with IK rotations).

Reading accepts any channel and rotation order, position channels on any joint (a position
channel replaces that axis of the joint's OFFSET, as Blender and MotionBuilder read it), End
Sites, CRLF line ends, tabs and any unit.
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from parttok.errors import BVHError, RigError
from parttok.features import FPS, check_joints, normalize_joints
from parttok.io import atomic_path
from parttok.rigs import detect_up, select_rig, to_y_up
from parttok.rotations import axis_angle_matrix, euler_to_matrix, matrix_to_euler
from parttok.skeleton import (
    JOINT_NAMES,
    PARENTS,
    TARGET_BONE_LENGTHS,
    bone_lengths,
    conform_rigid_groups,
    unit_vectors,
)

_AXES = "XYZ"
_CHANNEL_NAMES = {
    f"{axis}{kind}": (kind, axis) for axis in _AXES for kind in ("position", "rotation")
}
# Bytes that never occur in a text file (control characters other than whitespace).
_BINARY_BYTES = bytes(set(range(32)) - {9, 10, 11, 12, 13}) + b"\x7f"
_MOTION_LINE = re.compile(rb"^[ \t]*MOTION[ \t]*\r?$", re.MULTILINE)
_FRAMES = re.compile(rb"\s*Frames:[ \t]*(\S+)[ \t]*\r?\n", re.IGNORECASE)
_FRAME_TIME = re.compile(rb"\s*Frame[ \t]+Time:[ \t]*(\S+)[ \t]*(?:\r?\n|\Z)", re.IGNORECASE)
# What a header may ask for, checked before anything is allocated for it: real rigs (fingers,
# face) have a few hundred joints; 1 to 10,000 frames per second; at most an hour of motion
# (72,000 frames at 20 fps once resampled).
MAX_JOINTS = 1000
MIN_FRAME_TIME, MAX_FRAME_TIME = 1e-4, 1.0  # seconds
MAX_SECONDS = 3600.0


@dataclass
class BVH:
    """A parsed BVH file. Joints are in file order (a parent precedes its children)."""

    names: list[str]
    parents: np.ndarray  # (J,) int, -1 for a root
    offsets: np.ndarray  # (J, 3) rest translation of each joint in its parent's frame
    channels: list[tuple[str, ...]]  # per joint, e.g. ("Xposition", ..., "Zrotation")
    frame_time: float  # seconds
    motion: np.ndarray  # (F, C) float64, C = total number of channels
    end_sites: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (E, 3) offsets
    end_site_parents: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    rotation_orders: list[str] = field(init=False)  # per joint, e.g. "ZYX" ("" if none)

    def __post_init__(self) -> None:
        self.rotation_orders = [
            "".join(name[0].upper() for name in joint if name.lower().endswith("rotation"))
            for joint in self.channels
        ]

    @property
    def num_frames(self) -> int:
        return len(self.motion)

    @property
    def fps(self) -> float:
        """Frames per second (1 / Frame Time)."""
        return 1.0 / self.frame_time

    def index(self, name: str) -> int:
        """Index of the joint called ``name``."""
        return self.names.index(name)

    def global_positions(self, joints: list[int] | None = None) -> np.ndarray:
        """World positions (F, J, 3) of every joint by forward kinematics, in file units.

        ``joints`` limits the computation to those joints (and their ancestors) and returns
        (F, len(joints), 3). Vectorised: one tree depth level at a time, batched over frames.
        """
        wanted = list(range(len(self.names))) if joints is None else list(joints)
        needed = np.zeros(len(self.names), dtype=bool)
        for joint in wanted:
            while joint >= 0 and not needed[joint]:
                needed[joint] = True
                joint = int(self.parents[joint])
        kept = np.flatnonzero(needed)  # ancestors precede descendants in file order
        if not len(kept):
            return np.zeros((self.num_frames, 0, 3))
        position = torch.from_numpy(self._local_translations(kept))  # (F, K, 3)
        rotation = self._local_rotations(kept)  # (F, K, 3, 3)
        renumber = np.full(len(self.names), -1)
        renumber[kept] = np.arange(len(kept))
        parents = np.where(self.parents[kept] >= 0, renumber[self.parents[kept]], -1)
        depth = np.zeros(len(kept), dtype=int)
        for k, parent in enumerate(parents):
            depth[k] = depth[parent] + 1 if parent >= 0 else 0
        for level in range(1, int(depth.max()) + 1):
            level_joints = np.flatnonzero(depth == level)
            level_parents = parents[level_joints]
            parent_rotation = rotation[:, level_parents]  # (F, n, 3, 3)
            position[:, level_joints] = position[:, level_parents] + (
                parent_rotation @ position[:, level_joints, :, None]
            ).squeeze(-1)
            rotation[:, level_joints] = parent_rotation @ rotation[:, level_joints]
        return position[:, renumber[wanted]].numpy()

    def _columns(self) -> np.ndarray:
        """(J,) index of each joint's first channel column."""
        counts = [len(joint) for joint in self.channels]
        return np.concatenate(([0], np.cumsum(counts)[:-1])).astype(int)

    def _local_translations(self, kept: np.ndarray) -> np.ndarray:
        """(F, K, 3) translations: the OFFSET, with position channels replacing their axis."""
        translation = np.repeat(self.offsets[None, kept], self.num_frames, axis=0)
        columns = self._columns()
        for k, joint in enumerate(kept):
            for c, name in enumerate(self.channels[joint]):
                kind, axis = _CHANNEL_NAMES[name]
                if kind == "position":
                    translation[:, k, _AXES.index(axis)] = self.motion[:, columns[joint] + c]
        return translation

    def _local_rotations(self, kept: np.ndarray) -> torch.Tensor:
        """(F, K, 3, 3) local rotation matrices, one batched Euler conversion per order."""
        columns = self._columns()
        rotation = torch.eye(3, dtype=torch.float64).repeat(self.num_frames, len(kept), 1, 1)
        groups: dict[str, list[tuple[int, list[int]]]] = {}
        for k, joint in enumerate(kept):
            order = self.rotation_orders[joint]
            if not order:
                continue
            cols = [
                columns[joint] + c
                for c, name in enumerate(self.channels[joint])
                if name.endswith("rotation")
            ]
            # Missing axes rotate by zero: pad the order with them (R @ I = R).
            full_order = order + "".join(axis for axis in _AXES if axis not in order)
            groups.setdefault(full_order, []).append((k, cols))
        for order, members in groups.items():
            angles = np.zeros((self.num_frames, len(members), 3))
            for m, (_, cols) in enumerate(members):
                angles[:, m, : len(cols)] = self.motion[:, cols]
            matrices = euler_to_matrix(torch.from_numpy(np.radians(angles)), order)
            rotation[:, [k for k, _ in members]] = matrices
        return rotation


def read_bvh(path: str | os.PathLike) -> BVH:
    """Parse a BVH file; every problem raises BVHError with one line naming the file."""
    path = Path(path)
    data, motion_match = _read_text(path)
    header = data[: motion_match.start()].decode("utf-8")
    hierarchy = _parse_hierarchy(header, path)
    motion_line = header.count("\n") + 1  # file line number of MOTION
    frame_time, motion = _parse_motion(
        data[motion_match.end() :], sum(len(c) for c in hierarchy["channels"]), path, motion_line
    )
    return BVH(frame_time=frame_time, motion=motion, **hierarchy)


def read_bvh_header(path: str | os.PathLike) -> tuple[int, float]:
    """The 'Frames:' count and 'Frame Time:' (seconds) of a BVH file, checked against what a
    header may ask for, without parsing the rest (a cheap look before reading many files);
    a problem raises BVHError."""
    path = Path(path)
    data, motion_match = _read_text(path)
    frames, frame_time, _ = _motion_header(data[motion_match.end() :], path)
    return frames, frame_time


def _read_text(path: Path) -> tuple[bytes, re.Match[bytes]]:
    """A BVH file's bytes (UTF-8 text, no byte order mark) and where its MOTION line is."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BVHError(f"{path}: cannot read the file ({error.strerror})") from None
    if not data.strip():
        raise BVHError(f"{path}: empty file")
    if data.translate(None, _BINARY_BYTES) != data:
        raise BVHError(f"{path}: not a text file (it contains binary bytes)")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BVHError(f"{path}: not UTF-8 text (bad byte at offset {error.start})") from None
    data = data.removeprefix(b"\xef\xbb\xbf")
    motion_match = _MOTION_LINE.search(data)
    if motion_match is None:
        raise BVHError(f"{path}: no MOTION section")
    return data, motion_match


def _parse_hierarchy(header: str, path: Path) -> dict:
    """The joints of the HIERARCHY section, as BVH fields."""
    return _HierarchyParser(header, path).parse()


class _HierarchyParser:
    """A token loop over the HIERARCHY block (small: no need to vectorise)."""

    def __init__(self, header: str, path: Path) -> None:
        self.path = path
        self.tokens = [
            (number, token)
            for number, line in enumerate(header.splitlines(), 1)
            for token in line.split()
        ]
        self.i = 0
        self.names: list[str] = []
        self.parents: list[int] = []
        self.offsets: list[list[float]] = []
        self.channels: list[tuple[str, ...]] = []
        self.end_sites: list[list[float]] = []
        self.end_site_parents: list[int] = []
        self.blocks: list[tuple[str, int]] = []  # open blocks: ("joint" | "end", index)
        self.pending: tuple[str, int] | None = None  # the node whose "{" comes next

    def error(self, message: str, at: int | None = None) -> BVHError:
        """A BVHError naming the line of token ``at`` (default: the current token)."""
        line = self.tokens[min(self.i if at is None else at, len(self.tokens) - 1)][0]
        return BVHError(f"{self.path}: line {line}: {message}")

    def parse(self) -> dict:
        if not self.tokens or self.tokens[0][1].upper() != "HIERARCHY":
            raise BVHError(f"{self.path}: no HIERARCHY section at the start of the file")
        self.i = 1
        while self.i < len(self.tokens):
            token = self.tokens[self.i][1]
            keyword = token.upper()
            if keyword in ("ROOT", "JOINT"):
                self.joint(keyword)
            elif keyword == "END":
                self.end_site()
            elif token == "{":
                if self.pending is None:
                    raise self.error("unexpected '{'")
                self.blocks.append(self.pending)
                self.pending = None
                self.i += 1
            elif token == "}":
                if not self.blocks:
                    raise self.error("unbalanced '}'")
                self.blocks.pop()
                self.i += 1
            elif keyword == "OFFSET":
                self.offset()
            elif keyword == "CHANNELS":
                self.channel_list()
            else:
                raise self.error(f"unexpected {token!r} in HIERARCHY")
        if self.blocks:
            raise BVHError(f"{self.path}: HIERARCHY ends with {len(self.blocks)} unclosed '{{'")
        if not self.names:
            raise BVHError(f"{self.path}: HIERARCHY has no ROOT joint")
        return {
            "names": self.names,
            "parents": np.array(self.parents, dtype=int),
            "offsets": np.array(self.offsets, dtype=np.float64).reshape(-1, 3),
            "channels": self.channels,
            "end_sites": np.array(self.end_sites, dtype=np.float64).reshape(-1, 3),
            "end_site_parents": np.array(self.end_site_parents, dtype=int),
        }

    def rest_of_line(self) -> list[str]:
        """Consume the tokens after the current one on its line, up to a "{"."""
        line = self.tokens[self.i][0]
        self.i += 1
        words = []
        while self.i < len(self.tokens) and self.tokens[self.i][0] == line:
            if self.tokens[self.i][1] == "{":
                break
            words.append(self.tokens[self.i][1])
            self.i += 1
        return words

    def values(self, count: int) -> list[str]:
        """Consume the current keyword and the ``count`` tokens after it."""
        found = [token for _, token in self.tokens[self.i + 1 : self.i + 1 + count]]
        if len(found) < count:
            raise self.error(f"{self.tokens[self.i][1]} is cut short")
        self.i += 1 + count
        return found

    def joint(self, keyword: str) -> None:
        if len(self.names) == MAX_JOINTS:
            raise self.error(f"more than {MAX_JOINTS} joints")
        if keyword == "JOINT" and not self.blocks:
            raise self.error("JOINT outside any ROOT")
        if self.blocks and self.blocks[-1][0] == "end":
            raise self.error("a joint inside an End Site")
        words = self.rest_of_line()
        if not words:
            raise self.error(f"{keyword} without a name")
        self.names.append(" ".join(words))
        self.parents.append(self.blocks[-1][1] if self.blocks else -1)
        self.offsets.append([0.0, 0.0, 0.0])
        self.channels.append(())
        self.pending = ("joint", len(self.names) - 1)

    def end_site(self) -> None:
        words = self.rest_of_line()  # "Site", and a name some exporters add
        if not words or words[0].upper() != "SITE" or not self.blocks:
            raise self.error("expected 'End Site' inside a joint")
        self.end_sites.append([0.0, 0.0, 0.0])
        self.end_site_parents.append(self.blocks[-1][1])
        self.pending = ("end", len(self.end_sites) - 1)

    def offset(self) -> None:
        if not self.blocks:
            raise self.error("OFFSET outside a joint")
        start = self.i
        text = self.values(3)
        try:
            vector = [float(value) for value in text]
        except ValueError:
            raise self.error(f"non-numeric value in OFFSET {' '.join(text)!r}", start) from None
        kind, index = self.blocks[-1]
        (self.end_sites if kind == "end" else self.offsets)[index] = vector

    def channel_list(self) -> None:
        if not self.blocks or self.blocks[-1][0] != "joint":
            raise self.error("CHANNELS outside a joint")
        count = self.tokens[self.i + 1][1] if self.i + 1 < len(self.tokens) else ""
        if not (count.isascii() and count.isdigit()):
            raise self.error(f"bad channel count {count!r}")
        if int(count) > len(_CHANNEL_NAMES):
            raise self.error(f"{count} channels; a joint has at most {len(_CHANNEL_NAMES)}")
        start = self.i
        names = self.values(int(count) + 1)[1:]
        canonical = [name[0].upper() + name[1:].lower() for name in names]
        for name, key in zip(names, canonical, strict=True):
            if key not in _CHANNEL_NAMES:
                raise self.error(f"unknown channel {name!r}", start)
            if canonical.count(key) > 1:
                raise self.error(f"channel {name!r} twice (one per axis and kind)", start)
        self.channels[self.blocks[-1][1]] = tuple(canonical)


def _parse_motion(
    body: bytes, num_channels: int, path: Path, motion_line: int
) -> tuple[float, np.ndarray]:
    """The frame time and the (rows, C) values of the MOTION section, vectorised. Rows
    beyond the declared 'Frames:' are kept, as Blender reads them; fewer are an error."""
    frames, frame_time, rows_start = _motion_header(body, path)
    block = body[rows_start:]
    raw = np.frombuffer(block, dtype=np.uint8)
    space = raw <= 32
    starts = np.flatnonzero(~space & np.concatenate(([True], space[:-1])))  # token starts
    newlines = np.flatnonzero(raw == 10)
    per_line = np.bincount(np.searchsorted(newlines, starts), minlength=len(newlines) + 1)
    row_lines = np.flatnonzero(per_line)  # line index (within block) of each data row
    row_sizes = per_line[row_lines]
    header_lines = body[:rows_start].count(b"\n")
    if len(row_lines) < frames:
        raise BVHError(
            f"{path}: truncated: 'Frames: {frames}' but only {len(row_lines)} rows of motion"
        )
    _check_duration(len(row_lines), frame_time, path)
    bad = np.flatnonzero(row_sizes != num_channels)
    if len(bad):
        line = motion_line + header_lines + int(row_lines[bad[0]])
        raise BVHError(
            f"{path}: line {line}: {row_sizes[bad[0]]} values, but the HIERARCHY declares "
            f"{num_channels} channels"
        )
    try:
        values = np.array(block.split(), dtype=np.float64)
    except ValueError:
        token = next(t for t in block.split() if not _is_number(t))
        text = token.decode(errors="replace")
        raise BVHError(f"{path}: non-numeric value {text!r} in MOTION") from None
    if not np.isfinite(values).all():
        raise BVHError(f"{path}: NaN or infinite value in MOTION")
    return frame_time, values.reshape(len(row_lines), num_channels)


def _motion_header(body: bytes, path: Path) -> tuple[int, float, int]:
    """'Frames:', 'Frame Time:' and where the rows start in the MOTION section ``body``;
    bounded (frame time, duration) before anything is allocated for them."""
    frames_match = _FRAMES.match(body)
    if frames_match is None:
        raise BVHError(f"{path}: MOTION has no 'Frames:' line")
    time_match = _FRAME_TIME.match(body, frames_match.end())
    if time_match is None:
        raise BVHError(f"{path}: MOTION has no 'Frame Time:' line after 'Frames:'")
    try:
        frames = int(frames_match.group(1))
        frame_time = float(time_match.group(1))
    except ValueError:
        raise BVHError(f"{path}: bad 'Frames:' or 'Frame Time:' value") from None
    if frames < 0 or not math.isfinite(frame_time) or frame_time <= 0:
        raise BVHError(f"{path}: bad 'Frames: {frames}' or 'Frame Time: {frame_time}'")
    if not MIN_FRAME_TIME <= frame_time <= MAX_FRAME_TIME:
        raise BVHError(
            f"{path}: 'Frame Time: {frame_time}' is outside {MIN_FRAME_TIME} to "
            f"{MAX_FRAME_TIME} seconds"
        )
    _check_duration(frames, frame_time, path)
    return frames, frame_time, time_match.end()


def _check_duration(frames: int, frame_time: float, path: Path) -> None:
    """BVHError when ``frames`` at ``frame_time`` last longer than MAX_SECONDS."""
    if frames > MAX_SECONDS / frame_time:  # exact for any int, where frames * time overflows
        count = f"{frames} frames" if frames < 10**9 else "over a billion frames"
        raise BVHError(
            f"{path}: {count} of {frame_time} s last over {MAX_SECONDS:.0f} s, "
            "the longest clip read"
        )


def _is_number(token: bytes) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


@dataclass
class Motion:
    """A clip on the 22 SMPL joints: metres, Y up, 20 fps, normalised as HumanML3D does
    (target skeleton, on the floor, first root at the origin, facing +Z at frame 0)."""

    joints: np.ndarray  # (T, 22, 3) float32
    name: str  # the file's stem
    source: str  # the file's path
    rig: str  # the rig preset or mapping name
    fps: int = FPS
    source_fps: float = FPS  # the file's frame rate
    scale: float = 1.0  # metres per file unit, from the leg length
    up: str = "y"  # the file's up axis
    dropped_first_frame: bool = False  # frame 0 was an added T-pose (or other rest pose)


def load_bvh(path: str | os.PathLike, rig: str | os.PathLike = "auto") -> Motion:
    """Import a BVH file onto the 22 SMPL joints (metres, Y up, 20 fps, normalised).

    ``rig``: "auto" (detected from the joint names), a preset name or a YAML mapping file
    (see parttok.rigs). Steps: parse, forward kinematics, map onto SMPL joints, rotate to
    Y up (the rig's axis or detected), scale to metres from the leg length, give the pelvis
    and spine3 groups SMPL's shape (``conform_rigid_groups``, unless the rig says
    ``conform: false``), drop an added rest pose in frame 0 (detected), resample to 20 fps,
    then ``normalize_joints``.
    """
    bvh = read_bvh(path)
    if bvh.num_frames == 0:
        raise BVHError(f"{path}: the file has no frames of motion")
    chosen = select_rig(rig, bvh.names, path)
    positions = bvh.global_positions(chosen.indices(bvh.names, path))  # (F, K, 3)
    joints = chosen.apply(positions)  # (F, 22, 3), file units
    up = chosen.up or detect_up(joints)
    joints = to_y_up(joints, up)
    scale = _metres_per_unit(joints, path)
    joints = joints * scale
    if chosen.conform:
        joints = conform_rigid_groups(joints)
    dropped = _has_added_first_pose(joints)
    if dropped:
        joints = joints[1:]
    source_fps = _snap_rate(bvh.fps)
    joints = resample(joints, source_fps, FPS)
    return Motion(
        joints=normalize_joints(joints).astype(np.float32),
        name=Path(path).stem,
        source=str(path),
        rig=chosen.name,
        source_fps=source_fps,
        scale=scale,
        up=up,
        dropped_first_frame=dropped,
    )


def _metres_per_unit(joints: np.ndarray, path: str | os.PathLike) -> float:
    """Scale factor taking (F, 22, 3) file units to metres: the target skeleton's leg
    length (hip-knee-ankle) over the clip's median one, averaged over both legs."""
    legs = bone_lengths(joints)[:, [3, 4, 6, 7]]  # bones ending at knees and ankles
    measured = np.median(legs, axis=0).reshape(2, 2).sum(axis=0).mean()
    target = TARGET_BONE_LENGTHS[[3, 4, 6, 7]].reshape(2, 2).sum(axis=0).mean()
    if not measured > 0:
        raise RigError(f"{path}: the mapped legs have zero length; check the rig mapping")
    return float(target / measured)


def _has_added_first_pose(joints: np.ndarray) -> bool:
    """True when frame 0 is a pose added before the capture (CMU's and some iClone files'
    T-pose): its root-relative pose jumps to frame 1 by more than 4 times the 99th
    percentile of the later frame-to-frame changes, and by over 2 cm per joint on average.
    (F, 22, 3) metres."""
    if len(joints) < 3:
        return False
    relative = joints - joints[:, :1]
    change = np.linalg.norm(np.diff(relative, axis=0), axis=-1).mean(axis=-1)  # (F-1,)
    return bool(change[0] > max(4.0 * np.percentile(change[1:], 99), 0.02))


def _snap_rate(fps: float) -> float:
    """Frame rates written as rounded frame times (0.0083333 s) snap to the whole rate."""
    whole = round(fps)
    return float(whole) if whole > 0 and abs(fps - whole) < 1e-3 * fps else fps


def resample(positions: np.ndarray, source_fps: float, fps: float = FPS) -> np.ndarray:
    """Linear interpolation of (F, ...) frames at the ``fps`` clock from frame 0; the clip
    keeps its duration: floor((F - 1) * fps / source_fps) + 1 frames."""
    if source_fps == fps or len(positions) < 2:
        return positions
    count = int(np.floor((len(positions) - 1) * fps / source_fps + 1e-9)) + 1
    where = np.arange(count) * (source_fps / fps)  # fractional source frame of each output
    before = np.minimum(np.floor(where).astype(int), len(positions) - 1)
    after = np.minimum(before + 1, len(positions) - 1)
    weight = (where - before).reshape((-1,) + (1,) * (positions.ndim - 1))
    return positions[before] * (1.0 - weight) + positions[after] * weight


# --- writing -------------------------------------------------------------------------------

# Rest direction of the one child bone of each single-child joint (a T-pose: legs down,
# spine up, feet forward, arms out sideways).
_UP, _DOWN, _FORWARD = (0.0, 1.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)
_LEFT, _RIGHT = (1.0, 0.0, 0.0), (-1.0, 0.0, 0.0)
_CHILD_REST = {
    1: _DOWN, 2: _DOWN, 3: _UP, 4: _DOWN, 5: _DOWN, 6: _UP, 7: _FORWARD, 8: _FORWARD,
    12: _UP, 13: _LEFT, 14: _RIGHT, 16: _LEFT, 17: _RIGHT, 18: _LEFT, 19: _RIGHT,
}  # fmt: skip
# Joints with several children get a full frame from two of them: (up child, left, right).
_FRAME_CHILDREN = {0: (3, 1, 2), 9: (12, 13, 14)}
# Euler order per joint: the bone axis in the middle (no gimbal lock for the swing-only
# rotations), yaw first for the root and spine3.
_ROTATION_ORDERS = {0: "YXZ", 9: "YXZ", 7: "XZY", 8: "XZY", 10: "XZY", 11: "XZY"}
_ROTATION_ORDERS |= {j: "ZXY" for j in (13, 14, 16, 17, 18, 19, 20, 21)}
_POSITION_TOLERANCE = 2e-5  # metres: a bone varying more than this gets position channels


def save_bvh(path: str | os.PathLike, joints: np.ndarray, fps: float = FPS) -> None:
    """Write (T, 22, 3) joint positions (metres, Y up) as a BVH with the 22 SMPL joint names
    and parttok.skeleton.PARENTS, written atomically. Units in the file are metres.

    The rest pose is a T-pose whose bone lengths are the clip's (mean over frames); the
    pelvis and spine3 take the frame of their children (up: spine1 / neck, across: the
    hips / collars) and every other joint the smallest rotation (no twist) carrying its
    bone's rest direction onto the clip's, so forward kinematics gives the joints back
    (to about 1e-6 m). A bone whose length, or a pelvis / spine3 child whose position in its
    parent's frame, varies by more than 0.02 mm over the clip gets position channels too.
    """
    positions = check_joints(joints, name=str(path), min_frames=1)  # (T, 22, 3) float64
    global_rotation = _global_rotations(positions)  # (T, 22, 3, 3)
    parents = np.array(PARENTS)
    local_rotation = global_rotation.copy()
    local_rotation[:, 1:] = (
        np.swapaxes(global_rotation[:, parents[1:]], -1, -2) @ (global_rotation[:, 1:])
    )
    bones = positions[:, 1:] - positions[:, parents[1:]]  # (T, 21, 3) world
    local_bones = np.einsum("tjba,tjb->tja", global_rotation[:, parents[1:]], bones)
    offsets = np.concatenate((np.zeros((1, 3)), local_bones.mean(axis=0)))  # (22, 3)
    deviation = np.linalg.norm(local_bones - offsets[1:], axis=-1).max(axis=0)
    moving = {0} | {j + 1 for j in np.flatnonzero(deviation > _POSITION_TOLERANCE)}
    translations = np.concatenate((positions[:, :1], local_bones), axis=1)  # (T, 22, 3)

    order = _depth_first_order()
    lines = ["HIERARCHY"]
    columns = []
    for joint, depth, closes in order:
        indent = "\t" * depth
        rotation_order = _ROTATION_ORDERS.get(joint, "ZYX")
        channels = [f"{axis}rotation" for axis in rotation_order]
        if joint in moving:
            channels = ["Xposition", "Yposition", "Zposition"] + channels
            columns.append(translations[:, joint])
        columns.append(np.degrees(_euler(local_rotation[:, joint], rotation_order)))
        keyword = "ROOT" if joint == 0 else "JOINT"
        lines += [
            f"{indent}{keyword} {JOINT_NAMES[joint]}",
            f"{indent}{{",
            f"{indent}\tOFFSET {_format_vector(offsets[joint])}",
            f"{indent}\tCHANNELS {len(channels)} {' '.join(channels)}",
        ]
        if joint not in PARENTS:  # a leaf: its End Site continues its own bone by half
            tip = np.array(_CHILD_REST[PARENTS[joint]]) * 0.5 * np.linalg.norm(offsets[joint])
            lines += [
                f"{indent}\tEnd Site",
                f"{indent}\t{{",
                f"{indent}\t\tOFFSET {_format_vector(tip)}",
                f"{indent}\t}}",
            ]
        lines += [f"{indent[: len(indent) - k]}}}" for k in range(closes)]
    motion = np.concatenate(columns, axis=1)  # (T, C)
    lines += ["MOTION", f"Frames: {len(motion)}", f"Frame Time: {1.0 / fps:.8f}"]
    body = io.StringIO()
    np.savetxt(body, motion, fmt="%.6f")
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join(lines) + "\n" + body.getvalue(), encoding="utf-8")


def _depth_first_order() -> list[tuple[int, int, int]]:
    """(joint, depth, number of blocks to close after it) in the file's nesting order."""
    children: dict[int, list[int]] = {j: [] for j in range(len(PARENTS))}
    for joint, parent in enumerate(PARENTS[1:], start=1):
        children[parent].append(joint)
    order: list[tuple[int, int, int]] = []

    def visit(joint: int, depth: int) -> None:
        order.append((joint, depth, 0))
        for child in children[joint]:
            visit(child, depth + 1)
        last_joint, last_depth, closes = order[-1]
        order[-1] = (last_joint, last_depth, closes + 1)

    visit(0, 0)
    return order


def _format_vector(vector: np.ndarray) -> str:
    return " ".join(f"{round(value, 6) + 0.0:.6f}" for value in vector)  # no "-0.000000"


def _global_rotations(positions: np.ndarray) -> np.ndarray:
    """(T, 22, 3) -> (T, 22, 3, 3) world rotation of each joint's frame (see save_bvh)."""
    count = len(positions)
    rotation = np.zeros((count, len(PARENTS), 3, 3))
    for joint, (up_child, left, right) in _FRAME_CHILDREN.items():
        rotation[:, joint] = _frame(
            positions[:, up_child] - positions[:, joint], positions[:, left] - positions[:, right]
        )
    depth = np.zeros(len(PARENTS), dtype=int)
    for joint in range(1, len(PARENTS)):
        depth[joint] = depth[PARENTS[joint]] + 1
    child_of = {parent: joint for joint, parent in enumerate(PARENTS) if parent in _CHILD_REST}
    for level in range(1, int(depth.max()) + 1):
        members = [j for j in np.flatnonzero(depth == level) if j not in _FRAME_CHILDREN]
        swinging = [j for j in members if j in _CHILD_REST]
        leaves = [j for j in members if j not in _CHILD_REST]
        if swinging:
            parent_rotation = rotation[:, [PARENTS[j] for j in swinging]]  # (T, n, 3, 3)
            direction = positions[:, [child_of[j] for j in swinging]] - positions[:, swinging]
            local_direction = np.einsum("tnba,tnb->tna", parent_rotation, unit_vectors(direction))
            rest = np.array([_CHILD_REST[j] for j in swinging])  # (n, 3)
            rotation[:, swinging] = parent_rotation @ _swing(rest, local_direction)
        rotation[:, leaves] = rotation[:, [PARENTS[j] for j in leaves]]
    return rotation


def _frame(up: np.ndarray, across: np.ndarray) -> np.ndarray:
    """(T, 3) up and left-minus-right vectors -> (T, 3, 3) rotations with columns
    (left, up, forward); degenerate inputs fall back to the world axes."""
    y = unit_vectors(up)
    y[np.linalg.norm(up, axis=-1) < 1e-9] = (0.0, 1.0, 0.0)
    x = across - (across * y).sum(-1, keepdims=True) * y
    flat = np.linalg.norm(x, axis=-1) < 1e-9
    helper = np.where(np.abs(y[flat, :1]) < 0.9, (1.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    x[flat] = np.cross(helper, y[flat])
    x = unit_vectors(x)
    return np.stack((x, y, np.cross(x, y)), axis=-1)


def _swing(rest: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Smallest rotations (..., 3, 3) turning unit vectors ``rest`` onto unit ``target``
    (Rodrigues; opposite vectors turn half a circle about an axis perpendicular to rest)."""
    rest = np.broadcast_to(rest, target.shape)
    axis = np.cross(rest, target)  # sin(angle) * unit axis
    cosine = (rest * target).sum(-1)
    zero = np.zeros_like(cosine)
    skew = np.stack(
        (zero, -axis[..., 2], axis[..., 1], axis[..., 2], zero, -axis[..., 0],
         -axis[..., 1], axis[..., 0], zero), axis=-1,
    ).reshape(target.shape + (3,))  # fmt: skip
    opposite = 1.0 + cosine < 1e-9
    scale = 1.0 / np.where(opposite, 1.0, 1.0 + cosine)
    rotation = np.eye(3) + skew + skew @ skew * scale[..., None, None]
    if opposite.any():
        helper = np.where(np.abs(rest[..., :1]) < 0.9, (1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
        half_turn_axis = unit_vectors(np.cross(rest, helper))[opposite]
        rotation[opposite] = 2.0 * half_turn_axis[:, :, None] * half_turn_axis[:, None] - np.eye(3)
    return rotation


def _euler(matrices: np.ndarray, order: str) -> np.ndarray:
    """(T, 3, 3) rotations -> (T, 3) Euler angles in radians (intrinsic, as BVH channels).

    At gimbal lock (middle angle +-90 degrees) only a combination of the first and last
    angles is defined: the last is set to 0 and the first solved from what remains."""
    angles = matrix_to_euler(torch.from_numpy(matrices), order).numpy()
    locked = np.abs(np.cos(angles[:, 1])) < 1e-6
    if locked.any():
        i, j, k = (_AXES.index(axis) for axis in order)
        sign = 1.0 if (j - i) % 3 == 1 else -1.0
        middle = axis_angle_matrix(order[1], torch.from_numpy(angles[locked, 1])).numpy()
        first = matrices[locked] @ np.swapaxes(middle, -1, -2)  # a rotation about axis i
        angles[locked, 0] = sign * np.arctan2(
            first[:, k, j] - first[:, j, k], first[:, j, j] + first[:, k, k]
        )
        angles[locked, 2] = 0.0
    return angles
