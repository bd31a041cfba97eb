"""Building blocks shared by every family: activations, conv-norm-act, the head, sizes, input checks, checkpointing.

Each idea of the canon that is a switch on several families lives here once: the activation (ReLU vs the saturating
tanh and sigmoid that AlexNet's paper compared it against), batch norm on or off, dropout, and the two kinds of head
(GoogLeNet's global average pool vs the AlexNet/VGG fully connected tower, both built by :func:`make_head`). So does
what every model needs from its layers: the smallest input a chain of convolutions and pools accepts
(:func:`min_input_side`, from PyTorch's output-size formulas), the input check, a call on the meta device that
reads shapes without computing (:func:`meta_call`), and activation checkpointing (:func:`checkpoint_seq`).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

ACTIVATIONS: tuple[str, ...] = ("relu", "tanh", "sigmoid")
HEAD_KINDS: tuple[str, ...] = ("avgpool", "fc")

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (relu, tanh, sigmoid)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {name!r}")
    return nn.ReLU(inplace=True) if name == "relu" else _ACTIVATIONS[name]()


def check_dropout(p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    return float(p)


class ConvNormAct(nn.Sequential):
    """conv -> batch norm (optional) -> activation (optional). Submodules are named ``conv``, ``bn``, ``act``.

    The convolution has a bias only when there is no batch norm after it: BN's shift makes a bias redundant.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        *,
        groups: int = 1,
        norm: bool = True,
        activation: str | None = "relu",
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        padding = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=not norm)
        if norm:
            self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps)
        if activation is not None:
            self.act = make_activation(activation)


# --------------------------------------------------------------------------------------------------------------------
# the head


def fc_tower(
    in_features: int,
    hidden: int,
    num_classes: int,
    *,
    dropout: float,
    activation: str = "relu",
    dropout_first: bool = False,
) -> nn.Sequential:
    """The AlexNet/VGG classifier: two hidden fully connected layers with dropout, then the class layer.

    ``dropout_first`` puts dropout before each hidden Linear (AlexNet's order in torchvision); otherwise after each
    activation (VGG's order). The index layout matches torchvision's ``classifier`` so state dicts line up. With
    ``num_classes=0`` the class layer is an ``nn.Identity`` at the same index: the tower ends at its hidden features.
    """
    if dropout_first:
        layers = [
            nn.Dropout(dropout), nn.Linear(in_features, hidden), make_activation(activation),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), make_activation(activation),
            class_layer(hidden, num_classes),
        ]  # fmt: skip
    else:
        layers = [
            nn.Linear(in_features, hidden), make_activation(activation), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), make_activation(activation), nn.Dropout(dropout),
            class_layer(hidden, num_classes),
        ]  # fmt: skip
    return nn.Sequential(*layers)


def class_layer(in_features: int, num_classes: int) -> nn.Module:
    """The Linear that outputs the logits; ``num_classes=0`` gives an identity (timm's "no classifier")."""
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()


def check_head(kind: str, num_classes: int) -> None:
    """The one check of the head switches every model shares."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"head must be one of {', '.join(HEAD_KINDS)} (global average pool + one Linear, or the "
                         f"AlexNet/VGG tower of fully connected layers); got {kind!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an integer >= 0 (0: no classifier), got {num_classes!r}")


class Head(NamedTuple):
    """The modules of a head in forward order: pool, then dropout, then the classifier."""

    pool: nn.AdaptiveAvgPool2d
    dropout: nn.Module  # nn.Dropout before a single class Linear; nn.Identity where the classifier holds its own
    classifier: nn.Module  # the class Linear (or Identity), or a Sequential whose last module is the class layer
    hidden: int  # width of the features the class layer reads (forward_head(x, pre_logits=True))


def make_head(
    kind: str,
    channels: int,
    num_classes: int,
    *,
    dropout: float,
    activation: str = "relu",
    grid: int = 7,
    hidden: int = 4096,
    dropout_first: bool = False,
    dropout_in_classifier: bool = False,
) -> Head:
    """The head of every model: ``kind="avgpool"`` (global average pool, dropout, one Linear: GoogLeNet, ResNet) or
    ``kind="fc"`` (adaptive average pool to ``grid`` x ``grid``, then the :func:`fc_tower` of two ``hidden``-wide
    layers: AlexNet, VGG).

    ``dropout_in_classifier`` puts the avgpool head's dropout inside the classifier, ``Sequential(Dropout, Linear)``
    (the layout of AlexNet and VGG, whose ``classifier.1`` is then the Linear); otherwise the dropout is its own module
    and the classifier is the bare Linear (ResNet's and GoogLeNet's ``fc``).
    """
    check_head(kind, num_classes)
    dropout = check_dropout(dropout)
    if kind == "avgpool":
        if dropout_in_classifier:
            classifier: nn.Module = nn.Sequential(nn.Dropout(dropout), class_layer(channels, num_classes))
            return Head(nn.AdaptiveAvgPool2d(1), nn.Identity(), classifier, channels)
        return Head(nn.AdaptiveAvgPool2d(1), nn.Dropout(dropout), class_layer(channels, num_classes), channels)
    # The adaptive pool gives the tower the map of the nominal input at any input size.
    tower = fc_tower(channels * grid * grid, hidden, num_classes, dropout=dropout, activation=activation,
                     dropout_first=dropout_first)  # fmt: skip
    return Head(nn.AdaptiveAvgPool2d(grid), nn.Identity(), tower, hidden)


class ModelOutput(NamedTuple):
    """What ``forward_with_aux`` returns: the logits and the auxiliary classifiers' logits (GoogLeNet).

    ``aux`` holds the auxiliary logits in training mode when the model has auxiliary heads, and is empty otherwise.
    """

    logits: Tensor
    aux: tuple[Tensor, ...] = ()


# --------------------------------------------------------------------------------------------------------------------
# sizes


class Window(NamedTuple):
    """A sliding window (convolution or pool) along one spatial side."""

    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    ceil_mode: bool = False


def _first(v: int | Sequence[int]) -> int:
    return v if isinstance(v, int) else int(v[0])


def window_of(module: nn.Module) -> Window | None:
    """The window of a convolution or a (max, average) pool along the height; None for layers that keep the size or
    set it (adaptive pools). The zoo's windows are square."""
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str):
            raise ValueError(f"{module}: a padding given by name has no fixed window")
        return Window(module.kernel_size[0], module.stride[0], module.padding[0], module.dilation[0])
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        dilation = _first(module.dilation) if isinstance(module, nn.MaxPool2d) else 1
        return Window(_first(module.kernel_size), _first(module.stride), _first(module.padding), dilation,
                      module.ceil_mode)  # fmt: skip
    return None


