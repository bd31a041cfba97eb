"""Evaluating saved weights: the figures come back as numbers that agree with each other; nothing is written (the
eval command draws the plot, tests/train/test_loop.py checks it end to end)."""

from __future__ import annotations

import pytest
import torch

import convcanon
from convcanon.train.checkpoint import save_safetensors
from convcanon.train.config import TrainConfig, dump_yaml
from convcanon.train.evaluate_cli import evaluate_checkpoint


@pytest.fixture
def run_dir(tmp_path):
    """A run directory as training leaves it, without the training: its config and untrained weights."""
    cfg = TrainConfig(model="resnet20", data="digits", amp="off", workers=0, progress=False)
    (tmp_path / "config.yaml").write_text(dump_yaml(cfg))
    torch.manual_seed(0)
    model = convcanon.create_model("resnet20", num_classes=10, in_chans=1)
    save_safetensors(model.state_dict(), tmp_path / "model.safetensors")
    return tmp_path


def test_evaluate_checkpoint_returns_consistent_figures_and_writes_nothing(run_dir):
    before = sorted(p.name for p in run_dir.iterdir())
    result = evaluate_checkpoint(run_dir, device="cpu")
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert (result.model, result.data, result.dataset, result.amp) == ("resnet20", "digits", "digits", "off")
    assert result.out_dir == run_dir
    n = result.metrics["samples"]
    assert n == 360 and int(result.confusion.sum()) == n and result.confusion.shape == (10, 10)
    assert result.metrics["top1"] == pytest.approx(100.0 * int(result.confusion.trace()) / n)
    rows = result.per_class()
    assert [r["class"] for r in rows] == result.classes and sum(r["samples"] for r in rows) == n
    as_dict = result.as_dict()
    assert list(as_dict) == ["model", "data", "amp", "loss", "top1", "samples", "top5", "per_class", "confusion"]
    assert as_dict["confusion"] == result.confusion.tolist()
