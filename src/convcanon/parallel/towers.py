"""The paper's AlexNet on two devices, one tower each (Krizhevsky et al. 2012, section 3.2).

"We spread the net across two GPUs ... puts half of the kernels (or neurons) on each GPU, with one additional trick:
the GPUs communicate only in certain layers." :class:`TwoTowerAlexNet` rebuilds a two-tower ``AlexNet``
(``alexnet``, ``alexnet_cifar``; see ``convcanon.models.alexnet``) with every layer's output channels (or neurons)
halved between ``devices[0]`` and ``devices[1]``:

- the grouped convolutions (conv2, conv4, conv5: ``model.split_layers``) and everything per channel between them
  (batch norm, activation, the towers' own LRN, pooling, dropout) run on each tower's half alone, no communication;
- conv1 reads the whole image, and conv3 and the fully connected layers read both towers' halves: there each device
  first receives the other tower's half (the paper's cross-GPU exchanges), then computes its own half of the outputs;
- the two halves of the logits are joined on ``devices[0]``.

The weights are copied out of the model, tower by tower; :meth:`TwoTowerAlexNet.merged_state_dict` joins them back into
the model's own state dict (so checkpoints and ``model.safetensors`` stay single-device). Two CUDA devices are the
paper's setting; any two devices work (``("cuda:0", "cpu")`` on a one-GPU machine; ``("cpu", "cpu")`` runs the same
code and placement on one CPU, which is how it is tested without GPUs).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..models.alexnet import AlexNet, LocalResponseNorm

TOWERS = 2


def _halves(n: int) -> list[slice]:
    """Tower t's share of n channels: [0, ceil(n/2)) and [ceil(n/2), n) (equal halves for every paper layer)."""
    mid = (n + 1) // 2
    return [slice(0, mid), slice(mid, n)]


def _take(t: Tensor | None, rows: slice, device) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t.detach()[rows].clone().to(device), requires_grad=t.requires_grad)


def _conv_piece(conv: nn.Conv2d, rows: slice, grouped: bool, device) -> nn.Conv2d:
    # A grouped conv's rows [t*C/2, (t+1)*C/2) read input channels [t*Cin/2, ...) only: a plain conv on that half.
    in_channels = conv.in_channels // TOWERS if grouped else conv.in_channels
    piece = nn.Conv2d(in_channels, rows.stop - rows.start, conv.kernel_size, conv.stride, conv.padding,
                      bias=conv.bias is not None, device="meta")
    piece.weight = _take(conv.weight, rows, device)
    piece.bias = _take(conv.bias, rows, device)
    return piece


def _linear_piece(fc: nn.Linear, rows: slice, device) -> nn.Linear:
    piece = nn.Linear(fc.in_features, rows.stop - rows.start, bias=fc.bias is not None, device="meta")
    piece.weight = _take(fc.weight, rows, device)
    piece.bias = _take(fc.bias, rows, device)
    return piece


def _bn_piece(bn: nn.BatchNorm2d, rows: slice, device) -> nn.BatchNorm2d:
    piece = nn.BatchNorm2d(rows.stop - rows.start, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                           device=device)
    with torch.no_grad():
        if bn.affine:
            piece.weight.copy_(bn.weight[rows])
            piece.bias.copy_(bn.bias[rows])
        if bn.track_running_stats:
            piece.running_mean.copy_(bn.running_mean[rows])
            piece.running_var.copy_(bn.running_var[rows])
            piece.num_batches_tracked.copy_(bn.num_batches_tracked)
    return piece


