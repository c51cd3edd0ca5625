"""Composing body-part codes across real clips (parttok.composition)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_tokenizer

from parttok.baselines import ConvVQ
from parttok.composition import (
    compose_codes,
    composition_errors,
    local_positions,
    part_indices,
    part_joints,
)
from parttok.data import bvh_features
from parttok.errors import InputError
from parttok.features import features_to_joints
from parttok.tokenizer import Tokenizer

WALK = "dataset-2_walk_active_007"  # both in the validation split: never trained on
WAVE = "dataset-2_wave-right-hand_active_007"


def test_compose_codes_takes_columns_and_wraps_the_donor():
    base = np.arange(12).reshape(6, 2)
    donor = 100 + np.arange(8).reshape(4, 2)
    composite = compose_codes(base, donor, [1])
    np.testing.assert_array_equal(composite[:, 0], base[:, 0])
    np.testing.assert_array_equal(composite[:, 1], [101, 103, 105, 107, 101, 103])
    np.testing.assert_array_equal(base, np.arange(12).reshape(6, 2))  # input untouched
    with pytest.raises(InputError, match="do not compose"):
        compose_codes(base, np.zeros((4, 3), dtype=int), [1])
    with pytest.raises(InputError, match="empty"):
        compose_codes(base, donor[:0], [1])
    with pytest.raises(InputError, match="outside"):
        compose_codes(base, donor, [-1])


def test_part_names_are_checked_and_whole_body_codes_refused():
    parts = ("root", "torso", "left_arm", "right_arm", "left_leg", "right_leg")
    assert part_indices(["right_arm", "torso"], parts) == [3, 1]
    with pytest.raises(InputError, match="unknown part"):
        part_indices(["tail"], parts)
    with pytest.raises(InputError, match="unknown part"):
        part_indices([], parts)
    for whole_body in (("body",), ("layer0", "layer1", "layer2")):
        with pytest.raises(InputError, match="whole-body"):
            part_indices([whole_body[0]], whole_body)


def test_local_positions_keep_the_bodys_shape(humanml3d_dir):
    features = np.load(humanml3d_dir / "new_joint_vecs" / "012314.npy")
    joints = features_to_joints(features)  # (T, 22, 3) world
    arm = (14, 17, 19, 21)
    local = local_positions(features, arm, 9)  # relative to spine3, facing frame
    world = joints[:, list(arm)] - joints[:, [9]]
    # A rotation about Y: same lengths and heights, different X/Z in general.
    np.testing.assert_allclose(
        np.linalg.norm(local, axis=-1), np.linalg.norm(world, axis=-1), atol=1e-5
    )
    np.testing.assert_allclose(local[..., 1], world[..., 1], atol=1e-5)
    np.testing.assert_allclose(local[0], world[0], atol=1e-5)  # frame 0 faces +Z in both


@pytest.fixture(scope="module")
def clips(bandai_dir):
    return {name: bvh_features(bandai_dir / "data" / f"{name}.bvh") for name in (WALK, WAVE)}


def test_shipped_model_composes_a_wave_onto_a_walk(clips):
    """The taken arm follows the donor and the rest stays with the base."""
    tokenizer = Tokenizer.from_pretrained()
    errors, composite = composition_errors(tokenizer, clips[WALK], clips[WAVE], ["right_arm"])
    steps = len(clips[WALK]) // tokenizer.frames_per_step
    assert composite.shape == (steps * tokenizer.frames_per_step, 263)
    assert errors["before_mm"] > 150  # waving moves the arm far from where walking has it
    assert errors["taken_mm"] < 0.35 * errors["before_mm"]
    assert errors["kept_mm"] < 30
    # The decoded hand is raised like the wave's, not swinging low like the walk's.
    wrist_height = features_to_joints(composite)[:, 21, 1].mean()
    walk_wrist = features_to_joints(clips[WALK])[:, 21, 1].mean()
    assert wrist_height > walk_wrist + 0.3


def test_composition_checks_parts_and_model(humanml3d_dir, clips):
    tokenizer = small_tokenizer(humanml3d_dir)
    assert list(part_joints(tokenizer)) == list(tokenizer.parts)
    with pytest.raises(InputError, match="unknown part"):
        composition_errors(tokenizer, clips[WALK], clips[WAVE], ["tail"])
    with pytest.raises(InputError, match="root"):
        composition_errors(tokenizer, clips[WALK], clips[WAVE], ["root"])
    with pytest.raises(InputError, match="donor clip has 3 frames"):
        composition_errors(tokenizer, clips[WALK], clips[WAVE][:3], ["right_arm"])
    torch.manual_seed(0)
    whole_body = Tokenizer(
        ConvVQ(width=32, depth=1, codebook_size=16, code_dim=8).eval(),
        tokenizer.mean,
        tokenizer.std,
    )
    with pytest.raises(InputError, match="part tokenizer"):
        composition_errors(whole_body, clips[WALK], clips[WAVE], ["right_arm"])


def test_compose_command_writes_a_token_file(clips, humanml3d_dir, tmp_path, capsys):
    from parttok.cli import main
    from parttok.tokenfile import load_tokens

    for name, features in clips.items():
        np.save(tmp_path / f"{name}.npy", features)
    assert (
        main(
            [
                "encode",
                str(tmp_path / f"{WALK}.npy"),
                str(tmp_path / f"{WAVE}.npy"),
                "--out",
                str(tmp_path / "codes"),
            ]
        )
        == 0
    )
    walk, wave = tmp_path / "codes" / f"{WALK}.ptok", tmp_path / "codes" / f"{WAVE}.ptok"
    out = tmp_path / "walk_waving.ptok"
    assert (
        main(["compose", str(walk), str(wave), "--parts", "right_arm, left_leg", "--out", str(out)])
        == 0
    )
    base, donor, composite = load_tokens(walk), load_tokens(wave), load_tokens(out)
    assert composite.codes.shape == base.codes.shape and composite.checkpoint == base.checkpoint
    arm, leg = base.parts.index("right_arm"), base.parts.index("left_leg")
    wrapped = np.resize(donor.codes, base.codes.shape)
    np.testing.assert_array_equal(composite.codes[:, [arm, leg]], wrapped[:, [arm, leg]])
    others = [i for i in range(len(base.parts)) if i not in (arm, leg)]
    np.testing.assert_array_equal(composite.codes[:, others], base.codes[:, others])
    assert main(["decode", str(out), "--out", str(tmp_path / "decoded")]) == 0
    capsys.readouterr()
    # Bad input: one line, exit status 2.
    assert main(["compose", str(walk), str(wave), "--parts", "tail", "--out", str(out)]) == 2
    assert "unknown part(s) ['tail']" in capsys.readouterr().err
    assert main(["compose", str(walk), str(wave), "--parts", ",", "--out", str(out)]) == 2
    assert "unknown part(s) []" in capsys.readouterr().err
    small_tokenizer(humanml3d_dir).save_pretrained(tmp_path / "small")
    assert (
        main(
            [
                "encode",
                str(tmp_path / f"{WAVE}.npy"),
                "--out",
                str(tmp_path / "small_codes"),
                "--checkpoint",
                str(tmp_path / "small"),
            ]
        )
        == 0
    )
    other = tmp_path / "small_codes" / f"{WAVE}.ptok"
    capsys.readouterr()
    assert main(["compose", str(walk), str(other), "--parts", "right_arm", "--out", str(out)]) == 2
    assert "compose codes of one tokenizer" in capsys.readouterr().err
