"""ResNet for ImageNet (He et al. 2015, "Deep Residual Learning for Image Recognition", arXiv:1512.03385).

y = F(x) + x: each block learns a residual on top of an identity shortcut, which is what lets 152 layers train where a
plain 34-layer net already trains worse than a plain 18-layer one (paper Fig. 4). The shortcut is one named submodule,
``shortcut``, so that ``residual=False`` (the paper's plain nets) differs from the residual net only by the missing
projection parameters ``*.shortcut.*``.

Module names follow torchvision (``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``) except torchvision's
``downsample``, which is ``shortcut`` here; ``from_torchvision`` renames it.

Deviation from the paper, as in torchvision: the Bottleneck puts its stride on the 3x3 convolution ("ResNet v1.5",
https://catalog.ngc.nvidia.com/orgs/nvidia/resources/resnet_50_v1_5_for_pytorch); the paper strides the first 1x1.
v1.5 is about 0.5% more accurate (top-1) and a little slower; parameter counts are the same.
"""

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import (
    ACTIVATIONS,
    HEAD_KINDS,
    checkpoint_seq,
    make_activation,
    make_head,
    min_input_side,
    reduction,
    windows,
)
from ..registry import Option, register_model, without
from .base import CanonModel, holds_values

_FC_HIDDEN = 4096  # hidden width of the AlexNet/VGG tower used by head="fc"


# --------------------------------------------------------------------------------------------------------------------
# helpers


def same_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *, bias: bool) -> nn.Conv2d:
    """A 'same'-padded convolution; a bias only when no batch norm follows (BN's shift makes it redundant)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=bias)


def norm_or_identity(channels: int, batch_norm: bool) -> nn.Module:
    # An Identity keeps forward() one code path; it has no parameters, so state-dict keys are unaffected.
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


class ShortcutA(nn.Module):
    """The parameter-free shortcut of the paper's option A (Sec. 3.3 and 4.2): subsample, then zero-pad channels.

    The new channels are appended after the identity ones, as in Facebook's fb.resnet.torch (shortcutType 'A':
    stride-s 1x1 pooling concatenated with zeros). Output spatial size is ceil(H / stride), the same as the strided
    3x3 convolution of the residual branch.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option-A shortcut cannot reduce channels ({in_channels} -> {out_channels}); use 'B'")
        self.stride = stride
        self.pad = out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.pad))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, zero_channels={self.pad}"


def make_shortcut(
    in_channels: int, out_channels: int, stride: int, *, kind: str = "B", batch_norm: bool = True
) -> nn.Module:
    """Identity where shapes agree; otherwise option A (ShortcutA) or option B (projection: 1x1 conv + BN)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if kind == "A":
        return ShortcutA(in_channels, out_channels, stride)
    if kind == "B":
        # Indices 0/1 match torchvision's downsample Sequential, so keys map by renaming only.
        conv = nn.Conv2d(in_channels, out_channels, 1, stride, bias=not batch_norm)
        return nn.Sequential(conv, norm_or_identity(out_channels, batch_norm))
    raise ValueError(f"shortcut must be one of A, B (zero-padding or projection); got {kind!r}")


def init_weights(model: nn.Module, *, activation: str, zero_init_residual: bool) -> None:
    """He et al. init for every conv; BN as identity; Linear layers keep PyTorch's default (as torchvision).

    Kaiming normal with mode fan_out, as torchvision and the paper's [13] (He et al. 2015, "Delving deep into
    rectifiers", Sec. 2.2: fan_in or fan_out both keep the signal's scale). The gain follows the chosen activation
    (sqrt(2) for ReLU, 5/3 for tanh, 1 for sigmoid) so that an activation ablation compares fairly initialized nets.
    ``zero_init_residual`` zeroes the last BN scale of each residual branch so every block starts as the identity
    (Goyal et al. 2017, "Accurate, Large Minibatch SGD", Sec. 5.1).
    """
    if not holds_values(model):
        return
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=activation)  # type: ignore[arg-type]
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            last_bn = m.last_bn() if isinstance(m, (BasicBlock, Bottleneck)) else None
            if isinstance(last_bn, nn.BatchNorm2d):
                nn.init.zeros_(last_bn.weight)


def residual_blocks(model: nn.Module) -> list[tuple[str, "BasicBlock | Bottleneck"]]:
    """(name, block) of every residual block in forward order, e.g. ('layer1.0', BasicBlock(...))."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (BasicBlock, Bottleneck))]


