"""The ``decode`` setting of folder data: where its JPEG files are decoded ("auto", "cpu" or "gpu"), and whether that
can run here. Checked by ``open_data``, by the folder source, and by ``convcanon train`` before any work starts.
"""

from __future__ import annotations

DECODE_CHOICES = ("auto", "cpu", "gpu")


def check_decode(decode: str) -> None:
    """A ``decode`` setting of folder data: a known name, and "gpu" only where the GPU decoder can run."""
    if decode not in DECODE_CHOICES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_CHOICES)}; got {decode!r}")
    if decode == "gpu":
        import torch

        if not torch.cuda.is_available():  # checked before importing torchvision (seconds)
            raise ValueError("--decode gpu: no CUDA device is visible here; use --decode auto or cpu")
        from .gpu_decode import gpu_decode_unavailable

        why = gpu_decode_unavailable()
        if why:
            raise ValueError(f"--decode gpu: {why}; use --decode auto or cpu")
