"""Checkpoints: exact round trip, pruning, atomic writes surviving a kill, fallback past damage, no code execution."""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from convcanon.train.checkpoint import (
    FORMAT,
    CheckpointFallbackWarning,
    CorruptCheckpointError,
    checkpoint_path,
    find_checkpoints,
    load_checkpoint,
    load_latest,
    load_safetensors,
    safetensors_metadata,
    save_checkpoint,
    save_safetensors,
)
from convcanon.train.reproducibility import capture_rng_state

SRC = Path(__file__).resolve().parents[2] / "src"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _state(model: nn.Module, opt: torch.optim.Optimizer, step: int, **extra) -> dict:
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "step": step,
            "epoch": 1, "batch_in_epoch": 3, "rng": capture_rng_state(), "classes": ["zero", "one", "two"],
            "config": {"model": "tiny", "lr": 0.1, "milestones": [1, 2], "out": None}, "metrics": {"loss": 0.5},
            **extra}


def _simple_state(step: int) -> dict:
    return {"model": {"w": torch.full((256,), float(step))}, "optimizer": {}, "step": step, "epoch": 0,
            "batch_in_epoch": step, "rng": {}, "classes": ["a", "b"], "config": {}}


def _assert_same(a, b, where="state"):
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_roundtrip_is_exact_and_training_continues_identically(tmp_path):
    model, opt = _model(), None
    opt = _optimizer(model)
    _train_step(model, opt, seed=1)  # momentum buffers and BN running stats now hold real values
    state = _state(model, opt, step=7)
    path = save_checkpoint(tmp_path, state)
    assert path == tmp_path / "checkpoints" / "step-00000007.pt" == checkpoint_path(tmp_path, 7)
    loaded = load_checkpoint(path)
    assert loaded["format"] == FORMAT and loaded["version"] == 1
    _assert_same({k: loaded[k] for k in state}, state)
    assert all(t.device.type == "cpu" for t in loaded["model"].values())

    model2 = _model()
    opt2 = _optimizer(model2)
    model2.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["optimizer"])
    _train_step(model, opt, seed=2)
    _train_step(model2, opt2, seed=2)
    for (name, p), p2 in zip(model.state_dict().items(), model2.state_dict().values(), strict=True):
        assert torch.equal(p, p2), name


def test_keep_last_prunes_by_step_and_best_survives(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, _simple_state(step), keep_last=2, best=step == 2)
    assert [p.name for p in find_checkpoints(tmp_path)] == ["step-00000005.pt", "step-00000004.pt"]
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["step"] == 2  # its step file is gone, best is not
    save_checkpoint(tmp_path, _simple_state(6), keep_last=2, best=True)
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["step"] == 6
    # The checkpoint just written is kept even when higher steps exist (a run resumed from an older checkpoint).
    save_checkpoint(tmp_path, _simple_state(1), keep_last=2)
    assert [p.name for p in find_checkpoints(tmp_path)] == ["step-00000006.pt", "step-00000005.pt", "step-00000001.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best.pt", "step-00000001.pt", "step-00000005.pt", "step-00000006.pt"]
    with pytest.raises(ValueError, match="keep_last"):
        save_checkpoint(tmp_path, _simple_state(9), keep_last=0)


def test_find_checkpoints_sorts_by_step_number_and_ignores_other_files(tmp_path):
    d = tmp_path / "checkpoints"
    d.mkdir()
    for name in ["step-00000009.pt", "step-00000010.pt", "step-100000000.pt", "best.pt", "step-x.pt", "notes.txt",
                 ".step-00000011.pt.tmp-123", "step-00000012.pt.partial"]:
        (d / name).write_bytes(b"")
    assert [p.name for p in find_checkpoints(tmp_path)] == ["step-100000000.pt", "step-00000010.pt",
                                                           "step-00000009.pt"]
    assert find_checkpoints(tmp_path / "missing") == []
    assert load_latest(tmp_path / "missing") is None


