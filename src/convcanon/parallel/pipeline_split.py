"""How a model becomes the stages of a pipeline: its chain of layers, the cost of each, and the split.

1. :func:`pipeline_layers`: the model's ordered chain of layers (the model contract's ``blocks()``); composed in order
   they compute exactly ``model(x)``, with the model's own modules (no parameter is copied).
2. The split into K contiguous stages balances the measured cost of each layer (:func:`layer_costs`: forward FLOPs
   counted by ``torch.utils.flop_counter`` on the meta device, or forward+backward time measured on the device) by
   minimizing the slowest stage (:func:`balance`), or is given by hand (``--pipeline-split 5 6``: layers per stage).
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from typing import NamedTuple

import torch
from torch import nn

from ..layers import meta_call


class Layer(NamedTuple):
    name: str  # where it starts in the model, e.g. "stem", "stage2.1", "features.conv3", "classifier.1"
    module: nn.Module


# ---------------------------------------------------------------------------------------------------------------------
# Flattening a model into layers


def pipeline_layers(model: nn.Module) -> list[Layer]:
    """``model`` as an ordered list of layers whose composition is ``model.forward`` (without its input check): the
    model contract's ``blocks()``, which hold the model's own modules (no parameter is copied).

    Raises ValueError for a model without ``blocks()`` and for one with auxiliary heads (``has_aux``: GoogLeNet's
    branch off mid-network in training, which a linear pipeline cannot carry).
    """
    name = getattr(model, "name", type(model).__name__)
    if not callable(getattr(model, "blocks", None)):
        raise ValueError(f"pipeline parallelism splits a model's blocks(); {name} has none (every model of the zoo "
                         "has)")
    if getattr(model, "has_aux", False):
        raise ValueError(f"{name} has auxiliary heads, which branch off mid-network in training and a linear "
                         "pipeline cannot carry: pass --model-option aux_heads=false, or train it data-parallel")
    return [Layer(block_name, block) for block_name, block in model.blocks()]


# ---------------------------------------------------------------------------------------------------------------------
# Cost and balance


def layer_shapes(layers: list[Layer], input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The input shape of every layer and, last, the output shape (meta device: nothing is computed)."""
    shapes = [tuple(input_shape)]
    x = torch.empty(input_shape, device="meta")
    with torch.no_grad():
        for layer in layers:
            x = meta_call(layer.module, x)
            shapes.append(tuple(x.shape))
    return shapes


def layer_costs(layers: list[Layer], input_shape: tuple[int, ...], method: str = "flops", *,
                device: torch.device | str = "cpu", repeats: int = 3) -> list[float]:
    """Cost of each layer at ``input_shape`` (one micro-batch).

    ``flops``: forward FLOPs counted by ``torch.utils.flop_counter`` on the meta device (convolutions and matrix
    products; backward is about twice forward for every layer, so the proportions hold), deterministic, the same on
    every rank. ``time``: median seconds of forward+backward measured on ``device`` with copies of the weights (the
    model's running statistics are untouched); includes what FLOPs miss (memory-bound pooling, norms) but is noisy.
    """
    from torch.utils.flop_counter import FlopCounterMode

    shapes = layer_shapes(layers, input_shape)
    costs = []
    for layer, shape in zip(layers, shapes):
        if method == "flops":
            counter = FlopCounterMode(display=False)
            with counter, torch.no_grad():
                meta_call(layer.module, torch.empty(shape, device="meta"))
            costs.append(float(counter.get_total_flops()))
        elif method == "time":
            costs.append(_time_layer(layer.module, shape, torch.device(device), repeats))
        else:
            raise ValueError(f"cost method must be 'flops' or 'time', got {method!r}")
    return costs


def _time_layer(module: nn.Module, shape: tuple[int, ...], device: torch.device, repeats: int) -> float:
    from torch.func import functional_call

    tensors = {n: t.detach().to(device).clone().requires_grad_(t.requires_grad) for n, t in
               itertools.chain(module.named_parameters(), module.named_buffers())}
    x = torch.randn(shape, device=device, requires_grad=True)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        y = functional_call(module, tensors, (x,))
        y.backward(torch.ones_like(y))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first call warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def balance(costs: list[float], stages: int) -> list[int]:
    """Layers per stage for ``stages`` contiguous stages that minimize the most expensive stage (linear partition,
    dynamic programming over (layers so far, stages used), O(stages x n^2)); ties go to the earliest cut."""
    n = len(costs)
    if not 1 <= stages <= n:
        raise ValueError(f"cannot split {n} layers into {stages} stages: each stage needs at least one layer")
    prefix = [0.0, *itertools.accumulate(costs)]
    # best[k][i]: the smallest possible maximum stage cost for the first i layers in k stages; cut[k][i]: where the
    # last of those k stages begins.
    best = [[math.inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    sizes, i = [], n
    for k in range(stages, 0, -1):
        j = cut[k][i]
        sizes.append(i - j)
        i = j
    return sizes[::-1]


def resolve_split(layers: list[Layer], costs: list[float], stages: int, manual: list[int] | None = None) -> list[int]:
    """``manual`` checked against the model, or the balanced split of ``costs``."""
    if manual:
        if len(manual) != stages or sum(manual) != len(layers) or min(manual) < 1:
            names = ", ".join(f"{i}:{layer.name}" for i, layer in enumerate(layers))
            raise ValueError(f"--pipeline-split {' '.join(map(str, manual))}: give {stages} stage sizes (each >= 1) "
                             f"that add up to the model's {len(layers)} layers: {names}")
        return list(manual)
    return balance(costs, stages)


def describe_split(layers: list[Layer], costs: list[float], split: list[int], unit: str = "GFLOPs") -> str:
    total = sum(costs) or 1.0
    lines, start = [], 0
    scale = 1e-9 if unit == "GFLOPs" else 1e3
    for k, size in enumerate(split):
        part = layers[start:start + size]
        cost = sum(costs[start:start + size])
        lines.append(f"  stage {k}: {part[0].name} .. {part[-1].name} ({size} layers, {cost * scale:.3g} {unit}, "
                     f"{100 * cost / total:.0f}%)")
        start += size
    slowest = max(sum(costs[s:s + n]) for s, n in zip(itertools.accumulate([0, *split[:-1]]), split))
    lines.append(f"  balance: slowest stage {100 * slowest / total:.0f}% of the work (ideal {100 / len(split):.0f}%)")
    return "\n".join(lines)


def stage_bounds(split: list[int], stage: int) -> tuple[int, int]:
    start = sum(split[:stage])
    return start, start + split[stage]


__all__ = [
    "Layer", "balance", "describe_split", "layer_costs", "layer_shapes", "pipeline_layers",
    "resolve_split", "stage_bounds",
]