def output_side(side: int, w: Window) -> int:
    """PyTorch's output size of a window along a side of ``side`` pixels; < 1 means the layer refuses the input."""
    span = side + 2 * w.padding - w.dilation * (w.kernel - 1) - 1
    if span < 0 and not w.ceil_mode:
        return 0
    out = (span + (w.stride - 1 if w.ceil_mode else 0)) // w.stride + 1
    if w.ceil_mode and (out - 1) * w.stride >= side + w.padding:  # a last window starting in the right padding
        out -= 1
    return out


def input_side(out: int, w: Window) -> int:
    """The smallest input side for which the window gives at least ``out`` outputs (the inverse of output_side)."""
    reach = w.dilation * (w.kernel - 1) + 1 - 2 * w.padding
    if not w.ceil_mode:
        return max(1, (out - 1) * w.stride + reach)
    side = max(1, (out - 2) * w.stride + reach + 1)
    while output_side(side, w) < out:  # the ceil-mode correction drops at most one window: a step or two at most
        side += 1
    return side


def windows(modules: Iterable[nn.Module]) -> list[Window]:
    """The windows among ``modules``, in order."""
    return [w for w in map(window_of, modules) if w is not None]


def min_input_side(path: Iterable[Window], out: int = 1) -> int:
    """The smallest input side that leaves a map of at least ``out`` pixels after the windows of ``path`` in order.

    Computed backwards through the output-size formulas; every output size grows with the input size, so the
    smallest input of each layer is the one that gives the smallest input the next layer accepts.
    """
    need = out
    for w in reversed(list(path)):
        need = input_side(need, w)
    return need


def reduction(path: Iterable[Window]) -> int:
    """How many input pixels one output pixel steps over: the product of the strides."""
    total = 1
    for w in path:
        total *= w.stride
    return total


# --------------------------------------------------------------------------------------------------------------------
# input check


def meta_call(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` with every parameter and buffer replaced by a meta tensor: shapes and FLOPs, no arithmetic (the
    module's own tensors are untouched)."""
    from torch.func import functional_call

    tensors = {n: torch.empty_like(t, device="meta") for n, t in
               itertools.chain(module.named_parameters(), module.named_buffers())}
    out: Tensor = functional_call(module, tensors, (x,))
    return out


def check_input(x: Tensor, *, in_chans: int, min_size: int, model: str) -> None:
    """Raise a ValueError naming the expected shape before any convolution runs on a wrong input.

    The models call it through ``torch.fx.wrap`` and skip it when scripting or tracing, so it is one opaque call (or
    nothing) in an fx graph, a TorchScript module or a traced graph.
    """
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(
            f"{model} expects input of shape (N, {in_chans}, H, W) with H, W >= {min_size}, got {tuple(x.shape)}"
        )
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"{model} needs spatial size >= {min_size}x{min_size} (input shape (N, {in_chans}, H, W)), "
            f"got {x.shape[2]}x{x.shape[3]}"
        )


# --------------------------------------------------------------------------------------------------------------------
# activation checkpointing


@contextlib.contextmanager
def _recompute_without_stat_updates(block: nn.Module) -> Iterator[None]:
    """The recomputation in backward runs the block's forward a second time; batch norm would update its running
    statistics (and ``num_batches_tracked``) twice. Momentum 0 keeps the running averages as they are and the counter
    is put back, so a checkpointed model's buffers match the plain model's."""
    norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def checkpoint_block(block: nn.Module, x: Tensor) -> Tensor:
    """``block(x)``, keeping only ``x`` for backward and recomputing the rest there (Chen et al. 2016, "Training
    Deep Nets with Sublinear Memory Cost"). Without grad there is nothing to keep, and it is ``block(x)``."""
    if not torch.is_grad_enabled():
        y: Tensor = block(x)
        return y
    y = torch.utils.checkpoint.checkpoint(
        block, x, use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _recompute_without_stat_updates(block)),
    )  # fmt: skip
    return y


def checkpoint_seq(blocks: Iterable[nn.Module | tuple[str, nn.Module]], x: Tensor) -> Tensor:
    """Run ``blocks`` in order, each checkpointed (:func:`checkpoint_block`): between forward and backward only the
    blocks' inputs stay alive, about one tensor per block, for one extra forward pass of compute. Takes modules or
    the ``(name, module)`` pairs of a model's ``blocks()``."""
    for block in blocks:
        x = checkpoint_block(block[1] if isinstance(block, tuple) else block, x)
    return x
