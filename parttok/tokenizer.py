"""The user-facing tokenizer: a trained model with its normalisation statistics, numpy in and
out, batching and padding inside, saved as safetensors + JSON (nothing is ever unpickled)."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import reprlib
import typing
import warnings
from contextlib import AbstractContextManager
from pathlib import Path
from types import UnionType

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from parttok.constants import PRECISIONS
from parttok.errors import CheckpointError, InputError
from parttok.features import FEATURE_DIM, FPS, check_features
from parttok.io import atomic_path, slow_bfloat16, write_text
from parttok.model import evaluating
from parttok.refine import refine_codes

FORMAT_NAME = "parttok-tokenizer"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
POSE_DIR = PRETRAINED_DIR / "pose"  # the shipped pose tokenizer (single frames)
# Padded frames one forward pass takes beyond its first clip: past this, tensors outgrow the
# CPU's caches and each frame costs more (tools/bench_throughput.py's 4 five-minute clips in
# one pass encoded at 11.8k frames/s, 30k with this cap).
BATCH_FRAMES = 8192
# A config.json is a few kilobytes; past this it is not one.
MAX_CONFIG_BYTES = 1 << 20
# Bounds on a model config, checked before anything is built: layer, head and level counts;
# every other whole number (a size; the weights file bounds what sizes may allocate); the
# length of a list or mapping.
MAX_COUNT = 64
MAX_SIZE = 1 << 20
COUNT_SETTINGS = frozenset(
    {"encoder_depth", "decoder_depth", "depth", "heads", "mlp_ratio", "downsample",
     "downsample_levels", "dilation_growth", "num_quantizers"}
)  # fmt: skip
ZERO_SETTINGS = frozenset({"encoder_depth", "decoder_depth", "depth", "downsample_levels"})


def model_classes() -> dict[str, type[nn.Module]]:
    """The model classes a checkpoint may name (nothing else is ever constructed)."""
    from parttok.baselines import ConvVQ, ResidualConvVQ
    from parttok.model import PartTokenizer

    return {cls.__name__: cls for cls in (PartTokenizer, ConvVQ, ResidualConvVQ)}


def build_model(
    class_name: str, config: dict, weights: dict[str, torch.Tensor] | None = None, source: str = ""
) -> nn.Module:
    """Construct a registered model class from its JSON config, checked before anything is
    built: settings since removed dropped where they hold the value that did nothing
    (``without_removed_settings``), the others' types and bounds (``check_model_config``) and,
    given the ``weights`` it will load, that the model's tensors have their shapes (built on
    the meta device first, so a config cannot allocate more than its weights file holds).
    ``source`` (the file) prefixes the one-line CheckpointError."""
    where = f"{source}: " if source else ""
    classes = model_classes()
    if not isinstance(class_name, str) or class_name not in classes:
        raise CheckpointError(
            f"{where}unknown model class {class_name!r}; expected one of {sorted(classes)}"
        )
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}model config: expected a mapping, got {_brief(config)}")
    constructor = classes[class_name]
    config = without_removed_settings(constructor, config, where)
    check_model_config(constructor, config, where)
    try:
        if weights is not None:
            with torch.device("meta"):
                _check_shapes(constructor(**config).state_dict(), weights, where)
        return constructor(**config)
    except (TypeError, ValueError, ArithmeticError, AssertionError) as error:
        reason = str(error) or f"a setting out of range ({type(error).__name__})"
        raise CheckpointError(f"{where}config does not fit {class_name}: {reason}") from None


def without_removed_settings(constructor: type[nn.Module], config: dict, where: str = "") -> dict:
    """``config`` without the settings ``constructor`` no longer takes (its
    ``REMOVED_SETTINGS``: name -> the value with which it did nothing) where they hold that
    value, as configs and checkpoints saved before their removal do; a CheckpointError where
    one holds another (the weights were trained with an option parttok no longer has)."""
    removed = getattr(constructor, "REMOVED_SETTINGS", {})
    for name, value in config.items():
        if name in removed and not _same_value(value, removed[name]):
            raise CheckpointError(
                f"{where}setting {name!r} of {constructor.__name__} was removed from parttok; "
                f"only its old default {json.dumps(removed[name])} loads, got {_brief(value)}"
            )
    return {name: value for name, value in config.items() if name not in removed}


def _same_value(value: object, expected: object) -> bool:
    """Equal and of the same type (JSON false is not 0)."""
    return type(value) is type(expected) and value == expected


def check_model_config(constructor: type[nn.Module], config: dict, where: str = "") -> None:
    """Raise CheckpointError unless every setting is one ``constructor`` takes, of the type
    its signature declares and within bounds: whole numbers >= 1 (``ZERO_SETTINGS`` >= 0), at
    most MAX_COUNT for ``COUNT_SETTINGS`` and MAX_SIZE for the rest; other numbers finite and
    >= 0; lists and mappings at most MAX_COUNT long, holding whole numbers up to MAX_SIZE."""
    hints = typing.get_type_hints(constructor.__init__)
    for name, value in config.items():
        if name not in hints or name == "return":
            raise CheckpointError(f"{where}unknown setting {name!r} for {constructor.__name__}")
        problem = _setting_problem(name, value, hints[name])
        if problem:
            raise CheckpointError(
                f"{where}setting {name!r} of {constructor.__name__}: {problem}, got {_brief(value)}"
            )


def _setting_problem(name: str, value: object, hint: object) -> str | None:
    if not _has_type(value, hint):
        return f"expected {hint.__name__ if hint in (int, float, bool, str) else hint}"
    if isinstance(value, int) and not isinstance(value, bool):
        low = 0 if name in ZERO_SETTINGS else 1
        high = MAX_COUNT if name in COUNT_SETTINGS else MAX_SIZE
        return None if low <= value <= high else f"expected a whole number in [{low}, {high}]"
    if isinstance(value, float):
        return None if value >= 0 else "expected a number >= 0"
    if isinstance(value, (list, dict)) and not _small(value):
        return f"expected at most {MAX_COUNT} items of whole numbers up to {MAX_SIZE}"
    return None


def _has_type(value: object, hint: object) -> bool:
    """Whether a JSON value is of the type a constructor annotation names."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (UnionType, typing.Union):
        return any(_has_type(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and math.isfinite(value)
    if origin is list:
        return isinstance(value, list) and all(_has_type(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _has_type(key, args[0]) and _has_type(item, args[1]) for key, item in value.items()
        )
    return isinstance(hint, type) and isinstance(value, hint)


def _small(value: object) -> bool:
    """A list or mapping (nested as a config allows) of at most MAX_COUNT items each, its
    whole numbers in [0, MAX_SIZE]."""
    if isinstance(value, dict):
        return len(value) <= MAX_COUNT and all(_small(item) for item in value.values())
    if isinstance(value, list):
        return len(value) <= MAX_COUNT and all(_small(item) for item in value)
    return not isinstance(value, int) or isinstance(value, bool) or 0 <= value <= MAX_SIZE


def _check_shapes(expected: dict, weights: dict, where: str) -> None:
    """The weights hold exactly the tensors of a model's state dict, in their shapes."""
    problems = [f"missing {name}" for name in expected if name not in weights]
    problems += [f"unexpected {name}" for name in weights if name not in expected]
    problems += [
        f"{name}: {tuple(weights[name].shape)} in the weights, {tuple(shape.shape)} in the config"
        for name, shape in expected.items()
        if name in weights and weights[name].shape != shape.shape
    ]
    if problems:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise CheckpointError(f"{where}weights do not fit the model config ({problems[0]}{more})")


def _brief(value: object) -> str:
    """A value's repr, cut short (nesting and length) to fit a one-line message."""
    return reprlib.repr(value)


class Tokenizer:
    """Encode HumanML3D features into codes and back.

    ``encode`` takes raw (T, 263) features (as ``joints_to_features`` or ``new_joint_vecs``
    give) and returns codes (T // frames_per_step, num_parts); trailing frames that do not
    fill a step are dropped, as the field's evaluations cut lengths to multiples of 4.

    ``precision`` "bf16-mixed" runs the matrix products in bfloat16 (on a CPU with bfloat16
    instructions it decodes 2.4x and encodes 1.2x as fast, BENCHMARKS.md) and leaves the code
    search in float32: a few codes in a hundred differ from "32-true"'s and reconstructions
    move by a fraction of a millimetre.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: np.ndarray,
        std: np.ndarray,
        identity: str | None = None,
        device: str | torch.device = "cpu",
        precision: str = "32-true",
    ) -> None:
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(FEATURE_DIM)
        self.std = np.asarray(std, dtype=np.float32).reshape(FEATURE_DIM)
        self.identity = identity or _fingerprint(self.state_dict())
        self.precision = precision

    @property
    def precision(self) -> str:
        """How the model computes: "32-true" or "bf16-mixed" (``PRECISIONS``)."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {value!r}")
        slow = slow_bfloat16(value, self.device.type)
        if slow:
            warnings.warn(f"{slow}: use precision 32-true", stacklevel=2)
        self._precision = value

    def _autocast(self) -> AbstractContextManager:
        """The model's forward passes in this tokenizer's precision."""
        mixed = self.precision == "bf16-mixed"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=mixed)

    # --- what the tokens are -------------------------------------------------------------
    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.model.part_names)

    @property
    def num_parts(self) -> int:
        return len(self.parts)

    @property
    def codebook_size(self) -> int | None:
        return self.model.codebook_size

    @property
    def frames_per_step(self) -> int:
        return int(self.model.frames_per_step)

    @property
    def fps(self) -> int:
        return FPS

    @property
    def mode(self) -> str:
        return str(self.model.config.get("mode", "motion"))

    @property
    def is_quantized(self) -> bool:
        return bool(self.model.is_quantized)

    @property
    def bits_per_second(self) -> float:
        """Information rate of the codes: parts x log2(codebook size) x steps per second."""
        if not self.is_quantized:
            return float("inf")
        return self.num_parts * float(np.log2(self.codebook_size)) * self.fps / self.frames_per_step

    # --- numpy API -----------------------------------------------------------------------
    def encode(self, features: np.ndarray, refine: int = 0) -> np.ndarray:
        """Raw features (T, 263) -> codes (T // frames_per_step, P) int64 (continuous mode:
        part features (S, P, D) float32); ``refine`` as in ``encode_batch``."""
        return self.encode_batch([features], refine=refine)[0]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Codes (S, P) -> raw features (S * frames_per_step, 263) float32."""
        return self.decode_batch([codes])[0]

    def reconstruct(self, features: np.ndarray, refine: int = 0) -> np.ndarray:
        """Features -> codes -> features, the round trip evaluation measures."""
        return self.decode(self.encode(features, refine=refine))

    @torch.inference_mode()
    def encode_batch(
        self, clips: list[np.ndarray], batch_size: int = 32, refine: int = 0
    ) -> list[np.ndarray]:
        """Encode clips of different lengths; padding and masks are handled inside. ``refine``
        > 0 tries that many of the nearest codes per part and step through the decoder and
        keeps those that reconstruct best (``parttok.refine``: slower, the same tokens)."""
        self.check_refine(refine)
        prepared = self._normalised(clips)
        results: list[np.ndarray] = [np.empty(0)] * len(prepared)
        frames = BATCH_FRAMES // max(refine, 1)  # refining decodes ``refine`` copies at once
        mean, std = (torch.from_numpy(t).to(self.device) for t in (self.mean, self.std))
        for batch in length_batches([len(c) for c in prepared], batch_size, frames):
            features, mask = self._padded(prepared, batch)
            with self._autocast():
                if refine:
                    codes = refine_codes(self.model, features, mask, mean, std, refine)
                else:
                    codes = self.model.encode(features, mask)  # (B, S, P) or (B, S, P, D)
            codes = (codes if codes.dtype == torch.long else codes.float()).cpu().numpy()
            for row, i in enumerate(batch):
                results[i] = codes[row, : len(prepared[i]) // self.frames_per_step]
        return results

    @torch.inference_mode()
    def latents_batch(self, clips: list[np.ndarray], batch_size: int = 32) -> list[np.ndarray]:
        """Clips (T, 263) -> the encoder's continuous features (S, P, d) float32, before the
        quantizer (``encode_batch``'s codes are their nearest code vectors)."""
        prepared = self._normalised(clips)
        results: list[np.ndarray] = [np.empty(0)] * len(prepared)
        for batch in length_batches([len(c) for c in prepared], batch_size, BATCH_FRAMES):
            features, mask = self._padded(prepared, batch)
            with self._autocast():
                latents = self.model.latents(features, mask)  # (B, S, P, d)
            latents = latents.float().cpu().numpy()
            for row, i in enumerate(batch):
                results[i] = latents[row, : len(prepared[i]) // self.frames_per_step]
        return results

    @property
    def refinable(self) -> bool:
        """Whether ``encode_batch`` can refine codes: a model with codebooks (VQ, not FSQ or
        continuous)."""
        return bool(self.model.has_codebooks)

    def check_refine(self, refine: int) -> None:
        """Raise InputError unless ``encode_batch`` can refine among ``refine`` codes: 0, or
        a positive count with a model that has codebooks."""
        if refine < 0:
            raise InputError(f"refine must be 0 (nearest codes) or a number of codes, got {refine}")
        if refine and not self.refinable:  # a PartTokenizer in continuous mode or with FSQ
            quantizer = self.model.quantizer
            kind = "no quantizer" if quantizer is None else quantizer.kind
            raise InputError(
                f"--refine needs a model with VQ codebooks, not a {type(self.model).__name__} "
                f"({self.mode} mode, {kind})"
            )

    @torch.inference_mode()
    def reconstruct_batch(
        self, clips: list[np.ndarray], batch_size: int = 32, quantize: bool = True
    ) -> list[np.ndarray]:
        """Clips of different lengths through the model in one pass, each cut to whole steps:
        as ``decode_batch(encode_batch(clips))``, or (``quantize`` False) with the codebooks
        bypassed, the continuous latents straight to the decoder: what the encoder and decoder
        reach without them."""
        prepared = self._normalised(clips)
        lengths = [len(clip) for clip in prepared]
        results: list[np.ndarray] = [np.empty(0)] * len(prepared)
        for batch in length_batches(lengths, batch_size, BATCH_FRAMES):
            with evaluating(self.model), self._autocast():
                output = self.model(*self._padded(prepared, batch), quantize=quantize)
            self._store_raw(output.reconstruction, batch, lengths, results)
        return results

    def _normalised(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """Raw clips (T, 263), checked, cut to whole steps and normalised."""
        step = self.frames_per_step
        prepared = []
        for index, clip in enumerate(clips):
            clip = check_features(np.asarray(clip), name=f"clip {index}")
            usable = len(clip) // step * step
            if usable == 0:
                raise InputError(f"clip {index}: {len(clip)} frames, fewer than one step ({step})")
            prepared.append((clip[:usable] - self.mean) / self.std)
        return prepared

    def _padded(self, prepared: list[np.ndarray], batch: list[int]) -> tuple[torch.Tensor, ...]:
        """The clips ``batch`` of ``prepared`` padded: features (B, T, 263), mask (B, T)."""
        frames = max(len(prepared[i]) for i in batch)
        features = np.zeros((len(batch), frames, FEATURE_DIM), dtype=np.float32)
        mask = np.zeros((len(batch), frames), dtype=bool)
        for row, i in enumerate(batch):
            features[row, : len(prepared[i])] = prepared[i]
            mask[row, : len(prepared[i])] = True
        return torch.from_numpy(features).to(self.device), torch.from_numpy(mask).to(self.device)

    def _store_raw(
        self, features: torch.Tensor, batch: list[int], lengths: list[int], results: list
    ) -> None:
        """Normalised features (B, T, 263) of clips ``batch`` back to raw, row b cut to clip
        batch[b]'s length (``lengths`` by clip) and put into ``results`` at that clip."""
        raw = features.float().cpu().numpy() * self.std + self.mean
        if self.mode == "pose":
            raw = self._fill_pose(raw)
        for row, i in enumerate(batch):
            results[i] = raw[row, : lengths[i]].astype(np.float32)

    @torch.inference_mode()
    def decode_batch(self, codes_list: list[np.ndarray], batch_size: int = 32) -> list[np.ndarray]:
        """Decode code arrays of different lengths to raw features."""
        prepared = [self._check_codes(np.asarray(codes), i) for i, codes in enumerate(codes_list)]
        step = self.frames_per_step
        lengths = [len(codes) * step for codes in prepared]  # frames
        results: list[np.ndarray] = [np.empty(0)] * len(prepared)
        for batch in length_batches(lengths, batch_size, BATCH_FRAMES):
            steps = max(len(prepared[i]) for i in batch)
            padded = np.zeros((len(batch), steps) + prepared[batch[0]].shape[1:], prepared[0].dtype)
            mask = np.zeros((len(batch), steps * step), dtype=bool)
            for row, i in enumerate(batch):
                padded[row, : len(prepared[i])] = prepared[i]
                mask[row, : len(prepared[i]) * step] = True
            with self._autocast():
                features = self.model.decode(
                    torch.from_numpy(padded).to(self.device), torch.from_numpy(mask).to(self.device)
                )  # (B, S * step, 263) normalised
            self._store_raw(features, batch, lengths, results)
        return results

    def _fill_pose(self, features: np.ndarray) -> np.ndarray:
        """A pose stands still: zero root motion and velocities, both feet in contact."""
        keep = np.zeros(FEATURE_DIM, dtype=bool)
        keep[np.asarray(self.model.input_feature_indices)] = True
        still = np.zeros(FEATURE_DIM, dtype=np.float32)
        still[-4:] = 1.0
        return np.where(keep, features, still)

    def _check_codes(self, codes: np.ndarray, index: int) -> np.ndarray:
        if not self.is_quantized:
            if codes.ndim != 3 or codes.shape[1] != self.num_parts:
                raise InputError(f"clip {index}: expected (steps, {self.num_parts}, dim) features")
            return codes.astype(np.float32)
        if codes.ndim != 2 or codes.shape[1] != self.num_parts or len(codes) == 0:
            expected = f"(steps, {self.num_parts})"
            raise InputError(f"clip {index}: expected codes of shape {expected}, got {codes.shape}")
        if codes.dtype.kind not in "iu" or codes.min() < 0 or codes.max() >= self.codebook_size:
            raise InputError(f"clip {index}: codes must be integers in [0, {self.codebook_size})")
        return codes.astype(np.int64)

    # --- saving and loading ----------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {
            f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()
        }
        tensors["stats.mean"] = torch.from_numpy(self.mean.copy())
        tensors["stats.std"] = torch.from_numpy(self.std.copy())
        return tensors

    def save_pretrained(self, path: str | Path, training: dict | None = None) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into the folder ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = self.state_dict()
        self.identity = _fingerprint(tensors)
        with atomic_path(folder / WEIGHTS_FILE) as temporary:
            save_file(tensors, str(temporary))
        config = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "identity": self.identity,
            "model_class": type(self.model).__name__,
            "model_config": self.model.config,
            "parts": list(self.parts),
            "codebook_size": self.codebook_size,
            "frames_per_step": self.frames_per_step,
            "fps": self.fps,
            "training": training or {},
        }
        write_text(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: str | torch.device = "cpu",
        precision: str = "32-true",
    ) -> Tokenizer:
        """Load a saved tokenizer folder (default: the model shipped with parttok), or a
        Lightning ``.ckpt`` written by ``parttok train``; ``precision`` as in ``Tokenizer``."""
        path = Path(path) if path is not None else PRETRAINED_DIR
        if path.is_file() and path.suffix == ".ckpt":
            return cls._from_lightning_checkpoint(path, device, precision)
        if path.is_file() and path.name in (WEIGHTS_FILE, CONFIG_FILE):
            path = path.parent
        if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
            raise CheckpointError(
                f"{path}: not a parttok tokenizer (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
            )
        config_path = path / CONFIG_FILE
        if config_path.stat().st_size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{config_path}: over {MAX_CONFIG_BYTES} bytes, not a config")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as error:  # also bad UTF-8, a 5,000-digit number
            reason = "nested too deeply" if isinstance(error, RecursionError) else error
            raise CheckpointError(f"{config_path}: not valid JSON ({reason})") from None
        if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{config_path}: not a parttok tokenizer config")
        version = config.get("version", FORMAT_VERSION)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise CheckpointError(f"{config_path}: bad format version {_brief(version)}")
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: written by a newer parttok (format {version}); upgrade parttok"
            )
        try:
            tensors = load_file(str(path / WEIGHTS_FILE))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path / WEIGHTS_FILE}: damaged weights ({error})") from None
        model_class, model_config = config.get("model_class", ""), config.get("model_config", {})
        return cls._assemble(model_class, model_config, tensors, path, device, precision)

    @classmethod
    def _from_lightning_checkpoint(cls, path: Path, device, precision: str) -> Tokenizer:
        checkpoint = read_lightning_checkpoint(path)
        info = checkpoint.get("parttok")
        if not isinstance(info, dict) or "model_class" not in info:
            raise CheckpointError(f"{path}: not written by parttok train (no model description)")
        state = checkpoint.get("state_dict")
        if not isinstance(state, dict) or "mean" not in state or "std" not in state:
            raise CheckpointError(f"{path}: no normalisation statistics (mean, std) in its state")
        tensors = {k: v for k, v in state.items() if k.startswith("model.")}
        tensors["stats.mean"], tensors["stats.std"] = state["mean"], state["std"]
        model_config = info.get("model_config", {})
        return cls._assemble(info["model_class"], model_config, tensors, path, device, precision)

    @classmethod
    def _assemble(
        cls, model_class: str, model_config: dict, tensors: dict, path: Path, device, precision: str
    ) -> Tokenizer:
        """The tokenizer of checked weights and statistics, built as its config says."""
        mean, std = _checked_statistics(tensors, path)
        weights = {k.removeprefix("model."): v for k, v in tensors.items()}
        for name, value in weights.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{path}: weights {name!r} are not a tensor")
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise CheckpointError(f"{path}: weights {name!r} hold NaN or infinite values")
        model = build_model(model_class, model_config, weights, source=str(path))
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as error:
            message = str(error).splitlines()[0]
            raise CheckpointError(
                f"{path}: weights do not fit the model config ({message})"
            ) from None
        return cls(model, mean, std, device=device, precision=precision)


