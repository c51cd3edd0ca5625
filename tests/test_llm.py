"""The tokens inside a real language-model stack (transformers, tokenizers, peft), offline:
one id per motion token, initialised embedding rows and the vocab command's Hugging Face
outputs, on SmolLM2's real tokenizer and a tiny random Llama."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import small_tokenizer, tiny_causal_lm
from transformers import AutoModelForCausalLM, AutoTokenizer

from parttok.cli import main
from parttok.errors import InputError
from parttok.tokens import (
    Vocabulary,
    add_motion_tokens,
    codebook_projection,
    codes_to_text,
    text_to_codes,
)


@pytest.fixture(scope="module")
def motion_tokenizer(humanml3d_dir):
    return small_tokenizer(humanml3d_dir, codebook_size=128, code_dim=16)


@pytest.fixture
def text_tokenizer(smollm2_tokenizer):
    """A copy of SmolLM2's tokenizer each test may extend."""
    return copy.deepcopy(smollm2_tokenizer)


def test_one_id_per_motion_token_and_lossless_decoding(text_tokenizer, motion_tokenizer):
    hf_tokenizer = text_tokenizer
    text_size = len(hf_tokenizer)
    for naming in ("parttok", "motiongpt"):
        vocab = Vocabulary.from_tokenizer(motion_tokenizer, naming)
        ids = add_motion_tokens(None, hf_tokenizer, vocab)
        assert len(set(ids)) == len(vocab) and min(ids) >= text_size
        codes = np.random.default_rng(0).integers(0, 128, (7, 6))
        prompt = "a person walks forward. "
        encoded = hf_tokenizer(prompt + codes_to_text(codes, vocab), add_special_tokens=False)
        motion_ids = [i for i in encoded["input_ids"] if i >= text_size]
        assert len(motion_ids) == codes.size + 2  # one id per code, plus start and end
        assert motion_ids[0] == hf_tokenizer.convert_tokens_to_ids(vocab.start)
        decoded = hf_tokenizer.decode(encoded["input_ids"], skip_special_tokens=True)
        assert decoded.startswith(prompt.strip())
        result = text_to_codes(decoded, vocab, repair=False)
        np.testing.assert_array_equal(result.codes, codes)
    assert len(hf_tokenizer) == text_size + 2 * (2 + 6 * 128) + 1  # motiongpt has a reserve
    again = add_motion_tokens(None, hf_tokenizer, vocab)  # adding twice adds nothing
    assert again == ids and len(hf_tokenizer) == text_size + 2 * (2 + 6 * 128) + 1


def test_mean_initialisation(text_tokenizer, motion_tokenizer):
    hf_tokenizer = text_tokenizer
    model = tiny_causal_lm(hf_tokenizer)
    old = model.get_input_embeddings().weight.detach().clone()
    vocab = Vocabulary.from_tokenizer(motion_tokenizer)
    ids = add_motion_tokens(model, hf_tokenizer, vocab, init="mean", noise=0.02)
    weight = model.get_input_embeddings().weight.detach()
    assert weight.shape[0] == len(hf_tokenizer) and torch.equal(weight[: len(old)], old)
    rows = weight[ids].double()
    deviation = (rows - old.double().mean(0)) / old.double().std(0)
    assert deviation.abs().max() < 0.02 * 7  # the mean plus small noise
    assert 0.01 < deviation.std() < 0.03  # ... and the rows differ
    assert torch.equal(model.get_output_embeddings().weight, model.get_input_embeddings().weight)


@pytest.mark.parametrize("tied", [True, False])
def test_codebook_initialisation(text_tokenizer, motion_tokenizer, tied):
    hf_tokenizer = text_tokenizer
    model = tiny_causal_lm(hf_tokenizer, tied=tied)
    old = model.get_input_embeddings().weight.detach().double().clone()
    vocab = Vocabulary.from_tokenizer(motion_tokenizer, "motiongpt")
    ids = add_motion_tokens(model, hf_tokenizer, vocab, motion_tokenizer, init="codebook")
    codes = motion_tokenizer.model.codebook_vectors().detach().double().reshape(-1, 16)
    rows = model.get_input_embeddings().weight.detach().double()[ids[: len(codes)]]
    expected = codebook_projection(codes.numpy(), old.numpy())
    np.testing.assert_allclose(rows.numpy(), expected, atol=1e-5)
    # a similarity transform: distances between codes kept up to one factor
    code_distances = torch.cdist(codes, codes)
    row_distances = torch.cdist(rows, rows)
    mask = code_distances > 1e-6
    ratios = row_distances[mask] / code_distances[mask]
    assert ratios.std() / ratios.mean() < 1e-3
    # ... placed with the existing embeddings' mean and total variance
    torch.testing.assert_close(rows.mean(0), old.mean(0), atol=1e-5, rtol=0)
    variance = ((rows - rows.mean(0)) ** 2).sum(1).mean()
    old_variance = ((old - old.mean(0)) ** 2).sum(1).mean()
    torch.testing.assert_close(variance, old_variance, rtol=1e-4, atol=0)
    if not tied:
        output = model.get_output_embeddings().weight.detach().double()
        assert output.shape[0] == len(hf_tokenizer)
        assert not torch.allclose(output[ids[0]], rows[0])  # from the output rows' own space
        assert (output[ids[0]] - output[: len(old)].mean(0)).norm() < 10 * output.std()


def test_codebook_initialisation_checks_its_inputs(text_tokenizer, motion_tokenizer):
    hf_tokenizer = text_tokenizer
    model = tiny_causal_lm(hf_tokenizer)
    vocab = Vocabulary.from_tokenizer(motion_tokenizer)
    with pytest.raises(InputError, match="needs the parttok tokenizer"):
        add_motion_tokens(model, hf_tokenizer, vocab, init="codebook")
    with pytest.raises(InputError, match="init must be"):
        add_motion_tokens(model, hf_tokenizer, vocab, init="random")
    other = Vocabulary(codebook_size=128, identity="0123456789abcdef")
    with pytest.raises(InputError, match="belongs to checkpoint 0123456789abcdef"):
        add_motion_tokens(model, hf_tokenizer, other, motion_tokenizer)


def test_vocab_command_extends_a_saved_tokenizer_and_model(
    text_tokenizer, motion_tokenizer, tmp_path
):
    checkpoint = motion_tokenizer.save_pretrained(tmp_path / "parttok")
    hf_tokenizer = text_tokenizer
    hf_tokenizer.save_pretrained(tmp_path / "hf_tokenizer")
    base = len(hf_tokenizer)
    tiny_causal_lm(hf_tokenizer).save_pretrained(tmp_path / "hf_model")
    out = tmp_path / "out"
    status = main(
        [
            "vocab",
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            "--tokenizer",
            str(tmp_path / "hf_tokenizer"),
            "--model",
            str(tmp_path / "hf_model"),
            "--init",
            "mean",
        ]
    )
    assert status == 0
    vocab = Vocabulary.load(out / "vocab.json")
    extended = AutoTokenizer.from_pretrained(out / "tokenizer", local_files_only=True)
    assert len(extended) == base + len(vocab)
    ids = extended("".join(vocab.tokens), add_special_tokens=False)["input_ids"]
    assert ids == list(range(base, base + len(vocab)))  # each token one id, in vocab order
    model = AutoModelForCausalLM.from_pretrained(out / "model", local_files_only=True)
    weight = model.get_input_embeddings().weight.detach()
    assert weight.shape[0] == len(extended)
    assert (weight[base:] - weight[:base].mean(0)).norm(dim=1).max() < weight[:base].std() * 2
