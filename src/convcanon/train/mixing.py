"""MixUp and CutMix on whole batches, on the device: a pure function of (seed, epoch, micro-batch index).

What torchvision.transforms.v2.MixUp/CutMix compute (timm's ``Mixup`` in its "batch" mode), with two changes that keep
a run exact under resume and data parallelism:

- the draws (whether the batch is mixed, MixUp or CutMix, the weight, the box) come from a generator seeded by
  ``derive_seed(seed, MIX_STREAM, epoch, index)``, not from the global random state: a resumed run, and every
  data-parallel rank, draws the same values for the same micro-batch without any state to carry;
- each image is paired with its neighbour in the batch (positions 2i and 2i + 1; an odd last image with itself)
  instead of the batch rolled by one (torchvision) or reversed (timm). The batch is already in random order, so the
  pairs are as random, and with an even per-device batch no pair crosses a rank's shard: N processes mix exactly the
  images one process mixes with the same global batch.

MixUp (Zhang et al. 2018): ``x = lam * x + (1 - lam) * x[pair]`` with ``lam ~ Beta(alpha, alpha)``. CutMix (Yun et al.
2019): a box of area about ``(1 - lam)`` of the image, centred uniformly, is pasted from the pair; ``lam`` is then the
share of the image left, after clipping the box to the image (torchvision's box). The targets are blended by the same
``lam``: ``lam * onehot(y) + (1 - lam) * onehot(y[pair])``, rows of (N, classes) that sum to 1, which the task's
cross-entropy takes as class probabilities; label smoothing then applies to the mixed target as a whole
(``(1 - eps) * mixed + eps / classes``: what ``F.cross_entropy(..., label_smoothing=eps)`` does to probability
targets, and what torchvision's reference and timm's ``mixup_target`` compute). A batch left unmixed (``mixup_prob``)
gets one-hot targets, so every batch of a mixing run has the same kind of target.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .reproducibility import derive_seed

MIX_STREAM = 0x4D495855  # "MIXU": keeps the mixing draws apart from every other stream of the same seed


@dataclass(frozen=True)
class MixDraw:
    """What one micro-batch gets: ``kind`` none | mixup | cutmix, the weight ``lam`` of each image's own content (after
    the box is clipped, for CutMix) and CutMix's box rows ``y0:y1`` and columns ``x0:x1``."""

    kind: str
    lam: float = 1.0
    box: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass(frozen=True)
class BatchMixing:
    """MixUp/CutMix settings (timm's names: ``mixup``, ``cutmix`` alphas, ``prob``, ``switch_prob``) for a data set of
    ``num_classes`` classes; ``seed`` is the run's."""

    mixup: float
    cutmix: float
    num_classes: int
    seed: int
    prob: float = 1.0
    switch_prob: float = 0.5

    @classmethod
    def from_config(cls, cfg: Any, num_classes: int) -> BatchMixing | None:
        """The mixing of a ``TrainConfig``, or None when both alphas are 0."""
        if not (cfg.mixup > 0 or cfg.cutmix > 0):
            return None
        return cls(cfg.mixup, cfg.cutmix, num_classes, cfg.seed, cfg.mixup_prob, cfg.mixup_switch_prob)

    def describe(self) -> str:
        kinds = [f"{name} alpha {a:g}" for name, a in (("MixUp", self.mixup), ("CutMix", self.cutmix)) if a > 0]
        switch = f", CutMix on {self.switch_prob:.0%} of mixed batches" if len(kinds) == 2 else ""
        return (f"batch mixing: {' and '.join(kinds)} on {self.prob:.0%} of batches{switch}; images paired 2i/2i+1; "
                "training top-1 counts a prediction of either label by its weight")

    def draw(self, epoch: int, index: int, height: int, width: int) -> MixDraw:
        """The draw of micro-batch ``index`` of ``epoch`` (a pure function of the seed and these; the same on every
        rank). Five values are always drawn in the same order, so no branch shifts another's."""
        rng = np.random.default_rng(derive_seed(self.seed, MIX_STREAM, epoch, index))
        u_apply, u_switch, cy, cx = rng.random(4)
        if u_apply >= self.prob:
            return MixDraw("none")
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or u_switch < self.switch_prob)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(rng.beta(alpha, alpha))
        if not use_cutmix:
            return MixDraw("mixup", lam)
        # torchvision's CutMix box: a centre drawn uniformly, sides sqrt(1 - lam) of the image's, clipped to the image.
        ry, rx = int(cy * height), int(cx * width)
        half = 0.5 * math.sqrt(1.0 - lam)
        hh, hw = int(half * height), int(half * width)
        y0, y1, x0, x1 = max(ry - hh, 0), min(ry + hh, height), max(rx - hw, 0), min(rx + hw, width)
        return MixDraw("cutmix", 1.0 - (y1 - y0) * (x1 - x0) / (height * width), (y0, y1, x0, x1))

    def __call__(self, x: Tensor, y: Tensor, draw: MixDraw) -> tuple[Tensor, Tensor]:
        """Images ``x`` (N, C, H, W) and labels ``y`` (N,) mixed as ``draw`` says; returns the images and the (N,
        classes) float targets."""
        target = F.one_hot(y, self.num_classes).float()
        if draw.kind == "none":
            return x, target
        pair = partners(x.shape[0], x.device)
        if draw.kind == "mixup":
            x = x * draw.lam + x[pair] * (1.0 - draw.lam)
        else:
            y0, y1, x0, x1 = draw.box
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = x[pair, :, y0:y1, x0:x1]  # the partners' boxes only, not a copy of the batch
        return x, target * draw.lam + target[pair] * (1.0 - draw.lam)

    def batches(self, batches: Iterable[tuple[Any, Any]], epoch: int, start: int) -> Iterator[tuple[Any, Any]]:
        """``batches`` (micro-batches ``start``, ``start + 1``, ... of ``epoch``) mixed; ``(None, None)`` (a pipeline's
        middle stages, which read no data) passes through."""
        for index, (x, y) in enumerate(batches, start):
            if x is None:
                yield x, y
            else:
                yield self(x, y, self.draw(epoch, index, x.shape[-2], x.shape[-1]))


def partners(n: int, device: torch.device | str) -> Tensor:
    """The pair of each position: 0<->1, 2<->3, ...; the last of an odd batch with itself."""
    pair = torch.arange(n, device=device) ^ 1
    return torch.where(pair < n, pair, torch.arange(n, device=device))


__all__ = ["BatchMixing", "MIX_STREAM", "MixDraw", "partners"]
