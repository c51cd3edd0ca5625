"""BVH import and export on the real clips in ../shared/data: CMU (both namings), Bandai
Namco 2 and the Character Creator (iClone) rig, plus bad input and user mapping files."""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from parttok.bvh import BVH, Motion, load_bvh, read_bvh, resample, save_bvh
from parttok.errors import BVHError, RigError
from parttok.features import normalize_joints
from parttok.rigs import PRESET_NAMES, preset
from parttok.skeleton import (
    FACE_JOINTS,
    JOINT_NAMES,
    LEFT_FOOT,
    RIGHT_FOOT,
    TARGET_BONE_LENGTHS,
    bone_lengths,
    facing_direction,
)

CMU_FILES = {  # file -> (naming, frame 0 is an added T-pose)
    "01_01.bvh": ("cmu-motionbuilder", True),
    "02_01.bvh": ("cmu-motionbuilder", False),
    "05_06.bvh": ("cmu-motionbuilder", False),
    "131_01.bvh": ("cmu-3dsmax", False),
    "131_02.bvh": ("cmu-3dsmax", False),
}
BANDAI_SAMPLE = 20
ICLONE_SAMPLE = 8
FEET = list(LEFT_FOOT + RIGHT_FOOT)
WRISTS = [JOINT_NAMES.index("left_wrist"), JOINT_NAMES.index("right_wrist")]
CARTWHEELS = {"05_06", "005_06"}  # CMU trial 05_06 (both sources): a hand is lowest
HEAD = JOINT_NAMES.index("head")


@functools.cache
def loaded(path: Path, rig: str = "auto") -> Motion:
    return load_bvh(path, rig=rig)


def bandai_files(bandai_dir: Path) -> list[Path]:
    files = sorted((bandai_dir / "data").glob("*.bvh"))
    assert len(files) == 2902, f"expected the 2,902 Bandai Namco 2 clips, found {len(files)}"
    return files


def iclone_files(iclone_dir: Path) -> list[Path]:
    files = sorted(iclone_dir.glob("*.bvh"))
    assert len(files) == 61, f"expected the 61 CMU clips on the iClone rig, found {len(files)}"
    return files


def iclone_imported(iclone_dir: Path) -> set[str]:
    """Clips marked "Imported" (not "Centered") in the archive's index: the ones whose frame
    0 is a T-pose."""
    with open(iclone_dir / "descriptions.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    return {
        f"{int(row['Subject']):03d}_{int(row['Trial #']):02d}"
        for row in rows
        if row["Status"] == "Imported"
    }


def check_motion(motion: Motion, path: Path, dropped: bool) -> np.ndarray:
    """What every imported clip must satisfy; returns the "toes ahead" values of its planted
    feet (dancers turn their feet out, so callers judge these pooled over clips)."""
    joints = motion.joints
    source = read_bvh(path)
    assert motion.fps == 20 and motion.name == path.stem and motion.source == str(path)
    assert joints.dtype == np.float32 and joints.shape[1:] == (22, 3)
    assert np.isfinite(joints).all()
    # the clip's duration at 20 fps, without the dropped T-pose frame
    expected = math.floor((source.num_frames - 1 - dropped) * 20 / motion.source_fps + 1e-9) + 1
    assert len(joints) == expected
    assert motion.dropped_first_frame == dropped
    positions = joints.astype(np.float64)
    assert np.abs(bone_lengths(positions) - TARGET_BONE_LENGTHS).max() < 1e-5
    assert abs(positions[..., 1].min()) < 1e-6  # the lowest point is on the floor ...
    lowest = int(np.argmin(positions[..., 1].min(axis=0)))
    assert lowest in (WRISTS if path.stem in CARTWHEELS else FEET)  # ... and it is a foot
    height = (positions[:, HEAD, 1] - positions[:, FEET, 1].min(axis=1)).max()
    assert 1.4 < height < 2.0, f"standing height {height:.2f} m"
    forward = facing_direction(torch.from_numpy(positions[0]), FACE_JOINTS).numpy()
    np.testing.assert_allclose(forward / np.linalg.norm(forward), [0.0, 0.0, 1.0], atol=1e-6)
    return toes_ahead(positions)


