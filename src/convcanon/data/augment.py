"""Augmentation of whole uint8 batches with tensor ops on the device (no per-sample Python, as in airbench).

Random crop with zero padding is one gather: ``unfold`` views every (H, W) window of the zero-padded batch, and
advanced indexing copies out window ``(oy[n], ox[n])`` of sample ``n`` (one index per sample, not four index tensors
with one entry per pixel). Horizontal flip is one ``torch.where`` on the per-sample mask. The random
offsets and flips are drawn from a CPU generator the caller seeds (see ``base.derive_seed``) for the whole global
batch, so every rank's share is the same whatever the number of ranks.
"""

from __future__ import annotations

import math
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


# ---------------------------------------------------------------------------------------------------------------------
# The whole recipe (``recipe.Recipe``) on whole batches: the geometry vectorized, the policies and random erasing
# through torchvision.transforms.v2 one sample at a time, each sample under its own seed.

_TRIES = 10  # torchvision's RandomResizedCrop tries ten boxes before its central-crop fallback


@dataclass(frozen=True)
class Draws:
    """The random geometry of every position of an epoch: pad-crop offsets, flips, random-resized-crop boxes."""

    oy: Tensor
    ox: Tensor
    flip: Tensor
    boxes: Tensor | None  # (n, 4) top, left, height, width; None without a random-resized crop

    def at(self, first: int, count: int, device: torch.device) -> Draws:
        part = (t[first:first + count].to(device) if t is not None else None
                for t in (self.oy, self.ox, self.flip, self.boxes))
        return Draws(*part)


class BatchRecipe:
    """A ``Recipe`` applied to uint8 (N, C, S, S) batches on their device.

    Order, as torchvision's reference recipe: crop (pad-and-crop, or random-resized crop), flip, policy, random erasing;
    the caller normalizes. Randomness: the geometry of every position of an epoch is drawn at once from one generator
    (``draw``); the policy and the erasing of the sample at position ``p`` run under the global CPU generator seeded
    with ``seeds[p]`` inside ``fork_rng``, so the caller's RNG state is untouched.
    """

    def __init__(self, recipe, side: int):
        self.recipe, self.side = recipe, side
        self.policy, self.erase = None, None
        if recipe.aa == "none" and not recipe.reprob:
            return  # torchvision takes seconds to import: the embedded run never needs it
        from torchvision.transforms import v2

        # torchvision's policies take nearest or bilinear on tensors (bicubic only on PIL images)
        interp = v2.InterpolationMode.NEAREST if recipe.interpolation == "nearest" else v2.InterpolationMode.BILINEAR
        self.policy = {"none": None, "trivialaugment": v2.TrivialAugmentWide(interpolation=interp),
                       "randaugment": v2.RandAugment(interpolation=interp),
                       "autoaugment": v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=interp)}[recipe.aa]
        fill = [round(255 * m) for m in recipe.mean]  # the mean colour: 0 once normalized, as in torchvision's recipe
        self.erase = v2.RandomErasing(p=recipe.reprob, value=fill) if recipe.reprob else None

    @property
    def per_sample(self) -> bool:
        return self.policy is not None or self.erase is not None

    def draw(self, n: int, gen: torch.Generator) -> Draws:
        r = self.recipe
        offsets = torch.randint(0, 2 * r.pad + 1, (2, n), generator=gen)
        flip = torch.rand(n, generator=gen) < r.hflip
        boxes = rrc_boxes(n, self.side, r.scale, r.ratio, gen) if r.scale is not None else None
        return Draws(offsets[0], offsets[1], flip, boxes)

    def __call__(self, x: Tensor, draws: Draws, seeds: list[int] | None = None) -> Tensor:
        r = self.recipe
        if r.scale is not None:
            x = resized_crop(x, draws.boxes, draws.flip if r.hflip else None, r.train_crop, r.interpolation)
        else:
            if r.pad or r.hflip:
                x = crop_flip(x, r.pad, draws.oy, draws.ox, draws.flip if r.hflip else None)
            if x.shape[-1] != r.train_crop:
                x = resize_square(x, r.train_crop)
        if self.per_sample and seeds is not None:
            x = self.each_sample(x, seeds)
        return x

    def each_sample(self, x: Tensor, seeds: list[int]) -> Tensor:
        out = []
        with torch.random.fork_rng(devices=[]):
            for sample, seed in zip(x, seeds, strict=True):
                torch.default_generator.manual_seed(seed)  # not torch.manual_seed: that also seeds every accelerator
                if self.policy is not None:
                    sample = self.policy(sample)
                if self.erase is not None:
                    sample = self.erase(sample)
                out.append(sample)
        return torch.stack(out)


