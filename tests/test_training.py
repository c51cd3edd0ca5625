"""Training through `parttok train` (LightningCLI), checkpoints, resume, and loading."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from parttok.augment import Augmentation
from parttok.cli import main
from parttok.data import convert_sources
from parttok.errors import CheckpointError
from parttok.tokenizer import CONFIG_FILE, WEIGHTS_FILE, Tokenizer

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "configs" / "smoke.yaml")


@pytest.fixture(scope="module")
def converted(tmp_path_factory, bandai_dir, cmu_dir) -> Path:
    """A small real training set: 24 Bandai Namco clips and two CMU clips, converted."""
    clips = sorted((bandai_dir / "data").glob("*.bvh"))[::120][:24]
    out = tmp_path_factory.mktemp("converted")
    report = convert_sources(
        [*clips, cmu_dir / "02_01.bvh", cmu_dir / "131_01.bvh"], out, jobs=2, show_progress=False
    )
    assert not report.failed
    return out


def train(converted: Path, root: Path, *overrides: str) -> int:
    """Train with the smoke config; ``overrides`` (e.g. a second --config) come before the
    data and run folder so that those stay the test's."""
    return main(
        [
            "train",
            "--config",
            SMOKE,
            *overrides,
            "--data.data_dirs",
            f"[{converted}]",
            "--trainer.default_root_dir",
            str(root),
        ]
    )


