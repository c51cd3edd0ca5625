"""Ablate the shipped model's training recipe: its data (joint-space augmentation and its
limb swings, squats, jumps and tilts, CMU oversampling, left/right mirroring), its quantizer,
its width and depth and its losses.

    python tools/prepare_data.py                              # once
    python tools/recipe.py --steps 3000                       # train every variant
    python tools/recipe.py --steps 3000 --only no_mirroring   # (re)train some of them
    python tools/recipe.py --steps 3000 --evaluate-only       # measure trained runs again

Each variant trains ``--steps`` optimiser steps of configs/cpu.yaml (so the thread count and
other load do not change the result, only the time) with the settings of the recipe the
ablations started from (``BASE``: the CMU folders listed three times, mirroring, augmentation
without squats, jumps or tilts, the model 128 wide), changed as the variant's name
says ("base" changes nothing). The run the shipped model came from is marked. Runs go to
runs/recipe<steps>/<variant>, one folder per step count. Measured as tools/release.py
measures the shipped model. Each measurement is kept in tools/recipe_measured.json, so a row
stays when its run is gone (runs/ is not committed) while the settings the variant resolves
to (configs/cpu.yaml with its arguments, as LightningCLI fills them in, the budget apart),
its seed, the train splits and the held-out clips are unchanged: a change to cpu.yaml that
the variant's own arguments override keeps its row. A run in the folder is measured only if
it trained as its variant does now. The shipped model is measured from parttok/pretrained
when its run's row is missing. Writes the "## Training recipe, N steps" section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

from parttok.io import machine_description, replace_markdown_section, write_text
from parttok.tokenizer import CONFIG_FILE, PRETRAINED_DIR, Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from release import (  # noqa: E402 (tools/ is not a package)
    METRICS,
    evaluation_sets,
    in_repo,
    learning_settings,
    measure,
    resolved_config,
    same_sets,
    saved_config,
    score,
    settings_differences,
    splits_changed,
    train,
    training_splits,
    with_code_defaults,
)

REPO = Path(__file__).resolve().parents[1]
# Every variant's measurement, by run folder: the table keeps a row when its run is gone.
RECORD = Path(__file__).with_name("recipe_measured.json")
# The recipe of model 63edf37f (its folders; no squats, jumps or tilts; turns over
# 10-40 frames; 128 wide with 32-dimensional codes; float32), whatever configs/cpu.yaml now
# sets there; every variant starts here.
BASE = (
    "--trainer.precision",
    "null",
    "--data.data_dirs",
    "[data/bandai" + ", data/cmu, data/cmu-iclone" * 3 + "]",
    "--data.augment",
    "{crouch: 0.0, jump: 0.0, tilt: 0.0, turn_frames: [10.0, 40.0]}",
    "--model.model.init_args.dim",
    "128",
    "--model.model.init_args.code_dim",
    "32",
)
OVERSAMPLE_6 = ("--data.data_dirs", "[data/bandai" + ", data/cmu, data/cmu-iclone" * 6 + "]")
OVERSAMPLE_10 = ("--data.data_dirs", "[data/bandai" + ", data/cmu, data/cmu-iclone" * 10 + "]")
CROUCH_JUMP = ("--data.augment", "{crouch: 0.3, jump: 0.2}")
CROUCH_JUMP_TILT = ("--data.augment", "{crouch: 0.3, jump: 0.2, tilt: 0.2}")
WIDTH_192 = OVERSAMPLE_6 + CROUCH_JUMP_TILT + ("--model.model.init_args.dim", "192")
FAST = (
    OVERSAMPLE_6
    + (
        "--data.augment",
        "{crouch: 0.3, jump: 0.2, tilt: 0.2, speed: [0.75, 1.6], swing_frames: [3.0, 20.0]}",
    )
    + ("--model.model.init_args.dim", "192")
)
FAST_TURNS = (
    OVERSAMPLE_6
    + ("--data.augment", "{crouch: 0.3, jump: 0.2, tilt: 0.2, turn_frames: [4.0, 40.0]}")
    + ("--model.model.init_args.dim", "192", "--trainer.precision", "bf16-mixed")
)
VARIANTS = {
    "base": (
        "the base recipe (model 63edf37f): CMU oversampled 3x, mirroring, augmentation",
        (),
    ),
    "seed_1": (
        "the base recipe, seed 1 (not 0): how far chance moves a run",
        ("--seed_everything", "1"),
    ),
    "no_augmentation": ("no augmentation", ("--data.augment", "null")),
    "no_limb_swing": (
        "augmentation without limb swings",
        ("--data.augment", "{limb_swing: 0.0}"),
    ),
    "no_mirroring": ("no mirroring", ("--data.mirror", "false")),
    "no_oversampling": (
        "no oversampling (each folder once)",
        ("--data.data_dirs", "[data/bandai, data/cmu, data/cmu-iclone]"),
    ),
    "oversample_6": ("CMU oversampled 6x (not 3x)", OVERSAMPLE_6),
    "oversample_6_seed_1": (
        "CMU oversampled 6x, seed 1: how far chance moves that run",
        OVERSAMPLE_6 + ("--seed_everything", "1"),
    ),
    "oversample_10": ("CMU oversampled 10x (not 3x)", OVERSAMPLE_10),
    "oversample_6_crouch_jump": (
        "CMU oversampled 6x, and augmentation adds squats and jumps (no twists)",
        OVERSAMPLE_6 + CROUCH_JUMP,
    ),
    "oversample_6_crouch_jump_tilt": (
        "CMU oversampled 6x, and augmentation adds squats, jumps and whole-body tilts (20%)",
        OVERSAMPLE_6 + CROUCH_JUMP_TILT,
    ),
    **{
        f"oversample_6_crouch_jump_tilt_seed_{seed}": (
            f"CMU oversampled 6x, squats, jumps and tilts added, seed {seed}: how far chance "
            "moves that run",
            OVERSAMPLE_6 + CROUCH_JUMP_TILT + ("--seed_everything", str(seed)),
        )
        for seed in (1, 2, 3)
    },
    "oversample_6_crouch_jump_tilt_width_192": (
        "CMU oversampled 6x, squats, jumps and tilts added, and the model 192 wide (not 128)",
        WIDTH_192,
    ),
    "oversample_6_crouch_jump_tilt_width_192_seed_1": (
        "CMU oversampled 6x, squats, jumps and tilts added, 192 wide, seed 1: how far chance "
        "moves that run",
        WIDTH_192 + ("--seed_everything", "1"),
    ),
    "oversample_6_crouch_jump_tilt_width_192_depth_3": (
        "CMU oversampled 6x, squats, jumps and tilts added, 192 wide, and 3 encoder and 3 "
        "decoder layers (not 2): the encoder/decoder grown, as tools/diagnose.py points",
        WIDTH_192
        + ("--model.model.init_args.encoder_depth", "3")
        + ("--model.model.init_args.decoder_depth", "3"),
    ),
    "oversample_6_crouch_jump_tilt_width_192_bf16": (
        "CMU oversampled 6x, squats, jumps and tilts added, 192 wide, trained in mixed "
        "precision (bfloat16 matrix products, float32 codebooks and losses): a step is 1.7-2x "
        "as fast on a CPU with bfloat16 instructions",
        WIDTH_192 + ("--trainer.precision", "bf16-mixed"),
    ),
    "oversample_6_crouch_jump_tilt_width_192_bf16_fast_turns": (
        "CMU oversampled 6x, squats, jumps and tilts added, 192 wide, mixed precision, and turns "
        "made in as few as 4 frames (not 10): up to 67 degrees a frame, where 10 frames reach "
        "27 and the held-out tennis serve turns 28",
        FAST_TURNS,
    ),
    "oversample_6_crouch_jump_tilt_width_192_bf16_fast_turns_seed_1": (
        "CMU oversampled 6x, squats, jumps and tilts added, 192 wide, mixed precision, turns "
        "in as few as 4 frames, seed 1: how far chance moves that run",
        FAST_TURNS + ("--seed_everything", "1"),
    ),
    **{
        f"oversample_6_crouch_jump_tilt_width_192_bf16_fast_turns_code_dim_{size}": (
            "CMU oversampled 6x, squats, jumps and tilts added, 192 wide, mixed precision, turns "
            f"in as few as 4 frames, and {size}-dimensional codes (not 32): the codebooks cost "
            "the HumanML3D clips 8.5 mm in the facing frame where they cost Bandai Namco's 2.7 "
            "(tools/diagnose.py); fewer dimensions may cover unseen poses better",
            FAST_TURNS + ("--model.model.init_args.code_dim", str(size)),
        )
        for size in (16, 8)
    },
    "oversample_6_crouch_jump_tilt_width_192_bf16_fast_turns_facing_loss": (
        "CMU oversampled 6x, squats, jumps and tilts added, 192 wide, mixed precision, turns "
        "in as few as 4 frames, and a facing loss (weight 0.25 per radian of the facing "
        "integrated over the window): the held-out tennis serve's facing drifts 3-40 degrees "
        "from seed to seed",
        FAST_TURNS + ("--model.facing_weight", "0.25"),
    ),
    "oversample_6_crouch_jump_tilt_width_192_bf16_fast_turns_facing_loss_seed_1": (
        "CMU oversampled 6x, squats, jumps and tilts added, 192 wide, mixed precision, turns "
        "in as few as 4 frames, a facing loss, seed 1: how far chance moves that run",
        FAST_TURNS + ("--model.facing_weight", "0.25", "--seed_everything", "1"),
    ),
    "oversample_6_crouch_jump_tilt_width_192_bf16_fast_turns_code_dim_16_lean_80": (
        "CMU oversampled 6x, squats, jumps and tilts added, 192 wide, mixed precision, turns "
        "in as few as 4 frames, 16-dimensional codes, and the spine leaned up to 80 degrees "
        "forward (not 30): each alone took the HumanML3D clips to 45.8 mm in the facing frame",
        OVERSAMPLE_6
        + (
            "--data.augment",
            "{crouch: 0.3, jump: 0.2, tilt: 0.2, turn_frames: [4.0, 40.0], "
            "lean_degrees: [-10.0, 80.0]}",
        )
        + ("--model.model.init_args.dim", "192", "--trainer.precision", "bf16-mixed")
        + ("--model.model.init_args.code_dim", "16"),
    ),
    "oversample_6_crouch_jump_tilt_width_192_fast": (
        "CMU oversampled 6x, squats, jumps and tilts added, 192 wide, and faster motion: "
        "played up to 1.6x as fast (not 1.33x), limbs swung, squats and tilts made in as few "
        "as 3 frames each way (not 6): the held-out kick and tennis serve are faster than "
        "anything trained on",
        FAST,
    ),
    "oversample_6_crouch_jump_tilt_width_192_fast_seed_1": (
        "CMU oversampled 6x, squats, jumps and tilts added, 192 wide, faster motion, seed 1: "
        "how far chance moves that run",
        FAST + ("--seed_everything", "1"),
    ),
    "oversample_6_crouch_jump_tilt_lean_80": (
        "CMU oversampled 6x, squats, jumps and tilts added, and the spine leaned up to 80 "
        "degrees forward (not 30)",
        OVERSAMPLE_6
        + ("--data.augment", "{crouch: 0.3, jump: 0.2, tilt: 0.2, lean_degrees: [-10.0, 80.0]}"),
    ),
    "oversample_6_dropout": (
        "CMU oversampled 6x, and dropout 0.1 in every Transformer layer",
        OVERSAMPLE_6 + ("--model.model.init_args.dropout", "0.1"),
    ),
    "oversample_6_tilt": (
        "CMU oversampled 6x, and augmentation tilts the whole body (20%)",
        OVERSAMPLE_6 + ("--data.augment", "{tilt: 0.2}"),
    ),
    "augment_80": (
        "80% of the windows augmented (not 50%)",
        ("--data.augment", "{probability: 0.8}"),
    ),
    "fsq": (
        "FSQ (8 x 8 x 8 levels) in place of the EMA codebooks",
        ("--model.model.init_args.quantizer", "fsq"),
    ),
    "facing_loss": (
        "a facing loss (weight 0.25 per radian)",
        ("--model.facing_weight", "0.25"),
    ),
}


def seeds_of(measured: dict[str, dict]) -> dict[str, dict[int, dict]]:
    """Measured runs by recipe and seed: variant "X_seed_N" is seed N of recipe X ("seed_N"
    of the base recipe), any other variant seed 0 of itself."""
    recipes: dict[str, dict[int, dict]] = {}
    for name, results in measured.items():
        first, separator, seed = name.rpartition("seed_")
        if separator and seed.isdigit() and first in ("", *(f"{v}_" for v in VARIANTS)):
            recipes.setdefault(first.removesuffix("_") or "base", {})[int(seed)] = results
        else:
            recipes.setdefault(name, {})[0] = results
    return recipes


def chance(measured: dict[str, dict]) -> list[str]:
    """How far the seed alone moved each recipe trained with several seeds: a difference
    between single runs smaller than that is not a finding."""

    def listed(items: list) -> str:
        return " and ".join([", ".join(map(str, items[:-1])), str(items[-1])])

    lines = []
    for recipe, runs in seeds_of(measured).items():
        if len(runs) < 2:
            continue
        seeds = sorted(runs)
        scores = [score(runs[seed]) for seed in seeds]
        tests = [f"{runs[seed]['humanml3d']['mpjpe_mm']:.1f}" for seed in seeds]
        lines.append(
            f"Chance: {VARIANTS[recipe][0]}, seeds {listed(seeds)}: score "
            f"{listed([f'{value:.2f}' for value in scores])}, HumanML3D {listed(tests)} mm; "
            f"single runs closer than {max(scores) - min(scores):.2f} in score do not tell "
            "recipes apart."
        )
    return [""] + lines if lines else []


def recipe_from(config: dict) -> dict:
    """What a run learns with under resolved settings ``config`` (saved by LightningCLI or
    printed): its seed and its ``learning_settings``."""
    return {"seed_everything": config["seed_everything"], "settings": learning_settings(config)}


def recipe_of(name: str) -> dict:
    """What variant ``name`` trains with now (``recipe_from`` configs/cpu.yaml with the base's
    and the variant's arguments, as LightningCLI resolves them)."""
    return recipe_from(resolved_config(BASE + VARIANTS[name][1]))


def changed(name: str, trained: dict) -> dict[str, list]:
    """Where ``trained`` (a ``RECORD`` entry, the shipped model's training record or
    ``recipe_from`` a run's saved settings) differs from what variant ``name`` trains with now:
    {key: [trained, now]}; a key it lacks differs (it was recorded before it kept settings),
    an argument its settings lack counts as its default (``with_code_defaults``)."""
    now = recipe_of(name)
    then = {key: trained.get(key, "(unset)") for key in now}
    if isinstance(then["settings"], dict):
        then["settings"] = with_code_defaults(then["settings"])
    return settings_differences(then, now)


def entry_of(
    name: str, tokenizer: Tokenizer, steps: int, global_step: int, sets: dict, splits: dict
) -> dict:
    """The ``RECORD`` entry of variant ``name``'s ``tokenizer``, measured on ``sets`` today."""
    return {
        "date": datetime.date.today().isoformat(),
        "steps": steps,
        "global_step": global_step,
        "checkpoint": tokenizer.identity,
        **recipe_of(name),
        "splits": splits,
        "results": measure(tokenizer, sets),
    }


def measure_runs(
    names: list[str], out: Path, steps: int, sets: dict, splits: dict[str, str]
) -> dict[str, dict]:
    """Measure each variant's run in ``out``: its entry in ``RECORD``. A run whose checkpoint
    ``RECORD`` holds, measured as now (``recorded``), is not measured again."""
    known = recorded(out, steps, sets, splits)
    entries = {}
    for name in names:
        tokenizer = Tokenizer.from_pretrained(out / name / "tokenizer")
        if known.get(name, {}).get("checkpoint") == tokenizer.identity:
            continue
        saved = json.loads((out / name / "tokenizer" / CONFIG_FILE).read_text())
        global_step = saved["training"].get("global_step", steps)
        entries[name] = entry_of(name, tokenizer, steps, global_step, sets, splits)
    return entries


def shipped_entry(
    out: Path, steps: int, sets: dict, splits: dict[str, str], known: Iterable[str]
) -> dict[str, dict]:
    """The shipped model as the entry of the variant it was trained as, when that was a run of
    ``out`` not ``known`` (measured) and its held-out clips are ``sets``: measured from
    parttok/pretrained, so its row stays when its run is gone."""
    shipped = json.loads((PRETRAINED_DIR / METRICS).read_text())
    training = shipped["training"]
    run = REPO / training.get("run", "")
    if run.parent.resolve() != out.resolve() or run.name not in VARIANTS or run.name in known:
        return {}
    if training.get("steps") != steps or not same_sets(shipped["results"], sets):
        return {}  # other steps, or held-out clips it may have trained on
    if changed(run.name, training):
        return {}  # trained otherwise than its variant now (or the card does not say)
    tokenizer = Tokenizer.from_pretrained()
    return {run.name: entry_of(run.name, tokenizer, steps, steps, sets, splits)}


def trained_otherwise(run: Path, name: str, steps: int) -> str | None:
    """Why ``run`` is not a run of variant ``name`` for ``steps`` steps as it trains now (its
    saved settings differ, or its step cap), or None when it is."""
    saved = saved_config(run)
    if saved["trainer"]["max_steps"] != steps:
        return f"it trained for {saved['trainer']['max_steps']} steps, not {steps}"
    differs = changed(name, recipe_from(saved))
    return f"it trained otherwise than the variant now ({', '.join(differs)})" if differs else None


def read_record() -> dict[str, dict]:
    """``RECORD``: run folder (``in_repo``) -> variant -> entry; empty before the first."""
    return json.loads(RECORD.read_text()) if RECORD.is_file() else {}


def recorded(out: Path, steps: int, sets: dict, splits: dict[str, str]) -> dict[str, dict]:
    """The variants ``RECORD`` holds for ``out``, trained ``steps`` steps with the recipe of now
    (``recipe_of``) and measured on the ``sets`` of now; their runs may be gone."""
    return {
        name: entry
        for name, entry in read_record().get(in_repo(out), {}).items()
        if name in VARIANTS
        and entry["steps"] == steps
        and entry["splits"] == splits
        and not changed(name, entry)
        and same_sets(entry["results"], sets)
    }


def update_record(
    out: Path, steps: int, sets: dict, splits: dict[str, str], entries: dict[str, dict]
) -> dict:
    """Put the new ``entries`` into ``RECORD``; return them with the recorded ones that still
    count (``recorded``), the new ones first in precedence."""
    if entries:
        record = read_record()
        record[in_repo(out)] = {**record.get(in_repo(out), {}), **entries}
        write_text(RECORD, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return {**recorded(out, steps, sets, splits), **entries}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="optimiser steps per variant")
    parser.add_argument("--minutes", type=float, default=60, help="wall-clock cap per variant")
    parser.add_argument("--out", type=Path, help="default: runs/recipe<steps>")
    parser.add_argument("--data", type=Path, default=REPO / "data")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--evaluate-only", action="store_true", help="measure the runs not yet measured"
    )
    parser.add_argument("--only", nargs="+", choices=VARIANTS, help="train only these variants")
    args = parser.parse_args()
    args.out = (args.out or REPO / "runs" / f"recipe{args.steps}").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.evaluate_only:
        for name in args.only or VARIANTS:
            extra = VARIANTS[name][1]
            print(f"training {name} for {args.steps} steps", flush=True)
            train(args.out / name, args.minutes, args.steps, BASE + extra)
    trained = [name for name in VARIANTS if (args.out / name / "tokenizer").is_dir()]
    current = training_splits(args.data)  # on other splits, held-out figures count training clips
    for name in list(trained):
        unfit = splits_changed(args.out / name, current) or trained_otherwise(
            args.out / name, name, args.steps
        )
        if unfit:
            print(f"{name} not measured: {unfit}", flush=True)
            trained.remove(name)
    torch.set_num_threads(os.cpu_count() or 1)
    sets = evaluation_sets(args.data, args.shared)
    entries = measure_runs(trained, args.out, args.steps, sets, current)
    known = recorded(args.out, args.steps, sets, current).keys() | entries.keys()
    entries |= shipped_entry(args.out, args.steps, sets, current, known)
    entries = update_record(args.out, args.steps, sets, current, entries)
    if not entries:
        raise SystemExit(f"no variant trained in {args.out} on the current splits: train them")
    section = table(args, sets, entries)
    replace_markdown_section(REPO / "BENCHMARKS.md", section)
    print(section)
    return 0


