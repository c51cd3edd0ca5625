"""Instruction data for configs/llm_cpu.yaml: the shared real data converted (as
tools/prepare_data.py does) and turned into conversations by ``parttok instruct``, one file
per split.

    python tools/llm_data.py [--data ../shared/data] [--out data]

writes ``data/llm/{train,val,test}.jsonl`` (text-to-motion, captioning and prediction on
Bandai Namco 2 and both CMU sets, split by each folder's split files). Existing files are kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prepare_data import prepare

from parttok.cli import main as parttok_main

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "data")
    args = parser.parse_args()
    for split, path in make(args.data, args.out).items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
