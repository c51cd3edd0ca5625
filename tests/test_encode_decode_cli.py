"""``parttok encode`` / ``decode`` on the real clips with a small random tokenizer: files
mirror the input tree and equal the API, finished outputs are skipped, bad inputs are
reported one line each while the rest are done, and Lightning's predict loop gives the same
codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import small_tokenizer

from parttok.bvh import read_bvh
from parttok.cli import main
from parttok.features import features_to_joints
from parttok.inference import RunOptions, encode_files, output_jobs
from parttok.skeleton import JOINT_NAMES
from parttok.sources import find_clips, load_clip_features
from parttok.tokenfile import FORMAT_VERSION, load_tokens
from parttok.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
BVH_CLIP = "02_01.bvh"  # the shortest CMU clip


@pytest.fixture(scope="module")
def checkpoint(humanml3d_dir: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    small_tokenizer(humanml3d_dir, seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(checkpoint: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(checkpoint)


@pytest.fixture
def source_tree(humanml3d_dir: Path, cmu_dir: Path, tmp_path: Path) -> Path:
    """Real clips in nested folders: feature .npy, joint .npy and a BVH."""
    root = tmp_path / "motion"
    (root / "walks" / "slow").mkdir(parents=True)
    (root / "mocap").mkdir()
    shutil.copy(humanml3d_dir / "new_joint_vecs" / "012314.npy", root / "walks")
    shutil.copy(humanml3d_dir / "new_joint_vecs" / "007005.npy", root / "walks" / "slow")
    shutil.copy(humanml3d_dir / "new_joints" / "M010655.npy", root / "mocap" / "joints.npy")
    shutil.copy(cmu_dir / BVH_CLIP, root / "mocap")
    return root


CLIPS = {
    "walks/012314": "walks/012314.npy",
    "walks/slow/007005": "walks/slow/007005.npy",
    "mocap/joints": "mocap/joints.npy",
    "mocap/02_01": "mocap/02_01.bvh",
}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main([*map(str, argv), "-q", "--workers", "0"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def test_encode_mirrors_the_tree_and_equals_the_api(
    source_tree: Path, checkpoint: Path, tokenizer: Tokenizer, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "tokens"
    status, _, err = run(capsys, "encode", source_tree, "--out", out, "--checkpoint", checkpoint)
    assert status == 0, err
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(f"{name}.ptok" for name in CLIPS)
    for name, source in CLIPS.items():
        features = load_clip_features(source_tree / source)
        tokens = load_tokens(out / f"{name}.ptok", expect_identity=tokenizer.identity)
        np.testing.assert_array_equal(tokens.codes, tokenizer.encode(features))
        assert tokens.num_frames == len(features) and tokens.source == Path(name).name
        assert tokens.parts == tokenizer.parts and tokens.frames_per_step == 4
        assert tokens.checkpoint_source == str(checkpoint.resolve())


def test_humanml3d_folder_encodes_its_feature_clips(
    humanml3d_dir: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    status, _, err = run(
        capsys, "encode", humanml3d_dir, "--out", tmp_path, "--checkpoint", checkpoint
    )
    assert status == 0, err
    expected = sorted(p.stem for p in (humanml3d_dir / "new_joint_vecs").glob("*.npy"))
    assert sorted(p.stem for p in tmp_path.glob("*.ptok")) == expected
    float64_clip = load_tokens(tmp_path / "000000.ptok")  # stored as float64 upstream
    assert float64_clip.num_frames == 116 and float64_clip.num_steps == 29


@pytest.mark.parametrize("output_format", ["features", "joints", "bvh"])
def test_decode_equals_the_api(
    source_tree: Path,
    checkpoint: Path,
    tokenizer: Tokenizer,
    tmp_path: Path,
    capsys,
    output_format: str,
) -> None:
    tokens_dir, decoded = tmp_path / "tokens", tmp_path / "decoded"
    run(capsys, "encode", source_tree / "walks", "--out", tokens_dir, "--checkpoint", checkpoint)
    status, _, err = run(
        capsys,
        "decode",
        tokens_dir,
        "--out",
        decoded,
        "--format",
        output_format,
        "--checkpoint",
        checkpoint,
    )
    assert status == 0, err
    for name in ("012314", "slow/007005"):
        source = source_tree / "walks" / f"{name}.npy"
        expected = tokenizer.decode(tokenizer.encode(load_clip_features(source)))  # (T, 263)
        if output_format == "features":
            np.testing.assert_allclose(np.load(decoded / f"{name}.npy"), expected, atol=1e-5)
        elif output_format == "joints":
            joints = np.load(decoded / f"{name}.npy")
            np.testing.assert_allclose(joints, features_to_joints(expected), atol=1e-4)
        else:
            bvh = read_bvh(decoded / f"{name}.bvh")
            order = [bvh.index(joint) for joint in JOINT_NAMES]
            assert bvh.fps == pytest.approx(20)
            joints = bvh.global_positions()[:, order]  # (T, 22, 3) metres
            np.testing.assert_allclose(joints, features_to_joints(expected), atol=1e-4)


def test_finished_outputs_are_skipped_and_overwritten_only_with_force(
    source_tree: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "tokens"
    command = ("encode", source_tree / "walks", "--out", out, "--checkpoint", checkpoint)
    run(capsys, *command)
    target = out / "012314.ptok"
    first = load_tokens(target)
    target.write_bytes(b"placeholder")
    status, printed, _ = run(capsys, *command)
    assert status == 0 and "2 output(s) exist already" in printed
    assert target.read_bytes() == b"placeholder"
    status, _, _ = run(capsys, *command, "-f")
    again = load_tokens(target)  # encoding is deterministic
    assert status == 0 and replace(again, codes=None) == replace(first, codes=None)
    np.testing.assert_array_equal(again.codes, first.codes)


def bad_line(err: str, path: Path) -> str:
    lines = [line for line in err.splitlines() if str(path) in line]
    assert len(lines) == 1, err
    return lines[0]


def test_bad_clips_are_reported_and_the_rest_encoded(
    humanml3d_dir: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    source = tmp_path / "motion"
    source.mkdir()
    features = np.load(humanml3d_dir / "new_joint_vecs" / "012314.npy")
    np.save(source / "good.npy", features)
    np.save(source / "nan.npy", np.where(np.arange(263) == 5, np.nan, features))
    np.save(source / "kit.npy", features[:, :251])
    np.save(source / "short.npy", features[:3])
    (source / "broken.npy").write_bytes(b"\x93NUMPY broken")
    status, _, err = run(
        capsys, "encode", source, "--out", tmp_path / "out", "--checkpoint", checkpoint
    )
    assert status == 2
    assert "NaN" in bad_line(err, source / "nan.npy")
    assert "251" in bad_line(err, source / "kit.npy")
    assert "fewer than one token step" in bad_line(err, source / "short.npy")
    bad_line(err, source / "broken.npy")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.ptok"]


def test_bad_token_files_are_reported_and_the_rest_decoded(
    humanml3d_dir: Path, checkpoint: Path, tokenizer: Tokenizer, tmp_path: Path, capsys
) -> None:
    tokens_dir = tmp_path / "tokens"
    run(capsys, "encode", humanml3d_dir, "--out", tokens_dir, "--checkpoint", checkpoint)
    damaged = tokens_dir / "000000.ptok"
    damaged.write_bytes(damaged.read_bytes()[:-7])
    other = tmp_path / "other"
    small_tokenizer(humanml3d_dir, seed=1).save_pretrained(other)
    foreign = tokens_dir / "007005.ptok"
    run(
        capsys,
        "encode",
        humanml3d_dir / "new_joint_vecs" / "007005.npy",
        "--out",
        tokens_dir,
        "--checkpoint",
        other,
        "-f",
    )
    newer = tokens_dir / "012314.ptok"
    current = f'"version":"{FORMAT_VERSION}"'.encode()
    newer.write_bytes(newer.read_bytes().replace(current, b'"version":"7"'))
    status, _, err = run(
        capsys, "decode", tokens_dir, "--out", tmp_path / "out", "--checkpoint", checkpoint
    )
    assert status == 2
    assert "damaged" in bad_line(err, damaged)
    message = bad_line(err, foreign)
    assert (
        f"made by checkpoint {load_tokens(foreign).checkpoint}, this is {tokenizer.identity}"
        in message
    )
    assert f"--checkpoint {other.resolve()}" in message
    assert "newer parttok (format 7" in bad_line(err, newer)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["M010655.npy"]


def test_lightning_predict_loop_gives_the_same_codes(
    humanml3d_dir: Path, cmu_dir: Path, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    clips = find_clips([humanml3d_dir, cmu_dir / BVH_CLIP])
    todo, _, _ = output_jobs(clips, tmp_path, ".ptok")
    options = RunOptions(batch_size=3, workers=0, devices=1, use_trainer=True, progress=False)
    failed = encode_files(tokenizer, todo, options=options)
    assert failed == []
    expected = tokenizer.encode_batch([load_clip_features(clip.path) for clip in clips])
    for job, codes in zip(todo, expected, strict=True):
        np.testing.assert_array_equal(load_tokens(job.output).codes, codes)


def test_continuous_tokenizer_exports_part_features(
    humanml3d_dir: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "continuous"
    continuous = small_tokenizer(humanml3d_dir, 0, mode="continuous")
    continuous.save_pretrained(folder)
    out = tmp_path / "features"
    status, _, err = run(capsys, "encode", humanml3d_dir, "--out", out, "--checkpoint", folder)
    assert status == 0, err
    assert {path.suffix for path in out.iterdir()} == {".ptok"}  # token files only
    tokens = load_tokens(out / "012314.ptok")
    features = load_clip_features(humanml3d_dir / "new_joint_vecs" / "012314.npy")
    assert tokens.kind == "continuous" and tokens.codes.shape == (42, 6, 8)
    np.testing.assert_allclose(tokens.codes, continuous.encode(features), atol=1e-6)
    status, _, err = run(
        capsys, "decode", out, "--out", tmp_path / "decoded", "--checkpoint", folder
    )
    assert status == 0, err
    assert np.load(tmp_path / "decoded" / "012314.npy").shape == (168, 22, 3)


def test_a_missing_checkpoint_is_one_line(tmp_path: Path, humanml3d_dir: Path, capsys) -> None:
    status, _, err = run(
        capsys, "encode", humanml3d_dir, "--out", tmp_path, "--checkpoint", tmp_path / "none"
    )
    assert status == 2 and len(err.strip().splitlines()) == 1


def test_mixed_precision_encode_decode_and_evaluate(
    source_tree: Path,
    checkpoint: Path,
    humanml3d_dir: Path,
    tmp_path: Path,
    capsys,
) -> None:
    """--precision bf16-mixed: the token files say how they were made and hold the API's
    bf16-mixed codes; decode and evaluate run in it too, and a
    continuous tokenizer's part features come out in float32."""
    out, decoded = tmp_path / "tokens", tmp_path / "decoded"
    argv = ["--checkpoint", checkpoint, "--precision", "bf16-mixed"]
    status, _, err = run(capsys, "encode", source_tree / "walks", "--out", out, *argv)
    assert status == 0, err
    mixed = Tokenizer.from_pretrained(checkpoint, precision="bf16-mixed")
    features = load_clip_features(source_tree / "walks" / "012314.npy")
    tokens = load_tokens(out / "012314.ptok")
    assert tokens.precision == "bf16-mixed"
    np.testing.assert_array_equal(tokens.codes, mixed.encode(features))
    status, _, err = run(capsys, "decode", out, "--out", decoded, "--format", "features", *argv)
    assert status == 0, err
    np.testing.assert_array_equal(np.load(decoded / "012314.npy"), mixed.decode(tokens.codes))
    report = tmp_path / "report.json"
    assert (
        main(["evaluate", str(source_tree / "walks"), "--json", str(report), *map(str, argv)]) == 0
    )
    assert "(bf16-mixed)" in capsys.readouterr().out
    assert json.loads(report.read_text())["precision"] == "bf16-mixed"
    with pytest.raises(SystemExit):
        main(["encode", str(source_tree), "--out", str(out), "--precision", "16-mixed"])
    assert "invalid choice: '16-mixed'" in capsys.readouterr().err
    continuous = small_tokenizer(humanml3d_dir, 0, mode="continuous")
    exact = continuous.encode(features)
    continuous.precision = "bf16-mixed"
    part_features = continuous.encode(features)  # (S, P, D)
    assert part_features.dtype == np.float32 and part_features.shape == exact.shape
    assert 0 < np.abs(part_features - exact).max() < 0.1 * np.abs(exact).max()