class TwoTowerAlexNet(nn.Module):
    """A two-tower :class:`AlexNet` with tower ``t`` on ``devices[t]`` (see the module docstring).

    Attributes: ``devices``; ``steps``, the forward as a list of ``(name, exchange, piece_0, piece_1)`` where
    ``exchange`` says whether both towers' inputs are gathered on each device first; ``placement``, the model's
    layer names mapped to the devices their pieces live on.
    """

    def __init__(self, model: AlexNet, devices: tuple[str | torch.device, str | torch.device] = ("cuda:0", "cuda:1")):
        super().__init__()
        if not isinstance(model, AlexNet) or model.towers != TOWERS:
            raise ValueError("TwoTowerAlexNet needs a two-tower AlexNet (alexnet or alexnet_cifar with towers=2); "
                             f"got {getattr(model, 'name', type(model).__name__)} with "
                             f"{getattr(model, 'towers', 1)} tower(s)")
        self.devices = tuple(torch.device(d) for d in devices)
        self.name, self.in_chans, self.min_size, self.num_classes = model.name, model.in_chans, model.min_size, \
            model.num_classes
        self.steps: list[tuple[str, bool, nn.Module, nn.Module]] = []
        names = {id(m): n for n, m in model.named_modules()}
        for _, block in model.blocks():  # the model's own layers in forward order, the head's flatten included
            for m in ([block] if id(block) in names else block.children()):
                name = names.get(id(m), "flatten")
                self._add(name, m, exchange=isinstance(m, (nn.Conv2d, nn.Linear)) and name not in model.split_layers)
        self.pieces = nn.ModuleDict({
            key.replace(".", "_") + f"_t{t}": piece for key, _, *pieces in self.steps for t, piece in enumerate(pieces)
        })  # registered, so .parameters(), .train() and .eval() reach every piece
        # where each weighted layer's halves actually live, read back from their parameters
        self.placement = {key: tuple(str(next(p.parameters()).device) for p in pieces)
                          for key, _, *pieces in self.steps if any(True for _ in pieces[0].parameters())}

    def _add(self, name: str, m: nn.Module, exchange: bool) -> None:
        pieces = []
        for t, device in enumerate(self.devices):
            if isinstance(m, nn.Conv2d):
                piece = _conv_piece(m, _halves(m.out_channels)[t], grouped=m.groups == TOWERS, device=device)
            elif isinstance(m, nn.Linear):
                piece = _linear_piece(m, _halves(m.out_features)[t], device)
            elif isinstance(m, nn.BatchNorm2d):
                piece = _bn_piece(m, _halves(m.num_features)[t], device)
            elif isinstance(m, LocalResponseNorm):
                piece = LocalResponseNorm(m.size, m.alpha, m.beta, m.k, towers=1)  # each tower normalizes its own
            else:  # activation, pooling, dropout, flatten: no weights, per channel (or per position)
                piece = copy.deepcopy(m).to(device)
            pieces.append(piece)
        self.steps.append((name, exchange, *pieces))

    def forward(self, x: Tensor) -> Tensor:
        h: list[Tensor] = [x, x]  # conv1 reads the whole image on both devices
        first = True
        for _name, exchange, *pieces in self.steps:
            if exchange and first:
                h = [x.to(d) for d in self.devices]
                first = False
            elif exchange:  # the cross-device step: each device gathers both halves, tower 0's first
                h = [torch.cat([h[0].to(d), h[1].to(d)], dim=1) for d in self.devices]
            h = [piece(part) for piece, part in zip(pieces, h)]
        return torch.cat([h[0], h[1].to(self.devices[0])], dim=1)  # logits on devices[0]

    def merged_state_dict(self) -> dict[str, Tensor]:
        """The state dict of the single-device model this was built from (CPU tensors, the model's keys)."""
        out: dict[str, Tensor] = {}
        for name, _, *pieces in self.steps:
            states = [p.state_dict() for p in pieces]
            for key in states[0]:
                if key == "num_batches_tracked":
                    out[f"{name}.{key}"] = states[0][key].cpu()
                else:
                    out[f"{name}.{key}"] = torch.cat([s[key].detach().cpu() for s in states], dim=0)
        return out

    def merged_gradients(self) -> dict[str, Tensor]:
        """Each parameter's gradient joined across the towers, under the model's parameter names (CPU)."""
        out: dict[str, Tensor] = {}
        for name, _, *pieces in self.steps:
            for key, first in pieces[0].named_parameters():
                parts = [first, pieces[1].get_parameter(key)]
                if all(p.grad is not None for p in parts):
                    out[f"{name}.{key}"] = torch.cat([p.grad.detach().cpu() for p in parts], dim=0)
        return out


__all__ = ["TwoTowerAlexNet"]
