"""The shipped model and the README's Python snippet, on real clips."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import parttok
from parttok import tokenizer as tokenizer_module
from parttok.evaluation import evaluate_clips
from parttok.model import PartTokenizer
from parttok.tokenizer import POSE_DIR, PRETRAINED_DIR, length_batches

REPO = Path(__file__).resolve().parents[1]


def test_shipped_model_loads_small_and_safe():
    files = {p.name: p.stat().st_size for p in PRETRAINED_DIR.iterdir()}
    assert {"model.safetensors", "config.json", "MODEL_CARD.md", "metrics.json"} <= set(files)
    assert sum(files.values()) < 20 * 2**20
    card = (PRETRAINED_DIR / "MODEL_CARD.md").read_text()
    assert "CC BY-NC 4.0" in card and "mocap.cs.cmu.edu" in card and "NSF EIA-0196217" in card
    tokenizer = parttok.Tokenizer.from_pretrained()
    assert tokenizer.parts == ("root", "torso", "left_arm", "right_arm", "left_leg", "right_leg")
    assert tokenizer.codebook_size == 512 and tokenizer.frames_per_step == 4
    assert tokenizer.bits_per_second == 270
    # saved before settings were removed from the model: they hold the values with which they
    # did nothing, and are dropped
    saved = json.loads((PRETRAINED_DIR / "config.json").read_text())["model_config"]
    removed = PartTokenizer.REMOVED_SETTINGS
    assert {name: saved[name] for name in removed} == removed
    assert not removed.keys() & tokenizer.model.config.keys()


def test_shipped_model_reproduces_its_card_figures(humanml3d_dir):
    """Re-measure the HumanML3D figure of the model card: same clips, same number."""
    tokenizer = parttok.Tokenizer.from_pretrained()
    folder = parttok.HumanML3DFolder(humanml3d_dir)
    clips = {clip: folder.features(clip) for clip in folder.ids()}
    report = evaluate_clips(tokenizer, clips)
    shipped = json.loads((PRETRAINED_DIR / "metrics.json").read_text())["results"]["humanml3d"]
    assert abs(report["mpjpe_mm"] - shipped["mpjpe_mm"]) < 0.01
    assert report["frames"] == shipped["frames"]
    # each clip's row has its own means, and its frames weight them into the totals
    rows = report["per_clip"]
    assert [row["clip"] for row in rows] == list(clips)
    for key in ("mpjpe_mm", "pa_mpjpe_mm", "facing_mpjpe_mm", "facing_error_deg"):
        weighted = sum(row[key] * row["frames"] for row in rows) / report["frames"]
        assert weighted == pytest.approx(report[key])
    for part, total in report["per_part_mpjpe_mm"].items():
        weighted = sum(row["per_part_mpjpe_mm"][part] * row["frames"] for row in rows)
        assert weighted / report["frames"] == pytest.approx(total)
    assert len({row["per_part_mpjpe_mm"]["left_leg"] for row in rows}) == len(rows)


def test_shipped_pose_model_reproduces_its_card(humanml3d_dir):
    """The shipped pose tokenizer: single frames, six codes per pose, its card's identity and
    its HumanML3D row re-measured (MPJPE and PA-MPJPE to 0.1 mm, as the card prints them)."""
    tokenizer = parttok.Tokenizer.from_pretrained(POSE_DIR)
    assert tokenizer.mode == "pose" and tokenizer.frames_per_step == 1
    card = (POSE_DIR / "MODEL_CARD.md").read_text()
    assert f"Identity `{tokenizer.identity}`" in card
    folder = parttok.HumanML3DFolder(humanml3d_dir)
    report = evaluate_clips(tokenizer, {clip: folder.features(clip) for clip in folder.ids()})
    row = f"| {len(folder.ids())} | {report['frames']} | {report['mpjpe_mm']:.1f} | "
    row += f"{report['pa_mpjpe_mm']:.1f} |"
    assert f"| HumanML3D reference (unseen) {row}" in card


def test_shipped_model_reconstructs_held_out_bandai_motion(bandai_dir):
    """A validation-split walk (never trained on) comes back within a few centimetres."""
    motion = parttok.load_bvh(bandai_dir / "data" / "dataset-2_walk_active_007.bvh")
    features = parttok.joints_to_features(motion.joints)
    tokenizer = parttok.Tokenizer.from_pretrained()
    report = evaluate_clips(tokenizer, {"walk": features})
    assert report["mpjpe_mm"] < 40
    # and a different motion gives different codes
    other = parttok.load_bvh(bandai_dir / "data" / "dataset-2_wave-right-hand_active_007.bvh")
    wave = tokenizer.encode(parttok.joints_to_features(other.joints))
    walk = tokenizer.encode(features)
    steps = min(len(wave), len(walk))
    assert (wave[:steps, 3] != walk[:steps, 3]).mean() > 0.5  # the right arm differs


def test_batches_group_similar_lengths_and_cap_the_padded_frames():
    lengths = [6000, 200, 6000, 300, 250]
    assert length_batches(lengths, 32) == [[1, 4, 3, 0, 2]]
    assert length_batches(lengths, 2) == [[1, 4], [3, 0], [2]]
    # 3 x 300 padded frames fit 1000; a 6000-frame clip goes alone, past the cap or not
    assert length_batches(lengths, 32, max_frames=1000) == [[1, 4, 3], [0], [2]]


def test_long_real_motion_encodes_alone_with_the_codes_of_one_batch(humanml3d_dir, monkeypatch):
    """A batch holds at most ``BATCH_FRAMES`` padded frames: with the cap below the clips'
    lengths every real clip (and the four end to end, a long one) runs alone, and the codes
    and decodings, in the order given, are those of one batch."""
    tokenizer = parttok.Tokenizer.from_pretrained()
    folder = parttok.HumanML3DFolder(humanml3d_dir)
    clips = [folder.features(clip) for clip in folder.ids()]
    clips.append(np.concatenate(clips))
    together = tokenizer.encode_batch(clips)
    decoded = tokenizer.decode_batch(together)
    monkeypatch.setattr(tokenizer_module, "BATCH_FRAMES", 100)
    alone = tokenizer.encode_batch(clips)
    assert [len(codes) for codes in alone] == [len(clip) // 4 for clip in clips]
    for codes, expected in zip(alone, together, strict=True):
        np.testing.assert_array_equal(codes, expected)
    for features, expected in zip(tokenizer.decode_batch(alone), decoded, strict=True):
        np.testing.assert_allclose(features, expected, atol=1e-4)


def test_readme_python_snippet_runs(cmu_dir, tmp_path):
    readme = (REPO / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    snippet = snippet.replace('"walk.bvh"', repr(str(cmu_dir / "02_01.bvh")))
    snippet = snippet.replace('"again.bvh"', repr(str(tmp_path / "again.bvh")))
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    codes, again = namespace["codes"], namespace["again"]
    assert codes.shape[1] == 6 and again.shape == (len(codes) * 4, 263)
    back = parttok.load_bvh(tmp_path / "again.bvh")
    assert np.isfinite(back.joints).all()


def test_mixed_precision_is_float32_outside_and_nearly_float32_inside(humanml3d_dir, monkeypatch):
    """``precision="bf16-mixed"`` on the HumanML3D clips: float32 numpy out, nearly every code
    float32's (not all: bfloat16 did compute), the same error within a millimetre; on a CPU
    without bfloat16 instructions loading says it is slower; other precisions are refused."""
    folder = parttok.HumanML3DFolder(humanml3d_dir)
    clips = {clip: folder.features(clip) for clip in folder.ids()}
    exact = parttok.Tokenizer.from_pretrained()
    mixed = parttok.Tokenizer.from_pretrained(precision="bf16-mixed")
    codes = mixed.encode_batch(list(clips.values()))
    equal = np.mean(
        np.concatenate(codes) == np.concatenate(exact.encode_batch(list(clips.values())))
    )
    assert 0.95 < equal < 1.0
    decoded = mixed.decode(codes[0])
    assert decoded.dtype == np.float32 and np.isfinite(decoded).all()
    reports = [evaluate_clips(tokenizer, clips) for tokenizer in (exact, mixed)]
    assert reports[1]["precision"] == "bf16-mixed"
    assert abs(reports[0]["mpjpe_mm"] - reports[1]["mpjpe_mm"]) < 1.0
    monkeypatch.setattr("parttok.io.bfloat16_instructions", lambda: [])
    with pytest.warns(UserWarning, match="without bfloat16 instructions"):
        mixed.precision = "bf16-mixed"
    with pytest.raises(ValueError, match="precision must be one of"):
        parttok.Tokenizer.from_pretrained(precision="16-mixed")
