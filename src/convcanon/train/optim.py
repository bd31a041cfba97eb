"""Optimizer, the linear scaling rule and the learning-rate schedule.

``lr_at(step, plan)`` is a pure function of the optimizer step: the same step always gets the same LR, whether the run
was resumed or not, on one process or many.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .config import TrainConfig
from .engine import optimizer_kernel


@dataclass(frozen=True)
class Plan:
    """Derived settings, resolved once at start, printed, saved with the run and never changed.

    A *step* is one optimizer update, everywhere: schedule, logs, checkpoints, ``max_steps``.
    """

    world_size: int
    batch_size: int  # per device, per micro-batch
    accum_steps: int
    global_batch: int  # batch_size x world_size x accum_steps: samples per optimizer step
    base_lr: float
    base_batch: int
    peak_lr: float  # base_lr x global_batch / base_batch (linear scaling rule, Goyal et al. 2017, sec. 2.1)
    micro_batches_per_epoch: int  # per rank
    steps_per_epoch: int  # optimizer steps; the last group of an epoch may hold fewer micro-batches
    epochs: int
    total_steps: int
    warmup_steps: int
    schedule: str
    milestone_steps: tuple[int, ...]
    gamma: float

    def describe(self) -> str:
        return (
            f"global batch {self.global_batch} = {self.batch_size} per device x {self.world_size} device(s) x "
            f"{self.accum_steps} accumulation step(s); lr {self.peak_lr:.4g} = {self.base_lr:g} x "
            f"{self.global_batch}/{self.base_batch} (linear scaling rule); {self.steps_per_epoch} steps/epoch, "
            f"{self.total_steps} steps in all, {self.warmup_steps} warmup steps, {self.schedule} schedule"
        )


def make_plan(cfg: TrainConfig, micro_batches_per_epoch: int, world_size: int = 1) -> Plan:
    if micro_batches_per_epoch < 1:
        raise ValueError(
            f"the training split is smaller than one global batch ({cfg.batch_size} x {world_size} device(s)): "
            "lower --batch-size"
        )
    global_batch = cfg.batch_size * world_size * cfg.accum_steps
    steps_per_epoch = math.ceil(micro_batches_per_epoch / cfg.accum_steps)
    total = steps_per_epoch * cfg.epochs
    return Plan(
        world_size=world_size,
        batch_size=cfg.batch_size,
        accum_steps=cfg.accum_steps,
        global_batch=global_batch,
        base_lr=cfg.lr,
        base_batch=cfg.base_batch,
        peak_lr=cfg.lr * global_batch / cfg.base_batch,
        micro_batches_per_epoch=micro_batches_per_epoch,
        steps_per_epoch=steps_per_epoch,
        epochs=cfg.epochs,
        total_steps=total,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        schedule=cfg.schedule,
        milestone_steps=tuple(m * steps_per_epoch for m in cfg.milestones),
        gamma=cfg.gamma,
    )


def lr_at(step: int, plan: Plan) -> float:
    """LR for optimizer step ``step`` (0-based).

    1. warmup: linear from peak/warmup_steps up to the peak over the first warmup_steps steps (Goyal et al.: the
       gradual warmup that makes large-batch training stable);
    2. then the schedule over the remaining steps: cosine to zero, step decay by gamma at each milestone, or constant.
    """
    peak = plan.peak_lr
    if step < plan.warmup_steps:
        return peak * (step + 1) / plan.warmup_steps
    if plan.schedule == "constant":
        return peak
    if plan.schedule == "step":
        return peak * plan.gamma ** sum(step >= m for m in plan.milestone_steps)
    decay_steps = max(1, plan.total_steps - plan.warmup_steps)
    progress = min(1.0, (step - plan.warmup_steps) / decay_steps)
    return 0.5 * peak * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv and linear weights only: decaying BN scales/shifts and biases only hurts
    (Goyal et al. 2017 sec. 5.1; He et al. "Bag of Tricks" 2019 sec. 3.1, "no bias decay"). Parameters that carry an
    ``lr_scale`` (the head under ``--head-lr-mult``, ``train.finetune``) get groups of their own with that scale;
    frozen parameters (no ``requires_grad``) get none."""
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {(True, 1.0): [], (False, 1.0): []}
    for _name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        groups.setdefault((p.ndim > 1, float(getattr(p, "lr_scale", 1.0))), []).append(p)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
            for (decay, scale), params in groups.items() if params or scale == 1.0]


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def dense_views(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """While entered, every channels-last 4-D parameter of ``optimizer``, its gradient and its per-parameter state
    (momentum, Adam's moments) are seen as their contiguous (O, H, W, I) views: the same memory, in the order it is
    stored. The fused update kernels take contiguous tensors only and copy anything else in and back out (on CPU,
    ResNet-18's fused SGD update: 17.6-24.2 ms on channels-last weights as they are, 7.5-9.1 ms on these views;
    ``benchmarks/step_parts.py``); the update is elementwise, so it is the same on either view. State the step
    creates lazily is turned back too."""
    swapped = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None or not _channels_last(p) or not _channels_last(p.grad):
                continue
            swapped.append((p, p.data, p.grad))
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape:
                    state[key] = value.permute(0, 2, 3, 1)
            p.data, p.grad = p.data.permute(0, 2, 3, 1), p.grad.permute(0, 2, 3, 1)
    try:
        yield
    finally:
        for p, data, grad in swapped:
            dense_shape = p.data.shape
            p.data, p.grad = data, grad
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == dense_shape:
                    state[key] = value.permute(0, 3, 1, 2)


class _DenseStep:
    """The update on contiguous views of channels-last weights (``dense_views``)."""

    def step(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201 (torch's signature, passed through)
        with dense_views(self):  # type: ignore[arg-type]
            return super().step(*args, **kwargs)  # type: ignore[misc]


class FusedSGD(_DenseStep, torch.optim.SGD):
    """torch's SGD with its fused kernel, updating channels-last weights in place without copies."""


class FusedAdamW(_DenseStep, torch.optim.AdamW):
    """torch's AdamW with its fused kernel, updating channels-last weights in place without copies."""


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over ``param_groups``, with the fastest update kernel the device has:
    fused (one kernel per group for the whole update, on channels-last weights without copies: ``dense_views``;
    BENCHMARKS.md has the figures) where torch has one, else multi-tensor ("foreach")."""
    groups = param_groups(model, cfg.weight_decay)
    kernel = optimizer_kernel(device)
    if cfg.optimizer == "sgd":
        sgd = FusedSGD if kernel == "fused" else torch.optim.SGD
        opt = sgd(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                  **{kernel: True})
        if kernel == "fused" and cfg.momentum > 0:
            # Fused SGD allocates the momentum buffers uninitialized on its first step and fills them in the kernel;
            # a first step skipped by the fp16 loss scaler (found_inf) leaves them as garbage. Zero buffers give the
            # same first update (buffer = momentum * 0 + grad, dampening 0) and make that skip safe.
            for group in opt.param_groups:
                for p in group["params"]:
                    opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return opt
    adamw = FusedAdamW if kernel == "fused" else torch.optim.AdamW
    return adamw(groups, lr=cfg.lr, **{kernel: True})
