"""Image trees written by the data tests: good images in every awkward mode, and the usual kinds of bad file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def noise(size: tuple[int, int], channels: int, seed: int) -> np.ndarray:
    w, h = size
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_image(path: Path, kind: str, seed: int = 0, size: tuple[int, int] = (20, 14)) -> Path:
    """One good image of ``kind``: rgb-jpg, rgb-png, L, P, P-transparent, RGBA, CMYK, I;16, exif-rotated."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(noise(size, 3, seed), "RGB")
    if kind == "rgb-jpg":
        rgb.save(path, "JPEG")
    elif kind == "rgb-png":
        rgb.save(path, "PNG")
    elif kind == "L":
        Image.fromarray(noise(size, 1, seed), "L").save(path, "JPEG")
    elif kind == "P":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(path, "PNG")
    elif kind == "P-transparent":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(path, "PNG", transparency=0)
    elif kind == "RGBA":
        Image.fromarray(noise(size, 4, seed), "RGBA").save(path, "PNG")
    elif kind == "CMYK":
        Image.fromarray(noise(size, 4, seed), "CMYK").save(path, "JPEG")
    elif kind == "I;16":
        grey = noise(size, 1, seed).astype(np.uint16) * 257  # the full 16-bit range
        Image.fromarray(grey).save(path, "PNG")
    elif kind == "exif-rotated":
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6  # "rotate 90 CW to display"
        rgb.save(path, "JPEG", exif=exif)
    else:
        raise ValueError(kind)
    return path


GOOD_KINDS = ("rgb-jpg", "rgb-png", "L", "P", "P-transparent", "RGBA", "CMYK", "I;16", "exif-rotated")
SUFFIX = {"rgb-jpg": ".jpg", "L": ".jpg", "CMYK": ".jpg", "exif-rotated": ".jpeg"}


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(noise(size, 3, seed), "RGB").save(buf, "JPEG")
    return buf.getvalue()


def write_bad(path: Path, kind: str) -> Path:
    """One bad file: truncated (a JPEG cut in half), garbage (bytes named .jpg), empty (0 bytes), text (a .txt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {
        "truncated": jpeg_bytes()[: len(jpeg_bytes()) // 2],
        "garbage": b"these bytes are no image at all\n" * 8,
        "empty": b"",
        "text": b"class notes, not an image\n",
    }[kind]
    path.write_bytes(content)
    return path


def make_tree(root: Path, classes: tuple[str, ...] = ("cat", "dog"), train_per_class: int = 9,
              val_per_class: int = 3) -> Path:
    """train/ and val/ with every good kind spread over the classes."""
    seed = 0
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for cls in classes:
            for i in range(n):
                kind = GOOD_KINDS[seed % len(GOOD_KINDS)]
                write_image(root / split / cls / f"img{i}{SUFFIX.get(kind, '.png')}", kind, seed=seed)
                seed += 1
    return root
