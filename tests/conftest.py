"""Shared test settings: deterministic, single-threaded-friendly, never a download."""

import os

import pytest
import torch

os.environ.setdefault("CONVCANON_NO_DOWNLOAD", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
