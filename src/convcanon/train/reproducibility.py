"""Seeds, determinism switches and the RNG state a checkpoint carries, so a resumed run draws what the original would.

Every RNG the training process touches is captured: Python's ``random``, NumPy's global generator, torch's CPU
generator and each CUDA device's generator. The captured state holds only types that
``torch.load(weights_only=True)`` accepts (tensors, ints, floats, strings, tuples, lists, dicts), so it travels inside a
checkpoint that loads without unpickling code.
"""

from __future__ import annotations

import operator
import os
import random
from typing import Any

import numpy as np
import torch

from ..data.base import derive_seed  # one seed stream for the data order and the loop

_MASK32 = 0xFFFF_FFFF


def capture_rng_state() -> dict[str, Any]:
    """The state of every global RNG, as plain types and tensors (see the module docstring)."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "python": (int(version), tuple(int(k) for k in internal), None if gauss_next is None else float(gauss_next)),
        # numpy's key array is uint32; int64 holds it exactly and is a dtype every torch version serializes.
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": [s.cpu() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what ``capture_rng_state`` returned.

    The CUDA part is applied only when CUDA is available here with as many devices as were captured; otherwise it is
    ignored (a CPU resume of a GPU run cannot reproduce the GPU streams anyway, and a different device count is a
    different run).
    """
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:
        raise ValueError(f"RNG state lacks {missing}; expected the dict that capture_rng_state() returns")
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(k) for k in internal), gauss_next))
    np_state = state["numpy"]
    keys = np_state["keys"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((np_state["kind"], keys.astype(np.uint32), int(np_state["pos"]), int(np_state["has_gauss"]),
                         float(np_state["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every CUDA device included) from one integer in [0, 2**64)."""
    seed = operator.index(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    random.seed(seed)
    # NumPy's legacy seed takes 32 bits; larger seeds (e.g. from derive_seed) go in as two words so none collide,
    # while seeds below 2**32 give the same stream as the familiar np.random.seed(seed).
    np.random.seed(seed if seed <= _MASK32 else [seed & _MASK32, seed >> 32])
    torch.manual_seed(seed)  # seeds every CUDA device too (lazily, so it is safe before CUDA is initialized)


def set_deterministic(enabled: bool) -> None:
    """Make kernels deterministic (``True``) or let them pick the fastest algorithm (``False``).

    ``True`` turns a nondeterministic op into an error (``warn_only=False``) rather than a silently different run.
    """
    if enabled:
        # cuBLAS (CUDA >= 10.2) splits reductions according to its workspace; with the default workspace the split,
        # and so the rounding, can differ between runs, and torch refuses deterministic mode on CUDA without this
        # setting. ":4096:8" is the value NVIDIA and torch document; it is read when the cuBLAS handle is created,
        # so it must be set before the first CUDA matmul. A value the user chose (e.g. ":16:8") is kept.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.deterministic = enabled
    # Autotuning times candidate kernels and keeps the fastest, which may differ between runs; off when deterministic,
    # on otherwise, as torchvision's reference train.py does (the inputs of a training run have one fixed shape).
    torch.backends.cudnn.benchmark = not enabled



__all__ = ["capture_rng_state", "restore_rng_state", "seed_everything", "set_deterministic", "derive_seed"]
