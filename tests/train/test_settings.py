"""Settings are checked before any side effect: each kind of bad setting is a ValueError naming the flag, raised
before the process group, the run directory or the data exist; for folder data the scan never starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import convcanon.data.folder
import convcanon.data.scan
import convcanon.train.run
from convcanon.cli import main
from convcanon.train.config import TrainConfig
from convcanon.train.run import train
from convcanon.train.settings import check_settings
from convcanon.train.strategy import SingleDevice

CUDA = torch.cuda.is_available()


def _tree(root: Path) -> Path:
    """An ImageFolder tree whose files are never read: the checks list folders only."""
    for split in ("train", "val"):
        for cls in ("ant", "bee"):
            (root / split / cls).mkdir(parents=True)
            (root / split / cls / "0.jpg").write_bytes(b"not decoded by any check")
    return root


@pytest.fixture
def nothing_happens(monkeypatch):
    """Fail the test if the run gets past its settings: the process group, the run directory, the folder scan."""
    def fail(what):
        def _fail(*a, **k):
            pytest.fail(f"{what} before the settings were checked")
        return _fail

    monkeypatch.setattr(SingleDevice, "setup", fail("the process group was set up"))
    monkeypatch.setattr(convcanon.train.run, "claim_new_run_dir", fail("the run directory was created"))
    monkeypatch.setattr(convcanon.data.folder, "scan_folder", fail("the folder was scanned"))
    monkeypatch.setattr(convcanon.data.scan, "_decode_all", fail("files were decoded"))


BAD = [
    pytest.param({"model": "resnet21"}, "--model: unknown model 'resnet21'", id="model name"),
    pytest.param({"model_options": {"widht": 8}}, "--model-option: .*no option 'widht' .did you mean 'width'.*valid "
                 "options", id="option"),
    pytest.param({"model_options": {"residual": "maybe"}}, "--model-option: option 'residual'.* must be true or false",
                 id="option type"),
    pytest.param({"model_options": {"in_chans": 3}}, r"--model-option in_chans=3: the input channels come from "
                 r"--data \(digits has 1\)", id="in_chans option"),
    pytest.param({"model_options": {"num_classes": 10}}, "--model-option num_classes=10: the number of classes "
                 "comes from --data", id="num_classes option"),
    pytest.param({"model": "vgg16"}, "--model vgg16 needs inputs of at least 32x32.*--image-size 32", id="too small"),
    pytest.param({"data": "digts"}, "did you mean 'digits'", id="data name"),
    pytest.param({"data": "synthetic:3:32", "image_size": 16}, "set it in one place", id="data shape"),
    pytest.param({"decode": "gpu"}, "--decode gpu", id="decode"),
    pytest.param({"gamma": 0.0}, r"--gamma must be a factor in \(0, 1\]", id="gamma"),
    pytest.param({"milestones": [-1]}, "--milestones must be increasing epochs >= 0", id="milestones"),
    pytest.param({"image_size": 0}, "--image-size must be a side in pixels from 1 to 4096", id="image size"),
    pytest.param({"max_steps": -1}, "--max-steps must be an integer >= 0", id="max steps"),
    pytest.param({"checkpoint_every": -1}, "--checkpoint-every must be an integer >= 0", id="checkpoint every"),
    pytest.param({"device": "tpu:0"}, "--device", id="device"),
    pytest.param({"hflip": 1.5}, r"--hflip must be a probability in \[0, 1\]; got 1.5", id="hflip"),
    pytest.param({"reprob": -0.1}, r"--reprob must be a probability in \[0, 1\]", id="reprob"),
    pytest.param({"scale": [0.5, 0.1]}, "--scale must be two area fractions MIN MAX, 0 < MIN <= MAX <= 1; got 0.5 0.1",
                 id="scale"),
    pytest.param({"ratio": [0.0, 2.0]}, "--ratio must be two aspect ratios MIN MAX", id="ratio"),
    pytest.param({"ra_reps": 0}, "--ra-reps must be an integer from 1 to 64", id="ra reps"),
    pytest.param({"pad": 2, "scale": [0.5, 1.0]}, "--pad and --scale are two crop modes", id="pad and scale"),
    pytest.param({"val_crop_size": 10, "val_resize_size": 8}, "--val-crop-size .* at most --val-resize-size",
                 id="val crop"),
    pytest.param({"train_crop_size": 0}, "--train-crop-size must be a side in pixels", id="train crop"),
    pytest.param({"mean": [0.5, 0.5, 0.5]}, "--mean gives 3 value.* digits has 1 channel", id="mean channels"),
    pytest.param({"std": [0.0]}, "--std must be one value per channel > 0", id="std"),
    pytest.param({"model": "vgg16", "image_size": 32, "train_crop_size": 16},
                 "--model vgg16 needs inputs of at least 32x32", id="train crop too small"),
    pytest.param({"device": "cuda"}, "--device cuda: CUDA is not available", id="no cuda",
                 marks=pytest.mark.skipif(CUDA, reason="this machine has CUDA")),
    pytest.param({"amp": "fp16"}, "--amp fp16 needs a CUDA device", id="fp16 on cpu",
                 marks=pytest.mark.skipif(CUDA, reason="this machine has CUDA")),
]


@pytest.mark.parametrize(("settings", "match"), BAD)
def test_bad_settings_stop_the_run_before_any_side_effect(settings, match, tmp_path, nothing_happens):
    cfg = TrainConfig(**{"out": str(tmp_path / "run"), "progress": False, **settings})  # the dataclass checks nothing
    with pytest.raises(ValueError, match=match):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_bf16_is_fine_on_every_device():
    check_settings(TrainConfig(amp="bf16", device="cpu"))


def test_small_map_gemm_on_a_gpu_is_refused_before_the_run(monkeypatch):
    import convcanon.train.settings as settings

    monkeypatch.setattr(settings, "resolve_device", lambda *args: torch.device("cuda", 0))
    with pytest.raises(ValueError, match="--small-map-gemm is a CPU path"):
        check_settings(TrainConfig(small_map_gemm=True))
    check_settings(TrainConfig(small_map_gemm=False))  # off, or auto, is fine there


@pytest.mark.parametrize(("settings", "match"), [
    pytest.param({"model_options": {"widht": 8}}, "no option 'widht'", id="option"),
    pytest.param({"model": "vgg16"}, "needs inputs of at least 32x32", id="too small for the crop"),
    pytest.param({"model": "vgg16", "image_size": 32, "model_options": {"in_chans": 1}},
                 r"--model-option in_chans=1: the input channels come from --data \(folder:.* has 3\)", id="in_chans"),
])  # fmt: skip
def test_folder_data_is_never_scanned_for_a_bad_setting(settings, match, tmp_path, nothing_happens):
    tree = _tree(tmp_path / "tree")
    cfg = TrainConfig(**{"data": f"folder:{tree}", "image_size": 16, "out": str(tmp_path / "run"), **settings})
    with pytest.raises(ValueError, match=match):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_good_folder_settings_pass_without_reading_a_file(tmp_path, nothing_happens):
    tree = _tree(tmp_path / "tree")
    data = check_settings(TrainConfig(data=str(tree), model="resnet18"))
    assert (data.kind, data.in_chans, data.image_size, data.num_classes) == ("folder", 3, 224, 2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_settings(TrainConfig(data=f"folder:{tmp_path / 'elsewhere'}"))
    (tree / "val" / "bee").rename(tree / "val" / "bees")
    with pytest.raises(ValueError, match="the same class folders"):
        check_settings(TrainConfig(data=str(tree)))


@pytest.mark.parametrize(("argv", "flag"), [
    (["--model-option", "widht=8"], "--model-option"),
    (["--model", "resnet21"], "--model"),
    (["--gamma", "0"], "--gamma"),
    (["--image-size", "100000"], "--image-size"),
    pytest.param(["--amp", "fp16"], "--amp fp16", marks=pytest.mark.skipif(CUDA, reason="this machine has CUDA")),
])  # fmt: skip
def test_the_command_exits_2_with_one_line_and_creates_nothing(argv, flag, tmp_path, capsys, nothing_happens):
    assert main(["train", "--out", str(tmp_path / "run"), "--no-progress", *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convcanon train: error: ") and flag in lines[0], captured.err
    assert "Traceback" not in captured.err and not captured.out
    assert not (tmp_path / "run").exists()


def test_folder_data_in_the_command_is_not_scanned(tmp_path, capsys, nothing_happens):
    tree = _tree(tmp_path / "tree")
    assert main(["train", "--data", f"folder:{tree}", "--model-option", "widht=8", "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 2  # fmt: skip
    assert "--model-option" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
