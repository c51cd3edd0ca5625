"""A fuzz corpus for the input readers, made at test time from real clips: structured
mutations (a fourth rotation channel, headers that ask for gigabytes, damaged ``.npy``
headers, temporaries left by a killed run, unwritable outputs) and seeded random byte
mutations of real BVH text and ``.npy`` bytes. Every case goes through the public API and
the ``parttok`` command line: a bad input is one line naming it (exit status 2, no
traceback, nothing partial written) and the good inputs beside it are all done."""

from __future__ import annotations

import errno
import io
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, small_tokenizer

from parttok.bvh import MAX_JOINTS, read_bvh, read_bvh_header
from parttok.cli import main
from parttok.errors import InputError, OutputError
from parttok.features import FEATURE_DIM
from parttok.io import (
    TEMPORARY_SUFFIX,
    atomic_path,
    ensure_output_dir,
    find_files,
    npy_files,
    read_npy_header,
    save_npy,
)
from parttok.sources import find_clips, load_clip_features
from parttok.tokenizer import Tokenizer

GOOD_BANDAI = (  # three of the shortest Bandai clips: quick to convert
    "dataset-2_wave-left-hand_active_011",
    "dataset-2_raise-up-both-hands_active_025",
    "dataset-2_raise-up-both-hands_active_022",
)
FEATURES_CLIP = "M010655"  # the shortest HumanML3D clip
RANDOM_CASES = 24  # seeded random mutations per reader (BVH, feature .npy, joint .npy)


# --- the corpus ----------------------------------------------------------------------------


def _channels(text: str, joint: int, new: str) -> str:
    """``text`` with the CHANNELS line of the ``joint``-th joint (file order) replaced."""
    lines = text.split("\n")
    where = [i for i, line in enumerate(lines) if line.strip().startswith("CHANNELS")][joint]
    lines[where] = lines[where][: lines[where].index("CHANNELS")] + new
    return "\n".join(lines)


def _header(text: str, key: str, value: str) -> str:
    return re.sub(rf"(?m)^{key}:[ \t]*\S+", f"{key}: {value}", text, count=1)


def _many_joints(text: str) -> str:
    """MAX_JOINTS extra joints without channels inside the root: valid but for their count."""
    extra = "".join(
        f"\tJOINT extra{k}\n\t{{\n\t\tOFFSET 0 0 0\n\t\tCHANNELS 0\n"
        f"\t\tEnd Site\n\t\t{{\n\t\t\tOFFSET 0 1 0\n\t\t}}\n\t}}\n"
        for k in range(MAX_JOINTS)
    )
    root_open = text.index("{") + 1
    return text[:root_open] + "\n" + extra + text[root_open:]


SIX = "CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation "
# name -> (mutation of a real Bandai clip's text, what the one-line message says)
BVH_CASES: dict[str, tuple[Callable[[str], str], str]] = {
    "four-rotations": (
        lambda t: _channels(t, 1, SIX.replace("Xposition", "Yrotation")),
        "channel 'Yrotation' twice",
    ),
    "position-twice": (
        lambda t: _channels(t, 2, SIX.replace("Yposition", "Xposition")),
        "channel 'Xposition' twice",
    ),
    "seven-channels": (lambda t: _channels(t, 1, SIX.replace("6", "7") + "Xrotation"), "at most 6"),
    "huge-channel-count": (lambda t: _channels(t, 1, "CHANNELS 99999999999999"), "at most 6"),
    "frame-time-1e5": (lambda t: _header(t, "Frame Time", "100000"), "Frame Time"),
    "frame-time-1e9": (lambda t: _header(t, "Frame Time", "1e9"), "Frame Time"),
    "frame-time-tiny": (lambda t: _header(t, "Frame Time", "1e-300"), "Frame Time"),
    "frame-time-inf": (lambda t: _header(t, "Frame Time", "1e400"), "Frame Time: inf"),
    "frames-1e7": (lambda t: _header(t, "Frames", "10000000"), "last over 3600 s"),
    "frames-400-digits": (lambda t: _header(t, "Frames", "9" * 400), "over a billion frames"),
    "many-joints": (_many_joints, f"more than {MAX_JOINTS} joints"),
}


def _npy(array: np.ndarray, **options) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array, **options)
    return stream.getvalue()


