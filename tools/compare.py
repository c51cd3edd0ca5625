"""Train parttok and the field's tokenizers under one budget and compare them on held-out
real motion; writes the "Tokenizers side by side, N minutes each" section of BENCHMARKS.md
(with ``--augment``: "..., trained with augmentation"), one section per budget.

    python tools/prepare_data.py                   # once: data/bandai, data/cmu, data/cmu-iclone
    python tools/compare.py --minutes 20           # train every model, then evaluate
    python tools/compare.py --evaluate-only        # re-evaluate the trained runs
    python tools/compare.py --only parttok_fsq     # train only these, evaluate all --models
    python tools/compare.py --augment --models parttok continuous t2mgpt_lr2e-4 rvq_lr2e-4
                                                   # the same, every model with mirroring and
                                                   # configs/cpu.yaml's joint-space augmentation

Protocol: every model trains for the same wall-clock minutes on the same data (Bandai Namco 2
and CMU train splits without any "run" clip), ``--parallel`` runs at a time with
``--threads`` threads each. In-distribution: the Bandai Namco 2 validation clips (no "run").
Unseen: every Bandai "run" clip of the validation and test splits (an action never seen),
the CMU clips on the Character Creator rig (other performers and actions; not the captures
trained on CMU's own rig) and the HumanML3D reference clips. A run records the splits it
trained on (splits.json); one trained on other splits is not measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from parttok.data import HumanML3DFolder, capture_key
from parttok.evaluation import evaluate_clips
from parttok.io import machine_description, replace_markdown_section, write_text
from parttok.tokenizer import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from release import (  # noqa: E402 (tools/ is not a package)
    SPLITS,
    in_repo,
    max_time,
    record_splits,
    saved_config,
    saved_data,
    splits_changed,
    training_splits,
    windows_text,
)

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = "_run_"
MODELS = {
    "parttok": [],
    "t2mgpt": ["--config", "configs/t2mgpt.yaml"],
    "rvq": ["--config", "configs/rvq.yaml"],
    "continuous": ["--config", "configs/continuous.yaml"],
    # The baselines again at the learning rate their papers train with (cpu.yaml: 1e-3).
    "t2mgpt_lr2e-4": ["--config", "configs/t2mgpt.yaml", "--model.lr", "0.0002"],
    "rvq_lr2e-4": ["--config", "configs/rvq.yaml", "--model.lr", "0.0002"],
    # parttok with one change (ablations under the same budget); another seed shows how much
    # of a change is chance.
    "parttok_seed1": ["--seed_everything", "1"],
    "parttok_fsq": ["--model.model.init_args.quantizer", "fsq"],
    "parttok_facing": ["--model.facing_weight", "2.0"],
    "parttok_facing_0.25": ["--model.facing_weight", "0.25"],
    # parttok and the residual VQ with another augmentation (OWN_AUGMENTATION; --augment only)
    "parttok_no_crouch_jump_tilt": [],
    "rvq_lr2e-4_no_crouch_jump_tilt": ["--config", "configs/rvq.yaml", "--model.lr", "0.0002"],
}
# How a variant changes the common augmentation (configs/cpu.yaml's): without its squats,
# jumps and whole-body tilts, which take 20-32% off parttok's unseen error.
NO_CROUCH_JUMP_TILT = {"crouch": 0.0, "jump": 0.0, "tilt": 0.0}
OWN_AUGMENTATION = {
    "parttok_no_crouch_jump_tilt": NO_CROUCH_JUMP_TILT,
    "rvq_lr2e-4_no_crouch_jump_tilt": NO_CROUCH_JUMP_TILT,
}
LABELS = {
    "parttok": "parttok, 6 parts x 512",
    "t2mgpt": "T2M-GPT VQ-VAE, 1 x 512",
    "rvq": "MoMask residual VQ, 6 x 512",
    "continuous": "parttok continuous (no quantizer)",
    "t2mgpt_lr2e-4": "T2M-GPT VQ-VAE, 1 x 512, lr 2e-4",
    "rvq_lr2e-4": "MoMask residual VQ, 6 x 512, lr 2e-4",
    "parttok_seed1": "parttok, 6 parts x 512, seed 1",
    "parttok_fsq": "parttok, 6 parts x FSQ 8 x 8 x 8",
    "parttok_facing": "parttok, 6 parts x 512, facing loss weight 2",
    "parttok_facing_0.25": "parttok, 6 parts x 512, facing loss weight 0.25",
    "parttok_no_crouch_jump_tilt": "parttok, 6 parts x 512, without squats, jumps and tilts",
    "rvq_lr2e-4_no_crouch_jump_tilt": "MoMask residual VQ, 6 x 512, lr 2e-4, without squats, "
    "jumps and tilts",
}


def train_arguments(name: str, run: Path, minutes: float, augment: bool) -> list[str]:
    """The ``parttok train`` arguments of model ``name``: equal wall clock on the same data
    (no step cap); plain windows, or mirroring and the augmentation of configs/cpu.yaml (plus
    a variant's own: ``main`` trains those with ``augment`` only)."""
    own = json.dumps(OWN_AUGMENTATION.get(name, {}))
    mirror, augmentation = ("true", own) if augment else ("false", "null")
    return [
        "--config", "configs/cpu.yaml", *MODELS[name],
        "--data.mirror", mirror, "--data.augment", augmentation,
        "--trainer.max_time", max_time(minutes),
        "--trainer.default_root_dir", str(run),
        "--trainer.enable_progress_bar", "false",
        "--data.data_dirs", "[data/bandai, data/cmu]",
        "--data.exclude", f"[{HELD_OUT}]", "--trainer.max_steps", "-1",
    ]  # fmt: skip


def train_all(
    names: list[str], out: Path, minutes: float, threads: int, parallel: int, augment: bool
) -> dict:
    """Launch the trainings ``parallel`` at a time; return wall seconds per run."""
    pending, running, seconds = list(names), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            name = pending.pop(0)
            arguments = train_arguments(name, out / name, minutes, augment)
            command = [sys.executable, "-m", "parttok", "train", *arguments]
            (out / name).mkdir(parents=True, exist_ok=True)
            (out / name / SPLITS).unlink(missing_ok=True)  # recorded once the run succeeds
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            log = open(out / f"{name}.log", "w")  # noqa: SIM115 (closed when the run ends)
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
            running[name] = (process, time.monotonic(), log)
            print(f"training {name} for {minutes} min", flush=True)
        time.sleep(5)
        for name, (process, start, log) in list(running.items()):
            if process.poll() is not None:
                log.close()
                seconds[name] = time.monotonic() - start
                if process.returncode == 0:
                    record_splits(out / name)
                del running[name]
                print(f"{name} finished with status {process.returncode}", flush=True)
    return seconds


def evaluation_sets(data: Path, shared: Path) -> dict[str, dict[str, np.ndarray]]:
    """The held-out clip sets, as raw features by id."""
    bandai = HumanML3DFolder(data / "bandai")
    iclone = HumanML3DFolder(data / "cmu-iclone")
    trained = {capture_key(i) for i in HumanML3DFolder(data / "cmu").ids("train")}
    reference = HumanML3DFolder(shared / "humanml3d")
    in_distribution = {i: bandai.features(i) for i in bandai.ids("val") if HELD_OUT not in i}
    unseen_ids = [i for split in ("val", "test") for i in bandai.ids(split) if HELD_OUT in i]
    unseen = {i: bandai.features(i) for i in unseen_ids}
    # the Character Creator clips but those whose capture trains on CMU's own rig
    unseen |= {f"cc/{i}": iclone.features(i) for i in iclone.ids() if capture_key(i) not in trained}
    unseen |= {f"hml/{i}": reference.features(i) for i in reference.ids()}
    return {"in_distribution": in_distribution, "unseen": unseen}


def evaluate_runs(
    names: list[str], out: Path, sets: dict, data_root: Path, refine: int = 0
) -> dict:
    """Measure every run of ``names`` with an exported tokenizer that trained on the current
    splits (on others, the held-out sets would count clips it trained on). With ``refine``,
    every run with codebooks (parttok's and the baselines') is also measured through codes
    refined among that many (``parttok.refine``), as ``<name>_refined``: the same run, the same
    tokens, a slower encoder."""
    current = training_splits(data_root)
    trained = []
    for name in names:
        if not (out / name / "tokenizer").is_dir():
            print(f"{name}: no exported tokenizer in {out / name / 'tokenizer'}; skipped")
        elif unfit := splits_changed(out / name, current):
            print(f"{name}: {unfit}; skipped (train it again)")
        else:
            trained.append(name)
    if not trained:
        raise SystemExit(f"no run in {out} can be measured: train them first")
    saved = {name: saved_data(out / name) for name in trained}
    if unlike := runs_on_other_windows(saved):
        raise SystemExit(f"{unlike} in {out} trained on other windows than the rest: retrain")
    data = {name: windows_text(settings) for name, settings in saved.items()}
    results = {}
    for name in trained:
        folder = out / name / "tokenizer"
        tokenizer = Tokenizer.from_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        run = {
            "data": data[name],
            "precision": saved_config(out / name)["trainer"].get("precision") or "32-true",
            "parameters": sum(p.numel() for p in tokenizer.model.parameters()),
            "steps": config["training"].get("global_step"),
        }
        results[name] = {**run, **measured_sets(tokenizer, sets)}
        if refine and tokenizer.refinable:
            results[f"{name}{REFINED}"] = {
                **run,
                "refine": refine,
                **measured_sets(tokenizer, sets, refine),
            }
        print(f"{name}: {json.dumps({k: results[name][k]['mpjpe_mm'] for k in sets})}")
    return results


def measured_sets(tokenizer: Tokenizer, sets: dict, refine: int = 0) -> dict:
    """Each set's evaluation report through ``tokenizer`` (codes refined among ``refine``),
    the unseen set's clips also by source."""
    reports = {}
    for key, clips in sets.items():
        reports[key] = evaluate_clips(tokenizer, clips, refine=refine)
        rows = reports[key].pop("per_clip")
        if key == "unseen":
            reports[key]["by_source"] = by_source(rows)
    return reports


REFINED = "_refined"  # a run measured through refined codes (``--refine``)


def label(name: str, results: dict) -> str:
    """How the tables name a run's row."""
    if name.endswith(REFINED):
        base = name.removesuffix(REFINED)
        return f"{LABELS[base]}, codes refined among {results[name]['refine']}"
    return LABELS[name]


# Where an unseen clip comes from, by the prefix evaluation_sets gives its id (Bandai's have
# none: their ids hold HELD_OUT).
SOURCES = {"cc": "Character Creator rig", "hml": "HumanML3D"}
BANDAI_RUN = "Bandai 'run'"


def source_of(clip: str) -> str:
    """Where the unseen clip ``clip`` (an id from ``evaluation_sets``) comes from."""
    prefix = clip.split("/")[0]
    if prefix in SOURCES:
        return SOURCES[prefix]
    if "/" not in clip and HELD_OUT in clip:
        return BANDAI_RUN
    raise ValueError(f"unseen clip {clip!r} comes from no source compare.py knows")


def by_source(rows: list[dict]) -> dict[str, dict]:
    """Frame-weighted MPJPE (and in the facing frame) of per-clip ``rows`` by where the clips
    come from, so that the HumanML3D clips (the test) can be read apart from the rest."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(source_of(row["clip"]), []).append(row)
    return {
        source: {
            "clips": len(members),
            "frames": (frames := sum(row["frames"] for row in members)),
            **{
                key: sum(row[key] * row["frames"] for row in members) / frames
                for key in ("mpjpe_mm", "facing_mpjpe_mm")
            },
        }
        for source, members in sorted(groups.items())
    }


def runs_on_other_windows(saved: dict[str, dict]) -> str | None:
    """The first run whose windows were not made as the first common run's (with a variant's
    change of the augmentation), e.g. one trained before a change of the augmentation, or a
    variant whose change changed nothing (the common run trained without what it takes away);
    None if every run's were. The variants need a common run to be measured beside."""
    common = [name for name in saved if name not in OWN_AUGMENTATION]
    if not common:
        raise SystemExit("measure the variants with their own augmentation beside parttok")
    reference = saved[common[0]]
    for name, settings in saved.items():
        expected = dict(reference)
        if name in OWN_AUGMENTATION:
            expected["augment"] = {**(reference["augment"] or {}), **OWN_AUGMENTATION[name]}
            if windows_text(expected) == windows_text(reference):
                return name
        if windows_text(settings) != windows_text(expected):
            return name
    return None


