"""parttok: body-part motion tokens for language models.

The public API::

    import parttok
    features = parttok.joints_to_features(joints)        # (T, 22, 3) -> (T-1, 263)
    joints = parttok.features_to_joints(features)        # (..., T, 263) -> (..., T, 22, 3)
    motion = parttok.load_bvh("clip.bvh")                # .joints (T, 22, 3), 20 fps, metres
    tok = parttok.Tokenizer.from_pretrained()            # the shipped model
    codes = tok.encode(features)                         # (T // 4, parts) ints
    llm = parttok.MotionLLM.from_pretrained()            # the shipped tuned language model
    motion = llm.generate("a person runs.", seconds=3)[0].codes  # (15, 6) ints
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; imported on first use so the CLI starts quickly
_EXPORTS = {
    "features_to_joints": "parttok.features",
    "joints_to_features": "parttok.features",
    "normalize_joints": "parttok.features",
    "compute_statistics": "parttok.features",
    "load_bvh": "parttok.bvh",
    "save_bvh": "parttok.bvh",
    "read_bvh": "parttok.bvh",
    "Motion": "parttok.bvh",
    "Tokenizer": "parttok.tokenizer",
    "PartTokenizer": "parttok.model",
    "ConvVQ": "parttok.baselines",
    "ResidualConvVQ": "parttok.baselines",
    "HumanML3DFolder": "parttok.data",
    "MotionDataModule": "parttok.data",
    "MotionLLM": "parttok.llm.model",
    "compose_codes": "parttok.composition",
    "composition_errors": "parttok.composition",
    "ParttokError": "parttok.errors",
    "InputError": "parttok.errors",
    "BVHError": "parttok.errors",
    "RigError": "parttok.errors",
    "FeatureError": "parttok.errors",
    "OutputError": "parttok.errors",
    "CheckpointError": "parttok.errors",
    "TokenFileError": "parttok.errors",
    "TokenParseError": "parttok.errors",
}

_SUBMODULES = {
    "composition",
    "tokens",
    "instruct",
    "render",
    "plots",
    "metrics",
    "evaluation",
    "tokenfile",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:  # parttok.tokens, parttok.render, ... without importing them first
        return importlib.import_module(f"parttok.{name}")
    raise AttributeError(f"module 'parttok' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
