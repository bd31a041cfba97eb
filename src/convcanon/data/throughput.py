"""The ``decode="auto"`` choice of folder data between decoding on the CPU (PIL, in the DataLoader workers) and on
the GPU (nvJPEG), and the timings it is made from (also what ``perf.decode``, the decode benchmark, reports).

What one worker does per training sample, and what is timed: read the file, decode it (PIL), RandomResizedCrop, flip,
to a uint8 tensor (``folder.ImageFiles``). "Per worker" is that path in this process, one file after another, with
the files already in the page cache (a read from a cold disk is the disk's figure, not the decoder's). Timings on a
shared machine are noisy; they are printed, never asserted.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import derive_seed, epoch_permutation

AUTO_SAMPLE = 64  # files timed both ways by decode="auto" on CUDA
_SAMPLE_SEED_EPOCH = 10**6  # the sample's permutation: any fixed epoch number that training never reaches


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def sample_indices(source, n: int, seed: int = 0) -> list[int]:
    """``n`` training files, spread over the classes (a fixed permutation's first ``n``)."""
    perm = epoch_permutation(source.info.train_size, seed=seed, epoch=_SAMPLE_SEED_EPOCH)
    return perm[:n].tolist()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_page_cache(source, indices: list[int]) -> None:
    for i in indices:
        try:
            Path(source._train.paths[i]).read_bytes()
        except OSError:  # gone since the scan: the timed paths read it again and report it (``stale``)
            pass


def cpu_per_worker(source, indices: list[int], seed: int = 0) -> float:
    """Images/s of the whole CPU per-sample path (read, decode, crop, flip, to tensor) in this process."""
    files = source._train
    files[indices[0], derive_seed(seed, 0, indices[0])]  # warm-up: imports, first allocation
    t0 = time.perf_counter()
    for i in indices:
        files[i, derive_seed(seed, 0, i)]
    return len(indices) / (time.perf_counter() - t0)


@dataclass(frozen=True)
class GpuPathTimes:
    read_per_worker: float  # images/s of the workers' half in one process: read, sniff the header, draw the crop
    gpu: float  # images/s of the main process's half: nvJPEG decode, orient, crop, resize, flip on the device
    jpeg_fraction: float  # share of the sample that went to the GPU decoder


def gpu_path_times(source, indices: list[int], device: torch.device, seed: int = 0) -> GpuPathTimes:
    """Both halves of the GPU path on a sample, in this process (nothing else runs on the GPU meanwhile)."""
    from .gpu_decode import EncodedFiles, GpuBatches, collate_encoded

    files = source._train
    encoded = EncodedFiles(files)
    t0 = time.perf_counter()
    samples = [encoded[i, derive_seed(seed, 0, i), i in files.gpu_refused] for i in indices]
    read = len(indices) / (time.perf_counter() - t0)
    jpegs = [s for s in samples if s.data is not None]
    if not jpegs:
        return GpuPathTimes(read, 0.0, 0.0)
    to_pixels = GpuBatches(files, files.size)
    to_pixels(collate_encoded(jpegs[:4]), device)  # warm-up: nvJPEG's handle and buffers are made on first use
    _sync(device)
    batch = collate_encoded(samples)
    best = math.inf
    for _ in range(2):  # the faster of two: the first may still grow the allocator's cache
        t0 = time.perf_counter()
        to_pixels(batch, device)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return GpuPathTimes(read, len(indices) / best, len(batch.rows) / len(indices))


@dataclass(frozen=True)
class DecodeChoice:
    """Where a folder source's batches for one device are decoded, why, and the figures behind an automatic choice."""

    mode: str  # "cpu" | "gpu"
    reason: str
    device: str = "cpu"
    workers: int = 0
    cpu_images_per_s: float | None = None  # PIL in the workers: per-worker rate x min(workers, CPUs)
    gpu_images_per_s: float | None = None  # nvJPEG path: min(workers' read rate x ..., the GPU half's rate)
    sample: int = 0

    def describe(self) -> str:
        where = (f"nvJPEG on {self.device}, {self.workers} worker(s) reading bytes" if self.mode == "gpu" else
                 f"PIL in {self.workers} DataLoader worker(s)" if self.workers else "PIL in the main process")
        return f"{self.mode} ({where}; {self.reason})"


def choose_decode(source, device: torch.device) -> DecodeChoice:
    """Resolve ``source.decode`` for ``device``: "cpu" and "gpu" as asked (and "gpu" on a CPU device is an error),
    "auto" = "cpu" off CUDA; on CUDA, the faster path on ``AUTO_SAMPLE`` files (see ``DecodeChoice``)."""
    asked, workers = source.decode, source.workers
    base = {"device": str(device), "workers": workers}
    if device.type != "cuda":
        if asked == "gpu":
            raise ValueError(f"decode 'gpu' needs a CUDA device; the folder data is read for {device}: use --decode "
                             "auto or cpu")
        return DecodeChoice("cpu", f"{device.type} device" if asked == "auto" else "as asked", **base)
    if asked != "auto":
        return DecodeChoice(asked, "as asked", **base)
    from .gpu_decode import gpu_decode_unavailable

    why = gpu_decode_unavailable()
    if why:
        return DecodeChoice("cpu", f"auto: {why}", **base)
    indices = sample_indices(source, min(AUTO_SAMPLE, source.info.train_size))
    warm_page_cache(source, indices)
    used = max(1, min(workers, usable_cpus()))  # workers beyond the cores do not add throughput
    cpu = cpu_per_worker(source, indices) * used
    try:
        times = gpu_path_times(source, indices, device)
    except RuntimeError as err:  # e.g. torchvision built without nvJPEG
        return DecodeChoice("cpu", f"auto: the GPU decoder failed ({' '.join(str(err).split())[:160]})",
                            cpu_images_per_s=cpu, sample=len(indices), **base)
    if times.jpeg_fraction == 0:
        return DecodeChoice("cpu", f"auto: none of {len(indices)} sampled files is a JPEG the GPU decodes",
                            cpu_images_per_s=cpu, sample=len(indices), **base)
    gpu = min(times.read_per_worker * used, times.gpu)
    mode = "gpu" if gpu > cpu else "cpu"
    fig = (f"{gpu:,.0f} images/s with nvJPEG vs {cpu:,.0f} with PIL in {used} process(es), timed on {len(indices)} "
           "files")
    return DecodeChoice(mode, f"auto: {fig}", cpu_images_per_s=cpu, gpu_images_per_s=gpu, sample=len(indices),
                        **base)
