"""VGG: the paper's configs A, B, D, E with and without batch norm, the CIFAR VGG-16, and the 3x3-stack switch."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

import convcanon
from convcanon.models import vgg as vgg_module

TWINS = ["vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]

# (width, number of 3x3 convs) per stage, read off the paper's Table 1 independently of vgg.CONFIGS.
STAGES = {
    "vgg11": [(64, 1), (128, 1), (256, 2), (512, 2), (512, 2)],
    "vgg13": [(64, 2), (128, 2), (256, 2), (512, 2), (512, 2)],
    "vgg16": [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)],
    "vgg19": [(64, 2), (128, 2), (256, 4), (512, 4), (512, 4)],
}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta(builder, **options) -> nn.Module:
    """Build on the meta device: shapes and counts without allocating or initializing 138M weights."""
    with torch.device("meta"):
        return builder(**options)


def _ours(name: str, **options) -> nn.Module:
    return _meta(lambda **o: convcanon.create_model(name, **o), **options)


def _torchvision(name: str) -> nn.Module:
    return _meta(getattr(torchvision.models, name), weights=None)


_PERIOD = 4099  # prime: no row length here is a multiple, so rows differ


def _fill(model: nn.Module) -> nn.Module:
    """Random weights, fast: one short random vector of prime length tiled over each tensor, scaled by 1/sqrt(fan-in).

    Parity needs the same weights in both models, not independent ones; drawing 138M fresh normals takes seconds.
    BN gets weight, bias and running statistics away from their 1/0 defaults so that eval-mode BN is really tested.
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
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.add_(1.0)
            bn.running_var.abs_().add_(0.5)
    return model


# 138,357,544 and 138,365,992 are the published VGG-16 figures; the other ImageNet counts are torchvision's (checked
# against it below); the CIFAR ones are pinned here.
COUNTS = {
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992, "vgg19_bn": 143_678_248,
    "vgg16_cifar": 15_245_130, "vgg16_bn_cifar": 15_253_578,
}  # fmt: skip


@pytest.mark.parametrize(("name", "count"), COUNTS.items())
def test_parameter_counts(name, count):
    assert _params(_ours(name)) == count


@pytest.mark.parametrize("name", TWINS)
def test_parameter_counts_equal_torchvision(name):
    assert _params(_ours(name)) == _params(_torchvision(name))


@pytest.mark.parametrize("name", TWINS)
def test_matches_torchvision(name):
    assert vgg_module.TORCHVISION_NAMES[name] == name
    reference = _fill(_torchvision(name).to_empty(device="cpu")).eval()
    ours = _ours(name)
    # strict: same keys and shapes; assign shares the tensors instead of copying 0.5 GB into a second model
    ours.load_state_dict(vgg_module.from_torchvision(reference.state_dict()), strict=True, assign=True)
    ours.eval()
    x = torch.randn(1, 3, 32, 32)  # 1x1 after five pools; both adaptive pools then copy it to 7x7
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert expected.std() > 1e-2  # the comparison is not between two near-zero vectors
    # Same layers with the same weights in the same order; 1e-4 only absorbs a possible change of conv algorithm.
    assert (got - expected).abs().max() <= 1e-4


def test_bn_twin_is_the_plain_config_with_batch_norm():
    plain_bn, twin = _ours("vgg16", batch_norm=True), _ours("vgg16_bn")
    shapes = [(k, v.shape) for k, v in twin.state_dict().items()]
    assert [(k, v.shape) for k, v in plain_bn.state_dict().items()] == shapes
    assert sum(isinstance(m, nn.BatchNorm2d) for m in twin.modules()) == 13
    assert not any(isinstance(m, nn.BatchNorm2d) for m in _ours("vgg16").modules())


def _conv_count(stages: list[tuple[int, int]], kernels: str, in_chans: int = 3) -> int:
    """Conv weights + biases: a stage of n 3x3 convs, or one (2n+1)x(2n+1) conv from the stage input to its width."""
    total, channels = 0, in_chans
    for width, n in stages:
        if kernels == "stack":
            total += 9 * channels * width + (n - 1) * 9 * width * width + n * width
        else:
            total += (2 * n + 1) ** 2 * channels * width + width
        channels = width
    return total


@pytest.mark.parametrize("name", ["vgg11", "vgg16", "vgg19"])
def test_large_kernels_change_the_count_by_the_formula(name):
    stack, large = _ours(name), _ours(name, kernels="large")
    fc = 512 * 7 * 7 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
    assert _params(stack) == _conv_count(STAGES[name], "stack") + fc
    assert _params(large) == _conv_count(STAGES[name], "large") + fc


