"""Helpers of the hostile-data tests: image trees (tests/data/imagetree.py), a snapshot of every file to show that
nothing finished changed, the CLI in a subprocess with a time and memory limit, and a way to make entries
unreadable even as root."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))

from imagetree import make_tree, write_bad, write_image  # noqa: E402

import convcanon  # noqa: E402

__all__ = ["make_tree", "write_bad", "write_image", "snapshot", "run_cli", "no_traceback", "train_args",
           "unreadable_runner"]

SRC = str(Path(convcanon.__file__).resolve().parents[1])
MEMORY_LIMIT = 8 << 30  # address space of a CLI subprocess: a walk that grows without bound fails instead of swapping


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (links not followed): a file's size, modification time and content hash, a link's
    target, or the type of anything else. Taken while every file is readable."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):  # followlinks=False: safe on any tree
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(Path(path).read_bytes()).hexdigest())
            else:
                out[rel] = ("dir" if stat.S_ISDIR(st.st_mode) else "other", stat.S_IFMT(st.st_mode))
    return out


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_cli(args: list[str], *, timeout: float = 120, prefix: list[str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``convcanon ARGS`` in a fresh process (``prefix`` runs it through another program, e.g. setpriv), with a
    time limit and an address-space limit."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([*(prefix or []), sys.executable, "-m", "convcanon", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, preexec_fn=_limit_memory)


def train_args(data: str, out: Path, *extra: str, steps: int = 2) -> list[str]:
    """A tiny CPU training run of ``steps`` steps."""
    return ["train", "--data", data, "--model", "resnet20", "--image-size", "16", "--batch-size", "4",
            "--max-steps", str(steps), "--amp", "off", "--no-channels-last", "--no-progress", "--out", str(out), *extra]


# Root reads any file whatever its mode: without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH it is held to the mode
# bits like any owner. setpriv drops both from the bounding set of the command it runs.
_DROP_READ_CAPS = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def unreadable_runner(tmp_path: Path) -> list[str]:
    """The prefix under which a chmod 000 entry is really unreadable: none for a normal user; setpriv dropping the
    capabilities that let root read anything; skip when neither works here."""
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    try:
        if os.geteuid() != 0:
            if os.access(probe, os.R_OK):
                pytest.skip("chmod 000 does not make a file unreadable here")
            return []
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, where chmod 000 does not deny reads, and setpriv is not installed")
        done = subprocess.run([*_DROP_READ_CAPS, "cat", str(probe)], capture_output=True, text=True)
        if done.returncode == 0 or "Permission denied" not in done.stderr:
            pytest.skip(f"running as root, and setpriv cannot drop the capabilities that read anything here "
                        f"({done.stderr.strip()[:200]})")
        return list(_DROP_READ_CAPS)
    finally:
        probe.unlink()
