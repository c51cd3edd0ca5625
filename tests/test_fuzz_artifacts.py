"""A fuzz corpus for checkpoints, token files and training inputs (issue 26), made at test
time: structured mutations of the shipped checkpoint folder and of token files encoded from
real clips, Lightning checkpoints (truncated, without their description, a pickle that
would run code), and seeded random byte flips. Through the public API each is one line of
CheckpointError or TokenFileError, or (a flip that changes nothing read) loads as before;
through the ``parttok`` command line each is one line on stderr, exit status 2, no
traceback and nothing partial written. Identical inputs give identical bytes."""

from __future__ import annotations

import copy
import json
import random
import shutil
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

import parttok
from parttok.cli import main
from parttok.errors import CheckpointError, TokenFileError
from parttok.tokenfile import FORMAT_VERSION, load_tokens
from parttok.tokenizer import CONFIG_FILE, PRETRAINED_DIR, WEIGHTS_FILE

REPO = Path(__file__).resolve().parents[1]
CLIP = "M010655"  # the shortest HumanML3D clip: 15 steps
RANDOM_FLIPS = 24  # seeded random byte flips per checkpoint file


def one_line(error: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- checkpoints ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> tuple[dict, dict[str, torch.Tensor]]:
    """The shipped checkpoint's config and tensors."""
    config = json.loads((PRETRAINED_DIR / CONFIG_FILE).read_text())
    return config, load_file(str(PRETRAINED_DIR / WEIGHTS_FILE))


def write_checkpoint(folder: Path, config: dict | str, tensors: dict) -> Path:
    folder.mkdir(parents=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / CONFIG_FILE).write_text(text)
    save_file(tensors, str(folder / WEIGHTS_FILE))
    return folder


def _set(key: str, value) -> Callable:
    """A change of config entry ``key`` (``model_config.NAME``: a model setting)."""

    def change(config: dict, tensors: dict) -> None:
        *within, name = key.split(".")
        (config[within[0]] if within else config)[name] = value

    return change


def _tensor(name: str, value: torch.Tensor) -> Callable:
    return lambda config, tensors: tensors.update({name: value})


def _poison(value: float) -> Callable:
    def change(config: dict, tensors: dict) -> None:
        name = "model.quantizer.vq._codebook.embed"
        tensors[name] = tensors[name].clone()
        tensors[name][2, 7, 0] = value

    return change


def _nested_parts(config: dict, tensors: dict) -> None:
    config["model_config"]["parts"] = {"root": json.loads("[" * 500 + "]" * 500)}


def _deep_json(config: dict, tensors: dict) -> str:
    return '{"a":' * 100_000 + "1" + "}" * 100_000


# name -> (change of the shipped config and tensors (or the config text it returns), message)
CHECKPOINT_CASES: dict[str, tuple[Callable, str]] = {
    "version-text": (_set("version", "abc"), "bad format version 'abc'"),
    "version-list": (_set("version", [1]), "bad format version [1]"),
    "version-newer": (_set("version", 99), "newer parttok (format 99)"),
    "heads-0": (
        _set("model_config.heads", 0),
        "setting 'heads' of PartTokenizer: expected a whole number",
    ),
    "dim-10M": (_set("model_config.dim", 10_000_000), "setting 'dim' of PartTokenizer"),
    "depth-1M": (_set("model_config.encoder_depth", 1_000_000), "setting 'encoder_depth'"),
    "heads-float": (
        _set("model_config.heads", 4.5),
        "setting 'heads' of PartTokenizer: expected int",
    ),
    "dim-true": (_set("model_config.dim", True), "setting 'dim' of PartTokenizer: expected int"),
    "dropout-negative": (_set("model_config.dropout", -1.0), "setting 'dropout'"),
    "unknown-setting": (_set("model_config.cosine_codes", True), "unknown setting 'cosine_codes'"),
    "removed-setting-on": (  # loads only at its old default (false), as the shipped one holds
        _set("model_config.rotation_trick", True),
        "setting 'rotation_trick' of PartTokenizer was removed from parttok; only its old "
        "default false loads, got True",
    ),
    "removed-projector": (
        _set("model_config.llm_hidden_size", 768),
        "setting 'llm_hidden_size' of PartTokenizer was removed",
    ),
    "parts-nested": (_nested_parts, "setting 'parts' of PartTokenizer"),
    "dead-code-threshold": (_set("model_config.dead_code_threshold", 1e9), "config does not fit"),
    "dim-64": (_set("model_config.dim", 64), "weights do not fit the model config"),
    "model-class": (_set("model_class", "os.system"), "unknown model class 'os.system'"),
    "model-config-list": (_set("model_config", [1]), "model config: expected a mapping"),
    "json-100k-deep": (_deep_json, "not valid JSON (nested too deeply)"),
    "config-2MB": (lambda c, t: json.dumps({**c, "pad": " " * (2 << 20)}), "not a config"),
    "mean-shape": (_tensor("stats.mean", torch.zeros(10)), "stats.mean must be (263,)"),
    "std-shape": (_tensor("stats.std", torch.ones(263, 2)), "stats.std must be (263,)"),
    "std-zero": (_tensor("stats.std", torch.zeros(263)), "263 zero or negative entries"),
    "mean-nan": (_tensor("stats.mean", torch.full((263,), torch.nan)), "stats.mean hold NaN"),
    "weights-nan": (_poison(float("nan")), "hold NaN or infinite values"),
    "weights-inf": (_poison(float("inf")), "hold NaN or infinite values"),
}


@pytest.fixture(scope="module")
def bad_checkpoints(shipped, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    folders = {}
    for name, (change, _) in CHECKPOINT_CASES.items():
        config, tensors = copy.deepcopy(shipped[0]), dict(shipped[1])
        text = change(config, tensors)
        folders[name] = write_checkpoint(root / name, text or config, tensors)
    return folders


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_a_bad_checkpoint_is_one_line_before_anything_is_built(
    bad_checkpoints, humanml3d_dir: Path, tmp_path: Path, capsys, case: str
) -> None:
    folder, fragment = bad_checkpoints[case], CHECKPOINT_CASES[case][1]
    with pytest.raises(CheckpointError) as caught:
        parttok.Tokenizer.from_pretrained(folder)
    one_line(caught, str(folder), fragment)
    out = tmp_path / "tokens"
    clip = humanml3d_dir / "new_joint_vecs" / f"{CLIP}.npy"
    status, lines = run_cli(capsys, "encode", clip, "--out", out, "--checkpoint", folder, "-q")
    assert status == 2 and len(lines) == 1 and fragment in lines[0], lines
    assert not out.exists()


class _Opens:
    """A pickle that would create ``marker`` when unpickled (code that must never run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def lightning_checkpoint(shipped, path: Path, drop: str = "", extra: dict | None = None) -> Path:
    """The shipped weights as ``parttok train`` saves them in a ``.ckpt``, less ``drop``."""
    config, tensors = shipped
    state = {k: v for k, v in tensors.items() if k.startswith("model.")}
    state.update(mean=tensors["stats.mean"], std=tensors["stats.std"])
    info = {"model_class": config["model_class"], "model_config": config["model_config"]}
    info.pop(drop, None)
    state.pop(drop, None)
    torch.save({"state_dict": state, "parttok": info, "global_step": 5, **(extra or {})}, path)
    return path


def test_lightning_checkpoints_load_safely_or_are_one_line(shipped, tmp_path: Path) -> None:
    good = lightning_checkpoint(shipped, tmp_path / "good.ckpt")
    assert parttok.Tokenizer.from_pretrained(good).parts == tuple(shipped[0]["parts"])
    # the shipped settings hold removed ones at their old defaults (dropped); another value
    # of one is refused
    assert {"rotation_trick", "llm_hidden_size", "projector"} <= shipped[0]["model_config"].keys()
    rotated = copy.deepcopy(shipped[0])
    rotated["model_config"]["rotation_trick"] = True
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:4000])
    marker = tmp_path / "ran"
    cases = {
        lightning_checkpoint(shipped, tmp_path / "a.ckpt", "model_class"): "no model description",
        lightning_checkpoint(shipped, tmp_path / "b.ckpt", "mean"): "no normalisation statistics",
        truncated: "cannot read as a safe Lightning checkpoint (PytorchStreamReader",
        lightning_checkpoint((rotated, shipped[1]), tmp_path / "d.ckpt"): (
            "setting 'rotation_trick' of PartTokenizer was removed"
        ),
        lightning_checkpoint(shipped, tmp_path / "c.ckpt", extra={"x": _Opens(marker)}): (
            "refused, not only tensors and numbers: Unsupported global: GLOBAL io.open"
        ),
    }
    for path, fragment in cases.items():
        with pytest.raises(CheckpointError) as caught:
            parttok.Tokenizer.from_pretrained(path)
        assert "weights_only" not in one_line(caught, str(path), fragment)
    assert not marker.exists()


def flip_bytes(data: bytes, rng: random.Random, within: int) -> bytes:
    """``data`` with one to three bytes among its first ``within`` replaced at random."""
    damaged = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        damaged[rng.randrange(min(within, len(data)))] = rng.randrange(256)
    return bytes(damaged)


def test_random_byte_flips_of_a_checkpoint_load_or_are_one_line(shipped, tmp_path: Path) -> None:
    """Flips in config.json, in the weights' header and anywhere in the weights."""
    config_bytes = (PRETRAINED_DIR / CONFIG_FILE).read_bytes()
    weights_bytes = (PRETRAINED_DIR / WEIGHTS_FILE).read_bytes()
    header = 8 + int.from_bytes(weights_bytes[:8], "little")
    rng = random.Random(26)
    refused = 0
    for index in range(3 * RANDOM_FLIPS):
        config, weights = config_bytes, weights_bytes
        if index % 3 == 0:
            config = flip_bytes(config_bytes, rng, len(config_bytes))
        else:
            weights = flip_bytes(weights_bytes, rng, header if index % 3 == 1 else len(weights))
        folder = tmp_path / str(index)
        folder.mkdir()
        (folder / CONFIG_FILE).write_bytes(config)
        (folder / WEIGHTS_FILE).write_bytes(weights)
        try:
            tokenizer = parttok.Tokenizer.from_pretrained(folder)
        except CheckpointError as error:
            assert "\n" not in str(error) and str(folder) in str(error)
            refused += 1
        else:
            assert np.isfinite(tokenizer.std).all() and (tokenizer.std > 0).all()
        shutil.rmtree(folder)
    assert refused >= RANDOM_FLIPS  # most flips are refused; a few change a value that loads


# --- token files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoded(humanml3d_dir: Path, tmp_path_factory) -> Path:
    """A token file of a real clip made by ``parttok encode`` with the shipped model."""
    out = tmp_path_factory.mktemp("encoded")
    clip = humanml3d_dir / "new_joint_vecs" / f"{CLIP}.npy"
    assert main(["encode", str(clip), "--out", str(out), "-q", "--workers", "0"]) == 0
    return out / f"{CLIP}.ptok"


def stored(path: Path) -> tuple[dict[str, str], np.ndarray]:
    with safe_open(str(path), "np") as handle:
        return handle.metadata(), handle.get_tensor("codes")


def resealed(path: Path, source: Path, header: Callable | None = None, **metadata) -> Path:
    """A copy of token file ``source`` with its header changed by ``header`` (dict ->
    dict or text) and ``metadata`` entries replaced, its checksum made to fit (the CRC-32 of
    the header's bytes then the tensor's): what a faulty writer would make."""
    old, codes = stored(source)
    codes = metadata.pop("codes", codes)
    text = old["header"]
    if header is not None:
        changed = header(json.loads(text))
        text = changed if isinstance(changed, str) else json.dumps(changed)
    crc = zlib.crc32(np.ascontiguousarray(codes).tobytes(), zlib.crc32(text.encode()))
    save_numpy({"codes": codes}, str(path), {**old, "header": text, "crc32": str(crc), **metadata})
    return path


def bit_flipped(path: Path, source: Path, old: bytes, new: bytes) -> Path:
    data = source.read_bytes()
    assert data.count(old) == 1 and bin(int.from_bytes(old) ^ int.from_bytes(new)).count("1") == 1
    path.write_bytes(data.replace(old, new))
    return path


def format_1(path: Path, source: Path, header: Callable) -> Path:
    """``source`` as format 1 wrote it (the CRC-32 of the codes alone, in the header), its
    header then changed by ``header``, which format 1 does not notice."""
    metadata, codes = stored(source)
    fields = json.loads(metadata["header"]) | {"crc32": zlib.crc32(codes.tobytes())}
    text = json.dumps(header(fields))
    save_numpy(
        {"codes": codes}, str(path), {"format": "parttok-tokens", "version": "1", "header": text}
    )
    return path


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def one_bit_flipped(data: bytes, position: int, bit: int) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= 1 << bit
    return bytes(damaged)


def _with(**changes) -> Callable[[dict], dict]:
    return lambda header: {**header, **changes}


def _without(name: str) -> Callable[[dict], dict]:
    return lambda header: {k: v for k, v in header.items() if k != name}


# name -> (how the bad file is made from a good one: (path, good) -> path, message)
TOKEN_CASES: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "right-arm-bit-flip": (
        lambda p, g: bit_flipped(p, g, b"right_arm", b"rigit_arm"),
        "checksum mismatch",
    ),
    "codes-bit-flip": (
        lambda p, g: written(p, one_bit_flipped(g.read_bytes(), -3, 2)),
        "checksum mismatch",
    ),
    "fps-1e999": (
        lambda p, g: resealed(p, g, lambda h: json.dumps(h)[:-1] + ', "fps": 1e999}'),
        "'fps' expected a whole number in [1, 1000], got inf",
    ),  # fmt: skip
    "fps-text": (lambda p, g: resealed(p, g, _with(fps="20")), "'fps' expected a whole number"),
    "header-100k-deep": (
        lambda p, g: resealed(p, g, lambda h: "[" * 100_000 + "]" * 100_000),
        "bad header: nested too deeply",
    ),
    "header-list": (lambda p, g: resealed(p, g, lambda h: "[]"), "bad header: not a mapping"),
    "digits-5000": (
        lambda p, g: resealed(p, g, lambda h: json.dumps(h)[:-1] + ', "x": ' + "9" * 5000 + "}"),
        "bad header",
    ),
    "no-parts": (lambda p, g: resealed(p, g, _without("parts")), "bad header: no 'parts'"),
    "parts-twice": (
        lambda p, g: resealed(p, g, _with(parts=["root"] * 6)),
        "'parts' expected distinct part names",
    ),
    "frames-negative": (lambda p, g: resealed(p, g, _with(num_frames=-1)), "'num_frames'"),
    "kind-unknown": (lambda p, g: resealed(p, g, _with(kind="text")), "'kind' expected one of"),
    "codebook-0": (lambda p, g: resealed(p, g, _with(codebook_size=0)), "'codebook_size'"),
    "codes-float": (
        lambda p, g: resealed(p, g, codes=stored(g)[1].astype(np.float32)),
        "codes stored as float32",
    ),
    "no-checksum": (lambda p, g: resealed(p, g, crc32=""), "damaged token file (no checksum)"),
    "version-0": (lambda p, g: resealed(p, g, version="0"), "bad version '0'"),
    "version-digits": (lambda p, g: resealed(p, g, version="9" * 5000), "bad version"),
    "version-newer": (lambda p, g: resealed(p, g, version="3"), "newer parttok (format 3"),
    "format-1-unknown-field": (
        lambda p, g: format_1(p, g, _with(mdoe="motion")),
        "bad header: fields ['mdoe']",
    ),
    "format-1-checksum": (
        lambda p, g: format_1(p, g, _with(crc32=1)),
        "damaged token file (checksum mismatch)",
    ),
    "truncated": (lambda p, g: written(p, g.read_bytes()[:-7]), "damaged or not a"),
    "empty": (lambda p, g: written(p, b""), "damaged or not a token file"),
}


@pytest.fixture(scope="module")
def bad_tokens(encoded: Path, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad-tokens")
    return {name: make(folder / f"{name}.ptok", encoded) for name, (make, _) in TOKEN_CASES.items()}


def test_bad_token_files_are_one_line_through_the_api_and_compose(
    bad_tokens, encoded: Path, tmp_path: Path, capsys
) -> None:
    for name, path in bad_tokens.items():
        with pytest.raises(TokenFileError) as caught:
            load_tokens(path)
        one_line(caught, str(path), TOKEN_CASES[name][1])
        out = tmp_path / f"{name}.ptok"
        status, lines = run_cli(
            capsys, "compose", path, encoded, "--parts", "left_arm", "--out", out
        )
        assert status == 2 and len(lines) == 1 and TOKEN_CASES[name][1] in lines[0], lines
        assert not out.exists() and not list(tmp_path.iterdir())


def test_decode_reports_each_bad_token_file_once_and_decodes_the_rest(
    bad_tokens, encoded: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "tokens"
    folder.mkdir()
    shutil.copy(encoded, folder)
    for path in bad_tokens.values():
        shutil.copy(path, folder)
    # format 1's header is not under its checksum: a flipped part name loads, decode refuses it
    flipped = format_1(folder / "format-1-flip.ptok", encoded, _with(parts=[
        "root", "torso", "left_arm", "rigit_arm", "left_leg", "right_leg"]))  # fmt: skip
    assert load_tokens(flipped).parts[3] == "rigit_arm"
    out = tmp_path / "decoded"
    status, lines = run_cli(capsys, "decode", folder, "--out", out, "-q", "--workers", "0")
    assert status == 2
    for name, path in bad_tokens.items():
        named = [line for line in lines if f"{folder / path.name}:" in line]
        assert len(named) == 1 and TOKEN_CASES[name][1] in named[0], (name, lines)
    named = [line for line in lines if f"{flipped}:" in line]
    assert len(named) == 1 and "'rigit_arm'" in named[0], lines
    assert sorted(p.name for p in out.iterdir()) == [f"{CLIP}.npy"]


def test_a_one_bit_flip_anywhere_in_a_token_file_is_refused(encoded: Path, tmp_path: Path) -> None:
    """A bit of every byte flipped in turn (which bit, seeded): refused in one line, every
    one (the header and the codes are under the checksum, the layout checked by the
    safetensors reader)."""
    data = encoded.read_bytes()
    rng = random.Random(8)
    path = tmp_path / "flipped.ptok"
    for position in range(len(data)):
        bit = rng.randrange(8)
        path.write_bytes(one_bit_flipped(data, position, bit))
        try:
            tokens = load_tokens(path)
        except TokenFileError as error:
            assert "\n" not in str(error)
        else:
            raise AssertionError(f"byte {position} bit {bit} went unseen: {tokens}")


def test_random_byte_flips_of_a_token_file_are_refused_or_change_nothing(
    encoded: Path, tmp_path: Path
) -> None:
    good = load_tokens(encoded)
    data = encoded.read_bytes()
    rng = random.Random(11)
    path = tmp_path / "flipped.ptok"
    for _ in range(400):
        path.write_bytes(flip_bytes(data, rng, len(data)))
        try:
            tokens = load_tokens(path)
        except TokenFileError as error:
            assert "\n" not in str(error)
        else:  # a byte replaced by itself
            assert replace(tokens, codes=None) == replace(good, codes=None)
            np.testing.assert_array_equal(tokens.codes, good.codes)


# --- identical inputs, identical bytes ---------------------------------------------------------


def test_identical_inputs_give_identical_bytes(
    encoded: Path, humanml3d_dir: Path, tmp_path: Path, capsys
) -> None:
    """Token files, vocabularies and conversations (the same seed): a second run writes the
    same bytes (the safetensors library ordered token files' metadata by a random hash, so
    two runs differed even in one process). The first run's token file is ``encoded``."""
    clip = humanml3d_dir / "new_joint_vecs" / f"{CLIP}.npy"
    for run in ("first", "second"):
        out = tmp_path / run
        if run == "second":
            assert main(["encode", str(clip), "--out", str(out), "-q", "--workers", "0"]) == 0
        assert main(["vocab", "--out", str(out)]) == 0
        chat = ["instruct", str(humanml3d_dir), "--out", str(out / "chat.jsonl"), "--seed", "3"]
        assert main(chat) == 0
    first, second = tmp_path / "first", tmp_path / "second"
    assert (second / encoded.name).read_bytes() == encoded.read_bytes()
    for name in ("vocab.json", "chat.jsonl"):
        assert (second / name).read_bytes() == (first / name).read_bytes(), name
    data = encoded.read_bytes()
    layout = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert list(layout["__metadata__"]) == ["crc32", "format", "header", "version"]
    assert layout["__metadata__"]["version"] == str(FORMAT_VERSION)


# --- parttok train -------------------------------------------------------------------------


def test_train_refuses_bad_inputs_in_one_line_before_anything_runs(
    shipped, humanml3d_dir: Path, tmp_path: Path, capsys
) -> None:
    good = lightning_checkpoint(shipped, tmp_path / "good.ckpt")
    truncated = tmp_path / "last.ckpt"
    truncated.write_bytes(good.read_bytes()[:4000])
    marker = tmp_path / "ran"
    malicious = lightning_checkpoint(shipped, tmp_path / "evil.ckpt", extra={"x": _Opens(marker)})
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(truncated, resumed / "checkpoints" / "last.ckpt")
    data = f"[{humanml3d_dir}]"
    cases = [
        ("run", ["--data.data_dirs", "/nonexistent"], 'Parser key "data.data_dirs"'),
        ("run", ["--data.data_dirs", "[/nonexistent]"], "/nonexistent: not a folder in the"),
        ("run", ["--data.data_dirs", data, "--ckpt_path", truncated], f"{truncated}: cannot read"),
        ("run", ["--data.data_dirs", data, "--ckpt_path", malicious], "refused, not only tensors"),
        ("run", ["--data.data_dirs", data, "--ckpt_path", tmp_path / "no.ckpt"], "no such"),
        ("resumed", ["--data.data_dirs", data, "--ckpt_path", "last"], "last.ckpt: cannot read"),
    ]
    for run, extra, fragment in cases:
        root = tmp_path / run
        before = sorted(root.rglob("*"))
        argv = ["train", "--config", REPO / "configs" / "smoke.yaml", *extra]
        status, lines = run_cli(capsys, *argv, "--trainer.default_root_dir", root)
        assert status == 2 and len(lines) == 1 and fragment in lines[0], lines
        assert lines[0].startswith("parttok train: error: ")
        assert sorted(root.rglob("*")) == before  # no run folder, no logs, no config
    assert not marker.exists()
