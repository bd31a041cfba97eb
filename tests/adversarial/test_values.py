"""Values a user can type that make no sense: each is refused before anything is created (exit 2, one line naming the
flag or the file and what to change, no traceback, no run directory), or, for a legal but pointless value, trained
with a warning that says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hostile_trees import no_traceback

from convcanon.cli import main
from convcanon.estimate.fits import check_fits


def refused(capsys, args: list[str], *expected: str, out: Path | None = None) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    no_traceback(err)
    assert len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    if out is not None:
        assert not out.exists(), sorted(out.rglob("*"))
    return err


def train(out: Path, *extra: str) -> list[str]:
    return ["train", "--out", str(out), "--max-steps", "1", "--no-progress", *extra]


@pytest.mark.parametrize(("extra", "says"), [
    (["--gamma", "nan"], "--gamma must be a factor in (0, 1]; got nan"),
    (["--gamma", "-1"], "--gamma must be a factor in (0, 1]; got -1.0"),
    (["--gamma", "inf"], "--gamma must be a factor in (0, 1]; got inf"),
    (["--image-size", "100000"], "--image-size must be a side in pixels from 1 to 4096"),
    (["--model-option", "num_classes=3"], "the number of classes comes from --data (digits has 10)"),
    (["--data", "synthetic:3:100000:4"], "lower the side S (or --image-size)"),
])  # fmt: skip
def test_values_out_of_range_are_refused_naming_the_flag(tmp_path, capsys, extra, says):
    refused(capsys, train(tmp_path / "run", *extra), says, out=tmp_path / "run")


def test_a_step_that_cannot_fit_in_memory_is_refused_with_the_estimators_figure(tmp_path, capsys):
    # ResNet-50 at 256 px keeps about 0.05 GiB of activations per image: 65,536 images are terabytes on any machine
    err = refused(capsys, train(tmp_path / "run", "--model", "resnet50", "--data", "synthetic:3:256:10",
                                "--batch-size", "65536"),
                  "--model resnet50 at 256x256 with 65536 images per step needs about", "the estimator's figure",
                  "lower --batch-size", out=tmp_path / "run")
    assert "GiB" in err


def test_the_memory_check_compares_the_estimators_plan_with_the_device():
    cpu = torch.device("cpu")
    kw = dict(num_classes=10, in_chans=3, image_size=32, precision="fp32", optimizer="sgd", device=cpu)
    check_fits("resnet20", {}, micro_batch=128, memory_gib=1.0, **kw)  # ResNet-20 at 32 px: a few MB per image
    with pytest.raises(ValueError, match=r"needs about .* this cpu device has 0\.0 GiB"):
        check_fits("resnet20", {}, micro_batch=128, memory_gib=0.001, **kw)
    # A run that keeps a weight average (--model-ema) holds its fp32 copy too, and the message counts it.
    with pytest.raises(ValueError, match=r"optimizer 0\.00 \+ weight average 0\.00 \+ activations"):
        check_fits("resnet20", {}, micro_batch=128, memory_gib=0.001, model_ema=True, **kw)


def test_a_pointless_image_size_trains_with_a_warning(tmp_path, capsys):
    assert main(train(tmp_path / "run", "--image-size", "1")) == 0
    err = capsys.readouterr().err
    assert "warning: the images are 1x1 pixels" in err and "raise --image-size" in err


@pytest.mark.parametrize(("text", "says"), [
    (b"lr: 0.1\nlrr: 3\n", "unknown key(s) 'lrr' (did you mean lr?)"),
    (b"zzzqq: 3\n", "unknown key(s) 'zzzqq'; the keys are the long flags"),
    (bytes(range(200, 256)) * 4, "not a text file (byte 0 is not UTF-8)"),
    (b"lr: [1, 2\n", "not valid YAML"),
    (b"activation: !!python/object/apply:os.system ['touch pwned']\n", "not valid YAML"),
])  # fmt: skip
def test_a_bad_config_file_is_named(tmp_path, capsys, text, says):
    config = tmp_path / "bad.yaml"
    config.write_bytes(text)
    err = refused(capsys, train(tmp_path / "run", "--config", str(config)), says, out=tmp_path / "run")
    assert "bad.yaml" in err
    assert not Path("pwned").exists()


def test_a_bad_choice_lists_the_valid_values(tmp_path, capsys):
    err = refused(capsys, train(tmp_path / "run", "--model-option", "activation=swish"), "activation",
                  out=tmp_path / "run")
    assert "relu" in err and "tanh" in err, err


@pytest.mark.parametrize(("extra", "says"), [
    (["--devices", "100000000"], "larger than the training set (1,281,167 images)"),
    (["--epochs", "1e300"], "--epochs must be at most 100,000"),
    (["--epochs", "nan"], "--epochs"),
    (["--model", "alexnet", "--parallel", "towers", "--devices", "3"], "got --devices 3 --nodes 1"),
])  # fmt: skip
def test_estimates_of_impossible_runs_are_refused(capsys, extra, says):
    args = ["estimate", "--model", "resnet20", "--device", "h100", *extra]
    refused(capsys, args, says)
