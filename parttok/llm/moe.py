"""A mixture of LoRA experts with a zero expert, gated once per prompt (HMVLM).

Every targeted linear layer ``y = W x`` of the base keeps ``W`` frozen and gains ``N``
trainable LoRA experts ``(A_e, B_e)`` and, optionally, a zero expert whose ``A`` and ``B``
are zero buffers that no optimiser sees:

    y = W x + (alpha / r) * sum_e g_e B_e A_e dropout(x)

``g`` is one weighting per prompt (``PromptGate``: a two-layer MLP over a sentence
embedding of the instruction, softmax over the ``N`` experts plus the zero expert), shared by
every layer through a ``GateWeights`` holder. Weight the gate gives the zero expert is taken
off the LoRA experts: a prompt sent wholly to it gets the base model back exactly. The gate
loss (``zero_expert_loss``) teaches the gate to send general prompts there.

peft's LoRA has one adapter per layer and X-LoRA gates pre-trained adapters per token from
hidden states; neither gives a per-prompt gate with an untrained zero expert, hence this
module. Expert 0 of a gate is the zero expert when there is one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from parttok.errors import InputError

GATE_HIDDEN = 512


class GateWeights:
    """The current prompts' gate weights ``(B, E)``, read by every ``MoELoRALinear``."""

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None


