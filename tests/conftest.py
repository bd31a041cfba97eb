"""Shared test settings: deterministic, single-threaded-friendly, never a download."""

import atexit
import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("CONVCANON_NO_DOWNLOAD", "1")  # named data sets: the public servers are never asked
# ... and never the user's cache: a run on a named set reads (and a test's mirror fills) a folder of this session.
os.environ["CONVCANON_DATA"] = tempfile.mkdtemp(prefix="convcanon-test-data-")
atexit.register(shutil.rmtree, os.environ["CONVCANON_DATA"], True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    # What runs keep between runs on a machine (the precision probe's times: train/amp_probe.py) goes to a folder of
    # the test's own: no test reads what another test or the user's runs kept.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
