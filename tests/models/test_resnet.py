"""ResNet (ImageNet) and CIFAR ResNet: published sizes, plain twins, torchvision parity, switches, option A."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convcanon import create_model, list_models, model_info
from convcanon.models.resnet import BasicBlock, Bottleneck, ShortcutA, from_torchvision, residual_blocks
from convcanon.models.torchvision_compat import load_torchvision_state_dict, torchvision_name


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shapes_only(name: str, **options: object) -> nn.Module:
    """The model on the meta device: real structure and shapes, no memory, no init cost (for counts and keys)."""
    with torch.device("meta"):
        return create_model(name, **options)


# torchvision's counts for 1000 classes (its model cards); CIFAR counts for 10 classes, 3 channels, option A.
# The plain ImageNet nets lack the option-B projections of layer2..layer4 (173,824 parameters).
PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "plain18": 11_515_688,
    "plain34": 21_623_848,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "plain20": 269_722,
    "plain32": 464_154,
    "plain44": 658_586,
    "plain56": 853_018,
    "plain110": 1_727_962,
}
TORCHVISION_TWINS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
CIFAR_DEPTHS = [20, 32, 44, 56, 110]


def test_registry_lists_exactly_these_models():
    assert set(list_models("resnet")) | set(list_models("resnet_cifar")) == set(PARAMS)
    for name in PARAMS:
        info = model_info(name)
        assert info.depth == int(name.removeprefix("resnet").removeprefix("plain"))
        assert info.input_size == ((3, 224, 224) if info.family == "resnet" else (3, 32, 32))
        assert info.default_num_classes == (1000 if info.family == "resnet" else 10)


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_count_is_published_figure(name):
    assert n_params(shapes_only(name)) == PARAMS[name]


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_cifar_plain_twin_has_same_parameter_names_and_shapes(depth):
    residual = shapes_only(f"resnet{depth}").state_dict()
    plain = shapes_only(f"plain{depth}").state_dict()
    assert {k: v.shape for k, v in plain.items()} == {k: v.shape for k, v in residual.items()}


@pytest.mark.parametrize("depth", [18, 34])
def test_imagenet_plain_twin_lacks_only_the_projections(depth):
    residual = shapes_only(f"resnet{depth}").state_dict()
    plain = shapes_only(f"plain{depth}").state_dict()
    projections = {k for k in residual if "shortcut." in k}
    assert projections  # layer2..layer4 each open with a projection
    assert set(plain) == set(residual) - projections


def _randomize_batch_norm(model: nn.Module) -> None:
    # Fresh BN layers are the identity in eval mode; random statistics make a misplaced BN change the output.
    # Scales below 1 keep 152 layers of residual sums at logits of order 1, where an absolute tolerance means something.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.3, 0.6)
            m.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("name", TORCHVISION_TWINS)
def test_torchvision_weights_give_torchvision_outputs(name):
    torch.manual_seed(0)
    assert torchvision_name(name) == name
    reference = getattr(torchvision.models, name)(weights=None).eval()
    _randomize_batch_norm(reference)
    ours = load_torchvision_state_dict(create_model(name), name, reference.state_dict()).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    # Same float32 operations in the same order: bitwise equal on CPU (measured diff 0). 1e-4 only allows for another
    # conv algorithm choice; it is ~1000x below the logits' spread (std 0.1-0.2, max < 1) that a wrong wiring moves.
    assert expected.std() > 0.05
    assert (got - expected).abs().max().item() <= 1e-4


def test_from_torchvision_renames_only_downsample():
    keys = {"layer2.0.downsample.0.weight": 0, "layer2.0.downsample.1.running_var": 1, "layer2.0.conv1.weight": 2}
    renamed = from_torchvision({k: torch.tensor(v) for k, v in keys.items()})
    assert set(renamed) == {"layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var", "layer2.0.conv1.weight"}


def test_blocks_are_bottlenecks_with_v15_stride_on_the_3x3():
    first = shapes_only("resnet50").layer2[0]
    assert isinstance(first, Bottleneck)
    assert (first.conv1.stride, first.conv2.stride, first.shortcut[0].stride) == ((1, 1), (2, 2), (2, 2))


def test_blocks_are_the_stem_each_residual_block_in_forward_order_and_the_head():
    model = create_model("resnet20").eval()
    names = [name for name, _ in model.blocks()]
    assert names == ["stem", *[f"stage{s}.{i}" for s in (1, 2, 3) for i in range(3)], "fc"]
    assert [name for name, _ in residual_blocks(model)] == names[1:-1]
    seen = []
    for name, block in residual_blocks(model):  # the model's own blocks, run in this order by its forward
        block.register_forward_hook(lambda m, i, o, name=name: seen.append(name))
    with torch.no_grad():
        model(torch.randn(1, 3, 8, 8))
    assert seen == names[1:-1]
    expected = ["stem", *[f"layer{s}.{i}" for s in (1, 2, 3, 4) for i in (0, 1)], "fc"]
    assert [n for n, _ in shapes_only("resnet18").blocks()] == expected


def test_tanh_activation_replaces_every_relu():
    model = create_model("resnet20", activation="tanh")
    kinds = {type(m) for m in model.modules()}
    assert nn.Tanh in kinds and nn.ReLU not in kinds
    assert torch.isfinite(model(torch.randn(2, 3, 8, 8))).all()


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_residual_false_changes_the_function_with_the_same_weights(name):
    torch.manual_seed(0)
    residual = create_model(name).eval()
    plain = create_model(name, residual=False).eval()
    state = {k: v for k, v in residual.state_dict().items() if "shortcut." not in k}
    plain.load_state_dict(state, strict=True)
    assert all(block.shortcut is None for _, block in residual_blocks(plain))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(plain(x), residual(x))


def test_fc_head_is_the_vgg_tower_on_a_7x7_map():
    avgpool = shapes_only("resnet18", num_classes=10)
    fc = create_model("resnet18", num_classes=10, head="fc", dropout=0.5)
    tower = (512 * 7 * 7 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 10 + 10)
    assert n_params(fc) - n_params(avgpool) == tower - (512 * 10 + 10)
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.5 for m in fc.fc) == 2
    with torch.no_grad():
        assert fc.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_cifar_option_b_adds_exactly_two_projections():
    extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # 1x1 conv + BN at the 16->32 and 32->64 transitions
    assert n_params(shapes_only("resnet20", shortcut="B")) == PARAMS["resnet20"] + extra


def test_width_scales_every_stage():
    model = create_model("resnet20", width=32)
    assert (model.conv1.out_channels, model.stage3[0].conv2.out_channels, model.fc.in_features) == (32, 128, 128)


def test_zero_init_residual_starts_every_block_as_identity():
    model = create_model("resnet20", zero_init_residual=True).eval()
    assert all((block.last_bn().weight == 0).all() for _, block in residual_blocks(model))
    x = torch.rand(1, 16, 8, 8)  # non-negative, as after a ReLU: relu(0 + x) == x
    with torch.no_grad():
        assert torch.equal(model.stage1[1](x), x)
    resnet50 = create_model("resnet50", zero_init_residual=True)
    assert all((block.last_bn().weight == 0).all() for _, block in residual_blocks(resnet50))


def test_no_batch_norm_plain_net_is_allowed_and_has_biases():
    model = create_model("plain20", batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("resnet20", {"residual": False, "zero_init_residual": True}, "residual=True"),
        ("resnet18", {"batch_norm": False, "zero_init_residual": True}, "batch_norm=True"),
        ("resnet18", {"head": "gap"}, "head"),
        ("resnet20", {"shortcut": "C"}, "shortcut"),
        ("resnet20", {"dropout": 1.0}, "dropout"),
        ("resnet20", {"width": 0}, "width"),
        ("plain20", {"residual": True}, "valid options"),
        ("plain18", {"zero_init_residual": True}, "valid options"),
    ],
)
def test_invalid_combinations_raise_value_error(name, options, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **options)


def test_option_a_shortcut_subsamples_and_zero_pads():
    shortcut = ShortcutA(2, 4, stride=2)
    assert n_params(shortcut) == 0
    x = torch.arange(32.0).reshape(1, 2, 4, 4)
    expected = torch.tensor(
        [[[[0.0, 2.0], [8.0, 10.0]], [[16.0, 18.0], [24.0, 26.0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]]]
    )
    assert torch.equal(shortcut(x), expected)
    # An odd size gives ceil(H / 2), the size the residual branch's stride-2 3x3 conv gives.
    assert shortcut(torch.zeros(1, 2, 5, 5)).shape == (1, 4, 3, 3)
    model = create_model("resnet20")
    assert not any("shortcut" in k for k in model.state_dict())
    assert sum(isinstance(b.shortcut, ShortcutA) for _, b in residual_blocks(model)) == 2


def test_grayscale_8x8_trains_every_parameter():
    torch.manual_seed(0)
    model = create_model("resnet20", in_chans=1)
    out = model(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_min_size_is_honest(name):
    # Every strided layer is padded ('same' 3x3 / 7x7, padded max pool), so a single pixel runs through the net.
    model = create_model(name).eval()
    assert model.min_size == 1
    with torch.no_grad():
        assert model(torch.randn(1, 3, model.min_size, model.min_size)).shape[0] == 1


def test_wrong_or_too_small_input_names_the_expected_shape():
    model = create_model("resnet20", in_chans=1)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"resnet20 needs spatial size >= 1x1 \(input shape \(N, 1, H, W\)\)"):
        model(torch.zeros(1, 1, 0, 8))


def test_blocks_are_basic_blocks_for_18_and_34():
    assert all(isinstance(b, BasicBlock) for _, b in residual_blocks(shapes_only("plain34")))
