"""Decoding one image file to 8-bit RGB, whatever its mode, for the folder data set and the scan.

PIL rather than ``torchvision.io.decode_image``: one decoder that reads every format a photo folder holds (JPEG, PNG,
GIF, BMP, TIFF, WebP), gives the EXIF orientation, and converts every mode. Two conversions need care, because PIL's
own ``convert("RGB")`` gets them wrong for training: 16-bit greyscale is clipped at 255 (almost every pixel white) and
palette images with a transparent colour warn. Alpha is dropped, as torchvision's loaders do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Extensions counted as images when the scan explains why a file that does not decode is bad (corrupt image vs
# not an image at all); every file is decoded regardless of its name.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff",
                              ".webp", ".jfif"})

# The side folder data is cropped to when no --image-size is given: the canon's ImageNet input.
DEFAULT_IMAGE_SIZE = 224

_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``img`` (any PIL mode)."""
    mode = img.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        grey = np.asarray(img).astype(np.int64)
        # 32-bit "I" images that only use 0..255 are 8-bit data; anything above is 16-bit (how PNG's 16-bit grey
        # decodes in older Pillow).
        if mode in _SIXTEEN_BIT or grey.max(initial=0) > 255:
            grey = (grey.clip(0, 65535) * 255 + 32767) // 65535
        img = Image.fromarray(grey.clip(0, 255).astype(np.uint8), "L")
    elif mode == "F":
        img = Image.fromarray(np.rint(np.asarray(img)).clip(0, 255).astype(np.uint8), "L")
    elif mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except ValueError:  # modes with no direct path, e.g. premultiplied "La"
        return img.convert("RGBA").convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` in full (a truncated or corrupt file raises here, not later), apply its EXIF orientation, and
    return it as 8-bit RGB."""
    with Image.open(path) as img:
        img.load()
        upright = ImageOps.exif_transpose(img)
        return to_rgb(upright if upright is not None else img)
