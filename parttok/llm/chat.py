"""Conversations as token ids for a causal LM: the base's chat template, loss on answers only.

A conversation is one user turn and one assistant turn (what ``parttok instruct`` writes).
The prompt is the chat template up to the assistant's turn (``add_generation_prompt``); the
answer is the rest of the templated conversation, end-of-turn token included, so the model
learns to stop. Labels are ``IGNORE`` over the prompt and padding.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parttok.errors import InputError

IGNORE = -100  # label of positions without loss (PyTorch's cross-entropy ignore_index)
PLAIN_TEMPLATE = "User: {user}\nAssistant: "  # for bases without a chat template


@dataclass(frozen=True)
class Example:
    """One tokenised conversation."""

    input_ids: list[int]
    labels: list[int]
    task: str
    user: str = ""
    features: Any = None  # a features model's rows (n, in) for the prompt's placeholders


def prompt_text(hf_tokenizer, user: str) -> str:
    """The text the model sees before it answers ``user``."""
    if getattr(hf_tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": user}]
        return hf_tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
    return PLAIN_TEMPLATE.format(user=user)


def answer_text(hf_tokenizer, user: str, assistant: str) -> str:
    """The assistant turn as the chat template writes it after ``prompt_text``."""
    prompt = prompt_text(hf_tokenizer, user)
    if not getattr(hf_tokenizer, "chat_template", None):
        return assistant + (hf_tokenizer.eos_token or "")
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    whole = hf_tokenizer.apply_chat_template(messages, tokenize=False)
    if not whole.startswith(prompt):
        raise InputError("the base's chat template does not extend its generation prompt")
    return whole[len(prompt) :]


def prompt_ids(hf_tokenizer, user: str) -> list[int]:
    """Token ids of ``prompt_text`` (with the base's BOS if its template lacks one)."""
    return hf_tokenizer(prompt_text(hf_tokenizer, user), add_special_tokens=False)["input_ids"]


def encode_conversation(
    hf_tokenizer, user: str, assistant: str, task: str, max_length: int
) -> Example | None:
    """The conversation as ids and answer-only labels; None if longer than ``max_length``
    (a cut answer would teach motions that never end)."""
    prompt = prompt_ids(hf_tokenizer, user)
    answer = hf_tokenizer(answer_text(hf_tokenizer, user, assistant), add_special_tokens=False)[
        "input_ids"
    ]
    if len(prompt) + len(answer) > max_length:
        return None
    return Example(prompt + answer, [IGNORE] * len(prompt) + answer, task, user)


def read_conversations(path: str | Path) -> Iterator[dict]:
    """Records of a ``parttok instruct`` file (``.jsonl`` or ``.json``) as
    ``{"task", "user", "assistant", ...metadata}``; a malformed file raises one InputError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: unreadable conversations ({error})") from None
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(text)
            if not isinstance(rows, list):
                raise InputError(f"{path}: expected a JSON array of conversations")
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, RecursionError) as error:
        raise InputError(f"{path}: not JSON lines ({str(error)[:80]})") from None
    for number, row in enumerate(rows, 1):
        yield _turns(row, f"{path}:{number}")


def _turns(row: object, name: str) -> dict:
    if not isinstance(row, dict):
        raise InputError(f"{name}: expected a conversation object")
    if isinstance(row.get("messages"), list):
        turns = {m.get("role"): m.get("content") for m in row["messages"] if isinstance(m, dict)}
        user, assistant = turns.get("user"), turns.get("assistant")
    elif isinstance(row.get("conversations"), list):
        turns = {m.get("from"): m.get("value") for m in row["conversations"] if isinstance(m, dict)}
        user, assistant = turns.get("human"), turns.get("gpt")
    else:
        user, assistant = row.get("user"), row.get("assistant")
    if not isinstance(user, str) or not isinstance(assistant, str):
        raise InputError(f"{name}: expected a user and an assistant turn")
    meta = {k: v for k, v in row.items() if k not in ("messages", "conversations")}
    return meta | {"task": str(row.get("task", "chat")), "user": user, "assistant": assistant}
