"""The token file format: exact round trips, and one clear error for every kind of bad file."""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

from parttok.errors import TokenFileError
from parttok.tokenfile import (
    FORMAT_VERSION,
    SHIPPED_MODEL,
    TokenFile,
    load_tokens,
    save_tokens,
)

PARTS = ("root", "torso", "left_arm", "right_arm", "left_leg", "right_leg")


def make_tokens(steps: int = 12, codes: np.ndarray | None = None, **changes) -> TokenFile:
    """Tokens of a clip of ``steps * 4 + 3`` frames (random codes unless given)."""
    if codes is None:
        codes = np.random.default_rng(steps).integers(0, 512, (steps, len(PARTS)))
    tokens = TokenFile(
        codes=codes,
        parts=PARTS,
        frames_per_step=4,
        fps=20,
        num_frames=len(codes) * 4 + 3,
        checkpoint="0123456789abcdef",
        codebook_size=512,
        source="012314",
        checkpoint_source="/models/parttok-small",
    )
    return replace(tokens, **changes)


def assert_same(loaded: TokenFile, saved: TokenFile) -> None:
    np.testing.assert_array_equal(loaded.codes, saved.codes)
    for name in ("parts", "frames_per_step", "fps", "num_frames", "checkpoint", "codebook_size"):
        assert getattr(loaded, name) == getattr(saved, name), name
    for name in ("kind", "mode", "source", "checkpoint_source", "precision", "refine"):
        assert getattr(loaded, name) == getattr(saved, name), name
    assert loaded.version == FORMAT_VERSION


def test_codes_round_trip_exactly_in_the_narrowest_integer_type(tmp_path: Path) -> None:
    tokens = make_tokens()
    path = save_tokens(tmp_path / "clip.ptok", tokens)
    loaded = load_tokens(path, expect_identity="0123456789abcdef")
    assert_same(loaded, tokens)
    assert loaded.codes.dtype == np.int16 and loaded.codes.shape == (12, 6)
    big = make_tokens(codes=tokens.codes + 65_000, codebook_size=70_000)
    assert load_tokens(save_tokens(tmp_path / "big.ptok", big)).codes.dtype == np.int32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.ptok", "clip.ptok"]


def test_continuous_part_features_round_trip_exactly(tmp_path: Path) -> None:
    features = np.random.default_rng(0).normal(size=(7, 6, 16)).astype(np.float32)
    tokens = make_tokens(codes=features, kind="continuous", codebook_size=None, mode="continuous")
    loaded = load_tokens(save_tokens(tmp_path / "clip.ptok", tokens))
    assert_same(loaded, tokens)
    assert loaded.codes.dtype == np.float32


def test_a_token_file_is_plain_safetensors_with_its_metadata(tmp_path: Path) -> None:
    path = save_tokens(tmp_path / "clip.ptok", make_tokens())
    with safe_open(str(path), "np") as handle:
        metadata = handle.metadata()
        assert list(handle.keys()) == ["codes"]
    assert metadata["format"] == "parttok-tokens" and metadata["version"] == str(FORMAT_VERSION)
    header = json.loads(metadata["header"])
    assert header["parts"] == list(PARTS) and header["num_frames"] == 51


def test_precision_and_refine_round_trip_and_older_files_read_as_before(tmp_path: Path) -> None:
    mixed = make_tokens(precision="bf16-mixed", refine=8)
    loaded = load_tokens(save_tokens(tmp_path / "mixed.ptok", mixed))
    assert_same(loaded, mixed)
    assert loaded.refine == 8
    header = json.loads(
        safe_open(str(save_tokens(tmp_path / "a.ptok", mixed)), "np").metadata()["header"]
    )
    del header["precision"], header["refine"]  # as written before parttok recorded them
    older = write_with_metadata(tmp_path / "older.ptok", {"header": json.dumps(header)})
    assert load_tokens(older).precision == "32-true" and load_tokens(older).refine == 0
    format_1 = write_format_1(tmp_path / "format1.ptok", make_tokens(), drop=("refine",))
    assert_same(replace(load_tokens(format_1), version=FORMAT_VERSION), make_tokens())
    assert load_tokens(format_1).version == 1


def write_format_1(path: Path, tokens: TokenFile, drop: tuple[str, ...] = ()) -> Path:
    """``tokens`` as parttok wrote them in format 1: the CRC-32 of the codes alone in the
    header, the header's fields ``drop`` left out."""
    codes = np.ascontiguousarray(tokens.codes, dtype=np.int16)
    header = {k: v for k, v in asdict(tokens).items() if k not in ("codes", "version", *drop)}
    header.update(parts=list(tokens.parts), crc32=zlib.crc32(codes.tobytes()))
    metadata = {"format": "parttok-tokens", "version": "1", "header": json.dumps(header)}
    save_file({"codes": codes}, str(path), metadata=metadata)
    return path


def test_saving_replaces_an_existing_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "clip.ptok"
    save_tokens(path, make_tokens(steps=3))
    save_tokens(path, make_tokens(steps=5))
    assert load_tokens(path).num_steps == 5
    assert [p.name for p in tmp_path.iterdir()] == ["clip.ptok"]


