"""Listing a data folder without trusting it, and printing the names found there.

A folder tree handed to training may hold anything: symlinks that lead back up the tree, links to nowhere, folders
and files that cannot be read, named pipes (opening one blocks forever), names with newlines or terminal escape
sequences. This module turns each of those into an entry with a reason, never a hang or a traceback:

- ``Walker`` lists the files under a folder, following symlinks (a data set assembled from links is common) but
  entering each real folder, known by its (device, inode), at most once: a link back to a folder already entered is a
  "symlink loop" when that folder is one of its own ancestors, else "links to a folder already listed" (the same
  images twice: in two classes, or in train/ and val/). Memory and time are bounded by the real tree, whatever the
  links; the order is ``os.walk``'s, top-down with names sorted.
- ``shown(name)`` is how a name from the tree is printed: control characters, escape sequences, line breaks and other
  non-printable characters as backslash escapes, so a hostile name can neither erase nor forge a terminal line.
- ``unsafe_chars(name)`` are the characters a class name may not hold: class names are stored as a list in the run
  and the weights' metadata, where a line break would split one class into two.
"""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
from dataclasses import dataclass, field

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Characters that reorder the text around them on screen ("Trojan source"): a name holding one can read as another.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_LINE_BREAKING = frozenset({"Cc", "Cs", "Zl", "Zp"})  # controls, undecodable bytes, line and paragraph separators


def shown(name: str | os.PathLike[str]) -> str:
    """``name`` as it may be printed: printable characters as they are, a backslash doubled, and everything else as
    Python writes it in a string literal (``\\n``, ``\\x1b``, ``\\u202e``); a byte that is not UTF-8 (decoded by
    ``os.fsdecode`` as a lone surrogate) as ``\\xNN``."""
    text = os.fspath(name)
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape(c) for c in text)


def _escape(c: str) -> str:
    if c in _ESCAPES:
        return _ESCAPES[c]
    if c.isprintable():
        return c
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def unsafe_chars(name: str) -> str:
    """The characters of ``name`` that break or reorder lines wherever it is printed or stored one per line, each
    escaped and listed once; "" when there are none."""
    bad = {c for c in name if unicodedata.category(c) in _LINE_BREAKING or c in _BIDI_CONTROLS}
    return " ".join(shown(c) for c in sorted(bad))


def os_reason(err: OSError) -> str:
    """Why a file or folder could not be used, in words, from the error of the call that failed."""
    code = err.errno
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.ENOENT:
        return "missing (deleted or moved)"
    if code == errno.ELOOP:
        return "symlink loop (the link never resolves)"
    if code == errno.EISDIR:
        return "a folder, not a file"
    if code == errno.EIO:
        return "I/O error (a failing disk or network storage)"
    return f"cannot be read: {err.strerror or err}"


def _link_reason(path: str, err: OSError) -> str:
    if err.errno == errno.ENOENT:
        try:
            target = os.readlink(path)
        except OSError:
            return "dangling link (its target does not exist)"
        return f"dangling link (its target {shown(target)} does not exist)"
    return os_reason(err)


_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"))


def not_regular(mode: int) -> str | None:
    """Why a stat mode that is neither a folder nor a regular file is not read (a pipe would block the reader)."""
    for test, what in _NOT_REGULAR:
        if test(mode):
            return f"not a regular file ({what})"
    return None if stat.S_ISREG(mode) else "not a regular file"


@dataclass
class Listing:
    """What ``Walker.list`` found under one folder: regular files (path, size, mtime_ns) and problems (path,
    reason), in walk order."""

    files: list[tuple[str, int, int]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Entries:
    """One folder's visible entries, classified (names starting with "." are left out)."""

    folders: list[tuple[str, os.stat_result]] = field(default_factory=list)
    files: list[tuple[str, os.stat_result]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def entries(folder: str) -> Entries:
    """Classify the visible entries of ``folder``, sorted by name; raises the OSError of listing ``folder`` itself."""
    with os.scandir(folder) as listing:
        found = sorted((e.name, e.path, e.is_symlink()) for e in listing if _visible(e.name))
    out = Entries()
    for _, path, is_link in found:
        try:
            st = os.stat(path)  # follows links
        except OSError as err:
            out.problems.append((path, _link_reason(path, err) if is_link else os_reason(err)))
            continue
        if stat.S_ISDIR(st.st_mode):
            out.folders.append((path, st))
        elif stat.S_ISREG(st.st_mode):
            out.files.append((path, st))
        else:
            out.problems.append((path, not_regular(st.st_mode) or "not a regular file"))
    return out


class Walker:
    """Lists files under folders of one tree, entering each real folder (device, inode) at most once."""

    def __init__(self) -> None:
        self.entered: dict[tuple[int, int], str] = {}  # (st_dev, st_ino) -> the path it was first entered by

    def enter(self, path: str, st: os.stat_result) -> str | None:
        """Record the folder ``path``; None when it is new, else why it is not entered again."""
        key = (st.st_dev, st.st_ino)
        first = self.entered.get(key)
        if first is None:
            self.entered[key] = path
            return None
        if path.startswith(first.rstrip(os.sep) + os.sep):
            return f"symlink loop (leads back to {shown(first)})"
        return f"links to {shown(first)}, a folder already listed"

    def list(self, top: str) -> Listing:
        """Every visible regular file under ``top`` (entered by the caller), top-down, names sorted; loops, links to
        folders already listed, dangling links, unreadable folders and anything not a regular file are problems."""
        out = Listing()
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                found = entries(folder)
            except OSError as err:
                out.problems.append((folder, f"{os_reason(err)}: the folder cannot be listed, its files were not read"))
                continue
            out.files += [(path, st.st_size, st.st_mtime_ns) for path, st in found.files]
            out.problems += found.problems
            deeper = []
            for path, st in found.folders:
                why = self.enter(path, st)
                if why is None:
                    deeper.append(path)
                else:
                    out.problems.append((path, why))
            stack += reversed(deeper)
        return out