def residual_min_size(stem: Sequence[nn.Module], blocks: Sequence[tuple[str, "BasicBlock | Bottleneck"]]) -> int:
    """The smallest input side: the stem's windows, then each block's residual branch (its shortcut gives the same
    size by construction)."""
    path = windows(stem) + [w for _, b in blocks for w in windows(b.main_path())]
    return min_input_side(path)


def stage_info(stem: Sequence[nn.Module], stages: Sequence[tuple[str, nn.Sequential]]) -> list[dict[str, Any]]:
    """feature_info of a residual net: each stage's output channels and reduction (the product of the strides)."""
    path, info = windows(stem), []
    for name, stage in stages:
        blocks = [b for _, b in residual_blocks(stage)]
        path += [w for b in blocks for w in windows(b.main_path())]
        info.append({"num_chs": blocks[-1].out_planes, "reduction": reduction(path), "module": name})
    return info


def check_residual_switches(*, batch_norm: bool, residual: bool, zero_init_residual: bool) -> None:
    if zero_init_residual and not residual:
        raise ValueError(
            "zero_init_residual=True with residual=False would zero every block's output (no shortcut carries the "
            "signal); set residual=True or zero_init_residual=False"
        )
    if zero_init_residual and not batch_norm:
        raise ValueError("zero_init_residual zeroes the last batch-norm scale of each block; set batch_norm=True")


# --------------------------------------------------------------------------------------------------------------------
# blocks


