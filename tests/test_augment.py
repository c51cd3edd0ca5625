"""Joint-space augmentation (speed, lean, turn, arm swaps, limb swings, squats, jumps, tilts)
on the HumanML3D reference clips, and the training windows it feeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from parttok import augment as A
from parttok import data as D
from parttok.errors import InputError
from parttok.features import FEATURE_DIM, ROT6D, features_to_joints, joints_to_features
from parttok.rotations import axis_angle_matrix
from parttok.skeleton import (
    JOINT_NAMES,
    PARENTS,
    TARGET_BONE_LENGTHS,
    bone_lengths,
    rigid_group_directions,
    rigid_group_frames,
    unit_vectors,
)

CLIPS = ["000000", "007005", "012314", "M010655"]
LOWER_BODY = [j for j in range(22) if j not in A.UPPER_BODY]


@pytest.fixture(scope="module")
def folder(humanml3d_dir):
    return D.HumanML3DFolder(humanml3d_dir)


@pytest.fixture(scope="module")
def walk(folder):
    return folder.joints("000000").astype(np.float64)  # (T, 22, 3)


@pytest.fixture(scope="module")
def serve(folder):
    return folder.joints("012314").astype(np.float64)


def test_upper_body_is_everything_above_spine1():
    assert A.UPPER_BODY == (6, 9, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21)


def test_change_speed_resamples_positions(walk):
    np.testing.assert_array_equal(A.change_speed(walk, 1.0, 30, start=5), walk[5:35])
    np.testing.assert_array_equal(A.change_speed(walk, 2.0, 10), walk[0:20:2])
    half = A.change_speed(walk, 0.5, 5, start=10)  # (5, 22, 3): frames 10, 10.5, ... 12
    np.testing.assert_allclose(half[1], (walk[10] + walk[11]) / 2)
    np.testing.assert_array_equal(half[4], walk[12])
    assert A.change_speed(walk, 1.5, 11, start=len(walk) - 16).shape == (11, 22, 3)
    with pytest.raises(ValueError, match="need more than"):
        A.change_speed(walk, 2.0, len(walk) // 2 + 2)


def test_faster_playback_covers_the_same_path_in_fewer_frames(walk):
    def path_length(joints):  # metres the root travels, from the features' root velocity
        return np.linalg.norm(joints_to_features(joints)[:, 1:3], axis=-1).sum()

    fast = A.change_speed(walk, 1.5, 61)  # source frames 0 .. 90
    assert path_length(fast) == pytest.approx(path_length(walk[:91]), rel=0.03)
    assert path_length(walk[:61]) < 0.9 * path_length(fast)  # (this walker slows down)


def test_lean_bends_the_spine_forward_at_spine1(walk):
    leaned = A.lean(walk, 30.0)
    np.testing.assert_allclose(bone_lengths(leaned), bone_lengths(walk), atol=1e-9)
    np.testing.assert_array_equal(leaned[:, LOWER_BODY], walk[:, LOWER_BODY])
    np.testing.assert_allclose(A.lean(walk, 0.0), walk, atol=1e-12)
    # both rigid groups keep their shape
    for group in (0, 1):
        np.testing.assert_allclose(rigid_group_directions(leaned, group),
                                   rigid_group_directions(walk, group), atol=1e-9)  # fmt: skip
    # in the pelvis group's frame (z forward) the head moves forward and down
    frames = rigid_group_frames(walk, 0)  # (T, 3, 3), columns x, y, z

    def head_local(joints):
        return np.einsum("tij,ti->tj", frames, joints[:, 15] - joints[:, 0])

    before, after = head_local(walk), head_local(leaned)
    assert (after[:, 2] - before[:, 2]).mean() > 0.15  # ~0.45 m * sin 30 degrees
    assert (after[:, 1] < before[:, 1]).all()
    back = head_local(A.lean(walk, -10.0))
    assert (back[:, 2] < before[:, 2]).all()
    np.testing.assert_allclose(A.lean(leaned, -30.0), walk, atol=1e-9)
    lying = walk.copy()
    lying[:, 1, 1] += 0.5  # the left hip far above the right: no horizontal hip axis
    np.testing.assert_array_equal(A.lean(lying, 30.0), lying)


def test_turn_profile_is_one_smooth_turn():
    profile = A.turn_profile(50, 90.0, start=10.0, duration=20.0)
    assert (profile[:11] == 0).all() and (profile[30:] == 90.0).all()
    assert (np.diff(profile) >= 0).all() and profile[20] == pytest.approx(45.0)
    assert np.diff(profile).max() == pytest.approx(1.5 * 90.0 / 20.0, rel=0.02)  # smoothstep


def test_turn_turns_poses_and_path_together(walk):
    frames = len(walk)
    degrees = A.turn_profile(frames, 120.0, start=30.0, duration=20.0)
    turned = A.turn(walk, degrees)
    np.testing.assert_allclose(bone_lengths(turned), bone_lengths(walk), atol=1e-9)
    np.testing.assert_allclose(turned[:31], walk[:31], atol=1e-12)  # before the turn
    np.testing.assert_allclose(turned[..., 1], walk[..., 1], atol=1e-12)  # heights kept

    # each pose turned about its pelvis: the hips' direction turns by the profile
    def heading(joints):
        hips = joints[:, 1] - joints[:, 2]
        return np.degrees(np.unwrap(np.arctan2(-hips[:, 2], hips[:, 0])))

    np.testing.assert_allclose(heading(turned) - heading(walk), degrees, atol=1e-6)
    # positive turns to the left: the facing (+Z at rest, left at +X) swings towards +X
    forward = np.cross(turned[-1, 1] - turned[-1, 2], [0.0, 1.0, 0.0])
    walk_forward = np.cross(walk[-1, 1] - walk[-1, 2], [0.0, 1.0, 0.0])
    assert np.cross(walk_forward, forward)[1] > 0  # counter-clockwise seen from above
    # each step of the path turned too: steps keep their length and turn with the body
    steps, turned_steps = np.diff(walk[:, 0], axis=0), np.diff(turned[:, 0], axis=0)
    np.testing.assert_allclose(np.linalg.norm(turned_steps, axis=-1),
                               np.linalg.norm(steps, axis=-1), atol=1e-12)  # fmt: skip
    # in the features: the facing turns by the same total, poses and speed stay the same
    before, after = joints_to_features(walk), joints_to_features(turned)
    total = np.degrees(2 * (after[:, 0] - before[:, 0]).sum())  # first row: from frame 0
    assert -total == pytest.approx(120.0, abs=2.0)  # the format counts a left turn negative
    np.testing.assert_allclose(np.linalg.norm(after[:, 1:3], axis=-1),
                               np.linalg.norm(before[:, 1:3], axis=-1), atol=0.01)  # fmt: skip


def test_splice_arms_moves_the_donors_arms_onto_the_body(walk, serve):
    frames = min(len(walk), len(serve))
    body, donor = walk[:frames], serve[:frames]
    np.testing.assert_allclose(A.splice_arms(body, body), body, atol=1e-9)
    for side in ("left", "right", "both"):
        names = ("left", "right") if side == "both" else (side,)
        arm = [j for name in names for j in A.ARMS[name]]
        collars = [A.COLLARS[name] for name in names for _ in A.ARMS[name]]
        spliced = A.splice_arms(body, donor, side)
        kept = [j for j in range(22) if j not in arm]
        np.testing.assert_array_equal(spliced[:, kept], body[:, kept])
        # bones are kept (all clips share HumanML3D's lengths up to float32 rounding)
        np.testing.assert_allclose(bone_lengths(spliced), bone_lengths(body), atol=1e-5)

        # each arm hangs from the body's collar, in the body's chest frame, as the donor's does
        def collar_local(joints, arm=arm, collars=collars):
            frame = rigid_group_frames(joints, A.CHEST_GROUP)
            return np.einsum("tij,tki->tkj", frame, joints[:, arm] - joints[:, collars])

        np.testing.assert_allclose(collar_local(spliced), collar_local(donor), atol=1e-9)
        assert np.abs(collar_local(spliced) - collar_local(body)).max() > 0.2  # it did move
        np.testing.assert_array_equal(
            rigid_group_frames(spliced, A.CHEST_GROUP), rigid_group_frames(body, A.CHEST_GROUP)
        )


def _in_group_frame(joints, group, vectors):
    """(T, 3) world vectors -> the same in rigid group ``group``'s frame (x left, y up, z
    forward)."""
    return np.einsum("tij,ti->tj", rigid_group_frames(joints, group), vectors)


def test_swing_limbs_are_the_smpl_hips_knees_and_shoulders():
    assert [JOINT_NAMES.index(limb) for limb in A.SWING_LIMBS] == [1, 2, 4, 5, 16, 17]
    for limb, (group, side) in A.SWING_LIMBS.items():
        assert side == (1.0 if limb.startswith("left") else -1.0)
        expected = {"hip": A.PELVIS_GROUP, "knee": None, "shoulder": A.CHEST_GROUP}
        assert group == expected[limb.split("_")[1]]


def _rigid_and_only_below(original, swung, joint):
    """Bones and rigid groups kept, only the joints below ``joint`` moved, each keeping its
    distance from ``joint``."""
    np.testing.assert_allclose(bone_lengths(swung), bone_lengths(original), atol=1e-9)
    below = [j for j in range(1, 22) if joint in _ancestors(j)]
    kept = [j for j in range(22) if j not in below]
    np.testing.assert_array_equal(swung[:, kept], original[:, kept])
    for group in (0, 1):
        np.testing.assert_allclose(rigid_group_directions(swung, group),
                                   rigid_group_directions(original, group), atol=1e-12)  # fmt: skip
    for j in below:
        np.testing.assert_allclose(np.linalg.norm(swung[:, j] - swung[:, joint], axis=-1),
                                   np.linalg.norm(original[:, j] - original[:, joint], axis=-1),
                                   atol=1e-9)  # fmt: skip
    return below


def _ancestors(joint):
    chain = []
    while joint > 0:
        joint = PARENTS[joint]
        chain.append(joint)
    return chain


def test_swing_limb_raises_hips_and_shoulders_forward_or_to_their_side(walk):
    frames = len(walk)
    degrees = np.full(frames, 80.0)
    for limb, joint, end in (("left_hip", 1, 7), ("right_hip", 2, 8),
                             ("left_shoulder", 16, 20), ("right_shoulder", 17, 21)):  # fmt: skip
        group, side = A.SWING_LIMBS[limb]
        forward = A.swing_limb(walk, limb, degrees, outward=0.0)
        assert _rigid_and_only_below(walk, forward, joint) == list(A._descendants(joint)[1:])
        # forward: the limb turned 80 degrees about the group's -x axis
        before, after = (_in_group_frame(walk, group, joints[:, end] - joints[:, joint])
                         for joints in (walk, forward))  # fmt: skip
        turned = torch.full((frames,), np.radians(-80.0), dtype=torch.float64)
        about_x = axis_angle_matrix("X", turned).numpy()
        np.testing.assert_allclose(after, np.einsum("tij,tj->ti", about_x, before), atol=1e-9)
        assert (after[:, 2] - before[:, 2]).mean() > 0.3  # the hand or ankle far forward
        assert (forward[:, end, 1] - walk[:, end, 1]).mean() > 0.2  # and up
        # sideways: out to its own side (x points to the body's left), and up
        sideways = A.swing_limb(walk, limb, degrees, outward=1.0)
        _rigid_and_only_below(walk, sideways, joint)
        after = _in_group_frame(walk, group, sideways[:, end] - sideways[:, joint])
        assert side * (after[:, 0] - before[:, 0]).mean() > 0.3
        assert (sideways[:, end, 1] - walk[:, end, 1]).mean() > 0.2
        assert np.abs(after[:, 2] - before[:, 2]).mean() < 0.1  # not forward
        np.testing.assert_allclose(A.swing_limb(walk, limb, np.zeros(frames), 0.5), walk,
                                   atol=1e-12)  # fmt: skip


def _knee_flexion(joints, knee):
    hip, ankle = PARENTS[knee], knee + 3
    thigh = joints[:, knee] - joints[:, hip]
    shank = joints[:, ankle] - joints[:, knee]
    cosine = (
        (thigh * shank).sum(-1) / np.linalg.norm(thigh, axis=-1) / np.linalg.norm(shank, axis=-1)
    )
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def test_swing_limb_flexes_a_knee_about_its_hinge_up_to_its_limit(walk, serve):
    for limb, knee in (("left_knee", 4), ("right_knee", 5)):
        for clip in (walk, serve):
            flexion = _knee_flexion(clip, knee)  # (T,) degrees
            added = np.full(len(clip), 60.0)
            flexed = A.swing_limb(clip, limb, added)
            _rigid_and_only_below(clip, flexed, knee)
            expected = np.minimum(flexion + 60.0, np.maximum(flexion, A.MAX_KNEE_FLEXION))
            np.testing.assert_allclose(_knee_flexion(flexed, knee), expected, atol=1e-6)
    # the heel goes back (against the facing) and up
    flexed = A.swing_limb(walk, "left_knee", np.full(len(walk), 60.0))
    facing = unit_vectors(np.cross(walk[:, 1] - walk[:, 2], [0.0, 1.0, 0.0]))  # (T, 3)
    moved = flexed[:, 7] - walk[:, 7]
    assert (moved * facing).sum(-1).mean() < -0.08 and moved[:, 1].mean() > 0.1
    straight = walk.copy()  # a straight leg (no hinge of its own): flexes about the pelvis's x
    straight[:, 7] = straight[:, 4] + (straight[:, 4] - straight[:, 1]) * 0.95
    straight[:, 10] = straight[:, 7] + walk[:, 10] - walk[:, 7]
    bent = A.swing_limb(straight, "left_knee", np.full(len(walk), 30.0))
    np.testing.assert_allclose(_knee_flexion(bent, 4), 30.0, atol=1e-6)
    assert (_in_group_frame(walk, A.PELVIS_GROUP, bent[:, 7] - straight[:, 7])[:, 2] < 0).all()


def test_draw_swing_raises_holds_and_lowers(monkeypatch):
    augmentation = A.Augmentation(swing_degrees=60.0, swing_frames=(6.0, 20.0))
    torch.manual_seed(0)
    limbs = set()
    for _ in range(200):
        limb, outward, degrees = augmentation.draw_swing(186, 60, 66)  # (186,)
        limbs.add(limb)
        assert 0.0 <= outward <= 1.0
        assert degrees.min() >= 0.0 and degrees.max() <= 60.0
        assert degrees[0] == 0.0 and degrees[-1] == 0.0  # back down by the end
        assert np.diff(degrees).max() <= 1.5 * 60.0 / 6.0 + 1e-9
    assert limbs == set(A.SWING_LIMBS)
    # every draw at its middle: a 13-frame rise reaching 30 degrees at frame 93, a 6.5-frame
    # hold, a 13-frame descent
    monkeypatch.setattr(torch, "rand", lambda *shape: torch.tensor(0.5))
    monkeypatch.setattr(torch, "randint", lambda low, high, shape: torch.tensor(0))
    limb, outward, degrees = augmentation.draw_swing(186, 60, 66)
    assert limb == "left_hip" and outward == 0.5
    top = np.flatnonzero(np.isclose(degrees, 30.0))
    assert top[0] == 93 and top[-1] == 93 + 6  # held from 93 to 99.5
    assert degrees[80] == 0.0 and 0 < degrees[81] < degrees[92] < 30.0  # the rise
    assert 30.0 > degrees[101] > degrees[111] > 0 and degrees[113] == 0.0  # the descent


def _pitch_in_pelvis_frame(joints, vectors):
    """(T,) degrees world ``vectors`` point forward of straight down, in the pelvis's frame
    (about its left-right axis)."""
    local = _in_group_frame(joints, A.PELVIS_GROUP, vectors)
    return np.degrees(np.arctan2(local[:, 2], -local[:, 1]))


def test_crouch_squats_with_the_feet_level_and_on_the_floor(walk, serve):
    for clip in (walk, serve):
        frames = len(clip)
        degrees = np.full(frames, 40.0)
        squat = A.crouch(clip, degrees, bend=0.0)
        np.testing.assert_allclose(bone_lengths(squat), bone_lengths(clip), atol=1e-9)
        for group in (0, 1):  # rigid groups stay rigid
            np.testing.assert_allclose(rigid_group_directions(squat, group),
                                       rigid_group_directions(clip, group), atol=1e-9)  # fmt: skip
        # the lowest foot joint is where it was; the pelvis drops
        feet = list(A.FEET)
        np.testing.assert_allclose(squat[:, feet, 1].min(-1), clip[:, feet, 1].min(-1), atol=1e-12)
        drop = clip[:, 0, 1] - squat[:, 0, 1]  # (T,) metres
        assert 0.1 < drop.mean() < 0.4 and drop.min() > 0.0
        for side, (hip, knee, ankle, foot) in {
            "left": (1, 4, 7, 10),
            "right": (2, 5, 8, 11),
        }.items():
            # the thighs turn 40 degrees forward about the pelvis's left-right axis
            before = _pitch_in_pelvis_frame(clip, clip[:, knee] - clip[:, hip])
            after = _pitch_in_pelvis_frame(clip, squat[:, knee] - squat[:, hip])
            np.testing.assert_allclose(after - before, 40.0, atol=1e-6)
            # knees with room flex twice as far (about the same axis, so the shank leans
            # back 40 degrees from where it was), and their feet keep their direction (a
            # kick's knee, already near its limit, flexes less)
            free = A.knee_room(clip, f"{side}_knee") >= 80.0  # (T,)
            assert free.mean() >= 0.75
            before = _pitch_in_pelvis_frame(clip, clip[:, ankle] - clip[:, knee])
            after = _pitch_in_pelvis_frame(clip, squat[:, ankle] - squat[:, knee])
            np.testing.assert_allclose(after[free] - before[free], -40.0, atol=1e-6)
            feet_after = squat[free, foot] - squat[free, ankle]  # (F, 3)
            np.testing.assert_allclose(feet_after, clip[free, foot] - clip[free, ankle], atol=1e-12)
        # the upper body stays upright without a bend, and turns forward by bend * degrees
        np.testing.assert_allclose(rigid_group_frames(squat, 0), rigid_group_frames(clip, 0),
                                   atol=1e-9)  # fmt: skip
        bent = A.crouch(clip, degrees, bend=0.5)
        up_before = rigid_group_frames(clip, A.PELVIS_GROUP)[..., 1]  # (T, 3)
        up_after = rigid_group_frames(bent, A.PELVIS_GROUP)[..., 1]
        angle = np.degrees(np.arccos(np.clip((up_before * up_after).sum(-1), -1.0, 1.0)))
        np.testing.assert_allclose(angle, 20.0, atol=1e-6)
        assert (_in_group_frame(clip, A.PELVIS_GROUP, up_after)[:, 2] > 0).all()  # forward
        np.testing.assert_allclose(A.crouch(clip, np.zeros(frames)), clip, atol=1e-12)
    # no knee flexes past its limit, however deep the squat
    deep = A.crouch(serve, np.full(len(serve), 90.0))
    for knee in (4, 5):
        limit = np.maximum(A.MAX_KNEE_FLEXION, _knee_flexion(serve, knee))
        assert (_knee_flexion(deep, knee) <= limit + 1e-6).all()


def test_a_jump_is_a_ballistic_flight():
    heights = A.flight(40, takeoff=5.0, duration=10.0)  # (40,) metres; 0.5 s in the air
    assert (heights[:6] == 0.0).all() and (heights[15:] == 0.0).all()
    assert heights[10] == pytest.approx(A.GRAVITY * 0.5**2 / 8)  # the top, half-way
    # in the air the height falls by g per second squared
    np.testing.assert_allclose(np.diff(heights[5:16], 2), -A.GRAVITY / 20.0**2, atol=1e-12)
    joints = np.zeros((40, 22, 3))
    np.testing.assert_array_equal(
        A.jump(joints, heights)[..., 1], np.repeat(heights[:, None], 22, 1)
    )
    np.testing.assert_array_equal(A.jump(joints, heights)[..., [0, 2]], 0.0)


def test_tilt_turns_the_whole_body_about_its_hips_and_sets_it_down(folder, walk, serve):
    for clip in (walk, serve):
        frames = len(clip)
        left = (clip[:, 1] - clip[:, 2]) * np.array([1.0, 0.0, 1.0])
        left /= np.linalg.norm(left, axis=-1, keepdims=True)  # (T, 3): the horizontal hip line
        for degrees in (90.0, -90.0, 180.0, 35.0):
            tilted = A.tilt(clip, np.full(frames, degrees))
            np.testing.assert_allclose(bone_lengths(tilted), bone_lengths(clip), atol=1e-9)
            # about the hip line through the pelvis: each joint's offset from the pelvis turns
            # by the angle (positive: the head goes forward and down)
            spin = Rotation.from_rotvec(left * np.radians(degrees))  # T rotations
            offsets = (clip - clip[:, :1]).transpose(1, 0, 2)  # (22, T, 3)
            expected = np.stack([spin.apply(joint) for joint in offsets], axis=1)  # (T, 22, 3)
            np.testing.assert_allclose(tilted - tilted[:, :1], expected, atol=1e-9)
            # set down: the lowest joint is as high as the lowest joint was
            np.testing.assert_allclose(tilted[..., 1].min(-1), clip[..., 1].min(-1), atol=1e-12)
    # frames lying on one side (the hip line steep) keep their pose: no level axis to tilt about
    left = unit_vectors((serve[:, 1] - serve[:, 2]) * np.array([1.0, 0.0, 1.0]))
    forward = np.cross(left, [0.0, 1.0, 0.0])  # (T, 3)
    on_side = A._rotate_about(
        serve, 0, tuple(range(1, 22)), forward, np.full(len(serve), np.pi / 2)
    )
    np.testing.assert_allclose(A.tilt(on_side, np.full(len(serve), 60.0)), on_side, atol=1e-12)
    # a walk over stepping stones (upright): on its front at 90 degrees, the head ahead of
    # the pelvis and the pelvis near the floor; upside down at 180, the head under the pelvis
    # and the feet up
    walk = folder.joints("007005").astype(np.float64)
    left = unit_vectors((walk[:, 1] - walk[:, 2]) * np.array([1.0, 0.0, 1.0]))
    forward = np.cross(left, [0.0, 1.0, 0.0])  # (T, 3)
    lying = A.tilt(walk, np.full(len(walk), 90.0))
    assert (((lying[:, 15] - lying[:, 0]) * forward).sum(-1) > 0.4).all()
    height = lying[:, 0, 1] / walk[:, 0, 1]  # (T,) (a stepping leg, turned down, props it up)
    assert np.median(height) < 0.3 and height.max() < 0.6
    upside_down = A.tilt(walk, np.full(len(walk), 180.0))
    assert (upside_down[:, 15, 1] < upside_down[:, 0, 1] - 0.4).all()
    assert (upside_down[:, list(A.FEET), 1].min(-1) > upside_down[:, 0, 1] + 0.4).all()


def test_draw_crouch_jump_and_tilt_stay_in_their_ranges():
    augmentation = A.Augmentation(crouch_degrees=50.0, jump_frames=(6.0, 12.0),
                                  tilt_degrees=(-60.0, 120.0))  # fmt: skip
    torch.manual_seed(0)
    for _ in range(100):
        depth, bend = augmentation.draw_crouch(186, 60, 66)
        assert 0.0 <= depth.min() and depth.max() <= 50.0 and 0.0 <= bend <= 1.0
        assert depth[0] == 0.0 and depth[-1] == 0.0
        heights = augmentation.draw_jump(186, 60, 66)
        airborne = np.flatnonzero(heights > 0)
        assert 60 <= airborne[0] <= 127 and len(airborne) <= 12
        assert heights.max() <= A.GRAVITY * (12 / 20) ** 2 / 8 + 1e-12
    tilts = np.stack([augmentation.draw_tilt(186, 60, 66) for _ in range(300)])  # (300, 186)
    assert tilts.min() >= -60.0 and tilts.max() <= 120.0
    assert (tilts.max(1) > 100).any() and (tilts.min(1) < -45).any()
    assert (tilts[:, 0] == 0).all() and (tilts[:, -1] == 0).all()  # up again


def test_augmentation_describes_itself_for_model_cards():
    text = A.Augmentation().describe()
    assert text.startswith("50% of the training windows") and "0.75-1.33x" in text
    assert "up to 180 degrees" in text and "raised up to 90 degrees" in text
    quiet = A.Augmentation(probability=0.25, arm_swap=0.0, limb_swing=0.0).describe()
    assert quiet.startswith("25%") and "arms" not in quiet and "raised" not in quiet
    assert not {"squat", "jump"} & set(quiet.replace(",", " ").split())
    assert "tilted" not in quiet
    busy = A.Augmentation(crouch=0.3, jump=0.1, tilt=0.25).describe()
    assert "the whole body tilted up to 90 degrees back or 180 forward and up again 25%" in busy
    forward = A.Augmentation(tilt=0.5, tilt_degrees=(30.0, 90.0)).describe()
    assert "tilted 30 to 90 degrees forward and up again 50% of the time" in forward
    assert "a squat up to 60 degrees deep at the hips 30%" in busy
    assert "a jump of 0.3-0.6 s in the air 10% of the time" in busy


def test_augmentation_checks_its_ranges():
    with pytest.raises(ValueError, match="probability"):
        A.Augmentation(probability=1.5)
    with pytest.raises(ValueError, match="speed"):
        A.Augmentation(speed=(1.5, 0.5))
    with pytest.raises(ValueError, match="lean"):
        A.Augmentation(lean_degrees=(20.0, -20.0))
    with pytest.raises(ValueError, match="turn"):
        A.Augmentation(turn_frames=(0.0, 10.0))
    with pytest.raises(ValueError, match="limb_swing"):
        A.Augmentation(limb_swing=-0.1)
    with pytest.raises(ValueError, match="longest swing"):
        A.Augmentation(swing_frames=(10.0, 5.0))
    with pytest.raises(ValueError, match="swing_degrees"):
        A.Augmentation(swing_degrees=-1.0)
    with pytest.raises(ValueError, match="crouch"):
        A.Augmentation(crouch=2.0)
    with pytest.raises(ValueError, match="crouch_degrees"):
        A.Augmentation(crouch_degrees=120.0)
    with pytest.raises(ValueError, match="jump_frames"):
        A.Augmentation(jump_frames=(0.0, 4.0))
    with pytest.raises(ValueError, match="tilt"):
        A.Augmentation(tilt=-0.5)
    with pytest.raises(ValueError, match="tilt_degrees"):
        A.Augmentation(tilt_degrees=(-90.0, 200.0))
    augmentation = A.Augmentation(speed=(0.5, 2.0))
    torch.manual_seed(0)
    speeds = [augmentation.draw_speed(1000, 64) for _ in range(200)]
    assert 0.5 <= min(speeds) < 0.7 and 1.5 < max(speeds) <= 2.0
    assert augmentation.draw_speed(100, 64) <= 99 / 64  # capped to fit the clip
    leans = [augmentation.draw_lean() for _ in range(200)]
    assert -10.0 <= min(leans) < -5.0 and 25.0 < max(leans) <= 30.0
    turns = np.stack([augmentation.draw_turn(186, 60, 66) for _ in range(200)])  # (200, 186)
    assert np.abs(turns).max() <= 180.0 and (turns[:, :40] == 0).all()
    assert (turns.max(1) > 90).any() and (turns.min(1) < -90).any()
    rates = np.abs(np.diff(turns, axis=1))  # (200, 185) degrees per frame
    assert rates.max() <= 1.5 * 180.0 / 10.0 + 1e-9
    middles = np.abs(turns - turns[:, -1:] / 2).argmin(1)  # where half the turn is made
    big = np.abs(turns[:, -1]) > 20
    assert (middles[big] >= 59).all() and (middles[big] <= 126).all()


def _windows(folder, augmentation, items=64):
    clips = [folder.features(i) for i in CLIPS]
    joints = [folder.joints(i) for i in CLIPS]
    dataset = D.WindowDataset(
        clips, folder.mean, folder.std, window=32, joints=joints, augment=augmentation
    )
    torch.manual_seed(0)
    return dataset, [dataset[i % len(dataset)] for i in range(items)]


def test_windows_without_augmentation_are_the_stored_features(folder):
    dataset, items = _windows(folder, A.Augmentation(probability=0.0))
    stored = (dataset.frames - dataset.mean) / dataset.std  # (frames, 263)
    for item in items:
        window = item["features"].numpy()  # (32, 263)
        assert np.abs(stored[:, None] - window[None, :1]).max(-1).min() < 1e-6


def test_an_augmentation_that_changes_nothing_gives_the_stored_rows(folder):
    """With its context frames an augmented window is made as the whole clip's rows were."""
    unchanged = A.Augmentation(probability=1.0, speed=(1.0, 1.0), lean_degrees=(0.0, 0.0),
                               turn_degrees=0.0, arm_swap=0.0, limb_swing=0.0)  # fmt: skip
    clips = [folder.features("007005")]  # 199 rows
    dataset = D.WindowDataset(clips, folder.mean, folder.std, window=32,
                              joints=[folder.joints("007005")], augment=unchanged)  # fmt: skip
    starts = set()
    for seed in range(8):
        torch.manual_seed(seed)
        window = dataset._augmented(0, 32)  # (32, 263)
        torch.manual_seed(seed)
        torch.rand(())  # the speed's draw
        first = int((len(clips[0]) - 1 - 32) * torch.rand(()).item())  # joints: as many frames
        error = np.abs(window - clips[0][first : first + 32]) / folder.std  # (32, 263)
        # the reference's 6D rotations depend on where a clip starts facing (shortest arcs in
        # world axes): equal when the window's context starts where the clip does
        columns = np.ones(FEATURE_DIM, dtype=bool)
        columns[ROT6D] = first <= D.AUGMENT_CONTEXT
        assert error[:, columns].max() < 0.05, (seed, first)
        starts.add(first <= D.AUGMENT_CONTEXT)
    assert starts == {True, False}


