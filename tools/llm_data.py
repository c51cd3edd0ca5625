"""Instruction data for configs/llm_cpu.yaml: the shared real data converted (as
tools/prepare_data.py does) and turned into conversations by ``parttok instruct``, one file
per split.

    python tools/llm_data.py [--data ../shared/data] [--out data]

writes ``data/llm/{train,val,test}.jsonl`` (text-to-motion, captioning and prediction on
Bandai Namco 2 and both CMU sets, split by each folder's split files). Existing files are kept.
``--general`` also writes ``data/llm/general_{train,val}.jsonl``: the prompts of
``tools/general_prompts.yaml`` answered by the base model itself (task ``general``), the data
that keeps language while tuning (and teaches MoE-LoRA's gate its zero expert).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml
from prepare_data import prepare

from parttok.cli import main as parttok_main

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")
GENERAL_PROMPTS = REPO / "tools" / "general_prompts.yaml"
VAL_TOPICS = 5  # the last topics of general_prompts.yaml


def make(data: Path, out: Path, tasks: str = "t2m,caption,predict") -> dict[str, Path]:
    """Convert the data once and write one conversation file per split."""
    folders = prepare(data, out)
    files = {}
    for split in SPLITS:
        files[split] = out / "llm" / f"{split}.jsonl"
        if files[split].is_file():
            continue
        files[split].parent.mkdir(parents=True, exist_ok=True)
        arguments = ["instruct", *map(str, folders.values()), "--split", split]
        status = parttok_main([*arguments, "--tasks", tasks, "--out", str(files[split])])
        if status not in (0, 2):
            raise SystemExit(status)
    return files


def general_prompts(path: Path = GENERAL_PROMPTS) -> dict[str, list[str]]:
    """{"train": prompts, "val": prompts}: every instruction for every topic, the last
    ``VAL_TOPICS`` topics for validation."""
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    topics = spec["topics"]
    split = {"train": topics[:-VAL_TOPICS], "val": topics[-VAL_TOPICS:]}
    return {
        name: [i.format(topic=t) for t in chosen for i in spec["instructions"]]
        for name, chosen in split.items()
    }


def general_conversations(
    prompts: list[str], base: str = "smollm2", max_new_tokens: int = 96
) -> list[dict]:
    """The base's greedy answers to ``prompts`` as ``general`` conversations; answers that
    reach ``max_new_tokens`` (cut short) are left out."""
    from parttok.llm.base import load_base
    from parttok.llm.model import answers

    model, hf_tokenizer = load_base(base)
    rows = []
    for start in range(0, len(prompts), 16):
        batch = prompts[start : start + 16]
        for prompt, answer in zip(
            batch, answers(model, hf_tokenizer, batch, max_new_tokens), strict=True
        ):
            answer = answer.strip()
            length = len(hf_tokenizer(answer, add_special_tokens=False)["input_ids"])
            if answer and length < max_new_tokens - 1:
                rows.append({"task": "general", "user": prompt, "assistant": answer})
    return rows


def make_general(out: Path, base: str = "smollm2") -> dict[str, Path]:
    """``general_{train,val}.jsonl`` under ``out/llm`` (existing files are kept)."""
    files = {}
    for split, prompts in general_prompts().items():
        files[split] = out / "llm" / f"general_{split}.jsonl"
        if files[split].is_file():
            continue
        rows = general_conversations(prompts, base)
        files[split].parent.mkdir(parents=True, exist_ok=True)
        partial = files[split].with_name(f".{files[split].name}.partial")
        partial.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        partial.replace(files[split])
        print(f"{files[split]}: {len(rows)} of {len(prompts)} prompts answered in full")
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "data")
    parser.add_argument(
        "--general", action="store_true", help="also the base's answers to general prompts"
    )
    parser.add_argument("--base", default="smollm2", help="the base that answers them")
    args = parser.parse_args()
    for split, path in make(args.data, args.out).items():
        print(f"{split}: {path}")
    if args.general:
        for split, path in make_general(args.out, args.base).items():
            print(f"general {split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
