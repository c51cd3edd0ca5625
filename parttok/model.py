"""The body-part tokenizer: a Transformer VQ-VAE that pools groups of joints through learnable
part queries into one code per body part per time step.

    features (B, T, 263), normalised
      -> per-joint embeddings (B, T, 22, C) -> 4-frame patches (B, S, 22, Dj), S = T / 4
      -> spatio-temporal Transformer (attention across joints, then across steps)
      -> part queries read only their group's joints (B, S, P, D) -> (B, S, P, code_dim)
      -> one codebook per part: codes (B, S, P)
      -> part tokens -> Transformer over parts x steps
      -> joint queries read all parts of their step (B, S, 22, Dj)
      -> un-patch to frames -> per-joint heads -> (B, T, 263)

The codes are separate per part, but a decoded joint may depend on several parts (where an
arm is depends on the torso too), so the joint queries are not masked.

Modes of the same code: "motion" (above); "pose" (each frame its own step, only the pose
features, no attention across time); "continuous" (no quantizer: the part features are the
output, what a language model reads through its own projector, ``parttok.llm.features``).

Temporal attention is local (``attention_window`` steps each side) with a learned relative
position bias, so clips of any length see what the training windows saw; past a few windows
it runs in blocks, in time and memory linear in a clip's length.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn
from vector_quantize_pytorch import FSQ, VectorQuantize

from parttok.errors import FeatureError
from parttok.features import FEATURE_DIM, JOINT_FEATURE_INDICES, POSE_FEATURE_INDICES
from parttok.skeleton import NUM_JOINTS

MODES = ("motion", "pose", "continuous")
# ParCo's split of the 22 SMPL joints.
SIX_PARTS: dict[str, tuple[int, ...]] = {
    "root": (0,),
    "torso": (3, 6, 9, 12, 15),
    "left_arm": (13, 16, 18, 20),
    "right_arm": (14, 17, 19, 21),
    "left_leg": (1, 4, 7, 10),
    "right_leg": (2, 5, 8, 11),
}
# The root (pelvis and trajectory) joined to the spine and head.
FIVE_PARTS: dict[str, tuple[int, ...]] = {
    "torso": (0, 3, 6, 9, 12, 15),
    "left_arm": SIX_PARTS["left_arm"],
    "right_arm": SIX_PARTS["right_arm"],
    "left_leg": SIX_PARTS["left_leg"],
    "right_leg": SIX_PARTS["right_leg"],
}


@dataclass
class ModelOutput:
    """What every parttok model's forward returns."""

    reconstruction: Tensor  # (B, T, 263) normalised; zero at padded steps
    codes: Tensor | None  # (B, S, P) long, -1 at padded steps; None without a quantizer
    aux_loss: Tensor  # scalar: commitment loss, already weighted
    latents: Tensor  # (B, S, P, code_dim) the vectors before quantisation


