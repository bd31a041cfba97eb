"""The model contract (convcanon.models.CanonModel) and the registry's option tables, for every model of the zoo."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch
from torch import nn

import convcanon
from convcanon import CanonModel, model_info, model_options, resolve_options
from convcanon.models.resnet_cifar import resnet20

ALL = convcanon.list_models()
SMALL = [n for n in ALL if model_info(n).input_size[1] <= 64]
EVERY = SMALL + [pytest.param(n, marks=pytest.mark.slow) for n in ALL if n not in SMALL]


def _on_meta(name: str, **options: object) -> CanonModel:
    with torch.device("meta"):
        model = convcanon.create_model(name, **options)
    assert isinstance(model, CanonModel)
    return model


@pytest.mark.parametrize("name", ALL)
def test_contract_attributes_are_computed_without_running_the_model_and_are_exact(name, monkeypatch):
    calls = []
    handle = nn.modules.module.register_module_forward_pre_hook(lambda *a: calls.append(1))
    try:
        model = _on_meta(name).train()
    finally:
        handle.remove()
    assert calls == []  # min_size comes from the layers' output-size formulas, not from trying sizes
    info = model_info(name)
    assert (model.name, model.in_chans, model.num_classes) == (name, info.input_size[0], info.default_num_classes)
    assert model.pretrained_cfg["input_size"] == info.input_size
    assert model.has_aux == (name in ("googlenet", "googlenet_bn"))  # the paper's aux heads are on by default
    channels = [stage["num_chs"] for stage in model.feature_info]
    reductions = [stage["reduction"] for stage in model.feature_info]
    assert channels[-1] == model.num_features and reductions == sorted(reductions) and reductions[-1] <= 32
    state = model.state_dict()
    assert f"{model.pretrained_cfg['first_conv']}.weight" in state
    assert f"{model.pretrained_cfg['classifier']}.weight" in state

    # The meta device computes shapes only: PyTorch's own size checks, at no cost. Batch 2: batch norm in training
    # mode needs two values per channel on a 1x1 map.
    side = model.min_size
    out = model.forward_with_aux(torch.empty(2, model.in_chans, side, side, device="meta"))
    assert out.logits.shape == (2, model.num_classes)
    assert model.forward_features(torch.empty(2, model.in_chans, side, side, device="meta")).shape[1] == channels[-1]
    if side > 1:
        monkeypatch.setattr(model, "min_size", 1)  # lift the input check: one pixel less must fail in the network
        with pytest.raises(RuntimeError):
            model.forward_with_aux(torch.empty(2, model.in_chans, side - 1, side - 1, device="meta"))


@pytest.mark.parametrize("name", EVERY)
def test_blocks_compose_to_the_model_with_its_own_modules(name):
    torch.manual_seed(0)
    model = convcanon.create_model(name, num_classes=5).eval()
    blocks = model.blocks()
    side = max(model.min_size, 16)
    x = torch.randn(2, model.in_chans, side, side)
    with torch.no_grad():
        # Bit for bit: the same modules applied in the same order (eval mode: dropout is the identity).
        assert torch.equal(nn.Sequential(*[block for _, block in blocks])(x), model(x))
        assert torch.equal(nn.Sequential(*[b for _, b in model.feature_blocks()])(x), model.forward_features(x))
    owned = [id(p) for _, block in blocks for p in block.parameters()]
    aux = [id(p) for n, m in model.named_children() if n.startswith("aux") for p in m.parameters()]
    assert sorted(owned + aux) == sorted(id(p) for p in model.parameters())  # each once, nothing copied
    names = [n for n, _ in blocks]
    assert len(set(names)) == len(names) and all(n == "stem" or model.get_submodule(n) for n in names)


def test_group_matcher_puts_the_stem_first_and_every_block_parameter_in_a_group():
    model = _on_meta("resnet20")
    matcher = model.group_matcher()
    assert matcher["stem"] == r"^(?:conv1|bn1|act)\."
    assert len(matcher["blocks"]) == 9 and matcher["blocks"][0] == (r"^(?:stage1\.0)\.", (1,))
    coarse = model.group_matcher(coarse=True)
    assert [stage for _, (stage,) in coarse["blocks"]] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


# ---- the registry


def test_list_models_takes_a_family_a_pattern_or_a_name_and_refuses_an_unknown_family():
    assert len(ALL) == 33
    assert convcanon.list_models("googlenet") == ["googlenet", "googlenet_bn", "googlenet_cifar"]
    assert convcanon.list_models("*_cifar") == ["alexnet_cifar", "googlenet_cifar", "vgg16_bn_cifar", "vgg16_cifar"]
    assert convcanon.list_models("resnet1*") == ["resnet101", "resnet110", "resnet152", "resnet18"]
    assert convcanon.list_models("resnet50") == ["resnet50"]
    assert convcanon.list_models("plain[0-9]") == []
    with pytest.raises(ValueError, match="unknown model family 'resnets'; families: alexnet, googlenet, resnet, "):
        convcanon.list_models("resnets")


def test_model_options_are_one_table_per_family_with_types_defaults_and_valid_values():
    options = model_options("resnet20")
    assert list(options) == ["in_chans", "width", "activation", "dropout", "batch_norm", "residual", "shortcut",
                             "zero_init_residual"]  # fmt: skip
    activation = options["activation"]
    assert (activation.type, activation.default, activation.choices) == (str, "relu", ("relu", "tanh", "sigmoid"))
    assert options["dropout"].valid() == "a number 0 <= x < 1" and options["batch_norm"].valid() == "true or false"
    assert "residual" not in model_options("plain20") and "shortcut" not in model_options("plain20")
    dropouts = [model_options(name)["dropout"].default for name in ("googlenet", "googlenet_bn")]
    assert dropouts == [0.4, 0.2]
    assert model_info("resnet20").options == tuple(options.values())
    for name in ALL:
        for option in model_options(name).values():
            assert option.help
            if option.default is not None:
                option.check(option.default, name)  # every default is a valid value


def test_resolve_options_fills_the_defaults_and_builds_nothing():
    assert resolve_options("alexnet_cifar", activation="tanh", lrn=None) == {
        "num_classes": 10, "in_chans": 3, "activation": "tanh", "dropout": 0.5, "lrn": None, "batch_norm": False,
        "head": "fc", "towers": 2,
    }  # fmt: skip
    with pytest.raises(ValueError, match="no option 'widht' \\(did you mean 'width'\\?\\); valid options: "):
        resolve_options("resnet20", widht=32)


def test_builders_validate_like_create_model_and_every_choice_builds():
    with pytest.raises(ValueError, match="must be one of relu, tanh, sigmoid; got 'gelu'"):
        resnet20(activation="gelu")
    for name in ("resnet18", "resnet20", "vgg11", "alexnet", "googlenet_cifar"):  # one model a family
        for key, option in model_options(name).items():
            for value in option.choices or ((True, False) if option.type is bool else ()):
                lrn = {"lrn": False} if name == "alexnet" and key == "batch_norm" and value else {}
                _on_meta(name, **{key: value}, **lrn)


def test_the_registry_does_not_import_the_zoo():
    tree = ast.parse(inspect.getsource(convcanon.registry))
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not any("models" in module for module in imported), imported
