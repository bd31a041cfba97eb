"""--init, --freeze and --head-lr-mult: weights from a convcanon run, a torchvision .pth file or torchvision's weights
API (from a torch hub cache the test lays out; the network is never reached)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision

import convcanon
from convcanon.cli import main
from convcanon.train.config import TrainConfig
from convcanon.train.finetune import apply_init, freeze, read_init
from convcanon.train.optim import build_optimizer


def _torchvision_resnet18(path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    state = torchvision.models.resnet18().state_dict()  # random weights, torchvision's layout and key names
    torch.save(state, path)
    return state


def _ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace(".downsample.", ".shortcut."): v for k, v in state.items()}


def test_a_torchvision_file_initializes_everything_but_a_new_class_layer(tmp_path):
    state = _ours(_torchvision_resnet18(tmp_path / "r18.pth"))
    said: list[str] = []
    model = convcanon.create_model("resnet18", num_classes=3)
    facts = apply_init(model, read_init(str(tmp_path / "r18.pth"), "resnet18", {}, num_classes=3, in_chans=3),
                       said.append)
    assert said[0] == "fc: 1000 -> 3 classes, re-initialized"
    assert facts["reinitialized"] == ["fc.weight", "fc.bias"] and facts["kind"] == "torchvision file"
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, state[key]), key
    assert model.fc.weight.shape == (3, 512)


def test_the_same_class_count_keeps_the_class_layer(tmp_path):
    state = _ours(_torchvision_resnet18(tmp_path / "r18.pth"))
    model = convcanon.create_model("resnet18", num_classes=1000)
    facts = apply_init(model, read_init(str(tmp_path / "r18.pth"), "resnet18", {}, num_classes=1000, in_chans=3),
                       lambda _: None)
    assert facts["reinitialized"] == [] and torch.equal(model.fc.weight, state["fc.weight"])


def test_weights_of_another_architecture_name_the_keys(tmp_path):
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    model = convcanon.create_model("resnet18", num_classes=10)
    with pytest.raises(ValueError, match=r"does not fit --model resnet18: unexpected: layer1\.2\."):
        apply_init(model, read_init(str(tmp_path / "r34.pth"), "resnet18", {}, num_classes=10, in_chans=3),
                   lambda _: None)


def test_a_hostile_pth_is_refused_and_runs_nothing(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        read_init(str(tmp_path / "evil.pth"), "resnet18", {}, num_classes=10, in_chans=3)
    assert not (tmp_path / "pwned").exists()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A torch hub cache as torchvision lays it out, and no network: a download attempt fails as offline would."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, *a, **k):
        raise URLError("network is unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_torchvision_weights_come_from_the_hub_cache(tmp_path, hub):
    hub.mkdir(parents=True)
    state = _ours(_torchvision_resnet18(hub / "resnet18-f37072fd.pth"))  # the file name of IMAGENET1K_V1's URL
    init = read_init("torchvision:ResNet18_Weights.IMAGENET1K_V1", "resnet18", {}, num_classes=5, in_chans=3)
    assert init.kind == "torchvision weights" and init.mean == pytest.approx((0.485, 0.456, 0.406))
    assert torch.equal(init.state["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_offline_torchvision_weights_say_which_file_goes_where(hub):
    with pytest.raises(ValueError, match=r"could not fetch https://download\.pytorch\.org/models/resnet18-f37072fd"
                                         r"\.pth .*place it as .*hub/checkpoints/resnet18-f37072fd\.pth"):
        read_init("torchvision:ResNet18_Weights.IMAGENET1K_V1", "resnet18", {}, num_classes=5, in_chans=3)


@pytest.mark.parametrize(("source", "model", "says"), [
    ("torchvision:ResNet18_Weights.NOPE", "resnet18", "torchvision has no weights of that name"),
    ("torchvision:ResNet50_Weights.IMAGENET1K_V2", "resnet18", "weights of torchvision's resnet50; --model resnet18 "
                                                               "has the twin resnet18"),
    ("torchvision:ResNet18_Weights.IMAGENET1K_V1", "resnet20", "--model resnet20 has no torchvision twin"),
    ("no/such/file.pth", "resnet18", "no such file or directory"),
])  # fmt: skip
def test_bad_init_sources_are_refused_before_the_run(tmp_path, capsys, source, model, says):
    code = main(["train", "--model", model, "--init", source, "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code in (1, 2) and says in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_freeze_and_head_lr(tmp_path):
    model = convcanon.create_model("resnet20", num_classes=10)
    said: list[str] = []
    freeze(model, "backbone:1", 10.0, said.append)
    body = model.feature_blocks()
    assert all(not p.requires_grad for _, b in body[:-1] for p in b.parameters())
    assert all(p.requires_grad for p in body[-1][1].parameters()) and model.fc.weight.requires_grad
    assert said[0].startswith("head: 650 parameters at --lr x 10") and "frozen: 9 of 10 body blocks" in said[1]
    opt = build_optimizer(model, TrainConfig(), torch.device("cpu"))
    scaled = [g for g in opt.param_groups if g["lr_scale"] == 10.0]
    assert {id(p) for g in scaled for p in g["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}


def test_init_from_a_convcanon_run_checks_the_options(tmp_path, capsys):
    run = tmp_path / "first"
    assert main(["train", "--model-option", "activation=tanh", "--epochs", "1", "--out", str(run),
                 "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["train", "--init", str(run), "--out", str(tmp_path / "bad"), "--no-progress", "--epochs", "1"]) == 2
    assert "was trained with other model options; pass --model-option activation=tanh" in capsys.readouterr().err
    second = tmp_path / "second"
    assert main(["train", "--init", str(run), "--model-option", "activation=tanh", "--freeze", "backbone",
                 "--max-steps", "2", "--out", str(second), "--no-progress"]) == 0  # fmt: skip
    facts = json.loads((second / "run.json").read_text())["init"]
    assert facts["kind"] == "convcanon" and facts["reinitialized"] == []
    first = convcanon.train.weights.load_model(run).state_dict()
    after = convcanon.train.weights.load_model(second).state_dict()
    body = [k for k in first if not k.startswith("fc.") and "running" not in k and "num_batches" not in k]
    assert all(torch.equal(first[k], after[k]) for k in body)  # frozen: the body is the first run's
    assert not torch.equal(first["fc.weight"], after["fc.weight"])  # the head trained on


@pytest.mark.slow
def test_fine_tuning_torchvision_weights_on_a_folder_through_the_cli(tmp_path, capsys):
    from PIL import Image

    state = _ours(_torchvision_resnet18(tmp_path / "r18.pth"))
    for split, count in (("train", 6), ("val", 3)):
        for c, color in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
            folder = tmp_path / "photos" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 36), tuple(v + 5 * i for v in color)).save(folder / f"{i}.png")
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet18", "--data", f"folder:{tmp_path / 'photos'}", "--image-size", "32",
                 "--init", str(tmp_path / "r18.pth"), "--freeze", "backbone", "--head-lr-mult", "10", "--epochs", "1",
                 "--batch-size", "6", "--workers", "0", "--out", str(run), "--no-progress"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "fc: 1000 -> 3 classes, re-initialized" in out and "frozen: 9 of 9 body blocks" in out
    trained = convcanon.train.weights.load_model(run)
    assert trained.pretrained_cfg["label_names"] == ["class0", "class1", "class2"]
    weights = trained.state_dict()
    for key in (k for k in state if k.endswith(".weight") and not k.startswith(("fc.", "bn")) and ".bn" not in k):
        assert torch.equal(weights[key], state[key]), key  # the backbone is the file's: frozen from step 0
    assert weights["fc.weight"].shape == (3, 512)


def test_torchvision_weights_bring_their_normalization_into_the_run(tmp_path, hub, capsys):
    import yaml

    hub.mkdir(parents=True)
    _torchvision_resnet18(hub / "resnet18-f37072fd.pth")
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet18", "--data", "synthetic:3:32:4", "--init",
                 "torchvision:ResNet18_Weights.IMAGENET1K_V1", "--max-steps", "1", "--out", str(run),
                 "--no-progress"]) == 0  # fmt: skip
    assert "normalization from --init torchvision:ResNet18_Weights.IMAGENET1K_V1: mean [0.485, 0.456, 0.406]" in (
        capsys.readouterr().out)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["mean"] == [0.485, 0.456, 0.406] and cfg["std"] == [0.229, 0.224, 0.225]  # a resume reads them here
    record = convcanon.train.weights.read_weights(run).record
    assert record["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])


@pytest.mark.parametrize(("spec", "says"), [
    ("backbone:11", "--freeze backbone:11: resnet20 has 10 body blocks; K must be at most 10"),
    ("head", "--freeze must be none, backbone (train the head only) or backbone:K"),
])  # fmt: skip
def test_a_freeze_the_model_cannot_take_is_refused_before_the_run(tmp_path, capsys, spec, says):
    assert main(["train", "--freeze", spec, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert says in capsys.readouterr().err and not (tmp_path / "run").exists()
