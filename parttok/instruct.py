"""Instruction-tuning conversations from captioned motion: text-to-motion, motion
captioning, motion prediction and pose estimation from 2D keypoints.

Sources are folders in the HumanML3D layout (``new_joint_vecs/`` + ``texts/``, as HumanML3D
ships them or ``parttok convert`` writes them). A caption with time tags describes the
sub-clip ``features[int(from * 20) : int(to * 20)]``, which is what gets encoded.

Tasks: ``t2m`` (caption -> motion tokens) and ``caption`` (motion tokens -> caption), one
conversation per caption; ``predict`` (the first 25-75 % of a clip's steps -> the rest), one
per clip; ``pose`` (2D keypoints of one random frame as a detector gives them: projected by
a pinhole ``Camera`` drawn at random (``random_camera``: position, height, yaw, pitch, focal
length, aimed near but not at the pelvis), with pixel noise and some joints missing
(``detected_keypoints``) -> the pose tokenizer's tokens), one per clip, only with a pose
tokenizer. With ``pose_input="image"`` the prompt holds an ``<image>``
placeholder instead of the keypoints; no image is rendered, the record carries the camera
and keypoints to render it from. Every draw (template, cut, frame, azimuth) comes from a
generator seeded by the seed and the clip id, so the output is deterministic.

Templates live in one file shipped with the package, ``parttok/instruct_templates.yaml``
(``default_templates_path``); pass your own with ``--templates``.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from parttok.cli.common import process_batch
from parttok.data import Caption, HumanML3DFolder
from parttok.errors import InputError
from parttok.features import RIC, ROOT_HEIGHT
from parttok.io import write_text
from parttok.skeleton import JOINT_NAMES, NUM_JOINTS
from parttok.tokenizer import Tokenizer
from parttok.tokens import Vocabulary, codes_to_text

TASKS = ("t2m", "caption", "pose", "predict")
FORMATS = ("messages", "llava")
POSE_INPUTS = ("keypoints", "image")
IMAGE_PLACEHOLDER = "<image>"
# template group -> placeholders its user/assistant strings may use
PLACEHOLDERS = {
    "t2m": {"caption", "seconds", "motion"},
    "caption": {"caption", "seconds", "motion"},
    "predict": {"motion", "seconds", "continuation"},
    "pose": {"keypoints", "pose"},
    "pose_image": {"image", "pose"},
}
PREDICT_FRACTION = (0.25, 0.75)  # where the prompt part of a prediction ends, uniformly


def default_templates_path() -> Path:
    """``instruct_templates.yaml`` shipped inside the parttok package."""
    return Path(__file__).resolve().parent / "instruct_templates.yaml"


@dataclass(frozen=True)
class Template:
    user: str
    assistant: str

    def fill(self, **values: str) -> tuple[str, str]:
        return self.user.format(**values), self.assistant.format(**values)


def load_templates(path: str | Path | None = None) -> dict[str, list[Template]]:
    """Template group -> phrasings, validated: every group of ``PLACEHOLDERS`` present, each
    entry a ``user``/``assistant`` pair using only its group's placeholders."""
    path = Path(path) if path is not None else default_templates_path()
    if not path.is_file():
        raise InputError(f"{path}: no template file (pass one with --templates)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        message = str(error).splitlines()[0]
        raise InputError(f"{path}: unreadable template file ({message})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of task -> templates")
    templates: dict[str, list[Template]] = {}
    for group, allowed in PLACEHOLDERS.items():
        entries = raw.get(group)
        if not isinstance(entries, list) or not entries:
            raise InputError(f"{path}: no templates for {group!r}")
        templates[group] = [
            _template(entry, allowed, f"{path}: {group}[{i}]") for i, entry in enumerate(entries)
        ]
    unknown = sorted(set(raw) - set(PLACEHOLDERS))
    if unknown:
        raise InputError(f"{path}: unknown template group(s) {unknown}")
    return templates


def _template(entry: object, allowed: set[str], name: str) -> Template:
    if not isinstance(entry, dict) or not all(
        isinstance(entry.get(k), str) for k in ("user", "assistant")
    ):
        raise InputError(f"{name}: expected 'user' and 'assistant' strings")
    for text in (entry["user"], entry["assistant"]):
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as error:
            raise InputError(f"{name}: bad placeholder syntax ({error})") from None
        if fields - allowed:
            raise InputError(
                f"{name}: unknown placeholder(s) {sorted(fields - allowed)}; "
                f"allowed {sorted(allowed)}"
            )
    return Template(entry["user"], entry["assistant"])


# --- the camera -------------------------------------------------------------------------
@dataclass(frozen=True)
class Camera:
    """A pinhole camera aimed at the pelvis of a pose that faces +Z (Y up, metres).

    ``azimuth`` (degrees) turns the camera around the vertical axis from the front (0) to
    the person's left (90); ``elevation`` (degrees) raises it. ``aim`` (metres, x y z) moves
    the point it looks at, and so the person in the image, away from the pelvis. Pixels:
    x right, y down, origin at the top-left corner of a ``width`` x ``height`` image.
    """

    focal: float = 600.0
    distance: float = 4.0
    azimuth: float = 0.0
    elevation: float = 10.0
    width: int = 640
    height: int = 480
    aim: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.focal <= 0 or self.distance <= 0 or not -80 <= self.elevation <= 80:
            raise InputError("camera: focal and distance must be positive, elevation in [-80, 80]")

    def project(self, joints: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
        """Joints (..., J, 3) -> pixel coordinates (..., J, 2), aimed at ``target`` (3,)
        (default: the first joint, the pelvis) moved by ``aim``."""
        joints = np.asarray(joints, dtype=np.float64)
        target = joints[..., 0:1, :] if target is None else np.asarray(target, dtype=np.float64)
        target = target + np.asarray(self.aim, dtype=np.float64)
        azimuth, elevation = np.radians(self.azimuth), np.radians(self.elevation)
        direction = np.array(
            [
                np.sin(azimuth) * np.cos(elevation),
                np.sin(elevation),
                np.cos(azimuth) * np.cos(elevation),
            ]
        )  # from the target to the camera
        forward = -direction
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        relative = joints - (target + self.distance * direction)  # (..., J, 3)
        depth = relative @ forward  # (..., J)
        if np.any(depth <= 1e-6):
            raise InputError("camera: some joints are behind the camera; increase the distance")
        x = self.width / 2 + self.focal * (relative @ right) / depth
        y = self.height / 2 - self.focal * (relative @ up) / depth
        return np.stack([x, y], axis=-1)


def pose_joints(features: np.ndarray) -> np.ndarray:
    """Root-relative joints (T, 22, 3) of raw features (T, 263): the pelvis at its height
    above the origin, the body facing +Z (the ric features), no trajectory."""
    frames = len(features)
    joints = np.zeros((frames, NUM_JOINTS, 3), dtype=np.float64)
    joints[:, 0, 1] = features[:, ROOT_HEIGHT.start]
    joints[:, 1:] = features[:, RIC].reshape(frames, NUM_JOINTS - 1, 3)
    return joints


# what random_camera draws from, uniformly: a camera 2-7 m away, from any side, between
# slightly below and well above the pelvis, lenses from wide to long, aimed up to 0.4 m off
CAMERA_RANGES = {
    "focal": (400.0, 1400.0),
    "distance": (2.0, 7.0),
    "azimuth": (0.0, 360.0),
    "elevation": (-10.0, 40.0),
    "aim": (-0.4, 0.4),
}


def random_camera(rng: random.Random, like: Camera | None = None) -> Camera:
    """A camera drawn from ``CAMERA_RANGES`` with ``like``'s image size."""
    like = like or Camera()
    draw = {name: rng.uniform(*CAMERA_RANGES[name]) for name in CAMERA_RANGES if name != "aim"}
    aim = tuple(round(rng.uniform(*CAMERA_RANGES["aim"]), 3) for _ in range(3))
    rounded = {name: round(value, 1) for name, value in draw.items()}
    return Camera(**(asdict(like) | rounded | {"aim": aim}))


def detected_keypoints(
    pixels: np.ndarray, rng: random.Random, noise: float, missing: float
) -> np.ndarray:
    """(J, 2) pixels as a 2D detector reports them: Gaussian noise of ``noise`` pixels, each
    joint missing (NaN) with probability ``missing``, at least half of them kept."""
    draws = np.random.default_rng(rng.getrandbits(64))
    detected = pixels + draws.normal(0.0, noise, pixels.shape) if noise > 0 else pixels.copy()
    lost = draws.random(len(pixels)) < missing  # (J,)
    if lost.sum() > len(pixels) // 2:
        lost[draws.permutation(np.flatnonzero(lost))[len(pixels) // 2 :]] = False
    detected[lost] = np.nan
    return detected


def keypoints_text(pixels: np.ndarray) -> str:
    """'pelvis (320, 251), left_hip (...), ...' from (22, 2) pixels, rounded; a missing
    joint (NaN) is left out."""
    shown = ~np.isnan(pixels).any(axis=1)
    rounded = np.rint(np.nan_to_num(pixels)).astype(int)
    return ", ".join(
        f"{name} ({x}, {y})"
        for name, (x, y), kept in zip(JOINT_NAMES, rounded, shown, strict=True)
        if kept
    )


def keypoints_list(pixels: np.ndarray) -> list[list[int] | None]:
    """(J, 2) pixels as JSON: ``[x, y]`` rounded, or null for a missing joint."""
    return [None if np.isnan(p).any() else np.rint(p).astype(int).tolist() for p in pixels]


def parse_keypoints(value, where: str) -> np.ndarray:
    """(22, 2) pixels, NaN for a missing joint, from JSON: a list of 22 ``[x, y]`` or null
    (in ``JOINT_NAMES`` order, as ``keypoints_list`` writes), or an object joint name ->
    ``[x, y]`` (joints not named are missing)."""
    pixels = np.full((NUM_JOINTS, 2), np.nan)
    if isinstance(value, dict):
        unknown = set(value) - set(JOINT_NAMES)
        if unknown:
            raise InputError(f"{where}: unknown joint name(s) {sorted(unknown)[:3]}")
        rows = [value.get(name) for name in JOINT_NAMES]
    elif isinstance(value, list) and len(value) == NUM_JOINTS:
        rows = value
    else:
        raise InputError(f"{where}: keypoints must be {NUM_JOINTS} [x, y] (or null) or a name map")
    for joint, row in enumerate(rows):
        if row is None:
            continue
        if (
            not isinstance(row, list)
            or len(row) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in row)
            or not all(abs(float(v)) < 1e6 for v in row)
        ):
            raise InputError(f"{where}: {JOINT_NAMES[joint]} is not an [x, y] pair of pixels")
        pixels[joint] = row
    if np.isnan(pixels[:, 0]).all():
        raise InputError(f"{where}: every keypoint is missing")
    return pixels


# --- building conversations -------------------------------------------------------------
@dataclass
class InstructSettings:
    """What ``build_conversations`` makes and how."""

    tasks: tuple[str, ...] = TASKS
    seed: int = 0
    naming: str = "parttok"
    pose_input: str = "keypoints"
    min_frames: int = 20
    camera: Camera = field(default_factory=Camera)
    random_camera: bool = True  # a camera per pose from CAMERA_RANGES; otherwise ``camera``
    keypoint_noise: float = 3.0  # pixels, standard deviation
    missing_joints: float = 0.1  # probability that a keypoint is missing
    refine: int = 0  # codes chosen among that many nearest through the decoder (parttok.refine)
    split: str | None = None  # only the clips of ``<split>.txt`` in each folder (None: all)


@dataclass(frozen=True)
class _Clip:
    folder: HumanML3DFolder
    clip_id: str

    def __str__(self) -> str:
        return str(self.folder.features_path(self.clip_id))


@dataclass(frozen=True)
class _ClipOutcome:
    records: list[dict]
    captions: int
    short_captions: int


@dataclass
class InstructReport:
    records: list[dict] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    clips: int = 0
    short_captions: int = 0  # captions left out: their (sub-)clip is shorter than min_frames
    uncaptioned: int = 0  # clips without captions (no t2m or caption conversations)
    skipped_tasks: list[str] = field(default_factory=list)


class ConversationBuilder:
    """Turns one clip into conversations (used per clip by ``build_conversations``)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        templates: dict[str, list[Template]],
        settings: InstructSettings,
        pose_tokenizer: Tokenizer | None = None,
    ) -> None:
        if tokenizer.mode != "motion":
            raise InputError(f"the motion tokenizer is a {tokenizer.mode} model")
        if pose_tokenizer is not None and pose_tokenizer.mode != "pose":
            raise InputError(
                f"the pose tokenizer is a {pose_tokenizer.mode} model, not a pose model"
            )
        unknown = sorted(set(settings.tasks) - set(TASKS))
        if unknown or not settings.tasks:
            raise InputError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
        if settings.pose_input not in POSE_INPUTS:
            raise InputError(f"pose input must be one of {POSE_INPUTS}")
        self.tokenizer, self.pose_tokenizer = tokenizer, pose_tokenizer
        self.templates, self.settings = templates, settings
        self.vocab = Vocabulary.from_tokenizer(tokenizer, settings.naming)
        self.pose_vocab = (
            Vocabulary.from_tokenizer(pose_tokenizer, settings.naming) if pose_tokenizer else None
        )
        if not self.tasks:
            raise InputError("the pose task needs a pose tokenizer (--pose-checkpoint)")

    @property
    def tasks(self) -> tuple[str, ...]:
        """The requested tasks this builder can make (pose needs a pose tokenizer)."""
        return tuple(
            t for t in self.settings.tasks if t != "pose" or self.pose_tokenizer is not None
        )

    def clip_conversations(self, folder: HumanML3DFolder, clip_id: str) -> _ClipOutcome:
        """The conversations of one clip."""
        rng = random.Random(f"{self.settings.seed}:{clip_id}")
        features = folder.features(clip_id)  # (T, 263) raw
        captions = folder.captions(clip_id) if {"t2m", "caption"} & set(self.tasks) else []
        if len(features) < self._min_frames:
            raise InputError(
                f"{folder.features_path(clip_id)}: {len(features)} frames, "
                f"fewer than {self._min_frames}"
            )
        whole = (0, len(features))
        ranges = [caption.frame_range(len(features)) for caption in captions]
        usable = [
            (c, r) for c, r in zip(captions, ranges, strict=True) if r[1] - r[0] >= self._min_frames
        ]
        segments = sorted({r for _, r in usable} | ({whole} if "predict" in self.tasks else set()))
        encoded = self.tokenizer.encode_batch(
            [features[a:b] for a, b in segments], refine=self.settings.refine
        )
        codes = dict(zip(segments, encoded, strict=True))
        records: list[dict] = []
        for task in self.tasks:
            if task in ("t2m", "caption"):
                for caption, frames in usable:
                    records.append(
                        self._caption_record(task, clip_id, caption, frames, codes[frames], rng)
                    )
            elif task == "predict" and len(codes[whole]) >= 2:
                records.append(self._predict_record(clip_id, codes[whole], rng))
            elif task == "pose":
                records.append(self._pose_record(clip_id, features, rng))
        for index, record in enumerate(records):
            record["id"] = f"{clip_id}:{record['task']}:{index}"
        return _ClipOutcome(records, len(captions), len(captions) - len(usable))

    @property
    def _min_frames(self) -> int:
        return max(self.settings.min_frames, self.tokenizer.frames_per_step)

    def _seconds(self, steps: int) -> str:
        return f"{steps * self.vocab.frames_per_step / self.vocab.fps:.1f}"

    def _conversation(self, task: str, group: str, rng: random.Random, **values: str) -> dict:
        user, assistant = rng.choice(self.templates[group]).fill(**values)
        return {"task": task, "user": user, "assistant": assistant}

    def _caption_record(self, task, clip_id, caption: Caption, frames, codes, rng) -> dict:
        record = self._conversation(
            task,
            task,
            rng,
            caption=caption.text,
            motion=codes_to_text(codes, self.vocab),
            seconds=self._seconds(len(codes)),
        )
        return record | {"clip": clip_id, "frames": list(frames), "caption": caption.text}

    def _predict_record(self, clip_id: str, codes: np.ndarray, rng: random.Random) -> dict:
        low, high = PREDICT_FRACTION
        cut = min(max(1, round(len(codes) * rng.uniform(low, high))), len(codes) - 1)
        record = self._conversation(
            "predict",
            "predict",
            rng,
            motion=codes_to_text(codes[:cut], self.vocab),
            continuation=codes_to_text(codes[cut:], self.vocab),
            seconds=self._seconds(len(codes) - cut),
        )
        frames = [0, len(codes) * self.vocab.frames_per_step]
        return record | {"clip": clip_id, "frames": frames, "prompt_steps": cut}

    def _pose_record(self, clip_id: str, features: np.ndarray, rng: random.Random) -> dict:
        frame = rng.randrange(len(features))
        settings = self.settings
        camera = random_camera(rng, settings.camera) if settings.random_camera else settings.camera
        exact = camera.project(pose_joints(features[frame : frame + 1])[0])  # (22, 2)
        pixels = detected_keypoints(exact, rng, settings.keypoint_noise, settings.missing_joints)
        pose = codes_to_text(
            self.pose_tokenizer.encode(features[frame : frame + 1], refine=self.settings.refine),
            self.pose_vocab,
        )
        if self.settings.pose_input == "image":
            record = self._conversation(
                "pose", "pose_image", rng, image=IMAGE_PLACEHOLDER, pose=pose
            )
        else:
            record = self._conversation(
                "pose", "pose", rng, keypoints=keypoints_text(pixels), pose=pose
            )
        return record | {
            "clip": clip_id,
            "frames": [frame, frame + 1],
            "camera": asdict(camera),
            "keypoints": keypoints_list(pixels),
        }


def build_conversations(
    sources: Sequence[str | Path],
    tokenizer: Tokenizer,
    templates: dict[str, list[Template]] | None = None,
    settings: InstructSettings | None = None,
    pose_tokenizer: Tokenizer | None = None,
    show_progress: bool = False,
) -> InstructReport:
    """Conversations for every clip of the HumanML3D-layout folders ``sources``, in order
    (folders as given, clip ids sorted); a bad clip is reported and left out."""
    settings = settings or InstructSettings()
    builder = ConversationBuilder(
        tokenizer, templates or load_templates(), settings, pose_tokenizer
    )
    report = InstructReport()
    if "pose" in settings.tasks and pose_tokenizer is None:
        report.skipped_tasks.append("pose")
    clips = [
        _Clip(folder, clip_id)
        for folder in map(HumanML3DFolder, sources)
        for clip_id in folder.ids(settings.split)
    ]
    report.clips = len(clips)
    done, failed = process_batch(
        clips,
        lambda clip: builder.clip_conversations(clip.folder, clip.clip_id),
        "instructions",
        jobs=1,
        show_progress=show_progress,
    )
    for _, outcome in done:
        report.records += outcome.records
        report.short_captions += outcome.short_captions
        report.uncaptioned += outcome.captions == 0 and bool(
            {"t2m", "caption"} & set(builder.tasks)
        )
    report.failed = [(str(clip), message) for clip, message in failed]
    return report


def format_record(record: dict, fmt: str = "messages") -> dict:
    """One conversation in the chat ``messages`` form or LLaVA's ``conversations`` form;
    metadata (task, clip, frames, camera, keypoints) is kept beside it."""
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {FORMATS}, got {fmt!r}")
    meta = {k: v for k, v in record.items() if k not in ("user", "assistant", "id")}
    if fmt == "llava":
        turns = [
            {"from": "human", "value": record["user"]},
            {"from": "gpt", "value": record["assistant"]},
        ]
        return {"id": record["id"], "conversations": turns} | meta
    turns = [
        {"role": "user", "content": record["user"]},
        {"role": "assistant", "content": record["assistant"]},
    ]
    return {"id": record["id"], "messages": turns} | meta


def write_conversations(records: list[dict], out: str | Path, fmt: str = "messages") -> Path:
    """Write records atomically: a ``.json`` file as one JSON array (what LLaVA's loader
    reads), anything else as JSON lines."""
    out = Path(out)
    formatted = [format_record(record, fmt) for record in records]
    if out.suffix.lower() == ".json":
        text = json.dumps(formatted, ensure_ascii=False, indent=1) + "\n"
    else:
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in formatted)
    write_text(out, text)
    return out


def summary(report: InstructReport) -> str:
    """One line on what ``build_conversations`` made."""
    counts: dict[str, int] = {}
    for record in report.records:
        counts[record["task"]] = counts.get(record["task"], 0) + 1
    made = ", ".join(f"{n} {task}" for task, n in counts.items()) or "none"
    notes = [f"{len(report.records)} conversations ({made}) from {report.clips} clip(s)"]
    if report.uncaptioned:
        notes.append(f"{report.uncaptioned} clip(s) without captions")
    if report.short_captions:
        notes.append(f"{report.short_captions} caption(s) on too short sub-clips left out")
    if report.failed:
        notes.append(f"{len(report.failed)} clip(s) failed")
    return "; ".join(notes)
