"""File helpers shared by every command: atomic writes, feature loading, source discovery,
and the one-time extraction of data archives into a cache."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from parttok.errors import FeatureError, InputError
from parttok.features import check_features

BVH_SUFFIXES = (".bvh",)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=target.suffix or ".tmp", dir=target.parent
    )
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it owner-only
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a .npy file atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        np.save(stream, array)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """Load a .npy array without pickles; a damaged file raises InputError."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise InputError(f"{path}: not a readable .npy array ({error})") from None


def load_features(path: str | os.PathLike) -> np.ndarray:
    """Load and validate a (T, 263) HumanML3D feature file as float32."""
    return check_features(load_npy(path), name=str(path))


def is_humanml3d_folder(path: Path) -> bool:
    """A folder in the HumanML3D layout has new_joints/ or new_joint_vecs/."""
    return (path / "new_joints").is_dir() or (path / "new_joint_vecs").is_dir()


def find_files(sources: list[str | os.PathLike], suffixes: tuple[str, ...]) -> list[Path]:
    """Files with the given suffixes among ``sources`` (files, or folders searched
    recursively), sorted within each folder; a missing source raises InputError."""
    found: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found += sorted(p for p in source.rglob("*") if p.suffix.lower() in suffixes)
        elif source.is_file():
            found.append(source)
        else:
            raise InputError(f"{source}: no such file or folder")
    return found


def cache_dir() -> Path:
    """parttok's cache folder: $PARTTOK_CACHE, else ~/.cache/parttok."""
    root = os.environ.get("PARTTOK_CACHE") or Path.home() / ".cache" / "parttok"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def extract_once(archive: str | os.PathLike, cache: Path | None = None) -> Path:
    """Extract a .tar.xz archive into the cache once; return the folder it went to."""
    archive = Path(archive)
    if not archive.is_file():
        raise InputError(f"{archive}: no such archive")
    name = archive.name.removesuffix(".tar.xz").removesuffix(".tar")
    stat = archive.stat()
    folder = (cache or cache_dir()) / f"{name}-{stat.st_size}"
    done = folder / ".extracted"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "xf", str(archive), "-C", str(folder)], check=True)
        done.touch()
    return folder


__all__ = [
    "atomic_path",
    "save_npy",
    "write_text",
    "load_npy",
    "load_features",
    "find_files",
    "is_humanml3d_folder",
    "cache_dir",
    "extract_once",
    "FeatureError",
]


def replace_markdown_section(path: str | os.PathLike, section: str) -> None:
    """Put ``section`` (text starting with its ``## `` heading) into a markdown file in place
    of the section with the same heading (up to the next ``## ``), or append it; atomic."""
    path = Path(path)
    heading = section.splitlines()[0].rstrip()
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    section = section.rstrip("\n") + "\n"
    if start is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), None)
        rest = "" if end is None else "\n" + "".join(lines[end:])
        text = "".join(lines[:start]) + section + rest
    write_text(path, text)


BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


def bfloat16_instructions() -> list[str] | None:
    """The CPU's bfloat16 instruction flags (``BFLOAT16_FLAGS`` in /proc/cpuinfo), or None
    where /proc/cpuinfo does not say: mixed-precision training pays off only with them."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return None
    flags = set(cpuinfo.read_text().split())
    return [flag for flag in BFLOAT16_FLAGS if flag in flags]


def slow_bfloat16(precision: str, device_type: str) -> str | None:
    """Why ``precision`` on ``device_type`` is slow, or None: bfloat16 on a CPU without
    bfloat16 instructions runs slower than float32 (tools/bench_training.py)."""
    if str(precision).startswith("bf16") and device_type == "cpu" and bfloat16_instructions() == []:
        return (
            f"{precision} on a CPU without bfloat16 instructions ({', '.join(BFLOAT16_FLAGS)}) "
            "is slower than float32"
        )
    return None


def machine_description() -> str:
    """Cores, CPU model, OS and Python of this machine, for benchmark records."""
    import platform

    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        model = names[0] if names else model
    return (
        f"{os.cpu_count()} CPUs ({model}), {platform.system()}, Python {platform.python_version()}"
    )