def _against(ours: dict, theirs: dict) -> str:
    """How much lower (or higher) ``ours`` is than ``theirs``: in-distribution, unseen and
    unseen in the facing frame."""
    measures = (
        ("in_distribution", "mpjpe_mm"),
        ("unseen", "mpjpe_mm"),
        ("unseen", "facing_mpjpe_mm"),
    )
    seen, unseen, facing = (
        f"{abs(change):.0%} {'lower' if change >= 0 else 'higher'}"
        for change in (1 - ours[s][m] / theirs[s][m] for s, m in measures)
    )
    return f"{seen} MPJPE in-distribution, {unseen} on unseen clips ({facing} in the facing frame)"


def summary(results: dict) -> list[str]:
    """parttok against the better run (lower in-distribution MPJPE) of each baseline, refined
    codes against that run's refined codes; each one-change variant of parttok against
    parttok (refined against refined; refined parttok against parttok); and parttok against a
    baseline trained with the same change of augmentation."""
    if "parttok" not in results:
        return []

    def named(name: str) -> str:
        return "parttok" if name == "parttok" else label(name, results)

    lines = [""]
    for family in ("t2mgpt", "rvq"):
        runs = [
            n
            for n in results
            if n.split("_")[0] == family and n not in OWN_AUGMENTATION and not n.endswith(REFINED)
        ]
        if not runs:
            continue
        best = min(runs, key=lambda name: results[name]["in_distribution"]["mpjpe_mm"])
        for ours, theirs in (("parttok", best), (f"parttok{REFINED}", f"{best}{REFINED}")):
            if ours in results and theirs in results:
                lines.append(
                    f"{named(ours)} against {named(theirs)} (the better of its runs): "
                    f"{_against(results[ours], results[theirs])}."
                )
    for name in results:
        if name.startswith("parttok_"):
            refined_variant = name.endswith(REFINED) and name != f"parttok{REFINED}"
            base = f"parttok{REFINED}" if refined_variant else "parttok"
            lines.append(
                f"{named(name)} against {named(base)}: {_against(results[name], results[base])}."
            )
    for baseline in results:
        if baseline.startswith("parttok") or baseline not in OWN_AUGMENTATION:
            continue
        for name in results:
            if name.startswith("parttok_") and (
                OWN_AUGMENTATION.get(name) == OWN_AUGMENTATION[baseline]
                and not name.endswith(REFINED)
            ):
                lines.append(
                    f"{LABELS[name]} against {LABELS[baseline]}: "
                    f"{_against(results[name], results[baseline])}."
                )
    return lines


