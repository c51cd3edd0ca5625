"""`make demo`: the whole parttok pipeline on a handful of real clips, through the CLI.

    python tools/demo.py [--data ../shared/data] [--out demo-output] [--checkpoint PATH]

convert -> encode -> decode -> evaluate (with a report) -> render side by side -> token
timeline -> vocabulary -> instruction data. Prints where every output is.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from parttok.cli import main as parttok
from parttok.io import extract_once
from parttok.plots import plot_token_timeline
from parttok.tokenfile import load_tokens
from parttok.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
CMU_CLIPS = ("02_01.bvh", "131_01.bvh", "05_06.bvh")
# validation-split clips: the shipped model never trained on them
BANDAI_CLIPS = (
    "dataset-2_walk_active_007.bvh",
    "dataset-2_wave-right-hand_active_007.bvh",
    "dataset-2_raise-up-both-hands_elderly_001.bvh",
)
NO_DATA = """no motion data found at {data}.
The demo needs BVH files, e.g. the CMU motion capture database (mocap.cs.cmu.edu, BVH
conversions) or a HumanML3D folder (github.com/EricGuo5513/HumanML3D). Put them in a folder
and run:  make demo DATA=/path/to/folder   (a folder with cmu/ and/or bandai-namco-2.tar.xz,
or any folder of .bvh files)"""


def demo_sources(data: Path) -> list[Path]:
    """A handful of real clips from the shared data, or any BVH under ``data``."""
    sources = [data / "cmu" / name for name in CMU_CLIPS if (data / "cmu" / name).is_file()]
    archive = data / "bandai-namco-2.tar.xz"
    if archive.is_file():
        bandai = extract_once(archive) / "data"
        sources += [bandai / name for name in BANDAI_CLIPS if (bandai / name).is_file()]
    if not sources and data.is_dir():
        sources = sorted(data.rglob("*.bvh"))[:6]
    return sources


def step(title: str, arguments: list[str]) -> None:
    start = time.perf_counter()
    print(f"\n== {title}: parttok {' '.join(arguments)}", flush=True)
    status = parttok(arguments)
    print(f"   ({time.perf_counter() - start:.1f} s, exit {status})", flush=True)
    if status not in (0, 2):
        raise SystemExit(status)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "demo-output")
    parser.add_argument("--checkpoint", help="tokenizer folder (default: the shipped model)")
    args = parser.parse_args()
    sources = demo_sources(args.data)
    if not sources:
        print(NO_DATA.format(data=args.data), file=sys.stderr)
        return 2
    out, started = args.out, time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    checkpoint = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    converted, tokens, decoded = out / "converted", out / "tokens", out / "decoded"

    step("convert", ["convert", *map(str, sources), "--out", str(converted), "--jobs", "2"])
    step("encode", ["encode", str(converted), "--out", str(tokens), "-q", *checkpoint])
    step("decode", ["decode", str(tokens), "--out", str(decoded), "--format", "joints", "-q",
                    *checkpoint])  # fmt: skip
    step("evaluate", ["evaluate", str(converted), "--json", str(out / "evaluation.json"),
                      "--report", str(out / "report"), *checkpoint])  # fmt: skip
    first = sorted((converted / "new_joint_vecs").glob("*.npy"))[0]
    step("render", ["render", str(first), "--reconstruct", "--out", str(out / "side_by_side.gif"),
                    "--caption", f"{first.stem}: original | parttok reconstruction",
                    *checkpoint])  # fmt: skip
    tokenizer = Tokenizer.from_pretrained(args.checkpoint)
    codes = load_tokens(tokens / f"{first.stem}.ptok", expect_identity=tokenizer.identity).codes
    plot_token_timeline(
        np.asarray(codes), list(tokenizer.parts), out / "token_timeline.png",
        tokenizer.frames_per_step, tokenizer.fps, tokenizer.codebook_size,
    )  # fmt: skip
    step("vocab", ["vocab", "--out", str(out / "vocab"), *checkpoint])
    step("instruct", ["instruct", str(converted), "--out", str(out / "instruct.jsonl"),
                      "--tasks", "t2m,caption,predict", *checkpoint])  # fmt: skip

    print(f"\nDone in {time.perf_counter() - started:.0f} s. Outputs in {out}/:")
    for path, what in [
        (converted, "HumanML3D-layout features, joints, captions, Mean/Std"),
        (tokens, "one token file per clip"),
        (decoded, "decoded joints (T, 22, 3)"),
        (out / "evaluation.json", "MPJPE, PA-MPJPE, per-part error, codebook usage"),
        (out / "report" / "report.md", "evaluation report with figures"),
        (out / "side_by_side.gif", "original beside its reconstruction"),
        (out / "token_timeline.png", "which part's code changed when"),
        (out / "vocab" / "vocab.json", "the token vocabulary for an LLM"),
        (out / "instruct.jsonl", "instruction-tuning conversations"),
    ]:
        print(f"  {path.relative_to(out)}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
