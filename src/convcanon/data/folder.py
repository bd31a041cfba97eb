"""ImageNet-style ImageFolder trees (``train/CLASS/*``, ``val/CLASS/*``), decoded by DataLoader workers.

Transforms are the recipe's (``recipe.py``), by default torchvision's reference one: RandomResizedCrop(S) + horizontal
flip for training, Resize(S*256/224) + CenterCrop(S) for evaluation (S = 224 by default); policies and random erasing
are torchvision.transforms.v2's classes in the same per-sample pipeline. Workers return uint8 images (a quarter of the
bytes of float32 through the worker pipes); normalization happens on the device. A tree that fits in memory can be
decoded once instead (``folder_cache``).

The order follows ``base`` exactly (one permutation per epoch, a rank's slice of each global batch, ``start`` skips
whole batches without decoding them). Each sample's random transforms run under a CPU generator seeded by
``derive_seed(seed, epoch, sample index)`` (with the copy number under repeated augmentation) inside
``torch.random.fork_rng``, so the pixels do not depend on the number of workers, the number of ranks or the resume
point, and the caller's RNG streams are left as they were.

Decoding (``decode``): "cpu" is the path above; "gpu" has the workers read JPEG files as bytes and decodes whole batches
on the GPU with nvJPEG (``gpu_decode``: same samples, same crops, pixels within a few grey levels); "auto" (the default)
uses the GPU only on a CUDA device and only when it is faster: the first batches requested for a CUDA device time a
sample of 64 files both ways (``throughput.choose_decode``) and print the choice with both figures. On a CPU device
"auto" is "cpu", and "gpu" is an error.

A file that decoded at the scan but fails when a batch reads it (deleted, truncated or replaced since) never crashes
a worker: it stops the run with ``BadDataError`` naming the file, or under ``skip_bad`` is replaced by the next file of
its class that decodes (training) or left out (evaluation), within the scan's 1% budget (``stale``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
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
    epoch_order,
    num_train_batches,
    rank_slice,
    shard_range,
)
from .decode import check_decode
from .images import DEFAULT_IMAGE_SIZE
from .memory import InMemorySource, check_num_classes, check_side
from .recipe import DEFAULTS, AugmentOptions, Recipe, resolve
from .scan import MAX_BAD_FRACTION, ScanReport, decode_checked, scan_folder
from .stale import SUBSTITUTE_TRIES, Stale, StaleFiles, collate_checked
from .walk import shown

if TYPE_CHECKING:
    from .throughput import DecodeChoice

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_recipe(size: int) -> Recipe:
    """torchvision's ImageNet recipe at crop side ``size`` (``recipe.DEFAULTS["folder"]``)."""
    return resolve(AugmentOptions(), DEFAULTS["folder"](size), size, IMAGENET_MEAN, IMAGENET_STD)


def train_transform(recipe: Recipe | int) -> v2.Compose:
    """The per-sample training transform of ``recipe`` (or of the default recipe at crop side ``recipe``), ending in
    a uint8 tensor; random erasing fills with the mean colour, which normalization maps to 0."""
    r = recipe if isinstance(recipe, Recipe) else default_recipe(recipe)
    interp = getattr(v2.InterpolationMode, r.interpolation.upper())
    if r.scale is not None:
        steps: list = [v2.RandomResizedCrop(r.train_crop, scale=r.scale, ratio=r.ratio, interpolation=interp,
                                            antialias=True)]
    else:  # pad-and-crop (or a plain resize): square images are meant, any other is squashed to a square first
        steps = [v2.Resize([r.train_crop, r.train_crop], interpolation=interp, antialias=True)]
        steps += [v2.RandomCrop(r.train_crop, padding=r.pad)] if r.pad else []
    steps += [v2.RandomHorizontalFlip(r.hflip)] if r.hflip else []
    steps += [_POLICIES[r.aa](interpolation=interp)] if r.aa != "none" else []
    steps.append(v2.PILToTensor())
    steps += [v2.RandomErasing(r.reprob, value=[round(255 * m) for m in r.mean])] if r.reprob else []
    return v2.Compose(steps)


def eval_transform(recipe: Recipe | int) -> v2.Compose:
    # Default: the 256/224 ratio of the ResNet and torchvision recipes, the center crop keeps 87.5% of the short side.
    r = recipe if isinstance(recipe, Recipe) else default_recipe(recipe)
    interp = getattr(v2.InterpolationMode, r.interpolation.upper())
    return v2.Compose([v2.Resize(r.val_resize, interpolation=interp, antialias=True), v2.CenterCrop(r.val_crop),
                       v2.PILToTensor()])


_POLICIES = {"trivialaugment": v2.TrivialAugmentWide, "randaugment": v2.RandAugment,
             "autoaugment": lambda interpolation: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET,
                                                                 interpolation=interpolation)}


