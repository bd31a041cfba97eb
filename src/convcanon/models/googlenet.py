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

The aux classifiers run only in training mode and only with ``aux_heads=True``; ``forward`` always returns
``layers.ModelOutput(logits, aux)``, ``aux`` being the two aux logits (4a first) or ``()``. The paper adds their losses
with weight 0.3.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from ..layers import (
    Activation,
    ConvNormAct,
    HeadKind,
    ModelOutput,
    check_dropout,
    check_input,
    fc_tower,
    make_activation,
)
from ..registry import register_model

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


def _side_after(size: int, layers: Iterable[nn.Module]) -> int:
    """Spatial side after ``layers`` in order (PyTorch's output-size formulas, ceil mode included); 0 means it fails.

    Layers other than convolutions and pools keep the size. Inside an Inception module every branch keeps the size,
    so walking the branches one after another gives the module's size too.
    """
    for layer in layers:
        if size < 1:
            return 0
        if isinstance(layer, nn.AdaptiveAvgPool2d):
            out = layer.output_size
            size = out if isinstance(out, int) else out[0]
        elif isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p = (v if isinstance(v, int) else v[0] for v in (layer.kernel_size, layer.stride, layer.padding))
            d = getattr(layer, "dilation", 1)
            d = d if isinstance(d, int) else d[0]
            ceil = getattr(layer, "ceil_mode", False)
            span = size + 2 * p - d * (k - 1) - 1
            if span < 0 and isinstance(layer, nn.Conv2d):
                return 0
            # A ceil-mode pool accepts a map smaller than its kernel (torchvision's googlenet runs on 15x15 so).
            out = (span + (s - 1 if ceil else 0)) // s + 1
            if ceil and (out - 1) * s >= size + p:  # a last window starting in the right padding is dropped
                out -= 1
            size = out
    return max(size, 0)


def init_weights(model: GoogLeNet, *, batch_norm: bool) -> None:
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
        return self.fc2(x)


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


