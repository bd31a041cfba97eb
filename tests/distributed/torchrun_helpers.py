"""Launching torchrun from tests, and never leaving a process behind.

torchrun starts each worker in a session of its own, so killing torchrun's process group does not reach them, and a
worker orphaned by a killed torchrun keeps running. Every process a test starts therefore carries a unique tag in its
environment (workers inherit torchrun's environment); cleanup kills every process of ours that has the tag, whatever
became of its parent.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

TAG = "CONVCANON_TEST_TAG"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tagged_pids(tag: str) -> list[int]:
    """Processes whose environment holds ``TAG=tag`` (ours: /proc/PID/environ is readable for our own processes)."""
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry.name))
    return found


def worker_pid(tag: str, rank: int) -> int | None:
    """The pid of the training worker with ``RANK=rank`` among the tagged processes (not torchrun itself)."""
    for pid in tagged_pids(tag):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and any(e.startswith(b"LOCAL_RANK=") for e in env):
            return pid
    return None


class Launch:
    """One torchrun (or other) command started with a tag; output collected by a thread, readable while it runs."""

    def __init__(self, argv: list[str], env: dict[str, str], tag: str) -> None:
        self.tag = tag
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tagged(self.tag)
            self._reader.join(timeout=5)
            raise AssertionError(f"timed out after {timeout} s; output:\n{self.output[-6000:]}") from None
        self._reader.join(timeout=10)
        return rc

    def wait_for(self, predicate, timeout: float, what: str, poll: float = 0.02) -> float:
        """Wait until ``predicate()`` holds; return the seconds it took. Fails (with the output) on timeout or exit."""
        t0 = time.monotonic()
        while not predicate():
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"{what}: not within {timeout} s; output:\n{self.output[-6000:]}")
            if self.proc.poll() is not None and not predicate():
                time.sleep(0.2)  # let the reader catch the last lines
                if predicate():
                    break
                raise AssertionError(f"{what}: the command ended first (rc {self.proc.returncode}); output:\n"
                                     f"{self.output[-6000:]}")
            time.sleep(poll)
        return time.monotonic() - t0


def kill_tagged(tag: str) -> None:
    for _ in range(3):
        pids = tagged_pids(tag)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


class Launcher:
    """The ``launcher`` fixture: starts tagged commands, kills whatever is left of them at teardown."""

    def __init__(self) -> None:
        self.tags: list[str] = []

    def env(self, tag: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            TAG: tag,
            "OMP_NUM_THREADS": "1",  # one thread per worker: 2 cores, and the same arithmetic in every run compared
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", ""),
            "LOGLEVEL": "WARNING",
        })  # fmt: skip
        env.update(extra or {})
        return env

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> Launch:
        tag = uuid.uuid4().hex
        self.tags.append(tag)
        return Launch(argv, self.env(tag, env), tag)

    def torchrun(self, train_args: list[str], *, nproc: int = 2, torchrun_args: list[str] | None = None,
                 module: str = "convcanon", env: dict[str, str] | None = None) -> Launch:
        """``torchrun --nproc-per-node N [--standalone] -m convcanon train ...`` (standalone unless rdzv is given)."""
        targs = list(torchrun_args or [])
        if not any(a.startswith("--rdzv") for a in targs):
            targs = ["--standalone", *targs]
        argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), *targs]
        argv += ["-m", module, *train_args] if module else train_args
        return self.start(argv, env)

    def run(self, train_args: list[str], *, timeout: float = 240, check: bool = True, **kw) -> Launch:
        launch = self.torchrun(train_args, **kw)
        rc = launch.wait(timeout)
        if check and rc != 0:
            raise AssertionError(f"torchrun failed (rc {rc}); output:\n{launch.output[-6000:]}")
        return launch

    def cleanup(self) -> None:
        for tag in self.tags:
            kill_tagged(tag)
