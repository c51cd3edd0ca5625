"""The LLM comparison tools (tools/compare_adapters.py, tools/compare_inputs.py): which runs
they make with which arguments, and the tables and figure they write from evaluate-llm
reports. The runs themselves are `parttok tune` and `parttok evaluate-llm`, tested apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tools(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    import compare_adapters
    import compare_inputs

    return compare_adapters, compare_inputs


def report(zero: bool | None, content: float) -> dict:
    """What tune_run and evaluate-llm give for one variant (the fields the tools read)."""
    adapter = {"type": "lora"} if zero is None else {"type": "moe-lora", "zero_expert": zero}
    caption = {"content_accuracy": content, "style_accuracy": 0.5, "bleu4": 40.0, "rouge_l": 0.7}
    language = {"tuned_accuracy": 0.6, "base_accuracy": 0.68, "kl_from_base": 0.5}
    evaluation = {"caption": {"all": caption}, "language": language}
    if zero is not None:
        width = 5 if zero else 4
        weights = [1 / width] * width
        evaluation["gate"] = {"caption": weights, "language": weights}
    return {"tune": {"seconds": 600.0, "bytes": 13e6, "adapter": adapter}, "eval": evaluation}


def test_compare_adapters_table_and_gate_figure(tools, tmp_path):
    compare_adapters, _ = tools
    rows = {
        "LoRA (r 16)": report(None, 0.3),
        "MoE-LoRA, no zero expert": report(False, 0.4),
        "MoE-LoRA + zero expert": report(True, 0.5),
    }
    assert list(rows) == list(compare_adapters.VARIANTS)
    text = compare_adapters.markdown(rows, 60, 50, "2 cores", "2026-12-08")
    table = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert len(table) == 3
    assert table[0].endswith("| - |") and table[1].endswith("| - |")  # no zero expert there
    assert table[2].endswith("| 0.200 / 0.200 |") and "| 50.0% |" in table[2]
    compare_adapters.plot(rows, tmp_path / "gate.png")
    assert (tmp_path / "gate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_inputs_tunes_features_in_two_stages(tools, tmp_path, monkeypatch):
    _, compare_inputs = tools
    assert len(compare_inputs.variants(None, None)) == 3
    chosen = compare_inputs.variants("wb.ckpt", tmp_path)
    assert len(chosen) == 5 and "(b) whole-body tokens" in chosen
    calls = []

    def tune_run(run, configs, extra, steps):
        calls.append((run, extra, steps))
        return {"seconds": 60.0}

    monkeypatch.setattr(compare_inputs, "tune_run", tune_run)
    spec = chosen["(c) part features"]
    result = compare_inputs.tune_variant(tmp_path / "c", spec, 120)
    (align, align_extra, align_steps), (_, tune_extra, tune_steps) = calls
    assert align == tmp_path / "c" / "align" and align_extra[-2:] == ["--model.adapter", "none"]
    assert (align_steps, tune_steps) == (30, 90) and result["seconds"] == 120.0
    assert tune_extra[-2:] == ["--model.projector_init", str(tmp_path / "c" / "align" / "llm")]
    calls.clear()
    compare_inputs.tune_variant(tmp_path / "a", chosen["(a) part tokens"], 120)
    assert [c[2] for c in calls] == [120]


def test_tokens_per_second_of_each_input(tools, tmp_path):
    _, compare_inputs = tools
    vocab = {"fps": 20, "frames_per_step": 4, "parts": ["a", "b", "c", "d", "e", "f"]}
    for pooling, expected in ((None, 30), ("parts", 30), ("steps", 5)):
        folder = tmp_path / str(pooling) / "llm"
        folder.mkdir(parents=True)
        meta = {"vocabularies": [vocab]}
        if pooling:
            meta["motion_input"] = {"kind": "features", "pooling": pooling}
        (folder / "parttok_llm.json").write_text(json.dumps(meta))
        assert compare_inputs.tokens_per_second(folder.parent) == expected
