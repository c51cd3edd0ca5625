"""Where a tokenizer's error comes from: its codebooks, or its encoder and decoder; fitting
the clips it trained on, or reaching beyond them.

    python tools/prepare_data.py                         # once
    python tools/diagnose.py                             # the shipped model
    python tools/diagnose.py --checkpoint runs/x/tokenizer --no-write

For the clips it trained on (every folder's train split; Bandai Namco's a sample of every Nth
clip) and the held-out sets the release is measured on, the MPJPE of the round trip through
the codes and of the same model with its codebooks bypassed (each part's continuous latent
straight to the decoder). The gap between the two is what the codebooks cost; the error left
without them is the encoder's and decoder's; a training clip reconstructed no better than a
held-out one means the model underfits it. Writes the "## Where the error comes from" section
of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from parttok.data import HumanML3DFolder
from parttok.evaluation import evaluate_clips
from parttok.io import machine_description, replace_markdown_section
from parttok.tokenizer import PRETRAINED_DIR, Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from release import (  # noqa: E402 (tools/ is not a package)
    METRICS,
    evaluation_sets,
    in_repo,
    same_sets,
    saved_data,
    splits_changed,
    training_splits,
)

REPO = Path(__file__).resolve().parents[1]
TRAINED = {"bandai": "Bandai Namco 2", "cmu": "CMU", "cmu-iclone": "CMU, Character Creator rig"}
HELD_OUT = {
    "bandai_val": "Bandai Namco 2 validation",
    "cmu_val": "CMU validation, both rigs",
    "humanml3d": "HumanML3D clips (AMASS)",
}


def errors(tokenizer: Tokenizer, clips: dict[str, np.ndarray], quantize: bool) -> dict:
    """Frame-weighted MPJPE and facing-frame MPJPE (mm) of ``clips`` reconstructed through
    the codes or (``quantize`` False) with the codebooks bypassed."""
    report = evaluate_clips(tokenizer, clips, quantize=quantize)
    return {key: report[key] for key in ("clips", "frames", "mpjpe_mm", "facing_mpjpe_mm")}


def is_shipped(checkpoint: Path | None) -> bool:
    """Whether ``checkpoint`` (None: the default) is the shipped model's folder."""
    return checkpoint is None or checkpoint.resolve() == PRETRAINED_DIR.resolve()


def trained_folders(checkpoint: Path | None, data: Path, held_out: dict) -> list[str]:
    """The converted folders (names) the model at ``checkpoint`` (None: the shipped one)
    trained on. Refuses a model whose splits are not today's: it may have trained on clips
    now held out."""
    if is_shipped(checkpoint):
        record = json.loads((PRETRAINED_DIR / METRICS).read_text())
        if not same_sets(record["results"], held_out):
            raise SystemExit("the held-out sets are not those the shipped model was measured on")
        if "settings" not in record["training"]:
            raise SystemExit(f"{PRETRAINED_DIR / METRICS} does not say what it trained on")
        folders = record["training"]["settings"]["data"]["data_dirs"]
    else:
        run = checkpoint.resolve().parent  # parttok train writes <run>/tokenizer
        unfit = splits_changed(run, training_splits(data))
        if unfit:
            raise SystemExit(f"{checkpoint}: {unfit}")
        folders = saved_data(run)["data_dirs"]
    return list(dict.fromkeys(Path(folder).name for folder in folders))


def training_sets(data: Path, folders: list[str], bandai_every: int) -> dict[str, dict]:
    """The train split of each of ``folders`` under ``data`` (Bandai Namco's every
    ``bandai_every``-th clip), by folder name."""
    sets = {}
    for name in folders:
        folder = HumanML3DFolder(data / name)
        ids = folder.ids("train")[:: bandai_every if name == "bandai" else 1]
        sets[name] = {clip_id: folder.features(clip_id) for clip_id in ids}
    return sets


def diagnose(tokenizer: Tokenizer, sets: dict[str, dict]) -> dict:
    """{set: {"codes": errors, "bypassed": errors}} for each named set of clips."""
    return {
        name: {"codes": errors(tokenizer, clips, True), "bypassed": errors(tokenizer, clips, False)}
        for name, clips in sets.items()
    }


def table(tokenizer: Tokenizer, found: dict, command: str, bandai_every: int, run: str = "") -> str:
    """The "Where the error comes from" section of BENCHMARKS.md (for the shipped model; for
    another, ``run`` names it in the heading)."""
    lines = [
        "## Where the error comes from" + (f", {run}" if run else ""),
        "",
        f"Command: `{command}` (after `python tools/prepare_data.py`). "
        f"{machine_description()}, no GPU; {datetime.date.today().isoformat()}. Model "
        f"{tokenizer.identity}. MPJPE (mm, pelvis-aligned; facing: each frame in its own facing "
        "frame) of the round trip through the codes, and of the same model with its codebooks "
        "bypassed: each part's continuous latent straight to the decoder. The gap is what the "
        "codebooks cost; what is left without them is the encoder's and decoder's. Clips it "
        "trained on reconstructed about as badly as held-out ones are underfitted. Bandai "
        f"Namco's train split is sampled: every {bandai_every}th clip.",
        "",
        "| set | clips | frames | through the codes | facing | codebooks bypassed | facing "
        "| the codebooks' cost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in found.items():
        codes, bypassed = row["codes"], row["bypassed"]
        if name in HELD_OUT:
            label = f"{HELD_OUT[name]} (held out)"
        else:
            sample = (
                f", every {bandai_every}th clip" if name == "bandai" and bandai_every > 1 else ""
            )
            label = f"{TRAINED.get(name, name)} (trained on{sample})"
        lines.append(
            f"| {label} | {codes['clips']} | {codes['frames']} | {codes['mpjpe_mm']:.1f} | "
            f"{codes['facing_mpjpe_mm']:.1f} | {bypassed['mpjpe_mm']:.1f} | "
            f"{bypassed['facing_mpjpe_mm']:.1f} | {codes['mpjpe_mm'] - bypassed['mpjpe_mm']:+.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="default: the shipped model")
    parser.add_argument("--data", type=Path, default=REPO / "data")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--bandai-every", type=int, default=10, help="sample every Nth Bandai Namco train clip"
    )
    parser.add_argument("--no-write", action="store_true", help="print, leave BENCHMARKS.md")
    args = parser.parse_args()
    if args.bandai_every < 1:
        parser.error("--bandai-every must be at least 1")
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = Tokenizer.from_pretrained(args.checkpoint)
    if not tokenizer.is_quantized or tokenizer.mode == "pose":
        raise SystemExit(
            f"{args.checkpoint}: diagnose takes a motion tokenizer with codebooks (not "
            f"{tokenizer.mode} mode)"
        )
    if tokenizer.model.config.get("quantizer") == "fsq":
        raise SystemExit(f"{args.checkpoint}: an FSQ model has no codebooks to bypass")
    held_out = evaluation_sets(args.data, args.shared)
    folders = trained_folders(args.checkpoint, args.data, held_out)
    found = diagnose(
        tokenizer, {**training_sets(args.data, folders, args.bandai_every), **held_out}
    )
    command, run = "python tools/diagnose.py", ""
    if not is_shipped(args.checkpoint):
        run = in_repo(args.checkpoint.resolve().parent)
        command += f" --checkpoint {in_repo(args.checkpoint)}"
    if args.bandai_every != parser.get_default("bandai_every"):
        command += f" --bandai-every {args.bandai_every}"
    section = table(tokenizer, found, command, args.bandai_every, run)
    if not args.no_write:
        replace_markdown_section(REPO / "BENCHMARKS.md", section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
