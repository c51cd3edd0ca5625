"""Runs killed with SIGKILL mid-way (convert with a worker pool, encode) on real clips: the
killed run leaves no process behind and nothing a reader takes for data, and the rerun keeps
what was done, finishes the rest and leaves no temporaries. (Training: test_training.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from parttok.cli import main

CLIPS = 6


def children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_when(command: list[str], ready, timeout: float = 180.0) -> set[int]:
    """Start ``command``, SIGKILL it once ``ready()``; the ids of its children then."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "nothing was written in time"
        time.sleep(0.05)
    workers = children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return workers


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".partial"]


def bandai_sources(bandai_dir: Path, folder: Path, count: int) -> Path:
    """A folder linking ``count`` real Bandai Namco BVH clips."""
    folder.mkdir()
    for path in sorted((bandai_dir / "data").glob("*.bvh"))[:count]:
        os.symlink(path, folder / path.name)
    return folder


def test_killed_convert_leaves_no_workers_and_resumes(bandai_dir, tmp_path):
    sources = bandai_sources(bandai_dir, tmp_path / "bvh", CLIPS)
    out = tmp_path / "converted"
    command = [sys.executable, "-m", "parttok", "convert", str(sources), "--out", str(out)]
    features = out / "new_joint_vecs"

    def one_clip_written() -> bool:
        return features.is_dir() and any(features.glob("*.npy"))

    workers = kill_when([*command, "--jobs", "2"], one_clip_written)
    assert workers, "convert --jobs 2 started no worker processes"
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers), "pool workers outlived the killed run"
    done_before = {p.stem: p.stat().st_mtime_ns for p in features.glob("*.npy")}
    assert main(["convert", str(sources), "--out", str(out), "--jobs", "1"]) == 0
    after = {p.stem: p.stat().st_mtime_ns for p in features.glob("*.npy")}
    assert len(after) == CLIPS
    assert all(after[clip] == mtime for clip, mtime in done_before.items())  # kept, not redone
    assert (out / "Mean.npy").is_file() and len((out / "all.txt").read_text().split()) == CLIPS
    assert not leftovers(out)


def test_killed_encode_resumes_without_phantoms(bandai_dir, tmp_path):
    source = bandai_sources(bandai_dir, tmp_path / "bvh", 3 * CLIPS)
    out = tmp_path / "tokens"
    command = [sys.executable, "-m", "parttok", "encode", str(source), "--out", str(out)]
    kill_when([*command, "--batch-size", "1"], lambda: out.is_dir() and any(out.glob("*.ptok")))
    assert main(["encode", str(source), "--out", str(out), "--batch-size", "1"]) == 0
    written = sorted(p.stem for p in out.glob("*.ptok"))
    assert written == sorted(p.stem for p in source.glob("*.bvh"))
    assert not leftovers(out)
    decoded = tmp_path / "decoded"
    assert main(["decode", str(out), "--out", str(decoded)]) == 0
    assert len(list(decoded.glob("*.npy"))) == len(written)  # no phantom clip among them


def test_a_killed_writers_temporaries_go_a_live_ones_stay(tmp_path):
    """Temporaries name their writer's process: a fresh one of a dead process is removed by
    the next run, one of a live process (a parallel run) is kept."""
    from parttok.io import remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / f".clip.npy.{dead.pid}.abcd1234.partial"
    kept = tmp_path / f".clip.npy.{os.getpid()}.abcd1234.partial"
    for path in (gone, kept):
        path.write_bytes(b"half")
    assert remove_stale_temporaries(tmp_path) == [gone]
    assert kept.exists() and not gone.exists()
