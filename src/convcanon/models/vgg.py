"""VGG (Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", 2014).

The architecture is data: each configuration of the paper's Table 1 is a list of conv widths and "M" (2x2 max pool),
read by one function, :func:`make_features`. Every conv is padded to keep its input size (3x3 with padding 1), so
only the pools change the spatial size. Module layout (``features``/``avgpool``/``classifier`` and their indices)
is torchvision's, so torchvision state dicts load unchanged (:func:`from_torchvision` is the identity).

``kernels="large"`` tests the paper's argument for 3x3 stacks (section 2.3): a stack of n 3x3 convs has the receptive
field of one (2n+1)x(2n+1) conv, with more non-linearities and fewer weights (3 x 9 C^2 = 27 C^2 against 49 C^2 for
n = 3). It replaces each stage's stack by that one large conv, padded by n so the spatial size is unchanged. So the
switch adds weights (VGG-16: 138.4M -> 144.7M parameters) while removing non-linearities: what the ablation measures
is whether the paper was right that depth, not kernel size, buys the accuracy.
"""

from typing import TYPE_CHECKING, Any

import torch
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
from .base import CanonModel, holds_values, weighted_groups

KERNEL_KINDS: tuple[str, ...] = ("stack", "large")

# --------------------------------------------------------------------------------------------------------------------
# helpers


def stages(cfg: list[int | str]) -> list[list[int]]:
    """Split a config at its pools: ``[64, 64, "M", 128, "M"]`` -> ``[[64, 64], [128]]``."""
    out: list[list[int]] = [[]]
    for v in cfg:
        if v == "M":
            out.append([])
        else:
            out[-1].append(int(v))
    return [s for s in out if s]


def make_features(
    cfg: list[int | str], *, in_chans: int, batch_norm: bool, activation: str, kernels: str = "stack"
) -> nn.Sequential:
    """The convolutional part of a VGG: for each stage, its convs (each conv -> [BN] -> activation), then a 2x2 pool.

    ``kernels="stack"`` builds the paper's n 3x3 convs per stage; ``"large"`` one (2n+1)x(2n+1) conv with padding n
    and the stage's width, which sees the same receptive field.
    """
    if kernels not in KERNEL_KINDS:
        raise ValueError(f"kernels must be one of {', '.join(KERNEL_KINDS)} (3x3 stacks as the paper, or one large "
                         f"conv per stage); got {kernels!r}")  # fmt: skip
    layers: list[nn.Module] = []
    channels = in_chans
    for widths in stages(cfg):
        convs = [(w, 3) for w in widths] if kernels == "stack" else [(widths[-1], 2 * len(widths) + 1)]
        for width, k in convs:
            # The conv keeps its bias even before BN (redundant there) as torchvision does: same keys, same count.
            layers.append(nn.Conv2d(channels, width, kernel_size=k, padding=k // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(make_activation(activation))
            channels = width
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------------------------------
# network


class VGG(CanonModel):
    """VGG from a config list: ``features`` (the conv stages), ``avgpool`` and ``classifier``.

    Switches: ``activation``, ``dropout`` (after each hidden FC, as the paper and torchvision), ``batch_norm`` (after
    every conv; not in the paper, torchvision's ``_bn`` twins), ``head`` ("fc": adaptive average pool to
    ``pool_size`` then a hidden-hidden-classes FC tower; "avgpool": global average pool, dropout and one Linear),
    ``kernels`` ("stack" | "large", see the module docstring). ``image_size`` is the nominal input side.
    """

    classifier_name = "classifier"
    if TYPE_CHECKING:  # for type checkers only (TorchScript reads class annotations)
        classifier: nn.Sequential

    def __init__(
        self,
        cfg: list[int | str],
        *,
        num_classes: int,
        in_chans: int = 3,
        activation: str = "relu",
        dropout: float = 0.5,
        batch_norm: bool = False,
        head: str = "fc",
        kernels: str = "stack",
        pool_size: int = 7,
        hidden: int = 4096,
        name: str = "vgg",
        image_size: int = 224,
    ) -> None:
        super().__init__(name=name, in_chans=in_chans, num_classes=num_classes, head=head, dropout=dropout)
        make_activation(activation)  # an unknown name fails before anything is built

        self.features = make_features(
            cfg, in_chans=in_chans, batch_norm=batch_norm, activation=activation, kernels=kernels
        )
        self.num_features = channels = stages(cfg)[-1][-1]
        self.set_head(make_head(head, channels, num_classes, dropout=dropout, activation=activation, grid=pool_size,
                                hidden=hidden, dropout_in_classifier=True))  # fmt: skip

        # torchvision's init: Kaiming normal (fan_out) convs, N(0, 0.01) Linears, zero biases. The paper initialized
        # config A from N(0, 0.01) and the deeper nets from A's trained layers; Kaiming makes that staging unneeded.
        for m in self.modules() if holds_values(self) else ():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

        # Convs are padded to keep the size; each 2x2/2 pool halves it (rounding down), so p pools need 2**p pixels.
        self.min_size = min_input_side(windows(self.features))
        self.describe(image_size=image_size, stages=self._stages())

    def _stages(self) -> list[dict[str, Any]]:
        info, channels = [], self.in_chans
        for index, m in enumerate(self.features):
            channels = m.out_channels if isinstance(m, nn.Conv2d) else channels
            if isinstance(m, nn.MaxPool2d):
                path = windows(self.features[: index + 1])
                info.append({"num_chs": channels, "reduction": reduction(path), "module": f"features.{index}"})
        return info

    def feature_blocks(self) -> list[tuple[str, nn.Module]]:
        """Each conv with its norm, activation and pool: features.0, features.2, ... (torchvision's indices)."""
        return weighted_groups("features", self.features)

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.feature_blocks(), x)
        x = self.features(x)  # (N, 512, H/32, W/32)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        last = len(self.classifier) - 1
        for index, layer in enumerate(self.classifier):  # the last layer is the class layer
            if index < last or not pre_logits:
                x = layer(x)
        return x


# --------------------------------------------------------------------------------------------------------------------
# private builder, config table


def _vgg(config: str, name: str, *, cifar: bool = False, **options: Any) -> VGG:
    # CIFAR: the 32x32 input leaves a 1x1 map after five pools, so the FC tower reads 512 features, not 7x7x512.
    if cifar:
        return VGG(CONFIGS[config], name=name, pool_size=1, hidden=512, image_size=32, **options)
    return VGG(CONFIGS[config], name=name, pool_size=7, hidden=4096, **options)


# The paper's Table 1 by column: A = VGG-11, B = VGG-13, D = VGG-16, E = VGG-19 (weighted layers: convs + 3 FC).
CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}

