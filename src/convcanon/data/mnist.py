"""MNIST and Fashion-MNIST from their idx files: 28x28 grayscale, 10 classes, 60,000 train and 10,000 test images.

The four files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each gzip'd as published or not, as torchvision leaves both) hold a big-endian header
(two zero bytes, the element type ``0x08`` = unsigned byte, the number of dimensions, then each dimension as a 32-bit
integer) and the values. They are read into the same in-memory source as CIFAR, and checked as strictly: a wrong
header, a shape other than (N, 28, 28), a file cut short or with bytes after its data, labels outside 0..9 or
counts that differ between images and labels are refused with the file named. The size the header declares is
checked against the memory limit before anything is allocated, so a header (or a gzip bomb) cannot exhaust memory.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .memory import InMemorySource, check_fits, check_num_classes, check_side, in_memory_source, resize_uint8
from .recipe import AugmentOptions
from .walk import shown

MNIST_SHAPE = (1, 28, 10)  # channels, side, classes
_UBYTE = 0x08


class IdxLayout(NamedTuple):
    classes: tuple[str, ...]
    folder: str  # where torchvision's root keeps the files
    flip: bool  # horizontal flip as augmentation


LAYOUTS = {
    # Digits by their value, as the embedded digits name them.
    "mnist": IdxLayout(tuple(str(d) for d in range(10)), "MNIST/raw", False),
    # Zalando's names, as torchvision.datasets.FashionMNIST.classes; a mirrored shoe or shirt is still one.
    "fashion-mnist": IdxLayout(("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                                "Bag", "Ankle boot"), "FashionMNIST/raw", True),
}
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FILES = tuple(f for pair in SPLITS.values() for f in pair)


def _file(folder: Path, name: str) -> Path | None:
    """``name`` in ``folder``, gzip'd (as published) or not; None when neither is there."""
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def find_folder(name: str, path: str | Path) -> Path:
    """``path`` itself, or torchvision's ``MNIST/raw`` (``FashionMNIST/raw``) under it, holding the four idx files."""
    layout = LAYOUTS[name]
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{name} folder {shown(root)} does not exist (expected a folder holding "
                                f"{', '.join(FILES)}, each .gz or not)")
    for candidate in (root, root / layout.folder, root / "raw"):
        if all(_file(candidate, f) for f in FILES):
            return candidate
    missing = [f for f in FILES if not _file(root, f)]
    raise FileNotFoundError(f"{shown(root)} is not a {name} folder: missing {', '.join(missing)} (each .gz or not; "
                            f"or torchvision's {layout.folder}/ under it)")


def read_idx(path: Path, dims: tuple[int | None, ...]) -> np.ndarray:
    """The unsigned-byte idx file at ``path`` as a uint8 array; ``dims`` is the shape it must have (None: any
    count)."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            shape = _header(path, f.read(4), f, dims)
            count = math.prod(shape)
            check_fits(count, f"{shown(path)} (its header declares {' x '.join(f'{d:,}' for d in shape)} values)",
                       "this is not an MNIST file: replace it")
            data = bytearray()
            while len(data) < count and (chunk := f.read(min(count - len(data), 1 << 24))):
                data += chunk  # in chunks: a header that overstates the size allocates nothing beyond the file
            if len(data) != count:
                raise ValueError(f"{shown(path)} is cut short: its header declares {count:,} values, the file holds "
                                 f"{len(data):,}: download it again")
            if f.read(1):
                raise ValueError(f"{shown(path)} holds more bytes than the {count:,} values its header declares: it "
                                 "is not an idx file of this data set")
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{shown(path)} is not a readable gzip file ({type(err).__name__}: {shown(str(err))[:200]}): "
                         "download it again") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _header(path: Path, magic: bytes, f, dims: tuple[int | None, ...]) -> tuple[int, ...]:
    if len(magic) < 4 or magic[:2] != b"\0\0":
        raise ValueError(f"{shown(path)} is not an idx file (it does not start with the idx magic bytes 00 00)")
    if magic[2] != _UBYTE or magic[3] != len(dims):
        raise ValueError(f"{shown(path)}: an idx file of type 0x{magic[2]:02x} with {magic[3]} dimensions; expected "
                         f"unsigned bytes (0x08) with {len(dims)} dimension(s)")
    raw = f.read(4 * len(dims))
    if len(raw) != 4 * len(dims):
        raise ValueError(f"{shown(path)} is cut short inside its header: download it again")
    shape = struct.unpack(f">{len(dims)}I", raw)
    if any(want is not None and got != want for got, want in zip(shape, dims)):
        expected = " x ".join("N" if d is None else str(d) for d in dims)
        raise ValueError(f"{shown(path)} holds an array of shape {' x '.join(map(str, shape))}; expected {expected}")
    return shape


def _split(root: Path, split: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    images_name, labels_name = SPLITS[split]
    _, side, _ = MNIST_SHAPE
    images_path, labels_path = _file(root, images_name), _file(root, labels_name)
    images = read_idx(images_path, (None, side, side))
    labels = read_idx(labels_path, (None,))
    if images.shape[0] == 0:
        raise ValueError(f"{shown(images_path)} holds no images")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{shown(images_path)} holds {images.shape[0]:,} images but {shown(labels_path)} "
                         f"{labels.shape[0]:,} labels: the two files are not a pair")
    outside = labels >= num_classes
    if outside.any():
        raise ValueError(f"{shown(labels_path)}: {int(outside.sum()):,} labels outside 0..{num_classes - 1} (e.g. "
                         f"{int(labels[outside][0])})")
    return (torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


def make_mnist(name: str, path: str | Path, *, image_size: int | None = None, num_classes: int | None = None,
               spec: str | None = None, augment: AugmentOptions | None = None, ra_reps: int = 1) -> InMemorySource:
    """MNIST or Fashion-MNIST in memory; by default augmented by a random translation of up to 1/8 of the side (and,
    for Fashion-MNIST, a horizontal flip: ``recipe.DEFAULTS``). ``spec`` is what ``DataInfo.spec`` records (default
    ``name:FOLDER``)."""
    layout = LAYOUTS[name]
    chans, side, classes = MNIST_SHAPE
    size = side if image_size is None else image_size
    check_side(size)
    root = find_folder(name, path)
    n_classes = check_num_classes(num_classes, classes, f"{name} at {shown(root)}")
    train, test = _split(root, "train", n_classes), _split(root, "test", n_classes)
    images = len(train[1]) + len(test[1])
    check_fits(images * size * size, f"{name} resized to {size}x{size} ({images:,} images)", "lower --image-size")
    train, test = (resize_uint8(train[0], size), train[1]), (resize_uint8(test[0], size), test[1])
    return in_memory_source(name=name, kind="fashion" if layout.flip else "digits", classes=layout.classes,
                            source=str(root.absolute()), spec=spec or f"{name}:{root.absolute()}", train=train,
                            test=test, augment=augment, ra_reps=ra_reps)
