"""Reading motion data for training and evaluation, and writing it in the HumanML3D layout.

- ``HumanML3DFolder``: a folder in the HumanML3D layout (features, joints, captions with
  sub-clip tags, split files, statistics).
- ``WindowDataset`` (random training crops, optional left/right mirroring), ``EvalDataset``
  (deterministic full clips, padded by ``pad_collate``) and ``MotionDataModule``.
- ``convert_sources``: BVH files, joint/feature ``.npy`` files and HumanML3D folders ->
  a HumanML3D-layout folder, resumably and in parallel (the ``parttok convert`` command).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import multiprocessing
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from parttok.augment import (
    Augmentation,
    change_speed,
    crouch,
    jump,
    lean,
    splice_arms,
    swing_limb,
    tilt,
    turn,
)
from parttok.cli.common import process_batch
from parttok.errors import FeatureError, InputError
from parttok.features import (
    FEATURE_DIM,
    FOOT_CONTACT,
    FPS,
    JOINT_VEL,
    RIC,
    ROOT_LIN_VEL,
    ROOT_ROT_VEL,
    ROT6D,
    check_features,
    check_joints,
    compute_statistics,
    features_to_joints,
    joints_to_features,
)
from parttok.io import (
    BVH_SUFFIXES,
    ensure_output_dir,
    find_files,
    is_humanml3d_folder,
    load_features,
    load_npy,
    npy_files,
    save_npy,
    write_text,
)
from parttok.skeleton import MIRROR_PERMUTATION, NUM_JOINTS

# Bump when joints_to_features or the BVH import changes its output: a converted folder
# written under another version is converted again.
FEATURE_VERSION = "2"
FEATURE_VERSION_FILE = "feature_version.txt"
# While a folder holds clips of an older feature version: the ids already converted again.
CONVERTED_AGAIN_FILE = "converted_again.txt"
FRAMES_PER_STEP = 4  # the tokenizers downsample time by 4: lengths are cut to multiples
SPLITS = {"train": 80, "val": 10, "test": 10}  # percent of clips, by a hash of the id


# ---------------------------------------------------------------------------------------
# Captions


@dataclass(frozen=True)
class Caption:
    """One line of a HumanML3D text file: ``caption#tokens#from#to``.

    ``start``/``end`` are seconds; both 0.0 mean the whole clip, otherwise the caption
    describes frames ``int(start * 20)`` to ``int(end * 20)`` (20 fps).
    """

    text: str
    tokens: tuple[str, ...]
    start: float = 0.0
    end: float = 0.0

    @property
    def whole_clip(self) -> bool:
        return self.start == 0.0 and self.end == 0.0

    def frame_range(self, length: int, fps: int = FPS) -> tuple[int, int]:
        """The [first, last) frames of a clip of ``length`` frames this caption describes."""
        if self.whole_clip:
            return 0, length
        return min(int(self.start * fps), length), min(int(self.end * fps), length)

    def line(self) -> str:
        return f"{self.text}#{' '.join(self.tokens)}#{self.start}#{self.end}"


def parse_caption(line: str, name: str = "caption") -> Caption:
    """Parse ``caption#tokens#from#to``; a NaN time counts as 0.0, as in the reference."""
    parts = line.rstrip("\r\n").split("#")
    if len(parts) < 4:
        raise InputError(f"{name}: expected 'caption#tokens#from#to', got {line.strip()!r}")
    try:
        start, end = (float(value) for value in parts[-2:])
    except ValueError:
        raise InputError(f"{name}: bad time tags in {line.strip()!r}") from None
    return Caption(
        text="#".join(parts[:-3]).strip(),
        tokens=tuple(parts[-3].split()),
        start=0.0 if np.isnan(start) else start,
        end=0.0 if np.isnan(end) else end,
    )


