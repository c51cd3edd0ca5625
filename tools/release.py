"""Train the shipped tokenizer, measure it, and release it into parttok/pretrained/ with its
model card, only when it beats the model shipped now.

    python tools/prepare_data.py                       # once
    python tools/release.py --train --minutes 55       # configs/cpu.yaml (3000 steps), then release
    python tools/release.py --train --steps 3000 --minutes 55 --seed 1   # explicit, another seed
    python tools/release.py --run runs/release         # release an already trained run
    python tools/release.py --run runs/release --force --reason "..."    # overrule the rule

The card's command reproduces the run: its step cap, wall-clock budget and seed; a run trained
with other settings than configs/cpu.yaml is released only with --force, the card saying where
it differed.

Measured on clips the model never trained on: the Bandai Namco 2 validation split
(in-distribution), the validation splits of the CMU clips, and the HumanML3D reference clips
(AMASS motion from other performers and capture systems: unseen). A release is chosen on the
two validation sets only (``score``); the HumanML3D clips are the test, reported, never chosen
on, so that their figure is not flattered by the choice.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import functools
import hashlib
import importlib
import inspect
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import typing
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml

from parttok.augment import Augmentation
from parttok.data import HumanML3DFolder, MotionDataModule
from parttok.evaluation import evaluate_clips
from parttok.io import atomic_path, machine_description, write_text
from parttok.tokenizer import CONFIG_FILE, PRETRAINED_DIR, WEIGHTS_FILE, Tokenizer
from parttok.training import TokenizerModule

REPO = Path(__file__).resolve().parents[1]
CARD = "MODEL_CARD.md"
METRICS = "metrics.json"
SPLITS = "splits.json"  # in a run folder: which clips it trained on, by folder


def train(run: Path, minutes: float, steps: int | None = None, extra: tuple = ()) -> float:
    """Train with configs/cpu.yaml (plus ``extra`` arguments) for ``minutes`` of wall clock
    (or ``steps`` optimiser steps, whichever ends first; the learning rate then follows the
    steps); return the seconds taken."""
    command = [
        sys.executable, "-m", "parttok", "train", "--config", "configs/cpu.yaml",
        "--trainer.max_time", max_time(minutes), "--trainer.default_root_dir", str(run),
        "--trainer.enable_progress_bar", "false",
        *(["--trainer.max_steps", str(steps)] if steps else []), *extra,
    ]  # fmt: skip
    run.mkdir(parents=True, exist_ok=True)
    record_splits(run)
    start = time.monotonic()
    with open(run.parent / f"{run.name}.log", "w") as log:
        subprocess.run(command, cwd=REPO, stdout=log, stderr=log, check=True)
    return time.monotonic() - start


def max_time(minutes: float) -> str:
    """Lightning's ``max_time`` ("DD:HH:MM:SS") for a budget of ``minutes``."""
    seconds = round(minutes * 60)
    days, hours, rest = seconds // 86400, seconds // 3600 % 24, seconds % 3600
    return f"{days:02d}:{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def budget_minutes(max_time: str) -> float:
    """The minutes of a Lightning ``max_time`` ("DD:HH:MM:SS")."""
    days, hours, minutes, seconds = map(int, max_time.split(":"))
    return days * 1440 + hours * 60 + minutes + seconds / 60