def toes_ahead(positions: np.ndarray) -> np.ndarray:
    """For the left/right check: how far each foot on the floor points where the hips and
    shoulders face (1: straight ahead; a mirrored import points the toes backwards)."""
    forward = facing_direction(torch.from_numpy(positions), FACE_JOINTS).numpy()  # (T, 3)
    forward /= np.linalg.norm(forward, axis=-1, keepdims=True)
    toes = positions[:, [10, 11]] - positions[:, [7, 8]]  # (T, 2, 3)
    ahead = np.einsum("tc,tfc->tf", forward, toes) / np.linalg.norm(toes, axis=-1)
    return ahead[positions[:, [10, 11], 1] < 0.03]  # toe joint on the floor


def check_round_trip(joints: np.ndarray, tmp_path: Path) -> None:
    """save_bvh -> read_bvh -> forward kinematics gives the joints back within 1 mm."""
    path = tmp_path / "written.bvh"
    save_bvh(path, joints)
    written = read_bvh(path)
    assert sorted(written.names) == sorted(JOINT_NAMES)
    assert written.frame_time == pytest.approx(0.05)
    again = written.global_positions([written.index(name) for name in JOINT_NAMES])
    assert np.abs(again - joints).max() < 1e-3
    assert np.linalg.norm(again - joints, axis=-1).max() < 1e-4  # in fact far closer


# --- the real files ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CMU_FILES))
def test_cmu_files_import(cmu_dir, name, tmp_path):
    naming, tpose = CMU_FILES[name]
    motion = loaded(cmu_dir / name)
    assert motion.rig == naming and motion.source_fps == 120 and motion.up == "y"
    ahead = check_motion(motion, cmu_dir / name, dropped=tpose)
    if Path(name).stem not in CARTWHEELS:  # a cartwheel lands its toes sideways
        assert len(ahead) == 0 or ahead.mean() > 0.5
    # CMU's units: about 5.6 cm (the BVH conversions' 1/0.45 inch times 0.0254 m / 1.13)
    assert 0.05 < motion.scale < 0.065
    check_round_trip(motion.joints, tmp_path)


def test_cmu_tpose_is_the_dropped_frame(cmu_dir):
    """01_01's frame 0 is the T-pose: the left arm points along the hips' left, as it never
    does in the captured frames."""
    source = read_bvh(cmu_dir / "01_01.bvh")
    names = ("LeftArm", "LeftHand", "LeftUpLeg", "RightUpLeg")
    positions = source.global_positions([source.index(name) for name in names])  # (F, 4, 3)
    arm, across = positions[:, 1] - positions[:, 0], positions[:, 2] - positions[:, 3]
    sideways = (arm * across).sum(-1) / np.linalg.norm(arm, axis=-1)
    sideways /= np.linalg.norm(across, axis=-1)
    assert sideways[0] > 0.99 and sideways[1:].max() < 0.6


def test_toes_ahead_detects_a_mirrored_import(bandai_dir):
    joints = loaded(bandai_files(bandai_dir)[2000]).joints.astype(np.float64)
    assert toes_ahead(joints).mean() > 0.5
    mirrored = normalize_joints(joints * np.array([-1.0, 1.0, 1.0]))  # left/right swapped
    assert toes_ahead(mirrored).mean() < -0.5