@settings(max_examples=40, deadline=None)
@given(
    steps=st.integers(0, 40),
    parts=st.integers(1, 8),
    codebook_size=st.sampled_from([2, 512, 32768, 32769, 2**20]),
    seed=st.integers(0, 2**16),
)
def test_any_codes_round_trip(tmp_path_factory, steps, parts, codebook_size, seed) -> None:
    codes = np.random.default_rng(seed).integers(0, codebook_size, (steps, parts))
    names = tuple(f"part{i}" for i in range(parts))
    tokens = make_tokens(codes=codes, parts=names, codebook_size=codebook_size)
    path = tmp_path_factory.mktemp("tokens") / "clip.ptok"
    assert_same(load_tokens(save_tokens(path, tokens)), tokens)


def write_with_metadata(path: Path, changes: dict) -> Path:
    """A copy of a good token file with some metadata entries replaced, its checksum made
    to fit them (as a faulty writer would)."""
    good = save_tokens(path.with_name("good.ptok"), make_tokens())
    with safe_open(str(good), "np") as handle:
        metadata, codes = handle.metadata(), handle.get_tensor("codes")
    metadata.update(changes)
    crc = zlib.crc32(codes.tobytes(), zlib.crc32(metadata["header"].encode()))
    save_file({"codes": codes}, str(path), metadata={**metadata, "crc32": str(crc)})
    return path


def expect_error(path: Path, *fragments: str, identity: str | None = None) -> None:
    with pytest.raises(TokenFileError) as caught:
        load_tokens(path, expect_identity=identity)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_truncated_empty_and_foreign_files_are_refused(tmp_path: Path) -> None:
    good = save_tokens(tmp_path / "good.ptok", make_tokens()).read_bytes()
    for name, content in {
        "truncated.ptok": good[:-5],
        "header-only.ptok": good[:40],
        "empty.ptok": b"",
        "text.ptok": b"<motion_id_1><motion_id_2>",
    }.items():
        (tmp_path / name).write_bytes(content)
        expect_error(tmp_path / name, "damaged or not a token file")
    model_weights = tmp_path / "model.ptok"
    save_file({"weight": np.zeros((2, 2), np.float32)}, str(model_weights))
    expect_error(model_weights, "not a parttok token file")
    expect_error(tmp_path / "missing.ptok", "cannot read")
    (tmp_path / "walk.bvh").write_text("HIERARCHY\nROOT Hips\n")
    expect_error(tmp_path / "walk.bvh", "not a token file (a BVH file?")


def test_corrupted_codes_fail_the_checksum(tmp_path: Path) -> None:
    path = save_tokens(tmp_path / "clip.ptok", make_tokens())
    content = bytearray(path.read_bytes())
    content[-3] ^= 0x01  # a flipped bit in the codes
    path.write_bytes(bytes(content))
    expect_error(path, "checksum mismatch")


def test_damaged_header_is_refused(tmp_path: Path) -> None:
    expect_error(write_with_metadata(tmp_path / "a.ptok", {"header": "{"}), "bad header")
    header = json.dumps({"kind": "codes"})
    expect_error(write_with_metadata(tmp_path / "b.ptok", {"header": header}), "bad header")
    expect_error(write_with_metadata(tmp_path / "c.ptok", {"version": "x"}), "bad version")


def test_a_newer_format_asks_for_an_upgrade(tmp_path: Path) -> None:
    path = write_with_metadata(tmp_path / "new.ptok", {"version": str(FORMAT_VERSION + 1)})
    expect_error(path, f"newer parttok (format {FORMAT_VERSION + 1}", "upgrade parttok")


def test_codes_of_another_checkpoint_are_refused_with_advice(tmp_path: Path) -> None:
    path = save_tokens(tmp_path / "clip.ptok", make_tokens())
    expect_error(
        path,
        "tokens were made by checkpoint 0123456789abcdef, this is fedcba9876543210",
        "decode with --checkpoint /models/parttok-small",
        identity="fedcba9876543210",
    )
    shipped = save_tokens(tmp_path / "s.ptok", make_tokens(checkpoint_source=SHIPPED_MODEL))
    expect_error(shipped, "without --checkpoint", identity="fedcba9876543210")
    assert load_tokens(path, expect_identity="0123456789abcdef").checkpoint == "0123456789abcdef"


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"parts": PARTS[:5]}, "for 5 parts"),
        ({"codes": np.full((12, 6), 512)}, "codes outside [0, 512)"),
        ({"codes": np.full((12, 6), -1)}, "codes outside [0, 512)"),
        ({"codes": np.zeros((12, 6), np.float32)}, "codes must be integers"),
        ({"num_frames": 47}, "12 steps do not fit in 47 frames"),
        ({"codes": np.zeros((12, 6, 2), np.int64)}, "codes of shape (12, 6, 2)"),
        ({"frames_per_step": 0}, "frames per step 0"),
        ({"kind": "text"}, "unknown token kind"),
    ],
)
def test_inconsistent_tokens_are_not_written(tmp_path: Path, changes: dict, fragment: str) -> None:
    path = tmp_path / "clip.ptok"
    with pytest.raises(TokenFileError, match=re.escape(fragment)):
        save_tokens(path, make_tokens(**changes))
    assert not path.exists()
