"""The field's whole-body tokenizers in parttok's harness, with PartTokenizer's interface:
T2M-GPT's 1D-conv VQ-VAE (``ConvVQ``, one code per step) and a MoMask-style residual VQ on
the same encoder and decoder (``ResidualConvVQ``, six codes per step).

Padded frames are zeroed before every convolution, so a clip's codes do not depend on what
it is batched with (without padding this is exactly the published architecture).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from vector_quantize_pytorch import ResidualVQ

from parttok.features import FEATURE_DIM
from parttok.model import (
    ModelOutput,
    PartQuantizer,
    StepEncoder,
    check_codes,
    dead_code_ratio,
    decode_step_mask,
    evaluating,
    in_float32,
    kmeans_done,
    lookup_codes,
    nearest_codes,
)


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(dilated conv3(relu(x)))), zero at padded positions. (B, C, T)."""

    def __init__(self, width: int, dilation: int) -> None:
        super().__init__()
        self.dilated = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
        self.pointwise = nn.Conv1d(width, width, 1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return (x + self.pointwise(F.relu(self.dilated(F.relu(x))))) * mask


class ResidualStack(nn.Module):
    """``depth`` residual blocks with dilations 1, growth, growth^2, ... (reversed: descending)."""

    def __init__(self, width: int, depth: int, growth: int, reverse: bool = False) -> None:
        super().__init__()
        dilations = [growth**level for level in range(depth)]
        self.blocks = nn.ModuleList(
            ResidualBlock(width, d) for d in (dilations[::-1] if reverse else dilations)
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return x


def _downsample_mask(mask: Tensor) -> Tensor:
    """(B, 1, T) -> (B, 1, T / 2): a position is real if either of its two frames is."""
    return rearrange(mask, "b c (t two) -> b c t two", two=2).amax(dim=-1)


class ConvEncoder(nn.Module):
    """(B, 263, T) -> (B, code_dim, T / 2^levels), halving time with stride-2 convs."""

    def __init__(self, width: int, depth: int, growth: int, code_dim: int, levels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv1d(FEATURE_DIM, width, 3, padding=1)
        self.downsamples = nn.ModuleList(
            nn.Conv1d(width, width, 4, stride=2, padding=1) for _ in range(levels)
        )
        self.stacks = nn.ModuleList(ResidualStack(width, depth, growth) for _ in range(levels))
        self.conv_out = nn.Conv1d(width, code_dim, 3, padding=1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, 263, T), mask (B, 1, T) float."""
        x = F.relu(self.conv_in(x * mask)) * mask
        for downsample, stack in zip(self.downsamples, self.stacks, strict=True):
            mask = _downsample_mask(mask)
            x = stack(downsample(x) * mask, mask)
        return self.conv_out(x) * mask


class ConvDecoder(nn.Module):
    """(B, code_dim, S) -> (B, 263, S * 2^levels), doubling time by nearest upsampling + conv."""

    def __init__(self, width: int, depth: int, growth: int, code_dim: int, levels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv1d(code_dim, width, 3, padding=1)
        self.stacks = nn.ModuleList(
            ResidualStack(width, depth, growth, reverse=True) for _ in range(levels)
        )
        self.upsamples = nn.ModuleList(nn.Conv1d(width, width, 3, padding=1) for _ in range(levels))
        self.conv_mid = nn.Conv1d(width, width, 3, padding=1)
        self.conv_out = nn.Conv1d(width, FEATURE_DIM, 3, padding=1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, code_dim, S), mask (B, 1, S * 2^levels) float (frame rate)."""
        masks = [mask]
        for _ in self.stacks:
            masks.append(_downsample_mask(masks[-1]))
        mask = masks.pop()
        x = F.relu(self.conv_in(x * mask)) * mask
        for stack, upsample in zip(self.stacks, self.upsamples, strict=True):
            x = stack(x, mask)
            mask = masks.pop()
            x = upsample(x.repeat_interleave(2, dim=-1)) * mask
        x = F.relu(self.conv_mid(x)) * mask
        return self.conv_out(x) * mask


class ResidualQuantizer(nn.Module):
    """Residual VQ (vector-quantize-pytorch ``ResidualVQ``) over (B, S, 1, d) vectors ->
    codes (B, S, layers), with MoMask's quantize dropout: with probability
    ``dropout_probability`` per training batch, the layers after a uniformly drawn one are
    skipped (their codes -1). The library drops on every training batch when its
    ``quantize_dropout`` flag is set, so this wrapper sets the flag per batch.

    Eval mode quantises here, layer by layer against the codebooks, never touching them.
    """

    def __init__(
        self,
        *,
        code_dim: int,
        codebook_size: int,
        num_quantizers: int,
        dropout_probability: float,
        ema_decay: float,
        kmeans_init: bool,
        dead_code_threshold: float,
        commitment_weight: float,
    ) -> None:
        super().__init__()
        self.dropout_probability = dropout_probability
        self.rvq = ResidualVQ(
            dim=code_dim,
            num_quantizers=num_quantizers,
            codebook_size=codebook_size,
            quantize_dropout=dropout_probability > 0,
            quantize_dropout_cutoff_index=0,
            decay=ema_decay,
            kmeans_init=kmeans_init,
            dead_code_threshold_ratio=dead_code_ratio(dead_code_threshold, codebook_size),
            commitment_weight=commitment_weight,
            rotation_trick=False,
        )

    @property
    def initialised(self) -> bool:
        return kmeans_done(self.codebook_vectors())

    def codebook_vectors(self) -> Tensor:
        """(layers, K, d)."""
        return self.rvq.codebooks

    def lookup(self, codes: Tensor) -> Tensor:
        """(B, S, layers) codes (-1 = dropped or padding) -> summed vectors (B, S, 1, d)."""
        return lookup_codes(codes, self.codebook_vectors()).sum(dim=-2, keepdim=True)

    @in_float32
    def forward(self, latents: Tensor, step_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, S, 1, d), (B, S) -> quantized (B, S, 1, d), codes (B, S, layers), loss ()."""
        layers = self.rvq.num_quantizers
        loss = latents.new_zeros(())
        if self.training:
            draw = torch.rand(()).item() < self.dropout_probability
            self.rvq.quantize_dropout = draw
            real = rearrange(latents[step_mask], "n 1 d -> 1 n d")  # real steps only
            real_quantized, real_codes, layer_losses = self.rvq(real)
            quantized = latents.new_zeros(latents.shape)
            quantized[step_mask] = rearrange(real_quantized, "1 n d -> n 1 d")
            codes = step_mask.new_zeros(step_mask.shape + (layers,), dtype=torch.long)
            codes[step_mask] = real_codes[0].long()
            kept = (real_codes[0, 0] >= 0).sum().clamp_min(1)  # layers that were not dropped
            loss = layer_losses.sum() / kept
        else:
            codes = self._residual_codes(latents, 1)[..., 0]  # (B, S, layers)
            quantized = self.lookup(codes)
        padding = ~step_mask[..., None]
        return quantized.masked_fill(padding[..., None], 0.0), codes.masked_fill(padding, -1), loss

    @in_float32
    def candidates(self, latents: Tensor, step_mask: Tensor, count: int) -> Tensor:
        """(B, S, 1, d), (B, S) -> each layer's ``count`` nearest codes to its residual along
        the nearest codes' path, nearest first (the first are eval ``forward``'s):
        (B, S, layers, count), -1 at padded steps."""
        codes = self._residual_codes(latents, count)
        return codes.masked_fill(~step_mask[..., None, None], -1)

    def _residual_codes(self, latents: Tensor, count: int) -> Tensor:
        """(B, S, 1, d) -> (B, S, layers, count): layer by layer, the ``count`` codes nearest
        the residual that the earlier layers' nearest codes leave."""
        residual = latents[..., 0, :]  # (B, S, d)
        layer_codes = []
        for codebook in self.codebook_vectors():  # (K, d) per layer
            codes = nearest_codes(residual[..., None, :], codebook[None], count)[..., 0, :]
            residual = residual - codebook[codes[..., 0]]
            layer_codes.append(codes)  # (B, S, count)
        return torch.stack(layer_codes, dim=-2)


class _ConvTokenizer(StepEncoder):
    """What ConvVQ and ResidualConvVQ share: the conv encoder and decoder around a quantizer
    of (B, S, 1, code_dim) vectors, and PartTokenizer's interface."""

    feature_dim = FEATURE_DIM
    is_quantized = True
    has_codebooks = True
    temporal = True  # motion only: no pose mode
    part_names: tuple[str, ...]

    def __init__(self, config: dict, quantizer: nn.Module) -> None:
        super().__init__()
        self.config = config
        arguments = (
            config["width"],
            config["depth"],
            config["dilation_growth"],
            config["code_dim"],
            config["downsample_levels"],
        )
        self.encoder = ConvEncoder(*arguments)
        self.quantizer = quantizer
        self.decoder = ConvDecoder(*arguments)

    @property
    def frames_per_step(self) -> int:
        return 2 ** self.config["downsample_levels"]

    @property
    def num_parts(self) -> int:
        return len(self.part_names)

    @property
    def codebook_size(self) -> int:
        return self.config["codebook_size"]

    @property
    def code_dim(self) -> int:
        return self.config["code_dim"]

    @property
    def codebook_initialised(self) -> bool:
        return self.quantizer.initialised

    def codebook_vectors(self) -> Tensor:
        """(P, K, code_dim): the codebook (ConvVQ) or one per residual layer."""
        return self.quantizer.codebook_vectors()

    def forward(
        self, features: Tensor, mask: Tensor | None = None, quantize: bool = True
    ) -> ModelOutput:
        """As ``PartTokenizer.forward``: ``quantize`` False bypasses the codebooks."""
        latents, step_mask = self._step_latents(features, mask)
        if quantize:
            vectors, codes, aux_loss = self.quantizer(latents, step_mask)
        else:
            vectors, codes, aux_loss = latents, None, latents.new_zeros(())
        return ModelOutput(self._decode_vectors(vectors, step_mask), codes, aux_loss, latents)

    @torch.no_grad()
    def encode(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, T, 263) -> codes (B, S, P), -1 at padded steps; eval mode, codebooks untouched
        (before k-means initialisation every code vector is zero and all codes are 0)."""
        with evaluating(self):
            latents, step_mask = self._step_latents(features, mask)
            return self.quantizer(latents, step_mask)[1]

    @torch.no_grad()
    def decode(self, codes: Tensor, mask: Tensor | None = None) -> Tensor:
        """Codes (B, S, P) and an optional frame mask -> (B, S * frames_per_step, 263)."""
        with evaluating(self):
            check_codes(codes, self.num_parts, self.codebook_size)
            step_mask = decode_step_mask(codes, mask, self.frames_per_step, quantized=True)
            return self._decode_vectors(self.quantizer.lookup(codes), step_mask)

    def _encode_latents(self, features: Tensor, mask: Tensor, step_mask: Tensor) -> Tensor:
        frames = rearrange(features, "b t f -> b f t")
        latents = self.encoder(frames, mask[:, None].to(features.dtype))  # (B, d, S)
        latents = rearrange(latents, "b d s -> b s 1 d")
        return latents.masked_fill(~step_mask[..., None, None], 0.0)

    def _decode_vectors(self, vectors: Tensor, step_mask: Tensor) -> Tensor:
        frame_mask = step_mask.repeat_interleave(self.frames_per_step, dim=1)  # (B, T)
        out = self.decoder(
            rearrange(vectors, "b s 1 d -> b d s"), frame_mask[:, None].to(vectors.dtype)
        )
        return rearrange(out, "b f t -> b t f")


WHOLE_BODY_PART = "body"  # ConvVQ's one code per step
RESIDUAL_LAYER_PREFIX = "layer"  # ResidualConvVQ's codes: layer0, layer1, ...


def is_whole_body(part_names: Sequence[str]) -> bool:
    """True for the part names of the whole-body baselines' codes (one body code per step, or
    residual layers of it), whose columns are not body parts."""
    names = tuple(part_names)
    return names == (WHOLE_BODY_PART,) or names == tuple(
        f"{RESIDUAL_LAYER_PREFIX}{index}" for index in range(len(names))
    )


class ConvVQ(_ConvTokenizer):
    """T2M-GPT's VQ-VAE: 1D convs over time on the whole 263-vector, width 512, 3 residual
    blocks per level with dilation growth 3, two stride-2 downsamplings (4 frames per code),
    one EMA codebook of 512 x 512 with k-means init and dead-code reset. Codes (B, S, 1)."""

    part_names = (WHOLE_BODY_PART,)

    def __init__(
        self,
        *,
        width: int = 512,
        depth: int = 3,
        dilation_growth: int = 3,
        downsample_levels: int = 2,
        code_dim: int = 512,
        codebook_size: int = 512,
        ema_decay: float = 0.99,
        kmeans_init: bool = True,
        dead_code_threshold: float = 1.0,
        commitment_weight: float = 0.02,
    ) -> None:
        config = dict(
            width=width,
            depth=depth,
            dilation_growth=dilation_growth,
            downsample_levels=downsample_levels,
            code_dim=code_dim,
            codebook_size=codebook_size,
            ema_decay=ema_decay,
            kmeans_init=kmeans_init,
            dead_code_threshold=dead_code_threshold,
            commitment_weight=commitment_weight,
        )
        quantizer = PartQuantizer(
            num_parts=1,
            code_dim=code_dim,
            codebook_size=codebook_size,
            ema_decay=ema_decay,
            kmeans_init=kmeans_init,
            dead_code_threshold=dead_code_threshold,
            commitment_weight=commitment_weight,
        )
        super().__init__(config, quantizer)


class ResidualConvVQ(_ConvTokenizer):
    """MoMask's residual VQ-VAE: ConvVQ's encoder and decoder, ``num_quantizers`` (6) residual
    codebooks of 512 with quantize dropout 0.2. Codes (B, S, 6), layer 0 the coarsest."""

    def __init__(
        self,
        *,
        width: int = 512,
        depth: int = 3,
        dilation_growth: int = 3,
        downsample_levels: int = 2,
        code_dim: int = 512,
        codebook_size: int = 512,
        num_quantizers: int = 6,
        quantize_dropout: float = 0.2,
        ema_decay: float = 0.99,
        kmeans_init: bool = True,
        dead_code_threshold: float = 1.0,
        commitment_weight: float = 0.02,
    ) -> None:
        if num_quantizers < 1 or not 0.0 <= quantize_dropout <= 1.0:
            raise ValueError("num_quantizers must be >= 1 and quantize_dropout in [0, 1]")
        config = dict(
            width=width,
            depth=depth,
            dilation_growth=dilation_growth,
            downsample_levels=downsample_levels,
            code_dim=code_dim,
            codebook_size=codebook_size,
            num_quantizers=num_quantizers,
            quantize_dropout=quantize_dropout,
            ema_decay=ema_decay,
            kmeans_init=kmeans_init,
            dead_code_threshold=dead_code_threshold,
            commitment_weight=commitment_weight,
        )
        quantizer = ResidualQuantizer(
            code_dim=code_dim,
            codebook_size=codebook_size,
            num_quantizers=num_quantizers,
            dropout_probability=quantize_dropout,
            ema_decay=ema_decay,
            kmeans_init=kmeans_init,
            dead_code_threshold=dead_code_threshold,
            commitment_weight=commitment_weight,
        )
        super().__init__(config, quantizer)
        self.part_names = tuple(f"{RESIDUAL_LAYER_PREFIX}{i}" for i in range(num_quantizers))
