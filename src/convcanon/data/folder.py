"""ImageNet-style ImageFolder trees (``train/CLASS/*``, ``val/CLASS/*``), decoded by DataLoader workers.

Transforms are torchvision's reference recipe: RandomResizedCrop(S) + horizontal flip for training, Resize(S*256/224)
+ CenterCrop(S) for evaluation (S = 224 by default). Workers return uint8 images (a quarter of the bytes of float32
through the worker pipes); normalization happens on the device.

The order follows ``base`` exactly (one permutation per epoch, a rank's slice of each global batch, ``start`` skips
whole batches without decoding them). Each sample's random crop and flip run under a CPU generator seeded by
``derive_seed(seed, epoch, sample index)`` inside ``torch.random.fork_rng``, so the pixels do not depend on the number
of workers, the number of ranks or the resume point, and the caller's RNG streams are left as they were.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .base import (
    DataInfo,
    Normalizer,
    as_device,
    check_rank,
    check_start,
    derive_seed,
    epoch_permutation,
    num_train_batches,
    rank_slice,
    shard_range,
)
from .images import load_rgb
from .memory import check_num_classes
from .scan import MAX_BAD_FRACTION, ScanReport, scan_folder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224


def train_transform(size: int) -> v2.Compose:
    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()])


def eval_transform(size: int) -> v2.Compose:
    # The 256/224 ratio of the ResNet and torchvision recipes: the center crop keeps 87.5% of the short side.
    return v2.Compose([v2.Resize(int(size * 256 / 224), antialias=True), v2.CenterCrop(size), v2.PILToTensor()])


class ImageFiles(Dataset):
    """Indexed by ``(index, seed)``: the image at ``index`` through the training transform seeded by ``seed``, or
    through the evaluation transform when ``seed`` is None. Returns a uint8 (3, S, S) tensor and the label."""

    def __init__(self, files: Sequence[tuple[str, int]], size: int):
        self.paths = [p for p, _ in files]
        self.labels = [label for _, label in files]
        self.train_tf, self.eval_tf = train_transform(size), eval_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int | None]) -> tuple[Tensor, int]:
        index, seed = key
        img = load_rgb(self.paths[index])
        if seed is None:
            return self.eval_tf(img), self.labels[index]
        # torchvision's random transforms draw from the global CPU generator: seed it inside fork_rng (CPU only,
        # so a CUDA generator is neither saved nor reseeded) and the caller's state comes back untouched.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.train_tf(img), self.labels[index]


class _Batches:
    """The batch sampler: lists of ``(index, seed)`` keys, computed lazily."""

    def __init__(self, batches: Sequence[Sequence[int]], seed_of: tuple[int, int] | None):
        self.batches, self.seed_of = batches, seed_of

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int | None]]]:
        for batch in self.batches:
            if self.seed_of is None:
                yield [(i, None) for i in batch]
            else:
                yield [(i, derive_seed(*self.seed_of, i)) for i in batch]


class FolderSource:
    """An ImageFolder tree checked by ``scan_folder``; see the module docstring for order and randomness."""

    def __init__(self, report: ScanReport, *, image_size: int = DEFAULT_IMAGE_SIZE, workers: int = 2,
                 skipped: int = 0, num_classes: int | None = None):
        n_classes = check_num_classes(num_classes, len(report.classes), f"the folder {report.root}")
        root = Path(report.root).absolute()  # the spec must reopen the data from any working directory
        self.report = report
        self.workers = workers
        self._train = ImageFiles(report.train, image_size)
        self._test = ImageFiles(report.val, image_size)
        self.info = DataInfo(
            name="folder", num_classes=n_classes, classes=report.classes, in_chans=3, image_size=image_size,
            train_size=len(report.train), test_size=len(report.val), mean=IMAGENET_MEAN, std=IMAGENET_STD,
            source=str(root), spec=f"folder:{root}", skipped=skipped,
            augment=f"RandomResizedCrop {image_size} + horizontal flip (eval: resize {int(image_size * 256 / 224)} "
                    f"+ center crop {image_size})",
        )
        self._normalize = Normalizer(IMAGENET_MEAN, IMAGENET_STD)

    def num_train_batches(self, batch_size: int, world_size: int = 1) -> int:
        return num_train_batches(self.info.train_size, batch_size, world_size)

    def train_batches(self, epoch: int, batch_size: int, *, seed: int, start: int = 0, rank: int = 0,
                      world_size: int = 1, device: torch.device | str = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
        check_rank(rank, world_size)
        steps = self.num_train_batches(batch_size, world_size)
        check_start(start, steps)
        perm = epoch_permutation(self.info.train_size, seed=seed, epoch=epoch)
        batches = [rank_slice(perm, step, batch_size, rank, world_size).tolist() for step in range(start, steps)]
        return self._load(self._train, _Batches(batches, (seed, epoch)), device)

    def test_batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1,
                     device: torch.device | str = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        share = shard_range(self.info.test_size, rank, world_size)
        batches = [list(range(i, min(i + batch_size, share.stop))) for i in range(share.start, share.stop, batch_size)]
        return self._load(self._test, _Batches(batches, None), device)

    def _load(self, files: ImageFiles, batches: _Batches,
              device: torch.device | str) -> Iterator[tuple[Tensor, Tensor]]:
        device = as_device(device)
        # A private generator: the DataLoader draws its workers' base seed from it instead of from the global RNG
        # (the pixels never depend on it, each sample is seeded on its own).
        loader = DataLoader(files, batch_sampler=batches, num_workers=self.workers, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(0))
        for x, y in loader:
            yield self._normalize(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)


def make_folder(path: str | Path, *, image_size: int | None = None, num_classes: int | None = None,
                skip_bad: bool = False, workers: int = 2, progress: bool = True) -> FolderSource:
    """Scan the tree (every file decoded), stop on bad files unless ``skip_bad``, and open it for training."""
    report = scan_folder(path, progress=progress, workers=workers)
    return folder_from_report(report, image_size=image_size, num_classes=num_classes, skip_bad=skip_bad,
                              workers=workers)


def folder_from_report(report: ScanReport, *, image_size: int | None = None, num_classes: int | None = None,
                       skip_bad: bool = False, workers: int = 2,
                       max_bad_fraction: float = MAX_BAD_FRACTION) -> FolderSource:
    """Open a scanned tree: stop on bad files unless ``skip_bad`` (and at most 1% bad), else say how many are left
    out. Data-parallel runs scan once on rank 0 and send the report to the other ranks (it pickles small), so that
    every rank reads the same file list without decoding the whole tree again."""
    report.check(skip_bad=skip_bad, max_bad_fraction=max_bad_fraction)
    if report.bad:
        print(f"skipping {len(report.bad)} bad files of {report.files} ({report.bad_fraction:.2%}) in {report.root}; "
              f"`convcanon scan {report.root}` lists them", file=sys.stderr)
    return FolderSource(report, image_size=image_size or DEFAULT_IMAGE_SIZE, workers=workers,
                        skipped=len(report.bad), num_classes=num_classes)