def test_version_and_no_abbreviated_options(capsys, tmp_path):
    """--version names the package version; a prefix of an option is an error, never taken
    for the option (in parttok's parsers and in LightningCLI's)."""
    import parttok

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"parttok {parttok.__version__}"
    with pytest.raises(SystemExit) as exit_info:
        main(["encode", str(tmp_path), "--ou", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err
    root = tmp_path / "run"
    args = ["train", "--config", str(REPO / "configs" / "smoke.yaml"), "--trainer.max_step", "3"]
    assert main([*args, "--trainer.default_root_dir", str(root)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unrecognized arguments: --trainer.max_step" in line and not root.exists()


def test_evaluate_scores_only_the_split_asked(humanml3d_dir, tmp_path, capsys):
    """--split test scores the one HumanML3D clip its test.txt lists (never a training clip);
    a split of a plain folder of files is one line and exit 2; -q shows no progress bar."""
    report = tmp_path / "eval.json"
    args = ["evaluate", str(humanml3d_dir), "--json", str(report), "-q"]
    assert main([*args, "--split", "test"]) == 0
    rows = json.loads(report.read_text())["per_clip"]
    assert [row["clip"] for row in rows] == ["000000"]
    assert "loading" not in capsys.readouterr().err
    assert main([*args, "--split", "train"]) == 0
    assert json.loads(report.read_text())["clips"] == 3
    plain = humanml3d_dir / "new_joint_vecs"
    assert main(["evaluate", str(plain), "--split", "test", "-q"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "a split needs a folder in the HumanML3D layout" in line


HEAVY_MODULES = (
    "torch",
    "pytorch_lightning",
    "lightning_fabric",
    "jsonargparse",
    "transformers",
    "matplotlib",
    "scipy",
)
BUILD_EVERY_PARSER = """
import contextlib, io, sys
from parttok.cli import COMMANDS, build_parser, main
build_parser()
for name in COMMANDS:
    build_parser(name)
for argv in [["--help"]] + [[name, *extra] for name in COMMANDS if name not in ("train", "tune")
                            for extra in (["--help"], [])]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit as exit:
            assert exit.code in (0, 2), (argv, exit.code)
        else:
            raise AssertionError(f"{argv}: parsed without the required arguments")
print(" ".join(sorted(name for name in %r if name in sys.modules)))
"""


def test_help_and_argument_errors_import_nothing_heavy():
    """Building the parser of every command (``parttok --help``, ``parttok X --help``, a
    missing argument) imports neither torch nor Lightning, so help answers at once; and
    ``python -m parttok encode --help`` works."""
    script = BUILD_EVERY_PARSER % (HEAVY_MODULES,)
    finished = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == ""  # none of HEAVY_MODULES was imported
    finished = subprocess.run(
        [sys.executable, "-m", "parttok", "encode", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr
    assert "usage: parttok encode" in finished.stdout and "--precision" in finished.stdout
