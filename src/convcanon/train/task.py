"""The task: what the loss is, kept apart from the engine that runs it (devices, precision, checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..layers import ModelOutput

# The main job's measured recipe (BENCHMARKS.md); elsewhere the papers' and torchvision's reference default, none.
MAIN_JOB_LABEL_SMOOTHING = 0.1


def resolve_label_smoothing(cfg: Any) -> tuple[float, str]:
    """``--label-smoothing`` auto: 0.1 for the embedded digits (the main job's recipe), 0 elsewhere; and why."""
    if cfg.label_smoothing is not None:
        return cfg.label_smoothing, "as asked"
    if cfg.data == "digits":
        return MAIN_JOB_LABEL_SMOOTHING, "auto: the main job's recipe"
    return 0.0, "auto: off (on for the embedded digits only, as in the papers' recipes); timm's default is 0.1"


def describe_label_smoothing(cfg: Any) -> str:
    """The start-up line: the smoothing a run uses, and why."""
    smoothing, why = resolve_label_smoothing(cfg)
    return f"label smoothing: {smoothing:g} ({why}; --label-smoothing)"


@dataclass(frozen=True)
class ClassificationTask:
    """Cross-entropy on the main logits plus ``aux_weight`` x each auxiliary head's loss (GoogLeNet, 0.3 in the paper,
    sec. 5: "their loss gets added to the total loss of the network with a discount weight").

    A target is class indices (N,) or, under MixUp/CutMix (``train.mixing``), class probabilities (N, classes) whose
    rows sum to 1; label smoothing applies to either: ``(1 - eps) * target + eps / classes``."""

    label_smoothing: float = 0.0
    aux_weight: float = 0.3

    @classmethod
    def for_run(cls, cfg: Any) -> ClassificationTask:
        """The task of a ``TrainConfig``: its label smoothing (resolved) and auxiliary weight."""
        return cls(label_smoothing=resolve_label_smoothing(cfg)[0], aux_weight=cfg.aux_weight)

    def loss(self, output: Tensor | ModelOutput, target: Tensor) -> Tensor:
        if isinstance(output, ModelOutput):
            loss = F.cross_entropy(output.logits.float(), target, label_smoothing=self.label_smoothing)
            for aux in output.aux:
                loss = loss + self.aux_weight * F.cross_entropy(aux.float(), target,
                                                                label_smoothing=self.label_smoothing)
            return loss
        return F.cross_entropy(output.float(), target, label_smoothing=self.label_smoothing)

    def errors(self, output: Tensor | ModelOutput, target: Tensor) -> Tensor:
        """Top-1 misses of the main logits (a tensor on the device: no host sync). Against probability targets (a mixed
        batch) a prediction counts by the weight its class has in the image: a blend of a 3 (0.7) and a 5 (0.3)
        predicted 3 is 0.3 of a miss, predicted 5 0.7, anything else 1 (the accuracy of Zhang et al.'s mixup code,
        ``lam * hit(a) + (1 - lam) * hit(b)``); never against the arg-max of the blended target."""
        logits = output.logits if isinstance(output, ModelOutput) else output
        pred = logits.detach().argmax(1)
        if target.is_floating_point():
            return target.shape[0] - target.gather(1, pred[:, None]).sum()
        return (pred != target).sum()

