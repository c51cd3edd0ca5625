"""MoE-LoRA with a zero expert (``parttok.llm.moe``): the layer's arithmetic against a
reference sum over experts, the zero expert (output exactly zero, weights never trained), the
gate (weights sum to one per prompt, its loss sends general prompts to the zero expert), both
prompt embeddings, and a tuned model that exports and loads with identical outputs, on a
tiny random Llama with SmolLM2's real tokenizer and conversations of real clips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_causal_lm, tune
from safetensors.torch import load_file, save_file

from parttok.cli import main
from parttok.errors import InputError
from parttok.llm.model import MotionLLM
from parttok.llm.moe import (
    GateWeights,
    MoELoRALinear,
    PromptGate,
    check_spec,
    inject_moe_lora,
    moe_layers,
    zero_expert_loss,
)
from parttok.llm.prompt_embedding import PromptEmbedder
from parttok.llm.store import MOE_FILE, export_tuned, load_tuned
from parttok.llm.tune import MotionLanguageModule, collate

GENERAL = [
    ("Write one sentence about the sea.", "The sea is wide and blue."),
    ("Name a fruit that is yellow.", "A banana is yellow."),
    ("What do bees make?", "Bees make honey."),
    ("Say hello in French.", "Bonjour."),
]


@pytest.fixture(scope="module", autouse=True)
def isolated_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PARTTOK_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def mixed_conversations(tmp_path_factory, humanml3d_dir) -> Path:
    """Captioning and text-to-motion conversations of the real HumanML3D clips, and general
    conversations (task ``general``)."""
    folder = tmp_path_factory.mktemp("moe-data")
    motion = folder / "motion.jsonl"
    args = ["instruct", str(humanml3d_dir), "--tasks", "t2m,caption", "--out", str(motion)]
    assert main(args) == 0
    general = [{"task": "general", "user": u, "assistant": a} for u, a in GENERAL]
    rows = [json.loads(line) for line in motion.read_text().splitlines()] + general
    out = folder / "mixed.jsonl"
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


def layer(zero_expert: bool = True, experts: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    gate = GateWeights()
    moe = MoELoRALinear(torch.nn.Linear(8, 6), gate, experts, 2, 4.0, 0.0, zero_expert)
    with torch.no_grad():
        moe.lora_B.normal_()  # trained experts: B is no longer zero
    return moe, gate


def test_layer_is_the_base_plus_the_gated_sum_of_its_experts():
    moe, gate = layer()
    x = torch.randn(3, 5, 8)  # (B, L, in)
    gate.weights = torch.randn(3, 4).softmax(-1)  # zero expert + 3
    reference = moe.base(x) + moe.scale * sum(
        gate.weights[:, e, None, None] * moe.expert_output(x, e) for e in range(4)
    )
    torch.testing.assert_close(moe(x), reference, rtol=1e-5, atol=1e-6)
    without_zero, gate_without = layer(zero_expert=False)
    gate_without.weights = torch.randn(3, 3).softmax(-1)
    reference = without_zero.base(x) + without_zero.scale * sum(
        gate_without.weights[:, e, None, None] * without_zero.expert_output(x, e) for e in range(3)
    )
    torch.testing.assert_close(without_zero(x), reference, rtol=1e-5, atol=1e-6)


def test_zero_expert_gives_exactly_nothing_and_is_never_trained(smollm2_tokenizer):
    moe, gate = layer()
    x = torch.randn(2, 4, 8)
    assert torch.equal(moe.expert_output(x, 0), torch.zeros(2, 4, 6))
    gate.weights = torch.tensor([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0]])
    out = moe(x)
    assert torch.equal(out[0], moe.base(x)[0])  # all on the zero expert: the base exactly
    assert not torch.allclose(out[1], moe.base(x)[1])

    model = tiny_causal_lm(smollm2_tokenizer)
    holder = inject_moe_lora(model, "all-linear", 2, 4, 8.0, 0.0, zero_expert=True)
    layers = moe_layers(model)
    assert len(layers) == 14  # 2 layers x (q, k, v, o, gate, up, down); never the head
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.shape[0] == 2 for p in trainable)  # only the experts' A and B
    before = [layer.lora_B.detach().clone() for layer in layers]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    ids = torch.randint(0, 1000, (2, 12))
    for _ in range(3):
        holder.weights = torch.tensor([[0.4, 0.3, 0.3], [0.2, 0.5, 0.3]])
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for layer_, b in zip(layers, before, strict=True):
        assert not torch.equal(layer_.lora_B, b)
        assert not layer_.zero_A.any() and not layer_.zero_B.any()
        assert not layer_.zero_A.requires_grad and not layer_.zero_B.requires_grad


def test_gate_weights_sum_to_one_and_its_loss_sends_general_prompts_to_the_zero_expert():
    torch.manual_seed(0)
    gate = PromptGate(16, 5, hidden=32)
    embeddings = torch.randn(6, 16)
    weights = gate(embeddings)
    assert weights.shape == (6, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(6))
    general = torch.tensor([True, True, True, False, False, False])
    assert float(zero_expert_loss(weights, torch.zeros(6, dtype=torch.bool))) == 0.0
    optimizer = torch.optim.Adam(gate.parameters(), lr=1e-2)
    start = gate(embeddings)[:3, 0].mean()
    for _ in range(100):
        zero_expert_loss(gate(embeddings), general).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert start < 0.4 and gate(embeddings)[:3, 0].min() > 0.95


def test_prompt_embeddings(smollm2_tokenizer):
    prompts = ["Write a poem about rain.", "Show a person who waves the right hand.", "Hi"]
    minilm = PromptEmbedder("minilm")
    embedded = minilm(prompts)
    assert embedded.shape == (3, 384)
    torch.testing.assert_close(embedded.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(minilm(prompts[:1])[0], embedded[0], rtol=1e-4, atol=1e-5)
    model = tiny_causal_lm(smollm2_tokenizer)
    base = PromptEmbedder("base", model, smollm2_tokenizer)(prompts)
    assert base.shape == (3, 32)
    ids = smollm2_tokenizer(prompts[2], add_special_tokens=False)["input_ids"]
    expected = model.get_input_embeddings().weight[ids].mean(0)
    torch.testing.assert_close(base[2], expected)  # padding does not enter the mean
    with pytest.raises(InputError, match="gate embedding must be one of"):
        PromptEmbedder("glove")


def test_tuned_moe_lora_exports_and_loads_with_identical_outputs(
    tiny_base, mixed_conversations, tmp_path
):
    module = MotionLanguageModule(
        base=str(tiny_base), adapter="moe-lora", experts=2, lora_rank=4, gate_embedding="minilm"
    )
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("router.gate" in n for n in trainable)
    assert not any("encoder" in n for n in trainable)  # the sentence encoder stays frozen
    torch.manual_seed(1)
    with torch.no_grad():  # as after training, on float16-exact values (the file's precision)
        for p in module.parameters():
            if p.requires_grad:
                p.copy_((p + 0.05 * torch.randn_like(p)).half().float())
    module.eval()
    from parttok.llm.chat import encode_conversation, read_conversations

    records = list(read_conversations(mixed_conversations))[::40][:4]
    examples = [
        encode_conversation(module.hf_tokenizer, r["user"], r["assistant"], r["task"], 512)
        for r in records
    ]
    batch = collate(examples, module.hf_tokenizer.pad_token_id)
    with torch.no_grad():
        out, weights = module(batch)
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(examples)))
    export_tuned(
        module.llm,
        tmp_path / "moe",
        base=str(tiny_base),
        vocabularies=module.vocabularies,
        token_ids=module.new_token_ids,
        tokenizers=(None, None),
        training={},
        **module.adapter_export(),
    )
    tuned = load_tuned(tmp_path / "moe")
    model, meta, router = tuned.model, tuned.meta, tuned.router
    assert meta["adapter"]["type"] == "moe-lora" and meta["adapter"]["zero_expert"]
    with torch.no_grad():
        loaded_weights = router(batch["prompts"])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(loaded_weights, weights, rtol=1e-5, atol=1e-6)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[mask], out.logits[mask], rtol=1e-4, atol=1e-4)

    llm = MotionLLM.from_pretrained(tmp_path / "moe")
    assert llm.router is not None
    assert llm.caption([llm.generate("a person walks.", seconds=1.0)[0].codes])[0] is not None

    tensors = load_file(tmp_path / "moe" / MOE_FILE)
    key = next(k for k in tensors if k.endswith("lora_A"))
    save_file({**tensors, key: tensors[key][:, :1].contiguous()}, tmp_path / "moe" / MOE_FILE)
    with pytest.raises(InputError, match="has shape"):
        load_tuned(tmp_path / "moe")


def test_tune_command_trains_a_moe_lora_with_general_data(
    tiny_base, mixed_conversations, humanml3d_dir, bandai_folder, tmp_path
):
    """parttok tune --model.adapter moe-lora end to end; the gate's weights per task are in
    the logs and in evaluate-llm's report; caption loads the result."""
    root = tmp_path / "run"
    extra = ["--model.adapter", "moe-lora", "--model.experts", "2", "--model.lora_rank", "4"]
    extra += ["--model.gate_embedding", "base", "--data.tasks", "[t2m, caption, general]"]
    assert tune(root, tiny_base, mixed_conversations, *extra) == 0
    meta = json.loads((root / "llm" / "parttok_llm.json").read_text())
    assert meta["adapter"]["gate_embedding"] == "base" and meta["adapter"]["experts"] == 2
    metrics = (root / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    for name in ("val/gate0/general", "val/gate2/t2m", "val/gate_loss/general", "val/caption"):
        assert name in metrics.split(","), name
    status = main(["caption", str(humanml3d_dir), "--llm", str(root / "llm")])
    assert status == 0
    report_path = tmp_path / "llm.json"
    arguments = ["evaluate-llm", str(bandai_folder), "--llm", str(root / "llm"), "--split"]
    arguments += ["all", "--tasks", "predict,language", "--limit", "4", "--json", str(report_path)]
    assert main(arguments) == 0
    report = json.loads(report_path.read_text())
    assert set(report["gate"]) == {"predict", "language"}
    for weights in report["gate"].values():
        assert len(weights) == 3 and abs(sum(weights) - 1) < 1e-3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "qlora"}, "adapter must be"),
        ({"type": "moe-lora", "experts": 0}, "experts must be"),
        ({"type": "moe-lora", "experts": 2, "rank": True}, "rank must be"),
        (
            {"type": "moe-lora", "experts": 2, "rank": 4, "alpha": 8, "zero_expert": "yes"},
            "zero_expert",
        ),
        (
            {
                "type": "moe-lora",
                "experts": 2,
                "rank": 4,
                "alpha": 8,
                "zero_expert": True,
                "gate_embedding": "minilm",
                "target_modules": [],
            },
            "target_modules",
        ),
    ],
)
def test_bad_adapter_descriptions_are_one_line(spec, message):
    with pytest.raises(InputError, match=message):
        check_spec(spec, "parttok_llm.json")
