"""Codes chosen through the decoder (``parttok.refine``), on the shipped model and the real
HumanML3D clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_CONV, initialised_tokenizer, small_tokenizer

from parttok.baselines import ConvVQ, ResidualConvVQ
from parttok.cli import main
from parttok.data import HumanML3DFolder
from parttok.instruct import InstructSettings, build_conversations
from parttok.metrics import clip_metrics, summarize
from parttok.model import FIVE_PARTS, PartTokenizer, nearest_codes
from parttok.refine import _JointError, _refined_parts, refine_codes
from parttok.tokenfile import load_tokens
from parttok.tokenizer import Tokenizer
from parttok.tokens import codes_to_text

CLIPS = ("000000", "007005", "012314", "M010655")


@pytest.fixture(scope="module")
def shipped() -> Tokenizer:
    return Tokenizer.from_pretrained()


@pytest.fixture(scope="module")
def clips(humanml3d_dir: Path) -> list[np.ndarray]:
    return [
        np.load(humanml3d_dir / "new_joint_vecs" / f"{c}.npy").astype(np.float32) for c in CLIPS
    ]


def batch_of(tokenizer: Tokenizer, clips: list[np.ndarray]) -> tuple[torch.Tensor, ...]:
    """The clips normalised and padded as ``encode_batch`` pads them, with mean and std."""
    prepared = tokenizer._normalised(clips)
    features, mask = tokenizer._padded(prepared, list(range(len(prepared))))
    return features, mask, torch.from_numpy(tokenizer.mean), torch.from_numpy(tokenizer.std)


def mpjpe(tokenizer: Tokenizer, codes: list[np.ndarray], clips: list[np.ndarray]) -> float:
    decoded = tokenizer.decode_batch(codes)
    rows = [clip_metrics(d, c[: len(d)]) for d, c in zip(decoded, clips, strict=True)]
    return summarize(rows)["mpjpe_mm"]


def test_candidates_are_the_nearest_codes_nearest_first(shipped, clips):
    features, mask, _, _ = batch_of(shipped, clips)
    model = shipped.model
    options = model.candidate_codes(features, mask, 5)  # (B, S, P, 5)
    codes = model.encode(features, mask)
    assert torch.equal(options[..., 0], codes)  # -1 at the same padded steps
    real = codes[..., 0] >= 0
    latents = model(features, mask).latents[real]  # (N, P, d)
    books = model.quantizer.codebook_vectors()  # (P, K, d)
    for part in range(model.num_parts):
        distances = torch.cdist(latents[:, part], books[part])  # (N, K)
        expected = distances.sort(-1).values[:, :5]
        chosen = distances.gather(1, options[real][:, part])
        torch.testing.assert_close(chosen, expected)
    books = torch.zeros(2, 6, 3)  # equally near codes (a codebook with duplicates): the first
    books[:, 3] = 5.0  # candidate is still the code encode's argmin picks
    vectors = torch.randn(10, 2, 3)
    assert torch.equal(nearest_codes(vectors, books, 3)[..., 0], nearest_codes(vectors, books))


def test_refined_codes_reconstruct_the_real_clips_better(shipped, clips):
    """On the four HumanML3D clips (padded in one batch): refined codes are valid tokens, -1
    where the nearest are, the root part tried last; no clip's error by the measure refining
    minimises grows; MPJPE falls by more than 4 mm (45.8 -> 40.3 mm with 4 candidates); the
    same input gives the same codes, and the model's weights and codebooks stay as they were."""
    features, mask, mean, std = batch_of(shipped, clips)
    model = shipped.model
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    nearest = model.encode(features, mask)
    refined = refine_codes(model, features, mask, mean, std, candidates=4)
    assert refined.shape == nearest.shape and torch.equal(refined < 0, nearest < 0)
    assert refined.max() < model.codebook_size
    assert _refined_parts(model) == [1, 2, 3, 4, 5, 0]  # the root's codes last
    assert (refined != nearest).float().mean() > 0.2
    error = _JointError(features, mask, mean, std, model.frames_per_step, world=True)
    totals = [error.step_errors(model.decode(c, mask))[0].sum(-1) for c in (nearest, refined)]
    assert (totals[1] <= totals[0]).all() and (totals[1] < 0.95 * totals[0]).all()
    assert torch.equal(refine_codes(model, features, mask, mean, std, candidates=4), refined)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    codes = shipped.encode_batch(clips, refine=4)
    for row, clip_codes in enumerate(codes):
        np.testing.assert_array_equal(clip_codes, refined[row, : len(clip_codes)].numpy())
    assert mpjpe(shipped, codes, clips) < mpjpe(shipped, shipped.encode_batch(clips), clips) - 4