def validate_parts(parts: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Check a part config (name -> joint indices); every joint must belong to some part."""
    if not isinstance(parts, Mapping) or not parts:
        raise ValueError("parts: expected a non-empty mapping of part name -> joint indices")
    groups: dict[str, tuple[int, ...]] = {}
    for name, joints in parts.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"parts: part names must be non-empty strings, got {name!r}")
        if isinstance(joints, (str, bytes)) or not isinstance(joints, Sequence) or not joints:
            raise ValueError(f"parts: {name!r} needs a non-empty list of joint indices")
        if not all(isinstance(j, Integral) and 0 <= j < NUM_JOINTS for j in joints):
            raise ValueError(f"parts: {name!r} has joints outside 0..21: {list(joints)}")
        if len(set(joints)) != len(joints):
            raise ValueError(f"parts: {name!r} lists a joint twice: {list(joints)}")
        groups[name] = tuple(int(j) for j in joints)
    missing = sorted(set(range(NUM_JOINTS)).difference(*groups.values()))
    if missing:
        raise ValueError(f"parts: joints {missing} belong to no part; every joint needs one")
    return groups


def check_batch(features: Tensor, mask: Tensor | None, frames_per_step: int) -> Tensor:
    """Validate a (B, T, 263) batch and its (B, T) mask; return the mask (all True if None)."""
    if features.ndim != 3 or features.shape[-1] != FEATURE_DIM:
        raise FeatureError(f"expected features (batch, frames, 263), got {tuple(features.shape)}")
    if features.shape[1] % frames_per_step:
        raise FeatureError(
            f"{features.shape[1]} frames is not a multiple of {frames_per_step} frames per "
            "step; pad the batch and mask the padding"
        )
    if mask is None:
        return torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    if mask.shape != features.shape[:2]:
        raise FeatureError(f"mask {tuple(mask.shape)} does not match features {features.shape}")
    return mask.bool()


def step_mask_from(mask: Tensor, frames_per_step: int) -> Tensor:
    """Frame mask (B, T) -> step mask (B, T / frames_per_step): a step is real if any frame is."""
    return rearrange(mask, "b (s r) -> b s r", r=frames_per_step).any(dim=-1)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Run with every submodule in eval mode (no EMA or k-means codebook updates, no dropout),
    then put each submodule back in the mode it was in."""
    modes = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for submodule, training in modes:
            submodule.training = training


def in_float32(method: Callable) -> Callable:
    """Run a quantizer's ``method(latents, step_mask, ...)`` on float32 latents with autocast
    off: trained in mixed precision (``--trainer.precision bf16-mixed``), code distances and EMA
    updates in bfloat16 would pick the wrong codes and drift the codebooks."""

    @functools.wraps(method)
    def wrapped(self: nn.Module, latents: Tensor, step_mask: Tensor, *args):
        with torch.autocast(latents.device.type, enabled=False):
            return method(self, latents.float(), step_mask, *args)

    return wrapped


def nearest_codes(vectors: Tensor, codebooks: Tensor, count: int | None = None) -> Tensor:
    """Index of the nearest code (Euclidean) per group: (..., G, d), (G, K, d) -> (..., G); or
    the ``count`` nearest, nearest first: (..., G, count)."""
    dot = torch.einsum("...gd,gkd->...gk", vectors, codebooks)
    distances = codebooks.square().sum(dim=-1) - 2 * dot  # (..., G, K), up to a constant
    if count is None:
        return distances.argmin(dim=-1)
    # a stable sort: among equally near codes the lowest index first, as argmin picks
    return distances.argsort(dim=-1, stable=True)[..., :count]


def lookup_codes(codes: Tensor, codebooks: Tensor) -> Tensor:
    """Code vectors per group: codes (..., G), (G, K, d) -> (..., G, d); code -1 gives zeros."""
    groups = torch.arange(codebooks.shape[0], device=codes.device)
    vectors = codebooks[groups, codes.clamp_min(0)]
    return vectors.masked_fill((codes < 0)[..., None], 0.0)


def build_vector_quantizer(
    code_dim: int,
    codebook_size: int,
    groups: int,
    ema_decay: float,
    kmeans_init: bool,
    dead_code_threshold: float,
    commitment_weight: float,
) -> VectorQuantize:
    """An EMA VectorQuantize with one codebook per group over (1, N, groups * code_dim).
    Gradients pass the quantizer straight through, not by the library's default, the rotation
    trick (Fifty et al. 2024): trained 3,000 steps of configs/cpu.yaml it was worse on every
    held-out set (BENCHMARKS.md, "Training recipe")."""
    return VectorQuantize(
        dim=groups * code_dim,
        codebook_dim=code_dim,
        codebook_size=codebook_size,
        heads=groups,
        separate_codebook_per_head=True,
        decay=ema_decay,
        kmeans_init=kmeans_init,
        dead_code_threshold_ratio=dead_code_ratio(dead_code_threshold, codebook_size),
        commitment_weight=commitment_weight,
        rotation_trick=False,
    )


def dead_code_ratio(threshold: float, codebook_size: int) -> float:
    """The library's ``dead_code_threshold_ratio`` for a dead-code ``threshold`` given as an
    EMA cluster size (>= 1, the former ``threshold_ema_dead_code``) or already as a ratio."""
    return threshold / codebook_size if threshold >= 1.0 else threshold


def kmeans_done(codebooks: Tensor) -> bool:
    """True when no codebook in (G, K, d) is still all zeros, as k-means init leaves it
    until the first training batch."""
    return bool((codebooks.detach().flatten(1).abs().amax(1) > 0).all())


class PartQuantizer(nn.Module):
    """One codebook per part: vectors (B, S, P, d) -> codes (B, S, P), EMA VQ or FSQ.

    In training mode the library quantizer sees only the real steps (so padding never enters
    the EMA, k-means or dead-code statistics). In eval mode codes are the nearest codebook
    entries, computed here, so the codebook is never touched; before the first training
    forward (k-means init) every code vector is zero and all codes come out 0.
    """

    def __init__(
        self,
        *,
        num_parts: int,
        code_dim: int,
        codebook_size: int,
        kind: str = "vq",
        fsq_levels: Sequence[int] = (8, 8, 8),
        ema_decay: float = 0.99,
        kmeans_init: bool = True,
        dead_code_threshold: float = 1.0,
        commitment_weight: float = 0.02,
    ) -> None:
        super().__init__()
        self.num_parts, self.kind = num_parts, kind
        if kind == "fsq":
            self.fsq = FSQ(levels=list(fsq_levels), num_codebooks=num_parts)
        else:
            self.vq = build_vector_quantizer(
                code_dim,
                codebook_size,
                num_parts,
                ema_decay,
                kmeans_init,
                dead_code_threshold,
                commitment_weight,
            )

    @property
    def initialised(self) -> bool:
        """False until k-means has run on the first training batch (FSQ: always True)."""
        return self.kind == "fsq" or kmeans_done(self.codebook_vectors())

    def codebook_vectors(self) -> Tensor:
        """(P, K, d) code vectors."""
        if self.kind == "fsq":
            return self.fsq.implicit_codebook.expand(self.num_parts, -1, -1)
        return self.vq.codebook

    def lookup(self, codes: Tensor) -> Tensor:
        """(B, S, P) codes (-1 = padding) -> (B, S, P, d) code vectors."""
        return lookup_codes(codes, self.codebook_vectors())

    @in_float32
    def forward(self, latents: Tensor, step_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, S, P, d), (B, S) -> quantized (B, S, P, d), codes (B, S, P), loss ()."""
        loss = latents.new_zeros(())
        if self.kind == "fsq":
            quantized, codes = self.fsq(rearrange(latents, "b s p d -> b s (p d)"))
            quantized = rearrange(quantized, "b s (p d) -> b s p d", p=self.num_parts)
        elif self.training:
            real = rearrange(latents[step_mask], "n p d -> 1 n (p d)")  # real steps only
            real_quantized, real_codes, loss = self.vq(real)
            quantized = latents.new_zeros(latents.shape)
            quantized[step_mask] = rearrange(real_quantized, "1 n (p d) -> n p d", p=self.num_parts)
            codes = step_mask.new_zeros(step_mask.shape + (self.num_parts,), dtype=torch.long)
            codes[step_mask] = real_codes.reshape(-1, self.num_parts).long()
        else:
            codes = nearest_codes(latents, self.codebook_vectors())
            quantized = self.lookup(codes)
        padding = ~step_mask[..., None]  # (B, S, 1)
        return (
            quantized.masked_fill(padding[..., None], 0.0),
            codes.long().masked_fill(padding, -1),
            loss,
        )

    @in_float32
    def candidates(self, latents: Tensor, step_mask: Tensor, count: int) -> Tensor:
        """(B, S, P, d), (B, S) -> each part's ``count`` nearest codes, nearest first (the
        first are eval ``forward``'s): (B, S, P, count), -1 at padded steps. Codebooks only:
        FSQ rounds its latents."""
        if self.kind != "vq":
            raise ValueError("candidate codes need codebooks: a VQ model (not FSQ)")
        codes = nearest_codes(latents, self.codebook_vectors(), count)
        return codes.masked_fill(~step_mask[..., None, None], -1)


class GroupedLinear(nn.Module):
    """A separate linear map per group (joint or part): (..., G, I) -> (..., G, O)."""

    def __init__(self, groups: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        bound = in_features**-0.5
        weight = torch.empty(groups, in_features, out_features).uniform_(-bound, bound)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(groups, out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        out = torch.einsum("...gi,gio->...go", x, self.weight)
        return out if self.bias is None else out + self.bias


def attend(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor | None, dropout: float):
    """Multi-head attention: q (N, L, D) over k, v (N, M, D); ``mask`` broadcasts to
    (N, heads, L, M), bool (True = attend) or an additive bias. -> (N, L, D).

    On a GPU through the fused kernel; on a CPU as two batched matrix products, which for the
    few tokens of a step or a window is several times faster (tools/bench_throughput.py)."""
    q, k, v = (rearrange(t, "n l (h d) -> n h l d", h=heads) for t in (q, k, v))
    if q.is_cuda:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    else:
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (N, h, L, M)
        # masked in place: a second tensor of the scores' size costs as much as the product
        if mask is not None and mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        elif mask is not None:
            scores += mask
        weights = F.dropout(scores.softmax(-1), dropout, training=dropout > 0)
        out = weights @ v  # (N, h, L, d)
    return rearrange(out, "n h l d -> n l (h d)")


class SelfAttention(nn.Module):
    """Multi-head self-attention over the middle axis of (N, L, D)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.to_out = zero_linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        return self.to_out(attend(q, k, v, self.heads, mask, self.active_dropout))

    def forward_locally(self, x: Tensor, relative_bias: Tensor, step_mask: Tensor) -> Tensor:
        """The same attention across steps, in blocks (``attend_locally``): (B * G, S, D)."""
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        local = attend_locally(q, k, v, self.heads, relative_bias, step_mask, self.active_dropout)
        return self.to_out(local)

    @property
    def active_dropout(self) -> float:
        """The dropout rate now: none in eval mode."""
        return self.dropout if self.training else 0.0


def zero_linear(in_features: int, out_features: int) -> nn.Linear:
    """A linear layer that starts at zero: a residual branch that is off until it learns,
    which keeps early training from collapsing to the mean pose."""
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def feed_forward(dim: int, mlp_ratio: int, dropout: float) -> nn.Sequential:
    """The pre-norm MLP branch of a residual block."""
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, mlp_ratio * dim),
        nn.GELU(),
        zero_linear(mlp_ratio * dim, dim),
        nn.Dropout(dropout),
    )


