"""The standard data sets by name: CIFAR-10, CIFAR-100, MNIST and Fashion-MNIST, downloaded once into a cache.

``fetch(name, root)`` returns the folder holding the set's files under ``root`` (see :func:`data_root`: ``--data-root``,
else ``$CONVCANON_DATA``, else ``$XDG_CACHE_HOME/convcanon/data`` or ``~/.cache/convcanon/data``), downloading what is
missing. The URLs, file names and MD5s are torchvision's (its ``CIFAR10``, ``CIFAR100``, ``MNIST`` and
``FashionMNIST`` classes; the tests compare them), and so is the layout under the root (``cifar-10-batches-py/``,
``cifar-100-python/``, ``MNIST/raw/``, ``FashionMNIST/raw/``): a root torchvision filled serves here, and the reverse.

Why a downloader of our own instead of torchvision's ``download_and_extract_archive``: that one writes the download
under its final name as it arrives and reports a failure as a traceback ("File not found or corrupted"), and it
extracts with ``tarfile.extractall`` without a filter (before Python 3.14 a member named ``../x`` or a link to
``/etc`` is written where it points). Here:

- a download goes to a temporary ``.part`` file beside its target and is renamed only once its MD5 is the published
  one, so a cut-off or corrupted transfer is never used (and a process killed mid-download leaves only a ``.part``
  file, removed by the next download of that file);
- a file already in place (downloaded before, or put there by hand) is used only if its MD5 is the published one;
- an archive is checksummed before it is opened, every member is checked before any is extracted (no absolute path,
  no ``..`` leading out, nothing but files and folders: no links, devices or pipes), it is extracted into a temporary
  folder with tarfile's ``data`` filter as well, and the data set's folder is moved into place only when complete;
- every failure is one line naming the URL, the file, its MD5 and where to put it by hand (``DownloadError``, an
  ``OSError``, when the network fails; ``ValueError`` for a file in the cache that is wrong);
- processes starting together (``torchrun``) download once: the others wait on a lock in the root.

``$CONVCANON_DATA_MIRROR`` (a base URL, ``http://``, ``https://`` or ``file://``) replaces the public servers, for a
mirror on a cluster; the tests point it at a loopback server. ``$CONVCANON_NO_DOWNLOAD=1`` turns the public servers
off (the tests set it): a missing file is then the same one-line error at once, instead of after a timeout.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from ..io import WriteError, refused_write, user_cache_dir
from .walk import shown

ROOT_ENV = "CONVCANON_DATA"
MIRROR_ENV = "CONVCANON_DATA_MIRROR"
OFFLINE_ENV = "CONVCANON_NO_DOWNLOAD"  # set (not "0"): the public servers are never asked; a mirror still is
TIMEOUT_S = 60  # a server silent this long (connecting or between two reads) counts as unreachable
_CHUNK = 1 << 20
_LOCK_NAME = ".download.lock"


@dataclass(frozen=True)
class Remote:
    """Where a data set's files come from and where they are kept under the root."""

    name: str
    mirrors: tuple[str, ...]  # base URLs, tried in order; a file's URL is the base + its name
    files: tuple[tuple[str, str], ...]  # (file name, published MD5)
    folder: str  # under the root: the folder the archive extracts, or the one the files are kept in
    archive: bool  # True: one .tar.gz kept in the root and extracted; False: the files are used as they are
    expected: tuple[str, ...]  # the files the folder holds when complete

    def urls(self, file: str) -> list[str]:
        mirror = os.environ.get(MIRROR_ENV)
        return [_join(base, file) for base in ((mirror,) if mirror else self.mirrors)]


def _join(base: str, file: str) -> str:
    return base + file if base.endswith("/") else f"{base}/{file}"


_CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
              "t10k-labels-idx1-ubyte.gz")

