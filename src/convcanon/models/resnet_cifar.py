"""The CIFAR ResNets of He et al. 2015, Sec. 4.2 (arXiv:1512.03385), and their plain twins.

A 3x3 stem, then three stages of n basic blocks at 16, 32 and 64 channels (feature maps 32, 16, 8 on CIFAR), global
average pool, one Linear: depth 6n + 2. Shortcuts are identities, with the parameter-free option A (subsample and
zero-pad channels) where a stage doubles the width, so ResNet-20 and Plain-20 have the same parameters and the same
state-dict keys: the comparison of Fig. 6 (plain nets get worse with depth, residual ones better) changes nothing but
the addition.

Blocks are named ``stage1.0`` .. ``stage3.{n-1}``; ``blocks()`` lists them in forward order, for per-block statistics
such as gradient norms.
"""

from typing import Any

import torch
from torch import Tensor, nn

from ..layers import checkpoint_seq, make_activation, make_head
from ..registry import Option, register_model, without
from .base import CanonModel
from .resnet import OPTIONS as RESNET_OPTIONS
from .resnet import (
    BasicBlock,
    check_residual_switches,
    init_weights,
    make_stage,
    norm_or_identity,
    residual_blocks,
    residual_min_size,
    same_conv,
    stage_info,
)

# --------------------------------------------------------------------------------------------------------------------
# network (blocks: resnet.BasicBlock with shortcut="A", resnet.ShortcutA)


class ResNetCifar(CanonModel):
    """3x3 stem, three stages of ``n`` basic blocks (widths w, 2w, 4w; strides 1, 2, 2), average pool, Linear.

    ``shortcut="B"`` uses 1x1 projections (with BN) where the width doubles instead of zero-padding, which adds
    parameters. ``batch_norm=False`` with ``residual=False`` is allowed: it is the plain net with nothing to keep its
    signal at scale, where depth fails hardest.
    """

    def __init__(
        self,
        n: int,
        *,
        name: str = "resnet_cifar",
        num_classes: int = 10,
        in_chans: int = 3,
        width: int = 16,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = True,
        residual: bool = True,
        shortcut: str = "A",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__(name=name, in_chans=in_chans, num_classes=num_classes, head="avgpool", dropout=dropout)
        check_residual_switches(batch_norm=batch_norm, residual=residual, zero_init_residual=zero_init_residual)
        if n < 1 or width < 1:
            raise ValueError(f"blocks per stage n and width must be >= 1, got n={n}, width={width}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be one of A, B (zero-padding or projection); got {shortcut!r}")
        make_activation(activation)  # an unknown name fails before anything is built

        self.conv1 = same_conv(in_chans, width, 3, bias=not batch_norm)
        self.bn1 = norm_or_identity(width, batch_norm)
        self.act = make_activation(activation)
        switches = dict(activation=activation, batch_norm=batch_norm, residual=residual, shortcut=shortcut)
        self.stage1 = make_stage(BasicBlock, width, width, n, 1, **switches)
        self.stage2 = make_stage(BasicBlock, width, 2 * width, n, 2, **switches)
        self.stage3 = make_stage(BasicBlock, 2 * width, 4 * width, n, 2, **switches)
        self.num_features = 4 * width
        self.set_head(make_head("avgpool", 4 * width, num_classes, dropout=dropout))

        # The paper uses the init of He et al. 2015 ("Delving deep", its [13]) with BN; see resnet.init_weights.
        init_weights(self, activation=activation, zero_init_residual=zero_init_residual)
        self.min_size = residual_min_size([self.conv1], residual_blocks(self))
        stages = [(f"stage{i}", getattr(self, f"stage{i}")) for i in range(1, 4)]
        self.describe(image_size=32, stages=stage_info([self.conv1], stages))

    def feature_blocks(self) -> list[tuple[str, nn.Module]]:
        """The stem (conv1, bn1, act), then every residual block: stage1.0, ..., stage3.{n-1}."""
        return [("stem", nn.Sequential(self.conv1, self.bn1, self.act)), *residual_blocks(self)]

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.feature_blocks(), x)
        x = self.conv1(x)  # (N, w, H, W)
        x = self.bn1(x)
        x = self.act(x)
        x = self.stage1(x)  # (N, w, H, W)
        x = self.stage2(x)  # (N, 2w, H/2, W/2)
        x = self.stage3(x)  # (N, 4w, H/4, W/4)
        return x


# --------------------------------------------------------------------------------------------------------------------
# private builder, config table


def _resnet_cifar(name: str, **options: Any) -> ResNetCifar:
    n, residual = _CONFIGS[name]
    options.setdefault("residual", residual)
    return ResNetCifar(n, name=name, **options)


