"""A tuned model on disk: only what differs from its base, in safetensors, and a JSON file
that says which base, vocabularies and motion tokenizers it belongs to.

Folder layout (``export_tuned`` writes it atomically, ``load_tuned`` reads it):

- ``adapter_model.safetensors``, ``adapter_config.json``: peft's adapter (LoRA, or for
  MoE-LoRA only the trainable tokens) with the trained rows of the new tokens, in float16;
- ``moe_lora.safetensors`` (MoE-LoRA only): the experts of every adapted layer and the gate,
  in float16;
- ``parttok_llm.json``: ``format``, ``version``, ``base``, ``vocabularies`` (one per motion
  tokenizer), ``token_ids`` (the new tokens' ids, checked on load), ``tokenizers`` (their
  paths, None for the shipped model), ``training`` and ``adapter`` (``{"type": "lora"}``
  when absent; for ``moe-lora`` its experts, rank, alpha, zero expert, gate embedding and
  target modules).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from parttok.errors import InputError
from parttok.llm.features import (
    PROJECTOR_FILE,
    FeatureProjector,
    add_placeholder,
    check_features_spec,
    feature_width,
)
from parttok.tokens import Vocabulary, add_motion_tokens

FORMAT_NAME = "parttok-llm"
FORMAT_VERSION = 1
META_FILE = "parttok_llm.json"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
MOE_FILE = "moe_lora.safetensors"


def default_llm_path() -> Path:
    """The tuned model shipped with parttok."""
    return Path(__file__).resolve().parents[1] / "pretrained" / "llm"


def motion_vocabularies(tokenizer: str | None, pose_tokenizer: str | None, naming: str):
    """([vocabularies], [parttok Tokenizers]) of a motion tokenizer (None: the shipped one)
    and an optional pose tokenizer."""
    from parttok.tokenizer import Tokenizer

    loaded = [Tokenizer.from_pretrained(tokenizer)]
    if pose_tokenizer:
        loaded.append(Tokenizer.from_pretrained(pose_tokenizer))
    return [Vocabulary.from_tokenizer(t, naming) for t in loaded], loaded


def export_tuned(
    peft_model,
    target: str | Path,
    base: str,
    vocabularies: list[Vocabulary],
    token_ids: list[int],
    tokenizers: tuple[str | None, ...],
    training: dict,
    extra_meta: dict | None = None,
    tensor_files: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write the adapter and its description to ``target`` (replacing it atomically);
    ``extra_meta`` goes into ``parttok_llm.json`` (``adapter``, ``motion_input``) and
    ``tensor_files`` (file name -> tensors) beside it, in float16 (MoE-LoRA's experts and
    gate, a features model's projector)."""
    from safetensors.torch import load_file, save_file

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        staging.chmod(0o755)
        # the new rows are in the trainable-token weights; the base's embeddings are not saved
        peft_model.save_pretrained(staging, safe_serialization=True, save_embedding_layers=False)
        (staging / "README.md").unlink(missing_ok=True)  # peft's empty card; parttok writes its own
        sort_adapter_config(staging / ADAPTER_CONFIG_FILE)
        adapter_file = staging / ADAPTER_FILE
        tensors = {k: v.to(torch.float16).contiguous() for k, v in load_file(adapter_file).items()}
        save_file(tensors, adapter_file, metadata={"format": "pt"})
        adapter_file.chmod(0o644)
        for name, file_tensors in (tensor_files or {}).items():
            half = {k: v.detach().to(torch.float16).contiguous() for k, v in file_tensors.items()}
            save_file(half, staging / name, metadata={"format": "pt"})
            (staging / name).chmod(0o644)
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "base": base,
            "vocabularies": [v.to_dict() for v in vocabularies],
            "token_ids": [int(i) for i in token_ids],
            "tokenizers": [None if t is None else str(t) for t in tokenizers],
            "training": training,
            "adapter": {"type": "lora"},
            "motion_input": {"kind": "tokens"},
            **(extra_meta or {}),
        }
        (staging / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def sort_adapter_config(path: Path) -> None:
    """Rewrite peft's ``adapter_config.json`` with sorted keys and target modules (peft
    writes them in set order), so the same tuning gives the same bytes."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_meta(path: str | Path) -> dict:
    """The checked ``parttok_llm.json`` of a tuned model folder."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise InputError(f"{path}: not a tuned parttok language model (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise InputError(f"{meta_path}: unreadable ({str(error)[:80]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise InputError(f"{meta_path}: not a {FORMAT_NAME} file")
    if meta.get("version") != FORMAT_VERSION:
        raise InputError(f"{meta_path}: version {meta.get('version')!r}, expected {FORMAT_VERSION}")
    if not isinstance(meta.get("vocabularies"), list) or not meta["vocabularies"]:
        raise InputError(f"{meta_path}: no vocabularies")
    if not isinstance(meta.get("token_ids"), list):
        raise InputError(f"{meta_path}: no token ids")
    if not (path / ADAPTER_FILE).is_file():
        raise InputError(f"{path}: no {ADAPTER_FILE}")
    from parttok.llm.moe import check_spec

    meta["adapter"] = check_spec(meta.get("adapter", {"type": "lora"}), str(meta_path))
    if meta["adapter"]["type"] == "moe-lora" and not (path / MOE_FILE).is_file():
        raise InputError(f"{path}: no {MOE_FILE}")
    motion_input = meta.get("motion_input", {"kind": "tokens"})
    meta["motion_input"] = check_features_spec(motion_input, str(meta_path))
    if meta["motion_input"]["kind"] == "features" and not (path / PROJECTOR_FILE).is_file():
        raise InputError(f"{path}: no {PROJECTOR_FILE}")
    return meta


def load_projector(path: str | Path, projector: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The projector weights of a tuned features model folder, checked against
    ``projector``'s names and shapes (safetensors only)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path) / PROJECTOR_FILE
    try:
        tensors = load_file(file)
    except (OSError, SafetensorError) as error:
        raise InputError(f"{file}: unreadable ({str(error)[:80]})") from None
    expected = {k: tuple(v.shape) for k, v in projector.state_dict().items()}
    if {k: tuple(v.shape) for k, v in tensors.items()} != expected:
        raise InputError(f"{file}: does not fit this projector ({projector.kind}, {expected})")
    return {k: v.float() for k, v in tensors.items()}


@dataclass
class Tuned:
    """A loaded tuned model: the merged LLM and what reads motion into it."""

    model: torch.nn.Module
    hf_tokenizer: object
    meta: dict
    vocabularies: list[Vocabulary]
    router: torch.nn.Module | None = None  # MoE-LoRA: call with the user turns first
    projector: torch.nn.Module | None = None  # features models
    feature_token_id: int | None = None


def load_tuned(path: str | Path | None = None, base: str | None = None) -> Tuned:
    """A tuned model folder (None: shipped) on its recorded base or ``base``; the adapter is
    merged into the weights for speed."""
    from peft import PeftModel

    from parttok.llm import moe
    from parttok.llm.base import load_base

    path = Path(path) if path is not None else default_llm_path()
    meta = read_meta(path)
    vocabularies = [
        Vocabulary.from_json(json.dumps(v), f"{path}/{META_FILE}") for v in meta["vocabularies"]
    ]
    model, hf_tokenizer = load_base(base or meta["base"])
    ids: list[int] = []
    for vocab in vocabularies:
        ids += add_motion_tokens(model, hf_tokenizer, vocab, init="mean")
    features = meta["motion_input"]
    feature_token_id = None
    if features["kind"] == "features":
        feature_token_id = add_placeholder(model, hf_tokenizer)
        ids.append(feature_token_id)
    if sorted(set(ids)) != meta["token_ids"]:
        raise InputError(f"{path}: the base's tokenizer gives the motion tokens other ids")
    spec = meta["adapter"]
    holder = moe.inject_from_spec(model, spec) if spec["type"] == "moe-lora" else None
    try:
        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        message = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        raise InputError(f"{path}: cannot load the adapter ({message})") from None
    tuned = Tuned(model.eval(), hf_tokenizer, meta, vocabularies)
    if holder is not None:
        tuned.router = moe.load_router(path / MOE_FILE, model, hf_tokenizer, spec, holder)
    if feature_token_id is not None:
        width = feature_width(features["code_dim"], vocabularies[0].num_parts, features["pooling"])
        hidden = model.get_input_embeddings().weight.shape[1]
        projector = FeatureProjector(features["projector"], width, hidden)
        projector.load_state_dict(load_projector(path, projector))
        tuned.projector, tuned.feature_token_id = projector.eval(), feature_token_id
    return tuned
