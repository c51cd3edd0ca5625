"""File helpers: atomic writes and benchmark sections."""

from __future__ import annotations

import os

import pytest

from parttok.io import atomic_path, replace_markdown_section, write_text


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "first")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half written")
        raise RuntimeError("killed")
    assert target.read_text() == "first"
    assert os.listdir(tmp_path) == ["out.txt"]
    assert target.stat().st_mode & 0o044  # readable by others, as a plain write would be


def test_markdown_sections_are_replaced_in_place_or_appended(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## a\n\nold a\n\n## b\n\nold b\n")
    replace_markdown_section(path, "## a\n\nnew a\n")
    replace_markdown_section(path, "## c\n\nnew c")
    replace_markdown_section(path, "## b\n\nnew b\n")
    assert path.read_text() == "# Benchmarks\n\n## a\n\nnew a\n\n## b\n\nnew b\n\n## c\n\nnew c\n"