def test_large_kernel_costs_49_over_27_on_a_three_conv_stage():
    # Section 2.3: three 3x3 convs of C channels have 27 C^2 weights; the 7x7 conv they replace has 49 C^2.
    stack = [m for m in _ours("vgg16").features if isinstance(m, nn.Conv2d)][-3:]
    large = [m for m in _ours("vgg16", kernels="large").features if isinstance(m, nn.Conv2d)][-1]
    assert large.weight.numel() / sum(m.weight.numel() for m in stack) == pytest.approx(49 / 27)
    assert large.weight.numel() == 49 * 512 * 512


def _receptive_field(features: nn.Sequential) -> int:
    """Receptive field of one output pixel, from the kernel sizes and strides of the built layers."""
    field, jump = 1, 1
    for m in features:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s = m.stride if isinstance(m.stride, int) else m.stride[0]
            field, jump = field + (k - 1) * jump, jump * s
    return field


def test_large_kernels_keep_receptive_field_and_output_shape():
    stack, large = convcanon.create_model("vgg16_cifar"), convcanon.create_model("vgg16_cifar", kernels="large")
    assert _receptive_field(stack.features) == _receptive_field(large.features) == 212  # VGG-16's known figure
    convs = [m for m in large.features if isinstance(m, nn.Conv2d)]
    assert [(m.kernel_size[0], m.padding[0]) for m in convs] == [(5, 2), (5, 2), (7, 3), (7, 3), (7, 3)]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert stack.forward_features(x).shape == large.forward_features(x).shape == (1, 512, 2, 2)
        assert stack(x[..., :32, :32]).shape == large(x[..., :32, :32]).shape == (1, 10)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("vgg16", {"kernels": "huge"}, "'kernels'"),
        ("vgg16_bn", {"batch_norm": False}, "no option 'batch_norm'"),  # the _bn names fix it; use vgg16 instead
        ("vgg16_cifar", {"head": "gap"}, "'head'"),
        ("vgg16_cifar", {"dropout": 1.5}, "dropout"),
        ("vgg16_cifar", {"in_chans": 0}, "in_chans"),
    ],
)
def test_invalid_options_raise_value_error(name, options, message):
    with pytest.raises(ValueError, match=message):
        _ours(name, **options)


def test_make_features_rejects_unknown_kernels():
    with pytest.raises(ValueError, match="kernels must be one of stack, large .*; got 'huge'"):
        vgg_module.make_features([64, "M"], in_chans=3, batch_norm=False, activation="relu", kernels="huge")


def test_too_small_input_is_rejected_and_min_size_is_exact():
    model = convcanon.create_model("vgg16_cifar").eval()
    assert model.min_size == 32  # five 2x2 pools
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\).*got 31x31"):
        model(torch.randn(1, 3, 31, 31))
    with torch.no_grad(), pytest.raises(RuntimeError):  # one pixel less really fails: the check is not too strict
        model.forward_features(torch.randn(1, 3, 31, 31))


@pytest.mark.parametrize("name", ["vgg16_cifar", "vgg16_bn_cifar"])
def test_cifar_on_grayscale_32x32_trains(name):
    model = convcanon.create_model(name, in_chans=1)
    assert [(m.in_features, m.out_features) for m in model.classifier if isinstance(m, nn.Linear)] == [
        (512, 512), (512, 512), (512, 10)
    ]  # fmt: skip
    x, target = torch.randn(2, 1, 32, 32), torch.tensor([3, 7])
    nn.functional.cross_entropy(model(x), target).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 10)


def test_avgpool_head_replaces_the_fc_tower():
    fc, gap = _ours("vgg16_cifar"), _ours("vgg16_cifar", head="avgpool")
    assert _params(fc) - _params(gap) == 2 * (512 * 512 + 512)  # both end in Linear(512, 10): two hidden FCs go
    assert [type(m) for m in gap.classifier] == [nn.Dropout, nn.Linear]


def test_init_follows_torchvision():
    model = convcanon.create_model("vgg16_cifar")
    conv = model.features[0]  # Kaiming normal, fan_out: std = sqrt(2 / (64 * 3 * 3))
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.1)  # 1,728 samples: ~2% noise
    assert torch.all(conv.bias == 0)
    assert model.classifier[0].weight.std().item() == pytest.approx(0.01, rel=0.02)  # 262,144 samples
