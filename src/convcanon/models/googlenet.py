"""GoogLeNet / Inception v1 (Szegedy et al. 2014, "Going deeper with convolutions", arXiv:1409.4842).

Nine Inception modules, each four parallel branches concatenated on channels (paper Fig. 2b): a 1x1 conv; a 1x1
reduction then a 3x3 conv; a 1x1 reduction then a 5x5 conv; a 3x3 max pool then a 1x1 projection. The cheap 1x1
reductions in front of the expensive 3x3/5x5 convolutions, and a global average pool instead of an FC tower, are why
this 22-layer network has a ninth of the parameters of 8-layer AlexNet (7.0M vs 61M; the paper, Sec. 5, says "12
times fewer").

Models
- ``googlenet``: the paper's network (Table 1): LRN in the stem, true 5x5 convolutions, 3x3/2 max pools between the
  stages, ReLU, conv biases, no batch norm, dropout 0.4, aux classifiers on the outputs of 4a and 4d. 1.58G MACs at
  224 (the paper's "1.5 billion multiply-adds").
- ``googlenet_bn``: torchvision's ``googlenet`` layer for layer: conv without bias + BN(eps=0.001) + ReLU, no LRN, a 3x3
  convolution in the "5x5" branch (a known deviation, pytorch/vision#906), a 2x2/2 pool before stage 5, aux heads with
  an adaptive 4x4 pool, head dropout 0.2. torchvision state dicts load through ``from_torchvision``.
- ``googlenet_cifar``: for 32x32 images (any channel count, 10 classes by default). What changed and why:
  (1) the stem is one 3x3/1 conv to 48 channels: the paper's stem downsamples 8x (224 -> 28) with a 7x7/2 conv and two
  max pools, which would leave 4x4 of a 32x32 image; without it stages 3/4/5 run at 32/16/8 (paper: 28/14/7) and the
  same pools between stages fit. (2) Every entry of the Inception table is divided by 4 (all divide exactly): 91M MACs
  per image instead of 1.58G, 0.37M parameters, so it trains on a CPU; all nine modules, the 5x5 branches, the 1x1
  reductions, the average-pool head and dropout 0.4 are kept, and so are the aux taps (4a, 4d). (3) Batch norm is on
  by default (``batch_norm=False`` gives the paper's conv + bias + ReLU with BVLC's init): it replaces LRN and the
  paper's long, carefully tuned schedule, so short CPU runs train. (4) Aux heads are off by default (the paper measured
  their effect at about 0.5%, Sec. 5); when on: adaptive 4x4 pool (16x16 -> 4x4), 1x1 conv to 32, FC 256.

Parameter counts (1000 classes, 3 input channels; pinned in tests/models/test_googlenet.py)

================  ===========  ==============
model             no aux       with aux heads
================  ===========  ==============
googlenet         6,998,552    13,378,280
googlenet_bn      6,624,904    13,004,888      (torchvision: 6,624,904 with aux_logits=False, 13,004,888 with)
googlenet_cifar   372,578      648,822         (10 classes, batch norm on)
================  ===========  ==============

How the exact counts relate to the figures usually quoted:
- "6.8M" / "~7M": the "params" column of Table 1 sums to 6,797.7K. It counts weights only (no biases), in units of
  1,024 (3a: 163,328 weights = 159.5K; the classifier: 1,024,000 = 1000K), for the main path only, and several entries
  disagree with the table's own channel columns: conv1 2.7K (7x7x3x64 = 9,408 = 9.2K), 4c 463K (497.5K), 4d 580K
  (590.5K), 5a 1072K (1018K), 5b 1388K (1409K). Counted from the channel columns the network has 6,990,272 weights and
  8,280 biases (7,280 conv channels + 1,000 classes): 6,998,552, this module's ``googlenet``.
- "~5M" (Szegedy et al. 2015, "Rethinking the Inception Architecture", Sec. 1: "5 million parameters") and "12 times
  fewer than AlexNet" (60M / 12 = 5M) are round figures, as is "~4M" (Stanford CS231n notes); none is a count.
- torchvision's 6,624,904 = 6,998,552 - 380,928 + 7,280: its "5x5" branches are 3x3, which drops
  (25 - 9) x sum(#5x5 reduce x #5x5) = 16 x 23,808 weights; and each of the 7,280 conv output channels carries BN's
  scale and shift (2) instead of a bias (1). Pools, LRN and dropout have no parameters.
- Aux heads: 3,188,840 (on 4a) + 3,190,888 (on 4d) = 6,379,728 in the paper's form; torchvision's, with BN in the
  1x1 conv, have 2 x 128 more: 6,379,984. They nearly double the parameters that train, and are dropped at inference.

``reductions=False`` removes the 1x1 reductions in front of the 3x3 and 5x5 convolutions, which then read the module's
full input: the paper's "naive" module (Fig. 2a), but with the pool projection kept. Dropping it too would pass every
input channel through the pool branch and change every later module's width; keeping it keeps the output channel table
of Table 1 and isolates the cost of the missing reductions (``inception_params`` gives the formula; ``googlenet``
grows from 7.0M to 25.3M parameters). The stem's 1x1 conv2 stays: it is not part of an Inception module.

``forward`` returns the logits, in training and in eval, as every model does. The aux classifiers are asked for:
``forward_with_aux(x)`` returns ``layers.ModelOutput(logits, aux)``, ``aux`` being the two aux logits (4a first) in
training mode with ``aux_heads=True`` (``has_aux``), and ``()`` otherwise; the training task adds their losses with
the paper's weight 0.3.
"""

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import (
    ACTIVATIONS,
    HEAD_KINDS,
    ConvNormAct,
    ModelOutput,
    check_input,
    checkpoint_block,
    checkpoint_seq,
    make_activation,
    make_head,
    min_input_side,
    reduction,
    windows,
)
from ..registry import Option, register_model, with_defaults, without
from .base import CanonModel, holds_values

