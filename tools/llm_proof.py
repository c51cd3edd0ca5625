"""Proof that a language model learns from parttok tokens, fully offline on a CPU.

Builds a tiny randomly initialised GPT-2 with a text tokenizer trained here on the
instruction data, adds the parttok vocabulary (embedding rows from the code vectors),
fine-tunes it on text-to-motion, captioning and prediction conversations twice (LoRA via
peft with the new token rows trainable, and full fine-tuning) from the same start, then
generates motion for held-out captions, parses it with ``text_to_codes``, decodes it with
the tokenizer and renders it. Figures go to ``<out>/llm_proof.json`` and the
``## LLM proof`` section of BENCHMARKS.md.

    python tools/llm_proof.py                      # Bandai Namco clips, shipped tokenizer
    python tools/llm_proof.py --random-tokenizer --steps 100 --out /tmp/proof
    python tools/llm_proof.py --data converted/    # a folder `parttok convert` wrote
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import random
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from parttok.errors import ParttokError, TokenParseError
from parttok.features import features_to_joints
from parttok.instruct import InstructSettings, build_conversations, summary
from parttok.io import cache_dir, extract_once, save_npy, write_text
from parttok.tokenizer import Tokenizer
from parttok.tokens import Vocabulary, add_motion_tokens, text_to_codes

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PARTTOK_DATA", REPO.parent / "shared" / "data"))
HEADING = "## LLM proof"
EOS = "<|endoftext|>"
UNK = "<unk>"
PROMPT = "User: {user}\nAssistant: "
_MOTION_TOKEN = re.compile(r"<[^<>\s]+>")


@dataclass
class ProofConfig:
    out: Path
    data: Path | None = None  # a HumanML3D-layout folder; None: convert Bandai Namco clips
    clips: int = 300  # Bandai Namco clips converted when no data folder is given
    checkpoint: str | None = None
    label: str | None = None  # how the report names the tokenizer (default: its path)
    random_tokenizer: bool = False
    steps: int = 300
    batch_size: int = 8
    max_length: int = 320
    lr_full: float = 2e-3
    lr_lora: float = 5e-3
    samples: int = 4  # held-out captions generated from, greedy and sampled each
    max_new_tokens: int | None = None  # default: the longest training answer + one step
    seed: int = 0
    refine: int = 0  # motion codes chosen among that many nearest (``parttok.refine``)
    threads: int | None = None
    width: int = 64  # GPT-2 embedding width
    layers: int = 2
    codebook_size: int = 512  # of the random tokenizer


@dataclass
class FitResult:
    method: str
    trainable_parameters: int
    steps: int
    seconds: float
    train_loss_start: float
    train_loss_end: float
    heldout_loss_start: float
    heldout_loss_end: float
    losses: list[float] = field(repr=False, default_factory=list)


def random_tokenizer(mode: str = "motion", codebook_size: int = 512, seed: int = 0) -> Tokenizer:
    """A small randomly initialised PartTokenizer with HumanML3D's statistics; one training
    forward on enough random frames initialises its codebooks by k-means. (Its encoder
    maps real motion to very few codes: a stand-in for plumbing, not for learning.)"""
    from parttok.data import load_statistics
    from parttok.model import PartTokenizer

    torch.manual_seed(seed)
    model = PartTokenizer(
        mode=mode,
        dim=32,
        frame_dim=8,
        encoder_depth=1,
        decoder_depth=1,
        heads=2,
        codebook_size=codebook_size,
        code_dim=16,
    )
    steps_per_clip = 64
    frames = steps_per_clip * model.frames_per_step
    clips = math.ceil(codebook_size / steps_per_clip)
    model.train()
    with torch.no_grad():
        model(torch.randn(clips, frames, 263))  # (B, T, 263) normalised
    mean, std = load_statistics(DATA / "humanml3d")
    return Tokenizer(model, mean, std)


def bandai_folder(clips: int) -> Path:
    """``clips`` Bandai Namco clips (spread evenly over the sorted list) converted once into
    the cache in the HumanML3D layout (one folder per feature version of the import)."""
    from parttok.data import FEATURE_VERSION, convert_sources

    source = extract_once(DATA / "bandai-namco-2.tar.xz")
    files = sorted((source / "data").glob("*.bvh"))
    chosen = [files[i] for i in np.linspace(0, len(files) - 1, min(clips, len(files))).astype(int)]
    out = cache_dir() / f"llm-proof-bandai-{len(chosen)}-v{FEATURE_VERSION}"
    report = convert_sources(chosen, out, show_progress=False)
    if report.failed:
        print(f"{len(report.failed)} clip(s) failed to convert", file=sys.stderr)
    return out


def strip_motion(text: str) -> str:
    return _MOTION_TOKEN.sub(" ", text)


def text_tokenizer(texts: list[str], vocab_size: int = 600):
    """A byte-level BPE trained on ``texts`` (motion tokens removed), as a transformers
    tokenizer with ``<|endoftext|>`` as end, padding and start token."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = RustTokenizer(models.BPE(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([strip_motion(text) for text in texts], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS, pad_token=EOS, bos_token=EOS, unk_token=UNK
    )


