"""The check of an ImageFolder tree that runs before step 1 (and as ``convcanon scan DIR``).

Layout: ``DIR/train/CLASS/...`` and ``DIR/val/CLASS/...``, one folder per class, the same classes in both (at least
two); files may sit in subfolders of a class folder. Names starting with "." (``.DS_Store``, ``.ipynb_checkpoints/``,
``.git/``) are ignored at every level; files directly in ``train/`` or ``val/`` belong to no class and are listed as
ignored.

Structural problems (no train/ or val/, an empty class folder, class sets that differ, a single class, a class name
holding a line break or another control character) are errors found by listing the tree, before anything is decoded.
The listing (``walk``) follows symlinks but enters each real folder once, so symlink loops cannot hang it; loops,
dangling links, unreadable folders and files, and entries that are not regular files (a named pipe would block the
reader) are bad entries with a reason. Then every file is decoded in full, as training would, so a truncated, corrupt,
empty or non-image file is found now, with its path and reason, and not as a crash deep in an epoch. ``--skip-bad``
leaves bad entries of every kind out while they are at most 1% of all; a file that goes bad after the scan is
``folder``'s to handle (``BadDataError``). Every name is printed through ``walk.shown`` (escaped).

A tree that is to be held in memory (``folder_cache``) keeps the pixels its scan decoded (``keep``, then
``held_pixels``), so that each file is read and decoded once.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .images import IMAGE_EXTENSIONS, load_rgb
from .walk import Entries, Walker, entries, not_regular, os_reason, shown, unsafe_chars

SPLITS = ("train", "val")
MAX_BAD_FRACTION = 0.01  # --skip-bad still stops above this: so many bad files mean a broken copy, not bad luck
_PARALLEL_MIN_FILES = 512  # below this, starting worker processes costs more than it saves
_CACHE: dict[tuple[str, str], ScanReport] = {}
_CACHE_SIZE = 4
_HELD: dict[tuple[str, str], dict[str, list[np.ndarray]]] = {}  # pixels a scan kept, until held_pixels takes them


@dataclass(frozen=True)
class BadFile:
    split: str
    path: str
    reason: str


class BadDataError(ValueError):
    """A file of the data that cannot be used, found while reading batches (it changed after the scan): the message
    names the file (escaped) and the reason; ``path`` and ``reason`` are the raw values."""

    def __init__(self, message: str, *, path: str = "", reason: str = ""):
        super().__init__(message)
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class ScanReport:
    """What ``scan_folder`` found: the usable files per split (path, class index), the bad entries, the ignored
    ones."""

    root: str
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]
    bad: tuple[BadFile, ...]
    ignored: tuple[str, ...]
    stamp: str = ""  # the listing's (``Tree.stamp``)

    @property
    def files(self) -> int:
        """Entries checked (usable files + bad entries)."""
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
        """Raise ValueError listing every bad entry, unless ``skip_bad`` and at most ``max_bad_fraction`` are bad;
        raise too if a split, or a class's training images, would be left empty."""
        root = shown(self.root)
        if self.bad and (not skip_bad or self.bad_fraction > max_bad_fraction):
            listing = "\n".join(f"  {shown(b.path)}: {b.reason}" for b in self.bad)
            if skip_bad:
                advice = (f"--skip-bad leaves out at most {max_bad_fraction:.0%} of the files; this many bad files "
                          f"points to a broken copy of the data: fix it")
            else:
                advice = (f"fix or remove them, or pass --skip-bad to leave them out (allowed while at most "
                          f"{max_bad_fraction:.0%} of the files are bad)")
            raise ValueError(f"{len(self.bad)} bad files of {self.files} ({self.bad_fraction:.2%}) in "
                             f"{root}:\n{listing}\n{advice}")
        for split, files in (("train", self.train), ("val", self.val)):
            if not files:
                raise ValueError(f"{shown(Path(self.root) / split)} holds no usable image")
        have = {label for _, label in self.train}
        lost = [c for k, c in enumerate(self.classes) if k not in have]
        if lost:
            raise ValueError(f"no usable training image left in class folder(s) "
                             f"{', '.join(shown(Path(self.root) / 'train' / c) for c in lost)}")


def decode_checked(path: str) -> tuple[Image.Image | None, str | None]:
    """``(image, None)`` when ``path`` decodes in full as training reads it, else ``(None, why not)``. A path that
    is not a regular file is never opened (a named pipe would block)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None, ("a folder, not a file" if stat.S_ISDIR(st.st_mode) else not_regular(st.st_mode))
        if st.st_size == 0:
            return None, "empty file (0 bytes)"
        return load_rgb(path), None
    except UnidentifiedImageError:
        suffix = Path(path).suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            why = f"the {shown(suffix)} content is in no format PIL recognizes"
            return None, f"corrupt: not decodable as an image ({why})"
        return None, f"not an image ({shown(suffix) or 'no extension'}; no image format recognized)"
    except Image.DecompressionBombError as err:
        return None, f"too large to decode safely: {shown(str(err))}"
    except OSError as err:
        if err.errno is not None:  # the file system's error (missing, permission denied, ...), not the decoder's
            return None, os_reason(err)
        kind = "truncated" if "truncat" in str(err).lower() else "corrupt"
        return None, f"{kind}: {shown(str(err))}"
    except Exception as err:  # decoders raise many types (SyntaxError, struct.error, ...) on damaged data
        return None, f"corrupt: {type(err).__name__}: {shown(str(err))}"


def check_file(path: str) -> str | None:
    """Why ``path`` cannot be used as a training image, or None if it decodes in full."""
    return decode_checked(path)[1]


def check_and_keep(path: str) -> tuple[str | None, np.ndarray | None]:
    """``check_file``'s answer and, for a good file, its RGB pixels (H, W, 3 uint8)."""
    img, why = decode_checked(path)
    return why, None if img is None else np.asarray(img)


