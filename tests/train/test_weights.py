"""Self-describing weights: the record rebuilds the exact function; load_model from a file, a checkpoint or a run."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

import convcanon
from convcanon.data.preprocess import eval_transform
from convcanon.train import checkpoint as ckpt
from convcanon.train.weights import (
    IncompleteWeightsWarning,
    as_metadata,
    load_model,
    read_weights,
    weights_record,
)

# One model per family with options away from their defaults: each changes the function but not the state-dict keys
# of at least one option, which is what a record without options would silently get wrong.
FAMILIES = [
    ("resnet20", {"activation": "tanh", "residual": False, "width": 8}, 32),
    ("resnet18", {"activation": "sigmoid", "head": "fc"}, 32),
    ("vgg11", {"activation": "tanh", "batch_norm": True, "head": "avgpool"}, 32),
    ("alexnet_cifar", {"activation": "tanh", "towers": 1, "lrn": False}, 32),
    ("googlenet_cifar", {"activation": "tanh", "reductions": False, "head": "fc"}, 32),
]
PREP = {"input_size": [3, 32, 32], "resize": 36, "crop": 32, "interpolation": "bilinear",
        "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.25]}


def _trained_like(name: str, options: dict, num_classes: int = 7) -> torch.nn.Module:
    torch.manual_seed(0)
    model = convcanon.create_model(name, num_classes=num_classes, **options)
    with torch.no_grad():  # batch-norm statistics away from their initial values, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize(("name", "options", "size"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_a_weights_file_rebuilds_the_exact_function(tmp_path, name, options, size):
    model = _trained_like(name, options)
    record = weights_record(name, options, num_classes=7, in_chans=3, classes=[f"c{i}" for i in range(7)],
                            preprocessing=PREP, data="folder:/photos")
    path = ckpt.save_safetensors(model.state_dict(), tmp_path / "model.safetensors", metadata=as_metadata(record))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete record loads without a warning
        loaded = load_model(path)
    assert not loaded.training and loaded.weights_record == record
    for key, value in options.items():
        assert record["options"][key] == value
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))  # the same function, bit for bit, on the same machine
    cfg = loaded.pretrained_cfg
    assert (cfg["input_size"], cfg["crop_pct"], cfg["label_names"]) == ((3, 32, 32), 32 / 36, record["classes"])


def test_the_record_holds_every_option_and_the_versions():
    record = weights_record("resnet20", {"activation": "tanh"}, num_classes=10, in_chans=1, classes=list("abcdefghij"),
                            preprocessing=PREP)
    assert set(record["options"]) == set(convcanon.model_options("resnet20"))  # defaults included
    assert record["options"]["in_chans"] == 1 and record["options"]["shortcut"] == "A"
    assert record["convcanon"] == convcanon.__version__ and record["torch"] == torch.__version__
    meta = as_metadata(record)
    assert all(isinstance(v, str) for v in meta.values()) and json.loads(meta["options"]) == record["options"]


def test_an_older_file_without_options_loads_only_with_a_warning(tmp_path):
    model = _trained_like("resnet20", {"activation": "tanh"}, num_classes=10)
    path = ckpt.save_safetensors(model.state_dict(), tmp_path / "model.safetensors", metadata={
        "model": "resnet20", "num_classes": "10", "in_chans": "3", "classes": json.dumps(list("abcdefghij"))})
    with pytest.warns(IncompleteWeightsWarning, match="the model's default options"):
        loaded = load_model(path)
    assert loaded.weights_record["options"]["activation"] == "relu"  # what it assumed, and said so
    (tmp_path / "config.yaml").write_text("model: resnet20\nmodel_options:\n  activation: tanh\n")
    with pytest.warns(IncompleteWeightsWarning, match="config.yaml"):
        loaded = load_model(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_file_without_convcanon_metadata_is_refused_with_what_to_do(tmp_path):
    path = ckpt.save_safetensors({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not written by convcanon"):
        load_model(path)


def test_weights_that_do_not_fit_their_record_are_named(tmp_path):
    record = weights_record("resnet20", {}, num_classes=10, in_chans=3, classes=list("abcdefghij"),
                            preprocessing=PREP)
    wrong = convcanon.create_model("resnet32", num_classes=10).state_dict()
    path = ckpt.save_safetensors(wrong, tmp_path / "model.safetensors", metadata=as_metadata(record))
    with pytest.raises(ValueError, match=r"model.safetensors: the weights do not fit the model .*\(resnet20\)"):
        load_model(path)


def test_the_eval_transform_follows_the_record():
    from PIL import Image

    cfg = {"input_size": (1, 8, 8), "crop_pct": 1.0, "interpolation": "bilinear", "mean": (0.5,), "std": (0.25,)}
    out = eval_transform(cfg)(Image.new("RGB", (40, 30), (255, 255, 255)))
    assert out.shape == (1, 8, 8)
    torch.testing.assert_close(out, torch.full((1, 8, 8), 2.0))  # white: (1 - 0.5) / 0.25
    rgb = {**cfg, "input_size": (3, 32, 32), "crop_pct": 32 / 36, "mean": (0, 0, 0), "std": (1, 1, 1)}
    assert eval_transform(rgb)(Image.new("L", (100, 50))).shape == (3, 32, 32)


@pytest.fixture(scope="module")
def tanh_run(tmp_path_factory):
    """One epoch of the main job with a non-default option."""
    from convcanon.train.config import TrainConfig
    from convcanon.train.run import train

    run = tmp_path_factory.mktemp("weights") / "run"
    with open(os.devnull, "w") as quiet:
        train(TrainConfig(epochs=1, batch_size=128, out=str(run), progress=False, model_ema=False,
                          model_options={"activation": "tanh"}), out_stream=quiet)  # the final weights: raw
    return run


def test_a_run_records_its_weights_and_loads_from_every_form(tanh_run):
    run = tanh_run
    finished = read_weights(run)
    assert finished.path.name == "model.safetensors" and not finished.assumed
    rec = finished.record
    assert rec["options"]["activation"] == "tanh" and rec["num_classes"] == 10 and rec["in_chans"] == 1
    assert rec["preprocessing"]["input_size"] == [1, 8, 8] and len(rec["preprocessing"]["mean"]) == 1
    checkpoint = ckpt.find_checkpoints(run)[-1]
    assert finished.record.pop("chosen") == "raw"  # model.safetensors says which weights it holds
    assert read_weights(checkpoint).record == rec  # checkpoints carry the same record
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(load_model(run)(x), load_model(checkpoint)(x))


def test_eval_needs_nothing_but_the_weights_file(tanh_run, tmp_path):
    import shutil

    from convcanon.train.evaluate_cli import evaluate_checkpoint

    run = tanh_run
    alone = tmp_path / "elsewhere" / "model.safetensors"
    alone.parent.mkdir()
    shutil.copy(run / "model.safetensors", alone)
    beside = evaluate_checkpoint(run / "model.safetensors", device="cpu", amp="off")
    only = evaluate_checkpoint(alone, device="cpu", amp="off")
    assert only.metrics == beside.metrics and only.model == "resnet20"  # the record rebuilt the tanh model
