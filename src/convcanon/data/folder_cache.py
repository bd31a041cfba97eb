"""Folder data held in memory: a tree whose images share one square size and fit in memory at that size is decoded
once, in parallel, into one uint8 tensor per split, and then read like the in-memory sets (``memory.InMemorySource``:
the whole recipe on whole batches on the device) instead of being decoded again every epoch.

``cache``: "stream" always streams through the DataLoader (``folder.FolderSource``); "memory" holds the tree in memory
or says why it cannot; "auto" holds it when it can (one square size, the ``memory.MEMORY_SHARE`` budget) and streams
otherwise. The choice and its reason are printed and recorded with the run (``DataInfo.recipe["cache"]``).

What changes against streaming: the random-resized crop, flip and policies run on the stored pixels through the batch
code of ``augment.BatchRecipe`` (no antialiasing in the crop's resize, which mostly enlarges small images), and the
evaluation resize is torch's antialiased bilinear instead of PIL's; the recipe, the order and the per-position
randomness rules are the same.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .images import load_rgb
from .memory import MEMORY_SHARE, InMemorySource, in_memory_source, memory_limit
from .scan import held_pixels

CACHE_MODES = ("auto", "memory", "stream")


class _Decoded(Dataset):
    """Each file decoded to uint8 (3, H, W) at its stored size."""

    def __init__(self, paths: Sequence[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        img = load_rgb(self.paths[i])
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


def stored_size(path: str) -> tuple[int, int]:
    """(height, width) of an image from its header (no decode)."""
    with Image.open(path) as img:
        return img.height, img.width


def plan_cache(source, cache: str) -> tuple[bool, str]:
    """Whether the folder ``source`` (a ``FolderSource``) is to be held in memory, and why; "memory" that cannot be is
    a ValueError naming ``--data-cache``."""
    report = source.report
    return memory_plan(report.train[0][0], len(report.train) + len(report.val), cache, source.decode)


def memory_plan(first: str, n: int, cache: str, decode: str) -> tuple[bool, str]:
    """``plan_cache``'s answer for ``n`` images the size of the file ``first`` (read from its header), with
    ``--data-cache`` ``cache`` and ``--decode`` ``decode``."""
    if cache not in CACHE_MODES:
        raise ValueError(f"--data-cache must be one of {', '.join(CACHE_MODES)}; got {cache!r}")
    if cache == "stream":
        return False, "as asked (--data-cache stream)"
    h, w = stored_size(first)
    nbytes = n * 3 * h * w
    limit = memory_limit()
    why_not = None
    if h != w:
        why_not = f"the first image is {h}x{w}, not square"
    elif decode == "gpu":
        why_not = "--decode gpu decodes on the device every epoch"
    elif limit is not None and nbytes > limit * MEMORY_SHARE:
        why_not = (f"{n:,} images of {h}x{w} need {nbytes / 1e9:.1f} GB, above {MEMORY_SHARE:.0%} of this machine's "
                   f"{limit / 1e9:.1f} GB")
    if why_not is None:
        return True, f"{n:,} images of {h}x{w} take {nbytes / 1e6:,.1f} MB"
    if cache == "memory":
        raise ValueError(f"--data-cache memory: {why_not}; use --data-cache auto or stream")
    return False, why_not


def keep_while_scanning(cache: str, decode: str) -> Callable[[list[str]], bool]:
    """For ``scan_folder``'s ``keep``: whether the files it lists will be held in memory (then the scan's decoding
    is kept, and no file is read twice). A first file whose header cannot be read says no (the scan names it); a tree
    that ``--data-cache memory`` cannot hold is refused here, before any file is decoded."""

    def keep(paths: list[str]) -> bool:
        try:
            return memory_plan(paths[0], len(paths), cache, decode)[0]
        except OSError:
            return False

    return keep


def decode_all(paths: Sequence[str], workers: int) -> Tensor:
    """Every file of ``paths`` decoded once by ``workers`` processes into one uint8 (N, 3, S, S) tensor; a ValueError
    naming the first file whose size differs from the first file's. Torch's global random state is left as it was
    (a DataLoader draws its workers' seed from it): the model built next gets the run's seed's weights, decoded here
    or not."""
    with torch.random.fork_rng(devices=[]):
        chunks = DataLoader(_Chunks(paths), batch_size=None, num_workers=workers)
        images = [image for chunk in chunks for image in chunk]
    return stack_images(paths, images)


class _Chunks(Dataset):
    """Files decoded 256 at a time, each chunk one (n, H, W, 3) tensor when its images share a size (one transfer
    instead of one per image: most of the decoding's time for small images), else the list of them."""

    SIZE = 256

    def __init__(self, paths: Sequence[str]):
        self.paths = paths

    def __len__(self) -> int:
        return -(-len(self.paths) // self.SIZE)

    def __getitem__(self, i: int) -> Tensor | list[Tensor]:
        images = [np.asarray(load_rgb(p)) for p in self.paths[i * self.SIZE:(i + 1) * self.SIZE]]
        if all(a.shape == images[0].shape for a in images):
            return torch.from_numpy(np.stack(images))
        return [torch.from_numpy(a.copy()) for a in images]


def stack_images(paths: Sequence[str], images: Sequence[np.ndarray | Tensor]) -> Tensor:
    """The (H, W, 3) uint8 ``images`` of ``paths`` as one (N, 3, H, W) tensor; a ValueError naming the first file
    whose size differs from the first file's."""
    shape = images[0].shape
    for path, img in zip(paths, images, strict=True):
        if img.shape != shape:
            raise ValueError(f"{path} is {img.shape[0]}x{img.shape[1]}, the first image {shape[0]}x{shape[1]}")
    return torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).contiguous()


def in_memory_folder(source, cache: str, *, augment, ra_reps: int, image_size: int) -> InMemorySource | None:
    """``source`` decoded into memory when ``plan_cache`` says so (None: stream it); prints the choice."""
    hold, why = plan_cache(source, cache)
    report = source.report
    held = held_pixels(report)  # the scan's own decoding, when it kept it (keep_while_scanning)
    if hold:
        paths = ([p for p, _ in report.train], [p for p, _ in report.val])
        try:
            if held is not None:
                train, test = stack_images(paths[0], held["train"]), stack_images(paths[1], held["val"])
            else:
                train, test = decode_all(paths[0], source.workers), decode_all(paths[1], source.workers)
        except ValueError as err:
            if cache == "memory":
                raise ValueError(f"--data-cache memory needs images of one size: {err}") from None
            hold, why = False, f"sizes differ ({err})"
    print(f"folder data: {'decoded once into memory' if hold else 'streamed through the DataLoader'}: {why} "
          f"(--data-cache {cache})", file=sys.stderr, flush=True)
    if not hold:
        source.info.recipe["cache"] = f"stream: {why}"
        return None
    labels = (torch.tensor([c for _, c in report.train]), torch.tensor([c for _, c in report.val]))
    out = in_memory_source(name="folder", kind="folder", classes=report.classes, source=source.info.source,
                           spec=source.info.spec, train=(train, labels[0]), test=(test, labels[1]), augment=augment,
                           ra_reps=ra_reps, stats=(source.info.mean, source.info.std), skipped=source.info.skipped,
                           crop=image_size)
    out.info.recipe["cache"] = f"memory: {why}"
    return out


class _Sums(_Decoded):
    """Each file's per-channel sum and sum of squares on the 0..1 scale, and its pixel count (float64)."""

    def __getitem__(self, i: int) -> Tensor:
        x = super().__getitem__(i).to(torch.float64).div_(255).flatten(1)
        return torch.cat([x.sum(1), x.square().sum(1), torch.tensor([x.shape[1]], dtype=torch.float64)])


def folder_stats(paths: Sequence[str], workers: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std per RGB channel, on the 0..1 scale, of every pixel of the files ``paths`` at their stored size
    (what ``--mean`` and ``--std`` take), summed in float64 by ``workers`` processes."""
    if not paths:
        raise ValueError("no training images to measure")
    loader = DataLoader(_Sums(paths), batch_size=64, num_workers=workers)
    total = sum(part.sum(0) for part in loader)
    count = total[6]
    mean = total[:3] / count
    std = (total[3:6] / count - mean.square()).clamp_min(0).sqrt()
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)
