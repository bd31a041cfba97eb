"""Augmentation of whole uint8 batches with tensor ops on the device (no per-sample Python, as in airbench).

Random crop with zero padding is one gather: ``unfold`` views every (H, W) window of the zero-padded batch, and
advanced indexing copies out window ``(oy[n], ox[n])`` of sample ``n`` (one index per sample, not four index tensors
with one entry per pixel). Horizontal flip is one ``torch.where`` on the per-sample mask. The random
offsets and flips are drawn from a CPU generator the caller seeds (see ``base.derive_seed``) for the whole global
batch, so every rank's share is the same whatever the number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class BatchAugment:
    """Pad by ``pad`` zeros, crop back to the input size at a random offset, and flip with probability 1/2."""

    pad: int = 0
    flip: bool = False

    @property
    def active(self) -> bool:
        return self.pad > 0 or self.flip

    def describe(self, size: int) -> str:
        parts = [f"pad {self.pad} + random crop {size}"] if self.pad else []
        parts += ["horizontal flip"] if self.flip else []
        return " + ".join(parts) or "none"

    def draw(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Offsets ``oy, ox`` in ``0..2*pad`` and the flip mask for ``n`` samples (always the same three draws)."""
        offsets = torch.randint(0, 2 * self.pad + 1, (2, n), generator=gen)
        flip = torch.randint(0, 2, (n,), generator=gen).bool() & self.flip
        return offsets[0], offsets[1], flip

    def __call__(self, x: Tensor, oy: Tensor, ox: Tensor, flip: Tensor) -> Tensor:
        return crop_flip(x, self.pad, oy.to(x.device), ox.to(x.device), flip.to(x.device) if self.flip else None)


def crop_flip(x: Tensor, pad: int, oy: Tensor, ox: Tensor, flip: Tensor | None = None) -> Tensor:
    """Crop ``x`` (N, C, H, W) zero-padded by ``pad`` at per-sample offsets ``(oy, ox)`` in ``0..2*pad`` back to
    (H, W), and mirror the samples where ``flip`` is true. Offset ``pad`` with no flip is the identity."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    windows = padded.unfold(2, h, 1).unfold(3, w, 1)  # (N, C, 2p+1, 2p+1, H, W), a view
    out = windows[torch.arange(n, device=x.device), :, oy, ox]  # (N, C, H, W)
    return out if flip is None else torch.where(flip.view(n, 1, 1, 1), out.flip(-1), out)
