"""GoogLeNet: exact parameter counts, the paper's structure, torchvision parity, aux heads that train, the switches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convcanon import create_model, list_models, model_info
from convcanon.layers import ModelOutput
from convcanon.models.googlenet import Inception, from_torchvision, googlenet_cifar
from convcanon.models.torchvision_compat import load_torchvision_state_dict, torchvision_name

NAMES = ["googlenet", "googlenet_bn", "googlenet_cifar"]

# (name, aux_heads) -> parameters at the default class count (1000; 10 for cifar). How the ImageNet figures relate to
# the quoted "6.8M"/"5M" and to torchvision is derived in the googlenet module docstring.
PARAMS = {
    ("googlenet", False): 6_998_552,
    ("googlenet", True): 13_378_280,
    ("googlenet_bn", False): 6_624_904,  # torchvision googlenet(aux_logits=False)
    ("googlenet_bn", True): 13_004_888,  # torchvision googlenet(aux_logits=True)
    ("googlenet_cifar", False): 372_578,
    ("googlenet_cifar", True): 648_822,
}
# A legal input side per model with aux heads on, small enough to keep the file fast.
SMALL = {"googlenet": 80, "googlenet_bn": 64, "googlenet_cifar": 32}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_on_meta(name: str, **options: object) -> int:
    # Counting needs shapes only: the meta device allocates nothing (the fc-head variants have 232M parameters).
    with torch.device("meta"):
        return n_params(create_model(name, **options))


_BUILT: dict[str, nn.Module] = {}


def with_aux(name: str) -> nn.Module:
    """One shared 10-class model per variant with aux heads on (building is the slow part); tests set its mode."""
    if name not in _BUILT:
        _BUILT[name] = create_model(name, num_classes=10, aux_heads=True)
    return _BUILT[name]


@pytest.fixture
def paper_net() -> nn.Module:
    return with_aux("googlenet")


def test_registry_lists_the_three_variants():
    assert list_models("googlenet") == NAMES
    for name in NAMES:
        info = model_info(name)
        assert info.depth == 22  # conv1..conv3, two layers per Inception module x 9, the classifier
        cifar = name == "googlenet_cifar"
        assert info.input_size == ((3, 32, 32) if cifar else (3, 224, 224))
        assert info.default_num_classes == (10 if cifar else 1000)


@pytest.mark.parametrize(("name", "aux_heads"), list(PARAMS))
def test_parameter_count_is_pinned(name, aux_heads):
    assert count_on_meta(name, aux_heads=aux_heads) == PARAMS[(name, aux_heads)]


@pytest.mark.parametrize("aux_logits", [False, True])
def test_googlenet_bn_has_torchvisions_parameter_count(aux_logits):
    with torch.device("meta"):
        tv = torchvision.models.googlenet(weights=None, aux_logits=aux_logits, init_weights=False)
    assert n_params(tv) == PARAMS[("googlenet_bn", aux_logits)]


def test_paper_googlenet_has_true_5x5_branches_lrn_biases_and_no_batch_norm(paper_net):
    inceptions = [m for m in paper_net.modules() if isinstance(m, Inception)]
    assert len(inceptions) == 9
    for block in inceptions:
        assert block.branch2[-1].conv.kernel_size == (3, 3)
        assert block.branch3[-1].conv.kernel_size == (5, 5)
        assert block.branch3[-1].conv.padding == (2, 2)
    lrns = [n for n, m in paper_net.features.named_children() if isinstance(m, nn.LocalResponseNorm)]
    assert lrns == ["lrn1", "lrn2"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in paper_net.modules())
    assert all(m.bias is not None for m in paper_net.modules() if isinstance(m, nn.Conv2d))
    assert paper_net.dropout.p == 0.4 and paper_net.aux1.dropout.p == 0.7


def test_googlenet_bn_uses_torchvisions_3x3_branch_and_batch_norm():
    with torch.device("meta"):
        model = create_model("googlenet_bn")
    block = model.features.inception3a
    assert block.branch3[-1].conv.kernel_size == (3, 3)
    assert block.branch1.conv.bias is None and block.branch1.bn.eps == 1e-3
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())


def randomize_batch_norm(model: nn.Module, x: torch.Tensor) -> None:
    """Give every BN layer random affine parameters and random but well-scaled running statistics.

    torchvision's init (conv weights with std 0.01) with fresh running stats (mean 0, var 1) shrinks the signal to
    nothing within a few layers, so logits would equal the fc bias and a parity test could not fail. Statistics of one
    real batch (momentum None: a cumulative average, here over one batch) keep activations near unit scale; they are
    then perturbed so that the running stats are not batch stats.
    """
    g = torch.Generator().manual_seed(1)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=g))
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        model(x)
        for bn in bns:
            bn.momentum = 0.1
            bn.running_mean.add_(0.1 * torch.randn(bn.num_features, generator=g))
            bn.running_var.mul_(torch.rand(bn.num_features, generator=g) + 0.5)


def test_googlenet_bn_matches_torchvision_in_eval():
    torch.manual_seed(0)
    tv = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True, transform_input=False)
    x = torch.randn(1, 3, 112, 112)  # a quarter of the work of 224; every layer still sees a map of 4x4 or more
    randomize_batch_norm(tv, torch.randn(2, 3, 112, 112))
    assert torchvision_name("googlenet_bn") == "googlenet"
    ours = load_torchvision_state_dict(create_model("googlenet_bn", aux_heads=False), "googlenet_bn", tv.state_dict())
    tv.eval()
    ours.eval()
    with torch.no_grad():
        expected = tv(x)
        got = ours(x)
    assert type(got) is torch.Tensor
    assert expected.std() > 0.5  # the comparison is not between two near-constant outputs (std is about 7)
    # Same layers in the same order on the same CPU kernels; 1e-4 only absorbs a different conv algorithm choice.
    assert (got - expected).abs().max() <= 1e-4


def test_googlenet_bn_matches_torchvision_aux_heads_in_training():
    tv = torchvision.models.googlenet(
        weights=None, num_classes=10, aux_logits=True, init_weights=True, transform_input=False
    )
    ours = with_aux("googlenet_bn")
    ours.load_state_dict(from_torchvision(tv.state_dict()), strict=True)
    tv.train()
    ours.train()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.manual_seed(7)  # the three dropouts draw in the same order (aux1, aux2, head) in both networks
        expected = tv(x)
        torch.manual_seed(7)
        got = ours.forward_with_aux(x)
    # Same layers in the same order on the same CPU kernels; 1e-4 only absorbs a different conv algorithm choice.
    assert (got.logits - expected.logits).abs().max() <= 1e-4
    assert (got.aux[0] - expected.aux_logits1).abs().max() <= 1e-4
    assert (got.aux[1] - expected.aux_logits2).abs().max() <= 1e-4


def test_from_torchvision_moves_stem_and_inceptions_under_features_only():
    keys = ["conv1.conv.weight", "inception4a.branch3.1.bn.running_var", "aux1.fc2.bias", "fc.weight"]
    mapped = from_torchvision(dict.fromkeys(keys, torch.zeros(1)))
    expected = ["features.conv1.conv.weight", "features.inception4a.branch3.1.bn.running_var", "aux1.fc2.bias"]
    assert list(mapped) == [*expected, "fc.weight"]


@pytest.mark.parametrize("name", NAMES)
def test_aux_outputs_only_when_asked_in_training_with_heads_on(name):
    model = with_aux(name)
    assert model.has_aux
    x = torch.randn(2, 3, SMALL[name], SMALL[name])
    with torch.no_grad():
        train_out = model.train().forward_with_aux(x)
        eval_out = model.eval().forward_with_aux(x)
        plain = [model.train(mode)(x) for mode in (True, False)]
    assert type(train_out) is type(eval_out) is ModelOutput
    assert len(train_out.aux) == 2
    assert all(a.shape == (2, 10) for a in train_out.aux)
    assert train_out.logits.shape == eval_out.logits.shape == (2, 10)
    assert eval_out.aux == ()
    assert all(type(out) is torch.Tensor and out.shape == (2, 10) for out in plain)  # forward: logits only


@pytest.mark.parametrize("name", ["googlenet", "googlenet_cifar"])  # googlenet_bn: see the eval parity test
def test_aux_heads_false_gives_no_aux_modules_and_no_aux_outputs(name):
    model = create_model(name, num_classes=10, aux_heads=False).train()
    assert not any(key.startswith("aux") for key in model.state_dict()) and not model.has_aux
    with torch.no_grad():
        out = model.forward_with_aux(torch.randn(2, 3, SMALL[name], SMALL[name]))
    assert type(out) is ModelOutput and out.aux == () and out.logits.shape == (2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient_from_main_plus_aux_loss(name):
    model = with_aux(name).train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    x = torch.randn(2, 3, SMALL[name], SMALL[name])
    y = torch.tensor([1, 2])
    out = model.forward_with_aux(x)
    loss = F.cross_entropy(out.logits, y) + 0.3 * sum(F.cross_entropy(a, y) for a in out.aux)
    loss.backward()
    for param_name, p in model.named_parameters():
        assert p.grad is not None, param_name
        assert torch.isfinite(p.grad).all(), param_name
        assert p.grad.abs().sum() > 0, param_name


def test_reductions_false_costs_what_the_formula_says():
    c_in, (c1, r3, c3, r5, c5, pp) = 480, (192, 96, 208, 16, 48, 64)  # inception 4a, Table 1
    with_red = Inception(c_in, c1, r3, c3, r5, c5, pp)
    naive = Inception(c_in, c1, r3, c3, r5, c5, pp, reductions=False)
    shared = (c_in * c1 + c1) + (c_in * pp + pp)  # the 1x1 branch and the pool projection
    assert n_params(with_red) == shared + (c_in * r3 + r3) + (9 * r3 * c3 + c3) + (c_in * r5 + r5) + (25 * r5 * c5 + c5)
    assert n_params(naive) == shared + (9 * c_in * c3 + c3) + (25 * c_in * c5 + c5)

    x = torch.randn(1, c_in, 14, 14)
    flops = {}
    for label, block in (("with", with_red), ("naive", naive)):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            out = block(x)
        flops[label] = counter.get_total_flops()
        assert out.shape == (1, c1 + c3 + c5 + pp, 14, 14)  # the output channel table is unchanged
    macs_per_pixel = (9 * c_in * c3 + 25 * c_in * c5) - (c_in * r3 + 9 * r3 * c3 + c_in * r5 + 25 * r5 * c5)
    assert flops["naive"] - flops["with"] == 2 * 14 * 14 * macs_per_pixel  # a MAC is 2 FLOPs to the counter
    assert naive.branch2[0].conv.in_channels == naive.branch3[0].conv.in_channels == c_in


def test_reductions_false_keeps_the_pool_projection_and_the_output_widths():
    with torch.device("meta"):
        base = create_model("googlenet", aux_heads=False)
        naive = create_model("googlenet", aux_heads=False, reductions=False)
    assert [m.out_channels for m in base.modules() if isinstance(m, Inception)] == [
        m.out_channels for m in naive.modules() if isinstance(m, Inception)
    ]
    assert n_params(naive) == 25_305_944  # 7.0M -> 25.3M: the 1x1 reductions save 72% of the parameters
    assert naive.features.inception3a.branch4[1].conv.kernel_size == (1, 1)


@pytest.mark.parametrize(("name", "expected"), [("googlenet", 232_376_856), ("googlenet_cifar", 18_208_098)])
def test_fc_head_is_the_vgg_tower_on_the_flattened_final_map(name, expected):
    base = PARAMS[(name, False)]
    classes, channels, grid, hidden = (1000, 1024, 7, 4096) if name == "googlenet" else (10, 256, 8, 1024)
    tower = (channels * grid * grid * hidden + hidden) + (hidden * hidden + hidden) + (hidden * classes + classes)
    assert base - (channels * classes + classes) + tower == expected
    assert count_on_meta(name, head="fc", aux_heads=False) == expected


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("googlenet", {"head": "mlp"}, "head"),
        ("googlenet", {"activation": "gelu"}, "activation"),
        ("googlenet_bn", {"dropout": 1.0}, "dropout"),
        ("googlenet", {"batch_norm": True}, "batch_norm"),  # a named variant: googlenet_bn
        ("googlenet_cifar", {"aux_heads": "yes"}, "aux_heads"),
        ("googlenet_cifar", {"in_chans": 0}, "in_chans"),
    ],
)
def test_invalid_option_raises_value_error(name, options, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **options)


def test_builders_called_directly_validate_too():
    with pytest.raises(ValueError, match="head"):
        googlenet_cifar(head="mlp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="activation"):
        googlenet_cifar(activation="gelu")  # type: ignore[arg-type]


def test_too_small_or_wrong_input_raises_value_error_naming_the_shape(paper_net):
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*got 78x78"):
        paper_net(torch.randn(1, 3, 78, 78))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*got \(1, 1, 224, 224\)"):
        paper_net(torch.randn(1, 1, 224, 224))


@pytest.mark.parametrize(
    ("name", "aux_heads", "min_size"),
    [
        ("googlenet", True, 79),  # the aux heads' 5x5 pool needs a 5x5 map at 4a
        ("googlenet", False, 31),  # the 3x3/2 pool before stage 5 needs a 2x2 map
        ("googlenet_bn", True, 15),  # torchvision's model card says min_size (15, 15)
        ("googlenet_cifar", True, 4),
    ],
)
def test_min_size_is_honest(name, aux_heads, min_size):
    assert torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1.meta["min_size"] == (15, 15)
    model = (with_aux(name) if aux_heads else create_model(name, num_classes=10, aux_heads=False)).train()
    assert model.min_size == min_size
    try:
        with torch.no_grad():
            assert len(model.forward_with_aux(torch.randn(2, 3, min_size, min_size)).aux) == (2 if aux_heads else 0)
            model.min_size = 1  # lift the check: one pixel less must fail inside the network
            with pytest.raises(RuntimeError):
                model.forward_with_aux(torch.randn(2, 3, min_size - 1, min_size - 1))
    finally:
        model.min_size = min_size


def test_cifar_takes_any_channel_count_and_other_switches():
    model = create_model("googlenet_cifar", in_chans=1, activation="tanh", batch_norm=False).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert not any(isinstance(m, (nn.ReLU, nn.BatchNorm2d)) for m in model.modules())
    assert any(isinstance(m, nn.Tanh) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].kernel_size == (3, 3) and convs[0].stride == (1, 1) and convs[0].in_channels == 1
    assert all(c.bias is not None for c in convs)
    inceptions = [m for m in model.modules() if isinstance(m, Inception)]
    assert len(inceptions) == 9 and all(m.branch3[-1].conv.kernel_size == (5, 5) for m in inceptions)