def in_repo(path: Path) -> str:
    """``path`` as the tools print it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def record_splits(run: Path) -> None:
    """Write which clips ``run`` trains on (``training_splits`` of data/) into the run."""
    write_text(run / SPLITS, json.dumps(training_splits(REPO / "data"), indent=2) + "\n")


def training_splits(data: Path) -> dict[str, str]:
    """Per converted folder under ``data``, the ``clip_digest`` of its train split."""
    return {
        folder.name: clip_digest(HumanML3DFolder(folder).ids("train"))
        for folder in sorted(data.iterdir())
        if (folder / "train.txt").is_file()
    }


def splits_changed(run: Path, current: dict[str, str]) -> str | None:
    """Why ``run`` cannot be measured on held-out sets whose train splits are ``current``
    (``training_splits``): it trained on other splits of a folder it read, or did not record
    them; None when it can."""
    recorded = run / SPLITS
    if not recorded.is_file():
        return f"{recorded} is missing: train with tools/release.py, recipe.py or compare.py"
    trained = json.loads(recorded.read_text())
    changed = [
        Path(folder).name
        for folder in saved_data(run)["data_dirs"]
        if trained.get(Path(folder).name) != current.get(Path(folder).name)
    ]
    if changed:
        return f"{run} trained on other splits of {', '.join(sorted(set(changed)))} than now"
    return None


def saved_config(run: Path) -> dict:
    """The configuration a run trained with, as LightningCLI saved it (in its latest
    ``logs/version_N/``, or ``logs/`` for runs from before versioned logs)."""
    found = sorted(
        (run / "logs").glob("version_*/config.yaml"),
        key=lambda path: int(path.parent.name.split("_")[-1]),
    )
    saved = found[-1] if found else run / "logs" / "config.yaml"
    if not saved.is_file():
        raise SystemExit(f"{saved} is missing: use a run trained by parttok train")
    return yaml.safe_load(saved.read_text())


def saved_data(run: Path) -> dict:
    """The ``data`` settings a run trained with."""
    return saved_config(run)["data"]


def resolved_config(extra: tuple[str, ...] = ()) -> dict:
    """configs/cpu.yaml with the ``extra`` arguments as LightningCLI resolves them, every
    default filled in (``parttok train ... --print_config``, once per distinct ``extra``;
    nothing trains)."""
    return copy.deepcopy(_printed_config(tuple(extra)))


@functools.cache
def _printed_config(extra: tuple[str, ...]) -> dict:
    from parttok.cli.train import run_lightning_cli  # Lightning only for the tools that resolve
    from parttok.errors import InputError

    printed, errors = io.StringIO(), io.StringIO()
    arguments = ["--config", str(REPO / "configs" / "cpu.yaml"), *extra, "--print_config"]
    code: object = "no exit"
    refused = ""
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        try:
            run_lightning_cli(arguments)
        except SystemExit as exit_:
            code = exit_.code
        except InputError as error:  # a bad argument: parttok train's one-line error
            code, refused = 2, f"error: {error}"
    said = errors.getvalue() + refused
    try:
        config = yaml.safe_load(printed.getvalue()) if code in (0, None) else None
    except yaml.YAMLError:
        config = None  # printed something else (help)
    if not isinstance(config, dict):
        reason = " ".join(said[said.rfind("error:") :].split()) or f"exit code {code}"
        raise SystemExit(f"configs/cpu.yaml {' '.join(extra)} does not resolve: {reason}")
    sys.stderr.write(said)  # what LightningCLI warned about stays shown
    return config


# Trainer settings a run may change without changing what it learns: its budget (in the
# command: --steps, --minutes) and what it reports.
BUDGET_AND_OUTPUT = {
    "default_root_dir", "max_time", "max_steps", "enable_progress_bar", "logger",
    "log_every_n_steps", "enable_model_summary",
}  # fmt: skip


def settings_differences(ours: object, theirs: object, key: str = "") -> dict[str, list]:
    """Where settings ``ours`` differ from ``theirs``: {dotted key: [ours, theirs]}; another
    class (``class_path``) or a section set against one unset is one difference, not one per
    argument, and a key one side lacks differs."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        if ours.get("class_path") == theirs.get("class_path"):
            nested = (
                settings_differences(ours.get(name, "(unset)"), theirs.get(name, "(unset)"),
                                     f"{key}.{name}" if key else str(name))
                for name in sorted(ours.keys() | theirs.keys(), key=str)
            )  # fmt: skip
            return {name: pair for found in nested for name, pair in found.items()}
        ours, theirs = ours.get("class_path"), theirs.get("class_path")
    return {} if ours == theirs else {key: [ours, theirs]}