class MoELoRALinear(nn.Module):
    """A frozen linear layer plus LoRA experts mixed by the shared gate weights.

    Args:
        base: the frozen layer (in -> out).
        gate: the holder of the gate weights ``(B, zero_expert + experts)``.
        experts: trainable LoRA experts.
        rank, alpha, dropout: each expert's rank, scale ``alpha / rank`` and input dropout.
        zero_expert: add the zero expert (gate column 0).
    """

    def __init__(
        self,
        base: nn.Linear,
        gate: GateWeights,
        experts: int,
        rank: int,
        alpha: float,
        dropout: float,
        zero_expert: bool,
    ) -> None:
        super().__init__()
        self.base, self.gate = base, gate
        self.experts, self.rank, self.scale = experts, rank, alpha / rank
        self.zero_expert = zero_expert
        self.dropout = nn.Dropout(dropout)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(experts, rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(experts, base.out_features, rank, **factory))
        for expert in self.lora_A:  # as peft's LoRA: A Kaiming-uniform, B zero
            nn.init.kaiming_uniform_(expert, a=math.sqrt(5))
        if zero_expert:
            self.register_buffer("zero_A", torch.zeros(rank, base.in_features, **factory))
            self.register_buffer("zero_B", torch.zeros(base.out_features, rank, **factory))

    def expert_output(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        """One expert's ``B A x`` (unscaled, ungated), expert 0 the zero expert if any."""
        if self.zero_expert:
            if expert == 0:
                return x @ self.zero_A.T @ self.zero_B.T
            expert -= 1
        return x @ self.lora_A[expert].T @ self.lora_B[expert].T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        weights = self.gate.weights
        if weights is None:
            raise RuntimeError("MoE-LoRA layer called before the gate weighted the prompts")
        # the zero expert adds nothing whatever its weight: only the LoRA experts are computed
        weights = weights[:, 1:] if self.zero_expert else weights  # (B, N)
        experts, rank = self.experts, self.rank
        down = self.dropout(x) @ self.lora_A.reshape(experts * rank, -1).T  # (B, L, N*r)
        scaled = down * weights.repeat_interleave(rank, dim=1).to(down.dtype)[:, None, :]
        up = self.lora_B.permute(1, 0, 2).reshape(-1, experts * rank)  # (out, N*r)
        return out + (scaled @ up.T) * self.scale  # (B, L, out)


class PromptGate(nn.Module):
    """Softmax weights over ``outputs`` experts from a prompt embedding (two-layer MLP)."""

    def __init__(self, embedding_dim: int, outputs: int, hidden: int = GATE_HIDDEN) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(embedding_dim, hidden), nn.GELU(), nn.Linear(hidden, outputs)
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mlp(embeddings).softmax(dim=-1)  # (B, D) -> (B, E)


class PromptRouter(nn.Module):
    """Prompt texts -> gate weights ``(B, E)``, also handed to the MoE-LoRA layers; while
    ``history`` is a list, every call's weights are appended to it."""

    def __init__(self, embedder, gate: PromptGate, holder: GateWeights) -> None:
        super().__init__()
        self.embedder, self.gate, self.holder = embedder, gate, holder
        self.history: list[torch.Tensor] | None = None

    def forward(self, prompts: list[str]) -> torch.Tensor:
        device = self.gate.mlp[0].weight.device
        weights = self.gate(self.embedder(prompts, device))  # (B, E)
        self.holder.weights = weights
        if self.history is not None:
            self.history.append(weights.detach().cpu())
        return weights


def linear_targets(model: nn.Module, target_modules: str | Iterable[str]) -> list[str]:
    """Names of the linear layers to adapt: ``"all-linear"`` is every ``nn.Linear`` but the
    output head (as peft); otherwise those whose last name component is listed."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    wanted = None if target_modules == "all-linear" else set(target_modules)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and module is not head
        and (wanted is None or name.rsplit(".", 1)[-1] in wanted)
    ]


def inject_moe_lora(
    model: nn.Module,
    target_modules: str | Iterable[str],
    experts: int,
    rank: int,
    alpha: float,
    dropout: float,
    zero_expert: bool,
) -> GateWeights:
    """Replace ``model``'s target linear layers by ``MoELoRALinear`` (in place; every weight
    of ``model`` frozen, only the experts train); return the gate holder they share."""
    gate = GateWeights()
    names = linear_targets(model, target_modules)
    if not names:
        raise ValueError(f"no linear layer matches {target_modules!r}")
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        setattr(
            parent, child, MoELoRALinear(base, gate, experts, rank, alpha, dropout, zero_expert)
        )
    return gate


def with_moe_lora(
    model: nn.Module,
    new_token_ids: list[int],
    target_modules: str | Iterable[str],
    experts: int,
    rank: int,
    alpha: float,
    dropout: float,
    zero_expert: bool,
):
    """``model`` with MoE-LoRA layers and the rows of ``new_token_ids`` trainable (peft's
    trainable tokens, tied output rows included), as a peft model whose ``moe_gate`` holds
    the gate weights. Only the experts and the new rows train."""
    from parttok.llm.base import with_trainable_tokens

    holder = inject_moe_lora(model, target_modules, experts, rank, alpha, dropout, zero_expert)
    peft_model = with_trainable_tokens(model, new_token_ids)
    for layer in moe_layers(peft_model):  # peft froze everything but its own tokens
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    peft_model.moe_gate = holder
    return peft_model


def moe_layers(model: nn.Module) -> list[MoELoRALinear]:
    return [m for m in model.modules() if isinstance(m, MoELoRALinear)]


def expert_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained experts of every MoE-LoRA layer, by module name."""
    return {
        f"{name}.{key}": getattr(module, key).detach()
        for name, module in model.named_modules()
        if isinstance(module, MoELoRALinear)
        for key in ("lora_A", "lora_B")
    }


def zero_expert_loss(weights: torch.Tensor, is_general: torch.Tensor) -> torch.Tensor:
    """Mean ``-log g_zero`` over the general prompts of a batch (0 when there are none):
    ``weights`` (B, E) with the zero expert first, ``is_general`` (B,) booleans."""
    if not bool(is_general.any()):
        return weights.new_zeros(())
    return -torch.log(weights[is_general, 0].clamp_min(1e-8)).mean()


def moe_spec(
    experts: int,
    rank: int,
    alpha: float,
    zero_expert: bool,
    gate_embedding: str,
    target_modules: str | Iterable[str],
) -> dict:
    """What a saved MoE-LoRA records of itself (``parttok_llm.json``'s ``adapter``)."""
    targets = target_modules if isinstance(target_modules, str) else sorted(target_modules)
    return {
        "type": "moe-lora",
        "experts": experts,
        "rank": rank,
        "alpha": alpha,
        "zero_expert": zero_expert,
        "gate_embedding": gate_embedding,
        "target_modules": targets,
    }


