"""The check of an ImageFolder tree that runs before step 1 (and as ``convcanon scan DIR``).

Layout: ``DIR/train/CLASS/...`` and ``DIR/val/CLASS/...``, one folder per class, the same classes in both; files may
sit in subfolders of a class folder. Names starting with "." (``.DS_Store``, ``.ipynb_checkpoints/``, ``.git/``) are
ignored at every level; files directly in ``train/`` or ``val/`` belong to no class and are listed as ignored.

Structural problems (no train/ or val/, an empty class folder, class sets that differ) are errors found by listing
the tree, before anything is decoded. Then every file is decoded in full, as training would, so a truncated,
corrupt, empty or non-image file is found now, with its path and reason, and not as a crash deep in an epoch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .images import IMAGE_EXTENSIONS, load_rgb

SPLITS = ("train", "val")
MAX_BAD_FRACTION = 0.01  # --skip-bad still stops above this: so many bad files mean a broken copy, not bad luck
_PARALLEL_MIN_FILES = 512  # below this, starting worker processes costs more than it saves
_CACHE: dict[tuple[str, str], ScanReport] = {}
_CACHE_SIZE = 4


@dataclass(frozen=True)
class BadFile:
    split: str
    path: str
    reason: str


@dataclass(frozen=True)
class ScanReport:
    """What ``scan_folder`` found: the usable files per split (path, class index), the bad ones, the ignored ones."""

    root: str
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]
    bad: tuple[BadFile, ...]
    ignored: tuple[str, ...]

    @property
    def files(self) -> int:
        """Files decoded (usable + bad)."""
        return len(self.train) + len(self.val) + len(self.bad)

    @property
    def bad_fraction(self) -> float:
        return len(self.bad) / max(self.files, 1)

    def summary(self) -> dict[str, object]:
        return {
            "root": self.root, "files": self.files, "classes": len(self.classes), "train_images": len(self.train),
            "val_images": len(self.val), "bad": len(self.bad), "bad_percent": round(100 * self.bad_fraction, 3),
            "ignored": len(self.ignored),
        }

    def check(self, *, skip_bad: bool = False, max_bad_fraction: float = MAX_BAD_FRACTION) -> None:
        """Raise ValueError listing every bad file, unless ``skip_bad`` and at most ``max_bad_fraction`` are bad;
        raise too if a split, or a class's training images, would be left empty."""
        if self.bad and (not skip_bad or self.bad_fraction > max_bad_fraction):
            listing = "\n".join(f"  {b.path}: {b.reason}" for b in self.bad)
            if skip_bad:
                advice = (f"--skip-bad leaves out at most {max_bad_fraction:.0%} of the files; this many bad files "
                          f"points to a broken copy of the data: fix it")
            else:
                advice = (f"fix or remove them, or pass --skip-bad to leave them out (allowed while at most "
                          f"{max_bad_fraction:.0%} of the files are bad)")
            raise ValueError(f"{len(self.bad)} bad files of {self.files} ({self.bad_fraction:.2%}) in "
                             f"{self.root}:\n{listing}\n{advice}")
        for split, files in (("train", self.train), ("val", self.val)):
            if not files:
                raise ValueError(f"{Path(self.root) / split} holds no usable image")
        have = {label for _, label in self.train}
        lost = [c for k, c in enumerate(self.classes) if k not in have]
        if lost:
            raise ValueError(f"no usable training image left in class folder(s) "
                             f"{', '.join(str(Path(self.root) / 'train' / c) for c in lost)}")


def check_file(path: str) -> str | None:
    """Why ``path`` cannot be used as a training image, or None if it decodes in full."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        load_rgb(path)
    except UnidentifiedImageError:
        suffix = Path(path).suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            return f"corrupt: not decodable as an image (the {suffix} content is in no format PIL recognizes)"
        return f"not an image ({suffix or 'no extension'}; no image format recognized)"
    except Image.DecompressionBombError as err:
        return f"too large to decode safely: {err}"
    except OSError as err:
        kind = "truncated" if "truncat" in str(err).lower() else "corrupt"
        return f"{kind}: {err}"
    except Exception as err:  # decoders raise many types (SyntaxError, struct.error, ...) on damaged data
        return f"corrupt: {type(err).__name__}: {err}"
    return None


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _list_class(folder: Path) -> list[str]:
    """Every non-hidden file under ``folder``, recursively, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if _visible(f)]
    return out


def _some(names: Sequence[str], limit: int = 20) -> str:
    """``names`` joined, at most ``limit`` of them (a flat ImageNet val/ would list 1,000)."""
    if not names:
        return "-"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _layout_error(root: Path, problem: str) -> ValueError:
    return ValueError(f"{root}: {problem}. Expected an ImageFolder tree: {root}/train/CLASS/IMAGE and "
                      f"{root}/val/CLASS/IMAGE, one folder per class, the same classes in both")