def encode_conversations(records: list[dict], hf_tokenizer, max_length: int):
    """(input ids, labels) per conversation, the prompt masked out of the labels (-100);
    conversations longer than ``max_length`` are left out."""
    examples = []
    for record in records:
        prompt = hf_tokenizer(PROMPT.format(user=record["user"]), add_special_tokens=False)
        answer = hf_tokenizer(record["assistant"] + EOS, add_special_tokens=False)
        ids = prompt["input_ids"] + answer["input_ids"]
        if len(ids) <= max_length:
            labels = [-100] * len(prompt["input_ids"]) + answer["input_ids"]
            examples.append((ids, labels))
    return examples


def batches(examples, batch_size: int, pad_id: int, rng: random.Random):
    """Endless shuffled batches: input ids, attention mask and labels, right-padded."""
    batch_size = min(batch_size, len(examples))
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield collate([examples[i] for i in order[start : start + batch_size]], pad_id)


def collate(chunk, pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in chunk)
    ids = torch.full((len(chunk), width), pad_id)
    labels = torch.full((len(chunk), width), -100)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for row, (tokens, targets) in enumerate(chunk):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        labels[row, : len(targets)] = torch.tensor(targets)
        mask[row, : len(tokens)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def heldout_loss(model, examples, pad_id: int, batch_size: int) -> float:
    """Mean token loss over the held-out conversations."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id)
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        total += float(model(**batch).loss) * tokens
        count += tokens
    model.train()
    return total / max(count, 1)


def fit(model, method: str, train, heldout, pad_id: int, config: ProofConfig, lr: float):
    """Train ``model`` for ``config.steps`` AdamW steps; losses and timing."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    warmup = max(1, config.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    stream = batches(train, config.batch_size, pad_id, random.Random(config.seed))
    start_heldout = heldout_loss(model, heldout, pad_id, config.batch_size)
    losses = []
    began = time.perf_counter()
    model.train()
    for step in range(config.steps):
        loss = model(**next(stream)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % max(1, config.steps // 10) == 0:
            print(f"{method} step {step + 1}: loss {losses[-1]:.3f}", file=sys.stderr)
    seconds = time.perf_counter() - began
    window = max(1, min(10, len(losses) // 5))
    return FitResult(
        method=method,
        trainable_parameters=sum(p.numel() for p in trainable),
        steps=config.steps,
        seconds=round(seconds, 1),
        train_loss_start=round(float(np.mean(losses[:window])), 3),
        train_loss_end=round(float(np.mean(losses[-window:])), 3),
        heldout_loss_start=round(start_heldout, 3),
        heldout_loss_end=round(heldout_loss(model, heldout, pad_id, config.batch_size), 3),
        losses=losses,
    )


def lora_model(model, new_ids: list[int]):
    """LoRA (rank 8) on every attention and MLP projection; the new token rows train too."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,
        trainable_token_indices=new_ids,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


@torch.no_grad()
def generate(model, hf_tokenizer, prompts: list[str], sample: bool, max_new: int, seed: int):
    """The assistant text generated for each prompt (greedy or sampled)."""
    model.eval()
    texts = []
    for index, prompt in enumerate(prompts):
        ids = hf_tokenizer(
            PROMPT.format(user=prompt), return_tensors="pt", add_special_tokens=False
        )
        torch.manual_seed(seed + index)
        output = model.generate(
            **ids,
            max_new_tokens=max_new,
            do_sample=sample,
            top_k=50 if sample else None,
            temperature=1.0 if sample else None,
            pad_token_id=hf_tokenizer.pad_token_id,
            eos_token_id=hf_tokenizer.eos_token_id,
        )
        new = output[0, ids["input_ids"].shape[1] :]
        texts.append(hf_tokenizer.decode(new, skip_special_tokens=True))
    return texts


def check_generations(
    texts: list[str], vocab: Vocabulary, tokenizer: Tokenizer, out: Path, tag: str
) -> dict:
    """Parse, decode and save every generated motion; counts for the report, with the
    kinds of repairs made and of parse errors."""
    parsed, repaired, frames = 0, 0, 0
    repairs: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for index, text in enumerate(texts):
        try:
            result = text_to_codes(text, vocab)
        except TokenParseError as error:
            errors[note_kind(str(error))] += 1
            continue
        parsed += 1
        repaired += bool(result.repairs)
        repairs.update(note_kind(note) for note in result.repairs)
        joints = features_to_joints(tokenizer.decode(result.codes))  # (T, 22, 3)
        if not np.isfinite(joints).all():
            raise ParttokError(f"{tag} {index}: decoded joints are not finite")
        frames += len(joints)
        save_npy(out / f"{tag}_{index}_joints.npy", joints)
    return {
        "generated": len(texts),
        "parsed": parsed,
        "repaired": repaired,
        "frames": frames,
        "repairs": dict(repairs),
        "errors": dict(errors),
    }


def note_kind(note: str) -> str:
    """A parser note or error without its details: 'dropped a truncated final step'."""
    return re.sub(r"\d+", "N", re.split(r";|: | \(", note)[0]).strip()


def render_first(out: Path, methods: list[str], caption: str) -> Path | None:
    """A GIF of the first decoded motion of each method (greedy, else sampled), side by
    side."""
    from parttok.render import render_animation

    motions, names = [], []
    for method in methods:
        found = sorted(out.glob(f"{method}_greedy_*_joints.npy"))
        found = found or sorted(out.glob(f"{method}_sampled_*_joints.npy"))
        if found:
            motions.append(np.load(found[0], allow_pickle=False))
            names.append(f"{method}: {found[0].name.split('_')[1]}")
    if not motions:
        return None
    target = out / "generated.gif"
    render_animation(motions, target, titles=names, caption=caption)
    return target


def split_clips(records: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Training and held-out conversations, split by clip: a tenth of the captioned clips
    (of all clips when fewer than two have captions) is held out."""
    clips = sorted({record["clip"] for record in records})
    captioned = sorted({record["clip"] for record in records if record["task"] == "t2m"})
    pool = captioned if len(captioned) >= 2 else clips
    heldout = set(random.Random(seed).sample(pool, max(1, len(pool) // 10)))
    return (
        [r for r in records if r["clip"] not in heldout],
        [r for r in records if r["clip"] in heldout],
    )


def generation_prompts(train: list[dict], heldout: list[dict], count: int):
    """Up to ``count`` distinct text-to-motion prompts of held-out clips (of training clips
    when no held-out clip has a caption), and which they are."""
    for source, records in (("held-out clips", heldout), ("training clips", train)):
        prompts = list(dict.fromkeys(r["user"] for r in records if r["task"] == "t2m"))
        if prompts:
            return source, prompts[:count]
    raise ParttokError("no captions, hence no text-to-motion prompts")


def run_proof(config: ProofConfig) -> dict:
    """The whole proof; returns the figures (also written to ``<out>/llm_proof.json``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import GPT2Config, GPT2LMHeadModel

    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    folder = Path(config.data) if config.data else bandai_folder(config.clips)
    tokenizer = (
        random_tokenizer(codebook_size=config.codebook_size, seed=config.seed)
        if config.random_tokenizer
        else Tokenizer.from_pretrained(config.checkpoint)
    )
    vocab = Vocabulary.from_tokenizer(tokenizer)
    settings = InstructSettings(
        tasks=("t2m", "caption", "predict"), seed=config.seed, refine=config.refine
    )
    report = build_conversations([folder], tokenizer, settings=settings)
    print(summary(report), file=sys.stderr)
    train_records, heldout_records = split_clips(report.records, config.seed)

    hf_tokenizer = text_tokenizer([r["user"] + " " + r["assistant"] for r in train_records])
    text_vocab = len(hf_tokenizer)
    gpt_config = GPT2Config(
        vocab_size=text_vocab,
        n_positions=config.max_length,
        n_embd=config.width,
        n_layer=config.layers,
        n_head=4,
        bos_token_id=hf_tokenizer.eos_token_id,
        eos_token_id=hf_tokenizer.eos_token_id,
        pad_token_id=hf_tokenizer.pad_token_id,
    )
    base = GPT2LMHeadModel(gpt_config)
    ids = add_motion_tokens(base, hf_tokenizer, vocab, tokenizer, init="codebook")
    train = encode_conversations(train_records, hf_tokenizer, config.max_length)
    heldout = encode_conversations(heldout_records, hf_tokenizer, config.max_length)
    if not train or not heldout:
        raise ParttokError("too few conversations fit the context to train and evaluate")
    pad = hf_tokenizer.pad_token_id
    start_state = copy.deepcopy(base.state_dict())

    lora = lora_model(base, ids)
    lora_fit = fit(lora, "lora", train, heldout, pad, config, config.lr_lora)
    full = GPT2LMHeadModel(gpt_config)
    full.resize_token_embeddings(len(hf_tokenizer), mean_resizing=False)
    full.load_state_dict(start_state)
    full_fit = fit(full, "full", train, heldout, pad, config, config.lr_full)

    prompts_from, prompts = generation_prompts(train_records, heldout_records, config.samples)
    longest_prompt = max(len(hf_tokenizer(PROMPT.format(user=p))["input_ids"]) for p in prompts)
    longest_answer = max(sum(label != -100 for label in labels) for _, labels in train)
    max_new = min(
        config.max_length - longest_prompt,
        config.max_new_tokens or longest_answer + vocab.num_parts,
    )
    generation = {}
    for name, model in (("lora", lora), ("full", full)):
        for mode, sample in (("greedy", False), ("sampled", True)):
            texts = generate(model, hf_tokenizer, prompts, sample, max_new, config.seed)
            tag = f"{name}_{mode}"
            generation[tag] = check_generations(texts, vocab, tokenizer, out, tag)
            outputs = [{"prompt": p, "output": t} for p, t in zip(prompts, texts, strict=True)]
            write_text(out / f"{tag}.json", json.dumps(outputs, indent=1) + "\n")
    gif = render_first(out, ["lora", "full"], prompts[0][:60])
    figures = {
        "data": str(folder),
        "clips": report.clips,
        "conversations": {"train": len(train), "heldout": len(heldout)},
        "tokenizer": config.label
        or ("random" if config.random_tokenizer else (config.checkpoint or "shipped")),
        "vocabulary": len(vocab),
        "text_vocabulary": text_vocab,
        "model_parameters": sum(p.numel() for p in full.parameters()),
        "layers": config.layers,
        "width": config.width,
        "fits": [
            {k: v for k, v in asdict(f).items() if k != "losses"} for f in (lora_fit, full_fit)
        ],
        "generation": generation,
        "prompts_from": prompts_from,
        "gif": str(gif) if gif else None,
        "seconds": round(time.perf_counter() - began, 1),
        "config": {k: str(v) for k, v in asdict(config).items()},
    }
    write_text(out / "llm_proof.json", json.dumps(figures, indent=1) + "\n")
    write_text(
        out / "losses.json", json.dumps({"lora": lora_fit.losses, "full": full_fit.losses}) + "\n"
    )
    return figures


def parse_rate(generation: dict, method: str) -> str:
    runs = [generation[f"{method}_{mode}"] for mode in ("greedy", "sampled")]
    parsed = sum(run["parsed"] for run in runs)
    total = sum(run["generated"] for run in runs)
    repaired = sum(run["repaired"] for run in runs)
    return f"{parsed}/{total} ({repaired} with repairs)"


def benchmark_section(figures: dict, command: str) -> str:
    """The ``## LLM proof`` section of BENCHMARKS.md."""
    lines = [
        HEADING,
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} CPU threads {torch.get_num_threads()}  ",
        f"Date: {datetime.date.today().isoformat()}; total {figures['seconds']} s  ",
        f"Data: {figures['clips']} clips -> {figures['conversations']['train']} training and "
        f"{figures['conversations']['heldout']} held-out conversations (t2m, caption, predict); "
        f"tokenizer: {figures['tokenizer']}; {figures['vocabulary']} motion tokens added to a "
        f"{figures['text_vocabulary']}-token BPE; GPT-2 {figures['layers']} layers x "
        f"{figures['width']}, "
        f"{figures['model_parameters']:,} parameters",
        "",
        "| fine-tuning | trainable params | steps | time (s) | train loss first -> last "
        "| held-out loss before -> after | motions parsed (greedy + sampled) |",
        "|---|---|---|---|---|---|---|",
    ]
    for fit_figures in figures["fits"]:
        method = fit_figures["method"]
        lines.append(
            f"| {method} | {fit_figures['trainable_parameters']:,} | {fit_figures['steps']} | "
            f"{fit_figures['seconds']} | {fit_figures['train_loss_start']} -> "
            f"{fit_figures['train_loss_end']} | {fit_figures['heldout_loss_start']} -> "
            f"{fit_figures['heldout_loss_end']} | {parse_rate(figures['generation'], method)} |"
        )
    kinds = {"repairs": Counter(), "errors": Counter()}
    for run in figures["generation"].values():
        for key, counter in kinds.items():
            counter.update(run[key])
    lines += [
        "",
        "Repairs made in parsed motions: "
        + _counted(kinds["repairs"])
        + ". Parse errors: "
        + _counted(kinds["errors"])
        + ".",
        "",
        "Losses are mean token cross-entropy on the assistant turns; the first/last figures "
        "average the first and last 10 steps. Parsed motions were decoded by the tokenizer to "
        "joints (finite) and the first of each method rendered to a GIF.",
        "",
    ]
    return "\n".join(lines)


def _counted(counter: Counter) -> str:
    return ", ".join(f"{kind} ({n})" for kind, n in counter.most_common()) or "none"


def update_benchmarks(path: Path, section: str) -> None:
    """Replace this tool's section of BENCHMARKS.md (up to the next ``## `` heading), or
    append it; other sections are left as they are."""
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n\n"
    start = text.find(HEADING + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        following = text.find("\n## ", start + len(HEADING))
        end = len(text) if following < 0 else following + 1
        text = text[:start] + section + ("\n" if following >= 0 else "") + text[end:]
    write_text(path, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="HumanML3D-layout folder with captions")
    parser.add_argument("--clips", type=int, default=300, help="Bandai Namco clips to convert")
    parser.add_argument("--checkpoint", help="tokenizer (default: the shipped model)")
    parser.add_argument(
        "--random-tokenizer", action="store_true", help="a small random tokenizer instead"
    )
    parser.add_argument("--label", help="how BENCHMARKS.md names the tokenizer")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per method")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4, help="held-out prompts generated from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refine", type=int, default=0, help="codes refined among N nearest")
    parser.add_argument("--out", type=Path, default=Path("llm-proof"), help="output folder")
    parser.add_argument(
        "--benchmarks",
        default=str(REPO / "BENCHMARKS.md"),
        help="file whose '## LLM proof' section is rewritten ('' to skip)",
    )
    args = parser.parse_args(argv)
    config = ProofConfig(
        out=args.out,
        data=args.data,
        clips=args.clips,
        checkpoint=args.checkpoint,
        random_tokenizer=args.random_tokenizer,
        label=args.label,
        steps=args.steps,
        batch_size=args.batch_size,
        samples=args.samples,
        seed=args.seed,
        refine=args.refine,
    )
    try:
        figures = run_proof(config)
    except ParttokError as error:
        print(f"llm_proof: error: {error}", file=sys.stderr)
        return 2
    command = "python tools/llm_proof.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = benchmark_section(figures, command.strip())
    print(section)
    if args.benchmarks:
        update_benchmarks(Path(args.benchmarks), section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
