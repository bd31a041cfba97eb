"""The task: what the loss is, kept apart from the engine that runs it (devices, precision, checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


class WithAuxLogits(nn.Module):
    """Runs the model's ``forward_with_aux``: the logits and, in training, the auxiliary classifiers' logits, so that
    the loss trains them too. A module, so that DDP wraps it and sees a forward; it holds the model itself (its state
    dict is the model's under ``model.``): save the model, not this."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> ModelOutput:
        return self.model.forward_with_aux(x)


def training_module(model: nn.Module) -> nn.Module:
    """What the training step calls: the model itself, or :class:`WithAuxLogits` around it when it has auxiliary
    heads (the model contract's ``has_aux``: GoogLeNet with ``aux_heads=True``), whose ``forward`` gives logits only."""
    return WithAuxLogits(model) if getattr(model, "has_aux", False) else model


def topk_correct(logits: Tensor, target: Tensor, ks: tuple[int, ...]) -> Tensor:
    """Number of samples whose target is among the top-k predictions, for each k (a tensor, no host sync)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hits = pred.eq(target[:, None])
    return torch.stack([hits[:, : min(k, maxk)].any(dim=1).sum() for k in ks])