def _npz(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.savez(stream, features=array)
    return stream.getvalue()


def _shape(data: bytes, shape: str) -> bytes:
    return re.sub(rb"'shape': \([^)]*\)", f"'shape': {shape}".encode(), data, count=1)


# name -> (mutation of a real feature file's bytes, what the one-line message says)
NPY_CASES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "empty": (lambda b: b"", "empty file"),
    "zip": (lambda b: _npz(np.load(io.BytesIO(b))), "zip archive"),
    "negative-shape": (lambda b: _shape(b, "(-116, 263)"), "negative shape"),
    "huge-shape": (lambda b: _shape(b, "(999999999999, 263)"), "cut short or damaged"),
    "cut-short": (lambda b: b[: len(b) // 2], "cut short or damaged"),
    "header-only": (lambda b: b[:128], "cut short or damaged"),
    "pickled": (
        lambda b: _npy(np.array([np.load(io.BytesIO(b))], dtype=object), allow_pickle=True),
        "pickles",
    ),
    "text-values": (lambda b: re.sub(rb"'<f\d'", b"'<U1'", b, count=1), "numeric"),
    "version-3": (lambda b: b[:6] + b"\x03" + b[7:], "format version"),
    "broken-header": (lambda b: b.replace(b"'shape'", b"'shap", 1), "not a readable .npy"),
}

_ALPHABET = b"0123456789-.eE+ \t\n{}:XYZrotainpsCHANELMOTFrm"


def mutate(data: bytes, seed: int, header: int) -> bytes:
    """1-3 random edits of ``data``, a quarter of them in its first ``header`` bytes and the
    rest after them: mostly a byte replaced (by a digit, one of the formats' own characters
    or any byte), else a run deleted, bytes inserted, or a span copied elsewhere."""
    rng = random.Random(seed)
    edited = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(header) if rng.random() < 0.25 else rng.randrange(header, len(edited))
        kind = rng.choices(("replace", "delete", "insert", "copy"), weights=(6, 1, 1, 2))[0]
        if kind == "replace":
            alphabet = rng.choices((b"0123456789", _ALPHABET, bytes(range(256))), (5, 4, 1))[0]
            edited[at] = rng.choice(alphabet)
        elif kind == "delete":
            del edited[at : at + rng.randint(1, 16)]
        elif kind == "insert":
            edited[at:at] = bytes(rng.choices(_ALPHABET, k=rng.randint(1, 4)))
        else:
            start = rng.randrange(len(edited))
            edited[at:at] = edited[start : start + rng.randint(1, 32)]
    return bytes(edited)


@pytest.fixture(scope="module")
def good_bvh(bandai_dir: Path) -> list[Path]:
    return [bandai_dir / "data" / f"{name}.bvh" for name in GOOD_BANDAI]


@pytest.fixture(scope="module")
def corpus(good_bvh: list[Path], humanml3d_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """Every case as a file, by name: ``bvh-*``, ``features-*`` and ``random-*``."""
    folder = tmp_path_factory.mktemp("corpus")
    text = good_bvh[0].read_text()
    features = (humanml3d_dir / "new_joint_vecs" / f"{FEATURES_CLIP}.npy").read_bytes()
    joints = (humanml3d_dir / "new_joints" / f"{FEATURES_CLIP}.npy").read_bytes()
    files: dict[str, bytes] = {}
    for name, (change, _) in BVH_CASES.items():
        files[f"bvh-{name}.bvh"] = change(text).encode()
    for name, (change, _) in NPY_CASES.items():
        files[f"features-{name}.npy"] = change(features)
    motion = text.index("MOTION") + 40
    for seed in range(RANDOM_CASES):
        files[f"random-bvh-{seed}.bvh"] = mutate(text.encode(), seed, motion)
        files[f"random-features-{seed}.npy"] = mutate(features, seed, 128)
        files[f"random-joints-{seed}.npy"] = mutate(joints, seed, 128)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {Path(name).stem: folder / name for name in files}


# --- the public API ------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(BVH_CASES))
def test_structured_bvh_cases_are_one_line_bvh_errors(corpus, case) -> None:
    path = corpus[f"bvh-{case}"]
    in_motion_header = case.startswith(("frame-time", "frames"))
    for read in [load_clip_features] + ([read_bvh_header] if in_motion_header else []):
        start = time.perf_counter()
        with pytest.raises(InputError) as caught:
            read(path)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message and BVH_CASES[case][1] in message
        assert time.perf_counter() - start < 2.0  # refused before anything large is allocated


@pytest.mark.parametrize("case", sorted(NPY_CASES))
def test_structured_npy_cases_are_one_line_input_errors(corpus, case) -> None:
    path = corpus[f"features-{case}"]
    sound_header = case == "text-values"  # refused once read, as not numbers
    for read in [load_clip_features] + ([] if sound_header else [read_npy_header]):
        with pytest.raises(InputError) as caught:
            read(path)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message and NPY_CASES[case][1] in message


@pytest.mark.filterwarnings("error")
def test_random_mutations_load_or_are_one_line_input_errors(corpus) -> None:
    """Each mutated real clip either loads as finite (T, 263) features or raises one
    InputError naming it; no other exception, no warning."""
    outcomes = {"bvh": 0, "features": 0, "joints": 0}
    for name, path in sorted(corpus.items()):
        if not name.startswith("random-"):
            continue
        try:
            features = load_clip_features(path)
        except InputError as error:
            assert "\n" not in str(error) and str(path) in str(error), (name, error)
            continue
        assert features.ndim == 2 and features.shape[1] == FEATURE_DIM, name
        assert np.isfinite(features).all(), name
        outcomes[name.split("-")[1]] += 1
    # the mutations are mild enough that some clips still load, harsh enough that most fail
    assert all(0 < loaded < RANDOM_CASES for loaded in outcomes.values()), outcomes


def test_four_rotation_channels_in_a_real_cmu_file(cmu_dir: Path, tmp_path: Path) -> None:
    """The issue's report: a joint with 4 rotation channels (rows still match the count)."""
    text = (cmu_dir / "02_01.bvh").read_text()
    lines = text.split("\n")
    where = next(i for i, line in enumerate(lines) if "CHANNELS 3" in line)
    lines[where] = lines[where].replace("CHANNELS 3", "CHANNELS 4") + " Xrotation"
    motion = lines.index("MOTION") + 3
    lines[motion:] = [f"{row} 0.0" if row.strip() else row for row in lines[motion:]]
    path = tmp_path / "four.bvh"
    path.write_text("\n".join(lines))
    with pytest.raises(InputError, match="channel 'Xrotation' twice"):
        read_bvh(path)


def test_encode_files_reports_damaged_headers(corpus, checkpoint: Path, tmp_path: Path) -> None:
    from parttok.inference import FileJob, RunOptions, encode_files

    tokenizer = Tokenizer.from_pretrained(checkpoint)
    names = [f"features-{name}" for name in NPY_CASES]
    names += ["bvh-frames-400-digits", "bvh-frame-time-inf"]
    jobs = [FileJob(corpus[name], tmp_path / f"{name}.ptok") for name in names]
    failed = encode_files(tokenizer, jobs, options=RunOptions(workers=0, progress=False))
    assert len(failed) == len(jobs)


# --- temporaries of killed runs ------------------------------------------------------------


def test_temporaries_are_hidden_and_not_data(tmp_path: Path) -> None:
    target = tmp_path / "clip.npy"
    save_npy(target, np.zeros(3))  # through a handle: np.save adds no second suffix
    with atomic_path(target) as temporary:
        assert temporary.name.startswith(".clip.npy.") and temporary.suffix == TEMPORARY_SUFFIX
        temporary.write_bytes(b"done")
    assert target.read_bytes() == b"done" and os.listdir(target.parent) == ["clip.npy"]


def _left_by_a_kill(folder: Path, data: bytes, name: str) -> list[Path]:
    """Half-written temporaries as a killed write leaves them: this version's and the real
    suffix that earlier versions used."""
    earlier = f".{name}.x9y8z7w6{Path(name).suffix}"
    left = [folder / f".{name}.k3j4h5g6{TEMPORARY_SUFFIX}", folder / earlier]
    for path in left:
        path.write_bytes(data[: len(data) // 2])
    return left


def test_discovery_skips_hidden_files_and_temporaries(humanml3d_dir: Path, tmp_path: Path):
    data = (humanml3d_dir / "new_joint_vecs" / f"{FEATURES_CLIP}.npy").read_bytes()
    (tmp_path / "clip.npy").write_bytes(data)
    _left_by_a_kill(tmp_path, data, "clip.npy")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "inside.npy").write_bytes(data)
    assert [clip.path.name for clip in find_clips([tmp_path])] == ["clip.npy"]
    assert [path.name for path in find_files([tmp_path], (".npy",))] == ["clip.npy"]
    assert [path.name for path in npy_files(tmp_path)] == ["clip.npy"]


def test_stale_temporaries_are_removed_fresh_ones_kept(tmp_path: Path) -> None:
    stale = _left_by_a_kill(tmp_path, b"\x93NUMPY", "clip.npy")[0]
    recent = tmp_path / f".other.npy.a1b2c3d4{TEMPORARY_SUFFIX}"
    recent.write_bytes(b"being written")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    ensure_output_dir(tmp_path)
    assert not stale.exists() and recent.exists()


# --- the command line ----------------------------------------------------------------------


def naming(lines: list[str], path: Path) -> list[str]:
    return [line for line in lines if f"{path}:" in line]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def checkpoint(humanml3d_dir: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    small_tokenizer(humanml3d_dir, seed=0).save_pretrained(folder)
    return folder


@pytest.fixture
def mixed_bvh(corpus, good_bvh: list[Path], tmp_path: Path) -> tuple[Path, list[Path]]:
    """A folder of the good Bandai clips, every BVH case and the first random ones, with
    temporaries a killed run left; returns it and the bad files in it."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in good_bvh:
        shutil.copy(path, folder)
    _left_by_a_kill(folder, good_bvh[0].read_bytes(), good_bvh[0].name)
    cases = [corpus[f"bvh-{name}"] for name in BVH_CASES]
    cases += [corpus[f"random-bvh-{seed}"] for seed in range(8)]
    return folder, [Path(shutil.copy(path, folder)) for path in cases]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_convert_reports_each_bad_clip_once_and_converts_the_rest(
    mixed_bvh, good_bvh: list[Path], tmp_path: Path, capsys, jobs: str
) -> None:
    folder, cases = mixed_bvh
    out = tmp_path / "out"
    two_hours_ago = time.time() - 7200
    for subfolder in ("new_joint_vecs", "new_joints"):  # a killed run's, in the output
        (out / subfolder).mkdir(parents=True)
        for path in _left_by_a_kill(out / subfolder, b"\x93NUMPY\x01\x00", "old.npy"):
            os.utime(path, (two_hours_ago, two_hours_ago))
    status, lines = run_cli(capsys, "convert", folder, "--out", out, "--jobs", jobs)
    assert status == 2
    converted = set((out / "all.txt").read_text().split())
    assert {path.stem for path in good_bvh} <= converted
    for path in cases:
        assert len(naming(lines, path)) == int(path.stem not in converted), (path, lines)
    assert converted <= {path.stem for path in good_bvh + cases}  # no temporary read as a clip
    assert (out / "Mean.npy").is_file() and (out / "Std.npy").is_file()
    assert not [name for name in files_under(out) if TEMPORARY_SUFFIX in name]  # stale: removed


def test_encode_reports_each_bad_clip_once_and_encodes_the_rest(
    corpus, humanml3d_dir: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    source = tmp_path / "motion"
    shutil.copytree(humanml3d_dir / "new_joint_vecs", source)
    good = sorted(path.stem for path in source.glob("*.npy"))
    _left_by_a_kill(source, (source / f"{FEATURES_CLIP}.npy").read_bytes(), f"{FEATURES_CLIP}.npy")
    cases = [corpus[f"features-{name}"] for name in NPY_CASES]
    cases += [corpus[f"bvh-{name}"] for name in BVH_CASES]
    cases += [corpus[f"random-{kind}-{seed}"] for kind in ("features", "joints") for seed in (0, 1)]
    cases = [Path(shutil.copy(path, source)) for path in cases]
    out = tmp_path / "tokens"
    argv = ["encode", source, "--out", out, "--checkpoint", checkpoint, "-q", "--workers", "0"]
    status, lines = run_cli(capsys, *argv)
    assert status == 2
    encoded = {Path(name).stem for name in files_under(out)}
    assert set(good) <= encoded
    for path in cases:
        assert len(naming(lines, path)) == int(path.stem not in encoded), (path, lines)
    assert encoded <= set(good) | {path.stem for path in cases}


def test_decode_ignores_temporaries_among_token_files(
    humanml3d_dir: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    tokens = tmp_path / "tokens"
    argv = ["--checkpoint", checkpoint, "-q", "--workers", "0"]
    assert run_cli(capsys, "encode", humanml3d_dir, "--out", tokens, *argv)[0] == 0
    token_file = tokens / f"{FEATURES_CLIP}.ptok"
    left = [
        tokens / f".{token_file.name}.a1b2c3d4.ptok",
        tokens / f".x.ptok.a1b2{TEMPORARY_SUFFIX}",
    ]
    for path in left:
        path.write_bytes(token_file.read_bytes()[:100])
    out = tmp_path / "decoded"
    status, lines = run_cli(capsys, "decode", tokens, "--out", out, *argv)
    assert status == 0 and not lines
    assert files_under(out) == sorted(f"{path.stem}.npy" for path in tokens.glob("[!.]*.ptok"))


def test_evaluate_and_render_report_a_bad_clip_in_one_line(
    corpus, humanml3d_dir: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    source = tmp_path / "motion"
    source.mkdir()
    shutil.copy(humanml3d_dir / "new_joint_vecs" / f"{FEATURES_CLIP}.npy", source)
    bad = [corpus["bvh-four-rotations"], corpus["bvh-frame-time-1e9"], corpus["features-zip"]]
    bad = [Path(shutil.copy(path, source)) for path in bad]
    report = tmp_path / "report.json"
    argv = ["evaluate", source, "--checkpoint", checkpoint, "--json", report]
    status, lines = run_cli(capsys, *argv)
    assert status == 2 and report.is_file()
    assert all(len(naming(lines, path)) == 1 for path in bad), lines
    for path in bad:
        animation = tmp_path / f"{path.stem}.gif"
        status, lines = run_cli(capsys, "render", path, "--out", animation)
        assert status == 2 and len(lines) == 1 and str(path) in lines[0], lines
        assert not animation.exists()
    assert not [name for name in files_under(tmp_path) if name.endswith((".gif", ".partial"))]


# --- unwritable outputs --------------------------------------------------------------------


def test_an_output_folder_that_is_a_file_is_one_line(
    good_bvh: list[Path], checkpoint: Path, tmp_path: Path, capsys
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    clip = good_bvh[0]
    not_a_folder, in_the_way = f"{blocker}: exists and is not a folder", f"{blocker} is a file"
    runs = [
        (["convert", clip, "--out", blocker, "--jobs", "1"], not_a_folder),
        (["convert", clip, "--out", blocker / "below", "--jobs", "1"], in_the_way),
        (["encode", clip, "--out", blocker, "--checkpoint", checkpoint, "-q"], not_a_folder),
        (["render", clip, "--out", blocker / "clip.gif"], in_the_way),
        (  # --json naming a folder
            ["evaluate", clip, "--checkpoint", checkpoint, "--json", tmp_path],
            f"cannot write {tmp_path}: Is a directory",
        ),
    ]
    for argv, message in runs:
        status, lines = run_cli(capsys, *argv)
        assert status == 2 and len(lines) == 1 and message in lines[0], (argv, lines)
    assert files_under(tmp_path) == ["a-file"]


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC])
def test_a_read_only_or_full_disk_is_one_line_and_leaves_nothing(
    good_bvh: list[Path], checkpoint: Path, tmp_path: Path, capsys, monkeypatch, code: int
) -> None:
    """os.replace is where every output lands; running as root, chmod would not block it."""

    def failing_replace(source, target) -> None:
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr(os, "replace", failing_replace)
    encode = ["--checkpoint", checkpoint, "-q", "--workers", "0"]
    for argv in (
        ["convert", *good_bvh, "--out", tmp_path / "converted", "--jobs", "1"],
        ["encode", *good_bvh, "--out", tmp_path / "tokens", *encode],
    ):
        status, lines = run_cli(capsys, *argv)
        assert status == 2 and len(lines) == 1, lines
        assert os.strerror(code) in lines[0] and "cannot write" in lines[0]
        assert files_under(tmp_path) == [], files_under(tmp_path)
    with pytest.raises(OutputError, match=os.strerror(code)):
        save_npy(tmp_path / "x.npy", np.zeros(3))

    def failing_mkstemp(*args, **kwargs) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", failing_mkstemp)  # no file can be made at all
    status, lines = run_cli(capsys, "convert", *good_bvh, "--out", tmp_path / "none", "--jobs", "1")
    assert status == 2 and lines == [
        f"parttok convert: error: cannot write {tmp_path / 'none'}: {os.strerror(code)}"
    ]
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["convert", "x.bvh", "--out", "o", "--jobs", "-1"], "--jobs: expected a whole number"),
        (["convert", "x.bvh", "--out", "o", "--jobs", "0"], "--jobs: expected a whole number"),
        (["encode", "x.npy", "--out", "o", "--workers", "-1"], "--workers: expected a whole"),
        (["decode", "x.ptok", "--out", "o", "--batch-size", "0"], "--batch-size: expected"),
        (["render", "x.npy", "--out", "o.gif", "--fps", "0"], "--fps: expected"),
    ],
)
def test_negative_counts_are_usage_errors(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "Traceback" not in err
    assert message in err.strip().splitlines()[-1]