def _some(names: Sequence[str], limit: int = 20) -> str:
    """``names`` escaped and joined, at most ``limit`` of them (a flat ImageNet val/ would list 1,000)."""
    if not names:
        return "-"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(shown(n) for n in names[:limit]) + more


def _layout_error(root: Path, problem: str) -> ValueError:
    root_shown = shown(root)
    return ValueError(f"{root_shown}: {problem}. Expected an ImageFolder tree: {root_shown}/train/CLASS/IMAGE and "
                      f"{root_shown}/val/CLASS/IMAGE, one folder per class, the same classes in both")


@dataclass
class Tree:
    """What listing a tree found: classes, (path, class index) per split, the entries that cannot be used (with
    their reason), the ignored files, and a stamp that changes when any file is added, removed, renamed, rewritten
    or touched."""

    classes: tuple[str, ...]
    files: dict[str, list[tuple[str, int]]]
    unlisted: list[BadFile] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    stamp: str = ""


def _stat_folder(path: Path) -> os.stat_result | None:
    """The stat of the folder ``path``; None when there is no folder there; ValueError when it cannot be reached."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ValueError(f"{shown(path)}: {os_reason(err)}") from None
    return st if stat.S_ISDIR(st.st_mode) else None


def _list_folder(path: Path) -> Entries:
    try:
        return entries(str(path))
    except OSError as err:
        raise ValueError(f"{shown(path)}: {os_reason(err)}: the folder cannot be listed") from None


def _list_splits(root: Path, walker: Walker) -> dict[str, Entries]:
    """Each split's entries; raises on a missing split, one that cannot be listed, or one that is another folder."""
    if (root_st := _stat_folder(root)) is None:
        if os.path.exists(root):
            raise _layout_error(root, "is not a folder")
        dangling = " (a dangling link)" if os.path.islink(root) else ""
        raise FileNotFoundError(f"data folder {shown(root)} does not exist{dangling}")
    walker.enter(str(root), root_st)
    _list_folder(root)  # a root that cannot be listed is an error here, not "no train/ folder"
    found = {split: _stat_folder(root / split) for split in SPLITS}
    missing = [f"{s}/" for s in SPLITS if found[s] is None]
    if missing:
        raise _layout_error(root, f"no {' or '.join(missing)} folder")
    splits = {}
    for split in SPLITS:
        why = walker.enter(str(root / split), found[split])
        if why:
            raise _layout_error(root, f"{split}/ {why}: train/ and val/ must be two separate folders")
        splits[split] = _list_folder(root / split)
    return splits


def _check_classes(root: Path, splits: dict[str, Entries]) -> tuple[str, ...]:
    """The class names: the folders of train/, which val/ must match; at least two; no line-breaking name."""
    names = {split: [Path(p).name for p, _ in splits[split].folders] for split in SPLITS}
    for split in SPLITS:
        if splits[split].files and not names[split]:
            # ImageNet's val archive extracts flat; the labels are in the devkit.
            raise _layout_error(root, f"{split}/ holds {len(splits[split].files)} files but no class folder: sort "
                                      f"them into {split}/CLASS/ folders")
    if not names["train"]:
        raise _layout_error(root, "train/ holds no class folder")
    only_train = sorted(set(names["train"]) - set(names["val"]))
    only_val = sorted(set(names["val"]) - set(names["train"]))
    if only_train or only_val:
        unread = [f"{shown(b)} ({why})" for split in SPLITS for b, why in splits[split].problems]
        note = f"; not read as class folders: {', '.join(unread)}" if unread else ""
        raise ValueError(f"{shown(root)}: train/ and val/ must hold the same class folders; "
                         f"only in train/: {_some(only_train)}; only in val/: {_some(only_val)}{note}")
    unsafe = [f"{shown(root / 'train' / n)} (holds {unsafe_chars(n)})" for n in names["train"] if unsafe_chars(n)]
    if unsafe:
        raise ValueError(f"class folder name(s) with a line break or another control character: {', '.join(unsafe)}. "
                         "Class names are stored one per line with the run and its weights, where such a character "
                         "would split or forge a name: rename the folder in train/ and val/")
    if len(names["train"]) < 2:
        raise ValueError(f"{shown(root)} holds a single class ({shown(names['train'][0])}); a classifier needs at "
                         f"least two: add a folder per class to train/ and val/")
    return tuple(names["train"])