def table(args: argparse.Namespace, sets: dict, entries: dict[str, dict]) -> str:
    """The "Training recipe" section of BENCHMARKS.md: a row per measured variant."""
    lines = [
        f"## Training recipe, {args.steps} steps",
        "",
        f"Command: `python tools/recipe.py --steps {args.steps} --out {in_repo(args.out)}` "
        "(after `python "
        f"tools/prepare_data.py`). {machine_description()}, no GPU; "
        f"{datetime.date.today().isoformat()}. Every variant trains {args.steps} optimiser "
        "steps of configs/cpu.yaml with the base recipe's settings (128 wide, 32-dimensional "
        "codes, turns over 10-40 frames, float32) and "
        "differs from it only as its name says; measured as the "
        'model card measures the shipped model (MPJPE, mm; "facing frame": each frame in its '
        "own facing frame, without the drift of the integrated facing). Held out (splits by "
        f"capture): {len(sets['bandai_val'])} Bandai Namco 2 validation clips; CMU val "
        f"{', '.join(sets['cmu_val'])}; the {len(sets['humanml3d'])} HumanML3D clips. Score: "
        "the mean of the two validation sets, what tools/release.py chooses a release on; the "
        "HumanML3D clips are the test, never chosen on. A run measured earlier keeps its row "
        f"(tools/{RECORD.name}; runs/ is not kept) while the settings its variant resolves to "
        "(configs/cpu.yaml with the base's and the variant's arguments), its seed, the splits "
        "and the held-out clips are unchanged; the measured column gives its date.",
        "",
        "| variant | Bandai val | CMU val | score | HumanML3D | HumanML3D, facing frame "
        "| measured | HumanML3D per clip |",
        "|---|---|---|---|---|---|---|---|",
    ]
    shipped = json.loads((PRETRAINED_DIR / METRICS).read_text())["results"]["humanml3d"]
    measured = {}
    for name in (name for name in VARIANTS if name in entries):
        entry = entries[name]
        label = VARIANTS[name][0]
        if entry["checkpoint"] == shipped["checkpoint"]:
            label = f"**{label}: shipped**"
        if entry["global_step"] != args.steps:  # stopped by --minutes: the rate had not decayed
            label = f"{label} ({entry['global_step']} steps: stopped by the time cap)"
        results = measured[name] = entry["results"]
        clips = results["humanml3d"].get("per_clip_mpjpe_mm", {})
        lines.append(
            f"| {label} | {results['bandai_val']['mpjpe_mm']:.1f} | "
            f"{results['cmu_val']['mpjpe_mm']:.1f} | {score(results):.2f} | "
            f"{results['humanml3d']['mpjpe_mm']:.1f} | "
            f"{results['humanml3d']['facing_mpjpe_mm']:.1f} | {entry['date']} | "
            + ", ".join(f"{clip} {value:.1f}" for clip, value in clips.items())
            + " |"
        )
    lines += chance(measured)
    untrained = [VARIANTS[name][0] for name in VARIANTS if name not in entries]
    if untrained:
        lines += [
            "",
            f"Not trained at {args.steps} steps on these splits yet: {'; '.join(untrained)}.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
