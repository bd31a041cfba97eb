"""``open_data(spec)``: the one entry point from a ``--data`` value to a data source."""

from __future__ import annotations

import difflib
from pathlib import Path

from .base import DataSource
from .cifar import LAYOUTS, make_cifar
from .decode import check_decode
from .memory import make_digits, make_synthetic

SPEC_FORMS = """accepted data specs:
  digits                   the embedded 8x8 handwritten digits (default; ships with scikit-learn)
  synthetic[:C[:S[:K]]]    random images with C channels, side S, K classes (default synthetic:3:32:10)
  cifar10:PATH             a CIFAR-10 python-format folder (cifar-10-batches-py)
  cifar100:PATH            a CIFAR-100 python-format folder (cifar-100-python)
  folder:PATH, or PATH     an ImageFolder tree: PATH/train/CLASS/IMAGE and PATH/val/CLASS/IMAGE"""

_NAMED = ("digits", "synthetic", "cifar10", "cifar100", "folder")
def open_data(spec: str, *, image_size: int | None = None, num_classes: int | None = None, skip_bad: bool = False,
              synthetic_size: int = 1024, workers: int = 2, progress: bool = True, decode: str = "auto") -> DataSource:
    """Open the data set named by ``spec`` (see ``SPEC_FORMS``).

    ``image_size`` resizes in-memory data once (digits, CIFAR) or sets the crop side of folder data (default 224);
    ``num_classes``, when given, must match the data; ``skip_bad`` leaves bad files of folder data out (at most 1%);
    ``synthetic_size`` is the synthetic training-set size (test: a quarter); ``workers`` are DataLoader and scan
    processes for folder data; ``progress`` shows the scan's progress bar; ``decode`` ("auto" | "cpu" | "gpu") is
    where folder data's JPEGs are decoded (``folder`` module docstring; "gpu" is an error for other data and without
    CUDA). A plain existing folder holding CIFAR python-format files is read as CIFAR; a named spec wins over a folder
    of the same name (write ``./digits``).
    """
    if image_size is not None and image_size < 1:
        raise ValueError(f"image size must be at least 1, got {image_size}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if workers < 0:
        raise ValueError(f"workers must be 0 or more, got {workers}")
    check_decode(decode)
    source = _open(spec, image_size=image_size, num_classes=num_classes, skip_bad=skip_bad,
                   synthetic_size=synthetic_size, workers=workers, progress=progress, decode=decode)
    if decode == "gpu" and source.info.name != "folder":
        raise ValueError(f"--decode gpu decodes the JPEG files of folder data; --data {spec} is {source.info.name} "
                         "data, already decoded: drop --decode or use --decode auto")
    return source


def _open(spec: str, *, image_size: int | None, num_classes: int | None, skip_bad: bool, synthetic_size: int,
          workers: int, progress: bool, decode: str) -> DataSource:
    kind, has_arg, arg = spec.partition(":")
    if kind in _NAMED and has_arg and not arg:
        raise ValueError(f"data spec {spec!r} ends with ':' but names nothing after it\n{SPEC_FORMS}")
    if kind == "digits":
        if has_arg:
            raise ValueError(f"data spec {spec!r}: the embedded digits take no argument, write 'digits'\n{SPEC_FORMS}")
        return make_digits(image_size=image_size, num_classes=num_classes)
    if kind == "synthetic":
        return _synthetic(arg, image_size, num_classes, synthetic_size)
    if kind in LAYOUTS:
        if not has_arg:
            raise ValueError(f"data spec {spec!r} needs the folder: {kind}:PATH\n{SPEC_FORMS}")
        return make_cifar(kind, arg, image_size=image_size, num_classes=num_classes)
    if kind == "folder":
        if not has_arg:
            raise ValueError(f"data spec 'folder' needs the folder: folder:PATH\n{SPEC_FORMS}")
        return _folder(arg, image_size=image_size, num_classes=num_classes, skip_bad=skip_bad, workers=workers,
                       progress=progress, decode=decode)
    path = Path(spec).expanduser()
    if path.is_dir():
        for name in LAYOUTS:
            if _is_cifar(name, path):
                return make_cifar(name, path, image_size=image_size, num_classes=num_classes)
        return _folder(path, image_size=image_size, num_classes=num_classes, skip_bad=skip_bad, workers=workers,
                       progress=progress, decode=decode)
    if path.exists():
        raise ValueError(f"data spec {spec!r} is a file, not a folder\n{SPEC_FORMS}")
    if any(sep in spec for sep in "/\\") or spec.startswith((".", "~")):
        raise FileNotFoundError(f"data folder {spec} does not exist\n{SPEC_FORMS}")
    close = difflib.get_close_matches(kind, _NAMED, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown data set {spec!r}{hint}, and no folder of that name exists\n{SPEC_FORMS}")


def _folder(path: str | Path, **options) -> DataSource:
    from .folder import make_folder  # here: torchvision takes seconds to import and only folder data needs it

    return make_folder(path, **options)


def _is_cifar(name: str, path: Path) -> bool:
    layout = LAYOUTS[name]
    return any(all((p / f).is_file() for f in layout.files) for p in (path, path / layout.folder))


def _synthetic(arg: str, image_size: int | None, num_classes: int | None, size: int):
    fields = arg.split(":") if arg else []
    if len(fields) > 3 or not all(f.isdigit() and int(f) > 0 for f in fields):
        raise ValueError(f"synthetic data spec 'synthetic:{arg}' must be synthetic[:C[:S[:K]]] with positive "
                         f"integers (channels, side, classes), e.g. synthetic:3:32:10")
    values = [int(f) for f in fields]
    chans, side, classes = values + [3, 32, 10][len(values):]
    for given, from_spec, what in ((image_size, 1, "image size"), (num_classes, 2, "num_classes")):
        if given is not None and len(values) > from_spec and given != values[from_spec]:
            raise ValueError(f"the synthetic spec sets {what} {values[from_spec]} but {given} was asked for: "
                             f"set it in one place")
    return make_synthetic(in_chans=chans, image_size=image_size or side, num_classes=num_classes or classes,
                          size=size)
