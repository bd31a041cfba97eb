"""The task: what the loss is, kept apart from the engine that runs it (devices, precision, checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..layers import ModelOutput


@dataclass(frozen=True)
class ClassificationTask:
    """Cross-entropy on the main logits plus ``aux_weight`` x each auxiliary head's loss (GoogLeNet, 0.3 in the paper,
    sec. 5: "their loss gets added to the total loss of the network with a discount weight")."""

    label_smoothing: float = 0.0
    aux_weight: float = 0.3

    def loss(self, output: Tensor | ModelOutput, target: Tensor) -> Tensor:
        if isinstance(output, ModelOutput):
            loss = F.cross_entropy(output.logits.float(), target, label_smoothing=self.label_smoothing)
            for aux in output.aux:
                loss = loss + self.aux_weight * F.cross_entropy(aux.float(), target,
                                                                label_smoothing=self.label_smoothing)
            return loss
        return F.cross_entropy(output.float(), target, label_smoothing=self.label_smoothing)

    def errors(self, output: Tensor | ModelOutput, target: Tensor) -> Tensor:
        """Top-1 misses of the main logits (a tensor on the device: no host sync)."""
        logits = output.logits if isinstance(output, ModelOutput) else output
        return (logits.detach().argmax(1) != target).sum()
