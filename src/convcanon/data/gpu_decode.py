"""GPU JPEG decoding for folder data: DataLoader workers read each file's bytes (cheap), the GPU decodes whole batches
with nvJPEG (``torchvision.io.decode_jpeg(list, device="cuda")``) and crops, resizes and flips them there.

Same samples, same crops. Order is the CPU path's (``folder._Batches``); each training sample's crop and flip are drawn
on the CPU by ``train_crop`` from the same per-sample seed ``derive_seed(seed, epoch, index)`` and the decoded
(EXIF-oriented) image size, with exactly the draws of torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip``
under that seed (tested against them), so what a sample shows is a pure function of (seed, epoch, position) on both
paths. Evaluation is ``Resize(S*256/224)`` + ``CenterCrop(S)``, the CPU path's sizes and rounding.

Pixel values differ slightly from the CPU path: nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's, and the
resize is torch's antialiased bilinear on float pixels instead of PIL's (they are designed to agree to about one grey
level). Expect a few grey levels of mean absolute difference, not bit equality; a run is bit-exact only under one
``decode`` setting (pin it, rather than ``auto``, to resume bit-exactly on another machine).

Fallbacks, per sample, never a crash: the worker sniffs each file's header with PIL (no decode: cheap) and decodes
on the CPU, as the CPU path does, every file nvJPEG should not see: not a JPEG (PNG, ...), not 3-channel YCbCr
(greyscale, CMYK/YCCK, Adobe RGB), or MPO. A JPEG the GPU decoder refuses anyway (a batch call fails, then that file
alone fails) is decoded on the CPU in the main process and sent to the workers' CPU path in later epochs. A file that
cannot be read any more goes to the CPU path too, which reports it (``stale``).

EXIF orientation: ``decode_jpeg``'s ``apply_exif_orientation`` is implemented on the CPU only (torchvision docs,
0.19-0.29), so the orientation read from the header is applied here (``orient``), with PIL's ``exif_transpose`` table.
"""

from __future__ import annotations

import io
import math
import os
import stat
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as tvF

from .stale import Stale
from .walk import shown

# torchvision.transforms.v2.RandomResizedCrop's defaults, which folder.train_transform uses.
SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
_LOG_RATIO = torch.log(torch.tensor(RATIO))  # float32, as RandomResizedCrop computes it: the draws must match exactly
EXIF_ORIENTATION = 0x0112
MIN_TORCHVISION = (0, 19)  # decode_jpeg takes a list (one batched nvJPEG call) since 0.19
_MAX_REFUSALS_SHOWN = 5


class CropFlip(NamedTuple):
    """One training sample's geometry on its decoded, oriented image."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def train_crop(seed: int, height: int, width: int) -> CropFlip:
    """The crop and flip that ``RandomResizedCrop(S)`` + ``RandomHorizontalFlip()`` draw for an image of
    ``height`` x ``width`` with the global CPU generator seeded by ``seed`` (what ``folder.ImageFiles`` does), drawn
    from a private generator instead: the same Mersenne Twister stream, the same calls in the same order."""
    g = torch.Generator().manual_seed(seed)
    area = height * width
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(SCALE[0], SCALE[1], generator=g).item()
        aspect = torch.exp(torch.empty(1).uniform_(float(_LOG_RATIO[0]), float(_LOG_RATIO[1]), generator=g)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=g).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=g).item())
            break
    else:  # ten misses: torchvision's fallback, the central crop at the nearest allowed aspect ratio
        in_ratio = width / height
        if in_ratio < min(RATIO):
            w, h = width, int(round(width / min(RATIO)))
        elif in_ratio > max(RATIO):
            h, w = height, int(round(height * max(RATIO)))
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    flip = bool(torch.rand(1, generator=g).item() < 0.5)  # RandomHorizontalFlip(p=0.5): flips when rand < p
    return CropFlip(top, left, h, w, flip)


def orient(img: Tensor, orientation: int) -> Tensor:
    """Apply an EXIF orientation (1-8) to a (C, H, W) image, as PIL's ``ImageOps.exif_transpose`` does."""
    if orientation == 2:  # FLIP_LEFT_RIGHT
        return img.flip(-1)
    if orientation == 3:  # ROTATE_180
        return img.flip(-2, -1)
    if orientation == 4:  # FLIP_TOP_BOTTOM
        return img.flip(-2)
    if orientation == 5:  # TRANSPOSE
        return img.transpose(-2, -1)
    if orientation == 6:  # ROTATE_270: 90 degrees clockwise
        return torch.rot90(img, -1, dims=(-2, -1))
    if orientation == 7:  # TRANSVERSE
        return img.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:  # ROTATE_90: 90 degrees counter-clockwise
        return torch.rot90(img, 1, dims=(-2, -1))
    return img


