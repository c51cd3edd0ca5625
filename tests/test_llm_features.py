"""Continuous motion into the LLM (``parttok.llm.features``): encoder features before the
quantizer, placeholders in the prompt, the projector's output at exactly those positions,
the projector trained by tuning (stage 1 with the LLM frozen, stage 2 from its projector),
export and load, and captioning from one command, on a tiny random Llama with SmolLM2's
real tokenizer and the real HumanML3D clips."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_causal_lm, tune
from safetensors.torch import load_file

from parttok.cli import main
from parttok.errors import InputError
from parttok.llm.features import (
    FEATURE_TOKEN,
    PROJECTOR_FILE,
    FeatureProjector,
    add_placeholder,
    embeddings_with_features,
    pooled,
    with_placeholders,
)
from parttok.llm.model import MotionLLM
from parttok.llm.tune import MotionLanguageModule
from parttok.tokenizer import Tokenizer
from parttok.tokens import Vocabulary


@pytest.fixture(scope="module", autouse=True)
def isolated_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PARTTOK_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def captions(tmp_path_factory, humanml3d_dir) -> Path:
    out = tmp_path_factory.mktemp("captions") / "caption.jsonl"
    assert main(["instruct", str(humanml3d_dir), "--tasks", "caption", "--out", str(out)]) == 0
    return out


def test_latents_are_what_the_codes_quantise(humanml3d_dir):
    tokenizer = Tokenizer.from_pretrained(None)
    clips = [np.load(p) for p in sorted((humanml3d_dir / "new_joint_vecs").glob("*.npy"))[:3]]
    latents = tokenizer.latents_batch(clips)
    codes = tokenizer.encode_batch(clips)
    for latent, code in zip(latents, codes, strict=True):
        assert latent.shape == (*code.shape, tokenizer.model.code_dim)
        vectors = tokenizer.model.codebook_vectors().detach()  # (P, K, d)
        for part in range(code.shape[1]):
            distances = torch.cdist(torch.from_numpy(latent[:, part]), vectors[part])
            assert (distances.argmin(1).numpy() == code[:, part]).mean() > 0.95


def test_placeholders_take_the_projected_features(smollm2_tokenizer):
    vocab = Vocabulary.from_tokenizer(Tokenizer.from_pretrained(None))
    latents = np.random.default_rng(0).normal(size=(4, 6, 32)).astype(np.float32)
    assert pooled(latents, "parts").shape == (24, 32)
    assert pooled(latents, "steps").shape == (4, 192)
    np.testing.assert_array_equal(pooled(latents, "steps")[1], latents[1].reshape(-1))
    user = f"Describe {vocab.start}{vocab.code_tokens[0, 3]}{vocab.end} briefly."
    replaced = with_placeholders(user, vocab, 5)
    assert replaced == f"Describe {vocab.start}{FEATURE_TOKEN * 5}{vocab.end} briefly."
    assert with_placeholders("no motion here", vocab, 5) is None

    model = tiny_causal_lm(smollm2_tokenizer)
    hf = copy.deepcopy(smollm2_tokenizer)  # the session's tokenizer stays as it is
    token_id = add_placeholder(model, hf)
    assert hf.convert_tokens_to_ids(FEATURE_TOKEN) == token_id
    assert model.get_input_embeddings().weight.shape[0] > token_id
    ids = hf(["a" + FEATURE_TOKEN * 3 + "b", FEATURE_TOKEN * 2], padding=True, return_tensors="pt")
    projector = FeatureProjector("mlp", 32, 32)
    features = [torch.randn(3, 32), torch.randn(2, 32)]
    embeds = embeddings_with_features(
        model.get_input_embeddings(), ids["input_ids"], features, projector, token_id
    )
    slots = ids["input_ids"] == token_id
    torch.testing.assert_close(embeds[slots], projector(torch.cat(features)))
    plain = model.get_input_embeddings()(ids["input_ids"])
    torch.testing.assert_close(embeds[~slots], plain[~slots])
    with pytest.raises(ValueError, match="placeholders"):
        embeddings_with_features(
            model.get_input_embeddings(), ids["input_ids"], features[:1], projector, token_id
        )


def test_the_projector_learns_from_tuning(tiny_base, captions, humanml3d_dir):
    """One training step: the projector gets gradients and moves; the LLM's own weights get
    none (stage 1: the LLM frozen)."""
    module = MotionLanguageModule(
        base=str(tiny_base), adapter="none", motion_input="features", projector="linear"
    )
    before = {k: v.clone() for k, v in module.projector.state_dict().items()}
    trainable = [p for p in module.parameters() if p.requires_grad]
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    assert any(n.startswith("projector.") for n in names)
    assert not any("lora" in n or "q_proj" in n for n in names)
    from parttok.llm.tune import ConversationDataModule

    data = ConversationDataModule(str(captions), features_from=[str(humanml3d_dir)], batch_size=2)
    data.trainer = type("T", (), {"lightning_module": module})()
    data.setup("fit")
    assert data.train_examples and all(e.features is not None for e in data.train_examples)
    batch = next(iter(data.train_dataloader()))
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    module(batch)[0].loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.projector.parameters())
    optimizer.step()
    after = module.projector.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_stage_one_then_two_and_caption_from_one_command(
    tiny_base, captions, humanml3d_dir, tmp_path, capsys
):
    stage1, stage2 = tmp_path / "align", tmp_path / "tune"
    common = ["--model.motion_input", "features", "--data.tasks", "[caption]"]
    common += ["--data.features_from", f"[{humanml3d_dir}]"]
    assert tune(stage1, tiny_base, captions, *common, "--model.adapter", "none") == 0
    meta = json.loads((stage1 / "llm" / "parttok_llm.json").read_text())
    assert meta["motion_input"]["kind"] == "features" and meta["adapter"]["type"] == "none"
    projector = load_file(stage1 / "llm" / PROJECTOR_FILE)
    fresh = FeatureProjector("linear", 32, 32).state_dict()
    assert projector.keys() == fresh.keys()
    aligned = MotionLLM.from_pretrained(stage1 / "llm")  # the frozen LLM and its projector
    clip = np.load(next((humanml3d_dir / "new_joint_vecs").glob("*.npy")))
    assert isinstance(aligned.caption(aligned.read_batch([clip]))[0], str)

    extra = ["--model.adapter", "lora", "--model.projector_init", str(stage1 / "llm")]
    module = MotionLanguageModule(
        base=str(tiny_base), motion_input="features", projector_init=str(stage1 / "llm")
    )
    for key, value in projector.items():  # stage 2 starts from stage 1's projector
        torch.testing.assert_close(module.projector.state_dict()[key], value.float())
    assert tune(stage2, tiny_base, captions, *common, *extra) == 0

    llm = MotionLLM.from_pretrained(stage2 / "llm")
    assert llm.projector is not None
    motions = llm.read_batch([np.load(next((humanml3d_dir / "new_joint_vecs").glob("*.npy")))])
    assert motions[0].ndim == 3  # features (S, P, d), not codes
    assert isinstance(llm.caption(motions)[0], str)
    with pytest.raises(InputError, match="cannot write motion"):
        llm.generate("a person walks.")
    out = tmp_path / "captions.json"
    status = main(["caption", str(humanml3d_dir), "--llm", str(stage2 / "llm"), "--json", str(out)])
    clips = list((humanml3d_dir / "new_joint_vecs").glob("*.npy"))
    assert status == 0 and len(json.loads(out.read_text())) == len(clips)