def read_captions(path: str | os.PathLike) -> list[Caption]:
    """Every caption in a HumanML3D text file (blank lines ignored)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: unreadable caption file ({error})") from None
    return [
        parse_caption(line, f"{path}:{number}")
        for number, line in enumerate(lines, 1)
        if line.strip()
    ]


def caption_line(text: str) -> str:
    """A whole-clip caption line for ``text``. Tokens are the lower-cased words tagged
    ``/OTHER`` (a part-of-speech tag the reference evaluators' vocabulary knows)."""
    text = " ".join(text.replace("#", " ").split())
    tokens = " ".join(f"{word}/OTHER" for word in re.findall(r"[a-z0-9']+", text.lower()))
    return f"{text}#{tokens}#0.0#0.0"


# ---------------------------------------------------------------------------------------
# HumanML3D folders


class HumanML3DFolder:
    """A folder in the HumanML3D layout: ``new_joint_vecs/<id>.npy`` (T, 263),
    ``new_joints/<id>.npy`` (T, 22, 3), ``texts/<id>.txt``, ``<split>.txt``,
    ``Mean.npy``/``Std.npy``. Ids a split file lists without files on disk are ignored."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir() or not is_humanml3d_folder(self.root):
            raise InputError(f"{self.root}: not a folder in the HumanML3D layout")

    def __repr__(self) -> str:
        return f"HumanML3DFolder({str(self.root)!r})"

    def features_path(self, clip_id: str) -> Path:
        return self.root / "new_joint_vecs" / f"{clip_id}.npy"

    def joints_path(self, clip_id: str) -> Path:
        return self.root / "new_joints" / f"{clip_id}.npy"

    def ids(self, split: str | None = None) -> list[str]:
        """Clip ids with features on disk, sorted; restricted to ``<split>.txt`` if given
        (in the split file's order)."""
        folder = self.root / "new_joint_vecs"
        present = {path.stem for path in npy_files(folder)}
        if split is None:
            return sorted(present)
        split_file = self.root / f"{split}.txt"
        if not split_file.is_file():
            raise InputError(f"{split_file}: no such split file")
        listed = split_file.read_text(encoding="utf-8").split()
        return [clip_id for clip_id in dict.fromkeys(listed) if clip_id in present]

    def features(self, clip_id: str) -> np.ndarray:
        """(T, 263) float32, validated."""
        return load_features(self.features_path(clip_id))

    def joints(self, clip_id: str) -> np.ndarray:
        """(T, 22, 3) float32; recovered from the features when ``new_joints`` lacks it."""
        path = self.joints_path(clip_id)
        if not path.is_file():
            return features_to_joints(self.features(clip_id))
        joints = check_joints(load_npy(path), name=str(path), min_frames=1)
        return joints.astype(np.float32)

    def captions(self, clip_id: str) -> list[Caption]:
        """The clip's captions; an empty list when it has no text file."""
        path = self.root / "texts" / f"{clip_id}.txt"
        return read_captions(path) if path.is_file() else []

    @property
    def has_statistics(self) -> bool:
        return (self.root / "Mean.npy").is_file() and (self.root / "Std.npy").is_file()

    @functools.cached_property
    def _statistics(self) -> tuple[np.ndarray, np.ndarray]:
        return load_statistics(self.root)

    @property
    def mean(self) -> np.ndarray:
        """(263,) float32 from Mean.npy."""
        return self._statistics[0]

    @property
    def std(self) -> np.ndarray:
        """(263,) float32 from Std.npy."""
        return self._statistics[1]


def load_statistics(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``Mean.npy`` and ``Std.npy`` of a folder as float32 (263,), validated."""
    arrays = []
    for name in ("Mean.npy", "Std.npy"):
        path = Path(folder) / name
        array = load_npy(path)
        if array.shape != (FEATURE_DIM,) or not np.isfinite(array).all():
            raise FeatureError(f"{path}: expected 263 finite numbers, got shape {array.shape}")
        arrays.append(array.astype(np.float32))
    if (arrays[1] <= 0).any():
        raise FeatureError(f"{Path(folder) / 'Std.npy'}: standard deviations must be positive")
    return arrays[0], arrays[1]


# ---------------------------------------------------------------------------------------
# Clip import (BVH and .npy) and the BVH cache


def bvh_features(path: str | os.PathLike, rig: str = "auto") -> np.ndarray:
    """A BVH file -> (T-1, 263) float32 features (imported at 20 fps through ``rig``)."""
    from parttok.bvh import load_bvh

    with _named(path):
        motion = load_bvh(path, rig=rig)
        return _features_from_joints(motion.joints, path)


def clip_features(path: str | os.PathLike, rig: str = "auto") -> np.ndarray:
    """Any clip file -> (T, 263) float32 features: a BVH is imported, a (T, 22, 3) ``.npy``
    converted by the reference pipeline, a (T, 263) ``.npy`` validated."""
    path = Path(path)
    if path.suffix.lower() != ".npy":
        return bvh_features(path, rig)
    array = load_npy(path)
    if array.ndim == 3:
        if array.shape[1:] != (NUM_JOINTS, 3):
            raise FeatureError(f"{path}: expected (T, 22, 3) joints, got shape {array.shape}")
        return _features_from_joints(array, path)
    return check_features(array, name=str(path))


def _features_from_joints(joints: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    joints = check_joints(joints, name=str(path), min_frames=2)
    with _named(path):
        return check_features(joints_to_features(joints), name=f"{path} (converted)")


@contextlib.contextmanager
def _named(path: str | os.PathLike) -> Iterator[None]:
    """Prefix the file name to an InputError message that lacks it."""
    try:
        yield
    except InputError as error:
        if str(path) in str(error):
            raise
        raise type(error)(f"{path}: {error}") from None


def _one_thread_in_workers() -> None:
    """In a forked worker process, keep torch on one thread: the OpenMP pool inherited from
    a parent that already used it hangs the child's first parallel operation."""
    if multiprocessing.parent_process() is not None:
        torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------
# Mirroring


def _mirror_layout() -> tuple[np.ndarray, np.ndarray]:
    """Indices and signs such that mirrored[..., i] = sign[i] * features[..., index[i]].

    Mirroring swaps left and right joints (MIRROR_PERMUTATION) and negates world X (the
    reflection M = diag(-1, 1, 1)). The root's yaw turns the other way (rotation velocity
    negated) and its facing frame is reflected too, so every vector in that frame (root
    XZ velocity, ric, joint velocities) has its X negated; a local rotation R becomes
    M R M, whose first two columns (the 6D) change sign as (+, -, -) and (-, +, +); the
    foot contacts (L ankle, L foot, R ankle, R foot) swap sides.
    """
    index = np.arange(FEATURE_DIM)
    sign = np.ones(FEATURE_DIM, dtype=np.float32)
    sign[ROOT_ROT_VEL] = -1.0
    sign[ROOT_LIN_VEL.start] = -1.0
    source = MIRROR_PERMUTATION[1:] - 1  # joints 1..21 as rows of the ric/6D slices
    index[RIC] = (RIC.start + 3 * source[:, None] + np.arange(3)).ravel()
    sign[RIC] = np.tile([-1.0, 1.0, 1.0], NUM_JOINTS - 1)
    index[ROT6D] = (ROT6D.start + 6 * source[:, None] + np.arange(6)).ravel()
    sign[ROT6D] = np.tile([1.0, -1.0, -1.0, -1.0, 1.0, 1.0], NUM_JOINTS - 1)
    index[JOINT_VEL] = (JOINT_VEL.start + 3 * MIRROR_PERMUTATION[:, None] + np.arange(3)).ravel()
    sign[JOINT_VEL] = np.tile([-1.0, 1.0, 1.0], NUM_JOINTS)
    index[FOOT_CONTACT] = FOOT_CONTACT.start + np.array([2, 3, 0, 1])
    return index, sign


MIRROR_INDEX, MIRROR_SIGN = _mirror_layout()


def mirror_features(features: np.ndarray) -> np.ndarray:
    """(..., 263) raw (unnormalised) features of a motion -> those of its mirror image
    (left and right swapped, X negated). Mirroring twice is the identity."""
    return features[..., MIRROR_INDEX] * MIRROR_SIGN


def mirror_joints(joints: np.ndarray) -> np.ndarray:
    """(..., 22, 3) positions -> their mirror image: left/right swapped, X negated."""
    return joints[..., MIRROR_PERMUTATION, :] * np.array([-1.0, 1.0, 1.0], dtype=joints.dtype)


# ---------------------------------------------------------------------------------------
# Training windows and evaluation clips


# Frames each side of an augmented window that are changed with it and cut after the
# features are made: three times the reference's facing smoothing (sigma 20 frames).
AUGMENT_CONTEXT = 60


def _concatenate(arrays: list[np.ndarray], row_shape: tuple[int, ...]) -> np.ndarray:
    """Arrays stacked along their first axis as float32 (an empty (0, *row_shape) for none)."""
    if not arrays:
        return np.zeros((0, *row_shape), np.float32)
    return np.concatenate(arrays).astype(np.float32, copy=False)


def _usable_length(length: int) -> int:
    return length - length % FRAMES_PER_STEP


class WindowDataset(Dataset):
    """Random crops of ``window`` frames (a multiple of 4) from a list of (T, 263) clips,
    normalised by ``mean``/``std``.

    Each clip appears ``ceil(T / window)`` times per epoch, so an epoch sees about every
    frame once. A clip shorter than the crop gives all of it (cut to a multiple of 4),
    zero-padded, with ``mask`` False on the padding. With ``min_window`` the crop length
    is drawn uniformly from the multiples of 4 in [min_window, window] (then padded to
    ``window``). With ``mirror`` half the items are mirrored left/right. With ``augment``
    (and each clip's (T, 22, 3) ``joints``) a share of the items are made in joint space,
    played at another speed, leaned, turned, given another window's arms, a limb raised and
    lowered, a squat, a tilt or a jump (see ``parttok.augment``), then turned into features.
    Clips shorter than 4 frames are dropped. Randomness comes from torch, so DataLoader
    workers differ.
    """

    def __init__(
        self,
        clips: Sequence[np.ndarray],
        mean: np.ndarray,
        std: np.ndarray,
        window: int = 64,
        min_window: int | None = None,
        mirror: bool = False,
        joints: Sequence[np.ndarray] | None = None,
        augment: Augmentation | None = None,
    ):
        if window < FRAMES_PER_STEP or window % FRAMES_PER_STEP:
            raise ValueError(f"window must be a positive multiple of 4, got {window}")
        min_window = window if min_window is None else min_window
        if not FRAMES_PER_STEP <= min_window <= window or min_window % FRAMES_PER_STEP:
            raise ValueError(f"min_window must be a multiple of 4 in [4, {window}]")
        if augment is not None and (joints is None or len(joints) != len(clips)):
            raise ValueError("augment needs the joints of every clip")
        self.window, self.min_window, self.mirror = window, min_window, mirror
        self.augment = augment
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        kept = [i for i, clip in enumerate(clips) if len(clip) >= FRAMES_PER_STEP]
        lengths = np.array([len(clips[i]) for i in kept], dtype=np.int64)
        # one array for all frames: cheap to share with forked DataLoader workers
        self.frames = _concatenate([clips[i] for i in kept], (FEATURE_DIM,))
        self.starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        self.lengths = lengths - lengths % FRAMES_PER_STEP
        self.index = np.repeat(np.arange(len(kept)), -(-lengths // window))
        if augment is not None:
            joint_lengths = np.array([len(joints[i]) for i in kept], dtype=np.int64)
            self.joints = _concatenate([joints[i] for i in kept], (NUM_JOINTS, 3))
            self.joint_starts = np.concatenate(([0], np.cumsum(joint_lengths)[:-1]))
            self.joint_lengths = joint_lengths

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        clip = self.index[item]
        low, high = self.min_window // FRAMES_PER_STEP, self.window // FRAMES_PER_STEP
        steps = torch.randint(low, high + 1, ()).item()
        crop = min(FRAMES_PER_STEP * steps, int(self.lengths[clip]))
        offset = torch.randint(0, int(self.lengths[clip]) - crop + 1, ()).item()
        augment = self.augment is not None and torch.rand(()).item() < self.augment.probability
        if augment and self.joint_lengths[clip] > crop:
            frames = self._augmented(clip, crop)
        else:
            first = self.starts[clip] + offset
            frames = self.frames[first : first + crop]  # (crop, 263)
        if self.mirror and torch.rand(()).item() < 0.5:
            frames = mirror_features(frames)
        features = np.zeros((self.window, FEATURE_DIM), dtype=np.float32)
        features[:crop] = (frames - self.mean) / self.std
        mask = np.arange(self.window) < crop
        return {"features": torch.from_numpy(features), "mask": torch.from_numpy(mask)}

    def _clip_joints(self, clip: int) -> np.ndarray:
        first = self.joint_starts[clip]
        return self.joints[first : first + self.joint_lengths[clip]]  # (T, 22, 3)

    def _augmented(self, clip: int, crop: int) -> np.ndarray:
        """(crop, 263) raw features of an augmented window of ``clip`` (its joints have more
        than ``crop`` frames).

        Up to ``AUGMENT_CONTEXT`` frames each side go through the same changes and into the
        features (the reference pipeline smooths the facing over about 60 frames and puts the
        floor and the first facing per clip), then are cut away.
        """
        augment = self.augment
        joints = self._clip_joints(clip).astype(np.float64)
        last = len(joints) - 1
        speed = augment.draw_speed(len(joints), crop)
        start = float(int((last - speed * crop) * torch.rand(()).item()))  # a whole frame
        before = min(AUGMENT_CONTEXT, int(start / speed))
        after = min(AUGMENT_CONTEXT, int((last - start - speed * crop) / speed))
        frames = before + crop + 1 + after
        window = change_speed(joints, speed, frames, start - before * speed)  # (frames, 22, 3)
        window = lean(window, augment.draw_lean())
        window = turn(window, augment.draw_turn(frames, before, crop))
        if torch.rand(()).item() < augment.arm_swap:
            donor = int(torch.randint(0, len(self.joint_lengths), ()).item())
            donor_joints = self._clip_joints(donor)
            if len(donor_joints) >= frames:
                first = int(torch.randint(0, len(donor_joints) - frames + 1, ()).item())
                side = ("left", "right", "both")[int(torch.randint(0, 3, ()).item())]
                donated = donor_joints[first : first + frames].astype(np.float64)
                window = splice_arms(window, donated, side)
        if augment.limb_swing > 0 and torch.rand(()).item() < augment.limb_swing:
            limb, outward, degrees = augment.draw_swing(frames, before, crop)
            window = swing_limb(window, limb, degrees, outward)
        if augment.crouch > 0 and torch.rand(()).item() < augment.crouch:
            depth, forward = augment.draw_crouch(frames, before, crop)
            window = crouch(window, depth, forward)
        if augment.tilt > 0 and torch.rand(()).item() < augment.tilt:
            window = tilt(window, augment.draw_tilt(frames, before, crop))
        if augment.jump > 0 and torch.rand(()).item() < augment.jump:
            window = jump(window, augment.draw_jump(frames, before, crop))
        return joints_to_features(window)[before : before + crop]  # (crop, 263)


class EvalDataset(Dataset):
    """Deterministic full clips, normalised, lengths cut to multiples of 4.

    Clips shorter than ``min_length`` are left out. Clips longer than ``max_length`` are
    split into consecutive segments of ``max_length`` frames (the last kept if at least
    ``min_length``) with ``split_long``, else cut to their first ``max_length`` frames (the
    field's test protocol: 40 <= length, at most 196 frames). Batch with ``pad_collate``.
    """

    def __init__(
        self,
        clips: Sequence[np.ndarray],
        mean: np.ndarray,
        std: np.ndarray,
        ids: Sequence[str] | None = None,
        min_length: int = 40,
        max_length: int | None = 196,
        split_long: bool = True,
    ):
        ids = list(ids) if ids is not None else [str(i) for i in range(len(clips))]
        self.clips, self.ids = list(clips), ids
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        limit = _usable_length(max_length) if max_length else None
        self.segments: list[tuple[int, int, int]] = []  # (clip, first frame, length)
        for number, clip in enumerate(self.clips):
            length = _usable_length(len(clip))
            if limit is None or length <= limit:
                pieces = [(0, length)]
            elif split_long:
                pieces = [(first, min(limit, length - first)) for first in range(0, length, limit)]
            else:
                pieces = [(0, limit)]
            self.segments += [(number, a, n) for a, n in pieces if n >= max(min_length, 1)]

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, item: int) -> dict:
        clip, first, length = self.segments[item]
        frames = self.clips[clip][first : first + length]
        features = (frames - self.mean) / self.std
        return {
            "features": torch.from_numpy(features.astype(np.float32)),
            "id": self.ids[clip],
            "start": first,
        }


def pad_collate(items: list[dict]) -> dict:
    """Batch EvalDataset items: ``features`` (B, L, 263) zero-padded to the longest,
    ``mask`` (B, L) True on real frames, ``lengths`` (B,), ``ids`` and ``starts`` lists."""
    lengths = torch.tensor([len(item["features"]) for item in items])
    features = torch.nn.utils.rnn.pad_sequence([item["features"] for item in items], True)
    mask = torch.arange(features.shape[1])[None, :] < lengths[:, None]
    return {
        "features": features,
        "mask": mask,
        "lengths": lengths,
        "ids": [item["id"] for item in items],
        "starts": [item["start"] for item in items],
    }


# ---------------------------------------------------------------------------------------
# The Lightning DataModule


class MotionDataModule(pl.LightningDataModule):
    """Training windows and validation clips from folders in the HumanML3D layout.

    Training: random ``window``-frame crops of the ``train_split`` clips (see
    ``WindowDataset``; ``min_window`` for random lengths, ``mirror`` for left/right
    augmentation, ``augment`` for speed, lean, turn, arm swaps, limb swings, squats, jumps
    and tilts made from the clips' joints), batches ``{"features": (B, window, 263), "mask":
    (B, window)}``.
    Validation/test: the ``val_split``/``test_split`` clips whole (``EvalDataset``: at least
    ``val_min_length`` frames, longer clips split into ``val_max_length`` segments), padded
    to the longest in the batch, with the same two keys plus ``lengths`` and ``ids``.

    ``exclude``: regular expressions (``re.search``) on clip ids; matching clips are left
    out of training and validation, and ``heldout_dataloader()`` serves them (every split)
    for an unseen-motion measure. ``max_clips`` keeps an evenly spaced subset of each split.

    Statistics (``.mean``/``.std``, float32 (263,), set by ``setup``): from ``stats_dir``'s
    Mean.npy/Std.npy if given; else the data folder's own when there is exactly one folder
    and nothing is excluded (as ``convert`` writes them, or HumanML3D's shipped ones);
    else computed from the training clips with ``compute_statistics``.
    """

    def __init__(
        self,
        data_dirs: list[str],
        window: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        mirror: bool = False,
        augment: Augmentation | dict | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        exclude: list[str] | None = None,
        max_clips: int | None = None,
        stats_dir: str | None = None,
        min_window: int | None = None,
        val_min_length: int = 40,
        val_max_length: int = 196,
    ):
        super().__init__()
        # kept as plain numbers in the hyperparameters (checkpoints stay free of our classes)
        augment = asdict(augment) if isinstance(augment, Augmentation) else augment
        self.augment = Augmentation.from_settings(augment) if augment is not None else None
        self.save_hyperparameters()
        if not data_dirs:
            raise InputError("data_dirs: give at least one folder in the HumanML3D layout")
        self.exclude = [re.compile(pattern) for pattern in exclude or []]
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.train_dataset: WindowDataset | None = None
        self._clips: dict[str, tuple[list[str], list[np.ndarray]]] = {}
        self._chosen: dict[str, list[tuple[HumanML3DFolder, str]]] = {}

    @functools.cached_property
    def folders(self) -> list[HumanML3DFolder]:
        return [HumanML3DFolder(path) for path in self.hparams.data_dirs]

    def _excluded(self, clip_id: str) -> bool:
        return any(pattern.search(clip_id) for pattern in self.exclude)

    def clips(self, split: str, heldout: bool = False) -> tuple[list[str], list[np.ndarray]]:
        """(ids, raw features) of a split over all folders; with ``heldout`` the excluded
        clips of every split instead. Ids of the second and later folders are prefixed
        with their folder's name when they collide."""
        key = "\0heldout" if heldout else split
        if key not in self._clips:
            chosen: list[tuple[HumanML3DFolder, str]] = []
            for folder in self.folders:
                ids = folder.ids(None if heldout else split)
                chosen += [(folder, i) for i in ids if self._excluded(i) == heldout]
            if self.hparams.max_clips is not None and len(chosen) > self.hparams.max_clips:
                keep = np.linspace(0, len(chosen) - 1, self.hparams.max_clips).round()
                chosen = [chosen[i] for i in np.unique(keep.astype(int))]
            names = Counter(i for _, i in chosen)
            ids = [i if names[i] == 1 else f"{f.root.name}_{i}" for f, i in chosen]
            self._clips[key] = (ids, [folder.features(i) for folder, i in chosen])
            self._chosen[key] = chosen
        return self._clips[key]

    def joints(self, split: str) -> list[np.ndarray]:
        """(T, 22, 3) positions of the clips ``clips(split)`` gives, in the same order."""
        self.clips(split)
        return [folder.joints(i) for folder, i in self._chosen[split]]

    def setup(self, stage: str | None = None) -> None:
        if self.mean is not None:
            return
        hp = self.hparams
        _, train_clips = self.clips(hp.train_split)
        if not train_clips:
            raise InputError(f"no {hp.train_split!r} clips in {', '.join(hp.data_dirs)}")
        if hp.stats_dir is not None:
            self.mean, self.std = load_statistics(hp.stats_dir)
        elif len(self.folders) == 1 and self.folders[0].has_statistics and not self.exclude:
            self.mean, self.std = self.folders[0].mean, self.folders[0].std
        else:
            self.mean, self.std = compute_statistics(train_clips)
        joints = self.joints(hp.train_split) if self.augment is not None else None
        self.train_dataset = WindowDataset(
            train_clips, self.mean, self.std, hp.window, hp.min_window, hp.mirror, joints,
            self.augment,
        )  # fmt: skip
        if not len(self.train_dataset):
            raise InputError(f"no {hp.train_split!r} clip has {FRAMES_PER_STEP} frames or more")

    def _eval_dataset(self, split: str, heldout: bool = False) -> EvalDataset:
        hp = self.hparams
        ids, clips = self.clips(split, heldout)
        return EvalDataset(clips, self.mean, self.std, ids, hp.val_min_length, hp.val_max_length)

    def _eval_loader(self, dataset: EvalDataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            collate_fn=pad_collate,
        )

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.train_dataset,
            batch_size=hp.batch_size,
            shuffle=True,
            drop_last=len(self.train_dataset) > hp.batch_size,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._eval_dataset(self.hparams.val_split))

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._eval_dataset(self.hparams.test_split))

    def heldout_dataloader(self) -> DataLoader:
        """The clips ``exclude`` held out of training (all splits), as validation batches."""
        return self._eval_loader(self._eval_dataset(self.hparams.val_split, heldout=True))


# ---------------------------------------------------------------------------------------
# Conversion into the HumanML3D layout


@dataclass(frozen=True)
class ConvertTask:
    """One clip to convert: its source file, its id in the output, and its captions."""

    clip_id: str
    path: Path
    out: Path
    rig: str = "auto"
    force: bool = False
    captions: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConvertOutcome:
    clip_id: str
    frames: int  # feature rows written (0 when skipped)
    skipped: bool


@dataclass
class ConvertReport:
    """What ``convert_sources`` did."""

    out: Path
    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    frames: int = 0  # feature rows written by this run
    total_clips: int = 0  # clips in the output folder afterwards
    stale: list[str] = field(default_factory=list)  # clips left from another feature version


def convert_clip(task: ConvertTask) -> ConvertOutcome:
    """Convert one clip; skipped when its outputs exist (unless ``task.force``)."""
    _one_thread_in_workers()
    vecs = task.out / "new_joint_vecs" / f"{task.clip_id}.npy"
    joints_file = task.out / "new_joints" / f"{task.clip_id}.npy"
    if not task.force and vecs.is_file() and joints_file.is_file():
        return ConvertOutcome(task.clip_id, 0, skipped=True)
    features = clip_features(task.path, task.rig)  # (T, 263)
    joints = features_to_joints(features)  # (T, 22, 3), consistent with the features
    save_npy(joints_file, joints.astype(np.float32))
    save_npy(vecs, features)
    return ConvertOutcome(task.clip_id, len(features), skipped=False)


def plan_conversion(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    rig: str = "auto",
    force: bool = False,
) -> list[ConvertTask]:
    """Tasks for every clip among ``sources``: BVH files, folders searched recursively for
    BVH, ``.npy`` joint/feature files, or HumanML3D-layout folders (each id's
    ``new_joints`` file, else its ``new_joint_vecs`` file, with its ``texts`` copied)."""
    entries: list[tuple[Path, Path, tuple[str, ...]]] = []  # (file, id path, captions)
    for source in map(Path, sources):
        if source.is_dir() and is_humanml3d_folder(source):
            entries += _humanml3d_entries(source)
        else:
            for path in find_files([source], BVH_SUFFIXES):
                entries.append((path, path, tuple(_label_captions(path))))
    unique: dict[Path, tuple[Path, Path, tuple[str, ...]]] = {}
    for entry in entries:
        unique.setdefault(entry[0].resolve(), entry)
    entries = list(unique.values())
    ids = unique_ids([id_path for _, id_path, _ in entries])
    return [
        ConvertTask(clip_id, path, Path(out), rig, force, captions)
        for clip_id, (path, _, captions) in zip(ids, entries, strict=True)
    ]


def _humanml3d_entries(root: Path) -> list[tuple[Path, Path, tuple[str, ...]]]:
    by_id: dict[str, Path] = {}
    for subfolder in ("new_joint_vecs", "new_joints"):  # new_joints wins when both exist
        by_id.update({p.stem: p for p in npy_files(root / subfolder)})
    entries = []
    for clip_id in sorted(by_id):
        text = root / "texts" / f"{clip_id}.txt"
        captions = _text_lines(text) if text.is_file() else ()
        entries.append((by_id[clip_id], root / f"{clip_id}.npy", captions))
    return entries


def _text_lines(path: Path) -> tuple[str, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        print(f"{path}: unreadable caption file, not copied", file=sys.stderr)
        return ()
    return tuple(line for line in text.splitlines() if line.strip())


def unique_ids(paths: Sequence[Path]) -> list[str]:
    """File stems, made unique by prefixing parent folder names (as many as it takes) to
    the stems that collide, then a numeric suffix as a last resort."""
    depth = [0] * len(paths)

    def name(i: int) -> str:
        parts = [*paths[i].parent.parts[len(paths[i].parent.parts) - depth[i] :], paths[i].stem]
        return "_".join(parts)

    while True:
        ids = [name(i) for i in range(len(paths))]
        counts = Counter(ids)
        clashes = [i for i, clip_id in enumerate(ids) if counts[clip_id] > 1]
        deeper = [i for i in clashes if depth[i] < len(paths[i].parent.parts) - 1]
        if not deeper:
            break
        for i in deeper:
            depth[i] += 1
    seen: Counter[str] = Counter()
    result = []
    for clip_id in ids:
        seen[clip_id] += 1
        result.append(clip_id if seen[clip_id] == 1 else f"{clip_id}_{seen[clip_id]}")
    return result


def capture_key(clip_id: str) -> str:
    """What identifies a clip's capture across sources: HumanML3D's mirrored ids (``M`` +
    digits) are their original's, and CMU trial ids are written as the Character Creator
    retargets name them (``05_06`` from CMU's BVH conversion and ``005_06`` from the same
    capture on the Character Creator rig are one capture, ``005_06``)."""
    key = re.sub(r"^M(?=\d+$)", "", clip_id)
    trial = re.fullmatch(r"(\d+)_(\d+)", key)
    return f"{int(trial[1]):03d}_{int(trial[2]):02d}" if trial else key


def split_of(clip_id: str) -> str:
    """The split of a clip id, from a hash of its ``capture_key`` (80/10/10; stable as clips
    are added): one capture never sits in two splits, whatever source or rig it came from."""
    key = capture_key(clip_id)
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    bound = 0
    for split, percent in SPLITS.items():
        bound += percent
        if bucket < bound:
            return split
    return "test"


def convert_sources(
    sources: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    rig: str = "auto",
    jobs: int | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> ConvertReport:
    """Convert every clip among ``sources`` into the HumanML3D layout under ``out``.

    Writes ``new_joint_vecs/<id>.npy`` (float32 features), ``new_joints/<id>.npy`` (joints
    recovered from them, same length), ``texts/<id>.txt`` (from labels), then indexes the
    whole folder: ``all.txt``, ``train/val/test/train_val.txt`` (``split_of``), and
    ``Mean.npy``/``Std.npy`` over every clip in it. Clips whose outputs exist are skipped
    unless ``force`` or the folder was written by an import of another ``FEATURE_VERSION``
    (``feature_version.txt``); a bad file is reported and left out, never stopping the rest.
    The folder is marked with this version once none of its clips is from another one; until
    then ``converted_again.txt`` lists the clips already converted again (over as many calls
    as it takes), and ``report.stale`` the clips still from the older import.
    """
    out = Path(out)
    marker, again_file = out / FEATURE_VERSION_FILE, out / CONVERTED_AGAIN_FILE
    written = marker.read_text(encoding="utf-8").strip() if marker.is_file() else None
    stale = (out / "new_joint_vecs").is_dir() and written != FEATURE_VERSION
    older = {path.stem for path in npy_files(out / "new_joint_vecs")} if stale else set()
    again = (
        set(again_file.read_text(encoding="utf-8").split())
        if stale and again_file.is_file()
        else set()
    )
    tasks = [
        replace(task, force=True) if task.clip_id in older - again else task
        for task in plan_conversion(sources, out, rig, force)
    ]
    ensure_output_dir(out)  # a file in the way or a read-only disk: one error, before any work
    if not older:  # no clip from another version: marked now, so a killed run's clips count
        _write_if_changed(marker, FEATURE_VERSION)
    if any(task.path.suffix.lower() != ".npy" for task in tasks):
        import parttok.bvh  # noqa: F401  (imported once here, not in every worker)
    done, failed = process_batch(
        tasks, convert_clip, "converting", jobs or os.cpu_count() or 1, show_progress
    )
    report = ConvertReport(out, failed=[(task.path, message) for task, message in failed])
    for task, outcome in done:
        (report.skipped if outcome.skipped else report.converted).append(task.clip_id)
        report.frames += outcome.frames
        if task.captions:
            _write_if_changed(out / "texts" / f"{task.clip_id}.txt", "\n".join(task.captions))
    again |= set(report.converted)
    report.stale = sorted(older - again)
    if report.stale:
        _write_if_changed(again_file, "".join(f"{clip_id}\n" for clip_id in sorted(again)))
    else:
        _write_if_changed(marker, FEATURE_VERSION)
        again_file.unlink(missing_ok=True)
    report.total_clips = write_index(out, refresh_statistics=bool(report.converted))
    return report


def _write_if_changed(path: Path, text: str) -> bool:
    text = text if text.endswith("\n") else text + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    write_text(path, text)
    return True


def write_index(out: str | os.PathLike, refresh_statistics: bool = True) -> int:
    """Write ``all.txt``, the split files and ``Mean.npy``/``Std.npy`` for every clip with
    both feature and joint files in ``out``; returns the number of clips. Files whose
    content would not change are left untouched; statistics are recomputed when
    ``refresh_statistics``, the clip list changed, or they are missing."""
    out = Path(out)
    vecs = {p.stem for p in npy_files(out / "new_joint_vecs")}
    ids = sorted(vecs & {p.stem for p in npy_files(out / "new_joints")})
    if not ids:
        return 0
    listing = "".join(f"{clip_id}\n" for clip_id in ids)
    changed = _write_if_changed(out / "all.txt", listing)
    splits = {split: [i for i in ids if split_of(i) == split] for split in SPLITS}
    splits["train_val"] = [i for i in ids if split_of(i) in ("train", "val")]
    for split, members in splits.items():
        _write_if_changed(out / f"{split}.txt", "".join(f"{i}\n" for i in members))
    missing = not ((out / "Mean.npy").is_file() and (out / "Std.npy").is_file())
    if refresh_statistics or changed or missing:
        clips = []
        for clip_id in ids:
            try:
                clips.append(load_features(out / "new_joint_vecs" / f"{clip_id}.npy"))
            except InputError as error:
                print(f"left out of the statistics: {error}", file=sys.stderr)
        mean, std = compute_statistics(clips)
        save_npy(out / "Mean.npy", mean)
        save_npy(out / "Std.npy", std)
    return len(ids)


# ---------------------------------------------------------------------------------------
# Captions from the labels that come with BVH collections

# Bandai Namco Research Motion Dataset 2 contents, as verb phrases.
_BANDAI_CONTENT = {
    "walk": "walks",
    "walk-turn-left": "walks and turns left",
    "walk-turn-right": "walks and turns right",
    "run": "runs",
    "wave-both-hands": "waves both hands",
    "wave-left-hand": "waves the left hand",
    "wave-right-hand": "waves the right hand",
    "raise-up-both-hands": "raises both hands",
    "raise-up-left-hand": "raises the left hand",
    "raise-up-right-hand": "raises the right hand",
}
_BANDAI_NAME = re.compile(r"^dataset-\d+_(?P<content>[a-z-]+)_(?P<style>[a-z]+)_\d+$")


def bandai_caption(content: str, style: str) -> str:
    """'a person walks in an exhausted style.' from a content and a style label."""
    content = re.sub(r"^dataset-\d+_", "", content)
    style = re.sub(r"^dataset-\d+_", "", style)
    verb = _BANDAI_CONTENT.get(content, f"performs {content.replace('-', ' ')}")
    article = "an" if style[:1] in "aeiou" else "a"
    return f"a person {verb} in {article} {style} style."


def _label_captions(path: Path) -> list[str]:
    """Caption lines for a BVH file from labels beside it: a Bandai Namco ``<name>.json``
    (content/style indices into ``cfg/*_label.txt``, or the file name), a CMU
    ``DESCRIPTIONS.tsv`` row for the file, or a CMU ``descriptions.csv`` row for the
    subject and trial in the name (``001_01``)."""
    texts: list[str] = []
    labels = path.with_suffix(".json")
    match = _BANDAI_NAME.match(path.stem)
    if labels.is_file():
        texts += _bandai_json_caption(labels)
    if not texts and match:
        texts.append(bandai_caption(match["content"], match["style"]))
    description = _tsv_descriptions(path.parent / "DESCRIPTIONS.tsv").get(path.name)
    trial = re.match(r"^(\d+)_(\d+)$", path.stem)
    if description is None and trial:
        key = (int(trial[1]), int(trial[2]))
        description = _csv_descriptions(path.parent / "descriptions.csv").get(key)
    if description:
        texts.append(description.strip().lower().rstrip(".") + ".")
    return [caption_line(text) for text in texts]


def _bandai_json_caption(labels: Path) -> list[str]:
    import json

    try:
        record = json.loads(labels.read_text(encoding="utf-8"))
        content, style = int(record["content"]), int(record["style"])
    except (OSError, ValueError, KeyError, TypeError):
        print(f"{labels}: unreadable labels, ignored", file=sys.stderr)
        return []
    for cfg in (labels.parent / "cfg", labels.parent.parent / "cfg"):
        contents = _label_list(cfg / "content_label.txt")
        styles = _label_list(cfg / "style_label.txt")
        if 0 <= content < len(contents) and 0 <= style < len(styles):
            return [bandai_caption(contents[content], styles[style])]
    return []


@functools.lru_cache(maxsize=64)
def _label_list(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        return ()
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())


@functools.lru_cache(maxsize=64)
def _tsv_descriptions(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", newline="") as stream:
        rows = csv.DictReader(stream, delimiter="\t")
        return {row["file"]: row["description"] for row in rows if row.get("description")}


@functools.lru_cache(maxsize=64)
def _csv_descriptions(path: Path) -> dict[tuple[int, int], str]:
    if not path.is_file():
        return {}
    table: dict[tuple[int, int], str] = {}
    with open(path, encoding="utf-8", errors="replace", newline="") as stream:
        for row in csv.DictReader(stream):
            try:
                key = (int(row["Subject"]), int(row["Trial #"]))
            except (KeyError, TypeError, ValueError):
                continue
            if row.get("Motion Description"):
                table[key] = row["Motion Description"]
    return table