LEARNING_SECTIONS = ("data", "model", "trainer", "optimizer", "lr_scheduler")


def learning_settings(config: dict) -> dict:
    """What a run learns with under resolved settings ``config`` (a saved or printed
    LightningCLI configuration): its data, model, trainer and optimiser sections without the
    budget and output (``BUDGET_AND_OUTPUT``) and without the seed, every argument the code
    takes now filled in (``with_code_defaults``)."""
    return with_code_defaults({name: config.get(name) for name in LEARNING_SECTIONS})


# The classes whose arguments the sections of a LightningCLI configuration are.
SECTION_CLASSES = {"data": MotionDataModule, "model": TokenizerModule, "trainer": pl.Trainer}


def with_code_defaults(settings: dict) -> dict:
    """A copy of ``settings`` (``learning_settings``) with each argument a section's class (or
    a nested ``class_path``'s) takes but ``settings`` lack set to its default: an argument
    added to the code after a run was recorded did then what its default does now (arguments
    are added with the default that keeps what the code did), so that run still counts. An
    argument the code no longer takes is dropped where it was off (false, 0, empty) or held
    the value its class lists as doing nothing (``REMOVED_SETTINGS``: a size of an option
    that was off): options are removed once measurements rejected them, and off they did
    nothing. The trainer's budget and output (``BUDGET_AND_OUTPUT``) are left out."""
    settings = copy.deepcopy(settings)
    for name, cls in SECTION_CLASSES.items():
        if isinstance(settings.get(name), dict):
            settings[name] = _with_defaults(settings[name], cls)
    for name in BUDGET_AND_OUTPUT:
        (settings.get("trainer") or {}).pop(name, None)
    return settings


def _with_defaults(arguments: dict, cls: type) -> dict:
    parameters = inspect.signature(cls).parameters
    defaults = {
        key: json.loads(json.dumps(parameter.default))  # tuples as lists, as YAML gives them
        for key, parameter in parameters.items()
        if key not in arguments and _plain(parameter.default)
    }
    inert = getattr(cls, "REMOVED_SETTINGS", {})
    removed = {
        key
        for key, value in arguments.items()
        if key not in parameters and (not value or (key in inert and value == inert[key]))
    }
    filled = {key: value for key, value in {**arguments, **defaults}.items() if key not in removed}
    hints = typing.get_type_hints(cls.__init__)
    for key, value in filled.items():
        if isinstance(value, dict) and isinstance(value.get("init_args"), dict):
            nested = _class_at(value["class_path"])
            if nested is not None:  # a class the code no longer has keeps its recorded arguments
                filled[key] = {**value, "init_args": _with_defaults(value["init_args"], nested)}
        elif isinstance(value, dict) and (fields := _dataclass_in(hints.get(key))) is not None:
            filled[key] = _with_defaults(value, fields)  # a dataclass given as a dict (augment)
    return filled