class BasicBlock(nn.Module):
    """Two 3x3 convolutions plus the shortcut (paper Fig. 2 / Fig. 5 left): ResNet-18/34 and the CIFAR ResNets.

    ``residual=False`` drops the addition (and any projection): the paper's plain block.
    """

    expansion = 1
    if TYPE_CHECKING:  # for type checkers only: TorchScript reads class annotations and has no Module type
        shortcut: nn.Module | None

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        activation: str = "relu",
        batch_norm: bool = True,
        residual: bool = True,
        shortcut: str = "B",
    ) -> None:
        super().__init__()
        self.out_planes = out_planes = planes * self.expansion
        self.conv1 = same_conv(in_planes, planes, 3, stride, bias=not batch_norm)
        self.bn1 = norm_or_identity(planes, batch_norm)
        self.conv2 = same_conv(planes, out_planes, 3, bias=not batch_norm)
        self.bn2 = norm_or_identity(out_planes, batch_norm)
        shortcut_module = make_shortcut(in_planes, out_planes, stride, kind=shortcut, batch_norm=batch_norm)
        self.register_module("shortcut", shortcut_module if residual else None)
        self.act = make_activation(activation)

    def last_bn(self) -> nn.Module:
        return self.bn2

    def main_path(self) -> list[nn.Module]:
        """The convolutions of the residual branch, in order."""
        return [self.conv1, self.conv2]

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv1(x)
        out = self.bn1(out)
        out = self.act(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        out = self.act(out)
        return out


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) plus the shortcut (paper Fig. 5 right): ResNet-50/101/152.

    The stride sits on the 3x3 convolution (torchvision's v1.5; the paper strides the first 1x1, see module docstring).
    """

    expansion = 4
    if TYPE_CHECKING:
        shortcut: nn.Module | None

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        activation: str = "relu",
        batch_norm: bool = True,
        residual: bool = True,
        shortcut: str = "B",
    ) -> None:
        super().__init__()
        self.out_planes = out_planes = planes * self.expansion
        self.conv1 = same_conv(in_planes, planes, 1, bias=not batch_norm)
        self.bn1 = norm_or_identity(planes, batch_norm)
        self.conv2 = same_conv(planes, planes, 3, stride, bias=not batch_norm)
        self.bn2 = norm_or_identity(planes, batch_norm)
        self.conv3 = same_conv(planes, out_planes, 1, bias=not batch_norm)
        self.bn3 = norm_or_identity(out_planes, batch_norm)
        shortcut_module = make_shortcut(in_planes, out_planes, stride, kind=shortcut, batch_norm=batch_norm)
        self.register_module("shortcut", shortcut_module if residual else None)
        self.act = make_activation(activation)

    def last_bn(self) -> nn.Module:
        return self.bn3

    def main_path(self) -> list[nn.Module]:
        """The convolutions of the residual branch, in order."""
        return [self.conv1, self.conv2, self.conv3]

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv1(x)
        out = self.bn1(out)
        out = self.act(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.act(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        out = self.act(out)
        return out


def make_stage(
    block: type[BasicBlock | Bottleneck], in_planes: int, planes: int, num_blocks: int, stride: int, **switches: Any
) -> nn.Sequential:
    """``num_blocks`` blocks; the first one changes resolution (``stride``) and width, the others keep them."""
    out_planes = planes * block.expansion
    blocks = [block(in_planes, planes, stride, **switches)]
    blocks += [block(out_planes, planes, 1, **switches) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


# --------------------------------------------------------------------------------------------------------------------
# network


class ResNet(CanonModel):
    """The ImageNet ResNet: 7x7 stem, max pool, four stages (strides 1, 2, 2, 2), then the head.

    ``head="avgpool"`` is the paper's global average pool and one Linear; ``head="fc"`` replaces it with the
    AlexNet/VGG tower (adaptive pool to 7x7, two 4096-wide hidden layers with ``dropout`` in them) to show what the
    avg-pool head saves. ``batch_norm=False`` with ``residual=False`` is allowed on purpose: it is the setting in
    which depth fails hardest (the plain net's signal has nothing to keep it at scale), and the ablation needs it.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        stage_blocks: Sequence[int],
        *,
        name: str = "resnet",
        num_classes: int = 1000,
        in_chans: int = 3,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = True,
        residual: bool = True,
        head: str = "avgpool",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__(name=name, in_chans=in_chans, num_classes=num_classes, head=head, dropout=dropout)
        check_residual_switches(batch_norm=batch_norm, residual=residual, zero_init_residual=zero_init_residual)
        if len(stage_blocks) != len(_STAGES):
            raise ValueError(f"stage_blocks needs {len(_STAGES)} entries (layer1..layer4), got {list(stage_blocks)}")
        make_activation(activation)  # an unknown name fails before anything is built

        self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=not batch_norm)
        self.bn1 = norm_or_identity(64, batch_norm)
        self.act = make_activation(activation)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        switches = dict(activation=activation, batch_norm=batch_norm, residual=residual)
        stages, in_planes = [], 64
        for (planes, stride), num_blocks in zip(_STAGES, stage_blocks, strict=True):
            stages.append(make_stage(block, in_planes, planes, num_blocks, stride, **switches))
            in_planes = planes * block.expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = in_planes
        self.set_head(make_head(head, in_planes, num_classes, dropout=dropout, activation=activation, grid=7,
                                hidden=_FC_HIDDEN))  # fmt: skip

        init_weights(self, activation=activation, zero_init_residual=zero_init_residual)
        stem = [self.conv1, self.maxpool]
        self.min_size = residual_min_size(stem, residual_blocks(self))
        named_stages = [(f"layer{i}", getattr(self, f"layer{i}")) for i in range(1, 5)]
        self.describe(image_size=224, stages=stage_info(stem, named_stages))

    def feature_blocks(self) -> list[tuple[str, nn.Module]]:
        """The stem (conv1, bn1, act, maxpool), then every residual block: layer1.0, ..., layer4.2."""
        return [("stem", nn.Sequential(self.conv1, self.bn1, self.act, self.maxpool)), *residual_blocks(self)]

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.feature_blocks(), x)
        x = self.conv1(x)  # (N, 64, H/2, W/2)
        x = self.bn1(x)
        x = self.act(x)
        x = self.maxpool(x)  # (N, 64, H/4, W/4)
        x = self.layer1(x)  # (N, 64e, H/4, W/4), e = block.expansion
        x = self.layer2(x)  # (N, 128e, H/8, W/8)
        x = self.layer3(x)  # (N, 256e, H/16, W/16)
        x = self.layer4(x)  # (N, 512e, H/32, W/32)
        return x


# --------------------------------------------------------------------------------------------------------------------
# private builder, config table


def _resnet(name: str, **options: Any) -> ResNet:
    block, stage_blocks, residual = _CONFIGS[name]
    options.setdefault("residual", residual)
    return ResNet(block, stage_blocks, name=name, **options)


_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (planes, stride) of layer1..layer4, paper Table 1

