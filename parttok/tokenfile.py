"""The token file (``.ptok``): one clip's codes with what is needed to decode them.

A token file is a safetensors file (no pickle, readable by any safetensors library) holding
one tensor and string metadata:

- ``codes`` (S, P) int16/int32, or ``features`` (S, P, D) float32 for continuous part
  features (``kind="continuous"``);
- ``format`` = ``"parttok-tokens"``, ``version`` = the format version, ``header``: JSON
  with the part names, frames per step, fps, the source's frame count, the identity of the
  checkpoint that made the codes and the source clip's name; and ``crc32``: a CRC-32 of the
  header's bytes followed by the tensor's, so a flipped bit anywhere is caught.

Format 1 files (written before format 2) keep the CRC-32 of the tensor alone in the header.
They are still read, every header field checked and unknown fields refused, but a flipped
letter in a value (a part name) goes unseen there; ``parttok decode`` then refuses parts
that are not its tokenizer's. Re-encode them to be safe. A one-bit flip cannot turn format
2's version into 1. The same contents always give the same bytes: metadata and tensors in
sorted order, no timestamps.
"""

from __future__ import annotations

import json
import reprlib
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from parttok import __version__
from parttok.constants import TOKEN_SUFFIX as TOKEN_SUFFIX
from parttok.errors import TokenFileError
from parttok.io import atomic_path

FORMAT_NAME = "parttok-tokens"
FORMAT_VERSION = 2  # 2: the checksum covers the header too
SHIPPED_MODEL = "shipped"  # checkpoint_source of tokens made by the shipped model
KINDS = {"codes": "codes", "continuous": "features"}  # kind -> tensor name
STORED_TYPES = {"codes": (np.int16, np.int32), "continuous": (np.float32,)}
SAFETENSORS_TYPES = {
    np.dtype(np.int16): "I16",
    np.dtype(np.int32): "I32",
    np.dtype(np.float32): "F32",
}
MAX_WHOLE = 2**31 - 1  # bound on a header's counts
MAX_FPS = 1000


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
    header["parttok_version"] = __version__
    header_text = json.dumps(header, sort_keys=True)
    metadata = {
        "format": FORMAT_NAME,
        "version": str(FORMAT_VERSION),
        "header": header_text,
        "crc32": str(_checksum(header_text, codes)),
    }
    _write_safetensors(path, {KINDS[tokens.kind]: codes}, metadata)
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
        known = {".bvh": "a BVH file", ".npy": "a numpy array", ".json": "a JSON file"}
        kind = known.get(path.suffix.lower())
        if kind is not None:
            raise TokenFileError(
                f"{path}: not a token file ({kind}? decode reads the .ptok files encode writes)"
            ) from None
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
    tokens = _from_stored(metadata, arrays, version, path)
    if expect_identity is not None and tokens.checkpoint != expect_identity:
        raise TokenFileError(
            f"{path}: tokens were made by checkpoint {tokens.checkpoint}, this is "
            f"{expect_identity}; {_checkpoint_advice(tokens.checkpoint_source)}"
        )
    return tokens


def _write_safetensors(
    path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]
) -> None:
    """Write a safetensors file atomically, its bytes a function of its contents: metadata
    and tensors in sorted order (the safetensors library orders metadata by a random hash)."""
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name in sorted(tensors):
        array = tensors[name]
        end = offset + array.nbytes
        header[name] = {
            "dtype": SAFETENSORS_TYPES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the library writes
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        stream.write(len(text).to_bytes(8, "little") + text)
        for name in sorted(tensors):
            array = tensors[name]
            stream.write(np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes())


def _checksum(header_text: str, array: np.ndarray) -> int:
    """CRC-32 of a header's UTF-8 bytes followed by the tensor's."""
    return zlib.crc32(np.ascontiguousarray(array).tobytes(), zlib.crc32(header_text.encode()))


def _checkpoint_advice(checkpoint_source: str) -> str:
    if checkpoint_source == SHIPPED_MODEL:
        return "decode without --checkpoint (they come from the shipped model)"
    if checkpoint_source:
        return f"decode with --checkpoint {checkpoint_source}"
    return "decode with --checkpoint set to the tokenizer that made them"


def _parse_version(text: str | None, path: Path) -> int:
    if not _is_count(text) or int(text) < 1:
        raise TokenFileError(f"{path}: damaged token file (bad version {text!r})")
    return int(text)


def _is_count(text: str | None) -> bool:
    """Whether metadata text is a whole number of at most ten ASCII digits."""
    return isinstance(text, str) and text.isascii() and text.isdigit() and len(text) <= 10


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected text")
    return value


def _whole(low: int, high: int) -> Callable[[object], int]:
    """A header field's check: a whole number in [low, high] (JSON's 1e999 is inf, not one)."""

    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected a whole number in [{low}, {high}]")
        return value

    return check


def _parts(value: object) -> tuple[str, ...]:
    names = value if isinstance(value, list) else None
    if (
        not names
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) < len(names)
    ):
        raise ValueError("expected distinct part names")
    return tuple(names)


