"""``parttok convert`` on the real clips in ../shared/data: HumanML3D folders, Bandai Namco
and CMU BVH with their labels, resumability, and batches with bad files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parttok import data as D
from parttok.cli import main
from parttok.features import FEATURE_DIM, features_to_joints

CLIPS = ["000000", "007005", "012314", "M010655"]
BANDAI = ["dataset-2_wave-left-hand_active_011", "dataset-2_run_exhausted_001"]


def outputs(out):
    return sorted(out.glob("new_joint*/*.npy")) + sorted(out.glob("texts/*.txt"))


def check_layout(out, ids):
    """The HumanML3D layout for ``ids``: consistent features and joints, index, splits."""
    assert (out / "all.txt").read_text().split() == sorted(ids)
    splits = [(out / f"{split}.txt").read_text().split() for split in ("train", "val", "test")]
    assert sorted(sum(splits, [])) == sorted(ids)
    assert (out / "train_val.txt").read_text().split() == sorted(splits[0] + splits[1])
    clips = []
    for clip_id in ids:
        features = np.load(out / "new_joint_vecs" / f"{clip_id}.npy")
        joints = np.load(out / "new_joints" / f"{clip_id}.npy")
        assert features.dtype == joints.dtype == np.float32
        assert features.shape[1] == FEATURE_DIM and joints.shape == (len(features), 22, 3)
        assert np.abs(features_to_joints(features) - joints).max() < 1e-5
        clips.append(features)
    frames = np.concatenate(clips)
    np.testing.assert_allclose(np.load(out / "Mean.npy"), frames.mean(0), atol=1e-5)
    assert np.load(out / "Std.npy").shape == (FEATURE_DIM,)


def test_humanml3d_folder_reproduces_the_reference_features(humanml3d_dir, tmp_path):
    out = tmp_path / "out"
    finished = subprocess.run(
        [sys.executable, "-m", "parttok", "convert", str(humanml3d_dir), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert finished.returncode == 0, finished.stderr
    assert "converted 4 clip(s)" in finished.stderr
    check_layout(out, CLIPS)
    for clip_id in CLIPS:
        reference = np.load(humanml3d_dir / "new_joint_vecs" / f"{clip_id}.npy")
        features = np.load(out / "new_joint_vecs" / f"{clip_id}.npy")
        assert len(features) == len(reference) - 1  # T joints -> T-1 feature rows
        rows = len(features) - 60 + 1
        assert np.abs(features[:rows] - reference[:rows]).max() < 1e-4
    # captions are copied as they are
    assert (out / "texts" / "000000.txt").read_text().splitlines() == (
        humanml3d_dir / "texts" / "000000.txt"
    ).read_text().splitlines()
    assert not (out / "texts" / "007005.txt").exists()


@pytest.fixture(scope="module")
def labelled_sources(bandai_dir, cmu_dir, iclone_dir):
    return [
        *(bandai_dir / "data" / f"{name}.bvh" for name in BANDAI),
        cmu_dir / "02_01.bvh",
        iclone_dir / "002_03.bvh",
    ]


def test_bvh_with_labels_resume_and_force(labelled_sources, tmp_path, capsys):
    out = tmp_path / "out"
    arguments = ["convert", *map(str, labelled_sources), "--out", str(out), "--jobs", "2"]
    assert main(arguments) == 0
    ids = [*BANDAI, "02_01", "002_03"]
    check_layout(out, ids)
    captions = {i: D.read_captions(out / "texts" / f"{i}.txt") for i in ids}
    assert [c.text for c in captions[BANDAI[0]]] == [
        "a person waves the left hand in an active style."
    ]
    assert [c.text for c in captions[BANDAI[1]]] == ["a person runs in an exhausted style."]
    assert captions[BANDAI[1]][0].tokens[:3] == ("a/OTHER", "person/OTHER", "runs/OTHER")
    assert [c.text for c in captions["02_01"]] == ["walk."]
    assert [c.text for c in captions["002_03"]] == ["run/jog."]
    assert all(c.whole_clip for clip in captions.values() for c in clip)
    for clip_id in ids:  # 20 fps: about two thirds of a 30 fps clip's frames, etc.
        assert len(np.load(out / "new_joint_vecs" / f"{clip_id}.npy")) > 8
    capsys.readouterr()

    # a second run skips everything and touches nothing
    stamps = {path: path.stat().st_mtime_ns for path in outputs(out)}
    index = {p: p.stat().st_mtime_ns for p in out.glob("*.*")}
    assert main(arguments) == 0
    assert "converted 0 clip(s)" in capsys.readouterr().err
    assert {path: path.stat().st_mtime_ns for path in outputs(out)} == stamps
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.*")} == index

    # -f converts again
    for path in stamps:
        os.utime(path, ns=(0, 0))
    assert main([*arguments[:-2], "--jobs", "1", "-f"]) == 0
    assert "converted 4 clip(s)" in capsys.readouterr().err
    npy = [path for path in outputs(out) if path.suffix == ".npy"]
    assert all(path.stat().st_mtime_ns > 0 for path in npy)

    # a folder written by an import of another feature version is converted again
    assert (out / "feature_version.txt").read_text().strip() == D.FEATURE_VERSION
    (out / "feature_version.txt").write_text("1\n")
    assert main(arguments) == 0
    assert "converted 4 clip(s)" in capsys.readouterr().err
    assert (out / "feature_version.txt").read_text().strip() == D.FEATURE_VERSION

    # converting only some sources into such a folder names the rest and keeps it marked old
    (out / "feature_version.txt").write_text("1\n")
    assert main(["convert", arguments[1], *arguments[-4:]]) == 0
    err = capsys.readouterr().err
    assert "converted 1 clip(s)" in err and "3 clip(s) in" in err and "older import" in err
    assert (out / "feature_version.txt").read_text().strip() == "1"
    assert (out / "converted_again.txt").read_text().split() == [Path(arguments[1]).stem]
    assert main(["convert", *arguments[2:]]) == 0  # the other three, in another call
    err = capsys.readouterr().err
    assert "converted 3 clip(s)" in err and "older import" not in err
    assert (out / "feature_version.txt").read_text().strip() == D.FEATURE_VERSION
    assert not (out / "converted_again.txt").exists()
    assert main(arguments) == 0 and "converted 0 clip(s)" in capsys.readouterr().err


def test_bad_files_are_reported_and_the_rest_converted(bandai_dir, tmp_path, capsys):
    good = bandai_dir / "data" / f"{BANDAI[0]}.bvh"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.bvh").write_bytes(b"")
    lines = good.read_text().splitlines()
    (bad / "truncated.bvh").write_text("\n".join(lines[: len(lines) - 10]) + "\n")
    (bad / "binary.bvh").write_bytes(bytes(range(256)) * 8)
    nan = np.zeros((30, 22, 3), np.float32)
    nan[5, 3] = np.nan
    np.save(bad / "nan.npy", nan)
    np.save(bad / "kit.npy", np.zeros((30, 251), np.float32))
    sources = [good, bad, bad / "nan.npy", bad / "kit.npy"]
    out = tmp_path / "out"
    status = main(["convert", *map(str, sources), "--out", str(out), "--jobs", "1"])
    err = capsys.readouterr().err
    assert status == 2
    assert "Traceback" not in err
    for name in ("empty.bvh", "truncated.bvh", "binary.bvh", "nan.npy", "kit.npy"):
        reported = [line for line in err.splitlines() if name in line]
        assert len(reported) == 1, (name, err)
    assert "KIT-ML" in err and "NaN" in err
    assert "5 input(s) failed" in err
    assert (out / "all.txt").read_text().split() == [BANDAI[0]]
    assert (out / "new_joints" / f"{BANDAI[0]}.npy").is_file()


def test_clip_ids_are_made_unique(tmp_path):
    paths = [tmp_path / "a" / "x" / "walk.bvh", tmp_path / "b" / "x" / "walk.bvh"]
    paths += [tmp_path / "a" / "run.bvh", tmp_path / "c" / "walk.bvh"]
    assert D.unique_ids(paths) == ["a_x_walk", "b_x_walk", "run", "c_walk"]
    assert D.unique_ids([Path("a.bvh"), Path("a.bvh")]) == ["a", "a_2"]


def test_splits_are_stable_and_near_80_10_10():
    ids = [f"clip{i:05d}" for i in range(5000)]
    splits = [D.split_of(i) for i in ids]
    assert splits == [D.split_of(i) for i in ids]
    share = {s: splits.count(s) / len(ids) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["val"] - 0.1) < 0.02
    assert D.split_of("M010655") == D.split_of("010655")


def test_one_capture_on_two_rigs_shares_a_split(data_dir, iclone_dir):
    """CMU's BVH conversion names a trial 05_06, the Character Creator retarget 005_06: the
    same capture, so never in training on one rig and measured on the other."""
    assert D.capture_key("05_06") == D.capture_key("5_6") == "005_06"
    assert D.capture_key("005_06") == "005_06" and D.capture_key("131_01") == "131_01"
    assert D.capture_key("M010655") == "010655"
    assert D.capture_key("dataset-2_walk_normal_001") == "dataset-2_walk_normal_001"
    assert D.split_of("005_06") == D.split_of("05_06") == D.split_of("5_6")
    cmu = {D.capture_key(path.stem): path.stem for path in (data_dir / "cmu").glob("*.bvh")}
    retargeted = {D.capture_key(path.stem): path.stem for path in iclone_dir.glob("*.bvh")}
    assert {"001_01", "002_01", "005_06"} <= cmu.keys() & retargeted.keys()
    for capture in cmu.keys() & retargeted.keys():
        assert D.split_of(cmu[capture]) == D.split_of(retargeted[capture])
    # the retargets keep the splits they had before captures were keyed (ids spread over all)
    assert D.split_of("005_06") == "train" and D.split_of("002_01") == "val"
    assert {D.split_of(name) for name in retargeted.values()} == {"train", "val", "test"}


def test_missing_source_is_one_line(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0] and "no such file" in err[0]
