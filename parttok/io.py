"""File helpers shared by every command: atomic writes, feature loading, source discovery,
and the one-time extraction of data archives into a cache."""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import tempfile
import time
import tokenize
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from parttok.errors import FeatureError, InputError, OutputError
from parttok.features import check_features

BVH_SUFFIXES = (".bvh",)
# Temporaries are hidden and end in this suffix, after the real one: no reader takes one for
# data, even one left by a killed run.
TEMPORARY_SUFFIX = ".partial"
STALE_TEMPORARY_SECONDS = 3600.0  # a temporary untouched this long was left by a killed run
# the name atomic_path's mkstemp gives: .NAME. + 8 random characters + the suffix
# .NAME.PID.XXXXXXXX.partial: the writer's process id tells a killed run's leftovers apart
_TEMPORARY_NAME = re.compile(rf"\..+?(?:\.(\d+))?\.[a-z0-9_]{{8}}{re.escape(TEMPORARY_SUFFIX)}")


def output_error(path: str | os.PathLike, error: OSError) -> OutputError:
    """The one-line OutputError for ``error`` (a read-only or full disk, a file where a
    folder of ``path`` should be, ...) raised while writing ``path``."""
    path = Path(path)
    blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
    reason = f"{blocker} is a file, not a folder" if blocker else error.strerror or str(error)
    return OutputError(f"cannot write {path}: {reason}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``.NAME.PID.XXXX.partial``); rename it onto
    ``path`` only on success. A failed write raises OutputError and leaves nothing behind."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.{os.getpid()}.", suffix=TEMPORARY_SUFFIX, dir=target.parent
        )
    except OSError as error:
        raise output_error(target, error) from None
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it owner-only
        os.replace(temporary, target)
    except OSError as error:
        raise output_error(target, error) from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def ensure_output_dir(path: str | os.PathLike) -> Path:
    """Make the output folder ``path`` and check that a file can be written in it (before
    any work is done), then remove the temporaries that killed runs left in it; a file in
    the way, a read-only or full disk raises OutputError."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".probe.", suffix=TEMPORARY_SUFFIX, dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise output_error(folder, error) from None
    remove_stale_temporaries(folder)
    return folder


def remove_stale_temporaries(
    folder: str | os.PathLike, age: float = STALE_TEMPORARY_SECONDS
) -> list[Path]:
    """Delete the ``atomic_path`` temporaries under ``folder`` whose writer process is gone
    (killed runs) or that were not written to for ``age`` seconds; return them."""
    before = time.time() - age
    removed = []
    for candidate in Path(folder).rglob(f".*{TEMPORARY_SUFFIX}"):
        match = _TEMPORARY_NAME.fullmatch(candidate.name)
        if match is None:
            continue
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            gone = match[1] is not None and not _process_alive(int(match[1]))
            stale = gone or candidate.stat().st_mtime < before
            if candidate.is_file() and stale:
                candidate.unlink()
                removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or not a process id: left alone
    return True


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a .npy file atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        np.save(stream, array)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def read_npy_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a ``.npy`` file declares, read without its data and checked
    against the file's size (so nothing is allocated for a damaged header); an empty,
    zipped, truncated or pickled file raises InputError."""
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            start = stream.read(4)
            if not start:
                raise InputError(f"{path}: empty file")
            if start == b"PK\x03\x04":
                raise InputError(f"{path}: a zip archive (.npz), not a .npy array")
            stream.seek(0)
            shape, dtype = _parse_npy_header(stream, path)
            data_bytes = os.fstat(stream.fileno()).st_size - stream.tell()
    except OSError as error:
        raise InputError(f"{path}: cannot read the file ({error.strerror or error})") from None
    if dtype.hasobject:
        raise InputError(f"{path}: holds Python objects (pickles), which are not read")
    if any(size < 0 for size in shape):
        raise InputError(f"{path}: the header declares a negative shape {shape}")
    needed = math.prod(shape) * dtype.itemsize
    if needed > data_bytes:
        raise InputError(
            f"{path}: the header declares shape {shape} ({needed} bytes of data) but the "
            f"file holds {data_bytes}: cut short or damaged"
        )
    return shape, dtype


def _parse_npy_header(stream: BinaryIO, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header at the start of ``stream`` (format 1.0 or 2.0)."""
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    try:
        version = np.lib.format.read_magic(stream)
        reader = readers.get(version)
        with warnings.catch_warnings():  # a header Python warns about is damaged: an error
            warnings.simplefilter("error")
            header = reader(stream) if reader else None
    except (ValueError, tokenize.TokenError) as error:  # numpy's header parse raises both
        reason = " ".join(str(error).split())[:200]
        raise InputError(f"{path}: not a readable .npy array ({reason})") from None
    if header is None:
        raise InputError(f"{path}: .npy format version {version}; parttok reads 1.0 and 2.0")
    shape, _, dtype = header
    return shape, dtype


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """Load a .npy array without pickles; a damaged file raises InputError."""
    read_npy_header(path)
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


def is_hidden(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path`` or a folder between ``root`` and it is hidden (a dot name), as
    ``atomic_path`` temporaries are: folder searches skip them."""
    return any(part.startswith(".") for part in Path(path).relative_to(root).parts)


def npy_files(folder: str | os.PathLike) -> list[Path]:
    """The ``.npy`` files directly in ``folder`` (none if it is missing), sorted, without
    hidden ones such as the temporaries of killed writes."""
    folder = Path(folder)
    return sorted(p for p in folder.glob("*.npy") if not p.name.startswith("."))


def find_files(sources: list[str | os.PathLike], suffixes: tuple[str, ...]) -> list[Path]:
    """Files with the given suffixes among ``sources`` (files, or folders searched
    recursively, skipping hidden files and folders), sorted within each folder; a missing
    source raises InputError."""
    found: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found += sorted(
                p
                for p in source.rglob("*")
                if p.suffix.lower() in suffixes and not is_hidden(p, source)
            )
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
    "ensure_output_dir",
    "remove_stale_temporaries",
    "is_hidden",
    "read_npy_header",
    "save_npy",
    "write_text",
    "load_npy",
    "load_features",
    "find_files",
    "npy_files",
    "is_humanml3d_folder",
    "cache_dir",
    "extract_once",
    "FeatureError",
    "OutputError",
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
