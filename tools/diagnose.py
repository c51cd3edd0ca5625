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
import os
import sys
from pathlib import Path

import numpy as np
import torch

from parttok.data import HumanML3DFolder
from parttok.io import machine_description, replace_markdown_section
from parttok.metrics import clip_metrics, summarize
from parttok.model import evaluating
from parttok.tokenizer import PRETRAINED_DIR, Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from release import evaluation_sets, in_repo  # noqa: E402 (tools/ is not a package)

REPO = Path(__file__).resolve().parents[1]
TRAINED = {"bandai": "Bandai Namco 2", "cmu": "CMU", "cmu-iclone": "CMU, Character Creator rig"}
HELD_OUT = {
    "bandai_val": "Bandai Namco 2 validation",
    "cmu_val": "CMU validation (both rigs)",
    "humanml3d": "HumanML3D clips (AMASS)",
}


@torch.inference_mode()
def reconstruct(tokenizer: Tokenizer, clip: np.ndarray, quantize: bool) -> np.ndarray:
    """Raw features (T, 263) -> their reconstruction (T', 263), T' the whole steps of T,
    through the codes or (``quantize`` False) with the codebooks bypassed."""
    usable = len(clip) // tokenizer.frames_per_step * tokenizer.frames_per_step
    normalised = (clip[:usable] - tokenizer.mean) / tokenizer.std  # (T', 263)
    features = torch.from_numpy(normalised.astype(np.float32))[None].to(tokenizer.device)
    with evaluating(tokenizer.model):
        output = tokenizer.model(features, quantize=quantize).reconstruction  # (1, T', 263)
    return output[0].cpu().numpy() * tokenizer.std + tokenizer.mean


def errors(tokenizer: Tokenizer, clips: dict[str, np.ndarray], quantize: bool) -> dict:
    """Frame-weighted MPJPE and facing-frame MPJPE (mm) of ``clips`` reconstructed."""
    rows = []
    for clip in clips.values():
        reconstruction = reconstruct(tokenizer, clip, quantize)
        rows.append(clip_metrics(reconstruction, clip[: len(reconstruction)]))
    report = summarize(rows)
    return {key: report[key] for key in ("clips", "frames", "mpjpe_mm", "facing_mpjpe_mm")}


def training_sets(data: Path, bandai_every: int) -> dict[str, dict[str, np.ndarray]]:
    """The train split of each converted folder (Bandai Namco's every ``bandai_every``-th
    clip), by folder name."""
    sets = {}
    for name in TRAINED:
        folder = HumanML3DFolder(data / name)
        ids = folder.ids("train")[:: bandai_every if name == "bandai" else 1]
        sets[name] = {clip_id: folder.features(clip_id) for clip_id in ids}
    return sets


def diagnose(tokenizer: Tokenizer, data: Path, shared: Path, bandai_every: int) -> dict:
    """{set: {"trained": bool, "codes": errors, "bypassed": errors}} for the training and
    held-out sets."""
    sets = {**training_sets(data, bandai_every), **evaluation_sets(data, shared)}
    return {
        name: {
            "trained": name in TRAINED,
            "codes": errors(tokenizer, clips, quantize=True),
            "bypassed": errors(tokenizer, clips, quantize=False),
        }
        for name, clips in sets.items()
    }


def table(tokenizer: Tokenizer, found: dict, command: str) -> str:
    """The "Where the error comes from" section of BENCHMARKS.md."""
    lines = [
        "## Where the error comes from",
        "",
        f"Command: `{command}` (after `python tools/prepare_data.py`). "
        f"{machine_description()}, no GPU; {datetime.date.today().isoformat()}. Model "
        f"{tokenizer.identity}. MPJPE (mm, pelvis-aligned; facing: each frame in its own facing "
        "frame) of the round trip through the codes, and of the same model with its codebooks "
        "bypassed: each part's continuous latent straight to the decoder. The gap is what the "
        "codebooks cost; what is left without them is the encoder's and decoder's. A training "
        "clip reconstructed about as badly as a held-out one is underfitted.",
        "",
        "| clips | trained on | clips | frames | through the codes | facing | codebooks "
        "bypassed | facing | the codebooks' cost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in found.items():
        codes, bypassed = row["codes"], row["bypassed"]
        label = TRAINED.get(name, HELD_OUT.get(name, name))
        if name == "bandai" and row["trained"]:
            label += " (a sample)"
        lines.append(
            f"| {label} | {'yes' if row['trained'] else 'no'} | {codes['clips']} | "
            f"{codes['frames']} | {codes['mpjpe_mm']:.1f} | {codes['facing_mpjpe_mm']:.1f} | "
            f"{bypassed['mpjpe_mm']:.1f} | {bypassed['facing_mpjpe_mm']:.1f} | "
            f"{codes['mpjpe_mm'] - bypassed['mpjpe_mm']:+.1f} |"
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
    found = diagnose(tokenizer, args.data, args.shared, args.bandai_every)
    command = "python tools/diagnose.py"
    if args.checkpoint is not None and args.checkpoint.resolve() != PRETRAINED_DIR.resolve():
        command += f" --checkpoint {in_repo(args.checkpoint)}"
    if args.bandai_every != 10:
        command += f" --bandai-every {args.bandai_every}"
    section = table(tokenizer, found, command)
    if not args.no_write:
        replace_markdown_section(REPO / "BENCHMARKS.md", section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