def test_dataloader_workers_draw_different_windows(folder):
    clip = [folder.features("007005")]
    dataset = D.WindowDataset(clip * 2, folder.mean, folder.std, window=32,
                              joints=[folder.joints("007005")] * 2,
                              augment=A.Augmentation(probability=1.0))  # fmt: skip
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2)
    torch.manual_seed(0)
    batches = iter(loader)  # worker 0 makes the first batch, worker 1 the second
    first, second = next(batches)["features"], next(batches)["features"]
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("squats", [False, True], ids=["shipped", "crouch_jump_tilt"])
def test_augmented_windows_are_valid_motion_features(folder, squats):
    more = {"crouch": 1.0, "jump": 1.0, "tilt": 1.0} if squats else {}
    augmentation = A.Augmentation(probability=1.0, arm_swap=1.0, **more)
    dataset, items = _windows(folder, augmentation)
    stored = (dataset.frames - dataset.mean) / dataset.std
    new = 0
    for item in items:
        assert item["features"].shape == (32, FEATURE_DIM) and bool(item["mask"].all())
        raw = item["features"].numpy() * dataset.std + dataset.mean  # (32, 263)
        # the features rebuild a skeleton with HumanML3D's bones, whatever was done to it
        lengths = bone_lengths(features_to_joints(raw.astype(np.float64)))
        np.testing.assert_allclose(lengths, np.broadcast_to(TARGET_BONE_LENGTHS, lengths.shape),
                                   atol=1e-4)  # fmt: skip
        assert np.isfinite(raw).all() and set(np.unique(raw[:, -4:])) <= {0.0, 1.0}
        first = item["features"].numpy()[0]
        new += np.abs(stored - first).max(-1).min() > 1e-3
    assert new >= 0.9 * len(items)  # (a speed near 1, no lean, the same arms: rare)


