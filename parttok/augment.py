"""Joint-space training augmentation: new motions the training data lacks, made from the
motions it has, then turned into features by the reference pipeline.

- ``change_speed``: play a clip faster or slower (positions resampled in time).
- ``lean``: bend the spine forward or back at spine1 (Bandai Namco's actors walk upright;
  HumanML3D's lean into their actions).
- ``turn``: the whole motion turning on the spot or along its path (the training data's
  facing rarely turns faster than 2 degrees a frame; HumanML3D's clips reach 6 and more).
- ``splice_arms``: one motion's arms on another's body (a wave on a walk), so that no part's
  code can rely on what the other parts are doing.
- ``swing_limb``: one limb raised and lowered again: a leg kicked forward or out to the side
  at the hip, a heel kicked back at the knee, an arm raised forward or sideways (poses Bandai
  Namco's ten actions rarely reach).
- ``crouch``: a squat: both thighs raised forward at the hips, the knees flexed twice as far,
  the feet kept level, the upper body bent forward at the hips, and the body lowered until
  the feet are back on the floor (``ground``).
- ``jump``: the whole body lifted off the floor for a ballistic flight (a parabola under
  gravity).
- ``tilt``: the whole body turned forward or back about the line through its hips, then set
  down on its lowest joint: bowing down to the floor, lying on the front or back, upside
  down (floor work, falls and acrobatics; every training clip stands).

``Augmentation`` holds the ranges and draws from them with torch's random generator (so
DataLoader workers differ); ``WindowDataset`` applies them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from parttok.errors import InputError
from parttok.features import FPS
from parttok.rotations import axis_angle_matrix, qrot
from parttok.skeleton import JOINT_NAMES, NUM_JOINTS, PARENTS, rigid_group_frames, unit_vectors

PELVIS, LEFT_HIP, RIGHT_HIP, SPINE1 = 0, 1, 2, 3
# Each arm hangs from its collar, which is rigid on the chest (SMPL's spine3 places it).
COLLARS = {"left": 13, "right": 14}
ARMS = {"left": (16, 18, 20), "right": (17, 19, 21)}  # shoulder, elbow, wrist
PELVIS_GROUP, CHEST_GROUP = 0, 1  # RIGID_GROUPS: pelvis with hips and spine1; spine3 with
# both collars and the neck
# The limbs ``swing_limb`` moves: hips and shoulders are raised forward or out to their side
# in the frame of their rigid group (pelvis, chest); knees flex about their own hinge. The
# sign is the side's outward direction along the group's x axis (x points to the body's left).
SWING_LIMBS = {
    "left_hip": (PELVIS_GROUP, 1.0),
    "right_hip": (PELVIS_GROUP, -1.0),
    "left_knee": (None, 1.0),
    "right_knee": (None, -1.0),
    "left_shoulder": (CHEST_GROUP, 1.0),
    "right_shoulder": (CHEST_GROUP, -1.0),
}
# A knee is never flexed beyond this (the shank would pass through the thigh).
MAX_KNEE_FLEXION = 150.0
ANKLES = {"left": 7, "right": 8}
FEET = (7, 8, 10, 11)  # ankles and feet: the joints that touch the floor
GRAVITY = 9.81  # m/s^2


def _descendants(joint: int) -> tuple[int, ...]:
    """``joint`` and every joint below it in the tree."""
    below = [joint]
    for child in range(joint + 1, NUM_JOINTS):  # parents precede children in SMPL's order
        if PARENTS[child] in below:
            below.append(child)
    return tuple(below)


# Everything above spine1: bending there keeps SMPL's two rigid groups (pelvis with hips and
# spine1; spine3 with collars and neck) rigid.
UPPER_BODY = _descendants(6)


def change_speed(joints: np.ndarray, factor: float, frames: int, start: float = 0.0) -> np.ndarray:
    """(T, 22, 3) -> (frames, 22, 3): the motion played ``factor`` times as fast from source
    frame ``start`` (linear interpolation of positions; needs start + factor * (frames - 1)
    <= T - 1)."""
    times = start + factor * np.arange(frames)  # (frames,) in source frames
    if start < 0 or times[-1] > len(joints) - 1 + 1e-6:
        raise ValueError(f"{frames} frames at speed {factor:g} need more than {len(joints)}")
    before = np.minimum(np.floor(times).astype(np.int64), len(joints) - 1)
    after = np.minimum(before + 1, len(joints) - 1)
    weight = (times - before)[:, None, None]  # (frames, 1, 1)
    return (1.0 - weight) * joints[before] + weight * joints[after]


def lean(joints: np.ndarray, degrees: float) -> np.ndarray:
    """(T, 22, 3) -> (T, 22, 3): the spine above spine1 turned ``degrees`` forward (negative:
    back) about spine1, around each frame's horizontal hip axis. Frames whose hip axis is
    nearly vertical (lying on one side) keep their pose."""
    axes, level = _level_hip_axes(joints)
    return _rotate_about(
        joints, SPINE1, UPPER_BODY, axes, np.where(level, np.radians(degrees), 0.0)
    )


def _level_hip_axes(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, 22, 3) -> (T, 3) unit horizontal axes to the body's left (the hip line flattened)
    and (T,) whether the hips are level enough for that axis to mean anything (not lying on
    one side)."""
    hips = (joints[:, LEFT_HIP] - joints[:, RIGHT_HIP]) * np.array([1.0, 0.0, 1.0])  # (T, 3)
    width = np.linalg.norm(joints[:, LEFT_HIP] - joints[:, RIGHT_HIP], axis=-1)
    level = np.linalg.norm(hips, axis=-1) > 0.5 * width  # (T,)
    return unit_vectors(np.where(level[:, None], hips, [1.0, 0.0, 0.0])), level


