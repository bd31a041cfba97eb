"""The training step: one optimizer update, the only copy of it in convcanon.

``convcanon train`` (every parallel strategy), ``convcanon bench``, ``convcanon estimate --measure``, the scaling
benchmark and the evidence experiments all run :class:`TrainStep`, so a figure measured by one holds for the others.

One step, for ``count`` micro-batches (``--accum-steps``; 1 without accumulation)::

    for each micro-batch (x, y):                       # gradient sync only on the last one (DDP's no_sync)
        loss = task.loss(net(x), y)  under autocast    # --amp: one path, a no-op context when off
        scaler.scale(loss / count).backward()          # k micro-batches of b = one batch of k*b
    clip the global gradient norm (--grad-clip)        # after unscaling, when fp16's scaler is on
    optimizer.step() at lr_at(step); zero the gradients

Nothing in the step reads a value back from the device: the non-finite-loss check (:class:`NonFiniteWatch`) remembers
the first bad step on the device and the run skeleton reads it where it syncs anyway (log lines, checkpoints).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .task import ClassificationTask


class NonFiniteLossError(RuntimeError):
    """The loss became inf or NaN; the run stopped at the next check, before saving anything, checkpoints untouched."""


class NonFiniteWatch:
    """Remembers, on the device, the first optimizer step whose loss was inf or NaN, so that the training step needs no
    host-device sync: the host reads it only where the run syncs anyway (each log line, before each checkpoint and
    evaluation). Steps after a bad one are garbage but never saved: the check runs before anything is written, so the
    newest checkpoint is the last good state (at most ``--log-every`` steps of wasted compute, instead of one stall of
    the GPU's queue per step)."""

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((), -1, dtype=torch.long, device=device)

    def see(self, loss: Tensor, step: int) -> None:
        """Record ``step`` (0-based) if ``loss`` is not finite and no earlier step was; device-side only."""
        # A Python scalar enters the kernel as an argument: no host-to-device copy.
        self.first = torch.where((self.first < 0) & ~torch.isfinite(loss), step, self.first)

    def first_bad_step(self, ctx: Any) -> int | None:
        """The first bad step on any rank (a collective: every rank calls it at the same steps), or None."""
        bad = ctx.all_reduce_max((self.first >= 0).float())
        if not bad.item():
            return None
        # -1 (no bad step on this rank) must not win the minimum: negate and take the maximum of the rest.
        flipped = torch.where(self.first >= 0, -self.first, torch.full_like(self.first, -(2**62)))
        return int(-ctx.all_reduce_max(flipped).item())


class AuxForward(nn.Module):
    """A model with auxiliary classifiers (GoogLeNet's, ``model.has_aux``) as training calls it: ``forward`` returns
    the logits and the auxiliary logits, so that a DDP wrapper around this module sees the forward it must see."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Any:
        return self.model.forward_with_aux(x)


def training_view(model: nn.Module) -> nn.Module:
    """What a training step calls: the model itself, or :class:`AuxForward` around it when it has auxiliary heads."""
    return AuxForward(model) if getattr(model, "has_aux", False) else model


class TrainStep:
    """One optimizer step of ``net`` (see the module docstring). ``engine`` (``train.engine.Engine``) supplies the
    autocast context and the input memory format; ``task`` the loss (``task.loss(output, target)``) and the errors
    counted on the training batches (``task.errors(output, target)``, a tensor or None); ``params`` are the parameters
    whose gradient norm ``grad_clip`` bounds (the unwrapped model's). A strategy whose step differs (the pipeline)
    overrides :meth:`forward_backward` and :meth:`clip` (and sets ``counts_errors`` False when it counts no training
    errors).
    """

    counts_errors = True

    def __init__(self, engine: Any, net: nn.Module, optimizer: torch.optim.Optimizer, task: Any, *,
                 params: Iterable[nn.Parameter] | None = None, grad_clip: float = 0.0,
                 distributed: bool = False) -> None:
        self.engine = engine
        self.net = net
        self.optimizer = optimizer
        self.task = task
        self.params = list(params if params is not None else net.parameters())
        self.grad_clip = grad_clip
        self.distributed = distributed  # True: ``net`` is DDP (or wraps it) and has ``no_sync``
        device = engine.device
        self.scaler = torch.amp.GradScaler(device.type, enabled=engine.amp == "fp16")
        self.watch = NonFiniteWatch(device)
        # The task's errors since reset_errors(); float: a mixed batch's misses are fractions (task.errors).
        self.wrong = torch.zeros((), dtype=torch.float32, device=device)

    def __call__(self, batches: Iterable[tuple[Tensor, Tensor]], count: int, lr: float, index: int) -> Tensor:
        """Run step ``index`` (0-based) over the ``count`` micro-batches of ``batches`` at learning rate ``lr``;
        returns the step's mean loss, detached, on the device."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss = self.forward_backward(batches, count)
        if self.scaler.is_enabled():
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                self.clip()
            self.scaler.step(self.optimizer)  # skips the step when a gradient is inf/NaN, then lowers the scale
            self.scaler.update()
        else:
            self.watch.see(loss, index)
            if self.grad_clip:
                self.clip()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def forward_backward(self, batches: Iterable[tuple[Tensor, Tensor]], count: int) -> Tensor:
        """Forward and backward of each micro-batch, the loss of each divided by ``count``; gradients are synced
        across data-parallel ranks on the last micro-batch only. Returns the mean loss."""
        total = torch.zeros((), device=self.engine.device)
        for i, (x, y) in enumerate(batches):
            x = self.engine.prepare_input(x)
            sync = self.net.no_sync() if self.distributed and i < count - 1 else contextlib.nullcontext()
            with sync:
                with self.engine.compute():
                    out = self.net(x)
                    loss = self.task.loss(out, y)
                self.scaler.scale(loss / count).backward()
            total += loss.detach() / count
            errors = self.task.errors(out, y)
            if errors is not None:
                self.wrong += errors
        return total

    def clip(self) -> None:
        nn.utils.clip_grad_norm_(self.params, self.grad_clip)

    def reset_errors(self) -> Tensor:
        """The top-1 misses on the training batches since the last call (on the device), and start counting anew."""
        wrong, self.wrong = self.wrong, torch.zeros_like(self.wrong)
        return wrong

    # ---- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])


def build_step(model: nn.Module, engine: Any, cfg: Any, *, say=print) -> tuple[nn.Module, TrainStep]:
    """The step ``convcanon train`` runs for ``model`` on one device, with ``cfg``'s optimizer, loss and clipping
    (a ``TrainConfig``): what the benchmarks and experiments call. Places the model (``engine.prepare_model``) and
    returns it with the step; the step's ``net`` is the model as training calls it (compiled when the engine says)."""
    from .optim import build_optimizer

    model = engine.prepare_model(model)
    optimizer = build_optimizer(model, cfg, engine.device)
    net = engine.maybe_compile(training_view(model), say)
    task = ClassificationTask.for_run(cfg)
    return model, TrainStep(engine, net, optimizer, task, params=model.parameters(), grad_clip=cfg.grad_clip)


__all__ = ["AuxForward", "NonFiniteLossError", "NonFiniteWatch", "TrainStep", "build_step", "training_view"]
