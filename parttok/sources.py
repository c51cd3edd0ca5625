"""Finding motion clips among what a user names on the command line, and loading each as
HumanML3D features: BVH files, feature or joint ``.npy`` files, and folders of either, or
folders in the HumanML3D layout (their ``new_joint_vecs/``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parttok.errors import InputError
from parttok.features import FEATURE_DIM, NUM_JOINTS, check_features, joints_to_features
from parttok.io import is_hidden, is_humanml3d_folder, load_npy

MOTION_SUFFIXES = (".bvh", ".npy")


@dataclass(frozen=True)
class ClipSource:
    """One clip to read: its file, and its path relative to the source root (for outputs
    that mirror the input tree)."""

    path: Path
    relative: Path

    @property
    def name(self) -> str:
        return self.path.stem


def find_clips(
    sources: list[str | Path],
    suffixes: tuple[str, ...] = MOTION_SUFFIXES,
    split: str | None = None,
) -> list[ClipSource]:
    """Every clip under ``sources``, in a stable order, skipping hidden files and folders
    (temporaries of unfinished writes among them); a missing source raises InputError.
    With ``split``, only the clips a HumanML3D-layout folder's ``<split>.txt`` lists (every
    source must be such a folder)."""
    clips: list[ClipSource] = []
    for source in map(Path, sources):
        if split is not None and not (source.is_dir() and is_humanml3d_folder(source)):
            raise InputError(f"{source}: a split needs a folder in the HumanML3D layout")
        if source.is_file():
            clips.append(ClipSource(source, Path(source.name)))
        elif source.is_dir():
            root = source / "new_joint_vecs" if is_humanml3d_folder(source) else source
            if not root.is_dir():
                raise InputError(f"{source}: a HumanML3D folder without new_joint_vecs/")
            files = sorted(
                p
                for p in root.rglob("*")
                if p.suffix.lower() in suffixes and not is_hidden(p, root) and p.is_file()
            )
            if split is not None:
                listed = _split_ids(source, split)
                files = [p for p in files if p.stem in listed]
            clips += [ClipSource(p, p.relative_to(root)) for p in files]
        else:
            raise InputError(f"{source}: no such file or folder")
    return clips


def _split_ids(folder: Path, split: str) -> set[str]:
    path = folder / f"{split}.txt"
    try:
        return set(path.read_text(encoding="utf-8").split())
    except (OSError, UnicodeDecodeError):
        raise InputError(f"{path}: no such split list") from None


def load_clip_features(path: str | Path, rig: str = "auto") -> np.ndarray:
    """A clip as raw (T, 263) float32 features: BVH is imported (``rig`` maps its joints),
    a (T, 263) ``.npy`` is validated, a (T, 22, 3) joints ``.npy`` is converted."""
    path = Path(path)
    try:
        return _load(path, rig)
    except InputError as error:
        if str(path) in str(error):
            raise
        raise type(error)(f"{path}: {error}") from None


def _load(path: Path, rig: str) -> np.ndarray:
    if path.suffix.lower() == ".bvh":
        from parttok.bvh import load_bvh

        return _converted(load_bvh(path, rig=rig).joints, path)
    if path.suffix.lower() != ".npy":
        raise InputError(f"{path}: not a .bvh or .npy file")
    array = load_npy(path)
    if array.ndim == 3 and array.shape[1:] == (NUM_JOINTS, 3):
        return _converted(array, path)
    if array.ndim == 2 and array.shape[-1] != FEATURE_DIM and array.shape[-1] != 251:
        raise InputError(
            f"{path}: expected (T, 263) features or (T, 22, 3) joints, got {array.shape}"
        )
    return check_features(array, name=str(path))


def _converted(joints: np.ndarray, path: Path) -> np.ndarray:
    """(T, 22, 3) joints -> checked (T - 1, 263) features (degenerate poses give NaN)."""
    return check_features(joints_to_features(joints), name=f"{path} (converted)")
