"""The PNG plots and the markdown evaluation report, on real clips and a small random
tokenizer: every figure is written, opens, and shows something; the error curves are the
errors; the report's tables are the evaluation's numbers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import small_tokenizer
from PIL import Image
from test_render import gif_frames

from parttok.cli import main
from parttok.errors import InputError
from parttok.evaluation import evaluate_clips
from parttok.features import features_to_joints
from parttok.plots import (
    part_error_over_time,
    plot_codebook_usage,
    plot_part_error,
    plot_token_timeline,
)
from parttok.report import REPORT_FILE, write_report
from parttok.tokenizer import Tokenizer

CLIPS = ("012314", "007005", "M010655")


@pytest.fixture(scope="module")
def tokenizer(humanml3d_dir: Path) -> Tokenizer:
    return small_tokenizer(humanml3d_dir)


@pytest.fixture(scope="module")
def clips(humanml3d_dir: Path) -> dict[str, np.ndarray]:
    return {name: np.load(humanml3d_dir / "new_joint_vecs" / f"{name}.npy") for name in CLIPS}


def png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def ink(pixels: np.ndarray) -> float:
    """Fraction of pixels that are not white."""
    return float((pixels < 250).any(-1).mean())


def test_token_timeline(tokenizer: Tokenizer, clips, tmp_path: Path) -> None:
    codes = tokenizer.encode(clips["012314"])
    path = plot_token_timeline(codes, tokenizer.parts, tmp_path / "timeline.png", 4, 20, 16)
    pixels = png_pixels(path)
    assert ink(pixels) > 0.3
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # many code colours
    still = plot_token_timeline(np.zeros_like(codes), tokenizer.parts, tmp_path / "still.png")
    assert ink(png_pixels(still)) > 0.3
    assert not np.array_equal(png_pixels(still), pixels)
    short = plot_token_timeline(codes[:10], tokenizer.parts, tmp_path / "short.png")
    assert ink(png_pixels(short)) > 0.3
    with pytest.raises(InputError, match=r"expected codes \(steps, 6\)"):
        plot_token_timeline(codes[:, :5], tokenizer.parts, tmp_path / "bad.png")


def test_codebook_usage(tokenizer: Tokenizer, clips, tmp_path: Path) -> None:
    codes = tokenizer.encode_batch(list(clips.values()))
    path = plot_codebook_usage(codes, 16, tokenizer.parts, tmp_path / "usage.png")
    pixels = png_pixels(path)
    assert ink(pixels) > 0.05
    with pytest.raises(InputError, match="outside a codebook of 4"):
        out_of_range = [np.full((3, len(tokenizer.parts)), 7)]
        plot_codebook_usage(out_of_range, 4, tokenizer.parts, tmp_path / "bad.png")
    with pytest.raises(InputError, match="no codes"):
        plot_codebook_usage([], 16, tokenizer.parts, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_part_error_curves_are_the_errors_of_each_part(humanml3d_dir: Path) -> None:
    joints = np.load(humanml3d_dir / "new_joints" / "012314.npy").astype(np.float64)
    moved = joints.copy()
    moved[:, [13, 16, 18, 20]] += (0.1, 0.0, 0.0)  # the left arm, 10 cm along X
    curves = part_error_over_time(joints, moved[:50])
    assert len(curves["all"]) == 50
    np.testing.assert_allclose(curves["left_arm"], 100.0, atol=1e-6)
    np.testing.assert_allclose(curves["all"], 400.0 / 22, atol=1e-6)
    for name in ("root", "torso", "right_arm", "left_leg", "right_leg"):
        np.testing.assert_allclose(curves[name], 0.0, atol=1e-6)
    shifted = part_error_over_time(joints, joints + (0.0, 0.0, 1.0))  # the whole body, 1 m
    np.testing.assert_allclose(shifted["root"], 1000.0, atol=1e-6)
    np.testing.assert_allclose(shifted["all"], 0.0, atol=1e-6)


def test_part_error_plot(tokenizer: Tokenizer, clips, tmp_path: Path) -> None:
    features = clips["007005"]
    reconstruction = tokenizer.reconstruct(features)
    original = features_to_joints(features[: len(reconstruction)])
    path = plot_part_error(original, features_to_joints(reconstruction), tmp_path / "error.png")
    assert ink(png_pixels(path)) > 0.05
    with pytest.raises(InputError, match="figures are written as .png"):
        plot_part_error(original, original, tmp_path / "error.jpg")


def test_report_holds_the_numbers_and_the_figures(
    tokenizer: Tokenizer, clips, tmp_path: Path, monkeypatch
) -> None:
    short = {name: features[:120] for name, features in clips.items()}
    report = evaluate_clips(tokenizer, short)
    markdown_path = write_report(tmp_path / "report", tokenizer, short, report)
    assert markdown_path == tmp_path / "report" / REPORT_FILE
    markdown = markdown_path.read_text()
    assert f"| MPJPE (mm) | {report['mpjpe_mm']:.1f} |" in markdown
    assert f"| PA-MPJPE (mm) | {report['pa_mpjpe_mm']:.1f} |" in markdown
    assert f"| bits per second | {report['bits_per_second']:.0f} |" in markdown
    for name, value in report["per_part_mpjpe_mm"].items():
        assert f"| {name} | {value:.1f} |" in markdown
    for name in tokenizer.parts:
        usage, perplexity = report["usage"][name], report["perplexity"][name]
        assert f"| {name} | {usage:.0%} | {perplexity:.1f} |" in markdown
    worst = max(report["per_clip"], key=lambda row: row["mpjpe_mm"])["clip"]
    assert f"Tokens of `{worst}`" in markdown and "refined among" not in markdown
    refined = evaluate_clips(tokenizer, short, refine=2)
    asked = []  # the refine counts the report's figures encode with
    encode_batch = tokenizer.encode_batch

    def recording(clips: list, batch_size: int = 32, refine: int = 0) -> list:
        asked.append(refine)
        return encode_batch(clips, batch_size, refine)

    monkeypatch.setattr(tokenizer, "encode_batch", recording)
    text = write_report(tmp_path / "refined", tokenizer, short, refined, None).read_text()
    assert asked and set(asked) == {2}  # the figures show the codes the report measured
    assert "| codes | refined among the 2 nearest (`--refine 2`) |" in text
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(figures) == 4
    for name in figures:
        if name.endswith(".png"):
            assert ink(png_pixels(tmp_path / "report" / name)) > 0.05
        else:
            frames = gif_frames(tmp_path / "report" / name)
            assert frames.shape[0] == 120 and frames.shape[2] == 480


def test_evaluate_writes_the_report(
    tokenizer: Tokenizer, humanml3d_dir: Path, tmp_path: Path, capsys
) -> None:
    checkpoint = tokenizer.save_pretrained(tmp_path / "tokenizer")
    clip = humanml3d_dir / "new_joint_vecs" / "012314.npy"
    argv = ["evaluate", str(clip), "--checkpoint", str(checkpoint), "--report"]
    assert main([*argv, str(tmp_path / "report")]) == 0
    capsys.readouterr()
    markdown = (tmp_path / "report" / REPORT_FILE).read_text()
    assert "Tokens of `012314`" in markdown
    for name in ("timeline.png", "codebook_usage.png", "part_error.png", "reconstruction.gif"):
        assert (tmp_path / "report" / name).stat().st_size > 1000
