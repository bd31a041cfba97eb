"""Fixtures of the model-parallel tests; the torchrun launcher is shared with tests/distributed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))

from torchrun_helpers import Launcher  # noqa: E402


@pytest.fixture
def launcher():
    launcher = Launcher()
    try:
        yield launcher
    finally:
        launcher.cleanup()
