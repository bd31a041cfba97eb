"""What every data set offers the training loop, and the one rule for the order in which it is read.

The order rule makes data parallelism and resume exact (DESIGN.md, "Bit-exact resume"):

- An epoch is one global permutation of the training set, ``torch.randperm(train_size)`` under a generator seeded by
  ``derive_seed(seed, epoch)``. Global batch ``i`` is ``perm[i*B*W:(i+1)*B*W]`` (``B`` images per rank, ``W`` ranks);
  rank ``r`` takes the slice ``[r*B:(r+1)*B]`` of it. One rank with batch ``2B`` therefore sees exactly the union of
  what two ranks with batch ``B`` see, in the same step.
- The last incomplete global batch is dropped, so every step has the same global batch (the linear scaling rule and
  batch norm both assume it): ``num_train_batches = train_size // (B*W)``. A different sample is dropped each epoch.
- Augmentation draws its randomness from generators seeded by ``derive_seed(seed, epoch, batch or sample index)``,
  never from the global RNG, so resuming at batch ``k`` reproduces batches ``k..`` exactly and the training loop's own
  RNG streams (dropout) are untouched by the data path.
- Test batches are unaugmented, in a fixed order; rank ``r`` of ``W`` gets the contiguous share
  ``shard_range(test_size, r, W)``: no padding and no duplicates, so the union over ranks is the test set exactly once
  (shares differ by at most one image, so ranks may yield different numbers of batches).
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass(frozen=True)
class DataInfo:
    """What a data set is, without its pixels (saved with every run and checkpoint)."""

    name: str  # digits, synthetic, cifar10, cifar100, folder
    num_classes: int
    classes: tuple[str, ...]
    in_chans: int
    image_size: int  # square side fed to the model
    train_size: int
    test_size: int
    mean: tuple[float, ...]  # per channel, on the 0..1 scale, used to normalize
    std: tuple[float, ...]
    source: str  # the folder read, or the package the data came from
    spec: str = ""  # the --data value that opens this data set again
    augment: str = ""  # the training augmentation, in words
    skipped: int = 0  # bad files left out (folder data with skip_bad)
    recipe: dict = field(default_factory=dict)  # the resolved augmentation (recipe.Recipe.as_dict) and ra_reps
    eval_resize: int = 0  # without a recipe: the side evaluation resizes to before the center crop (0: no crop)

    def preprocessing(self) -> dict[str, Any]:
        """How an image becomes the model's input in evaluation (the recipe's ``val_resize``/``val_crop``): resize the
        shorter side to ``resize`` (antialiased ``interpolation``), center-crop ``crop``, scale to 0..1, normalize by
        ``mean`` and ``std`` (per channel). Recorded with the weights so that ``convcanon predict`` and ``load_model``
        feed a model what it was evaluated on."""
        r = self.recipe
        crop = int(r.get("val_crop", self.image_size))
        return {"input_size": [self.in_chans, crop, crop], "resize": int(r.get("val_resize", self.eval_resize or crop)),
                "crop": crop, "interpolation": r.get("interpolation", "bilinear"), "mean": list(self.mean),
                "std": list(self.std)}


@runtime_checkable
class DataSource(Protocol):
    info: DataInfo

    def num_train_batches(self, batch_size: int, world_size: int = 1) -> int: ...

    def train_batches(self, epoch: int, batch_size: int, *, seed: int, start: int = 0, rank: int = 0,
                      world_size: int = 1, device: torch.device | str = "cpu") -> Iterator[tuple[Tensor, Tensor]]: ...

    def test_batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1,
                     device: torch.device | str = "cpu") -> Iterator[tuple[Tensor, Tensor]]: ...


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (the same in every process, unlike ``hash``).

    Hashing rather than ``seed * 1_000_003 + epoch`` keeps nearby tuples, e.g. (seed, epoch + 1) and (seed + 1, epoch),
    from ever giving related streams.
    """
    ints = tuple(operator.index(p) for p in parts)  # operator.index refuses floats, which int() would truncate
    digest = hashlib.blake2b(repr(ints).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by ``derive_seed(*parts)``; CPU so that draws are identical on every device."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def epoch_permutation(train_size: int, *, seed: int, epoch: int) -> Tensor:
    """The global order of the training set in ``epoch`` (int64, CPU)."""
    return torch.randperm(train_size, generator=generator(seed, epoch))


def epoch_order(train_size: int, *, seed: int, epoch: int, reps: int = 1) -> Tensor:
    """The global order of the training set in ``epoch``: its permutation, or with ``reps`` > 1 repeated augmentation
    (Hoffer et al. 2020, torchvision's ``--ra-sampler``): each image of the permutation ``reps`` times in a row, cut
    to ``train_size`` positions, so an epoch keeps its length and shows ``ceil(train_size / reps)`` images, each
    ``reps`` times in the same global batch with different augmentations (they are drawn per position). At one process
    this is torchvision's RASampler order; it stays one global order at any number of processes."""
    perm = epoch_permutation(train_size, seed=seed, epoch=epoch)
    return perm if reps == 1 else perm.repeat_interleave(reps)[:train_size]


def num_train_batches(train_size: int, batch_size: int, world_size: int = 1) -> int:
    """Steps per epoch: full global batches only (the last incomplete one is dropped)."""
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch size ({batch_size}) and world size ({world_size}) must be at least 1")
    global_batch = batch_size * world_size
    if global_batch > train_size:
        raise ValueError(
            f"the global batch ({batch_size} per rank x {world_size} ranks = {global_batch}) is larger than the "
            f"{train_size} training images: lower --batch-size"
        )
    return train_size // global_batch


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")


def check_start(start: int, num_batches: int) -> None:
    if not 0 <= start <= num_batches:
        raise ValueError(f"start batch {start} is outside 0..{num_batches} (batches in this epoch)")


def rank_slice(perm: Tensor, batch: int, batch_size: int, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s share of global batch ``batch`` of ``perm``."""
    first = batch * batch_size * world_size + rank * batch_size
    return perm[first:first + batch_size]


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous share of ``n`` test images; the shares partition ``range(n)``."""
    check_rank(rank, world_size)
    return range(rank * n // world_size, (rank + 1) * n // world_size)


def as_device(device: torch.device | str) -> torch.device:
    """``device`` with its index filled in, so that "cuda" and "cuda:0" share one cache entry."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class Normalizer:
    """uint8 (N, C, H, W) -> float32 ``(x / 255 - mean) / std``, one fused multiply-subtract on the device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean, self.std = mean, std
        self._cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __call__(self, x: Tensor) -> Tensor:
        if x.device not in self._cache:
            mean = torch.tensor(self.mean, dtype=torch.float64)
            std = torch.tensor(self.std, dtype=torch.float64)
            scale = (1 / (255 * std)).to(torch.float32).view(-1, 1, 1).to(x.device)
            shift = (mean / std).to(torch.float32).view(-1, 1, 1).to(x.device)
            self._cache[x.device] = (scale, shift)
        scale, shift = self._cache[x.device]
        return x.to(torch.float32).mul_(scale).sub_(shift).contiguous()


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images on the 0..1 scale, in float64 chunks."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for part in images.split(chunk):
        part = part.to(torch.float64) / 255
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std < 1e-6, torch.ones_like(std), std)  # a constant channel: keep it, do not divide by 0
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)
