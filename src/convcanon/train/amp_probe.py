"""The precision probe's measurements, kept between runs on this machine.

``engine.measure_amp`` times one forward-backward pass of fp32 and of bf16 on the step a run is about to take (about a
second for a small step on two cores). The answer depends on the machine, torch and the step, not on the run, so it is
kept in ``amp-probe.json`` under :func:`convcanon.io.user_cache_dir`, keyed by everything it depends on: the CPU and
its thread count, the torch and convcanon versions, the model (its module tree and which parameters train), the batch,
the input and the class count, the memory format and the small-map GEMM. A run of the same step again reads the two
times instead of measuring them, says where they came from, and decides by the same rule; ``--amp off`` or
``--amp bf16`` skip the probe altogether, and deleting the file measures again. The file is a cache: one that cannot be
read or written is measured around and left alone.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import atomic_write_json, user_cache_dir

FILE = "amp-probe.json"
MAX_ENTRIES = 64  # the oldest go first


def probe_path() -> Path:
    return user_cache_dir() / FILE


def probe_key(model: nn.Module, shape: Any, channels_last: bool, small_map_gemm: bool, cpu: str) -> str:
    """The measurement's identity: ``shape`` is the ``engine.StepShape``; ``cpu`` names the processor and threads."""
    from .. import __version__

    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    what = repr((cpu, torch.__version__, __version__, repr(model), trainable, shape.batch, shape.in_chans,
                 shape.side, shape.num_classes, channels_last, small_map_gemm))
    return hashlib.blake2b(what.encode(), digest_size=16).hexdigest()


def _entries(path: Path) -> dict[str, Any]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def recall(key: str, path: Path | None = None) -> tuple[float, float, str] | None:
    """(fp32 seconds, bf16 seconds, when measured) kept for ``key``, or None."""
    entry = _entries(path or probe_path()).get(key)
    try:
        return float(entry["fp32"]), float(entry["bf16"]), str(entry["when"])
    except (TypeError, KeyError, ValueError):
        return None


def remember(key: str, fp32: float, bf16: float, path: Path | None = None) -> None:
    """Keep the two times for ``key`` (best effort: a file that cannot be written is left as it is)."""
    path = path or probe_path()
    entries = _entries(path)
    entries.pop(key, None)
    entries[key] = {"fp32": fp32, "bf16": bf16, "when": time.strftime("%Y-%m-%d %H:%M")}
    while len(entries) > MAX_ENTRIES:
        entries.pop(next(iter(entries)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, entries)
    except OSError:
        pass


__all__ = ["FILE", "MAX_ENTRIES", "probe_key", "probe_path", "recall", "remember"]
