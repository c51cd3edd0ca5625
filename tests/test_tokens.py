"""The vocabulary, the text form of codes and its parser (including what LLMs get wrong)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import small_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parttok.cli import main
from parttok.errors import InputError, TokenFileError, TokenParseError
from parttok.tokens import (
    Vocabulary,
    codes_to_text,
    default_vocabulary,
    part_tag,
    text_to_codes,
)

SIX = default_vocabulary()
VOCABULARIES = {
    "parttok": SIX,
    "motiongpt": Vocabulary(naming="motiongpt"),
    "pose": Vocabulary(mode="pose", frames_per_step=1),
    "pose-motiongpt": Vocabulary(mode="pose", frames_per_step=1, naming="motiongpt"),
    "five-parts": Vocabulary(parts=("torso", "left_arm", "right_arm", "left_leg", "right_leg")),
    "single": Vocabulary(parts=("body",), naming="motiongpt"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, humanml3d_dir) -> dict[str, Path]:
    """Small random motion and pose tokenizers saved as checkpoints."""
    folder = tmp_path_factory.mktemp("checkpoints")
    small_tokenizer(humanml3d_dir, codebook_size=512).save_pretrained(folder / "motion")
    small_tokenizer(humanml3d_dir, mode="pose", codebook_size=512, seed=1).save_pretrained(
        folder / "pose"
    )
    return {"motion": folder / "motion", "pose": folder / "pose"}


def random_codes(vocab: Vocabulary, steps: int, seed: int = 0) -> np.ndarray:
    steps = 1 if vocab.mode == "pose" else steps
    return np.random.default_rng(seed).integers(0, vocab.codebook_size, (steps, vocab.num_parts))


def tokens_of(vocab: Vocabulary, codes: np.ndarray) -> list[str]:
    return [vocab.token(p, int(c)) for row in codes for p, c in enumerate(row)]


# --- the vocabulary ---------------------------------------------------------------------
def test_default_vocabulary_layout():
    assert SIX.parts == ("root", "torso", "left_arm", "right_arm", "left_leg", "right_leg")
    assert SIX.tags == ("root", "torso", "larm", "rarm", "lleg", "rleg")
    assert (SIX.start, SIX.end) == ("<motion>", "</motion>")
    assert len(SIX) == 2 + 6 * 512 and len(set(SIX.tokens)) == len(SIX)
    assert SIX.tokens[:3] == ["<motion>", "</motion>", "<root_0>"]
    assert SIX.token(3, 17) == "<rarm_17>" and SIX.lookup("<rarm_17>") == (3, 17)
    assert SIX.lookup("<rarm_512>") is None


def test_part_tags_for_other_part_names():
    assert part_tag("upper_body") == "upperbody"
    assert part_tag("left_hand") == "lhand" and part_tag("right_foot") == "rfoot"
    with pytest.raises(InputError):
        part_tag("__")
    with pytest.raises(InputError, match="distinct"):
        Vocabulary(parts=("left_arm", "l_arm"))
    with pytest.raises(InputError, match="clash"):
        Vocabulary(parts=("pose", "body"))


def test_motiongpt_naming_matches_motiongpt_strings():
    """A single-codebook model writes exactly MotionGPT's motion strings; several parts use
    the flat index part * K + code and start/end after all of them."""
    single = VOCABULARIES["single"]
    codes = np.array([[5], [511], [0]])
    expected = "<motion_id_512><motion_id_5><motion_id_511><motion_id_0><motion_id_513>"
    assert codes_to_text(codes, single) == expected
    assert single.tokens[-3:] == ["<motion_id_512>", "<motion_id_513>", "<motion_id_514>"]
    flat = VOCABULARIES["motiongpt"]
    assert flat.token(3, 17) == f"<motion_id_{3 * 512 + 17}>"
    assert (flat.start, flat.end) == ("<motion_id_3072>", "<motion_id_3073>")
    assert flat.tokens[:2] == ["<motion_id_0>", "<motion_id_1>"] and len(flat) == 3072 + 3


def test_pose_vocabulary_has_its_own_tokens():
    pose = VOCABULARIES["pose"]
    assert (pose.start, pose.end) == ("<pose>", "</pose>")
    assert pose.token(3, 17) == "<pose_rarm_17>"
    assert not set(pose.tokens) & set(SIX.tokens)
    assert not set(VOCABULARIES["pose-motiongpt"].tokens) & set(VOCABULARIES["motiongpt"].tokens)


@pytest.mark.parametrize("name", sorted(VOCABULARIES))
def test_json_round_trip(name, tmp_path):
    vocab = VOCABULARIES[name]
    path = vocab.save(tmp_path / "vocab.json")
    record = json.loads(path.read_text())
    assert record["tokens"] == vocab.tokens and record["parts"] == list(vocab.parts)
    assert record["frames_per_step"] == vocab.frames_per_step and record["fps"] == 20
    assert Vocabulary.load(path) == vocab


def test_damaged_vocabulary_files_are_refused(tmp_path):
    record = json.loads(SIX.to_json())
    cases = {
        "newer": record | {"version": 99},
        "other": record | {"format": "something-else"},
        "tampered": record | {"tokens": record["tokens"][:-1]},
        "incomplete": {k: v for k, v in record.items() if k != "parts"},
    }
    for name, content in cases.items():
        (tmp_path / name).write_text(json.dumps(content))
        with pytest.raises(TokenFileError, match=name if name == "newer" else str(tmp_path)):
            Vocabulary.load(tmp_path / name)
    (tmp_path / "bad").write_text("{")
    with pytest.raises(TokenFileError, match="not valid JSON"):
        Vocabulary.load(tmp_path / "bad")


# --- codes -> text -> codes ---------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(VOCABULARIES))
@settings(max_examples=25, deadline=None)
@given(steps=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_round_trip_is_exact(name, steps, seed):
    vocab = VOCABULARIES[name]
    codes = random_codes(vocab, steps, seed)
    text = codes_to_text(codes, vocab)
    assert text.startswith(vocab.start) and text.endswith(vocab.end)
    assert text.count("><") == codes.size + 1  # one token per code, no separators
    result = text_to_codes(text, vocab, repair=False)
    assert result.repairs == [] and result.codes.dtype == np.int64
    np.testing.assert_array_equal(result.codes, codes)


def test_text_is_time_major_in_part_order():
    codes = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])
    assert codes_to_text(codes) == (
        "<motion><root_1><torso_2><larm_3><rarm_4><lleg_5><rleg_6>"
        "<root_7><torso_8><larm_9><rarm_10><lleg_11><rleg_12></motion>"
    )


def test_codes_to_text_rejects_bad_codes():
    for codes in (np.zeros((3, 5), int), np.zeros((0, 6), int), np.full((2, 6), 512)):
        with pytest.raises(InputError):
            codes_to_text(codes)
    with pytest.raises(InputError, match="integers"):
        codes_to_text(np.zeros((2, 6)))
    with pytest.raises(InputError, match="one step"):
        codes_to_text(np.zeros((2, 6), int), VOCABULARIES["pose"])
    pose = codes_to_text(np.arange(6), VOCABULARIES["pose"])  # (P,) is one pose
    assert pose.startswith("<pose><pose_root_0><pose_torso_1>") and pose.endswith("</pose>")


def test_vocabulary_from_a_tokenizer(checkpoints):
    from parttok.tokenizer import Tokenizer

    motion = Tokenizer.from_pretrained(checkpoints["motion"])
    vocab = Vocabulary.from_tokenizer(motion)
    assert vocab.parts == motion.parts and vocab.codebook_size == motion.codebook_size
    assert vocab.identity == motion.identity and vocab.mode == "motion"
    assert vocab.frames_per_step == 4
    pose = Vocabulary.from_tokenizer(Tokenizer.from_pretrained(checkpoints["pose"]))
    assert pose.mode == "pose" and pose.frames_per_step == 1 and pose.start == "<pose>"


# --- the parser on what language models write -----------------------------------------------
CODES = random_codes(SIX, 5, seed=3)
TEXT = codes_to_text(CODES)
TOKENS = tokens_of(SIX, CODES)


def motion(tokens: list[str], start: str = "<motion>", end: str = "</motion>") -> str:
    return start + "".join(tokens) + end


def parse(text: str, vocab: Vocabulary = SIX):
    result = text_to_codes(text, vocab)
    with pytest.raises(TokenParseError, match="repair=False"):
        text_to_codes(text, vocab, repair=False)
    return result


def test_whitespace_and_surrounding_text_need_no_repair():
    spaced = "Sure, here it is:\n" + " ".join(re.findall(r"<[^>]+>", TEXT)) + "\nEnjoy!"
    result = text_to_codes(spaced, repair=False)
    np.testing.assert_array_equal(result.codes, CODES)


def test_missing_end_token():
    result = parse(TEXT.removesuffix("</motion>") + " and that is all")
    np.testing.assert_array_equal(result.codes, CODES)
    assert result.repairs == ["no </motion> end token; read up to the last code token"]


def test_missing_start_token():
    result = parse("motion: " + TEXT.removeprefix("<motion>"))
    np.testing.assert_array_equal(result.codes, CODES)
    assert "no <motion> start token" in result.repairs[0]
    result = parse(" ".join(TOKENS))
    np.testing.assert_array_equal(result.codes, CODES)
    assert "no <motion> start or </motion> end token" in result.repairs[0]


def test_truncated_final_step_is_dropped():
    result = parse(motion(TOKENS[:-2], end=""))
    np.testing.assert_array_equal(result.codes, CODES[:-1])
    assert any("truncated final step (step 4: 4 of 6 parts" in r for r in result.repairs)
    cut = TEXT[: TEXT.index(TOKENS[-1]) + 4]  # cut inside the last token
    result = parse(cut)
    np.testing.assert_array_equal(result.codes, CODES[:-1])


def test_incomplete_first_step_without_start_token_is_dropped():
    result = parse("".join(TOKENS[4:]))
    np.testing.assert_array_equal(result.codes, CODES[1:])
    assert any("incomplete first step" in r for r in result.repairs)
    with pytest.raises(TokenParseError, match="step 0 is incomplete"):
        text_to_codes(motion(TOKENS[4:]))  # with a start token the first step is an error


def test_parts_out_of_order_are_put_back():
    swapped = TOKENS.copy()
    swapped[6], swapped[9] = swapped[9], swapped[6]
    swapped[24:30] = swapped[24:30][::-1]
    result = parse(motion(swapped))
    np.testing.assert_array_equal(result.codes, CODES)
    assert result.repairs == ["put the parts of 2 step(s) back in order (steps 1, 4)"]


def test_stray_text_and_foreign_tokens_are_dropped():
    noisy = TOKENS.copy()
    noisy.insert(3, " um ")
    noisy.insert(10, "<head_3>")
    noisy.insert(15, "<rarm_999>")
    noisy.insert(20, "<pose>")
    result = parse(motion(noisy))
    np.testing.assert_array_equal(result.codes, CODES)
    (note,) = result.repairs
    assert note.startswith("dropped 4 stray item(s)")
    assert "'um'" in note and "unknown part tag 'head'" in note
    assert "code 999 is outside [0, 512)" in note


def test_unknown_code_in_place_of_a_part_is_an_error():
    broken = TOKENS.copy()
    broken[9] = "<rarm_777>"
    with pytest.raises(
        TokenParseError, match="step 1 is incomplete: 5 of 6 parts; missing right_arm"
    ):
        text_to_codes(motion(broken))
    broken[9] = "<neck_3>"
    with pytest.raises(TokenParseError, match="missing right_arm"):
        text_to_codes(motion(broken))


def test_duplicated_part_is_an_error():
    doubled = TOKENS.copy()
    doubled.insert(9, doubled[9])
    with pytest.raises(TokenParseError, match="step 1 is incomplete.*then right_arm again"):
        text_to_codes(motion(doubled))


def test_missing_part_in_the_middle_is_an_error():
    for index in (6, 8, 17):  # a step's root, a middle part, a last part
        with pytest.raises(TokenParseError, match="is incomplete"):
            text_to_codes(motion(TOKENS[:index] + TOKENS[index + 1 :]))


def test_empty_and_ambiguous_texts_are_errors():
    for text in ("<motion></motion>", "", "no motion here", "<motion> hello </motion>"):
        with pytest.raises(TokenParseError, match="empty motion"):
            text_to_codes(text)
    with pytest.raises(TokenParseError, match="more than one motion"):
        text_to_codes(TEXT + " and " + TEXT)
    with pytest.raises(TokenParseError, match="no complete step"):
        text_to_codes(motion(TOKENS[:4]))
    with pytest.raises(TokenParseError, match="expected text"):
        text_to_codes(None)


def test_codes_outside_the_block_are_ignored():
    result = parse(TEXT + " " + TOKENS[0])
    np.testing.assert_array_equal(result.codes, CODES)
    assert result.repairs == ["ignored 1 code token(s) outside <motion>...</motion>"]


def test_pose_strings():
    pose = VOCABULARIES["pose"]
    codes = random_codes(pose, 1, seed=5)
    text = codes_to_text(codes, pose)
    np.testing.assert_array_equal(text_to_codes(text, pose, repair=False).codes, codes)
    tokens = tokens_of(pose, codes)
    result = parse(motion(tokens[::-1], "<pose>", "</pose>"), pose)
    np.testing.assert_array_equal(result.codes, codes)
    with pytest.raises(TokenParseError, match="a pose is one step of 6 codes, got 2 steps"):
        text_to_codes(motion(tokens + tokens, "<pose>", "</pose>"), pose)
    with pytest.raises(TokenParseError, match="no complete step"):
        text_to_codes(motion(tokens[:5], "<pose>", "</pose>"), pose)
    with pytest.raises(TokenParseError, match="empty pose"):
        text_to_codes(TEXT, pose)  # motion tokens are not pose tokens


# --- property tests -----------------------------------------------------------------------
CORRUPTIONS = ("delete", "duplicate", "swap", "stray", "unknown", "replace", "truncate")


def corrupt(tokens: list[str], kind: str, position: int, text: str) -> str:
    """``tokens`` (with start/end) joined after one corruption at ``position``."""
    tokens = tokens.copy()
    index = position % len(tokens)
    if kind == "delete":
        del tokens[index]
    elif kind == "duplicate":
        tokens.insert(index, tokens[index])
    elif kind == "swap" and index + 1 < len(tokens):
        tokens[index], tokens[index + 1] = tokens[index + 1], tokens[index]
    elif kind == "stray":
        tokens.insert(index, text)
    elif kind == "unknown":
        tokens.insert(index, "<rarm_4096>")
    elif kind == "replace":
        tokens[index] = "<lleg_" + "9" * 5 + ">"
    joined = "".join(tokens)
    return joined[: position % (len(joined) + 1)] if kind == "truncate" else joined


def code_tokens_in(text: str, vocab: Vocabulary) -> list[tuple[int, int]]:
    return [vocab.lookup(t) for t in re.findall(r"<[^<>\s]{1,64}>", text) if vocab.lookup(t)]


def is_written_run(codes: np.ndarray, written: list[tuple[int, int]], parts: int) -> bool:
    """Whether the steps of ``codes`` are consecutive groups of ``parts`` code tokens of the
    text (each group as a set: parts may have been put back in order)."""
    steps = [sorted(enumerate(row.tolist())) for row in codes]
    flat = len(steps) * parts
    for offset in range(len(written) - flat + 1):
        window = written[offset : offset + flat]
        groups = [sorted(window[i * parts : (i + 1) * parts]) for i in range(len(steps))]
        if groups == steps:
            return True
    return False


@pytest.mark.parametrize("name", ["parttok", "motiongpt", "five-parts"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.integers(1, 8),
    seed=st.integers(0, 1000),
    kind=st.sampled_from(CORRUPTIONS),
    position=st.integers(0, 10_000),
    stray=st.text(min_size=1, max_size=12),
)
def test_one_corruption_never_decodes_wrong(name, steps, seed, kind, position, stray):
    """After any single corruption the parser either raises, or returns a run of the
    original steps (all of them when nothing was lost), and says what it repaired."""
    vocab = VOCABULARIES[name]
    codes = random_codes(vocab, steps, seed)
    tokens = [vocab.start, *tokens_of(vocab, codes), vocab.end]
    text = corrupt(tokens, kind, position, stray)
    try:
        result = text_to_codes(text, vocab)
    except TokenParseError:
        return
    runs = [codes[a:b] for a in range(steps) for b in range(a + 1, steps + 1)]
    assert any(np.array_equal(result.codes, run) for run in runs), (text, result)
    if not result.repairs:
        np.testing.assert_array_equal(result.codes, codes)
    if len(result.codes) < steps:  # lost steps are noted (a cut at a step boundary: no end)
        assert any(("dropped" in note or "no " in note) for note in result.repairs)


@pytest.mark.parametrize("name", ["parttok", "motiongpt", "pose"])
@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.integers(0, 10**6), max_size=40), extra=st.text(max_size=5))
def test_any_string_parses_to_written_steps_or_raises(name, pieces, extra):
    """Random mixtures of tokens, fragments and text: the result is always consecutive steps
    of code tokens that were written, and unrepaired results are the text's own motion."""
    vocab = VOCABULARIES[name]
    fragments = [vocab.start, vocab.end, "<", ">", " ", "_", "7", "<rarm_", "<motion>", extra]
    fragments += ["<pose>", "</pose>", "<rarm_9999>", "<motion_id_99999>"]
    choices = fragments + vocab.tokens[:40] + vocab.tokens[-40:]
    text = "".join(choices[p % len(choices)] for p in pieces)
    try:
        result = text_to_codes(text, vocab)
    except TokenParseError:
        return
    assert result.codes.ndim == 2 and result.codes.shape[1] == vocab.num_parts
    assert is_written_run(result.codes, code_tokens_in(text, vocab), vocab.num_parts), text
    if not result.repairs:
        assert codes_to_text(result.codes, vocab) in re.sub(r"\s+", "", text)


