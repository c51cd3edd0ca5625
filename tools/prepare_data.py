"""Convert the shared real data into the HumanML3D layout that the training configs read.

    python tools/prepare_data.py [--data ../shared/data] [--out data]

writes ``data/bandai`` (Bandai Namco 2, 2,902 clips), ``data/cmu`` (the CMU BVH on the
motionbuilder and 3dsmax namings) and ``data/cmu-iclone`` (CMU on the Character Creator
rig). Each is resumable: a second run only converts what is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from parttok.cli import main as parttok_main
from parttok.io import extract_once

REPO = Path(__file__).resolve().parents[1]


def prepare(data: Path, out: Path, jobs: int | None = None) -> dict[str, Path]:
    """Convert each source once; return the output folder of each."""
    sources = {
        "bandai": extract_once(data / "bandai-namco-2.tar.xz") / "data",
        "cmu": data / "cmu",
        "cmu-iclone": extract_once(data / "cmu-iclone.tar.xz") / "cmu-iclone",
    }
    folders = {}
    for name, source in sources.items():
        folders[name] = out / name
        arguments = ["convert", str(source), "--out", str(folders[name])]
        if jobs:
            arguments += ["--jobs", str(jobs)]
        status = parttok_main(arguments)
        if status not in (0, 2):
            raise SystemExit(status)
    return folders


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "data")
    parser.add_argument("--jobs", type=int)
    args = parser.parse_args()
    for name, folder in prepare(args.data, args.out, args.jobs).items():
        print(f"{name}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
