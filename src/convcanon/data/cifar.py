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

from .memory import InMemorySource, check_fits, check_num_classes, check_side, in_memory_source, resize_uint8
from .recipe import AugmentOptions
from .walk import shown, unsafe_chars


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
        raise ValueError(f"{shown(path)} is not a CIFAR python-format file: {err}, which a data file never needs; "
                         f"refused without running it") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(f"{shown(path)} is not a readable CIFAR python-format file ({type(err).__name__}: "
                         f"{shown(str(err))[:200]})") from None


def find_folder(name: str, path: str | Path) -> Path:
    """``path`` itself, or its standard subfolder (the archive extracts one), holding every file of the layout."""
    layout = LAYOUTS[name]
    expected = layout.files
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{name} folder {shown(root)} does not exist (expected the python-format folder "
                                f"{layout.folder}/ holding {', '.join(expected)})")
    for candidate in (root, root / layout.folder):
        if all((candidate / f).is_file() for f in expected):
            return candidate
    missing = [f for f in expected if not (root / f).is_file()]
    raise FileNotFoundError(f"{shown(root)} is not a {name} python-format folder: missing {', '.join(missing)} "
                            f"(expected {', '.join(expected)}, as in {layout.folder}/ from the CIFAR site)")


def _split(path: Path, label_key: bytes, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = read_pickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = sorted(batch, key=repr) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{shown(path)} lacks the keys b'data' and {label_key!r} of the CIFAR python format (has "
                         f"{shown(str(keys))[:200]})")
    data = _pixels(path, batch[b"data"])
    labels = _labels(path, label_key, batch[label_key], num_classes)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{shown(path)}: expected b'data' of shape (N, 3072) and N labels; got {data.shape} and "
                         f"{labels.shape[0]} labels")
    return torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32), torch.from_numpy(labels)


def _array(path: Path, key: bytes, value: Any) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged lists, objects numpy cannot hold
        raise ValueError(f"{shown(path)}: {key!r} is not an array ({shown(str(err))[:200]})") from None


def _example(values: np.ndarray) -> str:
    return shown(repr(values.flat[0].item() if values.size else None))[:60]


def _pixels(path: Path, value: Any) -> np.ndarray:
    """b"data" as uint8; float or wider integer data only when every value is a whole number in 0..255 (a cast
    would turn NaN into 0 and 0.5 into 0 without a word)."""
    data = _array(path, b"data", value)
    if data.dtype == np.uint8:
        return data
    where = f"{shown(path)}: b'data'"
    if data.dtype == np.bool_ or not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise ValueError(f"{where} holds {data.dtype} values (e.g. {_example(data)}); CIFAR pixels are integers 0..255")
    if np.issubdtype(data.dtype, np.floating):
        nan = np.isnan(data)
        if nan.any():
            raise ValueError(f"{where} holds {int(nan.sum()):,} NaN pixel values of {data.size:,}; CIFAR pixels are "
                             "integers 0..255: fix the file")
    outside = (data < 0) | (data > 255)
    if outside.any():
        raise ValueError(f"{where} holds {int(outside.sum()):,} pixel values outside 0..255 of {data.size:,} (e.g. "
                         f"{_example(data[outside])}): fix the file")
    if np.issubdtype(data.dtype, np.floating):
        fractional = data != np.round(data)
        if fractional.any():
            raise ValueError(f"{where} holds {int(fractional.sum()):,} pixel values that are not whole numbers of "
                             f"{data.size:,} (e.g. {_example(data[fractional])}); CIFAR pixels are integers 0..255 "
                             "(data scaled to 0..1 must be scaled back)")
    return data.astype(np.uint8)


def _labels(path: Path, key: bytes, value: Any, num_classes: int) -> np.ndarray:
    """The labels under ``key`` as int64, each in 0..num_classes-1; whole-number floats are accepted."""
    labels = _array(path, key, value)
    where = f"{shown(path)}: the labels under {key!r}"
    if labels.ndim != 1:
        raise ValueError(f"{where} must be a list of integers, got an array of shape {labels.shape}")
    integral = np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_
    if np.issubdtype(labels.dtype, np.floating) and np.isfinite(labels).all() and (labels == np.round(labels)).all():
        integral = True
    if not integral:
        raise ValueError(f"{where} must be integers 0..{num_classes - 1}; they are {labels.dtype} values (e.g. "
                         f"{_example(labels)})")
    labels = labels.astype(np.int64)
    outside = (labels < 0) | (labels >= num_classes)
    if outside.any():
        raise ValueError(f"{where}: {int(outside.sum()):,} labels outside 0..{num_classes - 1} (e.g. "
                         f"{int(labels[outside][0])}); the meta file names {num_classes} classes")
    return labels


def _class_names(root: Path, layout: Layout) -> tuple[str, ...]:
    """The class names of the meta file: at least two, none holding a line break or another control character."""
    meta_path = root / layout.meta_file
    meta = read_pickle(meta_path)
    if not isinstance(meta, dict) or layout.names_key not in meta:
        raise ValueError(f"{shown(meta_path)} lacks the class names {layout.names_key!r}")
    names = meta[layout.names_key]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise ValueError(f"{shown(meta_path)}: {layout.names_key!r} must be a list of class names (bytes or str)")
    try:
        classes = tuple(n.decode() if isinstance(n, bytes) else n for n in names)
    except UnicodeDecodeError as err:
        raise ValueError(f"{shown(meta_path)}: a class name in {layout.names_key!r} is not UTF-8 ({err})") from None
    unsafe = [f"{shown(c)} (holds {unsafe_chars(c)})" for c in classes if unsafe_chars(c)]
    if unsafe:
        raise ValueError(f"{shown(meta_path)}: class name(s) with a line break or another control character: "
                         f"{', '.join(unsafe)}; class names are stored one per line with the run and its weights")
    if len(classes) < 2:
        raise ValueError(f"{shown(meta_path)} names {len(classes)} class(es); a classifier needs at least two")
    return classes


def make_cifar(name: str, path: str | Path, *, image_size: int | None = None, num_classes: int | None = None,
               spec: str | None = None, augment: AugmentOptions | None = None, ra_reps: int = 1) -> InMemorySource:
    """CIFAR-10 or CIFAR-100 in memory; by default augmented as in the ResNet paper (4.2): pad 4, random 32 crop,
    flip (``recipe.DEFAULTS``). ``spec`` is what ``DataInfo.spec`` records (default ``name:FOLDER``)."""
    layout = LAYOUTS[name]
    size = 32 if image_size is None else image_size
    check_side(size)
    root = find_folder(name, path)
    classes = _class_names(root, layout)
    if len(classes) != layout.num_classes:
        raise ValueError(f"{shown(root / layout.meta_file)} names {len(classes)} classes; {name} has "
                         f"{layout.num_classes}")
    n_classes = check_num_classes(num_classes, len(classes), f"{name} at {shown(root)} ({layout.meta_file})")
    parts = [_split(root / f, layout.label_key, n_classes) for f in layout.train_files]
    train = (torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]))
    test = _split(root / layout.test_file, layout.label_key, n_classes)
    images = len(train[1]) + len(test[1])
    check_fits(images * 3 * size * size, f"{name} resized to {size}x{size} ({images:,} images)", "lower --image-size")
    train, test = (resize_uint8(train[0], size), train[1]), (resize_uint8(test[0], size), test[1])
    return in_memory_source(name=name, kind="cifar", classes=classes, source=str(root.absolute()),
                            spec=spec or f"{name}:{root.absolute()}", train=train, test=test, augment=augment,
                            ra_reps=ra_reps)