# name: (n blocks per stage, residual); depth = 6n + 2 (paper Sec. 4.2, Table 6)
_CONFIGS: dict[str, tuple[int, bool]] = {
    **{f"resnet{6 * n + 2}": (n, True) for n in (3, 5, 7, 9, 18)},
    **{f"plain{6 * n + 2}": (n, False) for n in (3, 5, 7, 9, 18)},
}

# The ImageNet ResNets' options, with the stem's width and the shortcut kind, without the head switch.
_SHARED = {o.name: o for o in RESNET_OPTIONS}
OPTIONS: tuple[Option, ...] = (
    _SHARED["in_chans"],
    Option("width", int, 16, "channels of the first stage (the paper: 16-32-64)", low=1),
    _SHARED["activation"],
    Option("dropout", float, 0.0, "dropout before the classifier", low=0, high=1),
    _SHARED["batch_norm"],
    _SHARED["residual"],
    Option("shortcut", str, "A", "where the width doubles: zero-padding (A, no parameters) or 1x1 projections (B)",
           choices=("A", "B")),
    _SHARED["zero_init_residual"],
)  # fmt: skip
PLAIN_OPTIONS = without(OPTIONS, "residual", "shortcut", "zero_init_residual")


# --------------------------------------------------------------------------------------------------------------------
# public builders


@register_model(family="resnet_cifar", depth=20, input_size=(3, 32, 32), num_classes=10, options=OPTIONS)
def resnet20(**options: Any) -> ResNetCifar:
    """ResNet-20 for CIFAR: 3x3 blocks at 16-32-64 channels, 0.27M parameters (He et al. 2015, Sec. 4.2)."""
    return _resnet_cifar("resnet20", **options)


@register_model(family="resnet_cifar", depth=32, input_size=(3, 32, 32), num_classes=10, options=OPTIONS)
def resnet32(**options: Any) -> ResNetCifar:
    """ResNet-32 for CIFAR: 5 blocks per stage, 0.46M parameters (He et al. 2015, Sec. 4.2)."""
    return _resnet_cifar("resnet32", **options)


@register_model(family="resnet_cifar", depth=44, input_size=(3, 32, 32), num_classes=10, options=OPTIONS)
def resnet44(**options: Any) -> ResNetCifar:
    """ResNet-44 for CIFAR: 7 blocks per stage, 0.66M parameters (He et al. 2015, Sec. 4.2)."""
    return _resnet_cifar("resnet44", **options)


@register_model(family="resnet_cifar", depth=56, input_size=(3, 32, 32), num_classes=10, options=OPTIONS)
def resnet56(**options: Any) -> ResNetCifar:
    """ResNet-56 for CIFAR: 9 blocks per stage, 0.85M parameters (He et al. 2015, Sec. 4.2)."""
    return _resnet_cifar("resnet56", **options)


@register_model(family="resnet_cifar", depth=110, input_size=(3, 32, 32), num_classes=10, options=OPTIONS)
def resnet110(**options: Any) -> ResNetCifar:
    """ResNet-110 for CIFAR: 18 blocks per stage, 1.7M parameters (He et al. 2015, Sec. 4.2)."""
    return _resnet_cifar("resnet110", **options)


@register_model(family="resnet_cifar", depth=20, input_size=(3, 32, 32), num_classes=10, options=PLAIN_OPTIONS)
def plain20(**options: Any) -> ResNetCifar:
    """Plain-20 for CIFAR: ResNet-20 without shortcuts, same parameters (He et al. 2015, Fig. 6 left)."""
    return _resnet_cifar("plain20", **options)


@register_model(family="resnet_cifar", depth=32, input_size=(3, 32, 32), num_classes=10, options=PLAIN_OPTIONS)
def plain32(**options: Any) -> ResNetCifar:
    """Plain-32 for CIFAR: ResNet-32 without shortcuts, same parameters (He et al. 2015, Fig. 6 left)."""
    return _resnet_cifar("plain32", **options)


@register_model(family="resnet_cifar", depth=44, input_size=(3, 32, 32), num_classes=10, options=PLAIN_OPTIONS)
def plain44(**options: Any) -> ResNetCifar:
    """Plain-44 for CIFAR: ResNet-44 without shortcuts, same parameters (He et al. 2015, Fig. 6 left)."""
    return _resnet_cifar("plain44", **options)


@register_model(family="resnet_cifar", depth=56, input_size=(3, 32, 32), num_classes=10, options=PLAIN_OPTIONS)
def plain56(**options: Any) -> ResNetCifar:
    """Plain-56 for CIFAR: trains worse than Plain-20, the degradation problem (He et al. 2015, Fig. 6 left)."""
    return _resnet_cifar("plain56", **options)


@register_model(family="resnet_cifar", depth=110, input_size=(3, 32, 32), num_classes=10, options=PLAIN_OPTIONS)
def plain110(**options: Any) -> ResNetCifar:
    """Plain-110 for CIFAR: ResNet-110 without shortcuts, same parameters (not in the paper; for the depth sweep)."""
    return _resnet_cifar("plain110", **options)
