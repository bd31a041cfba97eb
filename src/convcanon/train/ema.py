"""An exponential moving average of the weights (``--model-ema``), evaluated beside the raw model.

What torchvision's reference keeps (``torch.optim.swa_utils.AveragedModel`` with an EMA ``avg_fn`` and ``use_buffers``:
parameters and floating-point buffers, i.e. batch norm's running statistics, averaged alike) and how it sets the decay:

- every ``--model-ema-steps`` optimizer steps, ``ema = decay * ema + (1 - decay) * weights`` (``torch._foreach_lerp_``,
  as ``swa_utils.get_ema_multi_avg_fn``); integer buffers (batch norm's step counter) are copied;
- the decay per update is ``1 - (1 - --model-ema-decay) x global batch x --model-ema-steps / --epochs``, clipped to
  [0, 1] (torchvision's ``adjust``): the average then spans about ``--epochs / (1 - DECAY)`` images whatever the batch
  and the interval (the main job: 40 / 0.005 = 8,000 images, about 6 of its 40 epochs);
- during warmup the average is a copy of the weights (torchvision resets it each warmup step), so it starts from the
  warmed-up model rather than from the random initialization.

Written here rather than with ``AveragedModel`` itself because its update reads ``n_averaged`` back from the device
twice per call (a host sync per update on a GPU); the counter here lives on the host and is saved in the checkpoint with
the average, so a resumed run continues it exactly. Under data parallelism every rank keeps its own copy and updates it
from identical parameters; the buffers, which DDP only equalizes at the next forward, are first taken from rank 0
(``Strategy.sync_buffers``), so the copies stay equal, and every evaluation checks that they are.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn


def resolve_model_ema(cfg: Any) -> tuple[bool, str]:
    """Whether the run keeps an EMA, and why (``--model-ema`` auto: on for the embedded digits, the main job)."""
    return ema_choice(cfg.model_ema, cfg.data, cfg.pipeline_stages)


def ema_choice(asked: bool | None, data: str | None, pipeline_stages: int = 1) -> tuple[bool, str]:
    """``--model-ema`` resolved for ``--data`` (a train spec or the estimator's data set name), and why: as asked, else
    on for the embedded digits only, and never with a pipeline."""
    if asked is not None:
        return asked, "as asked"
    if pipeline_stages > 1:
        return False, "auto: off with --pipeline-stages"
    if data == "digits":
        return True, "auto: on for the embedded digits (the main job's recipe); --no-model-ema to turn it off"
    return False, "auto: off (on for the embedded digits only); --model-ema to turn it on"


def decay_per_update(decay: float, global_batch: int, interval: int, epochs: int) -> float:
    """torchvision's adjustment (references/classification/train.py): ``1 - min(1, (1 - decay) x global batch x
    interval / epochs)``."""
    return 1.0 - min(1.0, (1.0 - decay) * global_batch * interval / epochs)


class ModelEma:
    """The average of ``model``'s parameters and buffers (a copy of the module, in eval mode, without gradients)."""

    def __init__(self, model: nn.Module, decay: float, interval: int = 1, warmup_steps: int = 0) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.interval, self.warmup_steps = decay, interval, warmup_steps
        self.updates = 0  # averaging updates since the last copy (0: the next update copies)
        self._listed: tuple[nn.Module, Any, Any] | None = None

    @classmethod
    def for_run(cls, cfg: Any, plan: Any, model: nn.Module) -> ModelEma:
        decay = decay_per_update(cfg.model_ema_decay, plan.global_batch, cfg.model_ema_steps, plan.epochs)
        return cls(model, decay, cfg.model_ema_steps, plan.warmup_steps)

    def describe(self, reason: str) -> str:
        horizon = self.interval / max(1.0 - self.decay, 1e-12)
        return (f"weight EMA: decay {self.decay:.6g} per update every {self.interval} step(s) (about the last "
                f"{horizon:.0f} steps), a copy during the {self.warmup_steps} warmup steps; {reason}")

    def due(self, step: int) -> bool:
        """Whether the update after optimizer step ``step`` (1-based: the steps done) happens."""
        return step % self.interval == 0

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Average ``model`` in after optimizer step ``step`` (1-based); call when :meth:`due`."""
        floats, others = self._pairs(model)
        if self.updates > 0 and step > self.warmup_steps:
            if floats[0]:
                torch._foreach_lerp_(floats[0], floats[1], 1.0 - self.decay)
            if others[0]:
                torch._foreach_copy_(others[0], others[1])
        else:
            torch._foreach_copy_(floats[0] + others[0], floats[1] + others[1])
        self.updates = self.updates + 1 if step > self.warmup_steps else 0

    def _pairs(self, model: nn.Module) -> tuple[tuple[list[Tensor], list[Tensor]], tuple[list[Tensor], list[Tensor]]]:
        """(average, model) tensor lists, floating point and not, listed once per model: walking the modules on
        every step cost more than the update itself on the main job's small network."""
        if self._listed is None or self._listed[0] is not model:
            floats: tuple[list[Tensor], list[Tensor]] = ([], [])
            others: tuple[list[Tensor], list[Tensor]] = ([], [])
            for mine, theirs in zip(self._tensors(self.module), self._tensors(model), strict=True):
                kind = floats if mine.is_floating_point() else others
                kind[0].append(mine)
                kind[1].append(theirs)
            self._listed = (model, floats, others)
        return self._listed[1], self._listed[2]

    @staticmethod
    def _tensors(module: nn.Module) -> list[Tensor]:
        return [*module.parameters(), *module.buffers()]

    def fingerprint(self) -> Tensor:
        """One float64 sum per tensor of the average: equal on two ranks only if their averages are (to the bit, for
        any difference the sums do not cancel)."""
        return torch.stack([t.detach().double().sum() for t in self._tensors(self.module)])

    # ---- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def better(ema: dict[str, Any], raw: dict[str, Any]) -> bool:
    """Whether the average's evaluation beats the raw model's: higher top-1, or the same top-1 at a lower loss."""
    return (ema["top1"], -ema["loss"]) > (raw["top1"], -raw["loss"])


__all__ = ["ModelEma", "better", "decay_per_update", "ema_choice", "resolve_model_ema"]
