"""Building blocks shared by every family: activations by name, conv-norm-act, classifier heads, input checks.

Each idea of the canon that is a switch on several families lives here once: the activation (ReLU vs the saturating
tanh and sigmoid that AlexNet's paper compared it against), batch norm on or off, dropout, and the two kinds of head
(GoogLeNet's global average pool vs the AlexNet/VGG fully connected tower).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

Activation = Literal["relu", "tanh", "sigmoid"]
HeadKind = Literal["avgpool", "fc"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (relu, tanh, sigmoid)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(_ACTIVATIONS)}")
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
    activation (VGG's order). The index layout matches torchvision's ``classifier`` so state dicts line up.
    """
    if dropout_first:
        layers = [
            nn.Dropout(dropout), nn.Linear(in_features, hidden), make_activation(activation),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), make_activation(activation),
            nn.Linear(hidden, num_classes),
        ]  # fmt: skip
    else:
        layers = [
            nn.Linear(in_features, hidden), make_activation(activation), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), make_activation(activation), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        ]  # fmt: skip
    return nn.Sequential(*layers)


class AvgPoolHead(nn.Module):
    """GoogLeNet's head: global average pool, dropout, one Linear. Replaces the FC tower's millions of weights."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


class ModelOutput(NamedTuple):
    """Returned by models with auxiliary classifiers (GoogLeNet), in training and in eval alike.

    ``aux`` holds the auxiliary logits in training mode when the heads are on, and is empty otherwise.
    """

    logits: Tensor
    aux: tuple[Tensor, ...] = ()


def logits_of(output: Tensor | ModelOutput) -> Tensor:
    """The main logits of any model's output."""
    return output.logits if isinstance(output, ModelOutput) else output


def check_input(x: Tensor, *, in_chans: int, min_size: int, model: str) -> None:
    """Raise a ValueError naming the expected shape before any convolution runs on a wrong input."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(
            f"{model} expects input of shape (N, {in_chans}, H, W) with H, W >= {min_size}, got {tuple(x.shape)}"
        )
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"{model} needs spatial size >= {min_size}x{min_size} (input shape (N, {in_chans}, H, W)), "
            f"got {x.shape[2]}x{x.shape[3]}"
        )
