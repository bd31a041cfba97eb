"""Fixtures of the distributed tests: a launcher that always cleans up the processes it started."""

from __future__ import annotations

import pytest
from torchrun_helpers import Launcher


@pytest.fixture
def launcher():
    launcher = Launcher()
    try:
        yield launcher
    finally:
        launcher.cleanup()
