"""Memory sanity before a run: does one training step of this model, input and micro-batch fit on this device?

``check_fits`` prices the step with the estimator's own memory plan (``costmodel.memory_plan`` on the model's measured
``Workload``: weights, gradients, optimizer state, saved activations x micro-batch) against the memory this device
has (the CUDA device's total memory, or the machine's physical memory for the CPU), before any tensor is allocated.
It refuses only what clearly cannot run: a plan larger than the whole device. The plan counts the tensors autograd
saves for the backward pass and the model's state, not the transient buffers on top of them: it is a lower bound of
the step's peak, so a run the check lets through may still run out of memory near the limit, but a run it refuses
could not have run.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import torch

from .catalog import get_device
from .costmodel import GIB, memory_plan
from .workload import measure_workload


def device_memory_gib(device: torch.device) -> float:
    """The whole memory of ``device``: a CUDA device's, or the machine's physical memory for anything else."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / GIB
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def check_fits(model: str, options: dict[str, Any], *, num_classes: int, in_chans: int, image_size: int,
               micro_batch: int, precision: str, optimizer: str, device: torch.device,
               memory_gib: float | None = None, size_flag: str = "--image-size", model_ema: bool = False) -> None:
    """Raise ValueError, naming the flags to change and the estimator's figure, when one training step of ``model``
    on ``micro_batch`` images of ``in_chans`` x ``image_size`` x ``image_size`` needs more than the whole of
    ``device``'s memory (``memory_gib`` overrides what the device reports; ``size_flag`` is what sets the input
    size; ``model_ema``: the run keeps a weight average). ``precision`` is fp32, bf16 or fp16."""
    capacity = device_memory_gib(device) if memory_gib is None else memory_gib
    work = measure_workload(model, num_classes=num_classes, image_size=image_size, in_chans=in_chans, **options)
    base = get_device("cpu" if device.type != "cuda" else "h100")  # only its arch (reserve) is read; memory is ours
    plan = memory_plan(work, replace(base, memory_gib=capacity), precision, micro_batch, optimizer,
                       memory_gib=capacity, model_ema=model_ema)
    if plan.total_gib <= capacity:
        return
    per_image = plan.activations_gib / micro_batch
    fixes = ["lower --batch-size (and raise --accum-steps to keep the batch)" if per_image < capacity else None,
             f"lower {size_flag}", "add --activation-checkpointing",
             "use --amp bf16" if precision == "fp32" else None]
    raise ValueError(
        f"--model {model} at {image_size}x{image_size} with {micro_batch} images per step needs about "
        f"{plan.total_gib:,.1f} GiB (the estimator's figure: weights {plan.weights_gib:.2f} + gradients "
        f"{plan.gradients_gib:.2f} + optimizer {plan.optimizer_gib:.2f}"
        f"{f' + weight average {plan.ema_gib:.2f}' if plan.ema_gib else ''} + activations {plan.activations_gib:,.1f} "
        f"GiB, {per_image:,.2f} per image); this {device.type} device has {capacity:,.1f} GiB: "
        + ", ".join(f for f in fixes if f))


__all__ = ["check_fits", "device_memory_gib"]
