"""AlexNet (Krizhevsky, Sutskever and Hinton, "ImageNet Classification with Deep Convolutional Neural Networks", 2012).

Three layouts of one network class, each a row of the config table at the bottom:

- ``alexnet``: the paper's network. 227x227 input (the paper says 224, but only 227 gives the 55x55 conv1 maps of its
  Figure 2), 96-256-384-384-256 kernels split between two GPUs ("towers"), local response normalization after conv1
  and conv2, overlapping 3x3/2 max pools, a 4096-4096 FC tower with dropout. 60,965,224 parameters.
- ``alexnet_owt``: the single-tower "one weird trick" layout (Krizhevsky 2014, https://arxiv.org/abs/1404.5997) that
  torchvision ships as ``alexnet``: 64-192-384-256-256 kernels, no LRN, an adaptive 6x6 average pool before the FC
  tower. 61,100,840 parameters; the same state dict keys as torchvision up to :func:`from_torchvision`.
- ``alexnet_cifar``: the paper's layout shrunk for 32x32 images (see its builder).

Towers. The paper trained on two GPUs, each holding half of every layer's kernels. Conv2, conv4 and conv5 "take input
only from those kernel maps in the previous layer which reside on the same GPU" (section 3.5): that is exactly a
convolution with ``groups=2``, whose output channels ``[0, C/2)`` read only input channels ``[0, C_in/2)``. Those
layers are listed in :attr:`AlexNet.split_layers`. Conv1 (which reads the whole image), conv3 and the FC layers read
both towers: there the GPUs exchanged activations, and there a model-parallel split must communicate. The LRN layers
normalize within each tower, as each GPU normalized its own maps.
"""

import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, NamedTuple

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
from .base import CanonModel, holds_values, weighted_groups

# --------------------------------------------------------------------------------------------------------------------
# helpers