def _dataclass_in(hint: object) -> type | None:
    """The dataclass a type hint names or holds in a union (``Augmentation | dict | None``)."""
    for candidate in typing.get_args(hint) or (hint,):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _class_at(class_path: str) -> type | None:
    """The class a configuration's ``class_path`` names, None if the code has none there."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except (ImportError, ValueError):
        return None


def _plain(default: object) -> bool:
    """Whether ``default`` is a value a YAML configuration could hold (not "no default")."""
    try:
        json.dumps(default)  # inspect.Parameter.empty (no default) is a class: not a value
    except TypeError:
        return False
    return True


def reproduction(saved: dict, cpu: dict) -> tuple[str, dict[str, list]]:
    """How ``release.py --train`` reproduces a run trained with ``saved`` settings: its
    options (the run's step cap, wall-clock budget and seed) and the settings in which the run
    differs from ``cpu`` (``resolved_config()``), which no option reproduces: {key: [run,
    cpu.yaml]}."""
    budget = budget_minutes(saved["trainer"]["max_time"])
    steps = saved["trainer"]["max_steps"]
    seed = saved["seed_everything"]
    options = (
        (f" --steps {steps}" if steps and steps > 0 else "")
        + f" --minutes {budget:g}"
        + (f" --seed {seed}" if seed != cpu["seed_everything"] else "")
    )
    return options, settings_differences(learning_settings(saved), learning_settings(cpu))


def windows_text(data: dict) -> str:
    """How training windows were made under ``data`` settings. An augmentation field the
    settings lack did not exist when the run trained: that change was off."""
    augment = data.get("augment")
    if augment is not None:
        off = {"turn_degrees": 0.0, "arm_swap": 0.0, "limb_swing": 0.0}
        augment = Augmentation.from_settings({**off, **augment}).describe()
    mirrored = "mirrored" if data.get("mirror") else "not mirrored"
    return f"windows are {mirrored} left/right; {augment or 'no augmentation'}"


def folders_text(data: dict) -> str:
    """The training folders under ``data`` settings, with how often each is listed."""
    folders = Counter(Path(folder).name for folder in data["data_dirs"])
    return ", ".join(f"{name} ({n} times: oversampled)" if n > 1 else name
                     for name, n in folders.items())  # fmt: skip


def evaluation_sets(data: Path, shared: Path) -> dict[str, dict]:
    bandai = HumanML3DFolder(data / "bandai")
    cmu = [HumanML3DFolder(data / name) for name in ("cmu", "cmu-iclone")]
    reference = HumanML3DFolder(shared / "humanml3d")
    return {
        "bandai_val": {i: bandai.features(i) for i in bandai.ids("val")},
        "cmu_val": {f"{f.root.name}/{i}": f.features(i) for f in cmu for i in f.ids("val")},
        "humanml3d": {i: reference.features(i) for i in reference.ids()},
    }


# Candidates per part and step the card's refined codes are chosen among (``--refine``).
REFINE = 8


def measure(tokenizer: Tokenizer, sets: dict, refine: int = 0) -> dict:
    """Each set's evaluation report through the nearest codes; with ``refine``, also the
    errors through codes refined among that many (``parttok.refine``) under "refined"."""
    results = {}
    for name, clips in sets.items():
        report = evaluate_clips(tokenizer, clips)
        if refine:
            refined = evaluate_clips(tokenizer, clips, refine=refine)
            keys = ("refine", "mpjpe_mm", "pa_mpjpe_mm", "facing_mpjpe_mm")
            report["refined"] = {key: refined[key] for key in keys}
        rows = report.pop("per_clip")
        if len(rows) <= 10:  # a few clips: keep each one's figure
            report["per_clip_mpjpe_mm"] = {row["clip"]: row["mpjpe_mm"] for row in rows}
        report["clip_digest"] = clip_digest(clips)
        results[name] = report
    return results


def clip_digest(ids: Iterable[str]) -> str:
    """A short hash of which clips a set holds (its ids, or a dict keyed by them): two
    models' figures compare only on equal digests."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def same_sets(recorded: dict, sets: dict) -> bool:
    """Whether the sets the shipped model was measured on (``recorded``: its metrics.json
    results) are the ``sets`` measured now. When they differ (the splits changed), the
    shipped model may have trained on clips now held out, so its figures on them flatter it."""
    return recorded.keys() == sets.keys() and all(
        recorded[name].get("clip_digest") == clip_digest(clips) for name, clips in sets.items()
    )


VALIDATION = ("bandai_val", "cmu_val")  # what a release is chosen on (not the HumanML3D test)


def score(results: dict) -> float:
    """Lower is better: mean MPJPE over the validation sets."""
    return sum(results[name]["mpjpe_mm"] for name in VALIDATION) / len(VALIDATION)


def model_card(tokenizer: Tokenizer, results: dict, training: dict) -> str:
    rows = "\n".join(
        f"| {name} | {r['clips']} | {r['frames']} | {r['mpjpe_mm']:.1f} | {r['pa_mpjpe_mm']:.1f} | "
        f"{r['facing_mpjpe_mm']:.1f} | {r['accel_error']:.2f} | "
        f"{sum(r['usage'].values()) / len(r['usage']):.0%} |"
        for name, r in results.items()
    )
    parts = results["humanml3d"]["per_part_mpjpe_mm"]
    per_part = ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
    clips = results["humanml3d"].get("per_clip_mpjpe_mm", {})
    parameters = sum(p.numel() for p in tokenizer.model.parameters())
    world, facing = (results["humanml3d"][key] for key in ("mpjpe_mm", "facing_mpjpe_mm"))
    drift = (
        ": the rest is the facing drifting as the root's turning speed is integrated"
        if facing < world
        else ", no lower than in the world frame: the facing's drift costs nothing on these clips"
    )
    config = tokenizer.model.config
    data = textwrap.fill(
        "- Data: the train splits (80%, by a hash of each capture: a CMU trial on both rigs "
        "falls in one split) of Bandai Namco Research "
        "Motion Dataset 2 (2,902 clips), the CMU BVH clips (5) and the CMU clips on the "
        "Character Creator rig (61), converted with `parttok convert` (`python "
        f"tools/prepare_data.py`); folders {training['folders']}; {training['windows']}.",
        width=95,
        subsequent_indent="  ",
        break_on_hyphens=False,
    )
    return f"""# parttok pretrained tokenizer

A six-part Transformer VQ-VAE ({type(tokenizer.model).__name__}): parts
{", ".join(tokenizer.parts)}; {tokenizer.codebook_size} codes per part; one code per part every
{tokenizer.frames_per_step} frames at {tokenizer.fps} fps: {tokenizer.bits_per_second:.0f} bits/s.
{parameters / 1e6:.2f} M parameters: width {config["dim"]}, {config["encoder_depth"]} encoder and \
{config["decoder_depth"]} decoder layers; gradients pass
the codebooks straight through. Identity `{tokenizer.identity}`. Input: HumanML3D 263-dim
features (22 SMPL joints, Y up, metres, 20 fps), normalised with the statistics stored beside
the weights (`stats.mean`, `stats.std` in `model.safetensors`).

Load it with `parttok.Tokenizer.from_pretrained()`; it is safetensors + JSON, nothing is
unpickled.

## Training
{data}
  The BVH import gives each rig's pelvis and spine3 joint groups SMPL's shape
  (`parttok.skeleton.conform_rigid_groups`); features converted by parttok before that
  change differ from what this model saw: convert BVH again.
- Reproduce (runs `parttok train --config configs/cpu.yaml`):
  `python tools/prepare_data.py && {training["command"]}`{differed(training)}.
- Compute: {training["seconds"] / 60:.0f} minutes on {training["machine"]}, {training["steps"]}
  optimiser steps; trained {training["date"]}{f" ({training['note']})" if training["note"] else ""}.

## Measured (`python tools/release.py --run {training["run"]}`)
Clips never trained on; MPJPE pelvis-aligned in mm, every frame counted once; "facing" =
MPJPE with each frame in its own facing frame (without the drift of the facing that the
root's turning speed integrates to); usage = share of each part's codebook used on that set.
A release is chosen on the two validation sets (bandai_val, cmu_val); the HumanML3D clips are
the test, never chosen on.{choice_text(results, training)}

| set | clips | frames | MPJPE | PA-MPJPE | facing | accel (mm/frame^2) | codebook usage |
|---|---|---|---|---|---|---|---|
{rows}

{refined_text(results)}Per-part MPJPE on the HumanML3D clips (mm): {per_part}.
Per clip (mm): {", ".join(f"{k} {v:.1f}" for k, v in clips.items()) or "not kept (over 10 clips)"}.
In each frame's own facing frame the HumanML3D error is {facing:.1f} mm{drift}
(HumanML3D's smoothed facing turns up to 28 degrees in one frame in the tennis serve 012314;
the training clips rarely turn faster than 2, and the `turn` augmentation adds such turns).
The HumanML3D clips are AMASS motion from other performers, skeletons and capture systems,
and actions the training data lacks: there the error is several times the in-distribution
error, so the model does not yet generalise beyond the kind of motion it trained on (96% of
the distinct frames it trained on are Bandai Namco's ten actions; listing the CMU folders
several times weighs them more, not more varied). Expect the HumanML3D figure, not the Bandai
one, on new motion, and expect it to move with chance: four clips are a small set, and the
same recipe trained with another seed can differ by several millimetres there (BENCHMARKS.md,
"Training recipe": the "Chance" line).

## Data licences and attribution
- Bandai Namco Research Motion Dataset 2: CC BY-NC 4.0, (c) Bandai Namco Research Inc.
  These weights are derived from it: **non-commercial use only**, with attribution.
- CMU Graphics Lab Motion Capture Database: "The data used in this project was obtained
  from mocap.cs.cmu.edu. The database was created with funding from NSF EIA-0196217."
- The HumanML3D clips (from AMASS, non-commercial research only) were used for evaluation
  only, never for training.
"""


def refined_text(results: dict) -> str:
    """The card's paragraph on codes refined through the decoder, if they were measured."""
    refined = {name: r["refined"] for name, r in results.items() if "refined" in r}
    if not refined:
        return ""
    count = next(iter(refined.values()))["refine"]
    figures = "; ".join(
        f"{name} {r['mpjpe_mm']:.1f} (PA {r['pa_mpjpe_mm']:.1f}, facing {r['facing_mpjpe_mm']:.1f})"
        for name, r in refined.items()
    )
    return (
        textwrap.fill(
            f"Through codes refined among the {count} nearest (`--refine {count}`, "
            "`parttok.refine`: each step's candidates tried through the decoder, part by "
            "part, the root's last; the same tokens at the same bits per second), MPJPE (mm): "
            f"{figures}. Encoding then runs about a hundred times slower in float32, fifty in "
            'bf16-mixed (BENCHMARKS.md, "Refined codes").',
            width=95,
            break_on_hyphens=False,
        )
        + "\n\n"
    )


def differed(training: dict) -> str:
    """What the Reproduce line adds when the run was not trained as the command trains."""
    if not training.get("differs"):
        return ""
    return f" (this model's run differed from configs/cpu.yaml in {', '.join(training['differs'])})"


def choice_text(results: dict, training: dict) -> str:
    """The card's account of the choice: the model it replaced, and why when forced."""
    replaced, text = training.get("replaced"), ""
    if replaced and replaced["score"] is None:
        text = f"It replaced `{replaced['identity']}`, not compared: {replaced['why']}."
    elif replaced:
        text = (
            f"It replaced `{replaced['identity']}`: validation score (mean MPJPE of the two "
            f"sets) {score(results):.2f} mm against {replaced['score']:.2f}."
        )
    if reason := training.get("reason", "").strip():
        text += f" Released by hand (`--force`) because {reason.rstrip('.')}."
    return "".join("\n" + line for line in textwrap.wrap(text.strip(), width=95))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "release")
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--minutes", type=float, default=40)
    parser.add_argument("--steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument("--seed", type=int, help="with --train: not configs/cpu.yaml's seed")
    parser.add_argument("--data", type=Path, default=REPO / "data")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--force",
        action="store_true",
        help="release even if not better, not comparable (splits unrecorded or changed) or "
        "trained otherwise than configs/cpu.yaml; needs --reason",
    )
    parser.add_argument("--reason", default="", help="why --force: said in the card")
    parser.add_argument("--note", default="", help="how the run was trained, for the card")
    args = parser.parse_args()
    if args.seed is not None and not args.train:
        parser.error("--seed is the seed to train with: it needs --train")
    if args.force != bool(args.reason.strip()):
        parser.error("--force and --reason go together: the card says why the rule was overruled")
    seconds = None
    if args.train:
        args.run.parent.mkdir(parents=True, exist_ok=True)
        seed = () if args.seed is None else ("--seed_everything", str(args.seed))
        seconds = train(args.run, args.minutes, args.steps, seed)
    saved = saved_config(args.run)  # before the measurements: a run without one fails fast
    data = saved["data"]
    options, differs = reproduction(saved, resolved_config())
    if differs and not args.force:
        print(
            f"not released: {args.run} trained with other settings than configs/cpu.yaml "
            f"({', '.join(differs)}), so the card cannot say how to reproduce it; release "
            "with --force --reason '...' to ship it anyway"
        )
        return 1
    unfit = splits_changed(args.run, training_splits(args.data))
    if unfit and not args.force:
        print(
            f"not released: {unfit}; its held-out figures would count clips it trained on "
            "(release with --force --reason '...' to ship it anyway)"
        )
        return 1
    torch.set_num_threads(os.cpu_count() or 1)
    candidate = Tokenizer.from_pretrained(args.run / "tokenizer")
    sets = evaluation_sets(args.data, args.shared)
    results = measure(candidate, sets, refine=REFINE)
    print(json.dumps({name: round(r["mpjpe_mm"], 1) for name, r in results.items()}))
    shipped_metrics = PRETRAINED_DIR / METRICS
    replaced = None  # the shipped model's identity, and its score when the two compare
    redone: dict = {}  # the card of the shipped model redone: how it was trained stays
    if shipped_metrics.is_file():
        shipped_record = json.loads(shipped_metrics.read_text())
        recorded = shipped_record["results"]
        comparable = same_sets(recorded, sets) and not unfit
        shipped = Tokenizer.from_pretrained(PRETRAINED_DIR)
        if shipped.identity == candidate.identity:  # the card redone: what it replaced stays
            redone = shipped_record.get("training", {})
            replaced = redone.get("replaced")
        elif comparable:
            replaced = {"identity": shipped.identity, "score": score(measure(shipped, sets))}
        else:
            why = unfit or "the shipped model was measured on other clips"
            replaced = {"identity": shipped.identity, "score": None, "why": why}
        if not comparable and not args.force:
            unrecorded = any("clip_digest" not in r for r in recorded.values())
            print(
                "not released: "
                + (
                    "the shipped model's metrics.json does not record which clips it was "
                    "measured on"
                    if unrecorded
                    else "the held-out sets differ from those the shipped model was measured "
                    "on (the splits changed), so it may have trained on some of them"
                )
                + "; compare both recipes trained on the current splits (tools/recipe.py), "
                "then release with --force --reason '...'"
            )
            return 1
    beaten = not replaced or replaced["score"] is None or score(results) < replaced["score"]
    if not beaten and not args.force:
        print(f"not released: {score(results):.2f} mm vs shipped {replaced['score']:.2f} mm")
        return 1
    config = json.loads((args.run / "tokenizer" / CONFIG_FILE).read_text())
    training = {
        "command": f"python tools/release.py --train{options}",
        "differs": differs,
        "seconds": config["training"].get("seconds", seconds or args.minutes * 60),
        "steps": config["training"].get("global_step"),
        "machine": f"{machine_description()}, no GPU",
        "date": redone.get("date", datetime.date.today().isoformat()),
        "note": args.note or redone.get("note", ""),
        "reason": args.reason,
        "replaced": replaced,
        "folders": folders_text(data),
        "windows": windows_text(data),
        "run": in_repo(args.run),
        "seed_everything": saved["seed_everything"],
        "settings": learning_settings(saved),
    }
    PRETRAINED_DIR.mkdir(exist_ok=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        with atomic_path(PRETRAINED_DIR / name) as temporary:
            shutil.copyfile(args.run / "tokenizer" / name, temporary)
    summary = {"training": training, "results": results}
    write_text(PRETRAINED_DIR / METRICS, json.dumps(summary, indent=2) + "\n")
    write_text(PRETRAINED_DIR / CARD, model_card(candidate, results, training))
    print(f"released {candidate.identity} into {PRETRAINED_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
