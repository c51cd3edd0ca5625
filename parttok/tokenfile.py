"""The token file (``.ptok``): one clip's codes with what is needed to decode them.

A token file is a safetensors file (no pickle, readable by any safetensors library) holding
one tensor and string metadata:

- ``codes`` (S, P) int16/int32, or ``features`` (S, P, D) float32 for continuous part
  features (``kind="continuous"``);
- ``format`` = ``"parttok-tokens"``, ``version`` = the format version, and ``header``: JSON
  with the part names, frames per step, fps, the source's frame count, the identity of the
  checkpoint that made the codes, the source clip's name and a CRC-32 of the tensor bytes.

A continuous tokenizer's projector (part features -> a language model's hidden size) is
exported beside its features by :func:`save_projector`, also as safetensors.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from parttok import __version__
from parttok.errors import TokenFileError
from parttok.io import atomic_path

FORMAT_NAME = "parttok-tokens"
PROJECTOR_FORMAT = "parttok-projector"
PROJECTOR_FILE = "projector.safetensors"
FORMAT_VERSION = 1
TOKEN_SUFFIX = ".ptok"
SHIPPED_MODEL = "shipped"  # checkpoint_source of tokens made by the shipped model
KINDS = {"codes": "codes", "continuous": "features"}  # kind -> tensor name


@dataclass(frozen=True)
class TokenFile:
    """One clip's tokens and their metadata.

    ``codes`` is (S, P) integers for ``kind="codes"`` or (S, P, D) float32 part features for
    ``kind="continuous"``; ``num_frames`` counts the source clip's feature frames (the codes
    cover the first ``S * frames_per_step`` of them); ``checkpoint`` is the identity of the
    tokenizer that made them and ``checkpoint_source`` where it was loaded from (a path, or
    ``"shipped"``; a hint for error messages); ``precision`` how the encoder computed
    ("32-true" or "bf16-mixed"; files written before it was recorded say "32-true");
    ``refine`` among how many nearest codes each was chosen through the decoder
    (``parttok.refine``; 0: the nearest, as files written before it was recorded say).
    """

    codes: np.ndarray
    parts: tuple[str, ...]
    frames_per_step: int
    fps: int
    num_frames: int
    checkpoint: str
    codebook_size: int | None = None
    kind: str = "codes"
    mode: str = "motion"
    source: str = ""
    checkpoint_source: str = ""
    precision: str = "32-true"
    refine: int = 0
    version: int = FORMAT_VERSION

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer,
        codes: np.ndarray,
        num_frames: int,
        source: str = "",
        checkpoint_source: str = "",
        refine: int = 0,
    ) -> TokenFile:
        """Tokens made by ``tokenizer`` (a ``parttok.Tokenizer``) from a clip of
        ``num_frames`` frames, its codes refined among ``refine`` (0: the nearest)."""
        return cls(
            codes=codes,
            parts=tuple(tokenizer.parts),
            frames_per_step=tokenizer.frames_per_step,
            fps=tokenizer.fps,
            num_frames=int(num_frames),
            checkpoint=tokenizer.identity,
            codebook_size=tokenizer.codebook_size,
            kind="codes" if np.asarray(codes).ndim == 2 else "continuous",
            mode=tokenizer.mode,
            source=source,
            checkpoint_source=checkpoint_source,
            precision=tokenizer.precision,
            refine=int(refine),
        )

    @property
    def num_steps(self) -> int:
        return len(self.codes)


def save_tokens(path: str | Path, tokens: TokenFile) -> Path:
    """Write ``tokens`` to ``path`` atomically; inconsistent tokens raise TokenFileError."""
    path = Path(path)
    codes = _stored_array(tokens)
    _check(tokens, codes, path)
    header = {k: v for k, v in asdict(tokens).items() if k not in ("codes", "version")}
    header["parts"] = list(tokens.parts)
    header["crc32"] = zlib.crc32(codes.tobytes())
    header["parttok_version"] = __version__
    metadata = {
        "format": FORMAT_NAME,
        "version": str(FORMAT_VERSION),
        "header": json.dumps(header),
    }
    with atomic_path(path) as temporary:
        save_file({KINDS[tokens.kind]: codes}, str(temporary), metadata=metadata)
    return path


def load_tokens(path: str | Path, expect_identity: str | None = None) -> TokenFile:
    """Read a token file; with ``expect_identity``, refuse codes from another checkpoint.

    Raises TokenFileError (one line naming the file) for a damaged or truncated file, a file
    that is not a token file, one from a newer format version, or another checkpoint's codes.
    """
    path = Path(path)
    try:
        with safe_open(str(path), "np") as handle:
            metadata = handle.metadata() or {}
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    except SafetensorError as error:
        raise TokenFileError(f"{path}: damaged or not a token file ({error})") from None
    except OSError as error:
        raise TokenFileError(f"{path}: cannot read ({error.strerror or error})") from None
    if metadata.get("format") != FORMAT_NAME:
        raise TokenFileError(f"{path}: not a parttok token file")
    version = _parse_version(metadata.get("version"), path)
    if version > FORMAT_VERSION:
        raise TokenFileError(
            f"{path}: written by a newer parttok (format {version}, this reads up to "
            f"{FORMAT_VERSION}); upgrade parttok"
        )
    tokens = _from_stored(metadata.get("header", ""), arrays, version, path)
    if expect_identity is not None and tokens.checkpoint != expect_identity:
        raise TokenFileError(
            f"{path}: tokens were made by checkpoint {tokens.checkpoint}, this is "
            f"{expect_identity}; {_checkpoint_advice(tokens.checkpoint_source)}"
        )
    return tokens


def save_projector(path: str | Path, tokenizer) -> Path:
    """Write the projector of a continuous ``tokenizer`` as safetensors: the weights of
    ``model.projector`` (``torch.nn.Linear`` layout, y = x W^T + b; "mlp" is
    Linear-GELU-Linear as ``0.*`` and ``2.*``) with metadata naming the checkpoint, the
    projector kind and its input and output sizes."""
    projector = getattr(tokenizer.model, "projector", None)
    if projector is None:
        raise TokenFileError(
            "this tokenizer has no projector (continuous mode with llm_hidden_size)"
        )
    tensors = {name: value.detach().cpu().numpy() for name, value in projector.state_dict().items()}
    config = tokenizer.model.config
    metadata = {
        "format": PROJECTOR_FORMAT,
        "version": str(FORMAT_VERSION),
        "checkpoint": tokenizer.identity,
        "kind": str(config.get("projector", "linear")),
        "input_dim": str(tokenizer.model.code_dim),
        "output_dim": str(config.get("llm_hidden_size")),
        "parts": json.dumps(list(tokenizer.parts)),
    }
    path = Path(path)
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path


def _checkpoint_advice(checkpoint_source: str) -> str:
    if checkpoint_source == SHIPPED_MODEL:
        return "decode without --checkpoint (they come from the shipped model)"
    if checkpoint_source:
        return f"decode with --checkpoint {checkpoint_source}"
    return "decode with --checkpoint set to the tokenizer that made them"


def _parse_version(text: str | None, path: Path) -> int:
    try:
        return int(text or "")
    except ValueError:
        raise TokenFileError(f"{path}: damaged token file (bad version {text!r})") from None


def _from_stored(header_text: str, arrays: dict, version: int, path: Path) -> TokenFile:
    try:
        header = json.loads(header_text)
        kind = header["kind"]
        tokens = TokenFile(
            codes=arrays[KINDS[kind]],
            parts=tuple(str(name) for name in header["parts"]),
            frames_per_step=int(header["frames_per_step"]),
            fps=int(header["fps"]),
            num_frames=int(header["num_frames"]),
            checkpoint=str(header["checkpoint"]),
            codebook_size=None if header["codebook_size"] is None else int(header["codebook_size"]),
            kind=kind,
            mode=str(header["mode"]),
            source=str(header["source"]),
            checkpoint_source=str(header["checkpoint_source"]),
            precision=str(header.get("precision", "32-true")),
            refine=int(header.get("refine", 0)),
            version=version,
        )
        crc = int(header["crc32"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise TokenFileError(f"{path}: damaged token file (bad header: {error})") from None
    if zlib.crc32(np.ascontiguousarray(tokens.codes).tobytes()) != crc:
        raise TokenFileError(f"{path}: damaged token file (checksum mismatch)")
    _check(tokens, tokens.codes, path)
    return tokens


def _stored_array(tokens: TokenFile) -> np.ndarray:
    """The tensor as written: the narrowest integer type for codes, float32 for features."""
    if tokens.kind not in KINDS:
        raise TokenFileError(f"unknown token kind {tokens.kind!r}; expected one of {list(KINDS)}")
    codes = np.asarray(tokens.codes)
    if tokens.kind == "continuous":
        return np.ascontiguousarray(codes, dtype=np.float32)
    if codes.dtype.kind not in "iu":
        raise TokenFileError(f"codes must be integers, got {codes.dtype}")
    fits_int16 = tokens.codebook_size is not None and tokens.codebook_size <= 2**15
    return np.ascontiguousarray(codes, dtype=np.int16 if fits_int16 else np.int32)


def _check(tokens: TokenFile, codes: np.ndarray, path: Path) -> None:
    """The tensor's shape and values agree with the metadata."""
    problem = None
    ndim = 2 if tokens.kind == "codes" else 3
    if codes.ndim != ndim or codes.shape[1] != len(tokens.parts):
        problem = f"{tokens.kind} of shape {codes.shape} for {len(tokens.parts)} parts"
    elif tokens.frames_per_step < 1 or tokens.fps < 1:
        problem = f"frames per step {tokens.frames_per_step}, fps {tokens.fps}"
    elif tokens.num_frames < len(codes) * tokens.frames_per_step:
        problem = f"{len(codes)} steps do not fit in {tokens.num_frames} frames"
    elif tokens.kind == "codes" and codes.size and tokens.codebook_size is not None:
        if codes.min() < 0 or codes.max() >= tokens.codebook_size:
            problem = f"codes outside [0, {tokens.codebook_size})"
    elif tokens.kind == "continuous" and not np.isfinite(codes).all():
        problem = "non-finite part features"
    if problem:
        raise TokenFileError(f"{path}: inconsistent token file ({problem})")
