"""The evaluation transform of a trained model, from its recorded preprocessing (``model.pretrained_cfg``).

``eval_transform(cfg)`` turns a PIL image into the float tensor the model was evaluated on in training: converted to
the model's channels (grayscale for one, RGB for three), shorter side resized to ``crop / crop_pct`` (bilinear,
antialiased), center-cropped to the input size, scaled to 0..1 and normalized by ``mean`` and ``std``. The same steps
as the folder data's evaluation, and for the in-memory sets (crop_pct 1) the resize they were trained at.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}


def eval_transform(cfg: dict[str, Any]) -> v2.Compose:
    """PIL image -> normalized float tensor (C, H, W) as ``cfg`` (timm's data config keys: ``input_size``,
    ``crop_pct``, ``interpolation``, ``mean``, ``std``) says."""
    chans, side = int(cfg["input_size"][0]), int(cfg["input_size"][-1])
    mode = "L" if chans == 1 else "RGB"
    return v2.Compose([
        v2.Lambda(lambda img: img.convert(mode) if isinstance(img, Image.Image) and img.mode != mode else img),
        v2.PILToTensor(),
        v2.Resize(round(side / float(cfg.get("crop_pct", 1.0))), interpolation=_INTERPOLATION[cfg["interpolation"]],
                  antialias=True),
        v2.CenterCrop(side),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(cfg["mean"]), list(cfg["std"])),
    ])  # fmt: skip


__all__ = ["eval_transform"]
