"""CIFAR-10 and CIFAR-100 from the standard python-format folder (``cifar-10-batches-py``, ``cifar-100-python``).

Those folders hold pickles: one dict per file with ``b"data"`` (N, 3072) uint8 rows, red plane then green then blue,
and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100). They are data files the user chose to point at, never
weights; still, they are read with an unpickler that only lets numpy rebuild arrays, so a file that is not what it
claims to be is refused before any of its code could run (DESIGN.md: never unpickle untrusted data).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .augment import BatchAugment
from .base import DataInfo, channel_stats
from .memory import InMemorySource, check_num_classes, resize_uint8


class Layout(NamedTuple):
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    folder: str  # the folder the archive from the CIFAR site extracts
    num_classes: int

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


LAYOUTS = {
    "cifar10": Layout(tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta", b"labels",
                      b"label_names", "cifar-10-batches-py", 10),
    "cifar100": Layout(("train",), "test", "meta", b"fine_labels", b"fine_label_names", "cifar-100-python",
                       100),
}

# What numpy needs to rebuild an array from a pickle, under numpy 1 and numpy 2 module names, and how protocol 2
# spells bytes when Python 3 wrote the file (_codecs.encode); nothing else.
_ARRAY_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _Refused(pickle.UnpicklingError):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ARRAY_GLOBALS:
            raise _Refused(f"it references {module}.{name}")
        if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
            module = module.replace("numpy.core", "numpy._core", 1)  # numpy 2 moved them; the old path warns
        return super().find_class(module, name)


def read_pickle(path: Path) -> Any:
    """One CIFAR python-format file; ``encoding="bytes"`` as the format's authors read it (written by Python 2)."""
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    except _Refused as err:
        raise ValueError(f"{path} is not a CIFAR python-format file: {err}, which a data file never needs; "
                         f"refused without running it") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"{path} is not a readable CIFAR python-format file ({type(err).__name__}: {err})") from None


def find_folder(name: str, path: str | Path) -> Path:
    """``path`` itself, or its standard subfolder (the archive extracts one), holding every file of the layout."""
    layout = LAYOUTS[name]
    expected = layout.files
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{name} folder {root} does not exist (expected the python-format folder "
                                f"{layout.folder}/ holding {', '.join(expected)})")
    for candidate in (root, root / layout.folder):
        if all((candidate / f).is_file() for f in expected):
            return candidate
    missing = [f for f in expected if not (root / f).is_file()]
    raise FileNotFoundError(f"{root} is not a {name} python-format folder: missing {', '.join(missing)} "
                            f"(expected {', '.join(expected)}, as in {layout.folder}/ from the CIFAR site)")


def _split(path: Path, label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    batch = read_pickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path} lacks the keys b'data' and {label_key!r} of the CIFAR python format (has {keys})")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: expected b'data' of shape (N, 3072) and N labels; got {data.shape} and "
                         f"{labels.shape[0]} labels")
    if data.dtype != np.uint8:
        if data.size and (data.min() < 0 or data.max() > 255):
            raise ValueError(f"{path}: pixel values outside 0..255")
        data = data.astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32), torch.from_numpy(labels)


def make_cifar(name: str, path: str | Path, *, image_size: int | None = None,
               num_classes: int | None = None) -> InMemorySource:
    """CIFAR-10 or CIFAR-100 in memory, augmented as in the ResNet paper (4.2): pad 4, random 32 crop, flip."""
    layout = LAYOUTS[name]
    root = find_folder(name, path)
    meta = read_pickle(root / layout.meta_file)
    if not isinstance(meta, dict) or layout.names_key not in meta:
        raise ValueError(f"{root / layout.meta_file} lacks the class names {layout.names_key!r}")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout.names_key])
    if len(classes) != layout.num_classes:
        raise ValueError(f"{root / layout.meta_file} names {len(classes)} classes; {name} has {layout.num_classes}")
    n_classes = check_num_classes(num_classes, len(classes), f"{name} at {root} ({layout.meta_file})")
    parts = [_split(root / f, layout.label_key) for f in layout.train_files]
    train = (torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]))
    test = _split(root / layout.test_file, layout.label_key)
    size = image_size or 32
    train, test = (resize_uint8(train[0], size), train[1]), (resize_uint8(test[0], size), test[1])
    mean, std = channel_stats(train[0])
    augment = BatchAugment(pad=max(1, size // 8), flip=True)
    info = DataInfo(
        name=name, num_classes=n_classes, classes=classes, in_chans=3, image_size=size,
        train_size=len(train[1]), test_size=len(test[1]), mean=mean, std=std, source=str(root.absolute()),
        spec=f"{name}:{root.absolute()}", augment=augment.describe(size),
    )
    return InMemorySource(info, train, test, augment)
