"""Instruction-tuning conversations on the real clips: content, cropping, camera, formats,
determinism, the ``parttok instruct`` command and its errors."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import small_tokenizer

from parttok.cli import main
from parttok.data import convert_sources, read_captions
from parttok.errors import InputError
from parttok.features import features_to_joints
from parttok.instruct import (
    Camera,
    InstructSettings,
    build_conversations,
    default_templates_path,
    detected_keypoints,
    format_record,
    keypoints_list,
    keypoints_text,
    load_templates,
    pose_joints,
    random_camera,
    write_conversations,
)
from parttok.skeleton import JOINT_NAMES
from parttok.tokenizer import POSE_DIR, Tokenizer
from parttok.tokens import Vocabulary, text_to_codes

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, humanml3d_dir) -> dict:
    """Small random motion and pose tokenizers, and where they are saved."""
    folder = tmp_path_factory.mktemp("checkpoints")
    motion, pose = (
        small_tokenizer(humanml3d_dir, codebook_size=512),
        small_tokenizer(humanml3d_dir, mode="pose", codebook_size=512, seed=1),
    )
    motion.save_pretrained(folder / "motion")
    pose.save_pretrained(folder / "pose")
    return {
        "motion": Tokenizer.from_pretrained(folder / "motion"),
        "pose": Tokenizer.from_pretrained(folder / "pose"),
        "motion_path": folder / "motion",
        "pose_path": folder / "pose",
    }


@pytest.fixture(scope="module")
def report(tokenizers, humanml3d_dir):
    return build_conversations(
        [humanml3d_dir], tokenizers["motion"], pose_tokenizer=tokenizers["pose"]
    )


def by_task(records: list[dict], task: str) -> list[dict]:
    return [record for record in records if record["task"] == task]


# --- templates ----------------------------------------------------------------------------
def test_default_templates_load():
    assert default_templates_path() == REPO / "parttok" / "instruct_templates.yaml"
    templates = load_templates()
    assert set(templates) == {"t2m", "caption", "predict", "pose", "pose_image"}
    assert all(len(phrasings) >= 2 for phrasings in templates.values())


@pytest.mark.parametrize(
    "content, message",
    [
        ("t2m: [", "unreadable template file"),
        ("- a list", "expected a mapping"),
        ("t2m:\n  - user: '{caption}'\n    assistant: '{motion}'\n", "no templates for 'caption'"),
    ],
)
def test_bad_template_files(tmp_path, content, message):
    path = tmp_path / "templates.yaml"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as error:
        load_templates(path)
    assert str(path) in str(error.value)


def test_template_placeholders_are_checked(tmp_path):
    text = default_templates_path().read_text().replace("{caption} Give", "{colour} Give")
    path = tmp_path / "templates.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=r"t2m\[3\]: unknown placeholder\(s\) \['colour'\]"):
        load_templates(path)


# --- camera and keypoints -----------------------------------------------------------------
def test_camera_projects_like_a_pinhole():
    camera = Camera(focal=600, distance=4.0, azimuth=0.0, elevation=0.0)
    pelvis = np.array([0.0, 1.0, 0.0])
    points = pelvis + np.array([[0, 0, 0], [0, 1, 0], [0.5, 0, 0], [0, 0, 1]])  # (4, 3)
    pixels = camera.project(points, target=pelvis)
    np.testing.assert_allclose(pixels[0], [320, 240])  # the target is the image centre
    np.testing.assert_allclose(pixels[1], [320, 240 - 600 * 1 / 4])  # up is up
    np.testing.assert_allclose(pixels[2], [320 + 600 * 0.5 / 4, 240])  # the body's left: right
    np.testing.assert_allclose(pixels[3], [320, 240])  # straight towards the camera
    side = Camera(focal=600, distance=4.0, azimuth=90.0, elevation=0.0)
    np.testing.assert_allclose(side.project(points[3:], target=pelvis), [[320 - 150, 240]])
    above = Camera(focal=600, distance=4.0, azimuth=0.0, elevation=30.0)
    assert above.project(points[3:], target=pelvis)[0, 1] > 240  # the near side drops
    with pytest.raises(InputError, match="behind the camera"):
        Camera(distance=0.5).project(points + [0, 0, 2], target=pelvis)
    with pytest.raises(InputError):
        Camera(elevation=90)


def test_pose_joints_are_the_body_without_its_trajectory(humanml3d_dir):
    features = np.load(humanml3d_dir / "new_joint_vecs" / "012314.npy")
    local = pose_joints(features)  # (T, 22, 3)
    world = features_to_joints(features)
    np.testing.assert_allclose(local[..., 1], world[..., 1], atol=1e-5)  # heights
    distances = np.linalg.norm(local[:, :, None] - local[:, None], axis=-1)
    world_distances = np.linalg.norm(world[:, :, None] - world[:, None], axis=-1)
    np.testing.assert_allclose(distances, world_distances, atol=1e-4)  # a rigid motion
    np.testing.assert_allclose(local[:, 0, [0, 2]], 0.0)
    facing = local[:, 2] - local[:, 1]  # right hip - left hip points along -X when facing +Z
    assert np.all(facing[:, 0] < 0)


def test_keypoints_text():
    pixels = np.arange(44, dtype=float).reshape(22, 2) + 0.4
    text = keypoints_text(pixels)
    assert text.startswith("pelvis (0, 1), left_hip (2, 3), ")
    assert len(re.findall(r"[a-z0-9_]+ \(\d+, \d+\)", text)) == 22
    assert text.split(" (")[0] == JOINT_NAMES[0]


# --- conversations from the real clips -------------------------------------------------------
def test_conversations_of_every_task(report, tokenizers, humanml3d_dir):
    captions = read_captions(humanml3d_dir / "texts" / "000000.txt")
    assert report.clips == 4 and not report.failed and report.uncaptioned == 3
    assert [len(by_task(report.records, t)) for t in ("t2m", "caption", "predict", "pose")] == [
        len(captions),
        len(captions),
        4,
        4,
    ]
    vocab = Vocabulary.from_tokenizer(tokenizers["motion"])
    features = np.load(humanml3d_dir / "new_joint_vecs" / "000000.npy")
    expected = tokenizers["motion"].encode(features)
    for record in by_task(report.records, "t2m"):
        assert record["clip"] == "000000" and record["frames"] == [0, len(features)]
        assert any(c.text in record["user"] for c in captions)
        np.testing.assert_array_equal(text_to_codes(record["assistant"], vocab).codes, expected)
    for record in by_task(report.records, "caption"):
        assert record["assistant"] in [c.text for c in captions]
        np.testing.assert_array_equal(text_to_codes(record["user"], vocab).codes, expected)


def test_prediction_splits_a_clip(report, tokenizers, humanml3d_dir):
    vocab = Vocabulary.from_tokenizer(tokenizers["motion"])
    for record in by_task(report.records, "predict"):
        features = np.load(humanml3d_dir / "new_joint_vecs" / f"{record['clip']}.npy")
        prompt = text_to_codes(record["user"], vocab).codes
        rest = text_to_codes(record["assistant"], vocab).codes
        assert len(prompt) == record["prompt_steps"] and len(rest) >= 1
        whole = tokenizers["motion"].encode(features)
        np.testing.assert_array_equal(np.concatenate([prompt, rest]), whole)
        assert 0.2 <= len(prompt) / len(whole) <= 0.8


def test_pose_estimation_records(report, tokenizers, humanml3d_dir):
    vocab = Vocabulary.from_tokenizer(tokenizers["pose"])
    for record in by_task(report.records, "pose"):
        features = np.load(humanml3d_dir / "new_joint_vecs" / f"{record['clip']}.npy")
        frame = record["frames"][0]
        codes = text_to_codes(record["assistant"], vocab, repair=False).codes
        np.testing.assert_array_equal(codes, tokenizers["pose"].encode(features[frame : frame + 1]))
        pixels = Camera(**record["camera"]).project(pose_joints(features[frame : frame + 1])[0])
        detected = np.array([[np.nan, np.nan] if k is None else k for k in record["keypoints"]])
        shown = ~np.isnan(detected[:, 0])
        assert shown.sum() >= 11  # at most half the joints missing
        error = np.abs(detected[shown] - pixels[shown])
        assert error.max() < 6 * 3.0 + 0.5  # pixel noise of 3 pixels, rounded
        assert keypoints_text(detected) in record["user"]
        names = [name for name, kept in zip(JOINT_NAMES, shown, strict=True) if kept]
        assert all(f"{name} (" in record["user"] for name in names)
        assert all(
            f" {name} (" not in record["user"]
            for name, kept in zip(JOINT_NAMES, shown, strict=True)
            if not kept and name != "pelvis"
        )


def test_detected_keypoints_look_like_a_detector(humanml3d_dir):
    """Random cameras put the body anywhere in the image, not on the pelvis at the centre;
    noise and missing joints come at the asked rates; no noise and a fixed camera is exact."""
    features = np.load(humanml3d_dir / "new_joint_vecs" / "012314.npy")
    joints = pose_joints(features[:1])[0]
    rng = random.Random(0)
    cameras = [random_camera(rng) for _ in range(200)]
    pelvis = np.array([c.project(joints)[0] for c in cameras])
    assert np.abs(pelvis - [320, 240]).max(axis=1).mean() > 20  # not centred
    assert len({c.azimuth for c in cameras}) > 150 and min(c.focal for c in cameras) >= 400
    exact = Camera().project(joints)
    detected = np.stack([detected_keypoints(exact, rng, 3.0, 0.1) for _ in range(200)])
    missing = np.isnan(detected[..., 0])
    assert 0.07 < missing.mean() < 0.13
    assert 2.7 < np.nanstd(detected - exact) < 3.3
    same = detected_keypoints(exact, rng, 0.0, 0.0)
    np.testing.assert_array_equal(same, exact)
    assert keypoints_list(same)[0] == [320, 240]  # aimed at the pelvis


def test_sub_clips_by_time_tags_and_bad_clips(tmp_path, tokenizers, humanml3d_dir):
    """A caption with time tags gets the crop [from * 20, to * 20); a too short one is left
    out; a damaged clip is reported and the rest kept."""
    folder = tmp_path / "data"
    (folder / "texts").mkdir(parents=True)
    (folder / "new_joint_vecs").mkdir()
    shutil.copy(humanml3d_dir / "new_joint_vecs" / "012314.npy", folder / "new_joint_vecs")
    (folder / "new_joint_vecs" / "broken.npy").write_bytes(b"not numpy")
    (folder / "texts" / "012314.txt").write_text(
        "a person walks.#a/DET person/NOUN walk/VERB#0.0#0.0\n"
        "a person turns.#a/DET person/NOUN turn/VERB#1.5#4.25\n"
        "a twitch.#a/DET twitch/NOUN#2.0#2.5\n"
    )
    result = build_conversations([folder], tokenizers["motion"], settings=InstructSettings())
    assert result.clips == 2 and len(result.failed) == 1 and "broken.npy" in result.failed[0][1]
    assert result.short_captions == 1
    features = np.load(folder / "new_joint_vecs" / "012314.npy")
    vocab = Vocabulary.from_tokenizer(tokenizers["motion"])
    crops = {r["user"]: r for r in by_task(result.records, "t2m")}
    (turn,) = [r for text, r in crops.items() if "turns" in text]
    assert turn["frames"] == [30, 85]
    expected = tokenizers["motion"].encode(features[30:85])
    np.testing.assert_array_equal(text_to_codes(turn["assistant"], vocab).codes, expected)
    assert not any("twitch" in text for text in crops)


def test_labels_written_by_convert_become_captions(tmp_path, tokenizers, bandai_dir):
    clips = sorted((bandai_dir / "data").glob("*.bvh"))[:2]
    converted = convert_sources(clips, tmp_path / "converted", jobs=1, show_progress=False)
    assert not converted.failed
    settings = InstructSettings(tasks=("t2m",), seed=3)
    result = build_conversations([tmp_path / "converted"], tokenizers["motion"], settings=settings)
    assert len(result.records) == 2
    for record in result.records:
        assert re.search(r"a person \w+.* in an? \w+ style\.", record["user"]), record["user"]


def test_deterministic_with_a_seed(tokenizers, humanml3d_dir, report):
    again = build_conversations(
        [humanml3d_dir], tokenizers["motion"], pose_tokenizer=tokenizers["pose"]
    )
    assert again.records == report.records
    other = build_conversations(
        [humanml3d_dir],
        tokenizers["motion"],
        settings=InstructSettings(seed=1),
        pose_tokenizer=tokenizers["pose"],
    )
    assert other.records != report.records
    assert len(other.records) == len(report.records)


def test_formats_and_files(report, tmp_path):
    record = by_task(report.records, "t2m")[0]
    chat = format_record(record, "messages")
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]
    assert chat["messages"][1]["content"] == record["assistant"] and chat["task"] == "t2m"
    llava = format_record(record, "llava")
    assert [t["from"] for t in llava["conversations"]] == ["human", "gpt"]
    assert llava["conversations"][0]["value"] == record["user"]
    lines = write_conversations(report.records, tmp_path / "a.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [r["id"] for r in report.records]
    array = json.loads(
        write_conversations(report.records, tmp_path / "a.json", "llava").read_text()
    )
    assert len(array) == len(report.records) and "conversations" in array[0]
    with pytest.raises(InputError, match="format"):
        format_record(record, "sharegpt")


# --- the command --------------------------------------------------------------------------
def test_instruct_command(tokenizers, humanml3d_dir, tmp_path, capsys):
    out = tmp_path / "conversations.jsonl"
    args = ["instruct", str(humanml3d_dir), "--out", str(out)]
    motion = ["--checkpoint", str(tokenizers["motion_path"])]
    assert main([*args, *motion, "--pose-checkpoint", "none"]) == 0
    captured = capsys.readouterr()
    assert "pose task skipped" in captured.err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["task"] for r in records} == {"t2m", "caption", "predict"}
    assert all("messages" in r for r in records)
    assert main([*args, *motion, "--tasks", "pose", "-f"]) == 0  # the shipped pose tokenizer
    records = [json.loads(line) for line in out.read_text().splitlines()]
    shipped = Vocabulary.from_tokenizer(Tokenizer.from_pretrained(POSE_DIR))
    assert records and all(r["task"] == "pose" for r in records)
    answers = [r["messages"][1]["content"] for r in records]
    assert all(text_to_codes(a, shipped).codes.shape == (1, 6) for a in answers)
    pose_args = ["--pose-checkpoint", str(tokenizers["pose_path"]), "--pose-input", "image"]
    status = main(
        [
            *args,
            "--checkpoint",
            str(tokenizers["motion_path"]),
            *pose_args,
            "--tasks",
            "pose",
            "--format",
            "llava",
            "-f",
        ]
    )
    assert status == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4 and all(r["task"] == "pose" for r in records)
    assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in records)


def test_instruct_command_bad_inputs(tokenizers, humanml3d_dir, tmp_path, capsys):
    checkpoint = ["--checkpoint", str(tokenizers["motion_path"])]
    existing = tmp_path / "exists.jsonl"
    existing.write_text("")
    bad_templates = tmp_path / "t.yaml"
    bad_templates.write_text("t2m: [")
    cases = [
        ([str(tmp_path / "missing")], "HumanML3D layout"),
        ([str(humanml3d_dir / "texts")], "HumanML3D layout"),
        ([str(humanml3d_dir), "--tasks", "dance"], "unknown task"),
        ([str(humanml3d_dir), "--tasks", "pose", "--pose-checkpoint", "none"], "--pose-checkpoint"),
        ([str(humanml3d_dir), "--templates", str(bad_templates)], "template"),
        ([str(humanml3d_dir), "--out", str(existing)], "exists"),
    ]
    for arguments, message in cases:
        out = [] if "--out" in arguments else ["--out", str(tmp_path / "x.jsonl")]
        assert main(["instruct", *arguments, *out, *checkpoint]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert error[-1].startswith("parttok instruct: error:") and message in error[-1]
    assert not (tmp_path / "x.jsonl").exists()


def test_instruct_command_keeps_good_clips(tokenizers, humanml3d_dir, tmp_path, capsys):
    folder = tmp_path / "data"
    shutil.copytree(humanml3d_dir / "new_joint_vecs", folder / "new_joint_vecs")
    shutil.copytree(humanml3d_dir / "texts", folder / "texts")
    np.save(folder / "new_joint_vecs" / "short.npy", np.zeros((3, 263), np.float32))
    out = tmp_path / "out.jsonl"
    status = main(
        ["instruct", str(folder), "--out", str(out), "--checkpoint", str(tokenizers["motion_path"])]
    )
    assert status == 2
    assert "short.npy: 3 frames" in capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # t2m, caption, predict and (the shipped pose tokenizer) pose for each of the 4 good clips
    assert len(records) == 4 * 4 and not any(r["clip"] == "short" for r in records)