class ImageFiles(Dataset):
    """Indexed by ``(index, seed)``: the image at ``index`` through the training transform seeded by ``seed``, or
    through the evaluation transform when ``seed`` is None. Returns a uint8 (3, S, S) tensor, the label, and a
    ``Stale`` record when the file failed (None when it decoded): then the pixels are those of the next file of its
    class that decodes (training under ``skip_bad``) or zeros, which the main process never uses."""

    def __init__(self, files: Sequence[tuple[str, int]], size: int, *, skip_bad: bool = False,
                 recipe: Recipe | None = None):
        self.paths = [p for p, _ in files]
        self.labels = [label for _, label in files]
        self.size = size  # the side this split's batches have
        self.skip_bad = skip_bad
        recipe = recipe or default_recipe(size)
        self.train_tf, self.eval_tf = train_transform(recipe), eval_transform(recipe)
        self.gpu_refused: set[int] = set()  # files the GPU decoder refused: the workers decode them on the CPU

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int | None]) -> tuple[Tensor, int, Stale | None]:
        index, seed = key
        img, stale = self._image(index, substitute=self.skip_bad and seed is not None)
        if img is None:
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), self.labels[index], stale
        if seed is None:
            return self.eval_tf(img), self.labels[index], stale
        # torchvision's random transforms draw from the global CPU generator: seed it inside fork_rng (CPU only,
        # so a CUDA generator is neither saved nor reseeded) and the caller's state comes back untouched.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.train_tf(img), self.labels[index], stale

    def _image(self, index: int, substitute: bool) -> tuple[Image.Image | None, Stale | None]:
        """The decoded file at ``index``, or with ``substitute`` the next of its class that decodes; a ``Stale``
        record when the file failed."""
        img, reason = decode_checked(self.paths[index])
        if reason is None:
            return img, None
        failed = [(self.paths[index], reason)]
        if substitute:
            members = self._members[self.labels[index]]
            at = members.index(index)
            for k in range(1, min(SUBSTITUTE_TRIES, len(members) - 1) + 1):
                other = self.paths[members[(at + k) % len(members)]]
                img, why = decode_checked(other)
                if why is None:
                    return img, Stale(tuple(failed), other)
                failed.append((other, why))
        return None, Stale(tuple(failed))

    @cached_property
    def _members(self) -> dict[int, list[int]]:
        """The indices of each class, in file order (built on the first file that fails)."""
        out: dict[int, list[int]] = {}
        for i, label in enumerate(self.labels):
            out.setdefault(label, []).append(i)
        return out


class _Batches:
    """The batch sampler: lists of ``(index, seed)`` keys, computed lazily. With ``refused`` (the GPU path), keys are
    ``(index, seed, cpu_only)``: files the GPU decoder refused go to the workers' CPU path."""

    def __init__(self, batches: Sequence[Sequence[int]], seed_of: tuple[int, int] | None,
                 refused: set[int] | None = None, copies: Sequence[Sequence[int]] | None = None):
        self.batches, self.seed_of, self.refused, self.copies = batches, seed_of, refused, copies

    def __len__(self) -> int:
        return len(self.batches)

    def _seeds(self, n: int) -> list[int | None]:
        batch = self.batches[n]
        if self.seed_of is None:
            return [None] * len(batch)
        if self.copies is None:
            return [derive_seed(*self.seed_of, i) for i in batch]
        # Repeated augmentation: copy k > 0 of an image in an epoch gets a seed of its own.
        return [derive_seed(*self.seed_of, i, *((k,) if k else ())) for i, k in zip(batch, self.copies[n],
                                                                                     strict=True)]

    def __iter__(self) -> Iterator[list[tuple]]:
        for n, batch in enumerate(self.batches):
            seeds = self._seeds(n)
            if self.refused is None:
                yield list(zip(batch, seeds, strict=True))
            else:
                yield [(i, s, i in self.refused) for i, s in zip(batch, seeds, strict=True)]