def tree_classes(root: Path) -> tuple[tuple[str, ...], list[str]]:
    """The class folders of the tree at ``root`` and the loose files of ``train/`` and ``val/``, from listing those
    two folders only (no class folder is walked, no file opened); raise on a structural problem of that level."""
    if not root.exists():
        raise FileNotFoundError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise _layout_error(root, "is not a folder")
    missing = [f"{s}/" for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise _layout_error(root, f"no {' or '.join(missing)} folder")
    class_sets, ignored = {}, []
    for split in SPLITS:
        entries = sorted(e for e in os.listdir(root / split) if _visible(e))
        class_sets[split] = [e for e in entries if (root / split / e).is_dir()]
        loose = [str(root / split / e) for e in entries if not (root / split / e).is_dir()]
        if loose and not class_sets[split]:
            # ImageNet's val archive extracts flat; the labels are in the devkit.
            raise _layout_error(root, f"{split}/ holds {len(loose)} files but no class folder: sort them into "
                                      f"{split}/CLASS/ folders")
        ignored += loose
    if not class_sets["train"]:
        raise _layout_error(root, "train/ holds no class folder")
    only_train = sorted(set(class_sets["train"]) - set(class_sets["val"]))
    only_val = sorted(set(class_sets["val"]) - set(class_sets["train"]))
    if only_train or only_val:
        raise ValueError(
            f"{root}: train/ and val/ must hold the same class folders; "
            f"only in train/: {_some(only_train)}; only in val/: {_some(only_val)}"
        )
    return tuple(class_sets["train"]), ignored


def list_tree(root: Path) -> tuple[tuple[str, ...], dict[str, list[tuple[str, int]]], list[str]]:
    """Classes, (path, class index) per split, and ignored files; raise on a structural problem."""
    classes, ignored = tree_classes(root)
    files: dict[str, list[tuple[str, int]]] = {}
    empty = []
    for split in SPLITS:
        files[split] = []
        for label, name in enumerate(classes):
            found = _list_class(root / split / name)
            if not found:
                empty.append(str(root / split / name))
            files[split] += [(path, label) for path in found]
    if empty:
        raise ValueError(f"empty class folder(s), every class needs images in train/ and val/: {_some(empty)}")
    return classes, files, ignored


def _signature(files: dict[str, list[tuple[str, int]]], classes: Sequence[str]) -> str:
    """Changes when a file is added, removed, renamed, rewritten or touched."""
    digest = hashlib.blake2b(repr(tuple(classes)).encode())
    for split in SPLITS:
        for path, label in files[split]:
            st = os.stat(path)
            digest.update(repr((split, path, label, st.st_size, st.st_mtime_ns)).encode())
    return digest.hexdigest()


def _decode_all(paths: list[str], progress: bool, workers: int) -> list[str | None]:
    from tqdm import tqdm

    bar = tqdm(total=len(paths), desc="scan", unit="file", disable=not progress, leave=False)
    try:
        if workers > 1 and len(paths) >= _PARALLEL_MIN_FILES:
            with ProcessPoolExecutor(workers) as pool:
                reasons = []
                for reason in pool.map(check_file, paths, chunksize=64):
                    reasons.append(reason)
                    bar.update()
                return reasons
        reasons = []
        for path in paths:
            reasons.append(check_file(path))
            bar.update()
        return reasons
    finally:
        bar.close()


def scan_folder(path: str | Path, *, progress: bool = True, workers: int = 0, cache: bool = True) -> ScanReport:
    """List and decode every file of the ImageFolder tree at ``path``.

    Raises FileNotFoundError if ``path`` does not exist and ValueError for a structural problem (see the module
    docstring); bad files do not raise here but are listed in the report (``ScanReport.check`` decides). With
    ``cache``, a tree whose files are unchanged (same paths, sizes and modification times) is not decoded twice in
    one process.
    """
    root = Path(path).expanduser()
    classes, files, ignored = list_tree(root)
    key = (str(root.resolve()), _signature(files, classes))
    if cache and key in _CACHE:
        return _CACHE[key]
    ordered = [(split, p, label) for split in SPLITS for p, label in files[split]]
    reasons = _decode_all([p for _, p, _ in ordered], progress, workers)
    good: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    bad = []
    for (split, p, label), reason in zip(ordered, reasons, strict=True):
        if reason is None:
            good[split].append((p, label))
        else:
            bad.append(BadFile(split, p, reason))
    report = ScanReport(str(root), classes, tuple(good["train"]), tuple(good["val"]), tuple(bad), tuple(ignored))
    if cache:
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = report
    return report
