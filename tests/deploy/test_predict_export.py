"""convcanon predict and convcanon export on a run trained on the default data, and export on every family."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convcanon
from convcanon.cli import main
from convcanon.data import open_data
from convcanon.deploy.export import FORMATS, export_model
from convcanon.train.weights import load_model


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "run"
    assert main(["train", "--epochs", "3", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory) -> tuple[Path, list[int]]:
    """Test digits written as 32x32 PNG files (the model resizes them back to 8x8), with their labels."""
    folder = tmp_path_factory.mktemp("images")
    data = open_data("digits")
    images, labels = data._cpu[2], data._cpu[3]  # the test split, uint8 (N, 1, 8, 8)
    for i in range(12):
        pixels = images[i, 0].numpy().astype(np.uint8)
        Image.fromarray(pixels, mode="L").resize((32, 32), Image.NEAREST).save(folder / f"{i:02d}.png")
    return folder, labels[:12].tolist()


def test_predict_names_the_classes_and_gets_the_digits_right(run, digit_files, capsys):
    folder, labels = digit_files
    (folder / "notes.txt").write_text("not an image, not listed")  # folders are searched by extension
    assert main(["predict", "--weights", str(run), str(folder), "--json", "--top-k", "3"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [Path(r["path"]).name for r in rows] == [f"{i:02d}.png" for i in range(12)]
    assert all(len(r["top_k"]) == 3 and r["top_k"][0]["probability"] >= r["top_k"][1]["probability"] for r in rows)
    top1 = [r["top_k"][0]["index"] for r in rows]
    assert rows[0]["top_k"][0]["class"] == str(top1[0])  # the digits' class names are "0".."9"
    # 3 epochs reach ~95% on the test split; the files went through PNG, resize up and back down: most must hold
    assert sum(p == y for p, y in zip(top1, labels, strict=True)) >= 9


def test_predict_reports_bad_files_and_goes_on(run, digit_files, tmp_path, capsys):
    folder, _ = digit_files
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    code = main(["predict", "--weights", str(run / "model.safetensors"), str(folder / "00.png"), str(bad), str(empty),
                 "--csv", str(tmp_path / "out.csv")])
    captured = capsys.readouterr()
    assert code == 1 and "2 of 3 files could not be used" in captured.err
    lines = captured.out.splitlines()
    assert "broken.png" in lines[1] and "corrupt" in lines[1] and "empty file" in lines[2]
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [r["rank"] for r in rows if r["path"].endswith("00.png")] == ["1", "2", "3", "4", "5"]
    assert [r["error"] != "" for r in rows if not r["path"].endswith("00.png")] == [True, True]


def test_predict_refuses_what_it_cannot_start_on(run, tmp_path, capsys):
    assert main(["predict", "--weights", str(run), str(tmp_path / "missing.png")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert main(["predict", "--weights", str(tmp_path), str(tmp_path)]) == 2
    assert "no model.safetensors or checkpoints/" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_of_a_trained_run_reloads_and_matches(run, tmp_path, capsys, fmt):
    suffix = {"onnx": ".onnx", "exported-program": ".pt2", "torchscript": ".pt"}[fmt]
    out = tmp_path / f"digits{suffix}"
    assert main(["export", "--weights", str(run), "--format", fmt, "--out", str(out), "--dynamic-batch",
                 "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out.splitlines()[0])
    assert report["ok"] and report["batch_sizes"] == [2, 3] and out.is_file()
    assert report["max_abs_diff"] is None or report["max_abs_diff"] <= report["tolerance"]
    if fmt == "onnx":
        assert report["inputs"] == ["images"] and report["outputs"] == ["logits"] and report["opset"] >= 17
    assert not list(tmp_path.glob(".*tmp*"))


def test_export_refuses_a_wrong_suffix_and_writes_nothing_on_a_mismatch(run, tmp_path, monkeypatch, capsys):
    assert main(["export", "--weights", str(run), "--format", "onnx", "--out", str(tmp_path / "m.pt")]) == 2
    assert "a onnx file ends in .onnx" in capsys.readouterr().err
    from convcanon.deploy import export as export_module

    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)  # any difference, even 0, fails
    assert main(["export", "--weights", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 1
    assert "nothing was written" in capsys.readouterr().out and not list(tmp_path.iterdir())


# The LRN AlexNets were the ones the legacy exporters failed on; one model per family otherwise.
FAMILY_MODELS = ["alexnet_cifar", "vgg16_cifar", "googlenet_cifar", "resnet20"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_MODELS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_family_exports_in_every_format(tmp_path, name, fmt):
    torch.manual_seed(0)
    model = convcanon.create_model(name, num_classes=10)
    suffix = {"onnx": ".onnx", "exported-program": ".pt2", "torchscript": ".pt"}[fmt]
    report = export_model(model, fmt, tmp_path / f"m{suffix}", dynamic_batch=True)
    assert report.ok, (report.max_abs_diff, report.tolerance)


def test_load_model_feeds_predict_the_training_preprocessing(run):
    model = load_model(run)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (1, 8, 8) and cfg["crop_pct"] == 1.0 and len(cfg["label_names"]) == 10
