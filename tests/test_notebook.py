"""``notebooks/quickstart.ipynb`` runs from top to bottom in a Jupyter kernel (nbclient) on
a real BVH clip, and is stored without outputs."""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import nbformat
from conftest import small_tokenizer
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
KERNEL = "parttok-test"


def test_notebook_is_stored_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_quickstart_runs(data_dir: Path, humanml3d_dir: Path, tmp_path: Path, monkeypatch) -> None:
    # A kernel spec naming this interpreter, so the kernel is the test's own environment
    # (the virtualenv of `make test`) whatever kernels the machine has installed.
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    checkpoint = small_tokenizer(humanml3d_dir).save_pretrained(tmp_path / "tokenizer")
    monkeypatch.setenv("PARTTOK_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("PARTTOK_DATA", str(data_dir.resolve()))

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name=KERNEL,
        timeout=120,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()

    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    text = "".join(output.get("text", "") for output in outputs)
    assert "joints (" in text and "-> features (" in text
    assert "<motion>" in text
    assert "MPJPE" in text and "PA-MPJPE" in text
    assert re.search(r"MPJPE [\d.]+ mm nearest, [\d.]+ mm refined", text)
    images = [output["data"] for output in outputs if "data" in output]
    png = [base64.b64decode(data["image/png"]) for data in images if "image/png" in data]
    gif = [base64.b64decode(data["image/gif"]) for data in images if "image/gif" in data]
    assert len(png) == 1 and png[0].startswith(b"\x89PNG")
    assert len(gif) == 1 and gif[0].startswith(b"GIF89a") and len(gif[0]) > 10_000