# The published values, exactly as torchvision's dataset classes hold them (tests/data/test_download.py compares).
REMOTES: dict[str, Remote] = {
    "cifar10": Remote("cifar10", ("https://www.cs.toronto.edu/~kriz/",),
                      (("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
                      "cifar-10-batches-py", True, _CIFAR10_FILES),
    "cifar100": Remote("cifar100", ("https://www.cs.toronto.edu/~kriz/",),
                       (("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
                       "cifar-100-python", True, ("train", "test", "meta")),
    "mnist": Remote("mnist", ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
                    tuple(zip(_IDX_FILES, ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                                           "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))),
                    "MNIST/raw", False, _IDX_FILES),
    "fashion-mnist": Remote("fashion-mnist", ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
                            tuple(zip(_IDX_FILES, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                                   "25c81989df183df01b3e8a0aad5dffbe",
                                                   "bef4ecab320f06d8554ea6380940ec79",
                                                   "bb300cfdad3c16e7a12a480ee83cd310"))),
                            "FashionMNIST/raw", False, _IDX_FILES),
}  # fmt: skip


class DownloadError(OSError):
    """A download that failed (no network, an HTTP error, a transfer cut off or corrupted); the message says which
    URL, and which file with which MD5 to put where by hand. The CLI prints it on one line (exit 1)."""

    def __init__(self, url: str, message: str):
        super().__init__(errno.EIO, message, url)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def data_root(given: str | os.PathLike[str] | None = None) -> Path:
    """Where named data sets are kept: ``given`` (``--data-root``), else ``$CONVCANON_DATA``, else
    ``$XDG_CACHE_HOME/convcanon/data`` (an absolute ``XDG_CACHE_HOME`` only, as the XDG spec says), else
    ``~/.cache/convcanon/data``. Nothing is created."""
    if given:
        return Path(given).expanduser()
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).expanduser()
    return user_cache_dir() / "data"


def fetch(name: str, root: str | os.PathLike[str], *, progress: bool = False,
          say: Callable[[str], None] | None = None) -> Path:
    """The folder under ``root`` holding data set ``name``'s files (``Remote.expected``), downloaded and checked
    first when missing (see the module docstring). ``say`` gets one line per download (default: stderr)."""
    remote, root = REMOTES[name], Path(root)
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    if root.exists() and not root.is_dir():
        raise ValueError(f"the data root {shown(root)} is a file, not a folder: pass another --data-root")
    folder = root / remote.folder
    if remote.archive and _missing(folder, remote) == []:
        return folder  # the folder appears only complete (moved into place after a checked extraction)
    if not remote.archive and _in_place(root, remote):
        return folder
    with _locked(root):  # another process may have fetched it while this one waited
        if remote.archive:
            _fetch_archive(remote, root, progress, say)
        else:
            missing = [(f, md5) for f, md5 in remote.files if not _checked(folder / f, md5, remote)]
            for file, md5 in missing:  # after every file in place is checked: a wrong one stops before any request
                _download(remote, file, md5, folder / file, progress, say)
    return folder


def _missing(folder: Path, remote: Remote) -> list[str] | None:
    """The expected files ``folder`` lacks; None when there is no such folder."""
    if not folder.is_dir():
        return None
    return [f for f in remote.expected if not (folder / f).is_file()]


def _in_place(root: Path, remote: Remote) -> bool:
    """Every file of a non-archive set in place with its published MD5 (a wrong one is an error, not a download)."""
    folder = root / remote.folder
    present = [(folder / f).is_file() for f, _ in remote.files]
    return all(present) and all(_checked(folder / f, md5, remote) for f, md5 in remote.files)


def _checked(path: Path, md5: str, remote: Remote) -> bool:
    """True when ``path`` is there with the published MD5; False when absent; ValueError when it differs."""
    if not path.is_file():
        return False
    found = _md5(path)
    if found != md5:
        raise ValueError(f"{shown(path)} has MD5 {found}, not the published {md5} of {remote.name} (a damaged or "
                         f"different file): delete it to download it again, or replace it with "
                         f"{remote.urls(path.name)[0]}{_by_path(remote)}")
    return True


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _by_path(remote: Remote) -> str:
    """How to use a copy the user already has, as the end of an error message."""
    if remote.archive:
        return f", or pass --data {remote.name}:PATH naming an extracted {remote.folder}/ folder"
    return f", or pass --data {remote.name}:PATH naming a folder that holds {', '.join(remote.expected)}"


def _fetch_archive(remote: Remote, root: Path, progress: bool, say: Callable[[str], None]) -> None:
    (file, md5), = remote.files
    folder, archive = root / remote.folder, root / file
    missing = _missing(folder, remote)
    if missing == []:
        return
    if missing is not None:
        raise ValueError(f"{shown(folder)} lacks {', '.join(missing)}: remove that folder, and {remote.name} is "
                         f"extracted again from {file} (downloaded first if it is not in {shown(root)})")
    if not _checked(archive, md5, remote):
        _download(remote, file, md5, archive, progress, say)
    extract_tar(archive, root, remote.folder, remote.expected)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold the root's download lock (waiting for it): one process downloads, the others then find the files."""
    with refused_write(root):
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: unlocked; temporary names and atomic renames still keep the files whole
            pass
        except OSError as err:  # no flock on this file system (some network mounts): unlocked, as above
            if err.errno not in (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
        yield
    finally:
        os.close(fd)


def _download(remote: Remote, file: str, md5: str, dest: Path, progress: bool,
              say: Callable[[str], None]) -> None:
    """``file`` from the first mirror that serves it with the published MD5, to ``dest`` (renamed into place only
    then); DownloadError naming every URL tried and what to do by hand when none does."""
    with refused_write(dest.parent):
        dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.*.part"):  # left by a process killed mid-download (we hold the lock)
        stale.unlink(missing_ok=True)
    urls, failures = remote.urls(file), []
    if os.environ.get(OFFLINE_ENV, "0") not in ("", "0") and not os.environ.get(MIRROR_ENV):
        raise DownloadError(urls[0], f"{file} of {remote.name} is not in {shown(dest.parent)} and downloads are off "
                                     f"here ({OFFLINE_ENV} is set): download {urls[0]} elsewhere and put it at "
                                     f"{shown(dest)} (MD5 {md5}){_by_path(remote)}")
    for url in urls:
        say(f"downloading {remote.name}: {url} -> {shown(dest)}")
        try:
            _transfer(url, md5, dest, progress)
            return
        except _Failed as err:
            failures.append((url, str(err)))
    why = failures[0][1] if len(failures) == 1 else "; ".join(f"{url}: {reason}" for url, reason in failures)
    raise DownloadError(urls[0], f"could not download {file} of {remote.name} ({why}); no network here? download "
                                 f"{urls[0]} elsewhere and put it at {shown(dest)} (MD5 {md5})"
                                 f"{_by_path(remote)}")


class _Failed(Exception):
    pass


def _transfer(url: str, md5: str, dest: Path, progress: bool) -> None:
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    part = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            received, length, digest = _stream(url, out, dest, progress)
        if length is not None and received != length:
            raise _Failed(f"the transfer stopped after {received:,} of {length:,} bytes")
        if digest != md5:
            raise _Failed(f"the file received ({received:,} bytes) has MD5 {digest}, not the published {md5}")
        os.chmod(part, 0o644)  # mkstemp's 0600 would keep a shared cache from its other users
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def _stream(url: str, out, dest: Path, progress: bool) -> tuple[int, int | None, str]:
    """Copy ``url`` into ``out``: (bytes received, Content-Length if the server sent one, their MD5)."""
    digest, received = hashlib.md5(usedforsecurity=False), 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            header = response.headers.get("Content-Length")
            length = int(header) if header and header.isdigit() else None
            with _bar(progress, length, dest.name) as bar:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    received += len(chunk)
                    with refused_write(dest):
                        out.write(chunk)
                    bar(len(chunk))
    except urllib.error.HTTPError as err:
        raise _Failed(f"HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise _Failed(f"{err.reason}") from None
    except HTTPException as err:  # IncompleteRead, a malformed response
        raise _Failed(f"the transfer stopped after {received:,} bytes ({type(err).__name__})") from None
    except WriteError:  # the disk refused the .part file: not a network failure, and named as such
        raise
    except OSError as err:  # a timeout, a reset connection, a TLS failure
        raise _Failed(f"the transfer stopped after {received:,} bytes ({err or type(err).__name__})") from None
    return received, length, digest.hexdigest()


@contextlib.contextmanager
def _bar(progress: bool, total: int | None, what: str) -> Iterator[Callable[[int], object]]:
    if not progress:
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, desc=what, file=sys.stderr, leave=False) as bar:
        yield bar.update


# ---- extraction --------------------------------------------------------------------------------------------------

def check_member(archive: Path, member: tarfile.TarInfo) -> None:
    """A member that may be extracted: a file or folder whose path stays inside the target folder."""
    name = member.name
    parts = Path(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (parts and parts[0].endswith(":")) or ".." in parts:
        raise ValueError(f"{shown(archive)} is refused, nothing extracted: its member {shown(name)!r} would land "
                         "outside the folder it is extracted into")
    if member.issym() or member.islnk():
        raise ValueError(f"{shown(archive)} is refused, nothing extracted: its member {shown(name)!r} is a link (to "
                         f"{shown(member.linkname)!r}); a data archive holds only files and folders")
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"{shown(archive)} is refused, nothing extracted: its member {shown(name)!r} is not a file or "
                         "a folder (a device, a pipe or another special file)")


def extract_tar(archive: Path, root: Path, folder: str, expected: tuple[str, ...]) -> Path:
    """Extract ``folder`` of the (already checksummed) ``archive`` into ``root``: every member checked first
    (:func:`check_member`), extracted into a temporary folder of ``root``, moved into place when it holds
    ``expected``. Returns ``root / folder``."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                check_member(archive, member)
            _extract(tar, members, archive, root, folder, expected)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ValueError(f"{shown(archive)} is not a readable .tar.gz archive ({type(err).__name__}: "
                         f"{shown(str(err))[:200]}): delete it to download it again") from None
    return root / folder


def _extract(tar: tarfile.TarFile, members: list[tarfile.TarInfo], archive: Path, root: Path, folder: str,
             expected: tuple[str, ...]) -> None:
    with refused_write(root):
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{Path(folder).name}.", suffix=".extracting"))
    try:
        with refused_write(tmp):
            if hasattr(tarfile, "data_filter"):  # Python 3.12, and the 3.8.17+ to 3.11.4+ backports
                tar.extractall(tmp, members=members, filter="data")
            else:
                tar.extractall(tmp, members=members)
        lacks = [f for f in expected if not (tmp / folder / f).is_file()]
        if lacks:
            raise ValueError(f"{shown(archive)} does not hold {folder}/ with {', '.join(lacks)}: delete it to "
                             "download it again")
        target = root / folder
        if all((target / f).is_file() for f in expected):
            return  # another process finished first (a file system without flock, where the lock is advisory only)
        os.replace(tmp / folder, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