OPTIONS: tuple[Option, ...] = (
    Option("in_chans", int, 3, "input channels (1 for grayscale)", low=1),
    Option("activation", str, "relu", "the non-linearity after every conv and hidden FC", choices=ACTIVATIONS),
    Option("dropout", float, 0.5, "dropout after each hidden FC (before the Linear with head=avgpool)", low=0,
           high=1),
    Option("batch_norm", bool, False, "batch norm after every conv (torchvision's _bn twins)"),
    Option("head", str, "fc", "the FC tower, or global average pool + one Linear", choices=HEAD_KINDS),
    Option("kernels", str, "stack", "each stage's 3x3 stack, or one (2n+1)x(2n+1) conv with its receptive field",
           choices=KERNEL_KINDS),
)  # fmt: skip
BN_OPTIONS = without(OPTIONS, "batch_norm")  # the _bn models: batch norm is their name

TORCHVISION_NAMES: dict[str, str] = {
    name: name for name in ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")
}


def from_torchvision(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision's VGG keys are ours already."""
    return dict(state_dict)


# --------------------------------------------------------------------------------------------------------------------
# public builders


@register_model(family="vgg", depth=11, input_size=(3, 224, 224), options=OPTIONS)
def vgg11(**options: Any) -> VGG:
    """VGG-11 (config A), 132,863,336 parameters."""
    return _vgg("A", "vgg11", **options)


@register_model(family="vgg", depth=13, input_size=(3, 224, 224), options=OPTIONS)
def vgg13(**options: Any) -> VGG:
    """VGG-13 (config B), 133,047,848 parameters."""
    return _vgg("B", "vgg13", **options)


@register_model(family="vgg", depth=16, input_size=(3, 224, 224), options=OPTIONS)
def vgg16(**options: Any) -> VGG:
    """VGG-16 (config D), 138,357,544 parameters."""
    return _vgg("D", "vgg16", **options)


@register_model(family="vgg", depth=19, input_size=(3, 224, 224), options=OPTIONS)
def vgg19(**options: Any) -> VGG:
    """VGG-19 (config E), 143,667,240 parameters."""
    return _vgg("E", "vgg19", **options)


@register_model(family="vgg", depth=11, input_size=(3, 224, 224), options=BN_OPTIONS)
def vgg11_bn(**options: Any) -> VGG:
    """VGG-11 (config A) with batch norm after every conv, 132,868,840 parameters."""
    return _vgg("A", "vgg11_bn", batch_norm=True, **options)


@register_model(family="vgg", depth=13, input_size=(3, 224, 224), options=BN_OPTIONS)
def vgg13_bn(**options: Any) -> VGG:
    """VGG-13 (config B) with batch norm after every conv, 133,053,736 parameters."""
    return _vgg("B", "vgg13_bn", batch_norm=True, **options)


@register_model(family="vgg", depth=16, input_size=(3, 224, 224), options=BN_OPTIONS)
def vgg16_bn(**options: Any) -> VGG:
    """VGG-16 (config D) with batch norm after every conv, 138,365,992 parameters."""
    return _vgg("D", "vgg16_bn", batch_norm=True, **options)


@register_model(family="vgg", depth=19, input_size=(3, 224, 224), options=BN_OPTIONS)
def vgg19_bn(**options: Any) -> VGG:
    """VGG-19 (config E) with batch norm after every conv, 143,678,248 parameters."""
    return _vgg("E", "vgg19_bn", batch_norm=True, **options)


@register_model(family="vgg", depth=16, input_size=(3, 32, 32), num_classes=10, options=OPTIONS)
def vgg16_cifar(**options: Any) -> VGG:
    """VGG-16 for 32x32 images: the 13 3x3 convs of config D and a 512-512 FC tower, 15.2M parameters.

    What changed and why: only the classifier. Five 2x2 pools take a 32x32 image to a 1x1x512 map, so the FC tower
    reads 512 features instead of 7x7x512 (the adaptive pool would otherwise copy one pixel 49 times), and its hidden
    layers are 512 wide instead of 4096 (the common CIFAR VGG): 0.5M classifier weights instead of 120M, which for
    50,000 training images would mostly memorize. Conv stages, dropout and init are the paper's/torchvision's.
    """
    return _vgg("D", "vgg16_cifar", cifar=True, **options)


@register_model(family="vgg", depth=16, input_size=(3, 32, 32), num_classes=10, options=BN_OPTIONS)
def vgg16_bn_cifar(**options: Any) -> VGG:
    """VGG-16 with batch norm for 32x32 images (vgg16_cifar with BN after every conv).

    Changed from vgg16_bn as in vgg16_cifar: a 512-512 FC tower on the 1x1x512 map that five pools leave of 32x32.
    """
    return _vgg("D", "vgg16_bn_cifar", cifar=True, batch_norm=True, **options)
