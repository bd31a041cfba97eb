"""The RNG state a checkpoint carries reproduces every stream exactly; seeds and determinism switches work as said."""

from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
import torch

from convcanon.train.reproducibility import (
    capture_rng_state,
    derive_seed,
    restore_rng_state,
    seed_everything,
    set_deterministic,
)


def _draws() -> tuple:
    # Gaussians too: both Python and NumPy cache the second value of a Box-Muller pair in their state.
    return (torch.rand(8), torch.randn(3), np.random.rand(4), np.random.randn(), random.random(), random.gauss(0, 1))


def _assert_same_draws(a: tuple, b: tuple) -> None:
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert np.array_equal(a[2], b[2])
    assert a[3:] == b[3:]


def test_restore_reproduces_the_next_draws_after_a_weights_only_roundtrip():
    seed_everything(123)
    np.random.randn()  # leave a cached gaussian in NumPy's state
    random.gauss(0, 1)  # and in Python's
    state = capture_rng_state()
    expected = _draws()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restore_rng_state(torch.load(buf, weights_only=True))  # the state must survive what a checkpoint goes through
    _assert_same_draws(_draws(), expected)


def test_capture_is_a_snapshot_not_a_view():
    state = capture_rng_state()
    first = _draws()
    _draws()  # advancing the generators must not change what was captured
    restore_rng_state(state)
    _assert_same_draws(_draws(), first)


def test_restore_ignores_cuda_states_it_cannot_apply():
    state = capture_rng_state()
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * (n + 2)  # a device count that cannot match this machine
    restore_rng_state(state)


def test_restore_names_missing_parts():
    with pytest.raises(ValueError, match="numpy"):
        restore_rng_state({"python": random.getstate(), "torch": torch.get_rng_state()})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_streams_are_captured_and_restored():
    seed_everything(5)
    torch.rand(3, device="cuda")
    state = capture_rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    expected = torch.rand(100, device="cuda")
    restore_rng_state(state)
    assert torch.equal(torch.rand(100, device="cuda"), expected)


def test_seed_everything_makes_every_stream_repeatable():
    seed_everything(7)
    a = _draws()
    seed_everything(7)
    _assert_same_draws(_draws(), a)
    seed_everything(8)
    assert not torch.equal(torch.rand(8), a[0])


def test_seed_everything_matches_the_familiar_numpy_seed_and_keeps_64_bit_seeds_apart():
    seed_everything(42)
    x = np.random.rand()
    np.random.seed(42)
    assert np.random.rand() == x
    big = 2**40 + 42  # the same low 32 bits as 42: must still give another NumPy stream
    seed_everything(big)
    assert np.random.rand() != x
    seed_everything(2**64 - 1)
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


@pytest.fixture
def restore_determinism(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def test_set_deterministic_switches_everything(restore_determinism):
    set_deterministic(True)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()  # an error, not a warning, for a loose op
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark


def test_set_deterministic_keeps_a_cublas_setting_the_user_chose(restore_determinism, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    set_deterministic(True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_derive_seed_is_pinned_and_order_sensitive():
    # Pinned: a change here changes every data order and augmentation, so old runs would no longer resume exactly.
    assert derive_seed(0, 1) == 8812415763665831917
    assert derive_seed(0, 1) == derive_seed(np.int64(0), 1)
    assert derive_seed(0, 1) != derive_seed(1, 0)
    assert derive_seed(1) != derive_seed(1, 0)
    seeds = {derive_seed(s, e, b) for s in range(4) for e in range(4) for b in range(4)}
    assert len(seeds) == 64
    assert all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(TypeError):
        derive_seed(1.5)  # a float would silently collide with its truncation


