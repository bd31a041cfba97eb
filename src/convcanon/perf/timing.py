"""How the benchmarks time things: subjects that take turns in timed windows, and the device's matmul peak.

Every subject warms up (allocator, oneDNN/cuDNN algorithm choice, compilation), then the subjects take turns in timed
windows, the order reversed every round, so that a shared machine's load hits them alike. Each window runs enough
steps to last about ``window_seconds``; a figure is the median over windows with its min..max, and a ratio is the
median of the per-round ratios (adjacent windows share the machine's state). The GPU is synchronized at window
boundaries only.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Say = Callable[[str], None]


@dataclass
class Series:
    """One subject's rate per timed window (images/s, or FLOP/s for the matmul peak)."""

    rates: list[float] = field(default_factory=list)
    steps: int = 0  # per window
    warmup_s: float = 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def spread(self) -> float:
        """(max - min) / median: how much the windows disagree (the machine's noise, mostly)."""
        return (max(self.rates) - min(self.rates)) / self.median if self.rates and self.median else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": min(self.rates), "max": max(self.rates), "spread": self.spread,
                "windows": list(self.rates), "steps_per_window": self.steps, "warmup_s": round(self.warmup_s, 3)}


# ---------------------------------------------------------------------------------------------------------------------
# Subjects: something to call repeatedly, and what one call is worth


@dataclass
class Subject:
    key: str
    label: str
    train_step: Callable[[], None]
    infer_step: Callable[[], None] | None = None
    flags: Callable[[], None] = lambda: None  # global switches (cuDNN autotuning) this subject runs under
    net: nn.Module | None = None  # what runs (for the record: did compiling fail?)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_matmul_subject(device: torch.device, dtype: torch.dtype, n: int | None = None) -> tuple[Subject, float]:
    """A large square matrix product; returns the subject and its FLOPs per call (2 n^3).

    On CPU the same product is also run as a 1x1 convolution (oneDNN, the library the model's convolutions use) and
    the faster of the two kernels is kept: ``torch.mm`` goes to MKL, which may take a slower path on some CPUs (AMD),
    and a peak below what the convolutions reach would make the utilization meaningless.
    """
    n = n or (8192 if device.type == "cuda" else 2048)
    n = max(32, n // 32 * 32)  # the 1x1-convolution view splits n into 32 rows
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    tf32 = dtype == torch.float32 and device.type == "cuda" and torch.backends.cudnn.allow_tf32

    def matmul() -> None:
        # fp32 convolutions on CUDA run on TF32 tensor cores by default (cudnn.allow_tf32); the peak they are compared
        # with must allow it too.
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            torch.mm(a, b, out=out)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old

    label = f"matmul {n}x{n}x{n} {_dtype_name(dtype)}{' (tf32)' if tf32 else ''}"
    call = matmul
    if device.type == "cpu":
        x = a.view(1, n, 32, n // 32).contiguous(memory_format=torch.channels_last)
        w = b.view(n, n, 1, 1).contiguous(memory_format=torch.channels_last)

        def conv_gemm() -> None:
            F.conv2d(x, w)

        if _fastest(conv_gemm, matmul) is conv_gemm:
            call, label = conv_gemm, label + " as a 1x1 convolution (oneDNN, faster than torch.mm here)"
    return Subject("peak", label, call), 2.0 * n**3


def _fastest(*calls: Callable[[], None]) -> Callable[[], None]:
    best, best_s = calls[0], math.inf
    for call in calls:
        call()  # warm-up
        seconds = min(_window(call, 1, torch.device("cpu")) for _ in range(2))
        if seconds < best_s:
            best, best_s = call, seconds
    return best


def _dtype_name(dtype: torch.dtype) -> str:
    from ..train.engine import AMP_DTYPES

    return "fp32" if dtype == torch.float32 else next(k for k, v in AMP_DTYPES.items() if v == dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Timing


def _window(fn: Callable[[], None], steps: int, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return time.perf_counter() - t0


def _warm(subject_fn: Callable[[], None], flags: Callable[[], None], cfg: Any, device: torch.device,
          steps: int) -> tuple[float, float]:
    """Run ``steps`` warm-up calls; return (their total seconds, the last call's seconds)."""
    flags()
    total, last = 0.0, 0.0
    for _ in range(steps):
        last = _window(subject_fn, 1, device)
        total += last
    return total, last


def _steps_per_window(cfg: Any, step_s: float) -> int:
    if cfg.steps is not None:
        return cfg.steps
    return max(1, round(cfg.window_seconds / max(step_s, 1e-6)))


def alternate(
    subjects: list[tuple[Subject, Callable[[], None], float]],  # (subject, the call to time, work per call)
    cfg: Any,
    device: torch.device,
    say: Say,
    phase: str,
) -> tuple[dict[str, Series], list[str]]:
    """Warm every subject up, then time them in alternating windows; returns the series and the order actually run
    (for the record: subject keys in the order their windows ran)."""
    series: dict[str, Series] = {}
    for subject, call, _work in subjects:
        total, last = _warm(call, subject.flags, cfg, device, cfg.warmup)
        series[subject.key] = Series(steps=_steps_per_window(cfg, last), warmup_s=total)
        say(f"{phase}: {subject.label} warmed up in {total:.1f} s ({cfg.warmup} calls), "
            f"{series[subject.key].steps} per window")
    order: list[str] = []
    for w in range(cfg.windows):
        # Reverse the order every round: a subject is not always the one that runs right after another's window.
        rounds = subjects if w % 2 == 0 else subjects[::-1]
        for subject, call, work in rounds:
            subject.flags()
            s = series[subject.key]
            seconds = _window(call, s.steps, device)
            s.rates.append(work * s.steps / seconds)
            order.append(subject.key)
        say(f"{phase}: window {w + 1}/{cfg.windows}: " + ", ".join(
            f"{sub.key} {series[sub.key].rates[-1]:.4g}" for sub, _, _ in subjects))
    return series, order


def per_round_ratio(a: Series, b: Series) -> float:
    """Median over rounds of a's rate / b's rate in the same round."""
    return statistics.median(x / y for x, y in zip(a.rates, b.rates, strict=True))


__all__ = ["Say", "Series", "Subject", "alternate", "peak_matmul_subject", "per_round_ratio", "sync"]