class LocalResponseNorm(nn.Module):
    """Local response normalization as the paper writes it (section 3.3), applied within each tower.

    b_i = a_i / (k + alpha * sum_{j=i-n/2}^{i+n/2} a_j^2) ** beta, the sum running over the n adjacent channels of the
    same tower. ``torch.nn.LocalResponseNorm`` (like Caffe) divides alpha by n, so the paper's alpha=1e-4 is passed
    to it as alpha * n.
    """

    def __init__(
        self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, towers: int = 1
    ) -> None:
        super().__init__()
        if size % 2 == 0:
            raise ValueError(f"LRN size must be odd (a window centred on each channel), got {size}")
        self.size, self.alpha, self.beta, self.k, self.towers = size, alpha, beta, k, towers

    def forward(self, x: Tensor) -> Tensor:
        if self.towers == 1:
            return self._normalize(x)
        # Indexed, not iterated: fx traces a loop over a Python range, not over the tensors chunk returns.
        towers = x.chunk(self.towers, dim=1)
        return torch.cat([self._normalize(towers[t]) for t in range(self.towers)], dim=1)

    def _normalize(self, x: Tensor) -> Tensor:
        # F.local_response_norm's own arithmetic for 4-d input, with the zero padding of the channel window given to
        # the pool instead of F.pad: the same floats, and static shapes for the legacy ONNX exporter. (The pool wants
        # at least `size` channels per tower; every layout has 24 or more.)
        div = x.mul(x).unsqueeze(1)
        div = F.avg_pool3d(div, (self.size, 1, 1), stride=1, padding=(self.size // 2, 0, 0)).squeeze(1)
        return x / div.mul(self.alpha * self.size).add(self.k).pow(self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, towers={self.towers}"


class ConvSpec(NamedTuple):
    """One convolutional layer of an AlexNet layout and what follows it."""

    width: int  # output channels (both towers together)
    kernel: int
    stride: int
    padding: int
    split: bool  # reads only its own tower's input half (groups=towers): conv2, conv4, conv5 in the paper
    lrn: bool  # followed by local response normalization when LRN is on: conv1, conv2 in the paper
    pool: bool  # followed by an overlapping 3x3 max pool with stride 2: conv1, conv2, conv5


class AlexNetLayout(NamedTuple):
    convs: tuple[ConvSpec, ...]
    pool_size: int  # spatial size of the map the FC tower reads (6 on ImageNet)
    hidden: int  # width of the two hidden FC layers
    lrn: bool  # LRN on unless asked otherwise (the paper's layouts); batch_norm turns it off
    init: str  # "paper": section 5; "torchvision": PyTorch's default; "kaiming": He et al. 2015, fan_in, zero bias
    image_size: int  # the nominal input side


# --------------------------------------------------------------------------------------------------------------------
# network


class AlexNet(CanonModel):
    """Five convolutional layers and a three-layer classifier, built from an :class:`AlexNetLayout`.

    Switches: ``activation`` (the paper's ReLU vs the saturating tanh/sigmoid it was compared against), ``dropout``
    (before each hidden FC), ``lrn`` (response normalization after the layout's LRN positions), ``batch_norm``
    (batch norm after every conv, replacing LRN), ``head`` ("fc": adaptive average pool to ``pool_size`` then the FC
    tower; "avgpool": global average pool, dropout and one Linear), ``towers`` (1 or 2: whether the layout's split
    convs are grouped).

    Module names follow the paper: ``features.conv1`` .. ``features.conv5``, ``act1``, ``lrn1``, ``bn1``, ``pool1``...
    The adaptive pool is the identity at the layout's own input size (227 for the paper, where the map is already
    6x6) and lets the network take other sizes such as 224.

    Attributes for model parallelism:
        towers: 2 for the paper's layouts (1 with ``towers=1`` and for ``alexnet_owt``).
        split_layers: qualified names of the convs built with ``groups=towers``. Tower ``t`` of such a conv is its
            output channels ``[t*C/towers, (t+1)*C/towers)`` (the same rows of its weight and bias); they read only
            input channels ``[t*C_in/towers, (t+1)*C_in/towers)``. The activations, pools and LRN layers between them
            also work within a tower, so ``conv2..pool2`` and ``conv4..pool5`` run on each tower's half alone; conv1,
            conv3 and the classifier read both halves.
    """

    classifier_name = "classifier"
    if TYPE_CHECKING:  # for type checkers only (TorchScript reads class annotations)
        classifier: nn.Sequential

    def __init__(
        self,
        layout: AlexNetLayout,
        *,
        num_classes: int,
        in_chans: int = 3,
        activation: str = "relu",
        dropout: float = 0.5,
        lrn: bool = True,
        batch_norm: bool = False,
        head: str = "fc",
        towers: int = 1,
        name: str = "alexnet",
    ) -> None:
        super().__init__(name=name, in_chans=in_chans, num_classes=num_classes, head=head, dropout=dropout)
        if lrn and batch_norm:
            raise ValueError(f"{name}: batch_norm replaces LRN; leave lrn unset (or False) with batch_norm=True")
        if towers not in (1, 2):
            raise ValueError(f"{name}: towers must be 1 or 2 (the paper's two GPUs), got {towers!r}")
        if towers > 1 and not any(c.split for c in layout.convs):
            raise ValueError(f"{name}: this layout has a single tower; towers=2 needs the paper layout (alexnet)")
        make_activation(activation)  # an unknown name fails before anything is built

        self.towers = towers
        self.split_layers: tuple[str, ...] = tuple(
            f"features.conv{i}" for i, c in enumerate(layout.convs, 1) if c.split and towers > 1
        )
        self.features = self._make_features(layout, activation=activation, lrn=lrn, batch_norm=batch_norm)
        self.num_features = channels = layout.convs[-1].width
        self.set_head(make_head(head, channels, num_classes, dropout=dropout, activation=activation,
                                grid=layout.pool_size, hidden=layout.hidden, dropout_first=True,
                                dropout_in_classifier=True))  # fmt: skip

        if not holds_values(self):
            pass
        elif layout.init == "paper":
            self._init_as_paper()
        elif layout.init == "kaiming":
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        self.min_size = min_input_side(windows(self.features))
        self.describe(image_size=layout.image_size, stages=self._stages())

    def _make_features(self, layout: AlexNetLayout, *, activation: str, lrn: bool, batch_norm: bool) -> nn.Sequential:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = self.in_chans
        for i, c in enumerate(layout.convs, 1):
            groups = self.towers if c.split else 1
            conv = nn.Conv2d(channels, c.width, c.kernel, c.stride, c.padding, groups=groups, bias=not batch_norm)
            layers[f"conv{i}"] = conv
            if batch_norm:
                layers[f"bn{i}"] = nn.BatchNorm2d(c.width)
            layers[f"act{i}"] = make_activation(activation)
            if lrn and c.lrn:
                layers[f"lrn{i}"] = LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0, towers=self.towers)
            if c.pool:
                layers[f"pool{i}"] = nn.MaxPool2d(kernel_size=3, stride=2)  # overlapping: s < z (section 3.4)
            channels = c.width
        return nn.Sequential(layers)

    def _init_as_paper(self) -> None:
        # Section 5: weights from N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden FCs ("accelerates the
        # early stages of learning by providing the ReLUs with positive inputs"), 0 elsewhere.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        bias_one: list[nn.Conv2d | nn.Linear] = [convs[1], convs[3], convs[4]]  # conv2, conv4, conv5
        bias_one += [m for m in self.classifier if isinstance(m, nn.Linear)][:-1]
        for layer in bias_one:
            if layer.bias is not None:
                nn.init.ones_(layer.bias)

    def _stages(self) -> list[dict[str, Any]]:
        info, channels = [], self.in_chans
        for index, (name, m) in enumerate(self.features.named_children()):
            channels = m.out_channels if isinstance(m, nn.Conv2d) else channels
            if isinstance(m, nn.MaxPool2d):
                path = windows(self.features[: index + 1])
                info.append({"num_chs": channels, "reduction": reduction(path), "module": f"features.{name}"})
        return info

    def feature_blocks(self) -> list[tuple[str, nn.Module]]:
        """Each conv with its norm, activation, LRN and pool: features.conv1 .. features.conv5."""
        return weighted_groups("features", self.features)

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.feature_blocks(), x)
        x = self.features(x)  # (N, 256, 6, 6) for the paper at 227x227
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


def _alexnet(layout: AlexNetLayout, name: str, *, lrn: bool | None, batch_norm: bool, **options: Any) -> AlexNet:
    if lrn is None:  # unset: the layout's own choice, unless batch norm replaces it
        lrn = layout.lrn and not batch_norm
    return AlexNet(layout, lrn=lrn, batch_norm=batch_norm, name=name, **options)


PAPER = AlexNetLayout(
    convs=(
        ConvSpec(96, kernel=11, stride=4, padding=0, split=False, lrn=True, pool=True),  # 227 -> 55 -> 27
        ConvSpec(256, kernel=5, stride=1, padding=2, split=True, lrn=True, pool=True),  # 27 -> 13
        ConvSpec(384, kernel=3, stride=1, padding=1, split=False, lrn=False, pool=False),
        ConvSpec(384, kernel=3, stride=1, padding=1, split=True, lrn=False, pool=False),
        ConvSpec(256, kernel=3, stride=1, padding=1, split=True, lrn=False, pool=True),  # 13 -> 6
    ),
    pool_size=6,
    hidden=4096,
    lrn=True,
    init="paper",
    image_size=227,
)
ONE_WEIRD_TRICK = AlexNetLayout(
    convs=(
        ConvSpec(64, kernel=11, stride=4, padding=2, split=False, lrn=True, pool=True),  # 224 -> 55 -> 27
        ConvSpec(192, kernel=5, stride=1, padding=2, split=False, lrn=True, pool=True),  # 27 -> 13
        ConvSpec(384, kernel=3, stride=1, padding=1, split=False, lrn=False, pool=False),
        ConvSpec(256, kernel=3, stride=1, padding=1, split=False, lrn=False, pool=False),
        ConvSpec(256, kernel=3, stride=1, padding=1, split=False, lrn=False, pool=True),  # 13 -> 6
    ),
    pool_size=6,
    hidden=4096,
    lrn=False,
    init="torchvision",  # torchvision keeps PyTorch's default init for this layout
    image_size=224,
)
CIFAR = AlexNetLayout(
    convs=(
        ConvSpec(48, kernel=5, stride=1, padding=2, split=False, lrn=True, pool=True),  # 32 -> 32 -> 15
        ConvSpec(128, kernel=5, stride=1, padding=2, split=True, lrn=True, pool=True),  # 15 -> 7
        ConvSpec(192, kernel=3, stride=1, padding=1, split=False, lrn=False, pool=False),
        ConvSpec(192, kernel=3, stride=1, padding=1, split=True, lrn=False, pool=False),
        ConvSpec(128, kernel=3, stride=1, padding=1, split=True, lrn=False, pool=True),  # 7 -> 3
    ),
    pool_size=3,
    hidden=512,
    lrn=True,
    init="kaiming",  # see alexnet_cifar's docstring
    image_size=32,
)

OPTIONS: tuple[Option, ...] = (
    Option("in_chans", int, 3, "input channels (1 for grayscale)", low=1),
    Option("activation", str, "relu", "the non-linearity after every conv and hidden FC", choices=ACTIVATIONS),
    Option("dropout", float, 0.5, "dropout before each hidden FC (before the Linear with head=avgpool)", low=0,
           high=1),
    Option("lrn", bool, None, "local response normalization after conv1 and conv2 (default: the layout's, off with "
           "batch_norm)"),
    Option("batch_norm", bool, False, "batch norm after every conv, instead of LRN"),
    Option("head", str, "fc", "the FC tower, or global average pool + one Linear", choices=HEAD_KINDS),
    Option("towers", int, 2, "2: conv2, conv4, conv5 grouped as on the paper's two GPUs; 1: one tower",
           choices=(1, 2)),
)  # fmt: skip

TORCHVISION_NAMES: dict[str, str] = {"alexnet_owt": "alexnet"}

# torchvision's alexnet keeps its convs at these indices of ``features``; ours are named conv1..conv5.
_TORCHVISION_CONV_INDEX = {"0": "conv1", "3": "conv2", "6": "conv3", "8": "conv4", "10": "conv5"}


def from_torchvision(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename torchvision ``alexnet`` keys (``features.3.weight``) to ours (``features.conv2.weight``)."""

    def rename(key: str) -> str:
        match = re.fullmatch(r"features\.(\d+)\.(.+)", key)
        return f"features.{_TORCHVISION_CONV_INDEX[match[1]]}.{match[2]}" if match else key

    return {rename(k): v for k, v in state_dict.items()}


# --------------------------------------------------------------------------------------------------------------------
# public builders


@register_model(family="alexnet", depth=8, input_size=(3, 227, 227), options=OPTIONS)
def alexnet(**options: Any) -> AlexNet:
    """AlexNet as in the 2012 paper: two towers, LRN, 227x227 input, 60,965,224 parameters."""
    return _alexnet(PAPER, "alexnet", **options)


@register_model(family="alexnet", depth=8, input_size=(3, 224, 224), options=without(OPTIONS, "towers"))
def alexnet_owt(**options: Any) -> AlexNet:
    """AlexNet, single-tower "one weird trick" layout (torchvision's alexnet), 61,100,840 parameters."""
    return _alexnet(ONE_WEIRD_TRICK, "alexnet_owt", towers=1, **options)


@register_model(family="alexnet", depth=8, input_size=(3, 32, 32), num_classes=10, options=OPTIONS)
def alexnet_cifar(**options: Any) -> AlexNet:
    """AlexNet for 32x32 images: the paper's two towers, LRN and FC tower at CPU size, 1.44M parameters.

    What changed and why: conv1 is 5x5 with stride 1 instead of 11x11 with stride 4, since a 4x stride would leave
    8x8 maps after the first layer of a 32x32 image; the widths are the paper's halved (48-128-192-192-128) and the
    hidden FC layers 512 instead of 4096, so that it trains in minutes on a CPU and does not merely memorize 50,000
    images; the FC tower reads a 3x3 map (32 -> 15 -> 7 -> 3 through the three overlapping pools). Kept: ReLU, LRN
    after conv1 and conv2, overlapping 3x3/2 max pools, dropout before the hidden FCs, the two towers (conv2, conv4,
    conv5 grouped). Initialization is Kaiming normal (He et al. 2015; fan_in, zero biases) instead of the paper's
    N(0, 0.01) with biases of 1: at that scale this net's logits at step 0 vary across inputs by ~1e-6 and conv1's
    gradient is ~1e-5, so SGD at lr 0.01 stays at chance for hundreds of steps (the paper outlasted this over 90
    ImageNet epochs); with Kaiming init it reaches ~90% on 32x32 digits in 150 steps of batch 32.
    """
    return _alexnet(CIFAR, "alexnet_cifar", **options)
