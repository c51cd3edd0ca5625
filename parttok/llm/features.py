"""Continuous motion into the language model (LLaMo, MotionLLM; trained as LLaVA): a motion
tokenizer's encoder features before its quantizer, projected to the LLM's width and put in
place of placeholder tokens of the prompt (``inputs_embeds``).

- ``parts`` pooling: one placeholder per part per step (S * P), each part's ``d`` numbers
  projected;
- ``steps`` pooling: one placeholder per step, the parts' features side by side (P * d): a
  whole-body vector per step (what a whole-body tokenizer, P = 1, gives either way).

The LLM can read these features but cannot write them: this path serves motion -> text tasks
(captioning), not text-to-motion or prediction.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from parttok.errors import InputError
from parttok.tokens import Vocabulary

FEATURE_TOKEN = "<motion_feature>"
PROJECTOR_FILE = "projector.safetensors"
POOLINGS = ("parts", "steps")
PROJECTORS = ("linear", "mlp")


class FeatureProjector(nn.Module):
    """Motion features (N, in) -> LLM embeddings (N, hidden): ``linear`` (MotionLLM) or
    ``mlp``, two layers with a GELU (LLaVA-1.5)."""

    def __init__(self, kind: str, in_dim: int, hidden: int) -> None:
        super().__init__()
        if kind not in PROJECTORS:
            raise InputError(f"projector must be one of {PROJECTORS}, got {kind!r}")
        self.kind = kind
        if kind == "linear":
            self.net = nn.Linear(in_dim, hidden)
        else:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden)
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def pooled(latents: np.ndarray, pooling: str) -> np.ndarray:
    """Encoder features (S, P, d) -> one row per placeholder: (S * P, d) or (S, P * d)."""
    if pooling not in POOLINGS:
        raise InputError(f"feature pooling must be one of {POOLINGS}, got {pooling!r}")
    steps, parts, width = latents.shape
    if pooling == "parts":
        return latents.reshape(steps * parts, width)
    return latents.reshape(steps, parts * width)


def feature_width(code_dim: int, parts: int, pooling: str) -> int:
    """Numbers per placeholder row."""
    return code_dim if pooling == "parts" else parts * code_dim


def with_placeholders(user: str, vocab: Vocabulary, count: int) -> str | None:
    """``user`` with its motion (start token ... end token) replaced by ``count``
    placeholders between the same start and end tokens; None without a motion."""
    span = re.compile(re.escape(vocab.start) + ".*?" + re.escape(vocab.end), re.DOTALL)
    if not span.search(user):
        return None
    return span.sub(lambda _: vocab.start + FEATURE_TOKEN * count + vocab.end, user, count=1)


def add_placeholder(model, hf_tokenizer) -> int:
    """Add ``FEATURE_TOKEN`` to the tokenizer (and a row, the mean one, to ``model``'s
    embeddings unless None); its id. Its row is never read: features replace it."""
    from tokenizers import AddedToken

    if FEATURE_TOKEN not in hf_tokenizer.get_vocab():
        hf_tokenizer.add_tokens([AddedToken(FEATURE_TOKEN, normalized=False, special=False)])
    token_id = hf_tokenizer.convert_tokens_to_ids(FEATURE_TOKEN)
    if model is not None and model.get_input_embeddings().weight.shape[0] <= token_id:
        model.resize_token_embeddings(len(hf_tokenizer), mean_resizing=False)
        with torch.no_grad():
            for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
                if layer is not None:
                    layer.weight[token_id] = layer.weight[:token_id].mean(0)
    return token_id


def embeddings_with_features(
    embedding: nn.Module,
    input_ids: torch.Tensor,
    features: list[torch.Tensor],
    projector: nn.Module,
    token_id: int,
) -> torch.Tensor:
    """Input embeddings (B, L, H) of ``input_ids`` (B, L) with the projected ``features``
    (one (n_i, in) tensor per row, in order) at the placeholder positions."""
    embeds = embedding(input_ids)  # (B, L, H)
    slots = input_ids == token_id  # (B, L)
    rows = torch.cat(features).to(embeds.device)  # (N, in)
    if int(slots.sum()) != len(rows):
        raise ValueError(f"{int(slots.sum())} placeholders for {len(rows)} feature rows")
    projected = projector(rows.to(next(projector.parameters()).dtype))  # (N, H)
    return embeds.masked_scatter(slots[..., None], projected.to(embeds.dtype))


def features_spec(projector: str, pooling: str, code_dim: int) -> dict:
    """What a tuned features model records of its input (``parttok_llm.json``)."""
    return {
        "kind": "features",
        "projector": projector,
        "pooling": pooling,
        "code_dim": code_dim,
        "token": FEATURE_TOKEN,
    }


def check_features_spec(spec: object, name: str) -> dict:
    """``spec`` if it describes a motion input (tokens or features), else one InputError."""
    if not isinstance(spec, dict) or spec.get("kind") not in ("tokens", "features"):
        raise InputError(f"{name}: motion_input must be {{'kind': 'tokens' or 'features', ...}}")
    if spec["kind"] == "features" and (
        spec.get("projector") not in PROJECTORS
        or spec.get("pooling") not in POOLINGS
        or spec.get("token") != FEATURE_TOKEN
        or not isinstance(spec.get("code_dim"), int)
        or not 0 < spec["code_dim"] <= 65536
    ):
        raise InputError(
            f"{name}: motion_input needs a projector, a pooling, a code_dim and {FEATURE_TOKEN}"
        )
    return spec


def clip_index(folders: list[str]) -> dict[str, Path]:
    """Clip id -> feature file, over HumanML3D-layout folders (``new_joint_vecs``)."""
    index: dict[str, Path] = {}
    for folder in folders:
        vectors = Path(folder) / "new_joint_vecs"
        if not vectors.is_dir():
            raise InputError(f"{folder}: no new_joint_vecs folder (features for the LLM)")
        index.update({p.stem: p for p in vectors.glob("*.npy")})
    return index


def record_features(records: list[dict], folders: list[str], tokenizer) -> list[np.ndarray | None]:
    """Encoder features (S, P, d) of each record's clip frames (its ``clip`` and ``frames``
    as ``parttok instruct`` writes them); None where the record has none or the clip is not
    in ``folders``."""
    index = clip_index(folders)
    wanted = [
        (r["clip"], tuple(r["frames"]))
        if r.get("clip") in index and isinstance(r.get("frames"), list) and len(r["frames"]) == 2
        else None
        for r in records
    ]
    keys = sorted({k for k in wanted if k is not None})
    clips = {clip: np.load(index[clip]) for clip in {clip for clip, _ in keys}}
    latents = tokenizer.latents_batch([clips[clip][start:end] for clip, (start, end) in keys])
    found = dict(zip(keys, latents, strict=True))
    return [None if k is None else found[k] for k in wanted]