# --- the vocab command --------------------------------------------------------------------
def test_vocab_command_writes_the_vocabulary(checkpoints, tmp_path, capsys):
    status = main(
        [
            "vocab",
            "--checkpoint",
            str(checkpoints["motion"]),
            "--pose-checkpoint",
            str(checkpoints["pose"]),
            "--naming",
            "motiongpt",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0
    vocab = Vocabulary.load(tmp_path / "vocab.json")
    pose = Vocabulary.load(tmp_path / "pose_vocab.json")
    assert vocab.naming == "motiongpt" and vocab.mode == "motion" and pose.mode == "pose"
    from parttok.tokenizer import Tokenizer

    assert vocab.identity == Tokenizer.from_pretrained(checkpoints["motion"]).identity
    assert "3075 tokens" in capsys.readouterr().out


def test_vocab_command_bad_inputs_exit_2(checkpoints, tmp_path, capsys):
    cases = [
        ["--checkpoint", str(tmp_path / "missing")],
        ["--checkpoint", str(checkpoints["motion"]), "--tokenizer", str(tmp_path / "nothing")],
        ["--checkpoint", str(checkpoints["motion"]), "--model", str(tmp_path)],
    ]
    (tmp_path / "not_hf").mkdir()
    cases.append(
        ["--checkpoint", str(checkpoints["motion"]), "--tokenizer", str(tmp_path / "not_hf")]
    )
    for arguments in cases:
        assert main(["vocab", "--out", str(tmp_path / "out"), *arguments]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("parttok vocab: error:") and "\n" not in error
    assert not (tmp_path / "out").exists()  # nothing written when an input is bad
