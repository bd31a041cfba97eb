"""The README's "Use the models elsewhere" examples run as written (each block after the ones before it)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Use the models elsewhere"
# What a block needs besides torch, torchvision and convcanon: a block whose package is missing is skipped.
NEEDS = {"timm": ("timm",), "torch.onnx.export": ("onnx", "onnxscript")}


def _blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index(SECTION):]
    section = section[: section.index("\n## ", len(SECTION))]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


BLOCKS = _blocks()


def _missing(block: str) -> list[str]:
    return [m for key, modules in NEEDS.items() if key in block for m in modules if not importlib.util.find_spec(m)]


def test_the_section_has_its_examples():
    assert len(BLOCKS) == 4
    assert all(len(block.strip().splitlines()) <= 6 for block in BLOCKS)  # short enough to read at a glance


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    missing = _missing(BLOCKS[index])
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    monkeypatch.chdir(tmp_path)  # files an example writes land here
    namespace: dict[str, object] = {}
    for block in BLOCKS[: index + 1]:
        if block is BLOCKS[index] or not _missing(block):
            exec(compile(block, f"README.md ({SECTION})", "exec"), namespace)