def _rotate_about(
    joints: np.ndarray, pivot: int, moved: tuple[int, ...], axes: np.ndarray, radians: np.ndarray
) -> np.ndarray:
    """(T, 22, 3) -> (T, 22, 3): joints ``moved`` (below ``pivot``) turned about ``pivot`` by
    ``radians`` (T,) around unit ``axes`` (T, 3), both in the world."""
    half = torch.from_numpy(np.asarray(radians, dtype=np.float64) / 2)[:, None]  # (T, 1)
    spin = torch.cat((half.cos(), half.sin() * torch.from_numpy(axes)), dim=-1)  # (T, 4)
    centre = joints[:, pivot : pivot + 1]  # (T, 1, 3)
    offsets = torch.from_numpy(joints[:, list(moved)] - centre)  # (T, M, 3)
    turned = joints.copy()
    turned[:, list(moved)] = centre + qrot(spin[:, None], offsets).numpy()
    return turned


def turn(joints: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """(T, 22, 3), (T,) -> (T, 22, 3): frame t's pose turned ``degrees[t]`` further about the
    vertical (positive: to the left, counter-clockwise seen from above) about its pelvis,
    and each step of the pelvis's path with it (the path bends as the body turns)."""
    angles = np.radians(np.asarray(degrees, dtype=np.float64))  # (T,)
    yaw = axis_angle_matrix("Y", torch.from_numpy(angles)).numpy()  # (T, 3, 3)
    pelvis = joints[:, PELVIS]  # (T, 3)
    steps = np.einsum("tij,tj->ti", yaw[:-1], pelvis[1:] - pelvis[:-1])  # (T-1, 3)
    path = pelvis[0] + np.concatenate((np.zeros((1, 3)), np.cumsum(steps, axis=0)))  # (T, 3)
    return path[:, None] + np.einsum("tij,tkj->tki", yaw, joints - pelvis[:, None])


def turn_profile(frames: int, degrees: float, start: float, duration: float) -> np.ndarray:
    """(frames,) added yaw of one turn: 0 before ``start``, ``degrees`` after ``start +
    duration``, a smoothstep between."""
    x = np.clip((np.arange(frames) - start) / max(duration, 1e-6), 0.0, 1.0)
    return degrees * x * x * (3.0 - 2.0 * x)


def splice_arms(body: np.ndarray, donor: np.ndarray, side: str = "both") -> np.ndarray:
    """(T, 22, 3) x2 -> (T, 22, 3): ``body`` with the ``donor``'s arms (``side`` "left",
    "right" or "both"): shoulder, elbow and wrist placed from the body's collar as the
    donor's sit from its collar, in the chest's frame. The chest and collars stay the body's."""
    body_frame = rigid_group_frames(body, CHEST_GROUP)  # (T, 3, 3), columns x, y, z
    donor_frame = rigid_group_frames(donor, CHEST_GROUP)
    spliced = body.copy()
    for name in ("left", "right") if side == "both" else (side,):
        arm, collar = list(ARMS[name]), [COLLARS[name]]
        local = np.einsum("tij,tki->tkj", donor_frame, donor[:, arm] - donor[:, collar])
        spliced[:, arm] = body[:, collar] + np.einsum("tij,tkj->tki", body_frame, local)
    return spliced


def swing_limb(
    joints: np.ndarray, limb: str, degrees: np.ndarray, outward: float = 0.0
) -> np.ndarray:
    """(T, 22, 3), (T,) -> (T, 22, 3): one limb of ``SWING_LIMBS`` moved ``degrees[t]`` (>= 0)
    about its joint, everything below it with it.

    A hip or shoulder is raised forward (``outward`` 0) or out to its side (``outward`` 1),
    or between, in its rigid group's frame (x to the body's left, y up, z forward). A knee
    flexes about its hinge (the normal of the thigh and shank; the pelvis's x axis square to
    the thigh when the leg is straight), never beyond ``MAX_KNEE_FLEXION``.
    """
    group, side = SWING_LIMBS[limb]
    joint = JOINT_NAMES.index(limb)
    degrees = np.asarray(degrees, dtype=np.float64)
    if group is None:  # a knee
        thigh, shank = _thigh_and_shank(joints, limb)  # (T, 3) each
        hinge = np.cross(thigh, shank)  # (T, 3): flexing turns the shank about it
        across = rigid_group_frames(joints, PELVIS_GROUP)[..., 0]  # (T, 3), the body's left
        across = across - (across * thigh).sum(-1, keepdims=True) * thigh  # square to the thigh
        # a knee flexes about the body's left (the foot goes back); a straight or slightly
        # overstretched knee's own hinge is that axis or points the other way
        hinge = hinge * np.where((hinge * across).sum(-1, keepdims=True) < 0, -1.0, 1.0)
        straight = np.linalg.norm(hinge, axis=-1, keepdims=True) < 0.1
        axes = unit_vectors(np.where(straight, across, hinge))
        degrees = np.minimum(degrees, _room(thigh, shank))
    else:  # forward: about -x; out to the side: about the z axis, signed by the side
        heading = np.radians(90.0 * outward)
        local = np.array([-np.cos(heading), 0.0, side * np.sin(heading)])
        axes = unit_vectors(rigid_group_frames(joints, group) @ local)  # (T, 3) in the world
    return _rotate_about(joints, joint, _descendants(joint)[1:], axes, np.radians(degrees))


def knee_room(joints: np.ndarray, knee: str) -> np.ndarray:
    """(T, 22, 3) -> (T,) degrees the knee ``knee`` ("left_knee" or "right_knee") can still
    flex before ``MAX_KNEE_FLEXION``."""
    return _room(*_thigh_and_shank(joints, knee))


def _room(thigh: np.ndarray, shank: np.ndarray) -> np.ndarray:
    """(T, 3) x2 unit directions -> (T,) degrees left before ``MAX_KNEE_FLEXION``."""
    flexion = np.degrees(np.arccos(np.clip((thigh * shank).sum(-1), -1.0, 1.0)))
    return np.maximum(MAX_KNEE_FLEXION - flexion, 0.0)


def _thigh_and_shank(joints: np.ndarray, knee: str) -> tuple[np.ndarray, np.ndarray]:
    """(T, 22, 3) -> (T, 3) x2: unit directions hip -> knee and knee -> ankle."""
    joint = JOINT_NAMES.index(knee)
    hip, ankle = PARENTS[joint], JOINT_NAMES.index(knee.replace("knee", "ankle"))
    thigh = unit_vectors(joints[:, joint] - joints[:, hip])
    return thigh, unit_vectors(joints[:, ankle] - joints[:, joint])


def ground(
    joints: np.ndarray, reference: np.ndarray, contacts: tuple[int, ...] = FEET
) -> np.ndarray:
    """(T, 22, 3) -> (T, 22, 3): ``joints`` moved up or down, frame by frame, so that their
    lowest joint of ``contacts`` (the feet unless given) is as high as ``reference``'s."""
    contacts = list(contacts)
    return jump(joints, reference[:, contacts, 1].min(-1) - joints[:, contacts, 1].min(-1))


def tilt(joints: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """(T, 22, 3), (T,) -> (T, 22, 3): the whole body turned ``degrees[t]`` forward (negative:
    back) about the horizontal line through its pelvis to its left, then moved up or down so
    that its lowest joint is as high as before (90 forward: lying on the front; -90: on the
    back; 180: upside down). The axis is the hip line made level, so the facing the features
    take from hips and shoulders turns little while the hips are near level. Frames whose
    hips are too steep for a level axis (lying on one side) keep their pose."""
    axes, level = _level_hip_axes(joints)
    radians = np.where(level, np.radians(np.asarray(degrees, dtype=np.float64)), 0.0)
    tilted = _rotate_about(joints, PELVIS, tuple(range(1, NUM_JOINTS)), axes, radians)
    return ground(tilted, joints, tuple(range(NUM_JOINTS)))


def crouch(joints: np.ndarray, degrees: np.ndarray, bend: float = 0.5) -> np.ndarray:
    """(T, 22, 3), (T,) -> (T, 22, 3): a squat ``degrees[t]`` (>= 0) deep.

    Both thighs are raised ``degrees`` forward at the hips and both knees flexed twice as far
    (no further than ``MAX_KNEE_FLEXION``), so that the shanks lean back as far as the thighs
    lean forward; the feet turn back at the ankles to keep their pitch (all about the
    pelvis's left-right axis); the upper body (all but the legs below the hips) bends
    ``bend * degrees`` forward about the line through the hips; then the body is lowered
    until its lowest foot joint is as high as before.
    """
    degrees = np.asarray(degrees, dtype=np.float64)
    left = rigid_group_frames(joints, PELVIS_GROUP)[..., 0]  # (T, 3): the body's left
    squat = joints
    for side, ankle in ANKLES.items():
        knee, hip = PARENTS[ankle], PARENTS[PARENTS[ankle]]
        knee_degrees = np.minimum(2.0 * degrees, knee_room(joints, f"{side}_knee"))
        # about the body's left: the thigh forward (negative), the shank and foot back
        for joint, turned in (
            (hip, -degrees),
            (knee, knee_degrees),
            (ankle, degrees - knee_degrees),
        ):
            below = _descendants(joint)[1:]
            squat = _rotate_about(squat, joint, below, left, np.radians(turned))
    hips = unit_vectors(squat[:, LEFT_HIP] - squat[:, RIGHT_HIP])  # (T, 3)
    legs = set(_descendants(LEFT_HIP) + _descendants(RIGHT_HIP))
    body = tuple(joint for joint in range(NUM_JOINTS) if joint not in legs)
    squat = _rotate_about(squat, LEFT_HIP, body, hips, np.radians(bend * degrees))
    return ground(squat, joints)


def jump(joints: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """(T, 22, 3), (T,) -> (T, 22, 3): every joint lifted ``heights[t]`` metres (negative:
    lowered)."""
    return joints + np.asarray(heights, dtype=np.float64)[:, None, None] * np.array([0, 1.0, 0])


def flight(frames: int, takeoff: float, duration: float, fps: float = FPS) -> np.ndarray:
    """(frames,) heights in metres of a ballistic flight of ``duration`` frames from frame
    ``takeoff``: 0 on the ground, the parabola ``g t (duration - t) / 2`` in the air."""
    seconds = (np.arange(frames) - takeoff) / fps  # (frames,)
    airborne = np.clip(seconds, 0.0, duration / fps)
    return GRAVITY * airborne * (duration / fps - airborne) / 2.0


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the joint-space augmentations ``WindowDataset`` draws from.

    ``probability``: share of training windows augmented (the rest are the stored features);
    ``speed``: (slowest, fastest) playback factor, drawn log-uniformly; ``lean_degrees``:
    (back, forward) spine lean, drawn uniformly; ``turn_degrees``: the largest added turn,
    drawn uniformly either way, made over ``turn_frames`` (shortest, longest) frames with its
    middle anywhere in the window; ``arm_swap``: probability that an augmented window takes
    the arms (left, right or both) of another random window; ``limb_swing``: probability that
    an augmented window raises and lowers one limb (a hip, knee or shoulder of
    ``SWING_LIMBS``) by up to ``swing_degrees``, over ``swing_frames`` (shortest, longest)
    frames each way with a hold of up to as long between; ``crouch``: probability of a squat
    up to ``crouch_degrees`` deep (at the hips) and up again, the upper body bent forward up
    to as far; ``jump``: probability of a jump, in the air for ``jump_frames`` (shortest,
    longest) frames; ``tilt``: probability that the whole body turns forward or back by
    ``tilt_degrees`` (back, forward), drawn uniformly, and up again. Crouches and tilts are
    timed as limb swings are (``swing_frames``).
    """

    # Settings since removed -> the value with which they did nothing (runs recorded before
    # their removal hold them): the upper body twisted about the spine, and every joint bent
    # about a random axis (jitter: no gain on 16-dimensional codes); no measurement kept
    # either (BENCHMARKS.md, "Training recipe").
    REMOVED_SETTINGS: ClassVar[dict[str, float]] = {
        "twist": 0.0, "twist_degrees": 60.0, "jitter": 0.0, "jitter_degrees": 15.0,
    }  # fmt: skip

    probability: float = 0.5
    speed: tuple[float, float] = (0.75, 1.33)
    lean_degrees: tuple[float, float] = (-10.0, 30.0)
    turn_degrees: float = 180.0
    turn_frames: tuple[float, float] = (10.0, 40.0)
    arm_swap: float = 0.3
    limb_swing: float = 0.5
    swing_degrees: float = 90.0
    swing_frames: tuple[float, float] = (6.0, 20.0)
    crouch: float = 0.0
    crouch_degrees: float = 60.0
    jump: float = 0.0
    jump_frames: tuple[float, float] = (6.0, 12.0)
    tilt: float = 0.0
    tilt_degrees: tuple[float, float] = (-90.0, 180.0)

    def __post_init__(self) -> None:
        chances = (
            self.probability,
            self.arm_swap,
            self.limb_swing,
            self.crouch,
            self.jump,
            self.tilt,
        )
        if not all(0.0 <= chance <= 1.0 for chance in chances):
            raise ValueError(
                "augment: probability, arm_swap, limb_swing, crouch, jump and tilt must lie in "
                "[0, 1]"
            )
        if not 0.0 < self.speed[0] <= self.speed[1]:
            raise ValueError(f"augment.speed: need 0 < slowest <= fastest, got {self.speed}")
        if self.lean_degrees[0] > self.lean_degrees[1]:
            raise ValueError(f"augment.lean_degrees: need back <= forward, got {self.lean_degrees}")
        if self.turn_degrees < 0.0 or not 0.0 < self.turn_frames[0] <= self.turn_frames[1]:
            raise ValueError("augment: need turn_degrees >= 0 and 0 < shortest <= longest turn")
        if self.swing_degrees < 0.0 or not 0.0 < self.swing_frames[0] <= self.swing_frames[1]:
            raise ValueError("augment: need swing_degrees >= 0 and 0 < shortest <= longest swing")
        if not 0.0 <= self.crouch_degrees <= 90.0:
            raise ValueError("augment: need crouch_degrees in [0, 90]")
        if not 0.0 < self.jump_frames[0] <= self.jump_frames[1]:
            raise ValueError("augment: need 0 < shortest <= longest jump_frames")
        if not -180.0 <= self.tilt_degrees[0] <= self.tilt_degrees[1] <= 180.0:
            raise ValueError(
                "augment.tilt_degrees: need -180 <= back <= forward <= 180, got "
                f"{self.tilt_degrees}"
            )

    @classmethod
    def from_settings(cls, settings: Mapping[str, object]) -> Augmentation:
        """The augmentation of plain ``settings`` (a run's saved YAML): settings since removed
        (``REMOVED_SETTINGS``) are dropped where they hold the value with which they did
        nothing, as runs saved before their removal do; an InputError where one holds another."""
        for name, inert in cls.REMOVED_SETTINGS.items():
            if name in settings and settings[name] != inert:
                raise InputError(
                    f"augment.{name} was removed from parttok; only its old default {inert:g} "
                    f"is accepted, got {settings[name]!r}"
                )
        return cls(**{k: v for k, v in settings.items() if k not in cls.REMOVED_SETTINGS})

    def describe(self) -> str:
        """One sentence of what the augmentation does, for model cards."""
        back, forward = self.lean_degrees
        changes = []
        if self.speed != (1.0, 1.0):
            changes.append(f"played {self.speed[0]:g}-{self.speed[1]:g}x as fast")
        if (back, forward) != (0.0, 0.0):
            changes.append(f"the spine leaned {back:g} to {forward:g} degrees")
        if self.turn_degrees > 0:
            changes.append(f"one turn of up to {self.turn_degrees:g} degrees")
        if self.arm_swap > 0:
            changes.append(f"another window's arms {self.arm_swap:.0%} of the time")
        if self.limb_swing > 0:
            changes.append(
                f"a hip, knee or shoulder raised up to {self.swing_degrees:g} degrees and "
                f"lowered again {self.limb_swing:.0%} of the time"
            )
        if self.crouch > 0:
            changes.append(
                f"a squat up to {self.crouch_degrees:g} degrees deep at the hips "
                f"{self.crouch:.0%} of the time"
            )
        if self.jump > 0:
            low, high = (frames / FPS for frames in self.jump_frames)
            changes.append(f"a jump of {low:g}-{high:g} s in the air {self.jump:.0%} of the time")
        if self.tilt > 0:
            back, forward = self.tilt_degrees
            span = (
                f"up to {-back:g} degrees back or {forward:g} forward"
                if back < 0 < forward
                else f"{back:g} to {forward:g} degrees forward"
            )
            changes.append(f"the whole body tilted {span} and up again {self.tilt:.0%} of the time")
        return (
            f"{self.probability:.0%} of the training windows are made anew in joint space "
            f"({', '.join(changes)}; `parttok.augment`) and turned into features by the "
            "reference pipeline"
        )

    def draw_speed(self, joints_frames: int, steps: int) -> float:
        """A playback factor for ``steps`` frame steps from a clip of ``joints_frames`` frames
        (capped so that the clip is long enough)."""
        factor = float(np.exp(_uniform(np.log(self.speed[0]), np.log(self.speed[1]))))
        return min(factor, (joints_frames - 1) / steps)

    def draw_lean(self) -> float:
        """A lean in degrees (positive: forward)."""
        return _uniform(*self.lean_degrees)

    def draw_turn(self, frames: int, first: int, count: int) -> np.ndarray:
        """(frames,) added yaw in degrees: one turn of random size and length whose middle
        falls in frames [first, first + count)."""
        degrees = _uniform(-self.turn_degrees, self.turn_degrees)
        duration = _uniform(*self.turn_frames)
        start = _uniform(first, first + count) - duration / 2
        return turn_profile(frames, degrees, start, duration)

    def draw_swing(self, frames: int, first: int, count: int) -> tuple[str, float, np.ndarray]:
        """A limb of ``SWING_LIMBS``, how far out to its side it swings (0 forward, 1
        sideways) and (frames,) degrees: raised over a drawn duration, held up to as long,
        lowered over the same duration, reaching its angle in frames [first, first + count)."""
        limb = list(SWING_LIMBS)[int(torch.randint(0, len(SWING_LIMBS), ()).item())]
        outward = _uniform(0.0, 1.0)
        degrees = _uniform(0.0, self.swing_degrees)
        return limb, outward, self._pulse(frames, first, count, degrees)

    def draw_crouch(self, frames: int, first: int, count: int) -> tuple[np.ndarray, float]:
        """(frames,) degrees of a squat, timed as a limb swing, and how far the upper body
        bends forward with it (a share of the squat's degrees)."""
        degrees = _uniform(0.0, self.crouch_degrees)
        bend = _uniform(0.0, 1.0)
        return self._pulse(frames, first, count, degrees), bend

    def draw_jump(self, frames: int, first: int, count: int) -> np.ndarray:
        """(frames,) heights in metres of one jump taking off in frames [first, first +
        count)."""
        duration = _uniform(*self.jump_frames)
        return flight(frames, _uniform(first, first + count), duration)

    def draw_tilt(self, frames: int, first: int, count: int) -> np.ndarray:
        """(frames,) degrees of a whole-body tilt (positive: forward), timed as a limb
        swing."""
        return self._pulse(frames, first, count, _uniform(*self.tilt_degrees))

    def _pulse(self, frames: int, first: int, count: int, degrees: float) -> np.ndarray:
        """(frames,): 0, raised to ``degrees`` over a duration drawn from ``swing_frames``,
        held up to as long, lowered over the same duration; the top reached in frames
        [first, first + count)."""
        duration = _uniform(*self.swing_frames)
        hold = _uniform(0.0, duration)
        start = _uniform(first, first + count) - duration
        raised = turn_profile(frames, degrees, start, duration)
        lowered = turn_profile(frames, degrees, start + duration + hold, duration)
        return raised - lowered


def _uniform(low: float, high: float) -> float:
    """A number drawn uniformly from [low, high) with torch's generator."""
    return float(low + (high - low) * torch.rand(()).item())