def test_failed_rename_keeps_the_previous_checkpoint_and_leaves_no_temp(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, _simple_state(1))

    def crash(*args):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path, _simple_state(2))
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001.pt"]
    state, path = load_latest(tmp_path)
    assert path.name == "step-00000001.pt" and torch.equal(state["model"]["w"], torch.full((256,), 1.0))


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_sigkill_during_a_write_leaves_the_previous_checkpoint_and_a_temp_that_is_ignored_then_removed(tmp_path):
    script = textwrap.dedent(f"""
        import io, os, signal, torch
        from convcanon.train.checkpoint import save_checkpoint
        state = lambda s: {{"model": {{"w": torch.full((1000,), float(s))}}, "optimizer": {{}}, "step": s, "epoch": 0,
                           "batch_in_epoch": s, "rng": {{}}, "classes": [], "config": {{}}}}
        save_checkpoint({str(tmp_path)!r}, state(1))
        real_save = torch.save
        def dying_save(obj, f):  # half the bytes reach the disk, then the process is killed
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        save_checkpoint({str(tmp_path)!r}, state(2))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, stderr
    d = tmp_path / "checkpoints"
    temps = [p.name for p in d.iterdir() if p.name.startswith(".")]
    assert temps == [f".step-00000002.pt.tmp-{proc.pid}"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a temp file is not a checkpoint: no fallback, no warning
        state, path = load_latest(tmp_path)
    assert state["step"] == 1 and path.name == "step-00000001.pt"
    save_checkpoint(tmp_path, _simple_state(2))  # the next save removes the dead writer's temp file
    assert sorted(p.name for p in d.iterdir()) == ["step-00000001.pt", "step-00000002.pt"]


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip_tensor_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    at = data.index(struct.pack("<f", 2.0) * 4)  # inside the weights of _simple_state(2)
    data[at + 1] ^= 0x01  # 2.0 becomes another float: torch.load alone would read it back without complaint
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [
    _truncate,
    _flip_tensor_byte,
    lambda p: p.write_bytes(b""),
    lambda p: p.write_bytes(b"\0" * p.stat().st_size),  # what a power loss can leave after delayed allocation
], ids=["truncated", "flipped-byte", "empty", "zeroed"])
def test_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path, damage):
    for step in (1, 2):
        save_checkpoint(tmp_path, _simple_state(step))
    newest = checkpoint_path(tmp_path, 2)
    damage(newest)
    with pytest.raises(CorruptCheckpointError, match="step-00000002.pt"):
        load_checkpoint(newest)
    with pytest.warns(CheckpointFallbackWarning, match="step-00000002.pt"):
        state, path = load_latest(tmp_path)
    assert state["step"] == 1 and path == checkpoint_path(tmp_path, 1)


def test_every_checkpoint_damaged_is_an_error_naming_them_all(tmp_path):
    for step in (1, 2):
        _truncate(save_checkpoint(tmp_path, _simple_state(step)))
    with pytest.warns(CheckpointFallbackWarning), pytest.raises(CorruptCheckpointError) as err:
        load_latest(tmp_path)
    assert "step-00000001.pt" in str(err.value) and "step-00000002.pt" in str(err.value)


class _Evil:
    """Unpickling this calls open(marker, "w"): any loader that runs pickled code creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["pickle-2", "pickle-5", "torch.save"])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"format": FORMAT, "version": 1, "model": _Evil(marker)}  # looking like a checkpoint does not help
    path = checkpoint_path(tmp_path, 5)
    path.parent.mkdir()
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=int(writer[-1]))
    with pytest.raises(ValueError, match="refusing to unpickle .*nothing was executed") as err:
        load_checkpoint(path)
    assert not isinstance(err.value, CorruptCheckpointError)
    with pytest.raises(ValueError, match="refusing"):
        load_latest(tmp_path)  # a planted file is an error to look at, not damage to step over
    assert not marker.exists()


def test_files_that_are_not_convcanon_checkpoints_are_refused(tmp_path):
    cases = {
        "foreign.pt": {"state_dict": {"w": torch.ones(2)}, "epoch": 3},
        "list.pt": [torch.ones(2)],
        "newer.pt": {**_simple_state(1), "format": FORMAT, "version": 2},
        "incomplete.pt": {"format": FORMAT, "version": 1, "model": {}},
    }
    messages = {"foreign.pt": "not a convcanon checkpoint.*format='convcanon-checkpoint'",
                "list.pt": "not a convcanon checkpoint.*got a list", "newer.pt": "version 2",
                "incomplete.pt": "lacks"}
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(ValueError, match=messages[name]) as err:
            load_checkpoint(tmp_path / name)
        assert name in str(err.value) and not isinstance(err.value, CorruptCheckpointError)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_save_refuses_values_weights_only_could_not_load_before_writing(tmp_path):
    bad = {**_simple_state(1), "metrics": {"acc": np.float64(0.5)}}  # a float subclass that pickles as a numpy global
    with pytest.raises(TypeError, match=r"state\['metrics'\]\['acc'\].*numpy"):
        save_checkpoint(tmp_path, bad)
    with pytest.raises(TypeError, match="config"):
        save_checkpoint(tmp_path, {**_simple_state(1), "config": {"out": tmp_path}})
    with pytest.raises(ValueError, match="lacks.*rng"):
        save_checkpoint(tmp_path, {k: v for k, v in _simple_state(1).items() if k != "rng"})
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path, {**_simple_state(1), "step": 1.0})
    assert find_checkpoints(tmp_path) == []


def test_safetensors_roundtrip_with_tied_and_non_contiguous_tensors(tmp_path):
    lin = nn.Linear(4, 4)
    tied = nn.Sequential(lin, nn.ReLU(), lin)  # one storage under two names, which safetensors refuses as is
    state = {**tied.state_dict(), "transposed": torch.arange(6.0).reshape(2, 3).t(), "count": torch.tensor(3)}
    path = tmp_path / "model.safetensors"
    save_safetensors(state, path, {"model": "tiny", "classes": json.dumps(["a", "b"])})
    loaded = load_safetensors(path)
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name
    assert safetensors_metadata(path) == {"model": "tiny", "classes": '["a", "b"]'}
    assert torch.equal(lin.weight, state["0.weight"])  # the caller's tensors are untouched
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    with pytest.raises(TypeError, match="str"):
        save_safetensors(state, path, {"epochs": 3})
    _truncate(path)
    with pytest.raises(CorruptCheckpointError, match="model.safetensors"):
        load_safetensors(path)