class GoogLeNet(nn.Module):
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
        activation: Activation = "relu",
        dropout: float = 0.4,
        aux_heads: bool = True,
        reductions: bool = True,
        head: HeadKind = "avgpool",
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        dropout = check_dropout(dropout)
        if head not in ("avgpool", "fc"):
            raise ValueError(f"head must be 'avgpool' (global average pool) or 'fc' (FC tower), got {head!r}")
        if in_chans < 1 or num_classes < 1:
            raise ValueError(f"in_chans and num_classes must be >= 1, got {in_chans} and {num_classes}")
        make_activation(activation)  # raises on an unknown name before anything is built
        self.name = name
        self.in_chans = in_chans
        self.num_classes = num_classes

        conv = partial(ConvNormAct, norm=batch_norm, activation=activation, bn_eps=_BN_EPS)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_chans
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
        self.features = nn.Sequential(layers)
        self.num_features = channels

        self.aux_taps: dict[str, str] = {}  # Inception module name -> aux head attribute
        for index, tap in enumerate(cfg.aux_taps if aux_heads else (), start=1):
            aux_name = f"aux{index}"
            pool: nn.Module = nn.AdaptiveAvgPool2d(4)
            if cfg.aux_pool == "paper":
                # Paper: 5x5/3 avg pool (14x14 -> 4x4 at 224); the adaptive pool is a no-op there and keeps fc1's
                # 2048 inputs at any other input size.
                pool = nn.Sequential(nn.AvgPool2d(5, stride=3), nn.AdaptiveAvgPool2d(4))
            aux = InceptionAux(
                tap_channels[tap], num_classes, pool=pool, conv_channels=cfg.aux_conv, hidden=cfg.aux_hidden,
                batch_norm=batch_norm, activation=activation,
            )  # fmt: skip
            self.add_module(aux_name, aux)
            self.aux_taps[tap] = aux_name

        if head == "avgpool":
            self.avgpool = nn.AdaptiveAvgPool2d(1)  # the paper's 7x7/1 average pool on a 224 input, at any size
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(channels, num_classes)
        else:
            self.avgpool = nn.AdaptiveAvgPool2d(cfg.fc_grid)  # the final map of the nominal input, at any size
            self.dropout = nn.Identity()  # the tower holds its own dropout layers
            self.fc = fc_tower(channels * cfg.fc_grid**2, cfg.fc_hidden, num_classes, dropout=dropout,
                               activation=activation)  # fmt: skip

        init_weights(self, batch_norm=batch_norm)
        self.min_size = self._smallest_input()

    def classifiers(self) -> list[nn.Linear]:
        """The Linear layers that output class logits: the head's last and each aux head's ``fc2``."""
        last = self.fc[-1] if isinstance(self.fc, nn.Sequential) else self.fc
        return [last] + [getattr(self, aux).fc2 for aux in self.aux_taps.values()]

    def _smallest_input(self) -> int:
        # The main path must leave a map of at least 1x1, and each aux pool must have a window to average.
        def runs(size: int) -> bool:
            side = size
            for child_name, child in self.features.named_children():
                side = _side_after(side, child.modules())
                if child_name in self.aux_taps:
                    aux_pool = getattr(self, self.aux_taps[child_name]).pool
                    if _side_after(side, aux_pool.modules()) < 1:
                        return False
            return side >= 1

        return next(size for size in range(1, 4097) if runs(size))

    def _run_features(self, x: Tensor, *, with_aux: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
        # googlenet on (N, 3, 224, 224): stem -> (N, 192, 28, 28); 3b -> (N, 480, 28, 28); 4a (aux1 tap) ->
        # (N, 512, 14, 14); 4d (aux2 tap) -> (N, 528, 14, 14); 4e -> (N, 832, 14, 14); 5b -> (N, 1024, 7, 7).
        aux: list[Tensor] = []
        for child_name, child in self.features.named_children():
            x = child(x)
            if with_aux and child_name in self.aux_taps:
                aux.append(getattr(self, self.aux_taps[child_name])(x))
        return x, tuple(aux)

    def forward_features(self, x: Tensor) -> Tensor:
        return self._run_features(x, with_aux=False)[0]

    def forward_head(self, features: Tensor) -> Tensor:
        x = self.avgpool(features)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        return self.fc(x)

    def forward(self, x: Tensor) -> ModelOutput:
        check_input(x, in_chans=self.in_chans, min_size=self.min_size, model=self.name)
        features, aux = self._run_features(x, with_aux=self.training and bool(self.aux_taps))
        return ModelOutput(self.forward_head(features), aux)


# --------------------------------------------------------------------------------------------------------------------
# private builder, config table


def _googlenet(name: str, **options: object) -> GoogLeNet:
    cfg = _CONFIGS[name]
    options.setdefault("batch_norm", cfg.batch_norm)
    return GoogLeNet(cfg, name=name, **options)


# Paper Table 1: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj) of every Inception module.
_PAPER_STAGES: tuple[tuple[InceptionRow, ...], ...] = (
    (
        ("3a", 64, 96, 128, 16, 32, 32),
        ("3b", 128, 128, 192, 32, 96, 64),
    ),
    (
        ("4a", 192, 96, 208, 16, 48, 64),
        ("4b", 160, 112, 224, 24, 64, 64),
        ("4c", 128, 128, 256, 24, 64, 64),
        ("4d", 112, 144, 288, 32, 64, 64),
        ("4e", 256, 160, 320, 32, 128, 128),
    ),
    (
        ("5a", 256, 160, 320, 32, 128, 128),
        ("5b", 384, 192, 384, 48, 128, 128),
    ),
)

# The same table at a quarter of the width (every entry divides by 4), for 32x32 inputs.
_CIFAR_STAGES: tuple[tuple[InceptionRow, ...], ...] = (
    (
        ("3a", 16, 24, 32, 4, 8, 8),
        ("3b", 32, 32, 48, 8, 24, 16),
    ),
    (
        ("4a", 48, 24, 52, 4, 12, 16),
        ("4b", 40, 28, 56, 6, 16, 16),
        ("4c", 32, 32, 64, 6, 16, 16),
        ("4d", 28, 36, 72, 8, 16, 16),
        ("4e", 64, 40, 80, 8, 32, 32),
    ),
    (
        ("5a", 64, 40, 80, 8, 32, 32),
        ("5b", 96, 48, 96, 12, 32, 32),
    ),
)

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
        fc_hidden=4096, fc_grid=7,
    ),
    # torchvision: 2x2/2 pool before stage 5 (same 7x7 map at 224), 3x3 "5x5" branch (pytorch/vision#906).
    "googlenet_bn": GoogLeNetConfig(
        stem=_TORCHVISION_STEM, stages=_PAPER_STAGES, stage_pools=(3, 2), branch3_kernel=3, batch_norm=True,
        aux_taps=("inception4a", "inception4d"), aux_pool="adaptive", aux_conv=128, aux_hidden=1024,
        fc_hidden=4096, fc_grid=7,
    ),
    "googlenet_cifar": GoogLeNetConfig(
        stem=_CIFAR_STEM, stages=_CIFAR_STAGES, stage_pools=(3, 3), branch3_kernel=5, batch_norm=True,
        aux_taps=("inception4a", "inception4d"), aux_pool="adaptive", aux_conv=32, aux_hidden=256,
        fc_hidden=1024, fc_grid=8,
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


# --------------------------------------------------------------------------------------------------------------------
# public builders


@register_model(family="googlenet", depth=22, input_size=(3, 224, 224))
def googlenet(
    *, num_classes: int = 1000, in_chans: int = 3, activation: Activation = "relu", dropout: float = 0.4,
    aux_heads: bool = True, reductions: bool = True, head: HeadKind = "avgpool",
) -> GoogLeNet:  # fmt: skip
    """GoogLeNet as in the paper: LRN, true 5x5 branches, no BN, 7.0M parameters (Szegedy et al. 2014, Table 1)."""
    return _googlenet("googlenet", **locals())


@register_model(family="googlenet", depth=22, input_size=(3, 224, 224))
def googlenet_bn(
    *, num_classes: int = 1000, in_chans: int = 3, activation: Activation = "relu", dropout: float = 0.2,
    aux_heads: bool = True, reductions: bool = True, head: HeadKind = "avgpool",
) -> GoogLeNet:  # fmt: skip
    """GoogLeNet with batch norm, torchvision's layout (3x3 in the "5x5" branch), 6.6M parameters."""
    return _googlenet("googlenet_bn", **locals())


@register_model(family="googlenet", depth=22, input_size=(3, 32, 32), num_classes=10)
def googlenet_cifar(
    *, num_classes: int = 10, in_chans: int = 3, activation: Activation = "relu", dropout: float = 0.4,
    aux_heads: bool = False, reductions: bool = True, head: HeadKind = "avgpool", batch_norm: bool = True,
) -> GoogLeNet:  # fmt: skip
    """GoogLeNet for 32x32 images: one 3x3 stem, the Inception table at 1/4 width, 0.37M parameters."""
    return _googlenet("googlenet_cifar", **locals())
