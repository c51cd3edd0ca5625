"""The user-facing tokenizer: a trained model with its normalisation statistics, numpy in and
out, batching and padding inside, saved as safetensors + JSON (nothing is ever unpickled)."""

from __future__ import annotations

import hashlib
import json
import warnings
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

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
# Padded frames one forward pass takes beyond its first clip: past this, tensors outgrow the
# CPU's caches and each frame costs more (tools/bench_throughput.py's 4 five-minute clips in
# one pass encoded at 11.8k frames/s, 30k with this cap).
BATCH_FRAMES = 8192
# How the model computes: in float32, or with bfloat16 matrix products (the codebooks and the
# code search stay float32), Lightning's names for the same choice in training.
PRECISIONS = ("32-true", "bf16-mixed")


def model_classes() -> dict[str, type[nn.Module]]:
    """The model classes a checkpoint may name (nothing else is ever constructed)."""
    from parttok.baselines import ConvVQ, ResidualConvVQ
    from parttok.model import PartTokenizer

    return {cls.__name__: cls for cls in (PartTokenizer, ConvVQ, ResidualConvVQ)}


def build_model(class_name: str, config: dict) -> nn.Module:
    """Construct a registered model class from its JSON config."""
    classes = model_classes()
    if class_name not in classes:
        raise CheckpointError(
            f"unknown model class {class_name!r}; expected one of {sorted(classes)}"
        )
    try:
        return classes[class_name](**config)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"config does not fit {class_name}: {error}") from None


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
        try:
            config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path / CONFIG_FILE}: not valid JSON ({error})") from None
        if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
            raise CheckpointError(f"{path / CONFIG_FILE}: not a parttok tokenizer config")
        if int(config.get("version", 0)) > FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: written by a newer parttok (format {config['version']}); upgrade parttok"
            )
        try:
            tensors = load_file(str(path / WEIGHTS_FILE))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path / WEIGHTS_FILE}: damaged weights ({error})") from None
        model = build_model(config.get("model_class", ""), config.get("model_config", {}))
        return cls._assemble(model, tensors, path, device, precision)

    @classmethod
    def _from_lightning_checkpoint(cls, path: Path, device, precision: str) -> Tokenizer:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for damaged or unsafe files
            raise CheckpointError(
                f"{path}: cannot read as a safe Lightning checkpoint ({error})"
            ) from None
        info = checkpoint.get("parttok") if isinstance(checkpoint, dict) else None
        if not info:
            raise CheckpointError(f"{path}: not written by parttok train (no model description)")
        model = build_model(info["model_class"], info["model_config"])
        state = checkpoint["state_dict"]
        tensors = {k: v for k, v in state.items() if k.startswith("model.")}
        tensors["stats.mean"], tensors["stats.std"] = state["mean"], state["std"]
        return cls._assemble(model, tensors, path, device, precision)

    @classmethod
    def _assemble(
        cls, model: nn.Module, tensors: dict, path: Path, device, precision: str
    ) -> Tokenizer:
        try:
            mean, std = tensors.pop("stats.mean"), tensors.pop("stats.std")
            weights = {k.removeprefix("model."): v for k, v in tensors.items()}
            model.load_state_dict(weights, strict=True)
        except (KeyError, RuntimeError) as error:
            message = str(error).splitlines()[0]
            raise CheckpointError(
                f"{path}: weights do not fit the model config ({message})"
            ) from None
        return cls(model, mean.numpy(), std.numpy(), device=device, precision=precision)


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
