"""Data sets for training: the embedded digits, synthetic images, CIFAR-10/100 and MNIST / Fashion-MNIST (by name,
downloaded once into a data root: ``download``; or from a folder) and ImageFolder trees.

``open_data(spec)`` returns a ``DataSource``; every source yields normalized float32 batches on the requested device in
the order defined in ``convcanon.data.base`` (one permutation per epoch, exact rank slices, stateless augmentation),
which is what makes data-parallel training and resume exact. ``parse_data(spec)`` checks a spec and gives the shape
of its batches without opening anything (what runs before any side effect); ``scan_folder`` is the bad-file check of
folder data; ``BadDataError`` (a ValueError) is what a folder source raises when a file goes bad after that check.
"""

from __future__ import annotations

from typing import Any

from .augment import BatchAugment, crop_flip
from .base import (
    DataInfo,
    DataSource,
    derive_seed,
    epoch_permutation,
    num_train_batches,
    rank_slice,
    shard_range,
)
from .cifar import make_cifar
from .download import DownloadError, data_root
from .images import load_rgb
from .memory import InMemorySource, make_digits, make_synthetic
from .mnist import make_mnist
from .recipe import AugmentOptions, Recipe
from .scan import BadDataError, BadFile, ScanReport, scan_folder
from .spec import SPEC_FORMS, DataSpec, fetch_data, open_data, parse_data

__all__ = [
    "AugmentOptions", "BadDataError", "BadFile", "BatchAugment", "DataInfo", "DataSource", "DataSpec", "DownloadError",
    "FolderSource", "InMemorySource", "Recipe", "SPEC_FORMS", "ScanReport", "crop_flip", "data_root", "derive_seed",
    "epoch_permutation", "fetch_data", "folder_from_report", "load_rgb", "make_cifar", "make_digits", "make_folder",
    "make_mnist", "make_synthetic", "num_train_batches", "open_data", "parse_data", "rank_slice", "scan_folder",
    "shard_range",
]


def __getattr__(name: str) -> Any:
    # The folder source needs torchvision (seconds to import); the embedded run never does.
    if name in ("FolderSource", "folder_from_report", "make_folder"):
        from . import folder

        return getattr(folder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
