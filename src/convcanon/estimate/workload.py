"""What one training image costs a model, measured on the meta device (shapes only, no arithmetic).

One forward pass in training mode at the run's image size, under three observers:

- ``torch.utils.flop_counter.FlopCounterMode`` counts the multiply-accumulates of convolutions and linear layers, the
  same counter as :func:`convcanon.analysis.profile.profile_model` (so at the default size the figures agree). It runs
  in training mode, so GoogLeNet's auxiliary heads, which really train, are counted. Training FLOPs are taken as 3x the
  forward (the backward pass computes a gradient for the input and one for the weights, each about a forward's work);
  the counter's own backward count is not used because it over-counts grouped convolutions (AlexNet's towers).
- A dispatch mode records every aten operation: how many run (each costs the host a few microseconds to launch) and
  how many tensor elements they write. Elements written are the basis of the memory-traffic term: element-wise work
  (batch norm, ReLU, LRN, pooling, residual adds) is bound by memory bandwidth, not by arithmetic.
- A saved-tensor hook sums what autograd keeps for the backward pass: that is the activation memory (the activations
  of one micro-batch live from the forward until the backward consumes them). Parameters saved by reference are not
  activations and are left out. The approximation: transient buffers (a layer's output gradient while the next one is
  computed, cuDNN workspace) are not in it; the cost model adds a fixed reserve for them.

Per-image figures are measured with a batch of ``_BATCH`` images and divided by it; only tensors whose first dimension
is the batch count, so per-channel statistics and weight views do not leak into per-image figures.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ..registry import create_model, model_info, model_options

_BATCH = 3  # odd, so no channel count of 2 or 4 is mistaken for the batch dimension

TRAINING_FLOPS_PER_FORWARD_FLOP = 3  # forward + grad wrt inputs + grad wrt weights, each ~ one forward


@dataclass(frozen=True)
class Workload:
    """The per-image cost of training one model at one input size."""

    model: str
    family: str
    params: int
    param_tensors: int
    input_size: tuple[int, int, int]  # (C, H, W) it was measured at
    num_classes: int
    macs: int  # forward multiply-accumulates per image, training mode
    winograd_macs: int  # of which in 3x3 stride-1 convolutions with >= 16 channels per group (Winograd-eligible)
    written_elements: int  # tensor elements written by forward ops per image
    saved_float_elements: int  # floating-point elements saved for backward per image
    saved_other_bytes: int  # integer/bool tensors saved for backward per image (pool indices, dropout masks)
    forward_ops: int  # aten operations per forward pass (independent of batch)
    towers: int  # 2 for the paper's two-GPU AlexNet layout, else 1
    tower_exchange_elements: int  # per image, one direction: what each tower must receive from the other

    @property
    def flops_per_image(self) -> float:
        """Training FLOPs per image (forward + backward)."""
        return TRAINING_FLOPS_PER_FORWARD_FLOP * 2 * self.macs


class _OpTally(TorchDispatchMode):
    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch, self.ops, self.written = batch, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            self.ops += 1
            outs = out if isinstance(out, (tuple, list)) else (out,)
            self.written += sum(o.numel() for o in outs if _per_image(o, self.batch))
        return out


def _per_image(t: object, batch: int) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == batch


@functools.lru_cache(maxsize=128)
def _measure(name: str, num_classes: int | None, image_size: int | None, options: tuple) -> Workload:
    info = model_info(name)
    opts = dict(options)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, **opts)
    model.train()
    in_chans = int(opts.get("in_chans", info.input_size[0]))
    side_h, side_w = (image_size, image_size) if image_size else info.input_size[1:]
    x = torch.empty(_BATCH, in_chans, side_h, side_w, device="meta")

    params = list(model.parameters())
    param_ids = {id(p) for p in params}
    saved: dict[int, tuple[bool, int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in param_ids and id(t._base) not in param_ids and _per_image(t, _BATCH):
            saved[id(t)] = (t.is_floating_point(), t.numel() * (1 if t.is_floating_point() else t.element_size()))
        return t

    # Inputs of convolutions and linear layers, for the two-tower exchange: a layer with groups == 1 reads both
    # towers, so (unless it reads the replicated image) each GPU must receive the other tower's half of its input.
    exchanged = [0]
    winograd = [0]

    def on_layer(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        inp, groups = inputs[0], getattr(module, "groups", 1)
        if groups == 1 and inp is not x:
            exchanged[0] += inp[0].numel() // 2
        # cuDNN runs 3x3 stride-1 convolutions with Winograd's F(4x4, 3x3) when there are enough channels per group
        # to amortize the transforms (Lavin & Gray 2016); depthwise-like convolutions do not qualify.
        if (isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and module.stride == (1, 1)
                and module.dilation == (1, 1) and module.in_channels // groups >= 16):  # fmt: skip
            winograd[0] += output[0].numel() * module.in_channels // groups * 9

    hooks = [m.register_forward_hook(on_layer) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    flops, tally = FlopCounterMode(display=False), _OpTally(_BATCH)
    try:
        with flops, tally, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.forward_with_aux(x)  # the training forward: auxiliary heads (GoogLeNet) included
    finally:
        for h in hooks:
            h.remove()

    towers = int(getattr(model, "towers", 1))
    return Workload(
        model=name, family=info.family, params=sum(p.numel() for p in params), param_tensors=len(params),
        input_size=(in_chans, side_h, side_w), num_classes=num_classes or info.default_num_classes,
        macs=flops.get_total_flops() // 2 // _BATCH, winograd_macs=winograd[0],
        written_elements=tally.written // _BATCH,
        saved_float_elements=sum(n for is_float, n in saved.values() if is_float) // _BATCH,
        saved_other_bytes=sum(n for is_float, n in saved.values() if not is_float) // _BATCH,
        forward_ops=tally.ops, towers=towers,
        tower_exchange_elements=exchanged[0] if towers > 1 else 0,
    )  # fmt: skip


def measure_workload(name: str, *, num_classes: int | None = None, image_size: int | None = None,
                     **options: object) -> Workload:
    """Measure ``name`` (built through the registry) at ``image_size`` (default: its own input size).

    Raises ValueError when the model cannot take that size (it names the smallest size it accepts).
    """
    options = {k: v for k, v in options.items() if v is not None}
    if "in_chans" in options and "in_chans" not in model_options(name):
        options.pop("in_chans")
    return _measure(name, num_classes, image_size, tuple(sorted(options.items())))


def smallest_input(name: str, **options: object) -> int:
    """The smallest square input side ``name`` accepts (the model contract's ``min_size``)."""
    with torch.device("meta"):
        model = create_model(name, **options)
    return int(model.min_size)
