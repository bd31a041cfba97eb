"""AlexNet: the paper's two-tower network, torchvision's one-weird-trick layout, the CIFAR version, the switches."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

import convcanon
from convcanon.models import alexnet as alexnet_module
from convcanon.models.alexnet import LocalResponseNorm
from convcanon.models.torchvision_compat import load_torchvision_state_dict


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta(name: str, **options) -> nn.Module:
    """Build on the meta device: shapes and counts without allocating or initializing 61M weights."""
    with torch.device("meta"):
        return convcanon.create_model(name, **options)


_PERIOD = 4099  # prime: no row length here is a multiple, so rows differ


def _fill(model: nn.Module) -> nn.Module:
    """Random weights, fast: one short random vector of prime length tiled over each tensor, scaled by 1/sqrt(fan-in).

    Parity needs the same weights in both models, not independent ones; drawing 61-138M fresh normals takes seconds.
    """
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            if not tensor.is_floating_point():
                continue
            scale = 1 / math.sqrt(tensor[0].numel()) if tensor.dim() > 1 else 0.1
            base = scale * torch.randn(_PERIOD, generator=gen)
            flat = tensor.view(-1)
            whole = flat.numel() // _PERIOD * _PERIOD
            flat[:whole].view(-1, _PERIOD).copy_(base)
            flat[whole:].copy_(base[: flat.numel() - whole])
    return model


@pytest.fixture(scope="module")
def paper() -> nn.Module:
    torch.manual_seed(0)
    return convcanon.create_model("alexnet").eval()


# 60,965,224 and 61,100,840: the paper's layout and torchvision's alexnet. 1,436,874: alexnet_cifar, pinned here.
@pytest.mark.parametrize(
    ("name", "count"), [("alexnet", 60_965_224), ("alexnet_owt", 61_100_840), ("alexnet_cifar", 1_436_874)]
)
def test_parameter_counts(name, count):
    assert _params(_meta(name)) == count


def test_one_tower_has_the_full_weights_of_conv2_conv4_conv5():
    # groups=2 halves a conv's weights; one tower gives each of those convs its full input (bias counts unchanged).
    grouped_weights = 256 * 48 * 5 * 5 + 384 * 192 * 3 * 3 + 256 * 192 * 3 * 3
    single = _meta("alexnet", towers=1)
    assert _params(single) == 60_965_224 + grouped_weights
    assert single.split_layers == ()
    assert all(m.groups == 1 for m in single.modules() if isinstance(m, nn.Conv2d))


def test_owt_matches_torchvision_alexnet():
    reference = _fill(torchvision.models.alexnet(weights=None)).eval()
    ours = _meta("alexnet_owt").to_empty(device="cpu")
    load_torchvision_state_dict(ours, "alexnet_owt", reference.state_dict())
    ours.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert expected.std() > 1e-3  # the comparison is not between two near-zero vectors
    # Same layers with the same weights in the same order; 1e-4 only absorbs a possible change of conv algorithm.
    assert (got - expected).abs().max() <= 1e-4


def test_paper_feature_maps_have_the_papers_sizes(paper):
    # Figure 2: 55x55x96 after conv1, 27x27 into conv2, 13x13 for conv3-5, 6x6x256 into the FC tower.
    x = torch.randn(1, 3, 227, 227)
    sizes = {}
    with torch.no_grad():
        for name, layer in paper.features.named_children():
            x = layer(x)
            sizes[name] = tuple(x.shape[1:])
        logits = paper.forward_head(x)
    assert sizes["conv1"] == (96, 55, 55)
    assert sizes["pool1"] == (96, 27, 27)
    assert sizes["conv2"] == (256, 27, 27)
    assert sizes["pool2"] == (256, 13, 13)
    assert sizes["conv3"] == sizes["conv4"] == (384, 13, 13)
    assert sizes["pool5"] == (256, 6, 6)
    assert logits.shape == (1, 1000)


def test_paper_initialization(paper):
    conv = {i: paper.features.get_submodule(f"conv{i}") for i in range(1, 6)}
    fc6, fc7, fc8 = (paper.classifier[i] for i in (1, 4, 6))
    for layer in (conv[2], conv[4], conv[5], fc6, fc7):  # bias 1: section 5
        assert torch.all(layer.bias == 1)
    for layer in (conv[1], conv[3], fc8):
        assert torch.all(layer.bias == 0)
    for layer in (conv[3], fc6):  # N(0, 0.01); 0.9M and 38M samples put the estimate within 1%
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.01)
        assert abs(layer.weight.mean().item()) < 1e-4


def test_cifar_logits_depend_on_the_input_at_initialization():
    # The reason alexnet_cifar uses Kaiming init: with the paper's N(0, 0.01) its logits vary across inputs by ~1e-6
    # at step 0 and SGD stays at chance; here they must vary by a fraction of their size (measured: ~0.2).
    model = convcanon.create_model("alexnet_cifar").eval()
    with torch.no_grad():
        logits = model(torch.randn(16, 3, 32, 32))
    assert logits.std(0).mean() > 0.05
    conv1 = model.features.conv1  # Kaiming normal, fan_in: std = sqrt(2 / (3 * 5 * 5)); 3,600 samples: ~1% noise
    assert conv1.weight.std().item() == pytest.approx(math.sqrt(2 / 75), rel=0.05)
    assert torch.all(conv1.bias == 0)


def test_split_layers_are_the_grouped_convs(paper):
    assert paper.towers == 2
    assert paper.split_layers == ("features.conv2", "features.conv4", "features.conv5")
    for i in range(1, 6):
        conv = paper.features.get_submodule(f"conv{i}")
        assert conv.groups == (2 if f"features.conv{i}" in paper.split_layers else 1)


def _run(features: nn.Sequential, first: str, last: str, x: torch.Tensor) -> torch.Tensor:
    names = [n for n, _ in features.named_children()]
    for name in names[names.index(first) : names.index(last) + 1]:
        x = features.get_submodule(name)(x)
    return x


def _tower_outputs_when_tower_two_input_changes(
    features: nn.Sequential, first: str, last: str, channels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(1, channels, 13, 13)
    changed = x.clone()
    changed[:, channels // 2 :] = torch.rand(1, channels - channels // 2, 13, 13)
    with torch.no_grad():
        return _run(features, first, last, x), _run(features, first, last, changed)


# Each tower-local segment of the paper: what GPU 1 computes there must not read GPU 2's maps.
@pytest.mark.parametrize(("first", "last", "channels"), [("conv2", "pool2", 96), ("conv4", "pool5", 384)])
def test_tower_one_output_depends_only_on_tower_one_input(paper, first, last, channels):
    before, after = _tower_outputs_when_tower_two_input_changes(paper.features, first, last, channels)
    half = before.shape[1] // 2
    assert torch.equal(before[:, :half], after[:, :half])  # exact: those values never read the changed half
    assert not torch.allclose(before[:, half:], after[:, half:])


def test_conv3_reads_both_towers(paper):
    # Conv3 is where the paper's GPUs exchange maps: the same check must fail there, so the test above can fail.
    before, after = _tower_outputs_when_tower_two_input_changes(paper.features, "conv3", "conv3", 256)
    assert not torch.allclose(before[:, :192], after[:, :192])


def _paper_lrn(a: torch.Tensor, n: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> torch.Tensor:
    """Section 3.3 literally: b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta."""
    channels = a.shape[1]
    out = torch.empty_like(a)
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        out[:, i] = a[:, i] / (k + alpha * (a[:, lo : hi + 1] ** 2).sum(1)) ** beta
    return out


def test_lrn_is_the_papers_formula_within_each_tower():
    a = 30 * torch.rand(2, 12, 3, 3)  # large enough that alpha * sum a^2 is comparable to k
    # float32 against the literal formula in float32: a few ulps of difference.
    torch.testing.assert_close(LocalResponseNorm(towers=1)(a), _paper_lrn(a), rtol=1e-5, atol=1e-6)
    per_tower = torch.cat([_paper_lrn(a[:, :6]), _paper_lrn(a[:, 6:])], 1)
    torch.testing.assert_close(LocalResponseNorm(towers=2)(a), per_tower, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(per_tower, _paper_lrn(a))  # the tower boundary matters


@pytest.mark.parametrize(
    ("name", "options", "lrn", "bn"),
    [
        ("alexnet", {}, 2, 0),
        ("alexnet", {"lrn": False}, 0, 0),
        ("alexnet", {"batch_norm": True}, 0, 5),  # batch norm replaces LRN unless asked for both
        ("alexnet_owt", {}, 0, 0),
        ("alexnet_owt", {"lrn": True}, 2, 0),
        ("alexnet_cifar", {}, 2, 0),
    ],
)
def test_lrn_present_or_absent(name, options, lrn, bn):
    model = _meta(name, **options)
    names = [n for n, _ in model.features.named_children()]
    assert sum(isinstance(m, LocalResponseNorm) for m in model.modules()) == lrn
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bn
    if lrn:  # after the ReLU of conv1 and conv2, before their pools (section 3.3)
        assert names[names.index("act1") + 1] == "lrn1" and names[names.index("lrn1") + 1] == "pool1"
        assert names[names.index("act2") + 1] == "lrn2" and names[names.index("lrn2") + 1] == "pool2"


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("alexnet", {"lrn": True, "batch_norm": True}, "batch_norm replaces LRN"),
        ("alexnet_cifar", {"towers": 3}, "towers. of model .alexnet_cifar. must be one of 1, 2; got 3"),
        ("alexnet_owt", {"towers": 2}, "no option 'towers'"),
        ("alexnet", {"head": "gap"}, "'head'"),
        ("alexnet", {"dropout": 1.0}, "dropout"),
        ("alexnet_cifar", {"in_chans": 0}, "in_chans"),
        ("alexnet_cifar", {"activation": "gelu"}, "'activation'"),
    ],
)
def test_invalid_options_raise_value_error(name, options, message):
    with pytest.raises(ValueError, match=message):
        _meta(name, **options)


@pytest.mark.parametrize(("name", "min_size"), [("alexnet", 67), ("alexnet_owt", 63), ("alexnet_cifar", 15)])
def test_too_small_input_is_rejected_and_min_size_is_exact(name, min_size):
    model = _meta(name).to_empty(device="cpu").eval()  # uninitialized weights: only shapes matter here
    assert model.min_size == min_size
    too_small = torch.randn(1, 3, min_size - 1, min_size - 1)
    with pytest.raises(ValueError, match=rf"\(N, 3, H, W\).*got {min_size - 1}x{min_size - 1}"):
        model(too_small)
    with torch.no_grad():
        model.forward_features(torch.randn(1, 3, min_size, min_size))  # the smallest accepted size really runs
        with pytest.raises(RuntimeError):  # and one pixel less really fails: the check is not stricter than needed
            model.forward_features(too_small)


@pytest.mark.parametrize("options", [{}, {"batch_norm": True}, {"towers": 1}, {"head": "avgpool"}])
def test_cifar_on_grayscale_32x32_trains(options):
    model = convcanon.create_model("alexnet_cifar", in_chans=1, **options)
    x, target = torch.randn(2, 1, 32, 32), torch.tensor([3, 7])
    nn.functional.cross_entropy(model(x), target).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 10)


def test_avgpool_head_replaces_the_fc_tower():
    fc, gap = _meta("alexnet_cifar"), _meta("alexnet_cifar", head="avgpool")
    tower = (128 * 3 * 3 + 1) * 512 + (512 + 1) * 512 + (512 + 1) * 10
    assert _params(fc) - _params(gap) == tower - (128 + 1) * 10
    assert [type(m) for m in gap.classifier] == [nn.Dropout, nn.Linear]


def test_activation_switch_reaches_every_layer():
    model = _meta("alexnet", activation="tanh")
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 7  # 5 convs + 2 hidden FCs
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_torchvision_names_and_key_mapping():
    assert alexnet_module.TORCHVISION_NAMES == {"alexnet_owt": "alexnet"}
    with torch.device("meta"):
        reference = torchvision.models.alexnet(weights=None)
    keys = set(alexnet_module.from_torchvision(reference.state_dict()))
    assert keys == set(_meta("alexnet_owt").state_dict())
