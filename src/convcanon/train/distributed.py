"""The process group, as torchrun sets it up: RANK, WORLD_SIZE, LOCAL_RANK in the environment.

One process without those variables is a world of size 1 and never touches torch.distributed, so the same training
code path serves a laptop and a cluster (gloo on CPU, NCCL on GPU, ``--dist-backend`` to choose another).

Faults:

- A killed rank: torchrun notices the exit, stops the others and, under ``--max-restarts N``, starts them all again
  with ``TORCHELASTIC_RESTART_COUNT`` > 0; :func:`restart_count` lets the training loop resume the run it was given.
- A rank that stops making progress without exiting (SIGSTOP, a frozen machine, a lost network) would leave the others
  blocked in a collective. Every rank therefore bumps a counter in torchrun's rendezvous store every few seconds
  (:class:`Heartbeat`, a daemon thread) and watches the others' counters; a rank whose counter has not moved for
  ``--dist-timeout`` seconds is named in an error, and the watcher exits so that torchrun ends (or restarts) the job.
  Counters rather than timestamps, so the clocks of different machines never need to agree. A stopped process stops
  all its threads, heartbeat included; a live process deadlocked in Python still beats, and for it the collective's
  own timeout (``--dist-timeout`` plus a margin) raises torch's error instead.
"""

from __future__ import annotations

import atexit
import datetime
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

