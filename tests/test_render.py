"""Skeleton animations of real clips, opened with Pillow and imageio and checked pixel by
pixel; ``parttok render`` on every kind of source, side by side, and on bad input."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import small_tokenizer
from PIL import Image, ImageColor

from parttok.cli import main
from parttok.errors import FeatureError, InputError, ParttokError
from parttok.features import features_to_joints
from parttok.render import MP4_MISSING, PART_COLORS, render_animation
from parttok.tokenfile import TokenFile, save_tokens

FRAMES = 20
WHITE = 250  # a pixel darker than this in some channel is not background


@pytest.fixture(scope="module")
def walk(humanml3d_dir: Path) -> np.ndarray:
    return np.load(humanml3d_dir / "new_joints" / "012314.npy")[:FRAMES]


@pytest.fixture(scope="module")
def other(humanml3d_dir: Path) -> np.ndarray:
    return np.load(humanml3d_dir / "new_joints" / "007005.npy")[:FRAMES]


def gif_frames(path: Path) -> np.ndarray:
    """Every frame of a GIF as composed by Pillow: (F, H, W, 3) uint8."""
    with Image.open(path) as image:
        frames = []
        for index in range(image.n_frames):
            image.seek(index)
            frames.append(np.asarray(image.convert("RGB")))
    return np.stack(frames)


def foreground(frame: np.ndarray) -> np.ndarray:
    """(H, W) mask of pixels that are not white background."""
    return (frame < WHITE).any(-1)


def has_color(frame: np.ndarray, color: str, tolerance: int) -> bool:
    target = np.array(ImageColor.getrgb(color))
    return bool((np.abs(frame.astype(int) - target).max(-1) <= tolerance).sum() >= 5)


def test_gif_shows_every_frame_with_each_part_in_its_colour(walk, tmp_path: Path) -> None:
    path = render_animation([walk], tmp_path / "walk.gif", caption="a walk")
    frames = gif_frames(path)
    assert frames.shape[0] == FRAMES
    assert frames.shape[2] == 240 and frames.shape[1] % 16 == 0
    for frame in frames:
        assert 0.02 < foreground(frame).mean() < 0.6  # a scene, not blank, not filled
    for color in PART_COLORS.values():
        assert has_color(frames[0], color, tolerance=8), color
    assert np.abs(frames[0].astype(int) - frames[-1]).max(-1).astype(bool).sum() > 100


def test_different_motions_give_different_frames_and_equal_ones_equal(
    walk, other, tmp_path: Path
) -> None:
    first = gif_frames(render_animation([walk], tmp_path / "a.gif"))
    again = gif_frames(render_animation([walk], tmp_path / "b.gif"))
    different = gif_frames(render_animation([other], tmp_path / "c.gif"))
    np.testing.assert_array_equal(first, again)
    changed = np.abs(first.astype(int) - different).max(-1) > 0  # (F, H, W)
    assert (changed.sum(axis=(1, 2)) > 200).all()


def test_side_by_side_panels_share_the_clock_and_the_short_one_holds(
    walk, other, tmp_path: Path
) -> None:
    path = render_animation(
        [walk, other[: FRAMES // 2]], tmp_path / "pair.gif", titles=["walk", "other"]
    )
    frames = gif_frames(path)
    assert frames.shape[0] == FRAMES and frames.shape[2] == 480
    left, right = frames[:, :, :240], frames[:, :, 240:]
    assert foreground(left[0]).mean() > 0.02 and foreground(right[0]).mean() > 0.02
    held = right[FRAMES // 2 - 1 :]
    assert (held == held[0]).all()  # the short motion stays on its last frame
    assert (left[FRAMES // 2 - 1] != left[-1]).any()  # while the long one moves on


def test_mp4_frames(walk, other, tmp_path: Path) -> None:
    walk_video = iio.imread(render_animation([walk], tmp_path / "walk.mp4"), plugin="FFMPEG")
    other_video = iio.imread(render_animation([other], tmp_path / "o.mp4"), plugin="FFMPEG")
    assert walk_video.shape[0] == FRAMES and walk_video.shape[2] == 240
    assert walk_video.shape == other_video.shape
    for frame in walk_video:
        assert foreground(frame).mean() > 0.02
    assert has_color(walk_video[0], PART_COLORS["right_arm"], tolerance=40)
    difference = np.abs(walk_video.astype(int) - other_video).max(-1) > 40  # beyond codec noise
    assert (difference.sum(axis=(1, 2)) > 100).all()


def test_mp4_without_the_video_extra_says_how_to_get_it(
    walk, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import now raises ImportError
    with pytest.raises(ParttokError, match=r"^MP4 needs the video extra: pip install parttok\[vi"):
        render_animation([walk], tmp_path / "walk.mp4")
    assert not list(tmp_path.iterdir())
    joints = tmp_path / "walk.npy"
    np.save(joints, walk)
    assert main(["render", str(joints), "--out", str(tmp_path / "walk.mp4")]) == 2
    err = capsys.readouterr().err
    assert err == f"parttok render: error: {MP4_MISSING}\n"


def test_bad_arguments_raise_input_errors(walk, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="use .gif or .mp4"):
        render_animation([walk], tmp_path / "walk.png")
    with pytest.raises(FeatureError, match="^broken: expected"):
        render_animation([walk[..., :2]], tmp_path / "walk.gif", titles=["broken"])
    with pytest.raises(InputError, match="2 titles for 1 motions"):
        render_animation([walk], tmp_path / "walk.gif", titles=["a", "b"])
    assert not list(tmp_path.iterdir())


def test_a_hundred_frames_render_in_seconds(humanml3d_dir: Path, tmp_path: Path) -> None:
    walk = np.load(humanml3d_dir / "new_joints" / "012314.npy")[:100]
    other = np.load(humanml3d_dir / "new_joints" / "007005.npy")[:100]
    start = time.perf_counter()
    path = render_animation([walk, other], tmp_path / "pair.gif", titles=["a", "b"])
    assert time.perf_counter() - start < 10
    assert path.stat().st_size < 400_000


# --- the command line ------------------------------------------------------------------------
def test_cli_compares_joints_with_features(humanml3d_dir: Path, tmp_path: Path, capsys) -> None:
    joints = humanml3d_dir / "new_joints" / "012314.npy"
    features = humanml3d_dir / "new_joint_vecs" / "007005.npy"
    out = tmp_path / "pair.gif"
    argv = ["render", str(joints), "--compare", str(features), "--out", str(out), "--fps", "10"]
    assert main([*argv, "--caption", "two clips"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.size[0] == 480
        assert image.n_frames == len(np.load(features))  # the longer clip sets the length
        assert image.info["duration"] == 100  # 10 fps


def test_cli_reconstructs_and_decodes_token_files(
    humanml3d_dir: Path, cmu_dir: Path, tmp_path: Path
) -> None:
    tokenizer = small_tokenizer(humanml3d_dir)
    checkpoint = tokenizer.save_pretrained(tmp_path / "tokenizer")
    features = np.load(humanml3d_dir / "new_joint_vecs" / "012314.npy")[:40]
    clip = tmp_path / "clip.npy"
    np.save(clip, features)
    tokens = tmp_path / "clip.ptok"
    codes = tokenizer.encode(features)
    save_tokens(tokens, TokenFile.from_tokenizer(tokenizer, codes, len(features)))

    decoded = tmp_path / "decoded.gif"
    argv = ["render", str(tokens), "--checkpoint", str(checkpoint), "--out", str(decoded)]
    assert main(argv) == 0
    pair = tmp_path / "pair.gif"
    argv = ["render", str(clip), "--reconstruct", "--checkpoint", str(checkpoint), "--out"]
    assert main([*argv, str(pair)]) == 0
    decoded_frames, pair_frames = gif_frames(decoded), gif_frames(pair)
    assert len(decoded_frames) == len(pair_frames) == 40
    # the reconstruction panel is the decoded tokens on the limits shared with the original
    direct = gif_frames(
        render_animation([features_to_joints(tokenizer.decode(codes))], tmp_path / "direct.gif")
    )
    np.testing.assert_array_equal(decoded_frames, direct)
    assert foreground(pair_frames[0][:, 240:]).mean() > 0.02

    bvh = tmp_path / "bvh.gif"
    assert main(["render", str(cmu_dir / "02_01.bvh"), "--out", str(bvh)]) == 0
    assert gif_frames(bvh).shape[0] > 40


def test_cli_bad_input_is_one_line(humanml3d_dir: Path, tmp_path: Path, capsys) -> None:
    mean = humanml3d_dir / "Mean.npy"  # (263,): not a clip
    assert main(["render", str(mean), "--out", str(tmp_path / "x.gif")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(mean) in err and "263" in err
    assert main(["render", str(mean), "--out", str(tmp_path / "x.avi")]) == 2
    assert "use .gif or .mp4" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