def test_datamodule_keeps_augmentation_as_plain_numbers(humanml3d_dir):
    module = D.MotionDataModule([str(humanml3d_dir)], augment=A.Augmentation(arm_swap=0.5),
                                train_split="all", window=32)  # fmt: skip
    assert module.hparams.augment == {
        "probability": 0.5, "speed": (0.75, 1.33), "lean_degrees": (-10.0, 30.0),
        "turn_degrees": 180.0, "turn_frames": (10.0, 40.0), "arm_swap": 0.5,
        "limb_swing": 0.5, "swing_degrees": 90.0, "swing_frames": (6.0, 20.0),
        "crouch": 0.0, "crouch_degrees": 60.0, "jump": 0.0, "jump_frames": (6.0, 12.0),
        "tilt": 0.0, "tilt_degrees": (-90.0, 180.0),
    }  # fmt: skip
    from_yaml = D.MotionDataModule([str(humanml3d_dir)], augment={"probability": 1.0},
                                   train_split="all", window=32)  # fmt: skip
    assert from_yaml.augment == A.Augmentation(probability=1.0)
    # a run saved before twist and jitter were removed holds them off: dropped; on: refused
    saved = {"probability": 1.0, "twist": 0.0, "twist_degrees": 60.0, "jitter": 0.0,
             "jitter_degrees": 15.0}  # fmt: skip
    old = D.MotionDataModule([str(humanml3d_dir)], augment=saved, train_split="all", window=32)
    assert old.augment == A.Augmentation(probability=1.0)
    with pytest.raises(InputError, match="augment.jitter was removed from parttok"):
        D.MotionDataModule([str(humanml3d_dir)], augment={"jitter": 0.5})
    from_yaml.setup()
    batch = next(iter(from_yaml.train_dataloader()))
    assert batch["features"].shape[1:] == (32, FEATURE_DIM)
    with pytest.raises(TypeError):
        D.MotionDataModule([str(humanml3d_dir)], augment={"speeds": (1, 2)})
    with pytest.raises(ValueError, match="joints"):
        D.WindowDataset([np.zeros((40, FEATURE_DIM), np.float32)], np.zeros(FEATURE_DIM),
                        np.ones(FEATURE_DIM), augment=A.Augmentation())  # fmt: skip