BACKENDS = ("gloo", "nccl", "mpi", "ucc", "xccl")
STUCK_EXIT_CODE = 75  # a peer stopped answering (EX_TEMPFAIL: retrying, e.g. a torchrun restart, may succeed)


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None when not distributed
    heartbeat: Heartbeat | None = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA (this process's local rank) when available, else CPU."""
    if preference == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(preference)
    except RuntimeError:
        raise ValueError(f"--device {preference!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {preference}: CUDA is not available on this machine; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        count = torch.cuda.device_count()  # reads the count without initializing CUDA
        if device.index >= count:
            raise ValueError(f"--device {preference}: this machine has {count} CUDA device(s), cuda:0 to "
                             f"cuda:{count - 1}")
    return device


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """NCCL for CUDA devices, gloo otherwise, unless ``--dist-backend`` names one."""
    if backend is None:
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"--dist-backend nccl needs CUDA devices, but this process runs on {device}: use gloo")
    return backend


def restart_count() -> int:
    """How many times torchrun has restarted this job's workers (0 on the first attempt or without torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def heartbeat_interval(timeout_s: float) -> float:
    """Seconds between heartbeats, a fifth of the timeout (0.2 to 15 s). Silence is counted from the last beat seen,
    checked every interval: a stopped rank is named between timeout - 2 and timeout + 2 intervals after it stopped."""
    return min(15.0, max(0.2, timeout_s / 5))


def setup(device_preference: str = "auto", backend: str | None = None, timeout_s: float = 300.0) -> DistContext:
    """Join the process group torchrun describes, or make a world of one.

    ``timeout_s``: a rank silent for that long is named and the job stops (see the module docstring). Collectives
    themselves time out a little later, so that the heartbeat names a stopped rank before torch's error fires.
    """
    if timeout_s <= 0:
        raise ValueError(f"--dist-timeout must be > 0 seconds; got {timeout_s}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size == 1:
        return DistContext(0, 1, 0, device, None)
    backend = resolve_backend(backend, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    margin = 2 * heartbeat_interval(timeout_s) + 5.0
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s + margin)
        store = _attempt_store(timeout)
        if store is None:
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, timeout=timeout, store=store, rank=rank, world_size=world_size)
    # Every process by a name of its own (host, pid, local rank), learned through the new process group: heartbeat keys
    # of an earlier attempt (torchrun restarts) belong to other names and can never be mistaken for this one's.
    names: list[str] = [""] * world_size
    dist.all_gather_object(names, f"{socket.gethostname()} pid {os.getpid()} local rank {local_rank}")
    beat = Heartbeat.start_for(rank, names, timeout_s)
    return DistContext(rank, world_size, local_rank, device, backend, beat)


def _attempt_store(timeout: datetime.timedelta):
    """The store for ``init_process_group`` after a torchrun restart on one machine, or None for torch's default.

    torchrun (seen with torch 2.14; pytorch issue #135712 dates it from 2.5) keeps one rendezvous store for all
    attempts and lets the workers' process group use it without a per-attempt prefix, so a restarted worker can read
    the address a killed worker of the previous attempt published and fail with "Gloo connectFullMesh failed ...
    Connection refused". On one machine the agent's restart count is the same for every worker and makes a sound
    prefix. On several, each agent counts its own restarts, so there torchrun must be told to make a new store for
    each attempt: ``export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` on every node (then this function is not needed).
    """
    attempt = restart_count()
    if attempt == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        print("convcanon: warning: restarted multi-node job on torchrun's shared store; if the process group fails "
              "to connect, export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 on every node (pytorch issue #135712)",
              file=sys.stderr, flush=True)
        return None
    base = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=timeout, wait_for_workers=False)
    return dist.PrefixStore(f"convcanon/{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}/attempt_{attempt}", base)


def teardown(ctx: DistContext | None = None) -> None:
    """Leave the process group; tell the other ranks' heartbeat watchers this rank finished (not stuck)."""
    if ctx is not None and ctx.heartbeat is not None:
        ctx.heartbeat.stop()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------------
# Heartbeat


def _client_store(timeout_s: float):
    """A connection of our own to the rendezvous store torchrun gave the workers (MASTER_ADDR:MASTER_PORT).

    Its own connection, so that a watcher thread never queues behind a store call of the training thread.
    """
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return None
    return dist.TCPStore(addr, int(port), is_master=False, timeout=datetime.timedelta(seconds=timeout_s),
                         wait_for_workers=False)


class Heartbeat:
    """Each rank bumps its counter in the store every ``interval`` seconds and watches every other rank's counter.

    Keys are per process (``beat/NAME``, ``done/NAME``, NAME = host, pid and local rank), so the keys of an earlier
    attempt of a restarted job are never read as this attempt's. A rank whose counter stays the same for ``timeout``
    seconds, and that has not written ``done/NAME``, is stuck: :meth:`_exit` prints which rank (with its name) and
    ends this process with ``STUCK_EXIT_CODE`` (the training thread is blocked in a collective with the stuck rank
    and cannot be woken).
    """

    def __init__(self, store, rank: int, names: list[str], timeout: float, interval: float,
                 prefix: str = "convcanon/heartbeat/", on_stuck=None) -> None:
        self.store, self.rank, self.names = store, rank, list(names)
        self.world_size = len(self.names)
        self.timeout, self.interval, self.prefix = timeout, interval, prefix
        self.on_stuck = on_stuck or self._exit
        self._stop = threading.Event()
        self._beats = 0
        self._thread: threading.Thread | None = None

    @classmethod
    def start_for(cls, rank: int, names: list[str], timeout: float) -> Heartbeat | None:
        interval = heartbeat_interval(timeout)
        try:
            store = _client_store(max(interval, 1.0))
        except Exception as err:  # noqa: BLE001 - without a store there is no heartbeat, only collective timeouts
            print(f"convcanon: rank {rank}: no heartbeat ({err}); a stuck rank will surface as a collective timeout",
                  file=sys.stderr)
            return None
        if store is None:
            return None
        run = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        beat = cls(store, rank, names, timeout, interval, f"convcanon/heartbeat/{run}/").start()
        atexit.register(beat.stop)  # a rank that finished is not stuck, even if it never reached teardown
        return beat

    def start(self) -> Heartbeat:
        self._beat()
        self._thread = threading.Thread(target=self._run, name="convcanon-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _key(self, kind: str, rank: int) -> str:
        return f"{self.prefix}{kind}/{self.names[rank]}"

    def _beat(self) -> None:
        self._beats += 1
        self.store.set(self._key("beat", self.rank), str(self._beats))

    def _read(self, ranks: list[int]) -> dict[int, str | None]:
        values: dict[int, str | None] = {r: None for r in ranks}
        for r in ranks:
            key = self._key("beat", r)
            if self.store.check([key]):
                values[r] = self.store.get(key).decode()
        return values

    def _run(self) -> None:
        others = [r for r in range(self.world_size) if r != self.rank]
        seen: dict[int, tuple[str | None, float]] = {r: (None, time.monotonic()) for r in others}
        store_ok = time.monotonic()
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            try:
                self._beat()
                values = self._read(others)
                done = {r for r in others if self.store.check([self._key("done", r)])}
                store_ok = now
            except Exception as err:  # noqa: BLE001 - the store host may be the stopped process
                if self._stop.is_set():
                    return
                if now - store_ok > self.timeout:
                    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
                    self.on_stuck(f"the rendezvous store at {where} has not answered for {now - store_ok:.1f} s "
                                  f"(--dist-timeout {self.timeout:g}): its host (torchrun's agent, or rank 0) is "
                                  f"stopped or unreachable ({err})")
                    return
                continue
            stuck = []
            for r in others:
                value, since = seen[r]
                if values[r] != value:
                    seen[r] = (values[r], now)
                elif r not in done and now - since > self.timeout:
                    stuck.append((r, now - since))
            if stuck and not self._stop.is_set():
                self.on_stuck("; ".join(
                    f"rank {r} of {self.world_size} ({self.names[r]}) sent no heartbeat for {silent:.1f} s "
                    f"(--dist-timeout {self.timeout:g}): it is stopped, frozen or its machine is unreachable"
                    for r, silent in stuck
                ))  # fmt: skip
                return

    def _exit(self, message: str) -> None:
        print(f"convcanon: rank {self.rank}: {message}. Stopping this rank (exit code {STUCK_EXIT_CODE}) so that "
              "torchrun ends the job, or restarts it from the newest checkpoint under --max-restarts.",
              file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(STUCK_EXIT_CODE)

    def stop(self) -> None:
        """This rank is done: say so (so that no watcher takes the silence for a hang) and stop beating."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self.store.set(self._key("done", self.rank), "1")
        except Exception:  # noqa: BLE001 - the job is ending; a watcher still running will see the process exit
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 1.0)


__all__ = [
    "BACKENDS", "STUCK_EXIT_CODE", "DistContext", "Heartbeat", "heartbeat_interval", "resolve_backend",
    "resolve_device", "restart_count", "setup", "teardown",
]