def temporal_mask(step_mask: Tensor, window: int) -> Tensor:
    """Which steps each step may attend to: real ones within ``window`` steps, and itself
    (so a padded step never has nothing to attend to). (B, S) -> (B, S, S), or (1, S, S)
    when nothing is padded (one mask for the whole batch)."""
    position = torch.arange(step_mask.shape[1], device=step_mask.device)
    near = (position[None, :] - position[:, None]).abs() <= window  # (S, S)
    if step_mask.all():
        return near[None]
    itself = torch.eye(len(position), dtype=torch.bool, device=step_mask.device)
    return near & (step_mask[:, None, :] | itself)


def attend_locally(
    q: Tensor, k: Tensor, v: Tensor, heads: int, relative_bias: Tensor, step_mask: Tensor,
    dropout: float,
) -> Tensor:  # fmt: skip
    """Local attention across steps in blocks: what ``attend`` gives with the mask of
    ``temporal_mask`` and the bias of ``relative_bias`` (heads, 2 * window + 1), in time and
    memory linear in the steps (the full S x S scores of a five-minute clip take gigabytes).
    Each block of ``2 * window`` steps reads the keys from ``window`` steps before it to
    ``window`` after it. q, k, v (B * G, S, D), groups of a batch row adjacent; step_mask
    (B, S) -> (B * G, S, D)."""
    window = (relative_bias.shape[-1] - 1) // 2
    block, span = 2 * window, 4 * window  # query steps per block; key steps each reads
    count, steps, _ = q.shape
    batch = len(step_mask)
    blocks = -(-steps // block)
    tail = blocks * block - steps  # padding that makes whole blocks
    q, k, v = (rearrange(t, "n s (h d) -> n h s d", h=heads) for t in (q, k, v))
    q = F.pad(q * q.shape[-1] ** -0.5, (0, 0, 0, tail))  # (N, h, blocks * block, d)
    q = q.view(count, heads, blocks, block, -1)
    k, v = (F.pad(t, (0, 0, window, window + tail)).unfold(2, span, block) for t in (k, v))
    scores = q @ k  # (N, h, blocks, block, span)
    key_steps = torch.arange(span, device=q.device) - window  # from each block's first step
    offset = key_steps[None, :] - torch.arange(block, device=q.device)[:, None]  # (block, span)
    real = F.pad(step_mask, (window, window + tail)).unfold(1, span, block)  # (B, blocks, span)
    allowed = (offset.abs() <= window) & (real[:, :, None, :] | (offset == 0))
    bias = relative_bias[:, offset.clamp(-window, window) + window]  # (h, block, span)
    bias = torch.where(allowed[:, None, None], bias[:, None], float("-inf"))  # (B, 1, h, ...)
    scores = scores.view(batch, -1, *scores.shape[1:]) + bias  # (B, G, h, blocks, block, span)
    weights = F.dropout(scores.softmax(-1), dropout, training=dropout > 0).flatten(0, 1)
    out = weights @ v.transpose(-1, -2)  # (N, h, blocks, block, d)
    out = out.flatten(2, 3)[:, :, :steps]  # (N, h, S, d)
    return rearrange(out, "n h s d -> n s (h d)")


class SpaceTimeLayer(nn.Module):
    """Attention across the groups of a step (joints or parts), then across steps per group
    (local, with a relative position bias; skipped when ``window`` is None), then an MLP.
    (B, S, G, D) -> (B, S, G, D)."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: int, dropout: float, window: int | None
    ) -> None:
        super().__init__()
        self.window = window
        self.space_norm = nn.LayerNorm(dim)
        self.space_attention = SelfAttention(dim, heads, dropout)
        if window is not None:
            self.time_norm = nn.LayerNorm(dim)
            self.time_attention = SelfAttention(dim, heads, dropout)
            self.relative_bias = nn.Parameter(torch.zeros(heads, 2 * window + 1))
        self.mlp = feed_forward(dim, mlp_ratio, dropout)

    def time_bias(self, allowed: Tensor, groups: int) -> Tensor:
        """Allowed (B, S, S) -> additive attention bias (B * groups, heads, S, S); one for
        the whole batch if allowed is (1, S, S)."""
        position = torch.arange(allowed.shape[-1], device=allowed.device)
        offset = (position[None, :] - position[:, None]).clamp(-self.window, self.window)
        bias = self.relative_bias[:, offset + self.window]  # (heads, S, S)
        bias = torch.where(allowed[:, None], bias, float("-inf"))  # (B or 1, heads, S, S)
        return bias if len(bias) == 1 else repeat(bias, "b h i j -> (b g) h i j", g=groups)

    def attend_in_time(self, x: Tensor, step_mask: Tensor, groups: int) -> Tensor:
        """Attention across steps, (B * G, S, D) -> (B * G, S, D): over all the steps with a
        mask up to 8 windows of steps (training windows: there the S x S scores cost no more
        than the blocks' overlap), in blocks beyond (long clips, whose speed and memory
        tools/bench_throughput.py measures)."""
        if x.shape[1] <= 8 * self.window:
            mask = self.time_bias(temporal_mask(step_mask, self.window), groups)
            return self.time_attention(x, mask)
        return self.time_attention.forward_locally(x, self.relative_bias, step_mask)

    def forward(self, x: Tensor, step_mask: Tensor) -> Tensor:
        """Tokens (B, S, G, D) of real steps ``step_mask`` (B, S) -> (B, S, G, D)."""
        batch, steps, groups, _ = x.shape
        across_groups = rearrange(self.space_norm(x), "b s g d -> (b s) g d")
        x = x + self.space_attention(across_groups).view(x.shape)
        if self.window is not None:
            across_time = rearrange(self.time_norm(x), "b s g d -> (b g) s d")
            across_time = self.attend_in_time(across_time, step_mask, groups)
            x = x + rearrange(across_time, "(b g) s d -> b s g d", b=batch)
        return x + self.mlp(x)


class QueryPooling(nn.Module):
    """Learnable queries read a step's tokens by cross-attention, optionally each only some of
    them (``mask`` (Q, N), True = may read). (B, S, N, token_dim) -> (B, S, Q, dim)."""

    def __init__(
        self,
        num_queries: int,
        dim: int,
        token_dim: int,
        heads: int,
        mlp_ratio: int,
        dropout: float,
        mask: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.query_norm = nn.LayerNorm(dim)
        self.token_norm = nn.LayerNorm(token_dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(token_dim, 2 * dim)
        self.to_out = zero_linear(dim, dim)
        self.mlp = feed_forward(dim, mlp_ratio, dropout)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        batch, _, count, _ = tokens.shape
        num_queries, dim = self.queries.shape
        q = self.to_q(self.query_norm(self.queries))  # (Q, D)
        dropout = self.dropout if self.training else 0.0
        normed = rearrange(self.token_norm(tokens), "b s n c -> (b s) n c")
        # Few queries over many tokens (the parts over the joints): the queries are the same
        # at every step, so fold them into the key map and read the tokens before the value
        # map rather than mapping every token to keys and values; the same attention.
        if num_queries * (2 * self.heads * count + dim) < 2 * count * dim:
            read = self.read_folded(q, normed, dropout)
        else:
            k, v = self.to_kv(normed).chunk(2, dim=-1)  # (B * S, N, D) each
            read = attend(q.expand(len(k), -1, -1), k, v, self.heads, self.mask, dropout)
        read = self.to_out(read)  # (B * S, Q, D)
        queries = self.queries + rearrange(read, "(b s) q d -> b s q d", b=batch)
        return queries + self.mlp(queries)

    def read_folded(self, q: Tensor, tokens: Tensor, dropout: float) -> Tensor:
        """Attention of queries q (Q, D) over ``tokens`` (B * S, N, C) with keys and values
        ``to_kv(tokens)``, computed without them: q . (W_k x + b_k) is x . (W_k^T q) plus a
        constant over the tokens (which the softmax ignores), and the weighted sum of
        W_v x + b_v is W_v (sum of weighted x) + b_v (sum of weights). -> (B * S, Q, D)."""
        heads, queries = self.heads, len(q)
        w_k, w_v = self.to_kv.weight.chunk(2, dim=0)  # (D, C) each
        b_v = self.to_kv.bias.chunk(2)[1]  # (D,)
        q = rearrange(q, "q (h d) -> h q d", h=heads) * (q.shape[-1] // heads) ** -0.5
        key_map = q @ rearrange(w_k, "(h d) c -> h d c", h=heads)  # (h, Q, C)
        scores = tokens @ rearrange(key_map, "h q c -> c (h q)")  # (B * S, N, h * Q)
        scores = rearrange(scores, "n t (h q) -> n h q t", h=heads)
        if self.mask is not None:
            scores = scores.masked_fill(~self.mask, float("-inf"))
        weights = F.dropout(scores.softmax(-1), dropout, training=dropout > 0)  # (B*S, h, Q, N)
        read = rearrange(weights, "n h q t -> n (h q) t") @ tokens  # (B * S, h * Q, C)
        read = rearrange(read, "n (h q) c -> h (n q) c", h=heads)
        out = read @ rearrange(w_v, "(h d) c -> h c d", h=heads)  # (h, B * S * Q, d)
        out = out + rearrange(weights.sum(-1), "n h q -> h (n q) 1") * b_v.view(heads, 1, -1)
        return rearrange(out, "h (n q) d -> n q (h d)", q=queries)  # (B * S, Q, D)


class StepEncoder(nn.Module):
    """What every parttok model shares (``PartTokenizer`` and the baselines): frames encoded
    into latents per step of ``frames_per_step`` frames (each defines ``_encode_latents(
    features, mask, step_mask)``), and a ``quantizer`` whose nearest codes the code search
    reads (``parttok.refine``)."""

    frames_per_step: int
    quantizer: nn.Module | None

    def _step_latents(self, features: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Features (B, T, 263) and an optional frame mask, checked -> latents (B, S, G, d)
        and the step mask (B, S)."""
        mask = check_batch(features, mask, self.frames_per_step)
        step_mask = step_mask_from(mask, self.frames_per_step)  # (B, S)
        return self._encode_latents(features, mask, step_mask), step_mask

    @torch.no_grad()
    def latents(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T, 263) -> the encoder's continuous features (B, S, G, d) before any quantizer,
        zero at padded steps: what a language model reads through a projector instead of
        codes."""
        with evaluating(self):
            latents, step_mask = self._step_latents(features, mask)
            return latents.masked_fill(~step_mask[..., None, None], 0.0)

    @torch.no_grad()
    def candidate_codes(self, features: Tensor, mask: Tensor | None, count: int) -> Tensor:
        """(B, T, 263) -> the ``count`` nearest codes of each code column (a part, the body, a
        residual layer) at each step, nearest first (the first are ``encode``'s): (B, S, P,
        count) long, -1 at padded steps. Codebooks only (VQ): FSQ rounds its latents,
        continuous mode has no codes."""
        if self.quantizer is None:
            raise ValueError("candidate codes need codebooks: continuous mode has no codes")
        with evaluating(self):
            latents, step_mask = self._step_latents(features, mask)
            return self.quantizer.candidates(latents, step_mask, count)


class PartTokenizer(StepEncoder):
    """The body-part tokenizer (see the module docstring). Keyword arguments only, all plain
    types; ``self.config`` holds them with defaults filled, so ``type(m)(**m.config)``
    rebuilds the model.

    Args:
        mode: "motion", "pose" or "continuous".
        parts: part name -> joint indices (default ``SIX_PARTS``); every joint in some part.
        dim: width of the part tokens; joint_dim: of the joint tokens; frame_dim: per joint
            at frame rate (before patching).
        encoder_depth: spatio-temporal layers over joints; decoder_depth: over parts; heads,
            mlp_ratio: per layer.
        attention_window: steps each side that temporal attention sees.
        codebook_size, code_dim: per-part codebook (FSQ: ``prod(fsq_levels)`` codes of
            ``len(fsq_levels)`` dims; ``codebook_size`` must equal the product).
        downsample: frames per step (default 4; pose mode 1).
        quantizer: "vq" (EMA, k-means init, dead-code replacement) or "fsq".
        ema_decay, kmeans_init, commitment_weight: VQ settings; dead_code_threshold: a code
            whose EMA usage (vectors per batch) falls below it is replaced by a batch vector.
        dropout: in every Transformer layer.

    Settings since removed (``REMOVED_SETTINGS``) may still be in a saved config, holding the
    value that did nothing; ``parttok.tokenizer.build_model`` drops them there.
    """

    feature_dim = FEATURE_DIM
    # Settings the model no longer takes -> the value with which they did nothing: gradients
    # by the rotation trick (worse on every held-out set, BENCHMARKS.md, "Training recipe");
    # a projector to a language model's hidden size (continuous mode; never trained here,
    # the LLM's own is in ``parttok.llm.features``).
    REMOVED_SETTINGS = {"rotation_trick": False, "llm_hidden_size": None, "projector": "linear"}

    def __init__(
        self,
        *,
        mode: str = "motion",
        parts: dict[str, list[int]] | None = None,
        dim: int = 128,
        joint_dim: int = 64,
        frame_dim: int = 32,
        encoder_depth: int = 2,
        decoder_depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 2,
        attention_window: int = 8,
        codebook_size: int = 512,
        code_dim: int = 32,
        downsample: int | None = None,
        quantizer: str = "vq",
        fsq_levels: list[int] | None = None,
        ema_decay: float = 0.99,
        kmeans_init: bool = True,
        dead_code_threshold: float = 1.0,
        commitment_weight: float = 0.02,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        groups = validate_parts(SIX_PARTS if parts is None else parts)
        downsample = (1 if mode == "pose" else 4) if downsample is None else downsample
        fsq_levels = [8, 8, 8] if fsq_levels is None else [int(level) for level in fsq_levels]
        _check_options(
            mode,
            dim,
            joint_dim,
            heads,
            attention_window,
            downsample,
            quantizer,
            fsq_levels,
            codebook_size,
        )
        self.config = dict(
            mode=mode,
            parts={name: list(joints) for name, joints in groups.items()},
            dim=dim,
            joint_dim=joint_dim,
            frame_dim=frame_dim,
            encoder_depth=encoder_depth,
            decoder_depth=decoder_depth,
            heads=heads,
            mlp_ratio=mlp_ratio,
            attention_window=attention_window,
            codebook_size=codebook_size,
            code_dim=code_dim,
            downsample=downsample,
            quantizer=quantizer,
            fsq_levels=fsq_levels,
            ema_decay=ema_decay,
            kmeans_init=kmeans_init,
            dead_code_threshold=dead_code_threshold,
            commitment_weight=commitment_weight,
            dropout=dropout,
        )
        self.mode = mode
        self.part_names: tuple[str, ...] = tuple(groups)
        self.temporal = mode != "pose"
        window = attention_window if self.temporal else None
        num_parts, joints = len(groups), NUM_JOINTS
        self.code_dim = len(fsq_levels) if quantizer == "fsq" and mode != "continuous" else code_dim

        # Per-joint slots of the 263 layout (pose mode: the pose features only).
        layout = POSE_FEATURE_INDICES if mode == "pose" else JOINT_FEATURE_INDICES
        width = max(len(indices) for indices in layout)
        gather = [list(indices) + [FEATURE_DIM] * (width - len(indices)) for indices in layout]
        slots = [j * width + k for j, indices in enumerate(layout) for k in range(len(indices))]
        self.register_buffer("gather_index", torch.tensor(gather), persistent=False)  # (J, F)
        self.register_buffer("slot_index", torch.tensor(slots), persistent=False)  # (N,)
        feature_index = torch.tensor([i for indices in layout for i in indices])
        self.register_buffer("feature_index", feature_index, persistent=False)  # (N,)
        group_mask = torch.zeros(num_parts, joints, dtype=torch.bool)
        for part, members in enumerate(groups.values()):
            group_mask[part, list(members)] = True

        # Encoder.
        self.joint_embed = GroupedLinear(joints, width, frame_dim)
        self.frame_encoder = (
            nn.Conv1d(frame_dim, frame_dim, 3, padding=1) if self.temporal else None
        )
        self.patch_embed = nn.Linear(downsample * frame_dim, joint_dim)
        self.joint_embedding = nn.Parameter(torch.randn(joints, joint_dim) * 0.02)
        self.encoder = nn.ModuleList(
            SpaceTimeLayer(joint_dim, heads, mlp_ratio, dropout, window)
            for _ in range(encoder_depth)
        )
        self.part_pooling = QueryPooling(
            num_parts, dim, joint_dim, heads, mlp_ratio, dropout, group_mask
        )
        self.to_code = nn.Sequential(
            nn.LayerNorm(dim), GroupedLinear(num_parts, dim, self.code_dim)
        )

        self.quantizer = None
        if mode != "continuous":
            self.quantizer = PartQuantizer(
                num_parts=num_parts,
                code_dim=self.code_dim,
                codebook_size=codebook_size,
                kind=quantizer,
                fsq_levels=fsq_levels,
                ema_decay=ema_decay,
                kmeans_init=kmeans_init,
                dead_code_threshold=dead_code_threshold,
                commitment_weight=commitment_weight,
            )

        # Decoder.
        self.from_code = GroupedLinear(num_parts, self.code_dim, dim, bias=False)
        self.part_embedding = nn.Parameter(torch.randn(num_parts, dim) * 0.02)
        self.decoder = nn.ModuleList(
            SpaceTimeLayer(dim, heads, mlp_ratio, dropout, window) for _ in range(decoder_depth)
        )
        self.joint_readout = QueryPooling(joints, joint_dim, dim, heads, mlp_ratio, dropout)
        self.unpatch = nn.Sequential(
            nn.LayerNorm(joint_dim), nn.Linear(joint_dim, downsample * frame_dim)
        )
        self.frame_decoder = (
            nn.Conv1d(frame_dim, frame_dim, 3, padding=1) if self.temporal else None
        )
        self.joint_head = GroupedLinear(joints, frame_dim, width)

    # --- what the codes are ----------------------------------------------------------------
    @property
    def frames_per_step(self) -> int:
        return self.config["downsample"]

    @property
    def num_parts(self) -> int:
        return len(self.part_names)

    @property
    def is_quantized(self) -> bool:
        return self.quantizer is not None

    @property
    def codebook_size(self) -> int | None:
        return self.config["codebook_size"] if self.is_quantized else None

    @property
    def codebook_initialised(self) -> bool:
        """False before the first training forward has k-means-initialised the codebooks."""
        return self.quantizer is None or self.quantizer.initialised

    @property
    def input_feature_indices(self) -> tuple[int, ...]:
        """The dims of the 263 the model reads and reconstructs (pose mode: the pose ones)."""
        return tuple(sorted(self.feature_index.tolist()))

    def codebook_vectors(self) -> Tensor:
        """(P, K, code_dim) code vectors of each part."""
        if self.quantizer is None:
            raise ValueError("a continuous PartTokenizer has no codebook")
        return self.quantizer.codebook_vectors()

    # --- the model ------------------------------------------------------------------------
    def forward(
        self, features: Tensor, mask: Tensor | None = None, quantize: bool = True
    ) -> ModelOutput:
        """Normalised features (B, T, 263) and mask (B, T) (True = real frame). ``quantize``
        False passes the continuous latents straight to the decoder (codes None): what the
        encoder and decoder reach without the codebooks (an FSQ model has none: its codes are
        its latents bounded and rounded)."""
        if not quantize and self.quantizer is not None and self.quantizer.kind == "fsq":
            raise ValueError("an FSQ model has no codebooks to bypass")
        latents, step_mask = self._step_latents(features, mask)  # (B, S, P, d), (B, S)
        if self.quantizer is None or not quantize:
            vectors, codes, aux_loss = latents, None, latents.new_zeros(())
        else:
            vectors, codes, aux_loss = self.quantizer(latents, step_mask)
        reconstruction = self._decode_vectors(vectors, step_mask)
        return ModelOutput(reconstruction, codes, aux_loss, latents)

    @torch.no_grad()
    def encode(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T, 263) -> codes (B, S, P) long, -1 at padded steps (continuous: the part
        features (B, S, P, d), zero at padded steps). Runs in eval mode, never touches the
        codebooks; before k-means initialisation all codes are 0."""
        with evaluating(self):
            latents, step_mask = self._step_latents(features, mask)
            if self.quantizer is None:
                return latents
            return self.quantizer(latents, step_mask)[1]

    @property
    def has_codebooks(self) -> bool:
        """Whether codes are indices into codebooks (VQ), which ``candidate_codes`` searches."""
        return self.quantizer is not None and self.quantizer.kind == "vq"

    @torch.no_grad()
    def decode(self, codes: Tensor, mask: Tensor | None = None) -> Tensor:
        """Codes (B, S, P) (continuous: part features (B, S, P, d)) and an optional frame mask
        (B, S * frames_per_step) -> normalised features (B, S * frames_per_step, 263). Without
        a mask, steps whose codes are -1 are padding."""
        with evaluating(self):
            if self.quantizer is None:
                _check_shape(codes, (self.num_parts, self.code_dim), "part features")
                vectors = codes
            else:
                check_codes(codes, self.num_parts, self.codebook_size)
                vectors = self.quantizer.lookup(codes)
            step_mask = decode_step_mask(codes, mask, self.frames_per_step, self.is_quantized)
            return self._decode_vectors(vectors, step_mask)

    def _encode_latents(self, features: Tensor, mask: Tensor, step_mask: Tensor) -> Tensor:
        frame_mask = mask[..., None, None].to(features.dtype)  # (B, T, 1, 1)
        joint_features = F.pad(features, (0, 1))[..., self.gather_index]  # (B, T, J, F)
        hidden = self.joint_embed(joint_features) * frame_mask  # (B, T, J, C)
        if self.frame_encoder is not None:
            hidden = hidden + _conv_frames(self.frame_encoder, F.gelu(hidden)) * frame_mask
        patches = rearrange(hidden, "b (s r) j c -> b s j (r c)", r=self.frames_per_step)
        tokens = self.patch_embed(patches) + self.joint_embedding  # (B, S, J, D)
        for layer in self.encoder:
            tokens = layer(tokens, step_mask)
        latents = self.to_code(self.part_pooling(tokens))  # (B, S, P, D) -> (B, S, P, d)
        return latents.masked_fill(~step_mask[..., None, None], 0.0)

    def _decode_vectors(self, vectors: Tensor, step_mask: Tensor) -> Tensor:
        tokens = self.from_code(vectors) + self.part_embedding  # (B, S, P, D)
        for layer in self.decoder:
            tokens = layer(tokens, step_mask)
        joints = self.joint_readout(tokens)  # (B, S, J, D)
        hidden = rearrange(
            self.unpatch(joints), "b s j (r c) -> b (s r) j c", r=self.frames_per_step
        )  # (B, T, J, C)
        mask = repeat(step_mask, "b s -> b (s r)", r=self.frames_per_step)  # (B, T)
        frame_mask = mask[..., None, None].to(hidden.dtype)
        hidden = hidden * frame_mask
        if self.frame_decoder is not None:
            hidden = hidden + _conv_frames(self.frame_decoder, F.gelu(hidden)) * frame_mask
        per_joint = self.joint_head(hidden)  # (B, T, J, F)
        values = per_joint.flatten(-2)[..., self.slot_index]  # (B, T, N)
        batch, frames = mask.shape
        out = values.new_zeros(batch, frames, FEATURE_DIM).index_copy(
            -1, self.feature_index, values
        )
        return out * mask[..., None]


def _conv_frames(conv: nn.Conv1d, hidden: Tensor) -> Tensor:
    """A 1D conv over time, the same for every joint: (B, T, J, C) -> (B, T, J, C)."""
    batch = hidden.shape[0]
    out = conv(rearrange(hidden, "b t j c -> (b j) c t"))
    return rearrange(out, "(b j) c t -> b t j c", b=batch)


def _check_options(
    mode: str,
    dim: int,
    joint_dim: int,
    heads: int,
    attention_window: int,
    downsample: int,
    quantizer: str,
    fsq_levels: list[int],
    codebook_size: int,
) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if dim % heads or joint_dim % heads:
        raise ValueError(f"dim {dim} and joint_dim {joint_dim} must be divisible by heads {heads}")
    if attention_window < 1:
        raise ValueError(f"attention_window must be >= 1 step, got {attention_window}")
    if downsample < 1 or (mode == "pose" and downsample != 1):
        raise ValueError(f"downsample must be >= 1 (and 1 in pose mode), got {downsample}")
    if quantizer not in ("vq", "fsq"):
        raise ValueError(f"quantizer must be 'vq' or 'fsq', got {quantizer!r}")
    if quantizer == "fsq" and mode != "continuous" and math.prod(fsq_levels) != codebook_size:
        raise ValueError(
            f"FSQ levels {fsq_levels} give {math.prod(fsq_levels)} codes; set codebook_size to "
            "that number"
        )


def _check_shape(tensor: Tensor, trailing: tuple[int, ...], what: str) -> None:
    if tensor.ndim != 2 + len(trailing) or tuple(tensor.shape[2:]) != trailing:
        expected = ", ".join(["batch", "steps", *map(str, trailing)])
        raise FeatureError(f"expected {what} ({expected}), got {tuple(tensor.shape)}")


def check_codes(codes: Tensor, groups: int, codebook_size: int) -> None:
    """Codes (B, S, groups), integers in [-1, codebook_size) (-1 = padding or dropped)."""
    _check_shape(codes, (groups,), "codes")
    if codes.is_floating_point() or codes.is_complex():
        raise FeatureError(f"codes must be integers, got {codes.dtype}")
    if codes.numel() and (codes.min() < -1 or codes.max() >= codebook_size):
        raise FeatureError(f"codes must lie in [0, {codebook_size}) (-1 marks padding)")


def decode_step_mask(
    codes: Tensor, mask: Tensor | None, frames_per_step: int, quantized: bool
) -> Tensor:
    """The (B, S) step mask for decoding: from the frame mask, else from the codes."""
    batch, steps = codes.shape[:2]
    if mask is None:
        if quantized:
            return codes[..., 0] >= 0
        return torch.ones(batch, steps, dtype=torch.bool, device=codes.device)
    if mask.shape != (batch, steps * frames_per_step):
        raise FeatureError(
            f"mask {tuple(mask.shape)} does not match {steps} steps of {frames_per_step} frames"
        )
    return step_mask_from(mask.bool(), frames_per_step)