def test_bandai_sample_imports(bandai_dir, tmp_path):
    files = bandai_files(bandai_dir)
    ahead = []
    for path in files[:: len(files) // BANDAI_SAMPLE][:BANDAI_SAMPLE]:
        motion = loaded(path)
        assert motion.rig == "bandai-namco" and motion.source_fps == 30
        assert motion.scale == pytest.approx(0.01, rel=0.05)  # centimetres
        ahead.append(check_motion(motion, path, dropped=False))
        check_round_trip(motion.joints, tmp_path)
    assert np.concatenate(ahead).mean() > 0.5


def test_iclone_sample_imports(iclone_dir, tmp_path):
    files = iclone_files(iclone_dir)
    imported = iclone_imported(iclone_dir)
    sample = files[:: -(-len(files) // ICLONE_SAMPLE)]  # every 8th: 8 clips
    assert any(path.stem in imported for path in sample)  # the sample holds both kinds
    ahead = []
    for path in sample:
        motion = loaded(path)
        assert motion.rig == "character-creator" and motion.source_fps == 60
        assert motion.scale == pytest.approx(0.01, rel=0.2)  # centimetres
        ahead.append(check_motion(motion, path, dropped=path.stem in imported))
        check_round_trip(motion.joints, tmp_path)
    assert np.concatenate(ahead).mean() > 0.5


@pytest.mark.slow
def test_every_iclone_file_imports(iclone_dir, tmp_path):
    imported = iclone_imported(iclone_dir)
    ahead = [
        check_motion(loaded(path), path, dropped=path.stem in imported)
        for path in iclone_files(iclone_dir)
    ]
    assert np.concatenate(ahead).mean() > 0.5


@pytest.mark.slow
def test_every_bandai_file_imports(bandai_dir):
    ahead = [check_motion(load_bvh(path), path, dropped=False) for path in bandai_files(bandai_dir)]
    assert np.concatenate(ahead).mean() > 0.5


@pytest.mark.parametrize("clip", ["000000", "007005", "012314", "M010655"])
def test_humanml3d_joints_round_trip(humanml3d_dir, clip, tmp_path):
    joints = np.load(humanml3d_dir / "new_joints" / f"{clip}.npy")
    check_round_trip(joints, tmp_path)
    # SMPL's pelvis and spine3 children are rigid: rotations alone carry the clip
    written = read_bvh(tmp_path / "written.bvh")
    moving = [
        name
        for name, channels in zip(written.names, written.channels, strict=True)
        if len(channels) > 3
    ]
    assert moving == ["pelvis"]


def test_save_bvh_survives_degenerate_poses(humanml3d_dir, tmp_path):
    """A single frame, a collapsed skeleton and bones folded back onto their rest direction
    still give a readable file that reproduces the joints."""
    joints = np.load(humanml3d_dir / "new_joints" / "007005.npy")[:3].astype(np.float64)
    joints[1, 18] = joints[1, 16] - (joints[1, 16] - joints[1, 13])  # upper arm folded back
    joints[1, 20] = joints[1, 18] + (0.0, 0.2, 0.0)
    check_round_trip(joints, tmp_path)
    check_round_trip(joints[:1], tmp_path)
    save_bvh(tmp_path / "point.bvh", np.zeros((2, 22, 3)))
    assert np.isfinite(read_bvh(tmp_path / "point.bvh").global_positions()).all()


def test_saved_bvh_loads_back_through_the_smpl_preset(humanml3d_dir, tmp_path):
    joints = np.load(humanml3d_dir / "new_joints" / "012314.npy")
    save_bvh(tmp_path / "clip.bvh", joints)
    motion = load_bvh(tmp_path / "clip.bvh")
    assert motion.rig == "smpl" and motion.scale == pytest.approx(1.0, abs=1e-6)
    assert not motion.dropped_first_frame
    np.testing.assert_allclose(motion.joints, joints, atol=1e-5)


def test_z_up_file_is_detected_and_turned(humanml3d_dir, tmp_path):
    joints = np.load(humanml3d_dir / "new_joints" / "007005.npy")
    z_up = joints @ np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]).T  # (x, y, z) -> (x, -z, y)
    assert (z_up[:, HEAD, 2] > z_up[:, 0, 2]).all()
    save_bvh(tmp_path / "z_up.bvh", z_up * 100.0, fps=60)  # centimetres, 60 fps
    motion = load_bvh(tmp_path / "z_up.bvh")
    assert motion.up == "z" and motion.scale == pytest.approx(0.01, rel=1e-6)
    reference = normalize_joints(resample(joints, 60.0))  # the clip seen as 60 fps, at 20
    np.testing.assert_allclose(motion.joints, reference, atol=1e-5)


def test_resample_keeps_duration_and_interpolates_linearly():
    track = np.arange(200, dtype=np.float64)[:, None] * np.array([1.0, -2.0, 0.5])  # (121, 3)
    for rate in (120, 60, 30, 24, 25, 50, 20, 10):
        result = resample(track[: rate + 1], rate)  # one second of frames
        assert len(result) == 21, rate
        np.testing.assert_allclose(result, track[:21] * rate / 20)
    assert len(resample(track[:130], 30)) == 87  # 129 frames at 30 fps = 4.3 s -> 86 steps


# --- the reader --------------------------------------------------------------------------

TWO_JOINTS = """HIERARCHY
ROOT root
{
\tOFFSET 5 5 5
\tCHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
\tJOINT child
\t{
\t\tOFFSET 1 0 0
\t\tCHANNELS 4 Yrotation Xposition Xrotation Zrotation
\t\tEnd Site
\t\t{
\t\t\tOFFSET 0 1 0
\t\t}
\t}
}
MOTION
Frames: 2
Frame Time: 0.1
1 2 3 90 0 0 0 1 0 0
1 2 3 0 90 0 0 2 0 90
"""


def test_forward_kinematics_conventions(tmp_path):
    """Position channels replace the OFFSET's axis; rotations are intrinsic in channel
    order; channel orders may differ per joint; CRLF line ends are fine."""
    path = tmp_path / "two.bvh"
    path.write_bytes(TWO_JOINTS.replace("\n", "\r\n").encode())
    bvh = read_bvh(path)
    assert bvh.names == ["root", "child"] and list(bvh.parents) == [-1, 0]
    assert bvh.rotation_orders == ["ZXY", "YXZ"] and bvh.fps == pytest.approx(10)
    assert bvh.motion.shape == (2, 10) and len(bvh.end_sites) == 1
    positions = bvh.global_positions()
    # frame 0: root at (1, 2, 3) turned 90 degrees about Z; child offset (1, 0, 0) -> +Y
    np.testing.assert_allclose(positions[0], [[1, 2, 3], [1, 3, 3]], atol=1e-12)
    # frame 1: root turned 90 about X; the child's X position channel says 2 -> (2, 0, 0)
    np.testing.assert_allclose(positions[1], [[1, 2, 3], [3, 2, 3]], atol=1e-12)


def test_reader_reads_the_real_rigs(cmu_dir, bandai_dir, iclone_dir):
    cmu = read_bvh(cmu_dir / "131_01.bvh")  # CRLF, two rotation orders
    assert len(cmu.names) == 31 and set(cmu.rotation_orders) == {"ZYX", "ZXY"}
    assert cmu.motion.shape == (994, 96) and len(cmu.end_sites) == 7
    bandai = read_bvh(bandai_files(bandai_dir)[0])  # 6 channels on every joint
    assert all(len(channels) == 6 for channels in bandai.channels)
    assert bandai.names[:2] == ["joint_Root", "Hips"]
    iclone = read_bvh(iclone_files(iclone_dir)[0])
    assert all(name.startswith("CC_Base_") for name in iclone.names)


# --- bad input -----------------------------------------------------------------------------


def bad_file(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "bad.bvh"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file"),
        ("  \n\r\n", "empty file"),
        (b"\x00\x01BVH\xff\xfe" * 20, "not a text file"),
        ("caf\xe9".encode("latin-1") * 3, "not UTF-8"),
        (TWO_JOINTS.replace("Frames: 2", "Frames: 3"), "truncated"),
        (TWO_JOINTS.replace("0 1 0 0\n", "0 1 0 0 7\n"), "values, but the HIERARCHY declares 10"),
        (TWO_JOINTS.replace("0 2 0 90", "0 2 0"), "values, but the HIERARCHY declares 10"),
        (TWO_JOINTS.replace("1 2 3 90", "1 2 x 90"), "non-numeric value 'x'"),
        (TWO_JOINTS.replace("1 2 3 90", "1 2 nan 90"), "NaN"),
        (TWO_JOINTS.replace("MOTION", "MOTIONS"), "no MOTION"),
        (TWO_JOINTS.replace("HIERARCHY", ""), "no HIERARCHY"),
        (TWO_JOINTS.replace("Frame Time: 0.1", ""), "Frame Time"),
        (TWO_JOINTS.replace("Zrotation Xrotation Yrotation", "Zrotation Xrotation Wrotation"),
         "unknown channel 'Wrotation'"),
        (TWO_JOINTS.replace("\t}\n}", "\t}\n"), "unclosed"),
        (TWO_JOINTS.replace("OFFSET 1 0 0", "OFFSET 1 zero 0"), "non-numeric"),
    ],
)  # fmt: skip
def test_bad_files_raise_bvh_error(tmp_path, content, message):
    with pytest.raises(BVHError, match=message) as caught:
        read_bvh(bad_file(tmp_path, content))
    text = str(caught.value)
    assert "\n" not in text and "bad.bvh" in text