class Header(NamedTuple):
    height: int  # as displayed, after the EXIF orientation
    width: int
    orientation: int


def sniff(data: bytes) -> Header | None:
    """The displayed size and EXIF orientation of a JPEG the GPU decoder should take; None for any other file."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:  # parses the markers only; decodes nothing
            # 3-channel YCbCr only: nvJPEG's RGB output of CMYK/YCCK is not what PIL gives, Adobe's "transform 0"
            # stores RGB without the YCbCr transform, and greyscale is rare enough to keep on the tested CPU path.
            if img.format != "JPEG" or img.mode != "RGB" or img.info.get("adobe_transform") == 0:
                return None
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
            width, height = img.size
    except Exception:  # noqa: BLE001 - any header PIL cannot parse goes to the CPU path, which reports it properly
        return None
    if orientation not in range(1, 9):
        orientation = 1  # exif_transpose ignores values outside its table
    if orientation >= 5:  # the four orientations that swap width and height
        height, width = width, height
    return Header(height, width, orientation)


def gpu_decode_unavailable() -> str | None:
    """Why JPEGs cannot be decoded on the GPU here, or None when they can (the decoder itself is tried later)."""
    if not torch.cuda.is_available():
        return "no CUDA device is visible here"
    version = tuple(int(p) for p in torchvision.__version__.split("+")[0].split(".")[:2])
    if version < MIN_TORCHVISION:
        return (f"torchvision {torchvision.__version__} cannot decode batches of JPEGs on the GPU "
                f"(needs {'.'.join(map(str, MIN_TORCHVISION))} or newer)")
    return None


def decode_jpegs(encoded: list[Tensor], device: torch.device) -> list[Tensor]:
    """Decode 1-D uint8 CPU tensors of JPEG files into (3, H, W) uint8 RGB images on ``device`` (nvJPEG on CUDA, one
    batched call; libjpeg-turbo on the CPU, which the tests use). EXIF orientation is not applied (see the module
    docstring)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec, with a warning on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))


# ---------------------------------------------------------------------------------------------------------------------
# Worker side: bytes for the GPU, pixels for everything else


@dataclass
class Sample:
    index: int
    seed: int | None
    label: int
    data: bytes | None = None  # the file, for the GPU
    orientation: int = 1
    crop: CropFlip | None = None  # training samples: drawn from the displayed size
    pixels: Tensor | None = None  # (3, S, S) uint8: decoded on the CPU path
    stale: Stale | None = None  # the file failed on the CPU path (see ``stale``)


class EncodedFiles(Dataset):
    """The worker's half of the GPU path, indexed by ``(index, seed, cpu_only)``: the file's bytes and its crop when
    it is a JPEG for the GPU, else the CPU path's pixels (``files[index, seed]``)."""

    def __init__(self, files):  # folder.ImageFiles: paths, labels, and the CPU path
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int | None, bool]) -> Sample:
        index, seed, cpu_only = key
        label = self.files.labels[index]
        if not cpu_only:
            data = _read(self.files.paths[index])
            header = sniff(data) if data is not None else None
            if header is not None:
                crop = train_crop(seed, header.height, header.width) if seed is not None else None
                return Sample(index, seed, label, data=data, orientation=header.orientation, crop=crop)
        pixels, _, stale = self.files[index, seed]
        return Sample(index, seed, label, pixels=pixels, stale=stale)


