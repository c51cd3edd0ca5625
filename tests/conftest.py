"""Shared fixtures: the real data in ../shared/data (never skipped when missing)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from parttok.io import extract_once
from parttok.model import PartTokenizer
from parttok.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]


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


def llm_proof_tool():
    """tools/llm_proof.py as a module (tools/ is not a package)."""
    if "llm_proof" not in sys.modules:
        spec = importlib.util.spec_from_file_location("llm_proof", REPO / "tools" / "llm_proof.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["llm_proof"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules["llm_proof"]


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