def test_real_file_cut_short_is_truncated(cmu_dir, tmp_path):
    text = (cmu_dir / "02_01.bvh").read_bytes()
    path = bad_file(tmp_path, text[: len(text) * 2 // 3])
    with pytest.raises(BVHError, match=r"truncated|values, but") as caught:
        load_bvh(path)
    assert "\n" not in str(caught.value)


def test_rows_beyond_the_frame_count_are_kept(tmp_path):
    """As in Blender's reader: a frame count that is too small loses no motion."""
    bvh = read_bvh(bad_file(tmp_path, TWO_JOINTS.replace("Frames: 2", "Frames: 1")))
    assert bvh.num_frames == 2


def test_missing_file_raises_bvh_error(tmp_path):
    with pytest.raises(BVHError, match="cannot read"):
        read_bvh(tmp_path / "absent.bvh")


def test_no_frames_raises(tmp_path):
    path = bad_file(tmp_path, TWO_JOINTS.split("1 2 3")[0].replace("Frames: 2", "Frames: 0"))
    assert read_bvh(path).num_frames == 0
    with pytest.raises(BVHError, match="no frames"):
        load_bvh(path)


def test_unknown_rig_names_what_is_missing(cmu_dir, tmp_path):
    text = (cmu_dir / "02_01.bvh").read_text()  # (CRLF read as \n)
    for name in ("Hips", "LeftUpLeg", "RightUpLeg", "Spine1"):
        text = text.replace(f" {name}\n", f" Bone{name}\n")
    path = bad_file(tmp_path, text)
    with pytest.raises(RigError, match=r"unknown skeleton.*missing Hips.*--rig FILE") as caught:
        load_bvh(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(RigError, match="needs joints the file lacks: Hips"):
        load_bvh(path, rig="cmu-motionbuilder")
    with pytest.raises(RigError, match="unknown rig 'nonsense'"):
        load_bvh(path, rig="nonsense")


# --- rig mapping files -----------------------------------------------------------------------


def test_user_mapping_file_for_bandai_names(bandai_dir, tmp_path):
    """A user's YAML for the Bandai rig (spine joints given as weights and as a chain point)
    gives what the preset gives; namespaces and case in the file's names don't matter."""
    path = bandai_files(bandai_dir)[1234]
    mapping = {
        "name": "my-bandai",
        "joints": {
            smpl: source.names[0]
            for smpl, source in zip(JOINT_NAMES, preset("bandai-namco").sources, strict=True)
        },
    }
    mapping["joints"]["spine1"] = {"along": ["Hips", "Spine", "Chest"], "at": 0.396}
    mapping["joints"]["spine2"] = {"along": ["hips", "SPINE", "Chest"], "at": 0.827}
    mapping["joints"]["spine3"] = {"Chest": 2, "Neck": 0}
    rig_file = tmp_path / "my-bandai.yaml"
    rig_file.write_text(yaml.safe_dump(mapping))
    motion = load_bvh(path, rig=rig_file)
    assert motion.rig == "my-bandai" and motion.up == "y"
    np.testing.assert_allclose(motion.joints, loaded(path).joints, atol=1e-6)
    # the same clip under a namespace prefix
    renamed = bad_file(tmp_path, path.read_text().replace("JOINT ", "JOINT rig:"))
    np.testing.assert_allclose(load_bvh(renamed, rig=rig_file).joints, motion.joints, atol=1e-6)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("joints: [1, 2]", "needs a 'joints:' mapping"),
        ("joints: {pelvis: Hips}", "lacks SMPL joint"),
        ("joints: {pelvis: Hips, tail: Tail}", "unknown SMPL joint.*tail"),
        ("{", "not a valid YAML"),
    ],
)
def test_bad_mapping_files_raise_rig_error(bandai_dir, tmp_path, document, message):
    rig_file = tmp_path / "rig.yaml"
    rig_file.write_text(document)
    with pytest.raises(RigError, match=message) as caught:
        load_bvh(bandai_files(bandai_dir)[0], rig=rig_file)
    assert "\n" not in str(caught.value)


def test_mapping_values_are_checked(bandai_dir, tmp_path):
    joints = {name: "Hips" for name in JOINT_NAMES}
    for value, message in (
        ({"along": ["Hips"], "at": 0.5}, "'along' needs"),
        ({"along": ["Hips", "Spine"], "at": 2}, "'along' needs"),
        ({"Hips": -1}, "non-negative"),
        (3, "expected a joint name"),
    ):
        rig_file = tmp_path / "rig.yaml"
        rig_file.write_text(yaml.safe_dump({"joints": joints | {"spine1": value}, "up": "y"}))
        with pytest.raises(RigError, match=message):
            load_bvh(bandai_files(bandai_dir)[0], rig=rig_file)
    rig_file.write_text(yaml.safe_dump({"joints": joints, "up": "w"}))
    with pytest.raises(RigError, match="'up' must be one of"):
        load_bvh(bandai_files(bandai_dir)[0], rig=rig_file)


def test_presets_are_complete():
    for name in PRESET_NAMES:
        rig = preset(name)
        assert rig.name == name and len(rig.sources) == 22


def test_bvh_dataclass_is_exported():
    import parttok

    assert parttok.read_bvh is read_bvh and parttok.load_bvh is load_bvh
    assert parttok.save_bvh is save_bvh and parttok.Motion is Motion
    assert BVH.__dataclass_fields__.keys() >= {"names", "parents", "offsets", "motion"}