def test_fast_dev_run_trains_and_exports_a_loadable_tokenizer(converted, tmp_path):
    assert train(converted, tmp_path, "--trainer.fast_dev_run", "true") == 0
    tokenizer = Tokenizer.from_pretrained(tmp_path / "tokenizer")
    assert tokenizer.parts == ("root", "torso", "left_arm", "right_arm", "left_leg", "right_leg")
    clip = np.load(next((converted / "new_joint_vecs").glob("*.npy")))
    codes = tokenizer.encode(clip)
    assert codes.shape == (len(clip) // 4, 6) and codes.dtype == np.int64
    assert tokenizer.decode(codes).shape == (len(clip) // 4 * 4, 263)
    training = json.loads((tmp_path / "tokenizer" / CONFIG_FILE).read_text())["training"]
    assert training["global_step"] == 1 and 0 < training["seconds"] < 600


def test_mixed_precision_training_exports_float32_weights_that_encode_as_trained(
    converted, tmp_path, monkeypatch
):
    """``--trainer.precision bf16-mixed`` (half the step time on a CPU with bfloat16
    instructions): the exported weights are float32 and encode in float32; on a CPU without
    those instructions, where it is slower, training says so."""
    monkeypatch.setattr("parttok.io.bfloat16_instructions", lambda: [])
    with pytest.warns(UserWarning, match="without bfloat16 instructions"):
        assert train(converted, tmp_path, "--trainer.fast_dev_run", "true",
                     "--trainer.precision", "bf16-mixed") == 0  # fmt: skip
    tokenizer = Tokenizer.from_pretrained(tmp_path / "tokenizer")
    tensors = tokenizer.state_dict().values()
    assert all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())
    clip = np.load(next((converted / "new_joint_vecs").glob("*.npy")))
    codes = tokenizer.encode(clip)
    assert codes.shape == (len(clip) // 4, 6) and (codes >= 0).all()
    assert np.isfinite(tokenizer.decode(codes)).all()


@pytest.mark.parametrize(
    ("overrides", "parts"),
    [
        (["--config", str(REPO / "configs" / "t2mgpt.yaml")], 1),
        (["--config", str(REPO / "configs" / "rvq.yaml")], 6),
        (["--config", str(REPO / "configs" / "pose.yaml")], 6),
        (["--config", str(REPO / "configs" / "continuous.yaml")], 6),
        (["--config", str(REPO / "configs" / "five_parts.yaml")], 5),
        (["--config", str(REPO / "configs" / "cpu.yaml")], 6),  # with its augmentation
    ],
)
def test_every_config_trains_in_the_same_harness(converted, tmp_path, overrides, parts):
    small = ["--model.model.init_args.dim", "32", "--model.model.init_args.joint_dim", "16"]
    if "t2mgpt" in overrides[1] or "rvq" in overrides[1]:
        small = ["--model.model.init_args.width", "32", "--model.model.init_args.code_dim", "16"]
    status = train(converted, tmp_path, *overrides, *small, "--trainer.fast_dev_run", "true")
    assert status == 0
    tokenizer = Tokenizer.from_pretrained(tmp_path / "tokenizer")
    assert tokenizer.num_parts == parts
    clip = max((np.load(p) for p in (converted / "new_joint_vecs").glob("*.npy")), key=len)[:40]
    reconstruction = tokenizer.reconstruct(clip)
    assert reconstruction.shape == (40, 263) and np.isfinite(reconstruction).all()


def test_the_shipped_config_resumes_from_its_checkpoint(converted, tmp_path, monkeypatch):
    """cpu.yaml augments: its checkpoint holds the augmentation as plain numbers, which a
    resume reads back (checkpoints load without unpickling code)."""
    cpu = ["--config", str(REPO / "configs" / "cpu.yaml")]
    small = ["--model.model.init_args.dim", "32", "--model.model.init_args.joint_dim", "16"]
    steps = ["--trainer.max_steps", "2", "--checkpoint.every_n_train_steps", "1"]
    assert train(converted, tmp_path, *cpu, *small, *steps) == 0
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    augment = checkpoint["datamodule_hyper_parameters"]["augment"]
    shipped = yaml.safe_load((REPO / "configs" / "cpu.yaml").read_text())["data"]["augment"]
    as_numbers = json.loads(json.dumps(asdict(Augmentation(**shipped))))  # tuples as lists
    assert augment == as_numbers and augment["turn_degrees"] == 180.0
    more = ["--trainer.max_steps", "3", "--ckpt_path", "last"]
    assert train(converted, tmp_path, *cpu, *small, *more) == 0
    training = json.loads((tmp_path / "tokenizer" / CONFIG_FILE).read_text())["training"]
    assert training["global_step"] == 3
    # the model card describes a run's data from the settings it saved (tools/release.py)
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    from release import (
        folders_text,
        learning_settings,
        resolved_config,
        saved_config,
        saved_data,
        windows_text,
    )

    data = saved_data(tmp_path)
    assert folders_text(data) == converted.name
    # what it saved is what configs/cpu.yaml resolves to with the same arguments
    again = resolved_config(
        ("--config", SMOKE, *cpu, *small, *more, "--data.data_dirs", f"[{converted}]",
         "--trainer.default_root_dir", str(tmp_path))
    )  # fmt: skip
    assert learning_settings(saved_config(tmp_path)) == learning_settings(again)
    described = Augmentation(**shipped).describe()
    assert windows_text(data) == "windows are mirrored left/right; " + described
    older = {**data, "augment": {"probability": 0.5, "arm_swap": 0.3}}  # saved before turns
    assert "one turn" not in windows_text(older) and "raised" not in windows_text(older)
    assert "arms 30% of the time" in windows_text(older)
    assert windows_text({**data, "augment": None, "mirror": False}) == (
        "windows are not mirrored left/right; no augmentation"
    )


def printed_config(capsys, *args: str) -> dict:
    """The configuration ``parttok train ARGS --print_config`` resolves (nothing trains)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["train", *args, "--print_config"])
    assert exit_.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_every_recipe_variant_changes_only_what_its_name_says(capsys, monkeypatch):
    """tools/recipe.py: each variant's flags parse against cpu.yaml (a mistyped key would stop
    LightningCLI), and the run differs from the base recipe only in the keys it sets; an
    augmentation dict is merged into the base's, a list replaces it."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    from recipe import BASE, VARIANTS

    def pairs(flags: tuple) -> dict:
        return {
            flag.removeprefix("--"): yaml.safe_load(value)
            for flag, value in zip(flags[::2], flags[1::2], strict=True)
        }

    def with_changes(config: dict, changes: dict) -> dict:
        """``config`` with each dotted key set (a dict merged into the dict it replaces)."""
        config = copy.deepcopy(config)
        for key, value in changes.items():
            *path, last = key.split(".")
            node = config
            for name in path:
                node = node[name]
            node[last] = {**node[last], **value} if isinstance(value, dict) else value
        return config

    cpu = ["--config", str(REPO / "configs" / "cpu.yaml")]
    base = printed_config(capsys, *cpu, *BASE)
    added = ("crouch", "jump", "tilt")  # off in the base, whatever cpu.yaml sets
    assert [base["data"]["augment"][name] for name in added] == [0.0] * 3
    assert len(base["data"]["data_dirs"]) == 7
    assert base["data"]["augment"]["turn_frames"] == [10.0, 40.0]
    init_args = base["model"]["model"]["init_args"]
    assert (init_args["dim"], init_args["code_dim"]) == (128, 32)  # whatever cpu.yaml's sizes
    for name, (_, extra) in VARIANTS.items():
        config = printed_config(capsys, *cpu, *BASE, *extra)
        assert config == with_changes(base, pairs(extra)), name


def test_the_recipe_table_says_how_far_the_seed_moves_a_recipe(monkeypatch):
    """tools/recipe.py: a recipe trained with several seeds gets a line with their scores and
    the largest gap; a variant measured with one seed gets none."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    from recipe import chance

    def sets(bandai: float, cmu: float, humanml3d: float) -> dict:
        return {
            "bandai_val": {"mpjpe_mm": bandai},
            "cmu_val": {"mpjpe_mm": cmu},
            "humanml3d": {"mpjpe_mm": humanml3d},
        }

    measured = {
        "oversample_6": sets(13.9, 38.8, 50.8),
        "oversample_6_seed_1": sets(13.7, 40.4, 59.5),
        "fsq": sets(14.0, 40.0, 55.0),
        "seed_1": sets(13.4, 57.8, 53.6),  # the base recipe's seed 0 not measured
    }
    lines = chance(measured)
    assert len(lines) == 2 and lines[0] == ""
    assert "score 26.35 and 27.05" in lines[1] and "HumanML3D 50.8 and 59.5" in lines[1]
    assert "closer than 0.70" in lines[1]
    assert chance({"fsq": measured["fsq"]}) == []
    lines = chance({**measured, "base": sets(13.4, 56.0, 53.3)})
    assert len(lines) == 3 and "score 34.70 and 35.60" in lines[2]
    more = {f"oversample_6_crouch_jump_tilt_seed_{n}": sets(14.0, 38.0 + n, 50.0) for n in (1, 3)}
    lines = chance({**more, "oversample_6_crouch_jump_tilt": sets(14.5, 39.5, 48.7)})
    assert lines[1].startswith("Chance: CMU oversampled 6x, and augmentation adds squats, jumps ")
    assert (
        "seeds 0, 1 and 3: score 27.00, 26.50 and 27.50, HumanML3D 48.7, 50.0 and 50.0"
        in (lines[1])
    )
    assert "closer than 1.00" in lines[1]


def test_the_recipe_measures_a_checkpoint_once(monkeypatch, tmp_path):
    """tools/recipe.py: a run whose checkpoint the record holds, measured on the same clips,
    splits and settings, is not measured again; another checkpoint in its folder is."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import recipe
    from release import clip_digest

    monkeypatch.setattr(recipe, "RECORD", tmp_path / "recipe_measured.json")
    sets = {"bandai_val": {"a": 0}, "cmu_val": {"b": 0}, "humanml3d": {"c": 0}}
    splits = {"bandai": "1234"}
    results = {name: {"mpjpe_mm": 30.0, "clip_digest": clip_digest(clips)}
               for name, clips in sets.items()}  # fmt: skip
    measured = []
    monkeypatch.setattr(
        recipe, "measure", lambda tokenizer, held_out: measured.append(1) or results
    )
    out = tmp_path / "runs" / "recipe3000"
    shutil.copytree(recipe.PRETRAINED_DIR, out / "base" / "tokenizer")
    identity = Tokenizer.from_pretrained(out / "base" / "tokenizer").identity
    for checkpoint, times in ((identity, 0), ("another", 1)):
        entry = {"date": "2026-11-24", "steps": 3000, "global_step": 3000,
                 "checkpoint": checkpoint, **recipe.recipe_of("base"), "splits": splits,
                 "results": results}  # fmt: skip
        recipe.update_record(out, 3000, sets, splits, {"base": entry})
        measured.clear()
        entries = recipe.measure_runs(["base"], out, 3000, sets, splits)
        assert len(measured) == times and len(entries) == times
    assert entries["base"]["checkpoint"] == identity


def test_the_recipe_table_keeps_measured_rows_when_their_runs_are_gone(monkeypatch, tmp_path):
    """tools/recipe.py: measurements are kept (runs/ is not), by run folder; a row whose held-out
    clips, splits, resolved settings, seed or step count are not those of now is dropped (a
    change to configs/cpu.yaml that a variant's own arguments override keeps it); a new
    measurement replaces an old one; the shipped model's row is marked by its checkpoint and
    measured from parttok/pretrained only when its variant has no row and its held-out clips
    are the same."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import recipe
    import release
    from release import clip_digest

    monkeypatch.setattr(recipe, "RECORD", tmp_path / "recipe_measured.json")
    sets = {"bandai_val": {"a": 0}, "cmu_val": {"b": 0}, "humanml3d": {"c": 0}}
    splits = {"bandai": "1234", "cmu": "5678"}
    out = recipe.REPO / "runs" / "recipe3000"

    def entry(name: str, bandai: float, checkpoint: str, **changes) -> dict:
        held_out = changes.pop("held_out", sets)
        results = {
            set_name: {
                "mpjpe_mm": bandai if set_name == "bandai_val" else 40.0,
                "facing_mpjpe_mm": 40.0,
                "clip_digest": clip_digest(clips),
            }
            for set_name, clips in held_out.items()
        }
        return {"date": "2026-11-23", "steps": 3000, "global_step": 3000,
                "checkpoint": checkpoint, **recipe.recipe_of(name), "splits": splits,
                "results": results, **changes}  # fmt: skip

    first = {"base": entry("base", 14.0, "aa"), "fsq": entry("fsq", 15.0, "bb")}
    # recorded before the model took dropout and the augmentation its tilt (a field of a
    # dataclass given as a dict): it trained as their defaults do now; and with options since
    # removed off (cosine_codes) or at the value their class lists as doing nothing
    # (REMOVED_SETTINGS: the projector's kind, the twist's size)
    model_args = first["base"]["settings"]["model"]["model"]["init_args"]
    del model_args["dropout"]
    model_args |= {"cosine_codes": False, "rotation_trick": False, "llm_hidden_size": None,
                   "projector": "linear"}  # fmt: skip
    augmented = first["base"]["settings"]["data"]["augment"]
    del augmented["tilt"]
    augmented |= {"twist": 0.0, "twist_degrees": 60.0, "jitter": 0.0, "jitter_degrees": 15.0}
    cosine = entry("augment_80", 1.0, "ab")  # ... but not one with a removed option on
    cosine["settings"]["model"]["model"]["init_args"]["cosine_codes"] = True
    jittered = entry("oversample_6_dropout", 1.0, "ac")
    jittered["settings"]["data"]["augment"] |= {"jitter": 0.5, "jitter_degrees": 15.0}
    projected = entry("facing_loss", 1.0, "ad")
    projected["settings"]["model"]["model"]["init_args"]["projector"] = "mlp"
    assert recipe.update_record(out, 3000, sets, splits, first).keys() == first.keys()
    newer = {
        "fsq": entry("fsq", 16.0, "cc"),
        "seed_1": entry("seed_1", 1.0, "dd", held_out={**sets, "cmu_val": {"b": 0, "d": 0}}),
        "no_mirroring": entry("no_mirroring", 1.0, "ee", splits={"bandai": "other"}),
        "augment_80": cosine,
        "oversample_6_dropout": jittered,
        "facing_loss": projected,
        "oversample_6": entry(
            "oversample_6", 1.0, "ff", settings=recipe.recipe_of("no_mirroring")["settings"]
        ),
        "oversample_10": entry("oversample_10", 1.0, "gg", steps=2000),
        "no_augmentation": entry("no_augmentation", 1.0, "hh", seed_everything=1),
        "no_limb_swing": {  # recorded before the record held settings
            key: value
            for key, value in entry("no_limb_swing", 1.0, "ii").items()
            if key not in ("settings", "seed_everything")
        },  # fmt: skip
    }
    shown = recipe.update_record(out, 3000, sets, splits, newer)
    assert shown["fsq"]["checkpoint"] == "cc" and len(shown) == len(newer) + 1  # as measured
    kept = recipe.recorded(out, 3000, sets, splits)
    assert kept.keys() == {"base", "fsq"} and kept["fsq"]["checkpoint"] == "cc"
    assert recipe.recorded(tmp_path / "elsewhere", 3000, sets, splits) == {}

    def cpu_yaml_sets(*change: str) -> None:  # as if configs/cpu.yaml set ``change``
        monkeypatch.setattr(
            recipe, "resolved_config", lambda extra: release.resolved_config((*change, *extra))
        )

    cpu_yaml_sets("--data.augment", "{crouch: 0.5}")  # the base recipe sets crouch itself
    assert recipe.recorded(out, 3000, sets, splits).keys() == {"base", "fsq"}
    cpu_yaml_sets("--data.window", "32")
    assert recipe.recorded(out, 3000, sets, splits) == {}
    monkeypatch.setattr(recipe, "resolved_config", release.resolved_config)

    run = tmp_path / "runs" / "no_mirroring"  # a run is measured only if trained as its variant
    (run / "logs").mkdir(parents=True)
    for steps in (3000, 100):
        budget = ("--trainer.max_time", "00:01:30:00", "--trainer.max_steps", str(steps))
        saved = release.resolved_config((*recipe.BASE, "--data.mirror", "false", *budget))
        (run / "logs" / "config.yaml").write_text(yaml.safe_dump(saved))
        assert recipe.trained_otherwise(run, "no_mirroring", 3000) == (
            None if steps == 3000 else "it trained for 100 steps, not 3000"
        )
    assert recipe.trained_otherwise(run, "base", 100) == (
        "it trained otherwise than the variant now (settings.data.mirror)"
    )

    shipped = json.loads((recipe.PRETRAINED_DIR / recipe.METRICS).read_text())
    kept["fsq"]["checkpoint"] = shipped["results"]["humanml3d"]["checkpoint"]
    args = SimpleNamespace(steps=3000, out=tmp_path)
    rows = [line for line in recipe.table(args, sets, kept).splitlines() if line.startswith("| ")]
    assert len(rows) == 3 and rows[1].startswith("| the base recipe") and "| 27.00 |" in rows[1]
    assert rows[2].startswith("| **FSQ") and "shipped**" in rows[2] and "| 28.00 |" in rows[2]
    assert "| 2026-11-23 |" in rows[1]

    run, steps = REPO / shipped["training"]["run"], shipped["training"]["steps"]
    monkeypatch.setattr(recipe, "measure", lambda tokenizer, held_out: shipped["results"])
    held_out = {name: {"x": 0} for name in shipped["results"]}  # not the clips it was measured on
    assert recipe.shipped_entry(run.parent, steps, held_out, splits, known=set()) == {}
    monkeypatch.setattr(recipe, "same_sets", lambda recorded, held_out: True)
    assert recipe.shipped_entry(run.parent, steps, sets, splits, known={run.name}) == {}
    assert recipe.shipped_entry(tmp_path, steps, sets, splits, known=set()) == {}  # not its folder
    assert recipe.shipped_entry(run.parent, steps + 1, sets, splits, known=set()) == {}
    measured = recipe.shipped_entry(run.parent, steps, sets, splits, known=set())
    assert measured.keys() == {run.name}
    assert measured[run.name]["checkpoint"] == shipped["results"]["humanml3d"]["checkpoint"]
    assert measured[run.name]["results"] == shipped["results"]
    shipped["training"]["settings"]["data"]["mirror"] = False  # trained otherwise than its variant
    (tmp_path / recipe.METRICS).write_text(json.dumps(shipped))
    monkeypatch.setattr(recipe, "PRETRAINED_DIR", tmp_path)
    assert recipe.shipped_entry(run.parent, 3000, sets, splits, known=set()) == {}


def test_every_compare_model_trains_on_the_same_windows_but_its_own_change(
    capsys, monkeypatch, tmp_path
):
    """tools/compare.py: every model's command parses against cpu.yaml and trains on the same
    folders and windows (mirrored and augmented with --augment, plain without) for the same
    wall clock; a variant that sets its own augmentation keeps it."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    monkeypatch.chdir(REPO)
    from compare import MODELS, OWN_AUGMENTATION, default_models, train_arguments
    from compare import main as compare_main

    assert not set(default_models(augment=False)) & OWN_AUGMENTATION.keys()

    cpu = printed_config(capsys, "--config", "configs/cpu.yaml")
    own = OWN_AUGMENTATION
    assert own.keys() <= MODELS.keys()
    assert {k: cpu["data"]["augment"][k] for k in ("crouch", "jump", "tilt")} == {
        "crouch": 0.3,
        "jump": 0.2,
        "tilt": 0.2,
    }
    assert own["parttok_no_crouch_jump_tilt"] == {"crouch": 0.0, "jump": 0.0, "tilt": 0.0}
    classes = {"t2mgpt": "ConvVQ", "rvq": "ResidualConvVQ"}
    for augment in (True, False):
        for name in MODELS:
            if name in own and not augment:  # changes an augmentation there is not
                monkeypatch.setattr(
                    sys, "argv", ["compare.py", "--models", name, "--out", str(tmp_path)]
                )
                with pytest.raises(SystemExit, match="--augment"):
                    compare_main()  # refused before anything trains
                continue
            config = printed_config(capsys, *train_arguments(name, tmp_path, 20, augment))
            data, trainer = config["data"], config["trainer"]
            assert data["data_dirs"] == ["data/bandai", "data/cmu"], name
            assert data["exclude"] == ["_run_"] and trainer["max_steps"] == -1, name
            assert trainer["max_time"] == "00:00:20:00", name
            assert data["mirror"] is augment, name
            if name in own:
                assert data["augment"] == {**cpu["data"]["augment"], **own[name]}, name
            else:
                assert data["augment"] == (cpu["data"]["augment"] if augment else None), name
            family = classes.get(name.split("_")[0], "PartTokenizer")
            assert config["model"]["model"]["class_path"].endswith(family), name


def test_compare_measures_only_runs_on_the_current_splits_and_the_same_windows(
    tmp_path, monkeypatch
):
    """tools/compare.py: a run without its record of splits (a failed or older run) is not
    measured; runs whose windows were made otherwise than the rest's are refused, but a
    variant's own augmentation is expected."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    from compare import evaluate_runs, runs_on_other_windows

    run = tmp_path / "parttok"
    (run / "tokenizer").mkdir(parents=True)
    (run / "logs").mkdir()
    (run / "logs" / "config.yaml").write_text("data:\n  data_dirs: [data/bandai]\n")
    with pytest.raises(SystemExit, match="no run .* can be measured"):
        evaluate_runs(["parttok"], tmp_path, {}, tmp_path)

    augmented = {"mirror": True, "augment": {"probability": 0.5, "crouch": 0.3, "tilt": 0.2}}
    less = {"mirror": True, "augment": {"probability": 0.5, "crouch": 0.0, "tilt": 0.0}}
    variant = "parttok_no_crouch_jump_tilt"
    assert runs_on_other_windows({"parttok": augmented, "rvq": augmented}) is None
    assert runs_on_other_windows({"parttok": augmented, variant: less}) is None
    assert runs_on_other_windows({"parttok": augmented, variant: augmented}) == variant
    assert runs_on_other_windows({"parttok": augmented, "rvq": less}) == "rvq"
    assert runs_on_other_windows({"parttok": less, variant: less}) == variant  # no change
    plain = {"mirror": False, "augment": None}
    assert runs_on_other_windows({"parttok": augmented, "continuous": plain}) == "continuous"
    with pytest.raises(SystemExit, match="beside parttok"):
        runs_on_other_windows({variant: less})


def test_compare_sets_parttok_against_baselines_trained_on_the_same_windows(monkeypatch):
    """tools/compare.py's summary: parttok against the better plain run of each baseline, and a
    parttok variant against the baseline trained with the same change of augmentation."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    from compare import summary

    def run(seen: float, unseen: float, facing: float) -> dict:
        return {
            "in_distribution": {"mpjpe_mm": seen},
            "unseen": {"mpjpe_mm": unseen, "facing_mpjpe_mm": facing},
        }

    lines = summary(
        {
            "parttok": run(15.0, 90.0, 70.0),
            "rvq": run(30.0, 120.0, 100.0),
            "rvq_lr2e-4": run(25.0, 100.0, 100.0),
            "parttok_no_crouch_jump_tilt": run(16.0, 70.0, 60.0),
            "rvq_lr2e-4_no_crouch_jump_tilt": run(20.0, 100.0, 80.0),
        }
    )
    assert lines[1] == (
        "parttok against MoMask residual VQ, 6 x 512, lr 2e-4 (the better of its runs): 40% "
        "lower MPJPE in-distribution, 10% lower on unseen clips (30% lower in the facing frame)."
    )
    assert lines[-1].startswith(
        "parttok, 6 parts x 512, without squats, jumps and tilts against MoMask residual VQ, "
        "6 x 512, lr 2e-4, without squats, jumps and tilts: 20% lower MPJPE in-distribution, "
        "30% lower on unseen clips (25% lower"
    )
    assert len(lines) == 4  # the variant against parttok too
    refined = summary(
        {
            "parttok": run(15.0, 90.0, 70.0),
            "parttok_refined": {**run(12.0, 80.0, 60.0), "refine": 8},
            "rvq_lr2e-4": run(25.0, 100.0, 100.0),
            "rvq_lr2e-4_refined": {**run(10.0, 100.0, 100.0), "refine": 8},
            "parttok_seed1_refined": {**run(12.0, 40.0, 30.0), "refine": 8},
        }
    )
    assert refined[1].startswith("parttok against MoMask residual VQ, 6 x 512, lr 2e-4 (the")
    assert refined[2].startswith(  # refined against refined, never against the plain run
        "parttok, 6 parts x 512, codes refined among 8 against MoMask residual VQ, 6 x 512, lr "
        "2e-4, codes refined among 8 (the better of its runs): 20% higher MPJPE in-distribution"
    )
    assert refined[3].startswith(
        "parttok, 6 parts x 512, codes refined among 8 against parttok: 20% lower"
    )
    assert refined[4].endswith(
        "against parttok, 6 parts x 512, codes refined among 8: 0% "
        "lower MPJPE in-distribution, 50% lower on unseen clips (50% lower in the facing frame)."
    )


def test_compare_splits_unseen_clips_by_source_frame_weighted(monkeypatch):
    """tools/compare.py: the unseen figure by source (the HumanML3D test clips apart from those
    a recipe may be chosen on), every frame counted once."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    from compare import by_source

    def row(clip: str, frames: int, mpjpe: float) -> dict:
        return {"clip": clip, "frames": frames, "mpjpe_mm": mpjpe, "facing_mpjpe_mm": mpjpe / 2}

    rows = [
        row("dataset-1_run_normal_001", 100, 10.0),
        row("cc/001_08", 300, 40.0),
        row("cc/002_06", 100, 80.0),
        row("hml/000000", 50, 60.0),
    ]
    sources = by_source(rows)
    assert sources["Character Creator rig"] == {
        "clips": 2, "frames": 400, "mpjpe_mm": 50.0, "facing_mpjpe_mm": 25.0
    }  # fmt: skip
    assert sources["HumanML3D"]["mpjpe_mm"] == 60.0
    assert sources["Bandai 'run'"]["clips"] == 1
    with pytest.raises(ValueError, match="no source"):
        by_source([row("dataset-1_walk_normal_001", 10, 1.0)])  # not an unseen Bandai clip


def test_compare_measures_a_trained_run_and_tables_its_unseen_clips_by_source(
    converted, humanml3d_dir, monkeypatch, tmp_path
):
    """tools/compare.py end to end on a run trained a few steps on real clips: measured on
    held-out real clips, the unseen ones also by source, and written as markdown with the
    precision it trained in."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    from compare import evaluate_runs, markdown
    from release import SPLITS, training_splits

    from parttok.data import HumanML3DFolder

    out = tmp_path / "runs"
    precision = ("--trainer.precision", "bf16-mixed")
    assert train(converted, out / "parttok", "--trainer.max_steps", "2", *precision) == 0
    (out / "parttok" / SPLITS).write_text(json.dumps(training_splits(converted.parent)))
    clips = HumanML3DFolder(converted)
    held_out = clips.ids("val") or clips.ids("test")
    reference = HumanML3DFolder(humanml3d_dir)
    sets = {
        "in_distribution": {i: clips.features(i) for i in held_out},
        "unseen": {f"hml/{i}": reference.features(i) for i in reference.ids()[:2]}
        | {"dataset-1_run_normal_001": clips.features(held_out[0])},
    }
    results = evaluate_runs(["parttok"], out, sets, converted.parent)
    unseen = results["parttok"]["unseen"]
    assert "by_source" not in results["parttok"]["in_distribution"]
    assert unseen["by_source"].keys() == {"Bandai 'run'", "HumanML3D"}
    frames = sum(row["frames"] for row in unseen["by_source"].values())
    assert frames == unseen["frames"]
    mean = sum(row["mpjpe_mm"] * row["frames"] for row in unseen["by_source"].values()) / frames
    assert mean == pytest.approx(unseen["mpjpe_mm"])
    args = SimpleNamespace(
        minutes=1, threads=1, parallel=1, augment=False, models=["parttok"], out=out
    )
    text = markdown(results, args, sets)
    assert "| tokenizer | Bandai 'run' (1 clips) | HumanML3D (2 clips) |" in text
    assert results["parttok"]["precision"] == "bf16-mixed"
    assert "every model trained in bf16-mixed precision" in text
    assert f" --out {out}`" in text  # not the default folder
    refined = evaluate_runs(["parttok"], out, sets, converted.parent, refine=2)
    assert refined.keys() == {"parttok", "parttok_refined"}  # the same run through refined codes
    assert refined["parttok_refined"]["refine"] == 2
    assert refined["parttok_refined"]["steps"] == results["parttok"]["steps"]
    assert refined["parttok_refined"]["unseen"]["by_source"].keys() == unseen["by_source"].keys()
    text = markdown(refined, SimpleNamespace(**vars(args), refine=2), sets)
    assert "\n| parttok, 6 parts x 512, codes refined among 2 | " in text
    assert "parttok, 6 parts x 512, codes refined among 2 against parttok:" in text
    assert f" --out {out} --refine 2`" in text


def test_compare_keeps_one_section_and_one_folder_per_budget(monkeypatch, tmp_path):
    """tools/compare.py: a comparison at another budget or with other windows writes its own
    BENCHMARKS.md section and trains into its own folder, leaving the others in place."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    from compare import heading, run_name

    from parttok.io import replace_markdown_section

    budgets = [(20, False), (20, True), (60, True), (7.5, True)]
    assert len({heading(*budget) for budget in budgets}) == len(budgets)
    assert len({run_name(*budget) for budget in budgets}) == len(budgets)
    assert heading(60, True) == (
        "## Tokenizers side by side, 60 minutes each, trained with augmentation"
    )
    benchmarks = tmp_path / "BENCHMARKS.md"
    for minutes, augment in budgets:
        replace_markdown_section(benchmarks, f"{heading(minutes, augment)}\n\n{minutes}\n")
    replace_markdown_section(benchmarks, f"{heading(20, True)}\n\nagain\n")
    text = benchmarks.read_text()
    assert all(text.count(heading(*budget) + "\n") == 1 for budget in budgets)
    assert "again" in text and "\n\n60\n" in text and text.count("\n\n20\n") == 1


def test_save_and_load_give_identical_codes(converted, tmp_path):
    assert train(converted, tmp_path, "--trainer.max_steps", "4") == 0
    first = Tokenizer.from_pretrained(tmp_path / "tokenizer")
    first.save_pretrained(tmp_path / "copy")
    second = Tokenizer.from_pretrained(tmp_path / "copy")
    from_ckpt = Tokenizer.from_pretrained(tmp_path / "checkpoints" / "last.ckpt")
    clips = [np.load(p) for p in sorted((converted / "new_joint_vecs").glob("*.npy"))[:5]]
    for clip in clips:
        codes = first.encode(clip)
        np.testing.assert_array_equal(codes, second.encode(clip))
        np.testing.assert_array_equal(codes, from_ckpt.encode(clip))
    assert first.identity == second.identity


def test_encode_is_deterministic_and_leaves_the_codebook_unchanged(converted, tmp_path):
    assert train(converted, tmp_path, "--trainer.max_steps", "2") == 0
    tokenizer = Tokenizer.from_pretrained(tmp_path / "tokenizer")
    before = {k: v.clone() for k, v in tokenizer.model.state_dict().items()}
    clips = [np.load(p) for p in sorted((converted / "new_joint_vecs").glob("*.npy"))[:6]]
    batched = tokenizer.encode_batch(clips)
    for clip, codes in zip(clips, batched, strict=True):
        np.testing.assert_array_equal(tokenizer.encode(clip), codes)
    after = tokenizer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_training_resumes_after_a_kill(converted, tmp_path):
    command = [
        sys.executable,
        "-m",
        "parttok",
        "train",
        "--config",
        SMOKE,
        "--data.data_dirs",
        f"[{converted}]",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.max_steps",
        "400",
        "--trainer.val_check_interval",
        "1000",
        "--checkpoint.every_n_train_steps",
        "3",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    step = 0
    while time.monotonic() < deadline and step < 6:
        time.sleep(0.5)
        if last.exists():
            try:
                step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
            except (RuntimeError, EOFError, KeyError, OSError):
                step = 0  # caught mid-write
        assert process.poll() is None, "training ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert step >= 6, "no checkpoint appeared in time"
    saved = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    resume = ["train", *command[4:], "--ckpt_path", "last", "--trainer.max_steps", str(saved + 3)]
    assert main(resume) == 0
    final = torch.load(last, map_location="cpu", weights_only=True)
    assert final["global_step"] == saved + 3
    first, resumed = (tmp_path / "logs" / f"version_{n}" for n in (0, 1))
    assert (first / "config.yaml").is_file()  # the killed run's logs kept, not overwritten
    assert len((resumed / "metrics.csv").read_text().splitlines()) > 1


def test_bad_checkpoints_give_clear_errors(converted, tmp_path, capsys):
    assert train(converted, tmp_path / "run", "--trainer.max_steps", "2") == 0
    good = tmp_path / "run" / "tokenizer"

    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        Tokenizer.from_pretrained(tmp_path / "text.ckpt")

    with pytest.raises(CheckpointError, match="not a parttok tokenizer"):
        Tokenizer.from_pretrained(tmp_path)

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / CONFIG_FILE).write_bytes((good / CONFIG_FILE).read_bytes())
    (truncated / WEIGHTS_FILE).write_bytes((good / WEIGHTS_FILE).read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="damaged"):
        Tokenizer.from_pretrained(truncated)

    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((good / CONFIG_FILE).read_text())
    config["model_config"]["dim"] = 64
    (other / CONFIG_FILE).write_text(json.dumps(config))
    (other / WEIGHTS_FILE).write_bytes((good / WEIGHTS_FILE).read_bytes())
    with pytest.raises(CheckpointError, match="do not fit"):
        Tokenizer.from_pretrained(other)

    config["model_class"] = "os.system"
    (other / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown model class"):
        Tokenizer.from_pretrained(other)

    config = json.loads((good / CONFIG_FILE).read_text())
    config["version"] = 99
    (other / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="newer parttok"):
        Tokenizer.from_pretrained(other)

    clip = next((converted / "new_joint_vecs").glob("*.npy"))
    capsys.readouterr()
    status = main(["evaluate", str(clip), "--checkpoint", str(truncated)])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(error) == 1 and "damaged" in error[0]


def test_evaluate_writes_json_with_the_documented_fields(converted, tmp_path):
    assert train(converted, tmp_path / "run", "--trainer.max_steps", "2") == 0
    report_path = tmp_path / "report.json"
    status = main(
        ["evaluate", str(converted), "--checkpoint", str(tmp_path / "run" / "tokenizer"),
         "--json", str(report_path)]
    )  # fmt: skip
    assert status == 0
    report = json.loads(report_path.read_text())
    for key in ("mpjpe_mm", "pa_mpjpe_mm", "per_part_mpjpe_mm", "accel_error", "bits_per_second",
                "tokens_per_second", "usage", "perplexity", "per_clip"):  # fmt: skip
        assert key in report
    assert report["clips"] == len(list((converted / "new_joint_vecs").glob("*.npy")))
    assert report["bits_per_second"] == pytest.approx(6 * 6 * 5)  # log2(64) bits, 6 parts
    assert 0 < report["mpjpe_mm"] < 2000
    assert os.path.getsize(report_path) > 0


def test_release_compares_with_the_shipped_model_only_on_the_same_clips(monkeypatch):
    """tools/release.py: a change of splits (clips the shipped model trained on now held
    out) stops the comparison rather than letting those clips flatter the shipped model."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    from release import clip_digest, same_sets

    sets = {"cmu_val": {"cmu/05_06": None, "cmu-iclone/005_06": None}, "humanml3d": {"000000": 0}}
    recorded = {name: {"clip_digest": clip_digest(clips)} for name, clips in sets.items()}
    assert same_sets(recorded, sets)
    assert clip_digest({"b": 1, "a": 2}) == clip_digest({"a": 0, "b": 0})  # order, not values
    moved = {**sets, "cmu_val": {"cmu/05_06": None, "cmu-iclone/002_01": None}}
    assert not same_sets(recorded, moved)
    assert not same_sets({name: {} for name in sets}, sets)  # measured before digests
    assert not same_sets({"humanml3d": recorded["humanml3d"]}, sets)


def test_release_replaces_the_shipped_model_only_when_better_or_forced_with_a_reason(
    tmp_path, monkeypatch, capsys
):
    """tools/release.py: a candidate is released when it beats the shipped model on the
    validation sets; otherwise only with --force and a --reason, which the card gives with
    the replaced model and both scores (no scores when the two were measured on other clips).
    The measurements are stand-ins: what is tested is the choice and what it records."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import release

    sets = {"bandai_val": {"a": 0}, "cmu_val": {"b": 0}, "humanml3d": {"c": 0}}
    validation = {"shipped": 26.0, "better": 25.0, "worse": 27.0}

    def measure(tokenizer: SimpleNamespace, measured_sets: dict, refine: int = 0) -> dict:
        error = validation[tokenizer.identity]
        return {
            name: {"mpjpe_mm": error, "clip_digest": release.clip_digest(clips)}
            for name, clips in measured_sets.items()
        }

    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    shipped_results = measure(SimpleNamespace(identity="shipped"), sets)
    shipped_metrics = json.dumps({"training": {}, "results": shipped_results})
    opened = {pretrained: "shipped"}
    unfit = {"why": None}
    monkeypatch.setattr(release, "PRETRAINED_DIR", pretrained)
    monkeypatch.setattr(release, "evaluation_sets", lambda data, shared: sets)
    monkeypatch.setattr(release, "measure", measure)
    cpu = {
        "seed_everything": 0,
        "trainer": {"max_time": "00:00:55:00", "max_steps": 3000},
        "data": {"data_dirs": [], "augment": None},
        "model": {"lr": 1},
    }
    trained_with = {"seed_everything": 0}
    monkeypatch.setattr(release, "resolved_config", lambda: cpu)
    monkeypatch.setattr(release, "saved_config", lambda run: {**cpu, **trained_with})
    monkeypatch.setattr(release, "training_splits", lambda data: {})
    monkeypatch.setattr(release, "splits_changed", lambda run, current: unfit["why"])
    monkeypatch.setattr(release, "model_card", lambda *args: "card")
    monkeypatch.setattr(
        release.Tokenizer,
        "from_pretrained",
        lambda path: SimpleNamespace(identity=opened[path]),
    )

    def release_run(identity: str, *options: str) -> int:
        (pretrained / release.METRICS).write_text(shipped_metrics)
        run = tmp_path / identity
        (run / "tokenizer").mkdir(parents=True, exist_ok=True)
        (run / "tokenizer" / WEIGHTS_FILE).write_bytes(b"weights")
        (run / "tokenizer" / CONFIG_FILE).write_text(json.dumps({"training": {}}))
        opened[run / "tokenizer"] = identity
        monkeypatch.setattr(sys, "argv", ["release.py", "--run", str(run), *options])
        return release.main()

    def recorded() -> dict:
        return json.loads((pretrained / release.METRICS).read_text())["training"]

    assert release_run("worse") == 1
    assert "not released: 27.00 mm vs shipped 26.00 mm" in capsys.readouterr().out
    assert not (pretrained / WEIGHTS_FILE).exists()
    assert release_run("better") == 0
    assert recorded()["replaced"] == {"identity": "shipped", "score": 26.0}
    assert recorded()["reason"] == ""
    assert release_run("worse", "--force", "--reason", "held-out actions gain") == 0
    assert recorded()["replaced"] == {"identity": "shipped", "score": 26.0}
    text = release.choice_text(shipped_results | measure(SimpleNamespace(identity="worse"), sets),
                               recorded())  # fmt: skip
    assert "`shipped`: validation score (mean MPJPE of the two sets) 27.00 mm against 26.00." in (
        text.replace("\n", " ")
    )
    assert text.endswith("Released by hand (`--force`) because held-out actions gain.")
    assert release.refined_text(shipped_results) == ""  # no refined codes measured
    refined = {"refine": 8, "mpjpe_mm": 39.31, "pa_mpjpe_mm": 34.4, "facing_mpjpe_mm": 39.1}
    paragraph = release.refined_text({"humanml3d": {"refined": refined}}).replace("\n", " ")
    assert "among the 8 nearest (`--refine 8`" in paragraph
    assert "humanml3d 39.3 (PA 34.4, facing 39.1)" in paragraph
    unfit["why"] = "it trained on other splits"
    assert release_run("better") == 1  # not comparable: refused unless forced
    assert release_run("better", "--force", "--reason", "the splits changed") == 0
    assert recorded()["replaced"] == {
        "identity": "shipped",
        "score": None,
        "why": "it trained on other splits",
    }
    assert "not compared: it trained on other splits." in release.choice_text(
        shipped_results, recorded()
    )
    unfit["why"] = None
    assert release_run("shipped", "--force", "--reason", "the card is redone") == 0
    assert recorded()["replaced"] is None  # the same weights replace nothing new
    was = {"note": "in bf16", "date": "2026-01-02", "replaced": {"identity": "old", "score": 30.0}}
    shipped_metrics = json.dumps({"training": was, "results": shipped_results})
    assert release_run("shipped") == 0  # the card redone keeps how the model was trained
    assert {key: recorded()[key] for key in was} == was
    trained_with["seed_everything"] = 1
    assert release_run("better", "--minutes", "20") == 0  # the run's budget, not this one
    assert recorded()["command"].endswith("--train --steps 3000 --minutes 55 --seed 1")
    trained_with["model"] = {"lr": 2}  # not what the card's command would train
    assert release_run("better") == 1
    assert "other settings than configs/cpu.yaml (model.lr)" in capsys.readouterr().out
    assert release_run("better", "--force", "--reason", "a model option was tried") == 0
    assert recorded()["differs"] == {"model.lr": [2, 1]}
    assert release.differed(recorded()).endswith("differed from configs/cpu.yaml in model.lr)")
    for options in (["--force"], ["--reason", "why"]):  # one without the other
        with pytest.raises(SystemExit) as refused:
            release_run("better", *options)
        assert refused.value.code == 2
    assert "--force and --reason go together" in capsys.readouterr().err


def test_release_says_how_to_reproduce_a_run_from_what_lightning_saved(capsys, monkeypatch):
    """tools/release.py: a run trained as configs/cpu.yaml trains differs from it in nothing
    but its budget and seed, which the card's command gives; another model class is one
    difference, not one per argument."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    monkeypatch.chdir(REPO)
    from release import budget_minutes, max_time, reproduction, resolved_config

    for minutes in (20, 55, 110, 1500.5):  # a day and more too
        assert budget_minutes(max_time(minutes)) == minutes

    cpu = printed_config(capsys, "--config", "configs/cpu.yaml")
    budget = ["--trainer.max_time", "00:01:50:00", "--trainer.default_root_dir", "runs/x"]
    seeded = printed_config(
        capsys, "--config", "configs/cpu.yaml", *budget, "--seed_everything", "1"
    )
    steps = cpu["trainer"]["max_steps"]
    assert reproduction(seeded, cpu) == (f" --steps {steps} --minutes 110 --seed 1", {})
    other = printed_config(
        capsys, "--config", "configs/cpu.yaml", "--config", "configs/rvq.yaml",
        "--data.mirror", "false", "--trainer.gradient_clip_val", "0.5",
    )  # fmt: skip
    options, differs = reproduction(other, cpu)
    assert options == f" --steps {steps} --minutes 55"
    assert differs.keys() == {"data.mirror", "model.model", "trainer.gradient_clip_val"}
    assert differs["model.model"] == [
        "parttok.baselines.ResidualConvVQ",
        cpu["model"]["model"]["class_path"],
    ]
    assert resolved_config() == cpu  # in-process, as `parttok train --print_config` prints it
    resolved_config()["data"]["mirror"] = "changed"  # each call gets its own copy
    assert resolved_config()["data"]["mirror"] is True
    with pytest.raises(SystemExit, match="mirrr x does not resolve: .*unrecognized arguments"):
        resolved_config(("--data.mirrr", "x"))


def test_runs_trained_on_other_splits_are_not_measured(tmp_path, monkeypatch):
    """tools/release.py, recipe.py and compare.py measure a run only on the splits it trained
    on: a run records the train split of each folder (splits.json) when it starts."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    from release import SPLITS, splits_changed, training_splits

    data = tmp_path / "data"
    for name, ids in (("cmu", ["01_01", "02_01"]), ("bandai", ["walk_001"])):
        (data / name / "new_joint_vecs").mkdir(parents=True)
        for clip_id in ids:
            (data / name / "new_joint_vecs" / f"{clip_id}.npy").touch()
        (data / name / "train.txt").write_text("\n".join(ids) + "\n")
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "config.yaml").write_text("data:\n  data_dirs: [data/cmu, data/cmu]\n")
    assert "splits.json is missing" in splits_changed(run, training_splits(data))
    (run / SPLITS).write_text(json.dumps(training_splits(data)))
    assert splits_changed(run, training_splits(data)) is None
    (data / "bandai" / "train.txt").write_text("")  # a folder the run never read
    assert splits_changed(run, training_splits(data)) is None
    (data / "cmu" / "train.txt").write_text("01_01\n")  # 02_01 moved out of training
    assert "other splits of cmu" in splits_changed(run, training_splits(data))


def test_diagnose_bypasses_the_codebooks_and_nothing_else(monkeypatch, humanml3d_dir, tmp_path):
    """tools/diagnose.py: through the codes it is the tokenizer's own round trip; with the
    codebooks bypassed the reconstruction does not depend on them (codebooks swapped between
    parts change the first, not the second) and differs from the first; its table gives each
    set's cost of the codebooks; it measures a model only on the splits it trained on."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import diagnose

    tokenizer = Tokenizer.from_pretrained()
    paths = sorted((humanml3d_dir / "new_joint_vecs").glob("*.npy"))[:2]
    clips = {path.stem: np.load(path).astype(np.float32) for path in paths}
    through_codes = tokenizer.reconstruct_batch(list(clips.values()))
    bypassed = tokenizer.reconstruct_batch(list(clips.values()), quantize=False)
    for clip, coded, direct in zip(clips.values(), through_codes, bypassed, strict=True):
        np.testing.assert_allclose(coded, tokenizer.reconstruct(clip), atol=1e-5)
        assert direct.shape == coded.shape and np.abs(direct - coded).max() > 1e-3

    vectors = tokenizer.model.quantizer.codebook_vectors()
    scrambled = vectors.roll(1, dims=0)  # each part given another part's codebook
    monkeypatch.setattr(tokenizer.model.quantizer, "codebook_vectors", lambda: scrambled)
    again = tokenizer.reconstruct_batch(list(clips.values()), quantize=False)
    np.testing.assert_allclose(again[0], bypassed[0], atol=1e-5)
    coded_again = tokenizer.reconstruct_batch(list(clips.values()))
    assert np.abs(coded_again[0] - through_codes[0]).max() > 1e-3
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(REPO / "tools"))

    found = diagnose.diagnose(tokenizer, {"cmu": clips})
    assert found["cmu"]["codes"]["clips"] == 2
    assert found["cmu"]["codes"]["frames"] == sum(len(c) // 4 * 4 for c in clips.values())
    rows = diagnose.table(tokenizer, found, "python tools/diagnose.py", 10).splitlines()
    cost = found["cmu"]["codes"]["mpjpe_mm"] - found["cmu"]["bypassed"]["mpjpe_mm"]
    assert rows[-1].startswith("| CMU (trained on) | 2 |") and rows[-1].endswith(f"| {cost:+.1f} |")
    assert rows[0] == "## Where the error comes from"  # the shipped model's; another names its run
    named = diagnose.table(tokenizer, found, "python tools/diagnose.py", 10, "runs/x")
    assert named.startswith("## Where the error comes from, runs/x\n")

    with pytest.raises(SystemExit, match="not those the shipped model was measured on"):
        diagnose.trained_folders(None, tmp_path, {"bandai_val": {"x": 0}})
    monkeypatch.setattr(diagnose, "same_sets", lambda recorded, held_out: True)
    assert diagnose.trained_folders(None, tmp_path, {}) == ["bandai", "cmu", "cmu-iclone"]
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "config.yaml").write_text("data:\n  data_dirs: [data/cmu, data/cmu]\n")
    with pytest.raises(SystemExit, match="splits.json is missing"):
        diagnose.trained_folders(run / "tokenizer", tmp_path, {})


