"""The decode benchmark of folder data (``convcanon bench --data folder:...``): how many images/s one worker turns
from files into training tensors, how many the DataLoader delivers with the configured workers, and (on CUDA) how many
the GPU-decode path delivers, against the training step's rate.

The per-worker figure is ``data.throughput.cpu_per_worker`` (the same timing ``decode="auto"`` uses). The loader
figure is the real ``FolderSource`` loader over a sample, counted from the arrival of the W-th batch to the last (W =
workers: their first batches arrive together, after the start-up), so it is the steady-state rate. Timings on a shared
machine are noisy; they are printed, never asserted.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..data.throughput import AUTO_SAMPLE, cpu_per_worker, sample_indices, usable_cpus, warm_page_cache


@dataclass(frozen=True)
class DecodeThroughput:
    """Decode figures of a folder source on one device (``convcanon bench --data folder:...``)."""

    per_worker: float  # images/s of the CPU per-sample path in one process
    sample: int  # files in that figure
    workers: int  # the configured DataLoader workers
    cpus: int  # CPU cores this process may use
    loader: float  # images/s the CPU-decode loader delivers with `workers` workers
    loader_images: int  # images in the loader sample
    choice: str  # the decode path the source uses for this device
    choice_line: str  # ... in words, with the figures of an automatic choice
    gpu: float | None = None  # images/s the GPU-decode loader delivers (CUDA only)
    gpu_error: str | None = None  # why there is no GPU figure on a CUDA device
    augment: str = ""  # the per-sample training transform timed, in words (the recipe's)

    @property
    def delivered(self) -> float:
        """Images/s of the path in use."""
        return self.gpu if self.choice == "gpu" and self.gpu is not None else self.loader

    def workers_needed(self, images_per_s: float) -> int:
        """CPU workers that would keep up with ``images_per_s`` (at the per-worker rate, and if there are cores)."""
        return math.ceil(images_per_s / self.per_worker)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def loader_rate(source, indices: list[int], batch_size: int, device: torch.device, decode: str,
                seed: int = 0) -> float:
    """Steady-state images/s of ``source``'s loader over ``indices`` (see the module docstring)."""
    first = max(1, source.workers)  # the batches that arrive together, after the workers start
    arrivals: list[float] = []
    t0 = time.perf_counter()
    for x, _ in source.sample_batches(indices, batch_size, seed=seed, device=device, decode=decode):
        if device.type == "cuda":
            x.sum().item()  # the batch is on the device, not just queued (a host sync per batch, measured here only)
        arrivals.append(time.perf_counter())
    if len(arrivals) > first:
        return (len(arrivals) - first) * batch_size / (arrivals[-1] - arrivals[first - 1])
    return len(arrivals) * batch_size / (arrivals[-1] - t0)  # too few batches for a steady state: start-up included


def measure_decode(source, device: torch.device, *, sample: int = AUTO_SAMPLE, seed: int = 0) -> DecodeThroughput:
    """Per-worker and loader images/s of ``source`` (a ``FolderSource``) on ``device``, and the GPU path's on CUDA."""
    choice = source.decode_choice(device)
    train_size = source.info.train_size
    per_sample = sample_indices(source, min(sample, train_size), seed)
    # The loader sample: a few rounds of the workers (steady state) in small batches, at most the training set.
    rounds = max(4 * max(1, source.workers), 8)
    batch = max(1, min(16, train_size // rounds))
    loader_sample = sample_indices(source, min(rounds, train_size // batch) * batch, seed)
    warm_page_cache(source, sorted(set(per_sample) | set(loader_sample)))
    per_worker = cpu_per_worker(source, per_sample, seed)
    loader = loader_rate(source, loader_sample, batch, device, "cpu", seed)
    gpu, gpu_error = None, None
    if device.type == "cuda":
        from ..data.gpu_decode import gpu_decode_unavailable

        gpu_error = gpu_decode_unavailable()
        if gpu_error is None:
            try:
                gpu = loader_rate(source, loader_sample, batch, device, "gpu", seed)
            except RuntimeError as err:
                gpu_error = " ".join(str(err).split())[:200]
    return DecodeThroughput(
        per_worker=per_worker, sample=len(per_sample), workers=source.workers, cpus=usable_cpus(), loader=loader,
        loader_images=len(loader_sample), choice=choice.mode, choice_line=choice.describe(), gpu=gpu,
        gpu_error=gpu_error, augment=source.info.augment,
    )  # fmt: skip


def measure_augment(source, device: torch.device, batch_size: int, *, seconds: float = 2.0,
                    seed: int = 0) -> dict[str, Any]:
    """Images/s an in-memory source (digits, CIFAR, a folder held in memory) delivers through its recipe on
    ``device`` (gather, augment, normalize; no model): its training batches of epoch 0, after one warm-up batch, for
    about ``seconds``."""
    batch = min(batch_size, source.info.train_size)
    batches = source.train_batches(0, batch, seed=seed, device=device)
    next(batches)
    count, t0 = 0, time.perf_counter()
    for x, _ in batches:
        if device.type == "cuda":
            x.sum().item()
        count += len(x)
        if time.perf_counter() - t0 > seconds:
            break
    rate = count / (time.perf_counter() - t0) if count else float("nan")
    return {"kind": "memory", "images_per_s": rate, "batch_size": batch, "augment": source.info.augment,
            "cache": source.info.recipe.get("cache", "")}


__all__ = ["DecodeThroughput", "loader_rate", "measure_augment", "measure_decode"]
