"""The contract every model of the zoo keeps, checked for each name in list_models()."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import convcanon
from convcanon import model_info
from convcanon.analysis.profile import count_macs, profile_model

REQUIRED = {
    "alexnet", "alexnet_owt", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "googlenet", "googlenet_bn", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "plain20", "plain32", "plain44", "plain56",
    "plain110", "alexnet_cifar", "vgg16_cifar", "vgg16_bn_cifar", "googlenet_cifar",
}  # fmt: skip
ALL = convcanon.list_models()


def test_every_required_model_is_registered():
    assert REQUIRED <= set(ALL), f"missing: {sorted(REQUIRED - set(ALL))}"


@pytest.fixture(scope="module", params=ALL)
def model(request: pytest.FixtureRequest) -> nn.Module:
    """Each model, built once for the tests of this module that take it (pytest runs them together) and then freed:
    one ImageNet VGG with its gradients is a gigabyte."""
    torch.manual_seed(0)
    return convcanon.create_model(request.param, num_classes=7)


def _small_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    side = max(model.min_size, min(model_info(model.name).input_size[1], 64))
    return torch.randn(batch, model.in_chans, side, side)


def test_output_is_a_logits_tensor_in_train_and_eval(model):
    x = _small_input(model)
    for mode in (False, True):
        model.train(mode)
        with torch.no_grad():
            out = model(x)
        assert type(out) is torch.Tensor and out.shape == (2, 7)


def test_every_parameter_receives_a_gradient_in_a_generic_training_step(model):
    model.train()
    x, target = _small_input(model), torch.arange(2) % 7
    try:
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), target).backward()  # any loop's step: logits in, loss out
        aux = {id(p) for name, m in model.named_children() if name.startswith("aux") for p in m.parameters()}
        missing = [n for n, p in model.named_parameters() if id(p) not in aux and not _has_gradient(p)]
        assert not missing, f"parameters without gradient: {missing[:8]}"
        if aux:  # GoogLeNet's auxiliary heads train when the loop asks for their logits (forward_with_aux)
            model.zero_grad(set_to_none=True)
            out = model.forward_with_aux(x)
            loss = nn.functional.cross_entropy(out.logits, target)
            (loss + 0.3 * sum(nn.functional.cross_entropy(a, target) for a in out.aux)).backward()
            missing = [n for n, p in model.named_parameters() if not _has_gradient(p)]
            assert not missing, f"parameters without gradient: {missing[:8]}"
    finally:
        model.zero_grad(set_to_none=True)


def _has_gradient(p: torch.Tensor) -> bool:
    return p.grad is not None and bool(torch.any(p.grad != 0))


def test_wrong_input_is_rejected_with_the_expected_shape(model):
    with pytest.raises(ValueError, match=rf"\(N, {model.in_chans}, H, W\)"):
        model(torch.randn(1, model.in_chans + 1, 64, 64))
    if model.min_size > 1:
        tiny = model.min_size - 1
        with pytest.raises(ValueError, match=str(model.min_size)):
            model(torch.randn(1, model.in_chans, tiny, tiny))


def test_unknown_model_lists_the_closest_names():
    with pytest.raises(ValueError, match="resnet50") as err:
        convcanon.create_model("resnet05")
    assert "closest" in str(err.value)


@pytest.mark.parametrize("bad", [-3, 2.5, True, "10"])
def test_num_classes_must_be_a_non_negative_integer(bad):
    with pytest.raises(ValueError, match="num_classes"):
        convcanon.create_model("resnet20", num_classes=bad)


def test_unknown_option_and_wrong_type_raise_value_error():
    with pytest.raises(ValueError, match="no option 'residul'.*residual"):
        convcanon.create_model("resnet20", residul=False)
    with pytest.raises(ValueError, match="'residual'"):
        convcanon.create_model("resnet20", residual="no")
    with pytest.raises(ValueError, match="'activation' .* must be one of relu, tanh, sigmoid; got 'swish'"):
        convcanon.create_model("resnet20", activation="swish")
    with pytest.raises(ValueError, match="'residual' .* must be true or false; got 'no'"):
        convcanon.create_model("resnet20", residual="no")
    with pytest.raises(ValueError, match=r"'dropout' .* must be a number 0 <= x < 1; got 1.5"):
        convcanon.create_model("vgg16_cifar", dropout=1.5)
    with pytest.raises(ValueError, match="'towers' .* must be one of 1, 2; got 3"):
        convcanon.create_model("alexnet_cifar", towers=3)


# torchvision's published figures (GFLOPS column of its model table, which counts multiply-accumulates).
# 1% tolerance: both counts are the same conv+linear MACs; the rounding of the published figure is 0.01 GMAC.
@pytest.mark.parametrize(("name", "gmacs"), [("resnet50", 4.09), ("vgg16", 15.47), ("resnet18", 1.81)])
def test_gmacs_match_torchvision_published_figures(name, gmacs):
    measured = profile_model(name).gmacs
    assert measured == pytest.approx(gmacs, rel=0.01)


def test_meta_profile_equals_a_real_forward_count():
    model = convcanon.create_model("resnet20")
    assert count_macs(model, (3, 32, 32)) == profile_model("resnet20").macs
    # 40.55M MACs: the ResNet paper's CIFAR ResNet-20 (0.27M params) at 32x32
    assert profile_model("resnet20").macs == pytest.approx(40.55e6, rel=0.01)


def _main_path_weighted_layers(model: nn.Module) -> int:
    skip = ("shortcut", "aux", "downsample")
    return sum(
        1 for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not any(s in n.split(".") or n.startswith(s) for s in skip)
    )  # fmt: skip


SEQUENTIAL = [n for n in ALL if model_info(n).family in ("alexnet", "vgg", "resnet", "resnet_cifar")]


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_declared_depth_counts_the_weighted_layers(name):
    # Sequential families: weighted layers on the main path = conv + linear modules outside shortcuts.
    with torch.device("meta"):
        model = convcanon.create_model(name)
    assert _main_path_weighted_layers(model) == model_info(name).depth


def test_models_command_json_lists_every_model(capsys):
    from convcanon.cli import main

    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(ALL)
    by_name = {r["name"]: r for r in rows}
    assert by_name["resnet50"]["params"] == 25_557_032
    assert by_name["vgg16"]["gmacs"] == pytest.approx(15.47, rel=0.01)
    assert by_name["resnet20"]["depth"] == 20


def test_models_command_one_model_sums_to_the_total(capsys):
    from convcanon.cli import main

    assert main(["models", "resnet20", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    total = rows[-1]
    assert total["layer"] == "total"
    assert total["params"] == 269_722
    assert sum(r["params"] for r in rows[:-1]) == total["params"]
    assert total["macs"] == profile_model("resnet20").macs