def tree_classes(root: Path) -> tuple[tuple[str, ...], list[str]]:
    """The class folders of the tree at ``root`` and the loose files of ``train/`` and ``val/``, from listing those
    two folders only (no class folder is walked, no file opened): what settings are checked with before any work;
    raise on a structural problem of that level."""
    splits = _list_splits(root, Walker())
    return _check_classes(root, splits), [path for split in SPLITS for path, _ in splits[split].files]


def list_tree(root: Path) -> Tree:
    """List ``root``'s tree (see the module docstring); raise on a structural problem."""
    walker = Walker()
    splits = _list_splits(root, walker)
    classes = _check_classes(root, splits)
    tree = Tree(classes, {split: [] for split in SPLITS})
    tree.ignored = [path for split in SPLITS for path, _ in splits[split].files]
    tree.unlisted = [BadFile(split, path, why) for split in SPLITS for path, why in splits[split].problems]
    # Every class folder is entered before any is walked, so a link into another class (or the other split) is
    # found from the link's side, and the class folder itself keeps its files.
    walk = []
    for split in SPLITS:
        folders = {Path(p).name: (p, st) for p, st in splits[split].folders}
        for label, name in enumerate(classes):
            path, st = folders[name]
            why = walker.enter(path, st)
            if why:
                tree.unlisted.append(BadFile(split, path, why))
            else:
                walk.append((split, label, path))
    digest = hashlib.blake2b(repr((classes, tree.unlisted)).encode())
    empty = []
    for split, label, path in walk:
        listing = walker.list(path)
        if not listing.files and not listing.problems:
            empty.append(path)
        tree.files[split] += [(p, label) for p, _, _ in listing.files]
        tree.unlisted += [BadFile(split, p, why) for p, why in listing.problems]
        digest.update(repr((split, label, listing.files, listing.problems)).encode())
    if empty:
        raise ValueError(f"empty class folder(s), every class needs images in train/ and val/: {_some(empty)}")
    tree.stamp = digest.hexdigest()
    return tree


def _decode_all(paths: list[str], progress: bool, workers: int, keep: bool = False) -> list:
    from tqdm import tqdm

    check = check_and_keep if keep else check_file
    bar = tqdm(total=len(paths), desc="scan", unit="file", disable=not progress, leave=False)
    try:
        if workers > 1 and len(paths) >= _PARALLEL_MIN_FILES:
            with ProcessPoolExecutor(workers) as pool:
                reasons = []
                for reason in pool.map(check, paths, chunksize=64):
                    reasons.append(reason)
                    bar.update()
                return reasons
        reasons = []
        for path in paths:
            reasons.append(check(path))
            bar.update()
        return reasons
    finally:
        bar.close()


def scan_folder(path: str | Path, *, progress: bool = True, workers: int = 0, cache: bool = True,
                keep: Callable[[list[str]], bool] | None = None) -> ScanReport:
    """List and decode every file of the ImageFolder tree at ``path``.

    Raises FileNotFoundError if ``path`` does not exist and ValueError for a structural problem (see the module
    docstring); bad entries do not raise here but are listed in the report (``ScanReport.check`` decides). With
    ``cache``, a tree whose files are unchanged (same paths, sizes and modification times) is not decoded twice in
    one process. When ``keep`` says yes to the listed files (in scan order, train then val), the decoded pixels of the
    good files are kept for :func:`held_pixels`.
    """
    root = Path(path).expanduser()
    tree = list_tree(root)
    key = (os.path.realpath(root), tree.stamp)
    if cache and key in _CACHE:
        return _CACHE[key]
    ordered = [(split, p, label) for split in SPLITS for p, label in tree.files[split]]
    paths = [p for _, p, _ in ordered]
    kept = keep is not None and bool(paths) and keep(paths)
    results = _decode_all(paths, progress, workers, keep=kept)
    good: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    pixels: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    bad = list(tree.unlisted)
    for (split, p, label), result in zip(ordered, results, strict=True):
        reason, image = result if kept else (result, None)
        if reason is None:
            good[split].append((p, label))
            if kept:
                pixels[split].append(image)
        else:
            bad.append(BadFile(split, p, reason))
    report = ScanReport(str(root), tree.classes, tuple(good["train"]), tuple(good["val"]), tuple(bad),
                        tuple(tree.ignored), tree.stamp)
    _HELD.clear()  # only the latest scan's: pixels a failed open never took are not kept for the process's life
    if kept:
        _HELD[key] = pixels
    if cache:
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = report
    return report


def held_pixels(report: ScanReport) -> dict[str, list[np.ndarray]] | None:
    """The pixels ``report``'s scan kept (``keep``), per split in the report's order, handed over once; None when
    it kept none (not asked, or the report came from the cache or from another process)."""
    return _HELD.pop((os.path.realpath(report.root), report.stamp), None) if report.stamp else None
