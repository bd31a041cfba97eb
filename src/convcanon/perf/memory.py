"""Peak memory of a training step, counting everything the subject holds (weights, gradients, optimizer state, input,
activations).

On CUDA: ``torch.cuda.max_memory_allocated`` during its second step minus what was allocated before it was built
(measured right after building it, before the next subject exists). On CPU, where the allocator keeps no statistics,
a fresh child process builds the subject and runs two steps, and the figure is its peak resident set (VmHWM) minus its
resident set before building, so allocator caching in this process cannot hide or inflate anything (libraries and code
pages are loaded by a tiny step first and not counted).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .timing import Subject, sync


def _proc_status_bytes(field_name: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux), in bytes; None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_now() -> int:
    return _proc_status_bytes("VmRSS") or 0


def _rss_peak() -> int:
    """The resident set's high-water mark. VmHWM belongs to this process's address space; ``ru_maxrss`` would not
    do on Linux: it keeps the parent's high-water mark across the fork and exec that start the child."""
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux and BSD kilobytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _reset_rss_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0, documented in proc(5))
    except OSError:
        pass


def _touch_kernels() -> None:
    """Import the training stack and run one tiny step, so that loading libraries and code pages (hundreds of MiB of
    oneDNN/MKL) is not counted as the benchmarked step's memory."""
    from ..train import optim, task  # noqa: F401
    from ..train.engine import optimizer_kernel

    conv, norm, fc = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 2)
    net = nn.Sequential(conv, norm, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, **{optimizer_kernel("cpu"): True})
    for fmt in (torch.contiguous_format, torch.channels_last):
        net.to(memory_format=fmt)
        x = torch.randn(2, 3, 8, 8).contiguous(memory_format=fmt)
        F.cross_entropy(net(x), torch.tensor([0, 1])).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _child_peak_memory(build: Callable[[Any, str], Subject], cfg: Any, key: str, queue: Any) -> None:
    """In a fresh process: peak RSS of building ``key`` (``build(cfg, key)``) and running two training steps, minus
    the RSS before."""
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        _touch_kernels()
        _reset_rss_peak()
        before = _rss_now()
        subject = build(cfg, key)
        for _ in range(2):
            subject.train_step()
        queue.put((key, max(0, _rss_peak() - before), None))
    except Exception as err:  # noqa: BLE001 - reported by the parent
        queue.put((key, 0, f"{type(err).__name__}: {err}"))


def cuda_peak_memory(subject: Subject, device: torch.device, allocated_before: int) -> int:
    """Peak bytes allocated during a training step (after one that creates the optimizer state), above what was
    allocated before ``subject`` was built: its weights, gradients, optimizer state, input and activations."""
    subject.flags()
    subject.train_step()
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    subject.train_step()
    sync(device)
    return int(torch.cuda.max_memory_allocated(device)) - allocated_before


_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def cpu_peak_memory(build: Callable[[Any, str], Subject], cfg: Any, subject: Subject) -> int:
    """The same figure on CPU, from a child process that builds the subject again with ``build(cfg, subject.key)``, a
    module-level function (it travels to the child by name)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_peak_memory, args=(build, cfg, subject.key, queue))
    # glibc's malloc raises its mmap threshold as large blocks are freed and then keeps freed memory in its heap,
    # so the resident set would depend on the order of allocations more than on what is alive. A fixed threshold
    # serves every block of 128 KiB or more by mmap and returns it on free: peak RSS follows the live tensors.
    saved = {k: os.environ.get(k) for k in _MALLOC_ENV}
    os.environ.update(_MALLOC_ENV)
    try:
        proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        key, value, error = queue.get(timeout=3600)
    finally:
        proc.join()
    if error:
        raise RuntimeError(f"measuring the memory of {subject.label} failed in the child process: {error}")
    return int(value)


__all__ = ["cpu_peak_memory", "cuda_peak_memory"]
