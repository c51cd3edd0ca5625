"""Shared steps of the LLM comparison tools: tune a variant with ``parttok tune`` and measure
it with ``parttok evaluate-llm``, each skipped when its result is already on disk (so a
killed comparison resumes where it stopped)."""

from __future__ import annotations

import json
from pathlib import Path

from parttok.cli import main as parttok_main

REPO = Path(__file__).resolve().parents[1]


def tune_run(run: Path, configs: list[str], extra: list[str], steps: int) -> dict:
    """Tune into ``run`` with ``configs`` (under configs/) and ``extra`` arguments for
    ``steps`` steps, unless ``run/llm`` exists; its time, file size and description."""
    model = run / "llm"
    if not (model / "parttok_llm.json").is_file():
        arguments = ["tune"]
        for config in configs:
            arguments += ["--config", str(REPO / "configs" / config)]
        arguments += [*extra, "--trainer.max_steps", str(steps), "--trainer.max_time"]
        arguments += ["00:12:00:00", "--trainer.val_check_interval", str(steps)]
        arguments += ["--trainer.default_root_dir", str(run)]
        arguments += ["--trainer.enable_progress_bar", "false"]
        if parttok_main(arguments) != 0:
            raise SystemExit(f"{run}: tuning failed")
    meta = json.loads((model / "parttok_llm.json").read_text())
    return {
        "seconds": meta["training"].get("seconds"),
        "bytes": sum(p.stat().st_size for p in model.glob("*.safetensors")),
        "adapter": meta["adapter"],
        "motion_input": meta.get("motion_input", {"kind": "tokens"}),
    }


def evaluate_run(run: Path, tasks: str, limit: int, extra: list[str] = ()) -> dict:
    """``parttok evaluate-llm`` of ``run/llm`` on Bandai Namco's held-out clips, unless
    ``run/eval.json`` exists."""
    out = run / "eval.json"
    if not out.is_file():
        arguments = ["evaluate-llm", str(REPO / "data" / "bandai"), "--llm", str(run / "llm")]
        arguments += ["--tasks", tasks, "--limit", str(limit), "--json", str(out)]
        arguments += ["--exclude-from", str(REPO / "configs" / "llm_cpu.yaml"), *extra]
        if parttok_main(arguments) != 0:
            raise SystemExit(f"{run}: evaluation failed")
    return json.loads(out.read_text())