# name: (block, blocks per stage, residual) -- paper Table 1; plain nets are Sec. 4.1's baselines.
_CONFIGS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, ...], bool]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), True),
    "resnet34": (BasicBlock, (3, 4, 6, 3), True),
    "resnet50": (Bottleneck, (3, 4, 6, 3), True),
    "resnet101": (Bottleneck, (3, 4, 23, 3), True),
    "resnet152": (Bottleneck, (3, 8, 36, 3), True),
    "plain18": (BasicBlock, (2, 2, 2, 2), False),
    "plain34": (BasicBlock, (3, 4, 6, 3), False),
}

# The options of every residual net (the CIFAR ones add width and shortcut); plain nets have no residual switches.
OPTIONS: tuple[Option, ...] = (
    Option("in_chans", int, 3, "input channels (1 for grayscale)", low=1),
    Option("activation", str, "relu", "the non-linearity after every conv", choices=ACTIVATIONS),
    Option("dropout", float, 0.0, "dropout before the classifier (inside the tower with head=fc)", low=0, high=1),
    Option("batch_norm", bool, True, "batch norm after every conv"),
    Option("residual", bool, True, "the + x shortcuts (false: the paper's plain net)"),
    Option("head", str, "avgpool", "global average pool + one Linear, or the AlexNet/VGG FC tower",
           choices=HEAD_KINDS),
    Option("zero_init_residual", bool, False, "start every block as the identity (Goyal et al. 2017)"),
)  # fmt: skip
PLAIN_OPTIONS = without(OPTIONS, "residual", "zero_init_residual")

_TORCHVISION_TWINS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
TORCHVISION_NAMES: dict[str, str] = {name: name for name in _TORCHVISION_TWINS}


def from_torchvision(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ResNet keys -> ours: only ``layerK.i.downsample.*`` becomes ``layerK.i.shortcut.*``."""
    return {re.sub(r"\.downsample\.", ".shortcut.", key): value for key, value in state_dict.items()}


# --------------------------------------------------------------------------------------------------------------------
# public builders


@register_model(family="resnet", depth=18, input_size=(3, 224, 224), options=OPTIONS)
def resnet18(**options: Any) -> ResNet:
    """ResNet-18: basic blocks 2-2-2-2, 11.7M parameters (He et al. 2015, Table 1)."""
    return _resnet("resnet18", **options)


@register_model(family="resnet", depth=34, input_size=(3, 224, 224), options=OPTIONS)
def resnet34(**options: Any) -> ResNet:
    """ResNet-34: basic blocks 3-4-6-3, 21.8M parameters (He et al. 2015, Table 1)."""
    return _resnet("resnet34", **options)


@register_model(family="resnet", depth=50, input_size=(3, 224, 224), options=OPTIONS)
def resnet50(**options: Any) -> ResNet:
    """ResNet-50 (v1.5): bottleneck blocks 3-4-6-3, 25.6M parameters (He et al. 2015, Table 1)."""
    return _resnet("resnet50", **options)


@register_model(family="resnet", depth=101, input_size=(3, 224, 224), options=OPTIONS)
def resnet101(**options: Any) -> ResNet:
    """ResNet-101 (v1.5): bottleneck blocks 3-4-23-3, 44.5M parameters (He et al. 2015, Table 1)."""
    return _resnet("resnet101", **options)


@register_model(family="resnet", depth=152, input_size=(3, 224, 224), options=OPTIONS)
def resnet152(**options: Any) -> ResNet:
    """ResNet-152 (v1.5): bottleneck blocks 3-8-36-3, 60.2M parameters (He et al. 2015, Table 1)."""
    return _resnet("resnet152", **options)


@register_model(family="resnet", depth=18, input_size=(3, 224, 224), options=PLAIN_OPTIONS)
def plain18(**options: Any) -> ResNet:
    """Plain-18: ResNet-18 without shortcuts, the paper's plain baseline (He et al. 2015, Sec. 4.1)."""
    return _resnet("plain18", **options)


@register_model(family="resnet", depth=34, input_size=(3, 224, 224), options=PLAIN_OPTIONS)
def plain34(**options: Any) -> ResNet:
    """Plain-34: ResNet-34 without shortcuts; trains worse than plain-18 (He et al. 2015, Fig. 4 left)."""
    return _resnet("plain34", **options)