def _read(path: str) -> bytes | None:
    """The bytes of the regular file ``path``; None when it cannot be read (the CPU path then says why)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a named pipe put in its place would block the read
            return None
        return Path(path).read_bytes()
    except OSError:
        return None


@dataclass
class EncodedBatch:
    """One batch as the workers send it: the JPEG files end to end in one buffer (one shared-memory block through
    the worker pipe instead of one per file), and the CPU-decoded samples as one uint8 tensor."""

    labels: Tensor  # (N,) int64
    data: Tensor  # uint8, the encoded files end to end
    offsets: list[int]  # encoded file j is data[offsets[j]:offsets[j + 1]]
    rows: list[int]  # batch positions of the encoded files
    keys: list[tuple[int, int | None]]  # their (index, seed), for the CPU fallback
    orientation: list[int]
    crops: list[CropFlip | None]
    pixel_rows: list[int]  # batch positions of the samples decoded on the CPU
    pixels: Tensor | None  # (M, 3, S, S) uint8
    stale: list[tuple[int, Stale]] = field(default_factory=list)  # rows whose file failed on the CPU path

    def encoded(self) -> list[Tensor]:
        return [self.data[a:b] for a, b in zip(self.offsets, self.offsets[1:], strict=False)]


def collate_encoded(samples: Sequence[Sample]) -> EncodedBatch:
    enc = [(row, s) for row, s in enumerate(samples) if s.data is not None]
    dec = [(row, s) for row, s in enumerate(samples) if s.data is None]
    offsets = np.cumsum([0] + [len(s.data) for _, s in enc]).tolist()
    buf = np.empty(offsets[-1], dtype=np.uint8)
    for (_, s), a, b in zip(enc, offsets, offsets[1:], strict=False):
        buf[a:b] = np.frombuffer(s.data, dtype=np.uint8)
    return EncodedBatch(
        labels=torch.tensor([s.label for s in samples], dtype=torch.int64), data=torch.from_numpy(buf),
        offsets=offsets, rows=[row for row, _ in enc], keys=[(s.index, s.seed) for _, s in enc],
        orientation=[s.orientation for _, s in enc], crops=[s.crop for _, s in enc],
        pixel_rows=[row for row, _ in dec], pixels=torch.stack([s.pixels for _, s in dec]) if dec else None,
        stale=[(row, s.stale) for row, s in dec if s.stale is not None],
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Main-process side: decode, orient, crop, resize, flip on the device


class GpuBatches:
    """Turns an ``EncodedBatch`` into float32 (N, 3, S, S) pixels on ``device`` (0..255, rounded like uint8, not yet
    normalized). ``files`` is the ``folder.ImageFiles`` the batch came from: its CPU path decodes what the GPU decoder
    refuses, and its ``gpu_refused`` set sends those files to the workers' CPU path from then on."""

    def __init__(self, files, size: int, decode: Callable[[list[Tensor], torch.device], list[Tensor]] = decode_jpegs):
        self.files, self.size, self.decode = files, size, decode
        self.eval_side = int(size * 256 / 224)  # folder.eval_transform's Resize

    def __call__(self, batch: EncodedBatch, device: torch.device) -> Tensor:
        n, s = len(batch.labels), self.size
        out = torch.empty(n, 3, s, s, dtype=torch.float32, device=device)
        images = self._decode(batch, device) if batch.rows else []
        cpu_rows, cpu = list(batch.pixel_rows), [batch.pixels] if batch.pixels is not None else []
        rows, done, flips = [], [], []
        for row, (index, seed), orientation, crop, img in zip(batch.rows, batch.keys, batch.orientation, batch.crops,
                                                               images, strict=True):
            if img is None:  # refused by the GPU decoder: the CPU path, here
                pixels, _, stale = self.files[index, seed]
                cpu_rows.append(row)
                cpu.append(pixels.unsqueeze(0))
                if stale is not None:
                    batch.stale.append((row, stale))
                continue
            img = orient(img, orientation)
            if seed is None:
                done.append(tvF.center_crop(tvF.resize(img.float(), [self.eval_side], antialias=True), [s, s]))
                flips.append(False)
            else:
                h, w = img.shape[-2:]
                if crop is None or crop.top + crop.height > h or crop.left + crop.width > w:
                    crop = train_crop(seed, h, w)  # the header's size disagreed with the decoder's: trust the decoder
                done.append(tvF.resized_crop(img.float(), crop.top, crop.left, crop.height, crop.width, [s, s],
                                             antialias=True))
                flips.append(crop.flip)
            rows.append(row)
        if done:
            x = torch.stack(done)
            if any(flips):
                x = torch.where(torch.tensor(flips, device=device).view(-1, 1, 1, 1), x.flip(-1), x)
            out.index_copy_(0, torch.tensor(rows, device=device), x)
        if cpu_rows:
            out.index_copy_(0, torch.tensor(cpu_rows, device=device), torch.cat(cpu).to(device, torch.float32))
        # Antialiased bilinear weights are non-negative, so values stay in 0..255; rounding matches the CPU's uint8.
        return out.round_().clamp_(0, 255)

    def _decode(self, batch: EncodedBatch, device: torch.device) -> list[Tensor | None]:
        """All files in one call; when it fails (one bad file fails the whole call), each file alone, and None for the
        files it refuses, which are recorded in ``files.gpu_refused`` (the first few printed)."""
        encoded = batch.encoded()
        try:
            return list(self.decode(encoded, device))
        except RuntimeError:
            pass
        images: list[Tensor | None] = []
        for data, (index, _) in zip(encoded, batch.keys, strict=True):
            try:
                images.append(self.decode([data], device)[0])
            except RuntimeError as err:
                images.append(None)
                self._refused(index, err)
        return images

    def _refused(self, index: int, err: Exception) -> None:
        refused = self.files.gpu_refused
        if index in refused:
            return
        refused.add(index)
        if len(refused) <= _MAX_REFUSALS_SHOWN:
            more = "; further refusals are not printed" if len(refused) == _MAX_REFUSALS_SHOWN else ""
            why = " ".join(str(err).split())[:200]
            print(f"the GPU JPEG decoder refused {shown(self.files.paths[index])} ({shown(why)}): decoded on the CPU "
                  f"instead{more}", file=sys.stderr)
