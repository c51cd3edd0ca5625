"""Motion codes as words of a language model: the vocabulary, the text form, its parser,
and the hook that adds the tokens to a Hugging Face model and tokenizer.

Text form (time-major): ``<motion>`` then, step after step, one token per part in the
fixed order of ``Vocabulary.parts``, then ``</motion>``; a pose is ``<pose>`` + one step +
``</pose>``. No separator between steps: every token names its part, so the fixed order
delimits the steps (a new step starts where the part order restarts), which keeps the
string one token per code.

Two namings:

- ``parttok`` (default): ``<{tag}_{code}>`` with a short tag per part: root -> ``root``,
  torso -> ``torso``, left_arm -> ``larm``, right_arm -> ``rarm``, left_leg -> ``lleg``,
  right_leg -> ``rleg``; other part names lose their underscores (``upper_body`` ->
  ``upperbody``) and ``left_x``/``right_x`` become ``lx``/``rx``. A pose vocabulary
  prefixes ``pose_`` (``<pose_rarm_17>``) so motion and pose codes can share one LLM.
- ``motiongpt``: MotionGPT's ``<motion_id_{i}>`` with the flat index
  ``i = part_index * codebook_size + code`` (just ``code`` for a single-codebook model);
  ``<motion_id_{N}>`` starts and ``<motion_id_{N+1}>`` ends a motion, ``<motion_id_{N+2}>``
  is reserved (MotionGPT adds it as padding), where ``N = parts * codebook_size``. A pose
  vocabulary uses ``<pose_id_{i}>`` and ``<pose>``/``</pose>``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from parttok.errors import InputError, TokenFileError, TokenParseError
from parttok.io import write_text

if TYPE_CHECKING:
    from parttok.tokenizer import Tokenizer

FORMAT_NAME = "parttok-vocab"
FORMAT_VERSION = 1
NAMINGS = ("parttok", "motiongpt")
MODES = ("motion", "pose")
DEFAULT_PARTS = ("root", "torso", "left_arm", "right_arm", "left_leg", "right_leg")
DEFAULT_CODEBOOK_SIZE = 512
KNOWN_TAGS = {"left_arm": "larm", "right_arm": "rarm", "left_leg": "lleg", "right_leg": "rleg"}
INIT_METHODS = ("codebook", "mean")

_ANGLE_TOKEN = re.compile(r"<[^<>\s]{1,64}>")
_NAMED_CODE = re.compile(r"^<([A-Za-z][A-Za-z0-9_]*?)_(\d{1,9})>$")
_WHITESPACE = re.compile(r"\s+")
_QUOTE_LIMIT = 24


def part_tag(part: str) -> str:
    """The short tag of a part name in ``parttok`` token strings (see the module notes)."""
    if part in KNOWN_TAGS:
        return KNOWN_TAGS[part]
    words = [w for w in re.split(r"[^a-z0-9]+", part.lower()) if w]
    if len(words) > 1 and words[0] in ("left", "right"):
        words[0] = words[0][0]
    tag = "".join(words)
    if not tag or not tag[0].isalpha():
        raise InputError(f"part name {part!r} gives no usable token tag")
    return tag


@dataclass(frozen=True)
class Vocabulary:
    """The token strings of one tokenizer's codes and the layout of its text form."""

    parts: tuple[str, ...] = DEFAULT_PARTS
    codebook_size: int = DEFAULT_CODEBOOK_SIZE
    frames_per_step: int = 4
    fps: int = 20
    naming: str = "parttok"
    mode: str = "motion"
    identity: str | None = None
    tags: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))
        if not self.parts:
            raise InputError("a vocabulary needs at least one part")
        if self.naming not in NAMINGS:
            raise InputError(f"naming must be one of {NAMINGS}, got {self.naming!r}")
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.codebook_size, int) or self.codebook_size < 1:
            raise InputError(f"codebook size must be a positive integer, got {self.codebook_size}")
        tags = tuple(self.tags) or tuple(part_tag(part) for part in self.parts)
        if len(tags) != len(self.parts) or len(set(tags)) != len(tags):
            raise InputError(f"part tags {tags} must be distinct, one per part {self.parts}")
        if self.mode == "motion" and any(tag in ("pose", "motion") for tag in tags):
            raise InputError(f"part tags {tags} clash with the special tokens")
        object.__setattr__(self, "tags", tags)

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer, naming: str = "parttok") -> Vocabulary:
        """The vocabulary of a trained (quantised) ``parttok.Tokenizer``."""
        if not tokenizer.is_quantized:
            raise InputError("a continuous tokenizer has no codes, hence no vocabulary")
        return cls(
            parts=tuple(tokenizer.parts),
            codebook_size=int(tokenizer.codebook_size),
            frames_per_step=tokenizer.frames_per_step,
            fps=tokenizer.fps,
            naming=naming,
            mode="pose" if tokenizer.mode == "pose" else "motion",
            identity=tokenizer.identity,
        )

    # --- token strings -------------------------------------------------------------------
    @property
    def num_parts(self) -> int:
        return len(self.parts)

    @property
    def start(self) -> str:
        """The token that opens a motion (or a pose)."""
        if self.mode == "pose":
            return "<pose>"
        return f"<motion_id_{self._flat_size}>" if self.naming == "motiongpt" else "<motion>"

    @property
    def end(self) -> str:
        if self.mode == "pose":
            return "</pose>"
        return f"<motion_id_{self._flat_size + 1}>" if self.naming == "motiongpt" else "</motion>"

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """Start and end, and MotionGPT's reserved padding token in that naming."""
        if self.naming == "motiongpt" and self.mode == "motion":
            return (self.start, self.end, f"<motion_id_{self._flat_size + 2}>")
        return (self.start, self.end)

    @property
    def _flat_size(self) -> int:
        return self.num_parts * self.codebook_size

    @property
    def _code_name(self) -> str:
        """The part of a ``motiongpt`` token before ``_{index}``."""
        return "pose_id" if self.mode == "pose" else "motion_id"

    @functools.cached_property
    def code_tokens(self) -> np.ndarray:
        """(P, K) array of the token string of every part and code."""
        codes = np.arange(self.codebook_size)
        if self.naming == "motiongpt":
            flat = np.arange(self._flat_size).reshape(self.num_parts, self.codebook_size)
            table = [[f"<{self._code_name}_{i}>" for i in row] for row in flat]
        else:
            prefix = "pose_" if self.mode == "pose" else ""
            table = [[f"<{prefix}{tag}_{c}>" for c in codes] for tag in self.tags]
        return np.array(table, dtype=object)

    @property
    def tokens(self) -> list[str]:
        """Every token to add to a language model: MotionGPT's order (codes, then start,
        end, reserved) in that naming, otherwise start and end then the codes part by part."""
        codes = self.code_tokens.reshape(-1).tolist()
        if self.naming == "motiongpt":
            return codes + list(self.special_tokens)
        return list(self.special_tokens) + codes

    def __len__(self) -> int:
        return len(self.tokens)

    @functools.cached_property
    def _lookup(self) -> dict[str, tuple[int, int]]:
        """Token string -> (part index, code)."""
        tokens = self.code_tokens.reshape(-1)  # part-major
        return {token: divmod(i, self.codebook_size) for i, token in enumerate(tokens)}

    def token(self, part: int, code: int) -> str:
        return str(self.code_tokens[part, code])

    def lookup(self, token: str) -> tuple[int, int] | None:
        """(part index, code) of a code token; None for anything else."""
        return self._lookup.get(token)

    def explain_unknown(self, token: str) -> str:
        """Why ``token`` is not a code token of this vocabulary (for messages)."""
        match = _NAMED_CODE.match(token)
        if match is None:
            return f"{token} is not a token of this vocabulary"
        name, number = match[1], int(match[2])
        if self.naming == "motiongpt" and name == self._code_name:
            return f"{token}: index {number} is outside [0, {self._flat_size})"
        prefix = "pose_" if self.mode == "pose" else ""
        if self.naming == "parttok" and name.removeprefix(prefix) in self.tags:
            return f"{token}: code {number} is outside [0, {self.codebook_size})"
        return f"{token}: unknown part tag {name!r}"

    # --- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        code_format = (
            f"<{self._code_name}_{{part_index * codebook_size + code}}>"
            if self.naming == "motiongpt"
            else "<" + ("pose_" if self.mode == "pose" else "") + "{tag}_{code}>"
        )
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "naming": self.naming,
            "mode": self.mode,
            "layout": "time-major: steps in order; within a step one token per part, in the "
            "order of 'parts'; no step separator",
            "parts": list(self.parts),
            "part_tags": list(self.tags),
            "codebook_size": self.codebook_size,
            "frames_per_step": self.frames_per_step,
            "fps": self.fps,
            "steps_per_second": self.fps / self.frames_per_step,
            "checkpoint": self.identity,
            "code_token_format": code_format,
            "special_tokens": {
                "start": self.start,
                "end": self.end,
                "reserved": list(self.special_tokens[2:]),
            },
            "tokens": self.tokens,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, name: str = "vocabulary") -> Vocabulary:
        """Read ``to_json``'s output; a damaged, newer or inconsistent file raises
        ``TokenFileError``."""
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise TokenFileError(f"{name}: not valid JSON ({error})") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT_NAME:
            raise TokenFileError(f"{name}: not a parttok vocabulary")
        version = record.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise TokenFileError(
                f"{name}: vocabulary format {version!r} is newer than this parttok reads "
                f"({FORMAT_VERSION}); upgrade parttok"
            )
        try:
            vocab = cls(
                parts=tuple(record["parts"]),
                codebook_size=record["codebook_size"],
                frames_per_step=int(record["frames_per_step"]),
                fps=int(record["fps"]),
                naming=record["naming"],
                mode=record["mode"],
                identity=record.get("checkpoint"),
                tags=tuple(record["part_tags"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise TokenFileError(f"{name}: incomplete vocabulary ({error})") from None
        if record.get("tokens", vocab.tokens) != vocab.tokens:
            raise TokenFileError(f"{name}: its token list does not match its layout")
        return vocab

    def save(self, path: str | Path) -> Path:
        """Write ``vocab.json`` atomically."""
        write_text(path, self.to_json())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise TokenFileError(f"{path}: unreadable vocabulary ({error})") from None
        return cls.from_json(text, name=str(path))


@functools.lru_cache(maxsize=1)
def default_vocabulary() -> Vocabulary:
    """Six parts x 512 codes, 4 frames per step at 20 fps, ``parttok`` naming."""
    return Vocabulary()


# --- codes -> text ------------------------------------------------------------------------
def codes_to_text(codes: np.ndarray | Sequence, vocab: Vocabulary | None = None) -> str:
    """Codes (S, P) -> ``<motion>...</motion>`` (a pose vocabulary: (1, P) or (P,) ->
    ``<pose>...</pose>``)."""
    vocab = vocab or default_vocabulary()
    codes = np.asarray(codes)
    if vocab.mode == "pose" and codes.ndim == 1:
        codes = codes[None]
    if codes.ndim != 2 or codes.shape[1] != vocab.num_parts or len(codes) == 0:
        raise InputError(
            f"codes must have shape (steps, {vocab.num_parts}) with at least one step, "
            f"got {codes.shape}"
        )
    if vocab.mode == "pose" and len(codes) != 1:
        raise InputError(f"a pose is one step of codes, got {len(codes)} steps")
    if codes.dtype.kind not in "iu" or codes.min() < 0 or codes.max() >= vocab.codebook_size:
        raise InputError(f"codes must be integers in [0, {vocab.codebook_size})")
    parts = np.arange(vocab.num_parts)[None, :]  # (1, P)
    body = "".join(vocab.code_tokens[parts, codes].reshape(-1))  # time-major
    return vocab.start + body + vocab.end


# --- text -> codes ------------------------------------------------------------------------
@dataclass(frozen=True)
class ParseResult:
    """Codes (S, P) int64 parsed from text, and a note for every repair made."""

    codes: np.ndarray
    repairs: list[str]


@dataclass(frozen=True)
class _Code:
    part: int
    code: int


class _Repairs:
    """Collects repair notes; with repairs disallowed, the first one raises instead."""

    def __init__(self, allowed: bool, kind: str) -> None:
        self.allowed = allowed
        self.kind = kind
        self.notes: list[str] = []

    def __call__(self, note: str) -> None:
        if not self.allowed:
            raise TokenParseError(f"{self.kind} text needs a repair (repair=False): {note}")
        self.notes.append(note)


def text_to_codes(text: str, vocab: Vocabulary | None = None, repair: bool = True) -> ParseResult:
    """Parse what a language model wrote into codes (S, P).

    Text outside the start/end tokens is ignored; whitespace between tokens is fine.
    Repaired, each with a note in ``repairs`` (with ``repair=False`` each raises instead):

    - a missing start or end token (the code tokens found are read);
    - stray text or foreign tokens between the codes (dropped; an unknown code, out of
      range or of an unknown part, is dropped too, so its step then counts as incomplete);
    - a truncated final step, or an incomplete first step when there is no start token
      (dropped);
    - parts out of order within steps (put back in order, only when the codes form whole
      steps that each hold every part once);
    - code tokens outside the start/end pair (ignored).

    Anything else raises ``TokenParseError``: no codes, an incomplete or duplicated step
    elsewhere, more than one motion, a pose of more than one step. Codes are never guessed:
    the result is always a run of steps written in the text. (With one part, as a
    single-codebook model has, every token is a whole step: a lost or repeated token cannot
    be told from a real one.)
    """
    vocab = vocab or default_vocabulary()
    if not isinstance(text, str):
        raise TokenParseError(f"expected text, got {type(text).__name__}")
    repairs = _Repairs(repair, vocab.mode)
    block = _extract_block(text, vocab, repairs)
    items = _read_codes(block, vocab, repairs)
    if not items:
        raise TokenParseError(f"empty {vocab.mode}: no code tokens of this vocabulary found")
    try:
        steps = _group_steps(items, vocab, repairs, started=vocab.start in text)
    except TokenParseError as error:
        if not repairs.notes:
            raise
        raise TokenParseError(f"{error} (after: {'; '.join(repairs.notes)})") from None
    codes = np.array([[item.code for item in step] for step in steps], dtype=np.int64)
    if vocab.mode == "pose" and len(codes) != 1:
        raise TokenParseError(
            f"a pose is one step of {vocab.num_parts} codes, got {len(codes)} steps"
        )
    return ParseResult(codes, repairs.notes)


def _extract_block(text: str, vocab: Vocabulary, repairs: _Repairs) -> str:
    """The text between the start and end tokens, repairing a missing one of them."""
    starts = [m.start() for m in re.finditer(re.escape(vocab.start), text)]
    if len(starts) > 1:
        raise TokenParseError(
            f"{len(starts)} {vocab.start} start tokens: more than one {vocab.mode} in the text"
        )
    begin = starts[0] + len(vocab.start) if starts else 0
    end = text.find(vocab.end, begin)
    if starts:
        head, block = text[: starts[0]], text[begin : end if end >= 0 else len(text)]
        if end < 0:
            # no end token: the block ends with its last code token
            codes = [m for m in _ANGLE_TOKEN.finditer(block) if vocab.lookup(m[0]) is not None]
            block = block[: codes[-1].end()] if codes else block
            repairs(f"no {vocab.end} end token; read up to the last code token")
    else:
        # no start token: the block spans the code tokens before the end token (if any)
        head = text[: end if end >= 0 else len(text)]
        codes = [m for m in _ANGLE_TOKEN.finditer(head) if vocab.lookup(m[0]) is not None]
        if not codes:
            return ""
        head, block = head[: codes[0].start()], head[codes[0].start() : codes[-1].end()]
        missing = f"{vocab.start} start" if end >= 0 else f"{vocab.start} start or {vocab.end} end"
        repairs(f"no {missing} token; read the code tokens in the text")
    tail = text[end + len(vocab.end) :] if end >= 0 else ""
    outside = sum(vocab.lookup(t) is not None for t in _ANGLE_TOKEN.findall(head + " " + tail))
    if outside:
        repairs(f"ignored {outside} code token(s) outside {vocab.start}...{vocab.end}")
    return block


def _read_codes(block: str, vocab: Vocabulary, repairs: _Repairs) -> list[_Code]:
    """The code tokens of a block in order; anything else in it is dropped with a note."""
    items: list[_Code] = []
    dropped: list[str] = []
    position = 0
    for match in _ANGLE_TOKEN.finditer(block):
        dropped += _stray(block[position : match.start()])
        position = match.end()
        found = vocab.lookup(match[0])
        if found is None:
            dropped.append(vocab.explain_unknown(match[0]))
        else:
            items.append(_Code(*found))
    dropped += _stray(block[position:])
    if dropped:
        shown = "; ".join(dropped[:5]) + ("; ..." if len(dropped) > 5 else "")
        repairs(f"dropped {len(dropped)} stray item(s) between the codes: {shown}")
    return items


def _stray(text: str) -> list[str]:
    text = _WHITESPACE.sub(" ", text).strip()
    if not text:
        return []
    quoted = text if len(text) <= _QUOTE_LIMIT else text[: _QUOTE_LIMIT - 3] + "..."
    return [f"text {quoted!r}"]


def _group_steps(
    items: list[_Code], vocab: Vocabulary, repairs: _Repairs, started: bool
) -> list[list[_Code]]:
    """Split the codes into steps of one token per part, in part order.

    Steps are delimited by the part order restarting. An incomplete last step is dropped
    (output cut short), and so is an incomplete first step when the text has no start
    token (output cut at the front). Any other incomplete step means the codes are read as
    consecutive groups of P tokens instead, accepted only when they form whole groups that
    each hold every part once (parts out of order within their steps).
    """
    count = vocab.num_parts
    steps: list[list[_Code]] = []
    for item in items:
        if not steps or item.part <= steps[-1][-1].part:
            steps.append([])
        steps[-1].append(item)
    complete = [len(step) == count for step in steps]
    first = 0 if started or complete[0] else 1
    last = len(steps) if complete[-1] else len(steps) - 1
    if first < last and all(complete[first:last]):
        if first:
            repairs(
                f"dropped an incomplete first step ({_describe_step(steps[0], vocab)}) "
                "of a text without a start token"
            )
        if last < len(steps):
            repairs(
                f"dropped a truncated final step (step {len(steps) - 1}: "
                f"{_describe_step(steps[-1], vocab)})"
            )
        return steps[first:last]
    groups = [items[i : i + count] for i in range(0, len(items), count)]
    if len(items) % count == 0 and all(len({item.part for item in g}) == count for g in groups):
        reordered = [sorted(g, key=lambda item: item.part) for g in groups]
        moved = [i for i, g in enumerate(groups) if g != reordered[i]]
        listed = ", ".join(str(i) for i in moved[:10]) + (", ..." if len(moved) > 10 else "")
        repairs(f"put the parts of {len(moved)} step(s) back in order (steps {listed})")
        return reordered
    if not any(complete):
        raise TokenParseError(f"no complete step: step 0 has {_describe_step(steps[0], vocab)}")
    bad = next(i for i in range(first, len(steps)) if not complete[i])
    description = _describe_step(steps[bad], vocab)
    if bad + 1 < len(steps) and any(item.part == steps[bad + 1][0].part for item in steps[bad]):
        description += f"; then {vocab.parts[steps[bad + 1][0].part]} again"
    raise TokenParseError(f"step {bad} is incomplete: {description}")


def _describe_step(step: list[_Code], vocab: Vocabulary) -> str:
    present = [item.part for item in step]
    missing = [vocab.parts[p] for p in range(vocab.num_parts) if p not in present]
    repeated = sorted({vocab.parts[p] for p in present if present.count(p) > 1})
    words = [f"{len(step)} of {vocab.num_parts} parts"]
    if missing:
        words.append("missing " + ", ".join(missing))
    if repeated:
        words.append("repeated " + ", ".join(repeated))
    return "; ".join(words)


# --- language-model hooks -----------------------------------------------------------------
def add_motion_tokens(
    model,
    hf_tokenizer,
    vocab: Vocabulary,
    tokenizer: Tokenizer | None = None,
    init: str = "codebook",
    noise: float = 0.02,
    seed: int = 0,
) -> list[int]:
    """Add ``vocab``'s tokens to a Hugging Face tokenizer (and ``model``'s embeddings, unless
    ``model`` is None); return the id of every token in ``vocab.tokens``.

    Each token is added whole (``AddedToken``, not normalised, not special, so decoding
    keeps it), and each must then encode to exactly one id. New embedding rows:

    - ``"mean"``: the mean of the existing rows, plus Gaussian noise of ``noise`` times
      their standard deviation (so the new tokens start apart).
    - ``"codebook"``: code tokens from the tokenizer's code vectors (P, K, d) through a
      similarity transform fitted by PCA: the centred code vectors' principal axes are
      mapped onto the existing embeddings' principal axes, scaled by one factor so the
      total variance matches, and shifted to the embeddings' mean. Distances between codes
      are kept up to that factor. Start/end tokens get the ``"mean"`` rows.

    Untied output embeddings get the same rows. Tokens the HF tokenizer already has keep
    their rows.
    """
    from tokenizers import AddedToken

    if init not in INIT_METHODS:
        raise InputError(f"init must be one of {INIT_METHODS}, got {init!r}")
    if init == "codebook" and model is not None and tokenizer is None:
        raise InputError("init='codebook' needs the parttok tokenizer whose codes these are")
    known = set(hf_tokenizer.get_vocab())
    new_tokens = [token for token in vocab.tokens if token not in known]
    previous = len(hf_tokenizer)
    hf_tokenizer.add_tokens(
        [AddedToken(t, normalized=False, special=False, single_word=False) for t in new_tokens]
    )
    ids = hf_tokenizer.convert_tokens_to_ids(vocab.tokens)
    encoded = hf_tokenizer("".join(vocab.tokens), add_special_tokens=False)["input_ids"]
    if encoded != ids:
        raise InputError("the language-model tokenizer splits some motion tokens")
    if model is None or not new_tokens:
        return ids
    input_rows = model.get_input_embeddings().weight
    model.resize_token_embeddings(max(len(hf_tokenizer), input_rows.shape[0]), mean_resizing=False)
    new_ids = hf_tokenizer.convert_tokens_to_ids(new_tokens)
    embeddings = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != embeddings[0].data_ptr():
        embeddings.append(output.weight)
    generator = np.random.default_rng(seed)
    codes = _code_vectors(vocab, tokenizer) if init == "codebook" else None
    for weight in embeddings:
        existing = weight.detach()[:previous].double().cpu().numpy()  # (V, H)
        rows = _new_rows(existing, vocab, new_tokens, codes, noise, generator)  # (N, H)
        with torch.no_grad():
            weight[new_ids] = torch.from_numpy(rows).to(dtype=weight.dtype, device=weight.device)
    return ids


def _code_vectors(vocab: Vocabulary, tokenizer: Tokenizer) -> np.ndarray:
    """(P, K, d) code vectors of ``tokenizer``, checked against ``vocab``."""
    if vocab.identity is not None and tokenizer.identity != vocab.identity:
        raise InputError(
            f"the vocabulary belongs to checkpoint {vocab.identity}, the tokenizer is "
            f"{tokenizer.identity}"
        )
    vectors = tokenizer.model.codebook_vectors().detach().double().cpu().numpy()
    if vectors.shape[:2] != (vocab.num_parts, vocab.codebook_size):
        raise InputError(
            f"code vectors {vectors.shape} do not fit the vocabulary "
            f"({vocab.num_parts} parts x {vocab.codebook_size} codes)"
        )
    return vectors


def _new_rows(
    existing: np.ndarray,
    vocab: Vocabulary,
    new_tokens: list[str],
    codes: np.ndarray | None,
    noise: float,
    generator: np.random.Generator,
) -> np.ndarray:
    """Embedding rows (N, H) for ``new_tokens`` from the existing rows (V, H)."""
    mean = existing.mean(axis=0)
    spread = existing.std(axis=0)
    rows = mean + noise * spread * generator.standard_normal((len(new_tokens), len(mean)))
    if codes is not None:
        projected = codebook_projection(codes.reshape(-1, codes.shape[-1]), existing)  # (P*K, H)
        for row, token in enumerate(new_tokens):
            found = vocab.lookup(token)
            if found is not None:
                rows[row] = projected[found[0] * vocab.codebook_size + found[1]]
    return rows


def codebook_projection(codes: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """Map code vectors (N, d) into an embedding space sampled by rows (V, H).

    A similarity transform: principal axes of the centred codes -> principal axes of the
    centred embeddings (as many as both have), one scale so the total variance of the
    result equals the embeddings', then the embeddings' mean. Returns (N, H).
    """
    centred_codes = codes - codes.mean(axis=0)
    centred_rows = embeddings - embeddings.mean(axis=0)
    code_axes = _principal_axes(centred_codes)  # (d, d), columns by falling variance
    row_axes = _principal_axes(centred_rows)  # (H, H)
    rank = min(code_axes.shape[1], row_axes.shape[1], len(codes) - 1, len(embeddings) - 1)
    projected = centred_codes @ code_axes[:, :rank] @ row_axes[:, :rank].T  # (N, H)
    code_variance = (projected**2).sum(axis=1).mean()
    row_variance = (centred_rows**2).sum(axis=1).mean()
    scale = np.sqrt(row_variance / code_variance) if code_variance > 0 else 0.0
    return embeddings.mean(axis=0) + scale * projected


def _principal_axes(centred: np.ndarray) -> np.ndarray:
    """Eigenvectors (D, D) of the covariance of centred rows (N, D), by falling variance."""
    variances, axes = np.linalg.eigh(centred.T @ centred)
    return axes[:, np.argsort(variances)[::-1]]
