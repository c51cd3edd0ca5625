"""The tokens inside a real language-model stack (transformers, tokenizers, peft), offline:
one id per motion token, initialised embedding rows, the vocab command's Hugging Face
outputs, and a short run of tools/llm_proof.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from conftest import llm_proof_tool
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
)

from parttok.cli import main  # noqa: E402
from parttok.errors import InputError  # noqa: E402
from parttok.tokens import (  # noqa: E402
    Vocabulary,
    add_motion_tokens,
    codebook_projection,
    codes_to_text,
    text_to_codes,
)

SENTENCES = [
    "a man kicks something with his left leg.",
    "a person walks forward and turns left.",
    "someone waves both hands above the head.",
    "the person runs in a circle.",
]


@pytest.fixture(scope="module")
def proof(data_dir):
    return llm_proof_tool()


@pytest.fixture(scope="module")
def motion_tokenizer(proof):
    return proof.random_tokenizer("motion", codebook_size=128)


def tiny_gpt2(hf_tokenizer, tied: bool = True) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(hf_tokenizer),
        n_positions=512,
        n_embd=64,
        n_layer=2,
        n_head=2,
        tie_word_embeddings=tied,
        bos_token_id=hf_tokenizer.eos_token_id,
        eos_token_id=hf_tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(config)


def test_one_id_per_motion_token_and_lossless_decoding(proof, motion_tokenizer):
    hf_tokenizer = proof.text_tokenizer(SENTENCES, vocab_size=300)
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


def test_mean_initialisation(proof, motion_tokenizer):
    hf_tokenizer = proof.text_tokenizer(SENTENCES, vocab_size=300)
    model = tiny_gpt2(hf_tokenizer)
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
def test_codebook_initialisation(proof, motion_tokenizer, tied):
    hf_tokenizer = proof.text_tokenizer(SENTENCES, vocab_size=300)
    model = tiny_gpt2(hf_tokenizer, tied=tied)
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


def test_codebook_initialisation_checks_its_inputs(proof, motion_tokenizer):
    hf_tokenizer = proof.text_tokenizer(SENTENCES, vocab_size=300)
    model = tiny_gpt2(hf_tokenizer)
    vocab = Vocabulary.from_tokenizer(motion_tokenizer)
    with pytest.raises(InputError, match="needs the parttok tokenizer"):
        add_motion_tokens(model, hf_tokenizer, vocab, init="codebook")
    with pytest.raises(InputError, match="init must be"):
        add_motion_tokens(model, hf_tokenizer, vocab, init="random")
    other = Vocabulary(codebook_size=128, identity="0123456789abcdef")
    with pytest.raises(InputError, match="belongs to checkpoint 0123456789abcdef"):
        add_motion_tokens(model, hf_tokenizer, other, motion_tokenizer)


def test_vocab_command_extends_a_saved_tokenizer_and_model(proof, motion_tokenizer, tmp_path):
    checkpoint = motion_tokenizer.save_pretrained(tmp_path / "parttok")
    hf_tokenizer = proof.text_tokenizer(SENTENCES, vocab_size=300)
    hf_tokenizer.save_pretrained(tmp_path / "hf_tokenizer")
    base = len(hf_tokenizer)
    tiny_gpt2(hf_tokenizer).save_pretrained(tmp_path / "hf_model")
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


def test_short_proof_run(proof, humanml3d_dir, tmp_path):
    """A few steps of both fine-tunings on the real clips: losses fall, generations are
    parsed or rejected by the parser, parsed ones decode to finite joints."""
    config = proof.ProofConfig(
        out=tmp_path / "proof",
        data=humanml3d_dir,
        random_tokenizer=True,
        steps=10,
        batch_size=2,
        samples=1,
        max_new_tokens=24,
        width=32,
        layers=1,
        codebook_size=64,
    )
    figures = proof.run_proof(config)
    for fit in figures["fits"]:
        assert fit["train_loss_end"] < fit["train_loss_start"], fit
        assert fit["trainable_parameters"] > 0 and fit["steps"] == 10
    lora, full = figures["fits"]
    assert lora["method"] == "lora" and lora["trainable_parameters"] < full["trainable_parameters"]
    for run in figures["generation"].values():
        assert run["generated"] == 1 and run["parsed"] + sum(run["errors"].values()) == 1
    saved = json.loads((tmp_path / "proof" / "llm_proof.json").read_text())
    assert saved["fits"] == figures["fits"]
    section = proof.benchmark_section(figures, "python tools/llm_proof.py ...")
    assert section.startswith("## LLM proof\n") and "| lora | " in section
    for tag, run in figures["generation"].items():
        joints = sorted((tmp_path / "proof").glob(f"{tag}_*_joints.npy"))
        assert len(joints) == run["parsed"]
        for path in joints:
            assert np.isfinite(np.load(path)).all()


def test_benchmark_section_is_replaced_in_place(proof, tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Throughput\nfast\n\n## LLM proof\nold\n\n## Later\nkept\n")
    proof.update_benchmarks(path, "## LLM proof\n\nnew figures\n")
    text = path.read_text()
    assert "old" not in text and "new figures" in text
    assert text.index("## Throughput") < text.index("## LLM proof") < text.index("## Later")
    assert "fast" in text and "kept" in text
    missing = tmp_path / "new.md"
    proof.update_benchmarks(missing, "## LLM proof\n\nfigures\n")
    assert missing.read_text().startswith("# Benchmarks\n\n## LLM proof\n")


@pytest.mark.slow
def test_proof_on_bandai_namco(proof, tmp_path):
    """The proof as BENCHMARKS.md reports it: 300 converted Bandai Namco clips, the shipped
    tokenizer, both fine-tunings; the held-out loss falls and generated motions parse."""
    figures = proof.run_proof(proof.ProofConfig(out=tmp_path / "proof"))
    for fit in figures["fits"]:
        assert fit["heldout_loss_end"] < fit["heldout_loss_start"] - 2.0, fit
    generation = figures["generation"]
    assert sum(run["parsed"] for run in generation.values()) >= 4, generation
    assert generation["full_greedy"]["parsed"] + generation["full_sampled"]["parsed"] >= 2
    assert (tmp_path / "proof" / "generated.gif").is_file()
