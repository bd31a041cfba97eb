"""From a ``--data`` value to a data source: ``parse_data(spec)`` reads it without opening anything, ``open_data(spec)``
opens what the parse found (downloading a named standard set into the data root first: ``download``).

The parse is the check that runs before any side effect (``convcanon train`` calls it before the run directory exists):
it knows the form of the spec, whether its folder exists and is of the right kind (the CIFAR files present; an
ImageFolder's ``train/`` and ``val/`` with the same class folders, from listing those two folders only), and the shape
of the batches the source will give. Nothing is read, decoded, scanned or downloaded. ``open_data`` opens exactly
what the parse returns, so the two cannot disagree.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from pathlib import Path

from .base import DataSource
from .cifar import LAYOUTS, find_folder, make_cifar
from .decode import check_decode
from .download import REMOTES, fetch
from .download import data_root as resolve_root
from .images import DEFAULT_IMAGE_SIZE
from .memory import DIGITS_SHAPE, check_num_classes, make_digits, make_synthetic
from .mnist import LAYOUTS as IDX_LAYOUTS
from .mnist import MNIST_SHAPE, make_mnist
from .mnist import find_folder as find_idx_folder
from .recipe import AugmentOptions
from .scan import tree_classes

SPEC_FORMS = """accepted data specs:
  digits                   the embedded 8x8 handwritten digits (default; ships with scikit-learn)
  synthetic[:C[:S[:K]]]    random images with C channels, side S, K classes (default synthetic:3:32:10)
  cifar10, cifar100        CIFAR-10/100, downloaded once into --data-root (default ~/.cache/convcanon/data)
  mnist, fashion-mnist     MNIST / Fashion-MNIST, downloaded the same way
  cifar10:PATH             a CIFAR-10 python-format folder (cifar-10-batches-py); cifar100:PATH likewise
  mnist:PATH               a folder of the four idx files (.gz or not); fashion-mnist:PATH likewise
  folder:PATH, or PATH     an ImageFolder tree: PATH/train/CLASS/IMAGE and PATH/val/CLASS/IMAGE"""

_NAMED = ("digits", "synthetic", "cifar10", "cifar100", "mnist", "fashion-mnist", "folder")
SYNTHETIC_SHAPE = (3, 32, 10)  # channels, side, classes
CIFAR_SIDE = 32
FOLDER_CHANNELS = 3  # every image is decoded to RGB (images.load_rgb)


@dataclass(frozen=True)
class DataSpec:
    """A ``--data`` value as :func:`parse_data` reads it: the source, where it is, and the shape of its batches."""

    spec: str  # as given
    kind: str  # digits | synthetic | cifar10 | cifar100 | mnist | fashion-mnist | folder
    path: Path | None  # cifar, mnist: the folder of the files; folder: the tree's root; else None
    in_chans: int
    image_size: int  # the side of the batches (after the resize or crop ``image_size`` asks for)
    num_classes: int
    download: bool = False  # named without a path: ``path`` is in the data root, filled on opening if needed


def parse_data(spec: str, *, image_size: int | None = None, num_classes: int | None = None,
               decode: str = "auto", data_root: str | Path | None = None) -> DataSpec:
    """Read ``spec`` (see ``SPEC_FORMS``) and check it against ``image_size``, ``num_classes`` and ``decode`` without
    opening, reading, scanning or downloading anything. Raises ValueError (FileNotFoundError for a missing folder)
    naming the spec and the forms it may take. A plain existing folder holding CIFAR python-format files is CIFAR,
    else an ImageFolder tree; a named spec wins over a folder of the same name (write ``./digits``). ``data_root``
    is where named standard sets are kept (``download.data_root``)."""
    if image_size is not None and image_size < 1:
        raise ValueError(f"image size must be at least 1, got {image_size}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    check_decode(decode)
    parsed = _parse(spec, image_size, num_classes, data_root)
    if decode == "gpu" and parsed.kind != "folder":
        raise ValueError(f"--decode gpu decodes the JPEG files of folder data; --data {spec} is {parsed.kind} "
                         "data, already decoded: drop --decode or use --decode auto")
    return parsed


def _parse(spec: str, image_size: int | None, num_classes: int | None, data_root: str | Path | None) -> DataSpec:
    kind, has_arg, arg = spec.partition(":")
    if kind in _NAMED and has_arg and not arg:
        raise ValueError(f"data spec {spec!r} ends with ':' but names nothing after it\n{SPEC_FORMS}")
    if kind == "digits":
        if has_arg:
            raise ValueError(f"data spec {spec!r}: the embedded digits take no argument, write 'digits'\n{SPEC_FORMS}")
        chans, side, classes = DIGITS_SHAPE
        check_num_classes(num_classes, classes, "the digits data set")
        return DataSpec(spec, "digits", None, chans, image_size or side, classes)
    if kind == "synthetic":
        return _synthetic(spec, arg, image_size, num_classes)
    if kind in REMOTES and not has_arg:
        return _standard(spec, kind, data_root, image_size, num_classes)
    if kind in LAYOUTS:
        return _cifar(spec, kind, find_folder(kind, arg), image_size, num_classes)
    if kind in IDX_LAYOUTS:
        return _idx(spec, kind, find_idx_folder(kind, arg), image_size, num_classes)
    if kind == "folder":
        if not has_arg:
            raise ValueError(f"data spec 'folder' needs the folder: folder:PATH\n{SPEC_FORMS}")
        return _folder_spec(spec, Path(arg).expanduser(), image_size, num_classes)
    path = Path(spec).expanduser()
    if path.is_dir():
        for name in LAYOUTS:
            if _is_cifar(name, path):
                return _cifar(spec, name, find_folder(name, path), image_size, num_classes)
        return _folder_spec(spec, path, image_size, num_classes)
    if path.exists():
        raise ValueError(f"data spec {spec!r} is a file, not a folder\n{SPEC_FORMS}")
    if any(sep in spec for sep in "/\\") or spec.startswith((".", "~")):
        raise FileNotFoundError(f"data folder {spec} does not exist\n{SPEC_FORMS}")
    close = difflib.get_close_matches(kind, _NAMED, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown data set {spec!r}{hint}, and no folder of that name exists\n{SPEC_FORMS}")


def _cifar(spec: str, name: str, root: Path, image_size: int | None, num_classes: int | None) -> DataSpec:
    classes = LAYOUTS[name].num_classes
    check_num_classes(num_classes, classes, f"{name} at {root}")
    return DataSpec(spec, name, root, 3, image_size or CIFAR_SIDE, classes)


def _idx(spec: str, name: str, root: Path, image_size: int | None, num_classes: int | None) -> DataSpec:
    chans, side, classes = MNIST_SHAPE
    check_num_classes(num_classes, classes, f"{name} at {root}")
    return DataSpec(spec, name, root, chans, image_size or side, classes)


def _standard(spec: str, name: str, data_root: str | Path | None, image_size: int | None,
              num_classes: int | None) -> DataSpec:
    """A standard set by name: its folder in the data root, which ``open_data`` fills when it is not complete."""
    root = resolve_root(data_root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"the data root {root} is a file, not a folder: pass another --data-root")
    folder = root / REMOTES[name].folder
    parsed = _cifar(spec, name, folder, image_size, num_classes) if name in LAYOUTS else \
        _idx(spec, name, folder, image_size, num_classes)
    return replace(parsed, download=True)


def _folder_spec(spec: str, root: Path, image_size: int | None, num_classes: int | None) -> DataSpec:
    classes, _ = tree_classes(root)
    check_num_classes(num_classes, len(classes), f"the ImageFolder tree {root}")
    return DataSpec(spec, "folder", root, FOLDER_CHANNELS, image_size or DEFAULT_IMAGE_SIZE, len(classes))


def _is_cifar(name: str, path: Path) -> bool:
    layout = LAYOUTS[name]
    return any(all((p / f).is_file() for f in layout.files) for p in (path, path / layout.folder))


def _synthetic(spec: str, arg: str, image_size: int | None, num_classes: int | None) -> DataSpec:
    fields = arg.split(":") if arg else []
    if len(fields) > 3 or not all(f.isdigit() and int(f) > 0 for f in fields):
        raise ValueError(f"synthetic data spec 'synthetic:{arg}' must be synthetic[:C[:S[:K]]] with positive "
                         f"integers (channels, side, classes), e.g. synthetic:3:32:10")
    values = [int(f) for f in fields]
    chans, side, classes = values + list(SYNTHETIC_SHAPE)[len(values):]
    for given, from_spec, what in ((image_size, 1, "image size"), (num_classes, 2, "num_classes")):
        if given is not None and len(values) > from_spec and given != values[from_spec]:
            raise ValueError(f"the synthetic spec sets {what} {values[from_spec]} but {given} was asked for: "
                             f"set it in one place")
    return DataSpec(spec, "synthetic", None, chans, image_size or side, num_classes or classes)


def fetch_data(parsed: DataSpec, *, data_root: str | Path | None = None, progress: bool = False) -> None:
    """Download what ``parsed`` needs and the data root lacks (a standard set named without a path; nothing for any
    other spec), checksums verified; ``convcanon train`` calls it before its run directory exists."""
    if parsed.download:
        fetch(parsed.kind, resolve_root(data_root), progress=progress)


def open_data(spec: str, *, image_size: int | None = None, num_classes: int | None = None, skip_bad: bool = False,
              synthetic_size: int = 1024, workers: int = 2, progress: bool = True, decode: str = "auto",
              data_root: str | Path | None = None, augment: AugmentOptions | None = None, ra_reps: int = 1,
              cache: str = "stream") -> DataSource:
    """Open the data set named by ``spec``: what :func:`parse_data` finds (with ``image_size``, ``num_classes`` and
    ``decode`` checked there), opened.

    ``image_size`` resizes in-memory data once (digits, CIFAR) or sets the crop side of folder data (default 224);
    ``num_classes``, when given, must match the data; ``skip_bad`` leaves bad files of folder data out (at most 1%);
    ``synthetic_size`` is the synthetic training-set size (test: a quarter); ``workers`` are DataLoader and scan
    processes for folder data; ``progress`` shows the scan's progress bar; ``decode`` ("auto" | "cpu" | "gpu") is
    where folder data's JPEGs are decoded (``folder`` module docstring; "gpu" is an error for other data and without
    CUDA); ``data_root`` is where a standard set named without a path is downloaded to (once, with its checksums
    verified; ``download`` module docstring) and read from.
    ``augment``: the augmentation asked for (``recipe.AugmentOptions``; not given: the data set's defaults);
    ``ra_reps``: repeated augmentation (``base.epoch_order``); ``cache``: folder data held in memory ("auto" |
    "memory" | "stream", ``folder_cache``).
    """
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    parsed = parse_data(spec, image_size=image_size, num_classes=num_classes, decode=decode, data_root=data_root)
    named = parsed.kind if parsed.download else None  # what DataInfo.spec records: the name opens it again
    fetch_data(parsed, data_root=data_root, progress=progress)
    if parsed.kind == "digits":
        return make_digits(image_size=image_size, num_classes=num_classes, augment=augment, ra_reps=ra_reps)
    if parsed.kind == "synthetic":
        return make_synthetic(in_chans=parsed.in_chans, image_size=parsed.image_size, num_classes=parsed.num_classes,
                              size=synthetic_size, augment=augment, ra_reps=ra_reps)
    if parsed.kind in LAYOUTS:
        return make_cifar(parsed.kind, parsed.path, image_size=image_size, num_classes=num_classes, spec=named,
                          augment=augment, ra_reps=ra_reps)
    if parsed.kind in IDX_LAYOUTS:
        return make_mnist(parsed.kind, parsed.path, image_size=image_size, num_classes=num_classes, spec=named,
                          augment=augment, ra_reps=ra_reps)
    from .folder import make_folder  # here: torchvision takes seconds to import and only folder data needs it

    return make_folder(parsed.path, image_size=image_size, num_classes=num_classes, skip_bad=skip_bad,
                       workers=workers, progress=progress, decode=decode, augment=augment, ra_reps=ra_reps,
                       cache=cache)