_BN_EPS = 1e-3  # torchvision's BasicConv2d (inherited from TF-slim's Inception); kept for every BN variant here
_AUX_DROPOUT = 0.7  # paper Sec. 5: "dropout layer with 70% ratio of dropped outputs"

# --------------------------------------------------------------------------------------------------------------------
# helpers


def inception_params(
    in_channels: int, row: Sequence[int], *, branch3_kernel: int = 5, reductions: bool = True, batch_norm: bool = False
) -> int:
    """Parameters of one Inception module from its Table 1 row (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).

    Each conv contributes k*k*c_in*c_out weights plus c_out (bias) or 2*c_out (BN scale and shift).
    """
    ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj = row
    per_channel = 2 if batch_norm else 1
    convs = [(in_channels, ch1x1, 1), (in_channels, pool_proj, 1)]
    if reductions:
        convs += [(in_channels, ch3x3red, 1), (ch3x3red, ch3x3, 3)]
        convs += [(in_channels, ch5x5red, 1), (ch5x5red, ch5x5, branch3_kernel)]
    else:
        convs += [(in_channels, ch3x3, 3), (in_channels, ch5x5, branch3_kernel)]
    return sum(k * k * c_in * c_out + per_channel * c_out for c_in, c_out, k in convs)


def init_weights(model: "GoogLeNet", *, batch_norm: bool) -> None:
    """Initialize as the reference implementation of each variant did.

    With batch norm: torchvision's googlenet (truncated normal, std 0.01, cut at +-2, for every conv and Linear weight;
    BN as identity; Linear biases keep PyTorch's default). Without: BVLC's Caffe GoogLeNet
    (models/bvlc_googlenet/train_val.prototxt), the public reproduction of the paper, which does not state its init:
    Caffe "xavier" (uniform with variance 1/fan_in), bias 0.2 on every conv and hidden FC, 0 on the classifiers.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if batch_norm:
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            else:
                nn.init.kaiming_uniform_(m.weight, nonlinearity="linear")  # bound sqrt(3 / fan_in) = Caffe xavier
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.2)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if not batch_norm:
        for classifier in model.classifiers():
            nn.init.zeros_(classifier.bias)


# --------------------------------------------------------------------------------------------------------------------
# blocks


class Inception(nn.Module):
    """One Inception module (paper Fig. 2b): four branches on the same input, concatenated on channels.

    ``branch1``: 1x1. ``branch2``: 1x1 reduce, 3x3. ``branch3``: 1x1 reduce, ``branch3_kernel`` x ``branch3_kernel``
    (5 in the paper, 3 in torchvision). ``branch4``: 3x3/1 max pool, 1x1 projection. ``reductions=False`` drops the
    two 1x1 reductions (the "naive" module of Fig. 2a, but with the pool projection kept).
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        *,
        branch3_kernel: int = 5,
        reductions: bool = True,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        conv = partial(ConvNormAct, norm=batch_norm, activation=activation, bn_eps=_BN_EPS)
        self.branch1 = conv(in_channels, ch1x1, 1)
        if reductions:
            self.branch2 = nn.Sequential(conv(in_channels, ch3x3red, 1), conv(ch3x3red, ch3x3, 3))
            self.branch3 = nn.Sequential(conv(in_channels, ch5x5red, 1), conv(ch5x5red, ch5x5, branch3_kernel))
        else:
            self.branch2 = nn.Sequential(conv(in_channels, ch3x3, 3))
            self.branch3 = nn.Sequential(conv(in_channels, ch5x5, branch3_kernel))
        # ceil_mode is a no-op at stride 1; it is kept so the module is torchvision's, attribute for attribute.
        pool = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
        self.branch4 = nn.Sequential(pool, conv(in_channels, pool_proj, 1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


class InceptionAux(nn.Module):
    """Auxiliary classifier (paper Sec. 5): pool, 1x1 conv, FC + activation, dropout 0.7, FC to the classes.

    ``pool`` brings the tapped map to ``grid`` x ``grid`` (4x4 on a 224 input in both the paper and torchvision).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        pool: nn.Module,
        grid: int = 4,
        conv_channels: int = 128,
        hidden: int = 1024,
        batch_norm: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.pool = pool
        self.conv = ConvNormAct(in_channels, conv_channels, 1, norm=batch_norm, activation=activation, bn_eps=_BN_EPS)
        self.fc1 = nn.Linear(conv_channels * grid * grid, hidden)
        self.act = make_activation(activation)
        self.dropout = nn.Dropout(_AUX_DROPOUT)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(x)  # (N, C, 4, 4) for the 14x14 map of a 224 input
        x = self.conv(x)
        x = torch.flatten(x, 1)
        x = self.act(self.fc1(x))
        x = self.dropout(x)
        x = self.fc2(x)
        return x


# --------------------------------------------------------------------------------------------------------------------
# network

InceptionRow = tuple[str, int, int, int, int, int, int]  # name, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj
StemLayer = tuple[str] | tuple[str, int, int, int]  # ("convN", out, kernel, stride) | ("maxpoolN",) | ("lrnN",)


@dataclass(frozen=True)
class GoogLeNetConfig:
    """The architecture as data: stem layers, Inception rows per stage, and the pools and heads around them."""

    stem: tuple[StemLayer, ...]
    stages: tuple[tuple[InceptionRow, ...], ...]  # stages 3, 4, 5; a stride-2 max pool sits between two stages
    stage_pools: tuple[int, ...]  # kernel of each of those max pools
    branch3_kernel: int  # 5 in the paper, 3 in torchvision
    batch_norm: bool  # default; the config's own reference init follows it (see init_weights)
    aux_taps: tuple[str, str]  # Inception modules whose outputs feed aux1 and aux2
    aux_pool: str  # "paper": avg pool 5x5/3 (then adaptive to 4x4 off 224) | "adaptive": adaptive avg pool to 4x4
    aux_conv: int  # channels of the aux 1x1 conv
    aux_hidden: int  # width of the aux hidden FC
    fc_hidden: int  # hidden width of the head="fc" tower
    fc_grid: int  # side of the feature map the head="fc" tower flattens (the final map of the nominal input)
    image_size: int  # the nominal input side


class GoogLeNet(CanonModel):
    """Stem, Inception stages 3-5 with max pools between them, then the head; aux heads on two stage-4 modules.

    ``features`` is one Sequential (stem and stages, torchvision's names: ``conv1`` .. ``maxpool2``,
    ``inception3a`` .. ``inception5b``); ``aux1``/``aux2`` exist only with ``aux_heads=True``; the head is
    ``avgpool``, ``dropout``, ``fc`` as in torchvision. ``head="fc"`` replaces the global average pool and single
    Linear by the AlexNet/VGG tower on the flattened final map, to show what the avg-pool head saves.
    """

    def __init__(
        self,
        cfg: GoogLeNetConfig,
        *,
        name: str = "googlenet",
        num_classes: int = 1000,
        in_chans: int = 3,
        activation: str = "relu",
        dropout: float = 0.4,
        aux_heads: bool = True,
        reductions: bool = True,
        head: str = "avgpool",
        batch_norm: bool = False,
    ) -> None:
        super().__init__(name=name, in_chans=in_chans, num_classes=num_classes, head=head, dropout=dropout)
        make_activation(activation)  # an unknown name fails before anything is built
        if aux_heads and num_classes == 0:
            raise ValueError(f"{name}: num_classes=0 (no classifier) leaves the auxiliary classifiers nothing to "
                             "predict; pass aux_heads=False")  # fmt: skip

        self.features, tap_channels = self._make_features(cfg, activation, reductions, batch_norm)
        self.num_features = channels = tap_channels[f"inception{cfg.stages[-1][-1][0]}"]
        self.aux_taps: dict[str, str] = {}  # Inception module name -> aux head attribute
        for index, tap in enumerate(cfg.aux_taps if aux_heads else (), start=1):
            pool: nn.Module = nn.AdaptiveAvgPool2d(4)
            if cfg.aux_pool == "paper":
                # Paper: 5x5/3 avg pool (14x14 -> 4x4 at 224); the adaptive pool is a no-op there and keeps fc1's
                # 2048 inputs at any other input size.
                pool = nn.Sequential(nn.AvgPool2d(5, stride=3), nn.AdaptiveAvgPool2d(4))
            aux = InceptionAux(
                tap_channels[tap], num_classes, pool=pool, conv_channels=cfg.aux_conv, hidden=cfg.aux_hidden,
                batch_norm=batch_norm, activation=activation,
            )  # fmt: skip
            self.add_module(f"aux{index}", aux)
            self.aux_taps[tap] = f"aux{index}"
        self.has_aux = bool(self.aux_taps)
        self.set_head(make_head(head, channels, num_classes, dropout=dropout, activation=activation,
                                grid=cfg.fc_grid, hidden=cfg.fc_hidden))  # fmt: skip

        if holds_values(self):
            init_weights(self, batch_norm=batch_norm)
        self.min_size = self._min_size()
        self.describe(image_size=cfg.image_size, stages=self._stages(cfg))

    def _make_features(
        self, cfg: GoogLeNetConfig, activation: str, reductions: bool, batch_norm: bool
    ) -> tuple[nn.Sequential, dict[str, int]]:
        """The stem and the Inception stages as one Sequential, and each Inception module's output channels."""
        conv = partial(ConvNormAct, norm=batch_norm, activation=activation, bn_eps=_BN_EPS)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = self.in_chans
        for layer_name, *shape in cfg.stem:
            if layer_name.startswith("conv"):
                out, kernel, stride = shape
                layers[layer_name] = conv(channels, out, kernel, stride)
                channels = out
            elif layer_name.startswith("maxpool"):
                layers[layer_name] = nn.MaxPool2d(3, stride=2, ceil_mode=True)  # Caffe's pools round up
            elif layer_name.startswith("lrn"):
                # Caffe's LRN (local_size 5, alpha 1e-4, beta 0.75), as in BVLC GoogLeNet's norm1/norm2.
                layers[layer_name] = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
            else:
                raise ValueError(f"unknown stem layer {layer_name!r}")
        tap_channels = {}
        for index, rows in enumerate(cfg.stages):
            if index > 0:
                layers[f"maxpool{index + 2}"] = nn.MaxPool2d(cfg.stage_pools[index - 1], stride=2, ceil_mode=True)
            for row_name, *row in rows:
                block = Inception(
                    channels, *row, branch3_kernel=cfg.branch3_kernel, reductions=reductions,
                    batch_norm=batch_norm, activation=activation,
                )  # fmt: skip
                layers[f"inception{row_name}"] = block
                channels = tap_channels[f"inception{row_name}"] = block.out_channels
        return nn.Sequential(layers), tap_channels

    def classifiers(self) -> list[nn.Linear]:
        """The Linear layers that output class logits: the head's last and each aux head's ``fc2``."""
        heads = [self.get_classifier()] + [aux.fc2 for aux in self.aux_heads()]
        return [m for m in heads if isinstance(m, nn.Linear)]

    def aux_heads(self) -> list[InceptionAux]:
        return [m for m in self.children() if isinstance(m, InceptionAux)]

    def _upto(self, child: str) -> nn.Sequential:
        return self.features[: list(self.features._modules).index(child) + 1]

    def _min_size(self) -> int:
        # The main path must leave a map of at least 1x1, and each aux pool must have a window to average. Inside an
        # Inception module every branch keeps the size, so the windows of all its branches in turn do too.
        sizes = [min_input_side(windows(self.features.modules()))]
        for tap, aux in zip(self.aux_taps, self.aux_heads(), strict=True):
            path = windows(self._upto(tap).modules()) + windows(aux.pool.modules())
            sizes.append(min_input_side(path))
        return max(sizes)

    def _stages(self, cfg: GoogLeNetConfig) -> list[dict[str, Any]]:
        info = []
        for rows in cfg.stages:
            name = f"inception{rows[-1][0]}"
            channels = self.features.get_submodule(name).out_channels
            path = windows(self._upto(name).modules())
            info.append({"num_chs": channels, "reduction": reduction(path), "module": f"features.{name}"})
        return info

    def feature_blocks(self) -> list[tuple[str, nn.Module]]:
        """Each stem layer, pool and Inception module: features.conv1, ..., features.inception5b."""
        return [(f"features.{name}", m) for name, m in self.features.named_children()]

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.feature_blocks(), x)
        # googlenet on (N, 3, 224, 224): stem -> (N, 192, 28, 28); 3b -> (N, 480, 28, 28); 4e -> (N, 832, 14, 14);
        # 5b -> (N, 1024, 7, 7).
        x = self.features(x)
        return x

    def forward_with_aux(self, x: Tensor) -> ModelOutput:
        """The logits and, in training mode with aux heads, the aux logits (4a's first; they read the maps of 4a and
        4d: (N, 512, 14, 14) and (N, 528, 14, 14) at 224)."""
        if not (self.training and self.has_aux):
            return ModelOutput(self(x), ())
        check_input(x, in_chans=self.in_chans, min_size=self.min_size, model=self.name)
        aux = []
        for name, block in self.features.named_children():
            x = checkpoint_block(block, x) if self.grad_checkpointing else block(x)
            if name in self.aux_taps:
                aux.append(self.get_submodule(self.aux_taps[name])(x))
        return ModelOutput(self.forward_head(x), tuple(aux))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new class layer for the head and for each aux head (which need ``num_classes`` > 0)."""
        if num_classes == 0 and self.has_aux:
            raise ValueError(f"{self.name}: the auxiliary heads need classes; build it with aux_heads=False for 0")
        super().reset_classifier(num_classes, global_pool)
        for aux in self.aux_heads():
            aux.fc2 = nn.Linear(aux.fc2.in_features, num_classes).to(aux.fc2.weight.device, aux.fc2.weight.dtype)


# --------------------------------------------------------------------------------------------------------------------
# private builder, config table


def _googlenet(name: str, **options: Any) -> GoogLeNet:
    cfg = _CONFIGS[name]
    options.setdefault("batch_norm", cfg.batch_norm)
    return GoogLeNet(cfg, name=name, **options)


# Paper Table 1: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj) of every Inception module.
_PAPER_STAGES: tuple[tuple[InceptionRow, ...], ...] = (
    (("3a", 64, 96, 128, 16, 32, 32), ("3b", 128, 128, 192, 32, 96, 64)),
    (("4a", 192, 96, 208, 16, 48, 64), ("4b", 160, 112, 224, 24, 64, 64), ("4c", 128, 128, 256, 24, 64, 64),
     ("4d", 112, 144, 288, 32, 64, 64), ("4e", 256, 160, 320, 32, 128, 128)),
    (("5a", 256, 160, 320, 32, 128, 128), ("5b", 384, 192, 384, 48, 128, 128)),
)  # fmt: skip

# The same table at a quarter of the width (every entry divides by 4), for 32x32 inputs.
_CIFAR_STAGES: tuple[tuple[InceptionRow, ...], ...] = (
    (("3a", 16, 24, 32, 4, 8, 8), ("3b", 32, 32, 48, 8, 24, 16)),
    (("4a", 48, 24, 52, 4, 12, 16), ("4b", 40, 28, 56, 6, 16, 16), ("4c", 32, 32, 64, 6, 16, 16),
     ("4d", 28, 36, 72, 8, 16, 16), ("4e", 64, 40, 80, 8, 32, 32)),
    (("5a", 64, 40, 80, 8, 32, 32), ("5b", 96, 48, 96, 12, 32, 32)),
)  # fmt: skip

# Table 1's first rows: 7x7/2 conv, 3x3/2 max pool, LRN, 1x1 reduce and 3x3 conv, LRN, 3x3/2 max pool.
_PAPER_STEM: tuple[StemLayer, ...] = (
    ("conv1", 64, 7, 2), ("maxpool1",), ("lrn1",), ("conv2", 64, 1, 1), ("conv3", 192, 3, 1), ("lrn2",), ("maxpool2",),
)  # fmt: skip
_TORCHVISION_STEM: tuple[StemLayer, ...] = tuple(layer for layer in _PAPER_STEM if not layer[0].startswith("lrn"))
_CIFAR_STEM: tuple[StemLayer, ...] = (("conv1", 48, 3, 1),)

_CONFIGS: dict[str, GoogLeNetConfig] = {
    "googlenet": GoogLeNetConfig(
        stem=_PAPER_STEM, stages=_PAPER_STAGES, stage_pools=(3, 3), branch3_kernel=5, batch_norm=False,
        aux_taps=("inception4a", "inception4d"), aux_pool="paper", aux_conv=128, aux_hidden=1024,
        fc_hidden=4096, fc_grid=7, image_size=224,
    ),
    # torchvision: 2x2/2 pool before stage 5 (same 7x7 map at 224), 3x3 "5x5" branch (pytorch/vision#906).
    "googlenet_bn": GoogLeNetConfig(
        stem=_TORCHVISION_STEM, stages=_PAPER_STAGES, stage_pools=(3, 2), branch3_kernel=3, batch_norm=True,
        aux_taps=("inception4a", "inception4d"), aux_pool="adaptive", aux_conv=128, aux_hidden=1024,
        fc_hidden=4096, fc_grid=7, image_size=224,
    ),
    "googlenet_cifar": GoogLeNetConfig(
        stem=_CIFAR_STEM, stages=_CIFAR_STAGES, stage_pools=(3, 3), branch3_kernel=5, batch_norm=True,
        aux_taps=("inception4a", "inception4d"), aux_pool="adaptive", aux_conv=32, aux_hidden=256,
        fc_hidden=1024, fc_grid=8, image_size=32,
    ),
}  # fmt: skip

TORCHVISION_NAMES: dict[str, str] = {"googlenet_bn": "googlenet"}

_FEATURE_PREFIXES = ("conv", "maxpool", "inception")


def from_torchvision(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision GoogLeNet keys -> ours: stem and Inception keys move under ``features.``; aux1/aux2/fc are equal.

    A state dict with aux keys (``aux_logits=True``) loads into ``googlenet_bn(aux_heads=True)``, one without into
    ``googlenet_bn(aux_heads=False)``, both strictly.
    """
    return {
        (f"features.{key}" if key.startswith(_FEATURE_PREFIXES) else key): value for key, value in state_dict.items()
    }


OPTIONS: tuple[Option, ...] = (
    Option("in_chans", int, 3, "input channels (1 for grayscale)", low=1),
    Option("activation", str, "relu", "the non-linearity after every conv", choices=ACTIVATIONS),
    Option("dropout", float, 0.4, "dropout before the classifier (inside the tower with head=fc)", low=0, high=1),
    Option("aux_heads", bool, True, "the auxiliary classifiers on 4a and 4d (their loss weighs 0.3 in training)"),
    Option("reductions", bool, True, "the 1x1 reductions before the 3x3 and 5x5 convs (false: the naive module)"),
    Option("head", str, "avgpool", "global average pool + one Linear, or the AlexNet/VGG FC tower",
           choices=HEAD_KINDS),
    Option("batch_norm", bool, True, "batch norm after every conv (false: conv + bias + ReLU, as the paper)"),
)  # fmt: skip
PAPER_OPTIONS = without(OPTIONS, "batch_norm")  # googlenet and googlenet_bn: batch norm is what tells them apart


# --------------------------------------------------------------------------------------------------------------------
# public builders


@register_model(family="googlenet", depth=22, input_size=(3, 224, 224), options=PAPER_OPTIONS)
def googlenet(**options: Any) -> GoogLeNet:
    """GoogLeNet as in the paper: LRN, true 5x5 branches, no BN, 7.0M parameters (Szegedy et al. 2014, Table 1)."""
    return _googlenet("googlenet", **options)


@register_model(family="googlenet", depth=22, input_size=(3, 224, 224),
                options=with_defaults(PAPER_OPTIONS, dropout=0.2))  # fmt: skip
def googlenet_bn(**options: Any) -> GoogLeNet:
    """GoogLeNet with batch norm, torchvision's layout (3x3 in the "5x5" branch), 6.6M parameters."""
    return _googlenet("googlenet_bn", **options)


@register_model(family="googlenet", depth=22, input_size=(3, 32, 32), num_classes=10,
                options=with_defaults(OPTIONS, aux_heads=False))  # fmt: skip
def googlenet_cifar(**options: Any) -> GoogLeNet:
    """GoogLeNet for 32x32 images: one 3x3 stem, the Inception table at 1/4 width, 0.37M parameters."""
    return _googlenet("googlenet_cifar", **options)