def precisions_text(results: dict) -> str:
    """The precision the runs trained in (results measured before it was recorded: float32,
    as configs/cpu.yaml trained then)."""
    precisions = {result.get("precision", "32-true") for result in results.values()}
    if len(precisions) == 1:
        return f"every model trained in {precisions.pop()} precision"
    return "precision " + ", ".join(
        f"{label(name, results)} {result.get('precision', '32-true')}"
        for name, result in results.items()
    )


def common_windows(results: dict) -> str:
    """How the windows were made for every run (a variant changes the augmentation)."""
    return next(result["data"] for name, result in results.items() if name not in OWN_AUGMENTATION)


def default_models(augment: bool) -> list[str]:
    """Every model, but the variants that change an augmentation when there is none."""
    return [name for name in MODELS if augment or name not in OWN_AUGMENTATION]


def run_name(minutes: float, augment: bool) -> str:
    """The default folder under runs/ of a comparison: one per budget and kind of windows."""
    return f"compare{'_augmented' if augment else ''}_{minutes:g}min"


def heading(minutes: float, augment: bool) -> str:
    """The BENCHMARKS.md heading of a comparison: one section per budget and kind of windows."""
    windows = ", trained with augmentation" if augment else ""
    return f"## Tokenizers side by side, {minutes:g} minutes each{windows}"