def rrc_boxes(n: int, side: int, scale: tuple[float, float], ratio: tuple[float, float],
              gen: torch.Generator) -> Tensor:
    """``n`` boxes (top, left, height, width) on a ``side`` x ``side`` image by torchvision's RandomResizedCrop rule,
    vectorized: ten tries each, the first that fits wins, else the central crop at the nearest allowed ratio. Always
    the same draws (4 x 10 x n uniforms), so the stream does not depend on which tries fit."""
    u = torch.rand(4, _TRIES, n, generator=gen, dtype=torch.float64)
    area = side * side * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= side) & (h > 0) & (h <= side)
    first = fits.to(torch.int8).argmax(0)  # the first try that fits (0 when none does: masked below)
    pick = first.view(1, n)
    w, h = w.gather(0, pick)[0], h.gather(0, pick)[0]
    top = (u[2].gather(0, pick)[0] * (side - h + 1)).floor()
    left = (u[3].gather(0, pick)[0] * (side - w + 1)).floor()
    if ratio[0] > 1:
        fw, fh = side, round(side / ratio[0])
    elif ratio[1] < 1:
        fw, fh = round(side * ratio[1]), side
    else:
        fw, fh = side, side
    ok = fits.any(0)
    box = torch.stack([torch.where(ok, top, float((side - fh) // 2)), torch.where(ok, left, float((side - fw) // 2)),
                       torch.where(ok, h, float(fh)), torch.where(ok, w, float(fw))], dim=1)
    return box.to(torch.int64)


def resized_crop(x: Tensor, boxes: Tensor, flip: Tensor | None, size: int, interpolation: str) -> Tensor:
    """Crop box ``boxes[n]`` (top, left, height, width) of each sample of uint8 ``x`` and resize it to ``size``
    square, mirrored where ``flip``: one ``grid_sample`` for the batch (the flip is the sign of the affine map's x
    scale). No antialiasing: the crops of small in-memory images are mostly enlarged."""
    n, _, hgt, wid = x.shape
    b = boxes.to(x.device, torch.float32)
    sx, sy = b[:, 3] / wid, b[:, 2] / hgt
    tx, ty = (2 * b[:, 1] + b[:, 3]) / wid - 1, (2 * b[:, 0] + b[:, 2]) / hgt - 1
    if flip is not None:
        sx = torch.where(flip.to(x.device), -sx, sx)
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    out = F.grid_sample(x.to(torch.float32), grid, mode=interpolation, padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize_square(x: Tensor, size: int) -> Tensor:
    """uint8 (N, C, H, W) -> (N, C, size, size), bilinear with antialiasing, rounded."""
    out = F.interpolate(x.to(torch.float32), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def eval_resize_crop(x: Tensor, resize: int, crop: int) -> Tensor:
    """Evaluation's preprocessing of square uint8 images: resize to ``resize``, then the center ``crop``."""
    if x.shape[-1] != resize:
        x = resize_square(x, resize)
    top = int(round((resize - crop) / 2))  # torchvision's CenterCrop
    return x[..., top:top + crop, top:top + crop].contiguous()