def _kind(value: object) -> str:
    if value not in KINDS:
        raise ValueError(f"expected one of {list(KINDS)}")
    return value


# header field -> (check returning its value, default for files written before it was kept)
_REQUIRED = object()
HEADER_FIELDS = {
    "kind": (_kind, _REQUIRED),
    "parts": (_parts, _REQUIRED),
    "frames_per_step": (_whole(1, MAX_WHOLE), _REQUIRED),
    "fps": (_whole(1, MAX_FPS), _REQUIRED),
    "num_frames": (_whole(0, MAX_WHOLE), _REQUIRED),
    "checkpoint": (_text, _REQUIRED),
    "codebook_size": (lambda v: None if v is None else _whole(1, MAX_WHOLE)(v), _REQUIRED),
    "mode": (_text, _REQUIRED),
    "source": (_text, _REQUIRED),
    "checkpoint_source": (_text, _REQUIRED),
    "precision": (_text, "32-true"),
    "refine": (_whole(0, MAX_WHOLE), 0),
}


def _from_stored(metadata: dict[str, str], arrays: dict, version: int, path: Path) -> TokenFile:
    """The tokens of a file's metadata and tensor: the checksum first (format 2), then every
    header field."""
    header_text = metadata.get("header", "")
    damaged = f"{path}: damaged token file"
    if len(arrays) != 1:
        raise TokenFileError(f"{damaged} ({len(arrays)} tensors, expected one)")
    [(name, codes)] = arrays.items()
    if version >= 2:
        if not _is_count(metadata.get("crc32")):
            raise TokenFileError(f"{damaged} (no checksum)")
        if _checksum(header_text, codes) != int(metadata["crc32"]):
            raise TokenFileError(f"{damaged} (checksum mismatch)")
    try:
        header = json.loads(header_text)
    except (ValueError, RecursionError) as error:  # ValueError: also a number of 5,000 digits
        reason = "nested too deeply" if isinstance(error, RecursionError) else error
        raise TokenFileError(f"{damaged} (bad header: {reason})") from None
    if not isinstance(header, dict):
        raise TokenFileError(f"{damaged} (bad header: not a mapping)")
    fields: dict[str, object] = {}
    for field, (check, default) in HEADER_FIELDS.items():
        if field not in header and default is _REQUIRED:
            raise TokenFileError(f"{damaged} (bad header: no {field!r})")
        try:
            fields[field] = check(header[field]) if field in header else default
        except ValueError as error:
            got = reprlib.repr(header[field])
            raise TokenFileError(f"{damaged} (bad header: {field!r} {error}, got {got})") from None
    if name != KINDS[fields["kind"]]:
        raise TokenFileError(f"{damaged} (tensor {name!r} for kind {fields['kind']!r})")
    if version == 1:  # the header is not under the checksum: anything unknown is damage
        unknown = sorted(set(header) - set(HEADER_FIELDS) - {"crc32", "parttok_version"})
        crc = header.get("crc32")
        if unknown or not isinstance(crc, int) or isinstance(crc, bool):
            raise TokenFileError(f"{damaged} (bad header: fields {unknown or ['crc32']})")
        if zlib.crc32(np.ascontiguousarray(codes).tobytes()) != crc:
            raise TokenFileError(f"{damaged} (checksum mismatch)")
    tokens = TokenFile(codes=codes, version=version, **fields)
    _check(tokens, codes, path)
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
    if codes.dtype not in STORED_TYPES[tokens.kind]:
        problem = f"{tokens.kind} stored as {codes.dtype}"
    elif codes.ndim != ndim or codes.shape[1] != len(tokens.parts):
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