def markdown(results: dict, args: argparse.Namespace, sets: dict) -> str:
    minutes, threads, parallel, augment = args.minutes, args.threads, args.parallel, args.augment
    listed = args.models != default_models(augment)
    models = " --models " + " ".join(args.models) if listed else ""
    default = args.out == REPO / "runs" / run_name(minutes, augment)
    folder = "" if default else f" --out {in_repo(args.out)}"
    lines = [
        heading(minutes, augment),
        "",
        f"Command: `python tools/compare.py --minutes {minutes:g} --threads {threads} "
        f"--parallel {parallel}{' --augment' if augment else ''}{models}{folder}"
        f"{f' --refine {refine}' if (refine := getattr(args, 'refine', 0)) else ''}` "
        "(after `python tools/prepare_data.py`).",
        f"Machine: {machine_description()}, no GPU, torch {torch.__version__}; "
        f"date {datetime.date.today().isoformat()}. Each model trained {minutes:g} minutes of "
        f"wall clock with {threads} thread(s), {parallel} run(s) at a time, on Bandai Namco 2 + "
        f"CMU train splits without any 'run' clip; {common_windows(results)}; "
        f"{precisions_text(results)}.",
        f"In-distribution: {len(sets['in_distribution'])} Bandai Namco 2 validation clips. "
        f"Unseen: {len(sets['unseen'])} clips: the Bandai 'run' clips of the validation and test "
        "splits (an action never trained on), the CMU clips on the Character Creator rig but "
        "the captures trained on CMU's own rig, and the HumanML3D reference clips. MPJPE is "
        "pelvis-aligned, every frame of every clip "
        'counted once; "facing frame": each frame in its own facing frame, without the drift '
        "of the facing integrated from the root's turning speed. Steps: the optimiser steps a "
        "run completed in its budget (a slower model, or one sharing the cores with other work, "
        "completes fewer). Learning rate: cpu.yaml's "
        "1e-3 (30 warm-up steps, cosine over the budget) for every model; the baselines also "
        "at 2e-4, the rate the T2M-GPT and MoMask papers use (rows marked lr 2e-4).",
        "",
        "| tokenizer | bits/s | params | steps | MPJPE in-dist (mm) | PA-MPJPE in-dist | "
        "MPJPE unseen (mm) | unseen, facing frame | PA-MPJPE unseen | "
        "codebook usage (mean over parts) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        seen, unseen = result["in_distribution"], result["unseen"]
        bits = seen["bits_per_second"]
        usage = np.mean(list(seen["usage"].values())) if "usage" in seen else float("nan")
        lines.append(
            f"| {label(name, results)} | "
            f"{'continuous' if bits == float('inf') else f'{bits:.0f}'} | "
            f"{result['parameters'] / 1e6:.2f} M | {result['steps']} | {seen['mpjpe_mm']:.1f} | "
            f"{seen['pa_mpjpe_mm']:.1f} | {unseen['mpjpe_mm']:.1f} | "
            f"{unseen['facing_mpjpe_mm']:.1f} | {unseen['pa_mpjpe_mm']:.1f} | "
            f"{'n/a' if np.isnan(usage) else f'{usage:.0%}'} |"
        )
    if any(name.endswith(REFINED) for name in results):
        lines += [
            "",
            "Rows with refined codes: the same run, its tokens chosen through the decoder "
            "(`--refine`, `parttok.refine`: same codebooks and bits per second, a slower "
            "encoder). Every model gets the same search: parttok tries each part, the root's "
            "last, the baselines each column (the body code; each residual layer, the coarsest "
            "last), all judged by the same joint errors.",
        ]
    lines += summary(results)
    sources = next(iter(results.values()))["unseen"]["by_source"]
    lines += [
        "",
        "Unseen clips by source, MPJPE mm (in the facing frame); frame-weighted:",
        "",
        "| tokenizer | "
        + " | ".join(f"{source} ({row['clips']} clips)" for source, row in sources.items())
        + " |",
        "|---" * (len(sources) + 1) + "|",
    ]
    for name, result in results.items():
        rows = result["unseen"]["by_source"]
        lines.append(
            f"| {label(name, results)} | "
            + " | ".join(
                f"{rows[s]['mpjpe_mm']:.1f} ({rows[s]['facing_mpjpe_mm']:.1f})" for s in sources
            )
            + " |"
        )
    lines += ["", "Per-part MPJPE on unseen clips (mm):", ""]
    parts = list(next(iter(results.values()))["unseen"]["per_part_mpjpe_mm"])
    lines += ["| tokenizer | " + " | ".join(parts) + " |", "|---" * (len(parts) + 1) + "|"]
    for name, result in results.items():
        values = result["unseen"]["per_part_mpjpe_mm"]
        row = " | ".join(f"{values[p]:.1f}" for p in parts)
        lines.append(f"| {label(name, results)} | {row} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20, help="wall clock per model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument(
        "--models", nargs="+", choices=list(MODELS), help="default: every model (that applies)"
    )
    parser.add_argument(
        "--augment", action="store_true", help="train every model mirrored and augmented"
    )
    parser.add_argument("--out", type=Path, help="default: runs/compare[_augmented]_<N>min")
    parser.add_argument("--data", type=Path, default=REPO / "data")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--evaluate-only", action="store_true")
    parser.add_argument(
        "--only", nargs="+", choices=list(MODELS), help="train only these (evaluate all --models)"
    )
    parser.add_argument(
        "--refine",
        type=int,
        default=0,
        metavar="N",
        help="also measure every model with codebooks through codes refined among N "
        "(parttok.refine)",
    )
    parser.add_argument("--benchmarks", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args()
    args.out = (args.out or REPO / "runs" / run_name(args.minutes, args.augment)).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.models = args.models or default_models(args.augment)
    if not args.augment and (extra := set(args.models) & set(OWN_AUGMENTATION)):
        raise SystemExit(f"{', '.join(sorted(extra))} change the augmentation: use --augment")
    if args.only and not set(args.only) <= set(args.models):
        raise SystemExit("--only names models that --models does not list")
    if not args.evaluate_only:
        train_all(
            args.only or args.models,
            args.out,
            args.minutes,
            args.threads,
            args.parallel,
            args.augment,
        )
    torch.set_num_threads(os.cpu_count() or 1)
    sets = evaluation_sets(args.data, args.shared)
    results = evaluate_runs(args.models, args.out, sets, args.data, args.refine)
    write_text(args.out / "results.json", json.dumps(results, indent=2) + "\n")
    section = markdown(results, args, sets)
    replace_markdown_section(args.benchmarks, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
