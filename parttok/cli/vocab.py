"""``parttok vocab --out DIR``: the token vocabulary of a tokenizer as ``vocab.json``, and
optionally a Hugging Face tokenizer (and model) extended with its tokens."""

from __future__ import annotations

import argparse
from pathlib import Path

from parttok.errors import InputError, ParttokError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--checkpoint", metavar="PATH", help="motion tokenizer folder or .ckpt (default: shipped)"
    )
    parser.add_argument(
        "--pose-checkpoint",
        metavar="PATH",
        help="also a pose tokenizer: writes pose_vocab.json and adds its tokens too",
    )
    parser.add_argument(
        "--naming",
        choices=("parttok", "motiongpt"),
        default="parttok",
        help="token strings: <rarm_17> per part (default) or MotionGPT's flat <motion_id_k>",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="HF_DIR",
        help="a Hugging Face tokenizer saved in a folder: add the tokens, save to DIR/tokenizer",
    )
    parser.add_argument(
        "--model",
        metavar="HF_DIR",
        help="a Hugging Face causal LM saved in a folder (needs --tokenizer): resize its "
        "embeddings, initialise the new rows, save to DIR/model",
    )
    parser.add_argument(
        "--init",
        choices=("codebook", "mean"),
        default="codebook",
        help="new embedding rows: code vectors through a fitted projection (default) or the "
        "mean embedding",
    )


def run(args: argparse.Namespace) -> int:
    from parttok.tokenizer import Tokenizer
    from parttok.tokens import Vocabulary, add_motion_tokens

    if args.model and not args.tokenizer:
        raise InputError("--model needs --tokenizer (the model's own tokenizer folder)")
    out = Path(args.out)
    pairs = [(Tokenizer.from_pretrained(args.checkpoint), "vocab.json")]
    if args.pose_checkpoint:
        pairs.append((Tokenizer.from_pretrained(args.pose_checkpoint), "pose_vocab.json"))
    vocabularies = [Vocabulary.from_tokenizer(tokenizer, args.naming) for tokenizer, _ in pairs]
    hf_tokenizer, model = _load_hf(args.tokenizer, args.model) if args.tokenizer else (None, None)
    for (_, name), vocab in zip(pairs, vocabularies, strict=True):
        vocab.save(out / name)
        print(f"{out / name}: {len(vocab)} tokens ({vocab.mode}, {vocab.naming} naming)")
    if hf_tokenizer is None:
        return 0
    before = len(hf_tokenizer)
    for (tokenizer, _), vocab in zip(pairs, vocabularies, strict=True):
        add_motion_tokens(model, hf_tokenizer, vocab, tokenizer, init=args.init)
    hf_tokenizer.save_pretrained(str(out / "tokenizer"))
    print(f"{out / 'tokenizer'}: {before} -> {len(hf_tokenizer)} tokens")
    if model is not None:
        model.save_pretrained(str(out / "model"))
        rows = model.get_input_embeddings().weight.shape[0]
        print(f"{out / 'model'}: {rows} embedding rows, new ones initialised by {args.init}")
    return 0


def _load_hf(tokenizer_dir: str, model_dir: str | None):
    """A tokenizer (and model) from local folders only; any failure is one line."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ParttokError("--tokenizer needs transformers: pip install 'parttok[llm]'") from None
    for folder in filter(None, (tokenizer_dir, model_dir)):
        if not Path(folder).is_dir():
            raise InputError(f"{folder}: no such folder")
    hf_tokenizer = _loaded(AutoTokenizer, tokenizer_dir, "tokenizer")
    model = _loaded(AutoModelForCausalLM, model_dir, "causal language model") if model_dir else None
    return hf_tokenizer, model


def _loaded(auto_class, folder: str, what: str):
    try:
        return auto_class.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        lines = str(error).strip().splitlines()
        reason = lines[0].rstrip(": ") if lines else type(error).__name__
        raise InputError(f"{folder}: not a Hugging Face {what} folder ({reason})") from None