def check_spec(spec: object, name: str) -> dict:
    """``spec`` if it is a valid adapter description, else one InputError naming ``name``."""
    from parttok.llm.prompt_embedding import KINDS

    if not isinstance(spec, dict) or spec.get("type") not in ("lora", "moe-lora", "none"):
        raise InputError(f"{name}: adapter must be {{'type': 'lora', 'moe-lora' or 'none', ...}}")
    if spec["type"] != "moe-lora":
        return spec

    def count(key: str, top: int) -> None:
        value = spec.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= top:
            raise InputError(f"{name}: adapter {key} must be an integer in 1..{top}")

    count("experts", 64)
    count("rank", 4096)
    alpha = spec.get("alpha")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
        raise InputError(f"{name}: adapter alpha must be a positive number")
    if not isinstance(spec.get("zero_expert"), bool):
        raise InputError(f"{name}: adapter zero_expert must be true or false")
    if spec.get("gate_embedding") not in KINDS:
        raise InputError(f"{name}: adapter gate_embedding must be one of {KINDS}")
    targets = spec.get("target_modules")
    if targets != "all-linear" and not (
        isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)
    ):
        raise InputError(f"{name}: adapter target_modules must be 'all-linear' or names")
    return spec


def inject_from_spec(model: nn.Module, spec: dict) -> GateWeights:
    """``inject_moe_lora`` as a saved MoE-LoRA describes it (no dropout)."""
    try:
        return inject_moe_lora(
            model,
            spec["target_modules"],
            spec["experts"],
            spec["rank"],
            spec["alpha"],
            0.0,
            spec["zero_expert"],
        )
    except ValueError as error:
        raise InputError(f"the base does not fit this MoE-LoRA ({error})") from None


def load_router(
    path, model: nn.Module, hf_tokenizer, spec: dict, holder: GateWeights
) -> PromptRouter:
    """Load a saved MoE-LoRA's experts into ``model`` (injected by ``inject_from_spec``) and
    return its router; safetensors only, every tensor checked by name and shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from parttok.llm.prompt_embedding import PromptEmbedder

    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as error:
        raise InputError(f"{path}: unreadable ({str(error)[:80]})") from None
    embedder = PromptEmbedder(spec["gate_embedding"], model, hf_tokenizer)
    gate = PromptGate(embedder.dim, spec["experts"] + spec["zero_expert"])
    gate_prefix = "gate."
    wanted = {f"{gate_prefix}{k}": v for k, v in gate.state_dict().items()}
    layers = {name: m for name, m in model.named_modules() if isinstance(m, MoELoRALinear)}
    wanted |= {
        f"{name}.{key}": getattr(m, key)
        for name, m in layers.items()
        for key in ("lora_A", "lora_B")
    }
    if set(tensors) != set(wanted):
        missing, extra = len(set(wanted) - set(tensors)), len(set(tensors) - set(wanted))
        raise InputError(
            f"{path}: does not fit the base ({missing} tensors missing, {extra} unknown)"
        )
    with torch.no_grad():
        for key, target in wanted.items():
            if tensors[key].shape != target.shape:
                shape, expected = tuple(tensors[key].shape), tuple(target.shape)
                raise InputError(f"{path}: {key} has shape {shape}, expected {expected}")
            target.copy_(tensors[key].to(target.dtype))
    return PromptRouter(embedder, gate, holder).eval()


def moe_tensors(model: nn.Module, router: PromptRouter) -> dict[str, torch.Tensor]:
    """What a saved MoE-LoRA holds: every layer's experts (by module name in ``model``, the
    plain transformers model) and the gate (``gate.*``)."""
    gate = {f"gate.{k}": v.detach() for k, v in router.gate.state_dict().items()}
    return expert_state(model) | gate
