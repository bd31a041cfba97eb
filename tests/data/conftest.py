"""Fixtures of the data tests (helpers live in imagetree.py, importable from the test modules)."""

from __future__ import annotations

from pathlib import Path

import pytest
from imagetree import make_tree


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small clean ImageFolder tree: classes cat and dog, 9 train and 3 val images each, every awkward mode."""
    return make_tree(tmp_path / "pets")