class FolderSource:
    """An ImageFolder tree checked by ``scan_folder``; see the module docstring for order and randomness."""

    def __init__(self, report: ScanReport, *, image_size: int = DEFAULT_IMAGE_SIZE, workers: int = 2,
                 skipped: int = 0, num_classes: int | None = None, decode: str = "auto", skip_bad: bool = False,
                 max_bad_fraction: float = MAX_BAD_FRACTION, augment: AugmentOptions | None = None,
                 ra_reps: int = 1):
        check_decode(decode)
        check_side(image_size)
        n_classes = check_num_classes(num_classes, len(report.classes), f"the folder {shown(report.root)}")
        root = Path(report.root).absolute()  # the spec must reopen the data from any working directory
        recipe = resolve(augment or AugmentOptions(), DEFAULTS["folder"](image_size), image_size, IMAGENET_MEAN,
                         IMAGENET_STD)
        if decode == "gpu" and recipe != default_recipe(image_size):
            raise ValueError("--decode gpu runs torchvision's default recipe only (random-resized crop 0.08-1, flip "
                             "1/2, no policy or erasing, eval at 256/224): use --decode cpu with augmentation options")
        self.report = report
        self.workers = workers
        self.decode = decode if recipe == default_recipe(image_size) else "cpu"
        self.recipe, self.ra_reps = recipe, ra_reps
        self._choices: dict[torch.device, DecodeChoice] = {}
        self._train = ImageFiles(report.train, recipe.train_crop, skip_bad=skip_bad, recipe=recipe)
        self._test = ImageFiles(report.val, recipe.val_crop, skip_bad=skip_bad, recipe=recipe)
        self._stale = StaleFiles(report, skip_bad=skip_bad, max_bad_fraction=max_bad_fraction)
        self.info = DataInfo(
            name="folder", num_classes=n_classes, classes=report.classes, in_chans=3, image_size=recipe.val_crop,
            train_size=len(report.train), test_size=len(report.val), mean=recipe.mean, std=recipe.std,
            source=str(root), spec=f"folder:{root}", skipped=skipped, augment=recipe.describe(),
            recipe={**recipe.as_dict(), "ra_reps": ra_reps, "cache": "stream"},
        )
        self._normalize = Normalizer(recipe.mean, recipe.std)

    def num_train_batches(self, batch_size: int, world_size: int = 1) -> int:
        return num_train_batches(self.info.train_size, batch_size, world_size)

    def train_batches(self, epoch: int, batch_size: int, *, seed: int, start: int = 0, rank: int = 0,
                      world_size: int = 1, device: torch.device | str = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
        check_rank(rank, world_size)
        steps = self.num_train_batches(batch_size, world_size)
        check_start(start, steps)
        order = epoch_order(self.info.train_size, seed=seed, epoch=epoch, reps=self.ra_reps)
        batches = [rank_slice(order, step, batch_size, rank, world_size).tolist() for step in range(start, steps)]
        copies = None
        if self.ra_reps > 1:  # which copy of its image each position is (base.epoch_order repeats in a row)
            copy = torch.arange(self.info.train_size) % self.ra_reps
            copies = [rank_slice(copy, step, batch_size, rank, world_size).tolist() for step in range(start, steps)]
        return self._load(self._train, batches, (seed, epoch), device, copies=copies)

    def test_batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1,
                     device: torch.device | str = "cpu") -> Iterator[tuple[Tensor, Tensor]]:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        share = shard_range(self.info.test_size, rank, world_size)
        batches = [list(range(i, min(i + batch_size, share.stop))) for i in range(share.start, share.stop, batch_size)]
        return self._load(self._test, batches, None, device)

    def sample_batches(self, indices: Sequence[int], batch_size: int, *, seed: int, device: torch.device | str,
                       decode: str) -> Iterator[tuple[Tensor, Tensor]]:
        """Training batches of the files ``indices`` (epoch 0's crops), decoded by ``decode`` ("cpu" or "gpu"): the
        loader of ``train_batches`` over a sample, for throughput measurements. An incomplete last batch is dropped."""
        batches = [list(indices[i:i + batch_size]) for i in range(0, len(indices) - batch_size + 1, batch_size)]
        return self._load(self._train, batches, (seed, 0), device, decode=decode)

    def decode_choice(self, device: torch.device | str) -> DecodeChoice:
        """How batches for ``device`` are decoded: resolved once per device (on CUDA with "auto", by timing a sample
        both ways) and printed when the device is CUDA."""
        device = as_device(device)
        if device not in self._choices:
            from .throughput import choose_decode

            choice = self._choices[device] = choose_decode(self, device)
            if device.type == "cuda":
                print(f"{_rank_prefix()}decode: {choice.describe()}", file=sys.stderr, flush=True)
        return self._choices[device]

    def _load(self, files: ImageFiles, batches: list[list[int]], seed_of: tuple[int, int] | None,
              device: torch.device | str, decode: str | None = None,
              copies: list[list[int]] | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        # Not a generator itself: the decode choice (and its errors) happen when the batches are asked for.
        device = as_device(device)
        if (decode or self.decode_choice(device).mode) == "gpu":
            if device.type != "cuda":
                raise ValueError(f"decode 'gpu' needs a CUDA device; these batches are for {device}")
            return self._gpu_batches(files, _Batches(batches, seed_of, files.gpu_refused, copies), device)
        return self._cpu_batches(files, _Batches(batches, seed_of, copies=copies), device)

    def _cpu_batches(self, files: ImageFiles, batches: _Batches,
                     device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        # A private generator: the DataLoader draws its workers' base seed from it instead of from the global RNG
        # (the pixels never depend on it, each sample is seeded on its own).
        loader = DataLoader(files, batch_sampler=batches, num_workers=self.workers, pin_memory=device.type == "cuda",
                            collate_fn=collate_checked, generator=torch.Generator().manual_seed(0))
        for x, y, stale in loader:
            x, y = self._usable(x, y, stale, training=batches.seed_of is not None)
            if len(y):
                yield self._normalize(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)

    def _gpu_batches(self, files: ImageFiles, batches: _Batches,
                     device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        from .gpu_decode import EncodedFiles, GpuBatches, collate_encoded

        # Workers send file bytes (small), not pixels: no pinning; the decoder copies them to the GPU itself.
        loader = DataLoader(EncodedFiles(files), batch_sampler=batches, num_workers=self.workers,
                            collate_fn=collate_encoded, generator=torch.Generator().manual_seed(0))
        to_pixels = GpuBatches(files, files.size)
        for batch in loader:
            x = to_pixels(batch, device)  # adds the stale rows of the files it decoded on the CPU to batch.stale
            x, y = self._usable(x, batch.labels, batch.stale, training=batches.seed_of is not None)
            if len(y):
                yield self._normalize(x), y.to(device, non_blocking=True)

    def _usable(self, x: Tensor, y: Tensor, stale: list[tuple[int, Stale]],
                training: bool) -> tuple[Tensor, Tensor]:
        """The batch without the rows ``StaleFiles`` leaves out; raises ``BadDataError`` when it cannot be used."""
        drop = self._stale.rows_to_drop(stale, training)
        if not drop:
            return x, y
        dropped = set(drop)
        keep = [row for row in range(len(y)) if row not in dropped]
        return x[keep], y[keep]


def _rank_prefix() -> str:
    # Every rank times its own GPU, so with data parallelism each says what it chose.
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return f"rank {dist.get_rank()}: "
    return ""


def make_folder(path: str | Path, *, image_size: int | None = None, num_classes: int | None = None,
                skip_bad: bool = False, workers: int = 2, progress: bool = True, decode: str = "auto",
                augment: AugmentOptions | None = None, ra_reps: int = 1,
                cache: str = "stream") -> FolderSource | InMemorySource:
    """Scan the tree (every file decoded), stop on bad files unless ``skip_bad``, and open it for training;
    ``decode``: "auto" | "cpu" | "gpu" (see the module docstring); ``augment`` and ``ra_reps``: the recipe
    (``recipe.py``) and repeated augmentation; ``cache``: "auto" | "memory" | "stream" (``folder_cache``)."""
    check_decode(decode)  # before the scan: a bad setting is an error before work starts
    if image_size is not None:
        check_side(image_size)
    keep = None
    if cache != "stream":  # a tree that will be held in memory keeps the scan's decoding: each file is read once
        from .folder_cache import keep_while_scanning

        keep = keep_while_scanning(cache, decode)
    report = scan_folder(path, progress=progress, workers=workers, keep=keep)
    return folder_from_report(report, image_size=image_size, num_classes=num_classes, skip_bad=skip_bad,
                              workers=workers, decode=decode, augment=augment, ra_reps=ra_reps, cache=cache)


def folder_from_report(report: ScanReport, *, image_size: int | None = None, num_classes: int | None = None,
                       skip_bad: bool = False, workers: int = 2, max_bad_fraction: float = MAX_BAD_FRACTION,
                       decode: str = "auto", augment: AugmentOptions | None = None, ra_reps: int = 1,
                       cache: str = "stream") -> FolderSource | InMemorySource:
    """Open a scanned tree: stop on bad files unless ``skip_bad`` (and at most 1% bad), else say how many are left
    out. Data-parallel runs scan once on rank 0 and send the report to the other ranks (it pickles small), so that
    every rank reads the same file list without decoding the whole tree again."""
    report.check(skip_bad=skip_bad, max_bad_fraction=max_bad_fraction)
    if report.bad:
        root = shown(report.root)
        print(f"skipping {len(report.bad)} bad files of {report.files} ({report.bad_fraction:.2%}) in {root}; "
              f"`convcanon scan {root}` lists them", file=sys.stderr)
    side = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    source = FolderSource(report, image_size=side, workers=workers, skipped=len(report.bad), num_classes=num_classes,
                          decode=decode, skip_bad=skip_bad, max_bad_fraction=max_bad_fraction, augment=augment,
                          ra_reps=ra_reps)
    if cache == "stream":
        return source
    from .folder_cache import in_memory_folder

    return in_memory_folder(source, cache, augment=augment, ra_reps=ra_reps, image_size=side) or source