def test_diagnose_reads_what_a_real_run_trained_on(converted, tmp_path, monkeypatch):
    """tools/diagnose.py on a run of `parttok train`: the folders its saved config lists (each
    once), their train splits measured through the codes and with the codebooks bypassed; a
    run whose folder's train split has changed since is refused, not measured."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import diagnose
    from release import SPLITS, training_splits

    data = tmp_path / "data"
    data.mkdir()
    (data / "mix").symlink_to(converted, target_is_directory=True)
    run = tmp_path / "run"
    folders = f"[{data / 'mix'}, {data / 'mix'}]"  # listed twice: oversampled
    status = main(
        ["train", "--config", SMOKE, "--data.data_dirs", folders, "--trainer.max_steps", "2",
         "--trainer.default_root_dir", str(run)]
    )  # fmt: skip
    assert status == 0
    (run / SPLITS).write_text(json.dumps(training_splits(data)))
    assert diagnose.trained_folders(run / "tokenizer", data, {}) == ["mix"]

    sets = diagnose.training_sets(data, ["mix"], bandai_every=1)
    train_ids = (converted / "train.txt").read_text().split()
    assert sorted(sets["mix"]) == sorted(train_ids)
    found = diagnose.diagnose(Tokenizer.from_pretrained(run / "tokenizer"), sets)
    frames = sum(len(clip) // 4 * 4 for clip in sets["mix"].values())
    assert found["mix"]["codes"]["frames"] == found["mix"]["bypassed"]["frames"] == frames
    assert found["mix"]["codes"]["mpjpe_mm"] != found["mix"]["bypassed"]["mpjpe_mm"]

    moved = tmp_path / "moved"  # the same clips, one of them moved out of the train split
    (moved / "mix").mkdir(parents=True)
    (moved / "mix" / "new_joint_vecs").symlink_to(converted / "new_joint_vecs")
    (moved / "mix" / "train.txt").write_text("\n".join(train_ids[1:]) + "\n")
    with pytest.raises(SystemExit, match="trained on other splits of mix than now"):
        diagnose.trained_folders(run / "tokenizer", moved, {})


def test_the_rate_decays_by_the_clock_when_max_time_stops_a_run_before_its_last_step():
    """cpu.yaml caps both steps and time; on a slow machine the clock ends the run first, and
    the cosine must have reached its floor by then, not stopped a third of the way down."""
    from pytorch_lightning.callbacks import Timer

    from parttok.model import PartTokenizer
    from parttok.training import TokenizerModule

    module = TokenizerModule(PartTokenizer(dim=32, encoder_depth=1, decoder_depth=1, heads=2))
    timer = Timer(duration="00:00:10:00")
    timer.time_elapsed = lambda stage: 540.0  # 9 of 10 minutes gone
    timer.time_remaining = lambda stage: 60.0
    module._trainer = SimpleNamespace(max_steps=3000, callbacks=[timer])
    assert module._training_progress(1000) == pytest.approx(0.9)  # the clock leads
    assert module._training_progress(2900) == pytest.approx(2900 / 3000)  # the steps lead
    module._trainer = SimpleNamespace(max_steps=3000, callbacks=[])
    assert module._training_progress(1500) == pytest.approx(0.5)
