"""Atomic file writes, clear errors when the disk refuses them, and the run-directory lock: what every part of
convcanon that writes a file (checkpoints, run records, metrics, the experiment cache, the evidence report) goes
through.

A write goes to a hidden temporary file in the destination's directory (``.NAME.tmp-PID``), is flushed and fsync'ed,
renamed over the final name, and then the directory is fsync'ed so that the rename itself survives a power loss. A
kill at any instant leaves under the final name either the old file or the complete new one, never a part. A write
that fails (an exception, a full disk) removes its temporary file; one that is killed leaves it behind, and
:func:`remove_stale_temps` removes those whose writer is gone. Readers never take a temporary file for the file itself:
its name starts with a dot and ends with ``.tmp-PID``.

A write the file system refuses (a full disk, a quota, read-only storage, no permission) raises :class:`WriteError`,
which names the path, the reason and the free space, instead of an OSError from deep inside a serializer; earlier
files are untouched (nothing but the temporary file was written), so a run stays resumable once space is freed.

A run directory is owned by one process at a time: :class:`RunLock` (an advisory ``flock`` on ``DIR/.lock``, which
holds the owner's pid, host and command) is taken before anything is written and held until the process exits; the
kernel drops it when the owner dies, so a crashed run never leaves a stale lock behind.
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


def user_cache_dir() -> Path:
    """convcanon's folder for what it keeps between runs on this machine: ``$XDG_CACHE_HOME/convcanon`` (an absolute
    ``XDG_CACHE_HOME`` only, as the XDG spec says), else ``~/.cache/convcanon``. Nothing is created."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path("~/.cache").expanduser()) / "convcanon"


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


class WriteError(OSError):
    """The file system refused a write (full, over quota, read-only, no permission); the message names the path."""


_REFUSALS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
             errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
             errno.EPERM: "permission denied"}


def free_space(path: PathLike) -> str:
    """The free space on the file system holding ``path`` (or its nearest existing parent), in words."""
    here = Path(path)
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        free = shutil.disk_usage(here).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:,.1f} MiB free"


def write_error(path: PathLike, err: OSError) -> OSError:
    """``err`` as a :class:`WriteError` naming ``path`` when the file system refused the write, else ``err``."""
    why = _REFUSALS.get(err.errno or 0)
    if why is None or isinstance(err, WriteError):
        return err
    # Some writers (torch.save's zip writer) report a full disk as a RuntimeError; see ``refused_write``.
    return WriteError(err.errno, f"cannot write {path}: {why} ({free_space(path)}); the files written before are "
                                 "intact: free space or pick another place, then run again")


@contextlib.contextmanager
def refused_write(path: PathLike):
    """Turn a refused write inside the block into a :class:`WriteError` naming ``path``. torch.save reports a full
    disk as a RuntimeError ("unexpected pos ..."); the disk's free space tells that case apart."""
    try:
        yield
    except OSError as err:
        raise write_error(path, err) from None
    except RuntimeError as err:
        if "unexpected pos" in str(err) or "file write failed" in str(err):
            raise write_error(path, OSError(errno.ENOSPC, str(err))) from None
        raise


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Replace ``path`` with what ``write(file)`` writes to the binary ``file``, atomically; return ``path``.

    Creates the parent directories. If ``write`` raises, ``path`` is left as it was and the temporary file removed;
    a write the file system refuses raises :class:`WriteError`.
    """
    path = Path(path)
    tmp = _temp_path(path)
    with refused_write(path):
        path.parent.mkdir(parents=True, exist_ok=True)
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


# --------------------------------------------------------------------------------------------- the run-directory lock


LOCK_NAME = ".lock"


class RunLockedError(ValueError):
    """Another live process owns the run directory."""


class RunLock:
    """The advisory lock that makes one process the owner of a run directory (see the module docstring).

    ``RunLock(dir).acquire(what)`` takes it or raises :class:`RunLockedError` naming the owner; ``release()`` (or the
    process's exit) gives it back. Directories on file systems without ``flock`` (some network mounts) are used
    unlocked, with a warning printed once.
    """

    def __init__(self, directory: PathLike) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, what: str) -> RunLock:
        import fcntl
        import socket
        import sys
        import time

        with refused_write(self.path):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(f"{self.path.parent} is in use by {owner}: wait for it to finish or stop it, or "
                                 "pick another directory") from None
        except OSError as err:  # no flock on this file system
            os.close(fd)
            if err.errno not in (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise write_error(self.path, err) from None
            print(f"convcanon: warning: {self.path.parent} cannot be locked here ({err.strerror}); make sure no other "
                  "process uses it", file=sys.stderr)
            return self
        owner = f"pid {os.getpid()} on {socket.gethostname()} ({what}, since {time.strftime('%Y-%m-%d %H:%M:%S')})"
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = [
    "LOCK_NAME", "RunLock", "RunLockedError", "WriteError", "atomic_link_or_copy", "atomic_write",
    "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "free_space", "refused_write",
    "remove_stale_temps", "write_error",
]