def test_each_candidate_is_decoded_once_per_half_sweep(humanml3d_dir, clips, monkeypatch):
    """The first sweep decodes the codes as they are (the nearest) and the other candidates,
    not the nearest twice: N rows per clip, part and half-sweep; later sweeps N + 1 (a code may
    have moved off its nearest); one candidate decodes nothing but the final check."""
    tokenizer = small_tokenizer(humanml3d_dir, 0)
    model = tokenizer.model
    features, mask, mean, std = batch_of(tokenizer, clips[:2])
    rows = []
    decode = model.decode

    def counting(codes: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        rows.append(len(codes))
        return decode(codes, mask)

    monkeypatch.setattr(model, "decode", counting)
    refine_codes(model, features, mask, mean, std, candidates=4, sweeps=2)
    half_sweeps = 2 * len(_refined_parts(model))
    assert rows == [4 * 2] * half_sweeps + [5 * 2] * half_sweeps + [2]
    rows.clear()
    refine_codes(model, features, mask, mean, std, candidates=1, sweeps=2)
    assert rows == [2]


def test_one_candidate_keeps_the_nearest_codes(shipped, clips):
    np.testing.assert_array_equal(
        np.concatenate(shipped.encode_batch(clips, refine=1)),
        np.concatenate(shipped.encode_batch(clips)),
    )


def test_pose_mode_tries_the_parts_in_their_order(humanml3d_dir, clips):
    """A pose tokenizer (no trajectory) tries the parts in their order, where motion mode
    tries the pelvis's part (the five-part torso, pelvis and spine) last; judged in the facing
    frame only, its refined codes never do worse there."""
    parts = {name: list(joints) for name, joints in FIVE_PARTS.items()}
    tokenizer = small_tokenizer(humanml3d_dir, 0, mode="pose", parts=parts)
    motion = small_tokenizer(humanml3d_dir, 0, mode="motion", parts=parts)
    assert _refined_parts(tokenizer.model) == [0, 1, 2, 3, 4]
    assert _refined_parts(motion.model) == [1, 2, 3, 4, 0]  # the torso holds the pelvis: last
    features, mask, mean, std = batch_of(tokenizer, clips[:2])
    nearest = tokenizer.model.candidate_codes(features, mask, 4)[..., 0]  # where refining starts
    refined = refine_codes(tokenizer.model, features, mask, mean, std, candidates=4)
    assert refined.shape == nearest.shape and torch.equal(refined < 0, nearest < 0)
    error = _JointError(features, mask, mean, std, 1, world=False)
    totals = [
        error.step_errors(tokenizer.model.decode(c, mask))[0].sum(-1) for c in (nearest, refined)
    ]
    assert (totals[1] <= totals[0]).all()


@pytest.mark.parametrize("make", [ConvVQ, ResidualConvVQ], ids=["conv_vq", "residual_vq"])
def test_the_whole_body_baselines_refine_every_code_column(humanml3d_dir, clips, make, tmp_path):
    """T2M-GPT's VQ and the residual VQ get the same search (a like-for-like comparison):
    every column is tried (each carries the root with the rest of the body); a residual
    layer's candidates are the codes nearest the residual the earlier layers' nearest codes
    leave; refined codes never do worse than the nearest by the refining measure; a saved
    baseline refines through ``parttok evaluate --refine`` too."""
    torch.manual_seed(0)
    tokenizer = initialised_tokenizer(make(**SMALL_CONV), humanml3d_dir)
    model = tokenizer.model
    assert _refined_parts(model) == list(reversed(range(model.num_parts)))  # coarsest last
    features, mask, mean, std = batch_of(tokenizer, clips)
    options = model.candidate_codes(features, mask, 4)  # (B, S, columns, 4)
    nearest = model.encode(features, mask)
    assert torch.equal(options[..., 0], nearest)
    real = nearest[..., 0] >= 0
    residual = model(features, mask).latents[real][:, 0]  # (N, d)
    for layer, book in enumerate(model.codebook_vectors()):  # (K, d) per column
        distances = torch.cdist(residual, book)  # (N, K)
        chosen = distances.gather(1, options[real][:, layer])
        torch.testing.assert_close(chosen, distances.sort(-1).values[:, :4])
        residual = residual - book[options[real][:, layer, 0]]
    refined = refine_codes(model, features, mask, mean, std, candidates=4)
    assert torch.equal(refined < 0, nearest < 0)
    assert ((refined != nearest) & (nearest >= 0)).any(dim=(0, 1)).all()  # every column moved
    error = _JointError(features, mask, mean, std, model.frames_per_step, world=True)
    totals = [error.step_errors(model.decode(c, mask))[0].sum(-1) for c in (nearest, refined)]
    assert (totals[1] <= totals[0]).all() and (totals[1] < totals[0]).any()
    codes = tokenizer.encode_batch(clips, refine=4)
    for row, clip_codes in enumerate(codes):
        np.testing.assert_array_equal(clip_codes, refined[row, : len(clip_codes)].numpy())
    folder = tokenizer.save_pretrained(tmp_path / "baseline")  # and from the command line
    clip, report = humanml3d_dir / "new_joint_vecs" / f"{CLIPS[1]}.npy", tmp_path / "r.json"
    argv = ["evaluate", str(clip), "--checkpoint", str(folder), "--json", str(report)]
    assert main([*argv, "--refine", "4"]) == 0
    figures = json.loads(report.read_text())
    assert figures["refine"] == 4 and figures["mpjpe_mm"] == pytest.approx(
        mpjpe(tokenizer, codes[1:2], clips[1:2])
    )


def test_models_without_codebooks_and_bad_counts_are_refused(humanml3d_dir, shipped, clips):
    features, mask, mean, std = batch_of(shipped, clips[:1])
    with pytest.raises(ValueError, match="needs codebooks, which this Linear lacks"):
        refine_codes(torch.nn.Linear(2, 2), features, mask, mean, std)
    fsq = PartTokenizer(quantizer="fsq", dim=32, joint_dim=16, heads=2)
    with pytest.raises(ValueError, match="codebooks"):
        refine_codes(fsq, features, mask, mean, std)
    with pytest.raises(ValueError, match="codebooks"):
        fsq.candidate_codes(features, mask, 2)
    continuous = PartTokenizer(mode="continuous", dim=32, joint_dim=16, heads=2)
    with pytest.raises(ValueError, match="continuous mode has no codes"):
        continuous.candidate_codes(features, mask, 2)
    with pytest.raises(ValueError, match="candidates >= 1"):
        refine_codes(shipped.model, features, mask, mean, std, candidates=0)
    with pytest.raises(ValueError, match="refine must be 0"):
        shipped.encode_batch(clips[:1], refine=-2)


def test_evaluate_and_encode_take_refine(humanml3d_dir, tmp_path, capsys, monkeypatch):
    clip = humanml3d_dir / "new_joint_vecs" / "007005.npy"
    refined_encodes = []  # evaluate --report --refine encodes once: the report reuses the codes
    encode_batch = Tokenizer.encode_batch

    def counting(self, clips, batch_size=32, refine=0):
        refined_encodes.extend([refine] if refine else [])
        return encode_batch(self, clips, batch_size, refine)

    monkeypatch.setattr(Tokenizer, "encode_batch", counting)
    argv = ["evaluate", str(clip), "--refine", "2", "--report", str(tmp_path / "report")]
    assert main(argv) == 0
    assert refined_encodes == [2]
    assert "refined among the 2 nearest" in (tmp_path / "report" / "report.md").read_text()
    monkeypatch.undo()
    figures = {}
    for count in (0, 3):
        report = tmp_path / f"report{count}.json"
        assert main(["evaluate", str(clip), "--json", str(report), "--refine", str(count)]) == 0
        figures[count] = json.loads(report.read_text())
    assert figures[3]["refine"] == 3 and figures[0]["refine"] == 0
    assert figures[3]["mpjpe_mm"] < figures[0]["mpjpe_mm"]
    assert main(["encode", str(clip), "--out", str(tmp_path / "tokens"), "--refine", "3"]) == 0
    tokens = load_tokens(tmp_path / "tokens" / "007005.ptok")  # the file says how it was made
    assert tokens.refine == 3
    features = np.load(clip).astype(np.float32)
    np.testing.assert_array_equal(tokens.codes, Tokenizer.from_pretrained().encode(features, 3))
    with pytest.raises(SystemExit):
        main(["evaluate", str(clip), "--refine", "many"])
    assert "expected a whole number of codes >= 0, got 'many'" in capsys.readouterr().err


def test_instruction_data_carries_refined_codes(humanml3d_dir, shipped):
    """``InstructSettings(refine=N)`` (``parttok instruct --refine N``) writes the refined
    codes of the captioned clip into its text-to-motion answers."""
    folder = HumanML3DFolder(humanml3d_dir)
    plain, refined = (
        build_conversations(
            [humanml3d_dir], shipped, settings=InstructSettings(tasks=("t2m",), refine=n)
        )
        for n in (0, 3)
    )
    pairs = list(zip(plain.records, refined.records, strict=True))
    assert pairs and all(a["user"] == b["user"] for a, b in pairs)
    whole = codes_to_text(shipped.encode(folder.features("000000"), refine=3))  # 0#0: whole clip
    assert all(whole in b["assistant"] and whole not in a["assistant"] for a, b in pairs)


def test_refining_a_model_without_codebooks_is_one_clear_error(humanml3d_dir, tmp_path, capsys):
    """--refine on a continuous tokenizer: one line and exit status 2 from encode, evaluate
    and instruct, before any clip is read."""
    folder = tmp_path / "continuous"
    small_tokenizer(humanml3d_dir, 0, mode="continuous").save_pretrained(folder)
    clip = str(humanml3d_dir / "new_joint_vecs" / "007005.npy")
    for command in (
        ["evaluate", clip],
        ["encode", clip, "--out", str(tmp_path / "tokens")],
        ["instruct", str(humanml3d_dir), "--out", str(tmp_path / "data.jsonl")],
    ):
        assert main([*command, "--checkpoint", str(folder), "--refine", "2"]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert error == [
            f"parttok {command[0]}: error: --refine needs a model with VQ codebooks, "
            "not a PartTokenizer (continuous mode, no quantizer)"
        ]
