"""Datasets: the HumanML3D reader, training windows, mirroring, evaluation clips, the
DataModule and the BVH cache, on the real clips in ../shared/data."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from parttok import data as D
from parttok.errors import FeatureError, InputError
from parttok.features import FEATURE_DIM, ROT6D, features_to_joints
from parttok.rotations import matrix_to_quat, sixd_to_matrix
from parttok.skeleton import (
    MIRROR_PERMUTATION,
    RAW_OFFSETS,
    TARGET_BONE_LENGTHS,
    forward_kinematics,
)

CLIPS = ["000000", "007005", "012314", "M010655"]


@pytest.fixture(scope="module")
def folder(humanml3d_dir):
    return D.HumanML3DFolder(humanml3d_dir)


@pytest.fixture(scope="module")
def clips(folder):
    return [folder.features(clip_id) for clip_id in CLIPS]


@pytest.fixture(scope="module")
def converted(humanml3d_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    D.convert_sources([humanml3d_dir], out, jobs=1, show_progress=False)
    return out


# --- HumanML3D folders -----------------------------------------------------------------


def test_reader_ids_splits_and_arrays(folder, humanml3d_dir):
    assert folder.ids() == CLIPS
    # the split files list ~29k ids; only those with files count, in the file's order
    listed = (humanml3d_dir / "train.txt").read_text().split()
    assert len(listed) > 20000
    train = folder.ids("train")
    assert set(train) <= set(CLIPS) and set(train) == set(listed) & set(CLIPS)
    assert sorted(folder.ids("all")) == CLIPS
    with pytest.raises(InputError, match="no such split"):
        folder.ids("nonexistent")
    for clip_id in CLIPS:
        features = folder.features(clip_id)
        assert features.dtype == np.float32 and features.shape[1] == FEATURE_DIM
        joints = folder.joints(clip_id)
        assert joints.shape == (len(features), 22, 3) and joints.dtype == np.float32
    raw = np.load(humanml3d_dir / "new_joint_vecs" / "000000.npy")
    assert raw.dtype == np.float64
    np.testing.assert_array_equal(folder.features("000000"), raw.astype(np.float32))
    assert folder.mean.shape == folder.std.shape == (FEATURE_DIM,)
    np.testing.assert_array_equal(folder.mean, np.load(humanml3d_dir / "Mean.npy"))


def test_reader_rejects_a_folder_outside_the_layout(tmp_path):
    with pytest.raises(InputError, match="HumanML3D layout"):
        D.HumanML3DFolder(tmp_path)


def test_captions_of_the_shipped_clip(folder):
    captions = folder.captions("000000")
    assert len(captions) == 4
    first = captions[0]
    assert first.text == "a man kicks something or someone with his left leg."
    assert first.tokens[:3] == ("a/DET", "man/NOUN", "kick/VERB")
    assert first.whole_clip and first.frame_range(116) == (0, 116)
    assert folder.captions("007005") == []


def test_sub_clip_tags_and_malformed_lines(tmp_path, humanml3d_dir):
    root = tmp_path / "h"
    shutil.copytree(humanml3d_dir / "new_joint_vecs", root / "new_joint_vecs")
    (root / "texts").mkdir()
    (root / "texts" / "012314.txt").write_text(
        "a person waves.#a/DET person/NOUN wave/VERB#1.5#3.0\n"
        "\n"
        "turns around#turn/VERB around/ADV#nan#nan\n"
    )
    captions = D.HumanML3DFolder(root).captions("012314")
    assert [c.text for c in captions] == ["a person waves.", "turns around"]
    assert not captions[0].whole_clip
    assert captions[0].frame_range(170) == (30, 60)
    assert captions[0].frame_range(40) == (30, 40)
    assert captions[1].whole_clip  # NaN tags mean the whole clip, as in the reference
    assert D.parse_caption(captions[0].line()) == captions[0]
    (root / "texts" / "012314.txt").write_text("no separators here\n")
    with pytest.raises(InputError, match=r"012314.txt:1"):
        D.HumanML3DFolder(root).captions("012314")


def test_bad_feature_files_raise_feature_errors(tmp_path, humanml3d_dir):
    root = tmp_path / "h"
    (root / "new_joint_vecs").mkdir(parents=True)
    np.save(root / "new_joint_vecs" / "kit.npy", np.zeros((30, 251), np.float32))
    nan = np.zeros((30, 263), np.float32)
    nan[3, 7] = np.nan
    np.save(root / "new_joint_vecs" / "nan.npy", nan)
    reader = D.HumanML3DFolder(root)
    with pytest.raises(FeatureError, match="KIT-ML"):
        reader.features("kit")
    with pytest.raises(FeatureError, match="NaN"):
        reader.features("nan")
    # no new_joints/: joints are recovered from the features
    shutil.copy(humanml3d_dir / "new_joint_vecs" / "012314.npy", root / "new_joint_vecs")
    expected = np.load(humanml3d_dir / "new_joints" / "012314.npy")
    assert np.abs(reader.joints("012314") - expected).max() < 1e-5


# --- mirroring -------------------------------------------------------------------------


def _fk_error(features: np.ndarray, lengths: np.ndarray) -> float:
    """Largest distance between the joints recovered from the ric slice and those built by
    forward kinematics from the 6D rotations with bones of ``lengths``."""
    x = torch.from_numpy(features.astype(np.float64))
    frames = len(x)
    half = torch.cumsum(torch.nn.functional.pad(x[:-1, 0], (1, 0)), 0)
    zero = torch.zeros_like(half)
    root = torch.stack((half.cos(), zero, half.sin(), zero), -1)
    local = matrix_to_quat(sixd_to_matrix(x[:, ROT6D].reshape(frames, 21, 6)))
    local = torch.cat((root[:, None], local), 1)  # (T, 22, 4)
    joints = torch.from_numpy(features_to_joints(x.numpy()))
    offsets = RAW_OFFSETS * np.concatenate(([0.0], lengths))[:, None]
    return (forward_kinematics(local, joints[:, 0], offsets) - joints).abs().max().item()


@pytest.mark.parametrize("index", range(len(CLIPS)))
def test_mirroring_swaps_sides_and_negates_x(clips, index):
    features = clips[index]
    mirrored = D.mirror_features(features)
    joints = features_to_joints(features)
    expected = joints[:, MIRROR_PERMUTATION] * np.array([-1.0, 1.0, 1.0], np.float32)
    assert np.abs(features_to_joints(mirrored) - expected).max() < 1e-5
    np.testing.assert_array_equal(D.mirror_joints(joints), expected)
    np.testing.assert_array_equal(D.mirror_features(mirrored), features)
    # the 6D rotations of the mirror image rebuild its joints on the mirrored skeleton
    mirrored_lengths = TARGET_BONE_LENGTHS[MIRROR_PERMUTATION[1:] - 1]
    assert _fk_error(features, TARGET_BONE_LENGTHS) < 1e-5
    assert _fk_error(mirrored, mirrored_lengths) < 1e-5
    # contacts swap sides: left (7, 10) first, then right (8, 11)
    np.testing.assert_array_equal(mirrored[:, 259:261], features[:, 261:263])
    # the root turns the other way
    np.testing.assert_array_equal(mirrored[:, 0], -features[:, 0])


def test_wrong_rotation_mirroring_is_detected(clips):
    """The FK check above fails when the 6D slice is only permuted, not reflected."""
    features = clips[2]
    only_permuted = D.mirror_features(features)
    only_permuted[:, ROT6D] = features[:, D.MIRROR_INDEX[ROT6D]]
    assert _fk_error(only_permuted, TARGET_BONE_LENGTHS[MIRROR_PERMUTATION[1:] - 1]) > 1e-2


# --- training windows and evaluation clips --------------------------------------------


def _find_in(clip: np.ndarray, window: np.ndarray) -> int:
    """The offset of ``window`` inside ``clip`` (raw features), or -1."""
    for offset in range(len(clip) - len(window) + 1):
        if np.allclose(clip[offset : offset + len(window)], window, atol=1e-4):
            return offset
    return -1


def test_windows_shapes_masks_and_normalisation(clips, folder):
    short = clips[0][:30]  # shorter than the window: kept whole (28 frames), padded
    dataset = D.WindowDataset([clips[1], short], folder.mean, folder.std, window=64)
    assert len(dataset) == 4 + 1  # ceil(198 / 64) + ceil(30 / 64)
    torch.manual_seed(0)
    for item in range(len(dataset)):
        sample = dataset[item]
        features, mask = sample["features"], sample["mask"]
        assert features.shape == (64, FEATURE_DIM) and features.dtype == torch.float32
        assert mask.shape == (64,) and mask.dtype == torch.bool
        length = int(mask.sum())
        assert mask[:length].all() and length % 4 == 0
        raw = features[:length].numpy() * folder.std + folder.mean
        if item < 4:
            assert length == 64 and _find_in(clips[1], raw) >= 0
        else:
            assert length == 28 and _find_in(short, raw) == 0
            assert features[length:].abs().sum() == 0


def test_random_window_lengths_and_mirroring(clips, folder):
    clip = clips[2][:64]
    dataset = D.WindowDataset(
        [clip], folder.mean, folder.std, window=64, min_window=32, mirror=True
    )
    torch.manual_seed(1)
    lengths, mirrored, plain = set(), 0, 0
    for _ in range(60):
        sample = dataset[0]
        length = int(sample["mask"].sum())
        lengths.add(length)
        raw = sample["features"][:length].numpy() * folder.std + folder.mean
        if _find_in(clip, raw) >= 0:
            plain += 1
        else:
            assert _find_in(D.mirror_features(clip), raw) >= 0
            mirrored += 1
    assert lengths <= set(range(32, 65, 4)) and len(lengths) > 4
    assert mirrored > 10 and plain > 10
    with pytest.raises(ValueError, match="multiple of 4"):
        D.WindowDataset([clip], folder.mean, folder.std, window=30)


def test_eval_dataset_is_deterministic_and_padded(clips, folder):
    ids = CLIPS + ["tiny"]
    dataset = D.EvalDataset(clips + [clips[0][:20]], folder.mean, folder.std, ids)
    # 'tiny' (< 40 frames) is left out; lengths are cut to multiples of 4, at most 196
    assert [dataset[i]["id"] for i in range(len(dataset))] == CLIPS
    lengths = [len(dataset[i]["features"]) for i in range(len(dataset))]
    assert lengths == [116, 196, 168, 128]
    batch = D.pad_collate([dataset[i] for i in range(len(dataset))])
    assert batch["features"].shape == (4, 196, FEATURE_DIM)
    assert batch["mask"].sum(1).tolist() == lengths
    assert batch["features"][0, 116:].abs().sum() == 0
    raw = batch["features"][2, :168].numpy() * folder.std + folder.mean
    np.testing.assert_allclose(raw, clips[2][:168], atol=1e-4)
    split = D.EvalDataset([clips[1]], folder.mean, folder.std, min_length=40, max_length=80)
    assert [(dataset_item["start"], len(dataset_item["features"])) for dataset_item in split] == [
        (0, 80),
        (80, 80),
    ]  # the last 36 frames are shorter than min_length
    cropped = D.EvalDataset([clips[1]], folder.mean, folder.std, max_length=80, split_long=False)
    assert len(cropped) == 1 and len(cropped[0]["features"]) == 80


# --- the DataModule --------------------------------------------------------------------


def test_datamodule_on_a_converted_folder(converted):
    module = D.MotionDataModule(
        data_dirs=[str(converted)], window=32, batch_size=2, val_split="test"
    )
    assert module.mean is None
    module.setup("fit")
    # one folder with its own statistics: those are used
    np.testing.assert_array_equal(module.mean, np.load(converted / "Mean.npy"))
    assert module.mean.dtype == module.std.dtype == np.float32
    batch = next(iter(module.train_dataloader()))
    assert batch["features"].shape == (2, 32, FEATURE_DIM) and batch["mask"].shape == (2, 32)
    assert batch["mask"].dtype == torch.bool
    assert batch["features"].dtype == torch.float32
    val = next(iter(module.val_dataloader()))
    test_ids = (converted / "test.txt").read_text().split()
    assert val["ids"] == test_ids and val["features"].shape[0] == len(test_ids)
    assert val["mask"].shape == val["features"].shape[:2]


def test_datamodule_exclusions_and_statistics(converted, humanml3d_dir, tmp_path):
    module = D.MotionDataModule(
        data_dirs=[str(converted), str(humanml3d_dir)],
        window=16,
        batch_size=4,
        train_split="all",
        val_split="all",
        exclude=["^M"],
    )
    module.setup("fit")
    train_ids, train_clips = module.clips("all")
    assert sorted(train_ids) == sorted(
        f"{name}_{i}" for name in (converted.name, "humanml3d") for i in CLIPS[:3]
    )
    heldout_ids, _ = module.clips("all", heldout=True)
    assert sorted(heldout_ids) == sorted(f"{n}_M010655" for n in (converted.name, "humanml3d"))
    frames = np.concatenate(train_clips)
    np.testing.assert_allclose(module.mean, frames.mean(0), atol=1e-5)
    assert next(iter(module.heldout_dataloader()))["features"].shape[0] == 2
    limited = D.MotionDataModule(
        data_dirs=[str(converted)], train_split="all", max_clips=2, stats_dir=str(humanml3d_dir)
    )
    limited.setup("fit")
    assert len(limited.clips("all")[0]) == 2
    np.testing.assert_array_equal(limited.mean, np.load(humanml3d_dir / "Mean.npy"))
    with pytest.raises(InputError, match="HumanML3D layout"):
        D.MotionDataModule(data_dirs=[str(tmp_path)]).setup("fit")
