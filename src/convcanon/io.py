"""Atomic file writes: what every part of convcanon that writes a file (checkpoints, run records, metrics, the
experiment cache, the evidence report) goes through.

A write goes to a hidden temporary file in the destination's directory (``.NAME.tmp-PID``), is flushed and fsync'ed,
renamed over the final name, and then the directory is fsync'ed so that the rename itself survives a power loss. A
kill at any instant leaves under the final name either the old file or the complete new one, never a part. A write
that fails (an exception, a full disk) removes its temporary file; one that is killed leaves it behind, and
:func:`remove_stale_temps` removes those whose writer is gone. Readers never take a temporary file for the file itself:
its name starts with a dot and ends with ``.tmp-PID``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------------------------- atomic file writes


def _fsync_dir(directory: PathLike) -> None:
    """Make a rename in ``directory`` durable; without it a power loss may bring back the old directory entry."""
    if os.name == "nt":  # directories cannot be opened for fsync on Windows; NTFS journals the rename itself
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems (e.g. certain network mounts) do not support fsync on directories
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _temp_path(path: PathLike) -> Path:
    """The temporary file this process writes ``path`` through: hidden, in the same directory (so that the rename
    stays on one file system), named after the writer's pid (so that a killed writer's file can be told apart)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Replace ``path`` with what ``write(file)`` writes to the binary ``file``, atomically; return ``path``.

    Creates the parent directories. If ``write`` raises, ``path`` is left as it was and the temporary file removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = 2,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """Replace ``path`` with ``obj`` as JSON (and a final newline) atomically. ``indent`` and ``default`` are
    ``json.dumps``'s; an object JSON cannot hold fails before anything is written."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=default) + "\n")


def atomic_link_or_copy(source: PathLike, path: PathLike) -> Path:
    """Replace ``path`` with the content of the file ``source`` atomically: a hard link (a second name, no bytes
    copied) where the file system has them, else a copy. Meant for files that are replaced, never changed in place."""
    source, path = Path(source), Path(path)
    tmp = _temp_path(path)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:  # no hard links here (some network and FUSE file systems)
        with open(source, "rb") as src:
            return atomic_write(path, lambda f: shutil.copyfileobj(src, f, 1 << 20))
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


# ------------------------------------------------------------------------------------------- leftovers of killed writes


_TEMP_RE = re.compile(r"^\..+\.tmp-(\d+)$")  # the names _temp_path gives, with the writer's pid


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (one owned by another user counts)."""
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT on Windows; assume alive and leave its files
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(directory: PathLike) -> None:
    """Remove the temporary files in ``directory`` left by killed writes: this process's own (it is not mid-write
    while it calls this) and those of processes that no longer exist. A live writer's file is left alone."""
    for p in Path(directory).iterdir():
        m = _TEMP_RE.match(p.name)
        if m and (int(m.group(1)) == os.getpid() or not _pid_alive(int(m.group(1)))):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


__all__ = [
    "atomic_link_or_copy", "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
    "remove_stale_temps",
]
