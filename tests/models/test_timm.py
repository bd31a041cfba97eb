"""timm's model interface on every family, with timm's semantics, driven where possible through timm's own helpers
(skipped when timm is not installed): data config, feature getter, layer-wise decay, EMA."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

import convcanon
from convcanon import model_info
from convcanon.models.base import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD

timm = pytest.importorskip("timm")
from timm.data import create_transform, resolve_model_data_config  # noqa: E402
from timm.models._features import FeatureGetterNet  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402
from timm.utils import ModelEmaV3  # noqa: E402

SMALL = ["resnet20", "alexnet_cifar", "vgg16_cifar", "googlenet_cifar"]  # one model a family at 32x32
TOWERS = {"alexnet_cifar", "vgg16_cifar"}  # FC tower heads: pre-logits are the tower's hidden features


def _model(name: str, **options: object) -> nn.Module:
    torch.manual_seed(0)
    return convcanon.create_model(name, **options).eval()


def _x(batch: int = 2, chans: int = 3) -> torch.Tensor:
    return torch.randn(batch, chans, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", [*SMALL, "resnet50", "vgg16", "alexnet", "googlenet_bn"])
def test_timm_resolves_each_models_own_preprocessing(name):
    with torch.device("meta"):
        model = convcanon.create_model(name)
    cfg = resolve_model_data_config(model)
    info = model_info(name)
    small = info.input_size[1] == 32
    assert cfg["input_size"] == info.input_size
    assert cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == (1.0 if small else 0.875)
    assert cfg["mean"] == (CIFAR10_MEAN if small else IMAGENET_MEAN)
    assert cfg["std"] == (CIFAR10_STD if small else IMAGENET_STD)
    transform = create_transform(**cfg)
    assert transform(Image.new("RGB", (300, 260))).shape == info.input_size


def test_timm_data_config_follows_the_channel_count():
    with torch.device("meta"):
        model = convcanon.create_model("resnet20", in_chans=1)
    cfg = resolve_model_data_config(model)
    assert cfg["input_size"] == (1, 32, 32)
    assert cfg["mean"] == (round(sum(CIFAR10_MEAN) / 3, 4),) and len(cfg["std"]) == 1


@pytest.mark.parametrize("name", SMALL)
def test_features_head_and_classifier_have_timms_semantics(name):
    model = _model(name, num_classes=7)
    x = _x()
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
        pre = model.forward_head(features, pre_logits=True)
        assert features.shape[1] == model.num_features
        assert torch.equal(model.forward_head(features), logits)
        hidden = 512 if name in TOWERS else model.num_features
        assert pre.shape == (2, hidden) and model.head_hidden_size == hidden
        classifier = model.get_classifier()
        assert isinstance(classifier, nn.Linear) and (classifier.in_features, classifier.out_features) == (hidden, 7)
        assert torch.equal(classifier(pre), logits)

        model.reset_classifier(0)  # timm: 0 classes = identity classifier, the model outputs its pre-logits
        assert isinstance(model.get_classifier(), nn.Identity) and model.num_classes == 0
        assert torch.equal(model(x), pre)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.pretrained_cfg["num_classes"] == 3
    state = model.state_dict()
    assert f"{model.pretrained_cfg['first_conv']}.weight" in state
    assert f"{model.pretrained_cfg['classifier']}.weight" in state


@pytest.mark.parametrize("name", SMALL)
def test_num_classes_0_at_creation_builds_the_model_without_a_classifier(name):
    without, with_classes = _model(name, num_classes=0), _model(name, num_classes=7)
    x = _x()
    with torch.no_grad():
        assert without(x).shape == (2, without.head_hidden_size)
        assert without.forward_features(x).shape == with_classes.forward_features(x).shape
    assert isinstance(without.get_classifier(), nn.Identity) and without.num_classes == 0
    counts = [sum(p.numel() for p in m.parameters()) for m in (without, with_classes)]
    assert counts[1] - counts[0] == 7 * (without.head_hidden_size + 1)  # exactly the class layer


def test_num_classes_0_with_auxiliary_heads_is_refused():
    with pytest.raises(ValueError, match="aux_heads=False"):
        convcanon.create_model("googlenet_cifar", num_classes=0, aux_heads=True)
    with pytest.raises(ValueError, match="aux_heads=False"):
        convcanon.create_model("googlenet_cifar", num_classes=10, aux_heads=True).reset_classifier(0)


@pytest.mark.parametrize("name", SMALL)
def test_timms_feature_getter_reads_the_stages(name):
    model = _model(name, num_classes=7)
    stages = len(model.feature_info)
    getter = FeatureGetterNet(model, out_indices=tuple(range(stages)))
    assert getter.feature_info.channels() == [info["num_chs"] for info in model.feature_info]
    assert getter.feature_info.reduction() == [info["reduction"] for info in model.feature_info]
    x = _x()
    with torch.no_grad():
        outputs = getter(x)
        final, intermediates = model.forward_intermediates(x)
        last = model.forward_intermediates(x, indices=1, intermediates_only=True)
        early = model.forward_intermediates(x, indices=[0], stop_early=True)
        assert torch.equal(final, model.forward_features(x))
    assert [o.shape[1] for o in outputs] == getter.feature_info.channels()
    assert all(torch.equal(a, b) for a, b in zip(outputs, intermediates, strict=True))
    assert len(last) == 1 and torch.equal(last[0], intermediates[-1])
    assert torch.equal(early[0], early[1][0]) and torch.equal(early[0], intermediates[0])
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[stages])


@pytest.mark.parametrize("name", SMALL)
def test_timms_layer_decay_scales_stem_blocks_and_head(name):
    model = _model(name, num_classes=7)
    optimizer = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=0.0, layer_decay=0.5)
    scale = {id(p): group["lr_scale"] for group in optimizer.param_groups for p in group["params"]}
    assert set(scale) == {id(p) for p in model.parameters()}
    first_conv = model.get_submodule(model.pretrained_cfg["first_conv"])
    assert scale[id(first_conv.weight)] == min(scale.values())  # the stem decays most
    assert scale[id(model.get_classifier().weight)] == 1.0  # the head not at all
    blocks_with_parameters = sum(any(True for _ in b.parameters()) for _, b in model.feature_blocks())
    assert len(set(scale.values())) == blocks_with_parameters + 1  # one scale per block, and the head's


def test_timms_model_ema_follows_the_model():
    model = _model("resnet20", num_classes=7)
    ema = ModelEmaV3(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    first = model.get_submodule(model.pretrained_cfg["first_conv"]).weight
    ema_first = ema.module.get_submodule(model.pretrained_cfg["first_conv"]).weight
    torch.testing.assert_close(ema_first, first - 0.5)