def read_lightning_checkpoint(path: str | Path) -> dict:
    """A Lightning ``.ckpt`` loaded safely (``torch.load`` with ``weights_only``: tensors,
    numbers and containers, nothing a pickle could run); any failure is one CheckpointError
    line, without torch's advice to load the file unsafely."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged or unsafe files
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[0].split(". ")[0] if lines else type(error).__name__  # torch's gist
        if isinstance(error, pickle.UnpicklingError) and reason.startswith("Weights only"):
            why = _UNSAFE_REASON.search(str(error))  # past torch's advice to load it unsafely
            reason = f"refused, not only tensors and numbers: {why[1] if why else 'a pickle'}"
        raise CheckpointError(
            f"{path}: cannot read as a safe Lightning checkpoint ({reason})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no mapping inside)")
    return checkpoint


# The reason in torch's refusal of an unsafe pickle, up to the end of its sentence.
_UNSAFE_REASON = re.compile(r"((?:Unsupported|Trying to load)[^\n]*?)(?:\. |\.?$)", re.MULTILINE)


def _checked_statistics(tensors: dict, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pop and check the normalisation statistics: (263,) finite numbers, std > 0 (a zero std
    makes every normalised frame infinite and every code 0)."""
    statistics = []
    for name in ("stats.mean", "stats.std"):
        value = tensors.pop(name, None)
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
        if shape != (FEATURE_DIM,):
            found = type(value).__name__ if shape is None else f"shape {shape}"
            raise CheckpointError(
                f"{path}: normalisation statistics {name} must be ({FEATURE_DIM},), got {found}"
            )
        array = value.detach().float().cpu().numpy()
        if not np.isfinite(array).all():
            raise CheckpointError(f"{path}: normalisation statistics {name} hold NaN or inf")
        statistics.append(array)
    mean, std = statistics
    if (std <= 0).any():
        raise CheckpointError(
            f"{path}: normalisation statistics stats.std has {int((std <= 0).sum())} zero or "
            "negative entries (every code would be the same)"
        )
    return mean, std


def _fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """A short content hash identifying a set of weights."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def length_batches(
    lengths: list[int], batch_size: int, max_frames: int | None = None
) -> list[list[int]]:
    """Indices grouped into batches of similar length (least padding): at most ``batch_size``
    each and, past its first, at most ``max_frames`` padded frames (None: no limit)."""
    batches: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        batch = batches[-1] if batches else []
        fits = max_frames is None or (len(batch) + 1) * lengths[index] <= max_frames
        if batch and len(batch) < batch_size and fits:
            batch.append(index)  # sorted: this clip is the longest, its length the padded one
        else:
            batches.append([index])
    return batches
