"""Decode throughput and GPU JPEG decoding of folder data: the GPU path draws the CPU path's crops, falls back to the
CPU per sample, and is chosen only where it can run; its whole pipeline is exercised here on the CPU (libjpeg-turbo
in place of nvJPEG), and on a real GPU by the cuda-marked tests at the end."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from imagetree import write_image
from PIL import Image, ImageOps
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tvF

from convcanon.cli import main
from convcanon.data import derive_seed, open_data
from convcanon.data import throughput as tp
from convcanon.data.base import epoch_permutation, rank_slice
from convcanon.data.folder import _Batches, train_transform
from convcanon.data.gpu_decode import (
    EncodedFiles,
    GpuBatches,
    collate_encoded,
    decode_jpegs,
    orient,
    sniff,
    train_crop,
)
from convcanon.perf.bench import BenchConfig, run_bench
from convcanon.perf.decode import measure_decode
from convcanon.perf.report import format_report
from convcanon.train.config import config_from_dict

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
STD_GREY = 0.226 * 255  # ~ImageNet std in grey levels: normalized differences x this = grey levels


def open_tree(root, **kw):
    return open_data(str(root), image_size=kw.pop("image_size", 16), workers=kw.pop("workers", 0), progress=False,
                     **kw)


def smooth_tree(root: Path, n_train: int = 8, n_val: int = 4, size: tuple[int, int] = (64, 48)) -> Path:
    """JPEGs like photos (smooth, so two decoders agree closely), asymmetric so that a wrong orientation or flip shows;
    every third one stored sideways with EXIF orientation 6."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    k = 0
    for split, n in (("train", n_train), ("val", n_val)):
        for cls in ("a", "b"):
            for i in range(n):
                rgb = np.stack([255 * xx / w, 255 * yy / h, 128 + 60 * np.sin((xx + 2 * yy + 7 * k) / 25)], -1)
                path = root / split / cls / f"{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                exif = Image.Exif()
                if k % 3 == 0:
                    exif[0x0112] = 6
                Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB").save(path, "JPEG", quality=95, exif=exif)
                k += 1
    return root


def gpu_epoch(source, batch_size, device, seed=5, epoch=0):
    """The GPU path's loader (``FolderSource._gpu_batches``) over an epoch, on any device."""
    files = source._train
    perm = epoch_permutation(len(files), seed=seed, epoch=epoch)
    batches = [rank_slice(perm, s, batch_size, 0, 1).tolist() for s in range(len(files) // batch_size)]
    return list(source._gpu_batches(files, _Batches(batches, (seed, epoch), files.gpu_refused), torch.device(device)))


def grey_levels(a, b):
    return (a.float().cpu() - b.float().cpu()).abs() * STD_GREY


# ---- the crops: the CPU path's draws, exactly -------------------------------------------------------------------

SIZES = [(14, 20), (20, 14), (375, 500), (1, 1), (3, 200), (200, 3), (224, 224)]  # thin ones: the central fallback


@pytest.mark.parametrize("height,width", SIZES)
def test_train_crop_is_torchvision_draw_for_the_same_seed(height, width):
    rrc = v2.RandomResizedCrop(8, antialias=True)
    draw = getattr(rrc, "make_params", None) or rrc._get_params  # renamed in torchvision 0.21
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    for i in range(20):
        seed = derive_seed(5, 0, i)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            p = draw([image])
            flip = bool(torch.rand(1) < 0.5)  # RandomHorizontalFlip's draw, after the crop's
        assert tuple(train_crop(seed, height, width)) == (p["top"], p["left"], p["height"], p["width"], flip)


@pytest.mark.parametrize("height,width", [(14, 20), (3, 200), (50, 37)])
def test_train_crop_reproduces_the_cpu_transform_pixel_for_pixel(height, width):
    # End to end on PIL images: the CPU path's seeded transform equals cropping, resizing and flipping by train_crop.
    img = Image.fromarray(np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8))
    for i in range(10):
        seed = derive_seed(1, 2, i)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            expected = train_transform(8)(img)
        c = train_crop(seed, height, width)
        ours = tvF.pil_to_tensor(tvF.resized_crop(img, c.top, c.left, c.height, c.width, [8, 8], antialias=True))
        assert torch.equal(ours.flip(-1) if c.flip else ours, expected)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pil_exif_transpose(orientation):
    raw = np.random.default_rng(orientation).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(raw).save(buf, "PNG", exif=exif)  # lossless: the pixels are exactly `raw`
    upright = np.array(ImageOps.exif_transpose(Image.open(buf)))
    assert torch.equal(orient(torch.from_numpy(raw).permute(2, 0, 1), orientation),
                       torch.from_numpy(upright).permute(2, 0, 1).contiguous())


# ---- which files go to the GPU ----------------------------------------------------------------------------------

def test_sniff_sends_only_ycbcr_jpegs_to_the_gpu(tmp_path):
    jpeg = write_image(tmp_path / "a.jpg", "rgb-jpg", size=(20, 14)).read_bytes()
    assert sniff(jpeg) == (14, 20, 1)
    rotated = write_image(tmp_path / "r.jpg", "exif-rotated", size=(20, 14)).read_bytes()
    assert sniff(rotated) == (20, 14, 6)  # displayed size: stored landscape, shown portrait
    for kind in ("rgb-png", "L", "CMYK", "RGBA"):
        assert sniff(write_image(tmp_path / f"{kind}.x", kind).read_bytes()) is None, kind
    assert sniff(b"\xff\xd8\xff" + b"not a jpeg after all" * 4) is None
    assert sniff(b"") is None


def test_workers_decode_what_the_gpu_should_not_see_on_the_cpu_path(tree):
    source = open_tree(tree)
    files, encoded = source._train, EncodedFiles(source._train)
    kinds = set()
    for i in range(len(files)):
        seed = derive_seed(5, 0, i)
        sample = encoded[i, seed, False]
        is_gpu_jpeg = sniff(Path(files.paths[i]).read_bytes()) is not None
        kinds.add(is_gpu_jpeg)
        if is_gpu_jpeg:
            assert sample.pixels is None and sample.data == Path(files.paths[i]).read_bytes()
        else:
            assert sample.data is None and torch.equal(sample.pixels, files[i, seed][0])  # exactly the CPU path
        forced = encoded[i, seed, True]  # a file the GPU refused before: always the CPU path
        assert forced.data is None and torch.equal(forced.pixels, files[i, seed][0])
    assert kinds == {True, False}  # the tree has both


# ---- the whole GPU path, run on the CPU --------------------------------------------------------------------------

def test_gpu_path_on_the_cpu_gives_the_cpu_path_batches(tree):
    # Workers (2: the batches are pickled through the pipes), collation, decode, orientation, crop, flip, and the
    # CPU-decoded samples merged back in place. The decoder here is libjpeg-turbo, as PIL's: what is left is the resize
    # (torch's antialiased bilinear in float vs PIL's, which rounds between its two passes: at most one grey level),
    # and one more where PIL's and torchvision's libjpeg-turbo builds differ.
    source = open_tree(tree, workers=2)
    cpu = list(source.train_batches(0, 4, seed=5))
    gpu = gpu_epoch(source, 4, "cpu")
    assert len(cpu) == len(gpu) == 4
    for (x, y), (gx, gy) in zip(cpu, gpu, strict=True):
        assert torch.equal(y, gy) and gx.shape == x.shape and gx.dtype == torch.float32
        assert grey_levels(x, gx).max() <= 2.01 and grey_levels(x, gx).mean() < 0.5
    files = source._test
    evals = list(source._gpu_batches(files, _Batches([[0, 1, 2, 3], [4, 5]], None, files.gpu_refused),
                                     torch.device("cpu")))
    for (x, y), (gx, gy) in zip(source.test_batches(4), evals, strict=True):
        assert torch.equal(y, gy) and grey_levels(x, gx).max() <= 2.01


def test_a_file_the_gpu_decoder_refuses_is_decoded_on_the_cpu(tree, capsys):
    source = open_tree(tree)
    files = source._train
    jpegs = [i for i in range(len(files)) if sniff(Path(files.paths[i]).read_bytes()) is not None]
    bad = Path(files.paths[jpegs[0]]).read_bytes()
    calls = []

    def picky_decode(encoded, device):  # stands in for nvJPEG refusing one file (it fails the whole batch call)
        calls.append(len(encoded))
        if any(e.numel() == len(bad) and bytes(e.numpy()) == bad for e in encoded):
            raise RuntimeError("Error while decoding JPEG images: nvjpegStatus 7")
        return decode_jpegs(encoded, device)

    keys = [(i, derive_seed(5, 0, i), False) for i in jpegs[:3]]
    batch = collate_encoded([EncodedFiles(files)[k] for k in keys])
    out = GpuBatches(files, 16, decode=picky_decode)(batch, torch.device("cpu"))
    assert calls == [3, 1, 1, 1]  # the batch call, then each file alone
    assert torch.equal(out[0].to(torch.uint8), files[keys[0][:2]][0])  # the CPU path, exactly
    assert files.gpu_refused == {jpegs[0]}
    assert files.paths[jpegs[0]] in capsys.readouterr().err
    # From then on the sampler sends the file to the workers' CPU path.
    assert list(_Batches([[jpegs[0], jpegs[1]]], (5, 0), files.gpu_refused))[0] == [
        (jpegs[0], derive_seed(5, 0, jpegs[0]), True), (jpegs[1], derive_seed(5, 0, jpegs[1]), False)]


# ---- the choice --------------------------------------------------------------------------------------------------

def test_auto_on_a_cpu_device_is_cpu_and_says_nothing(tree, capsys):
    source = open_tree(tree)
    choice = source.decode_choice("cpu")
    assert (choice.mode, choice.reason) == ("cpu", "cpu device")
    assert "decode" not in capsys.readouterr().err  # only CUDA devices have a choice to print
    assert open_tree(tree, decode="cpu").decode_choice("cpu").reason == "as asked"


def test_gpu_on_a_cpu_device_is_an_error_when_batches_are_asked_for(tree):
    source = open_tree(tree)
    source.decode = "gpu"  # as if opened on a CUDA machine, then asked for CPU batches
    with pytest.raises(ValueError, match="decode 'gpu' needs a CUDA device"):
        source.train_batches(0, 4, seed=0, device="cpu")  # raised by the call, not at the first batch


@needs_no_cuda
def test_gpu_without_cuda_is_an_error_before_the_scan(tree, monkeypatch, tmp_path, capsys):
    import convcanon.data.folder as folder

    monkeypatch.setattr(folder, "scan_folder", lambda *a, **k: pytest.fail("scanned before checking --decode"))
    with pytest.raises(ValueError, match="--decode gpu: no CUDA device is visible here"):
        open_tree(tree, decode="gpu")
    with pytest.raises(ValueError, match="decode must be one of auto, cpu, gpu"):
        open_tree(tree, decode="nvjpeg")
    assert main(["train", "--data", f"folder:{tree}", "--decode", "gpu", "--out", str(tmp_path / "run")]) == 2
    assert main(["bench", "--model", "resnet20", "--data", f"folder:{tree}", "--decode", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("--decode gpu: no CUDA device is visible here") == 2
    assert not (tmp_path / "run").exists()


def test_gpu_decode_is_for_folder_data_only_and_not_on_a_cpu_device():
    with pytest.raises(ValueError, match="--decode gpu decodes JPEGs on a CUDA device, and --device is cpu"):
        config_from_dict({"decode": "gpu", "device": "cpu"})
    with pytest.raises(ValueError, match="decode must be one of auto, cpu, gpu"):
        config_from_dict({"decode": "fast"})
    assert config_from_dict({"decode": "cpu"}).decode == "cpu"
    with pytest.raises(ValueError, match="--decode cpu sets how --data folder:PATH is decoded"):
        BenchConfig(decode="cpu")


@pytest.fixture
def fake_timings(monkeypatch, tree):
    """A folder source on a pretend CUDA device whose two paths take the given images/s (nothing really runs)."""
    import convcanon.data.gpu_decode as gd

    source = open_tree(tree, workers=4)
    monkeypatch.setattr(gd, "gpu_decode_unavailable", lambda: None)
    monkeypatch.setattr(tp, "usable_cpus", lambda: 2)

    def set_rates(cpu, read, gpu, jpeg_fraction=1.0, error=None):
        monkeypatch.setattr(tp, "cpu_per_worker", lambda *a, **k: cpu)

        def gpu_times(*a, **k):
            if error:
                raise RuntimeError(error)
            return tp.GpuPathTimes(read, gpu, jpeg_fraction)

        monkeypatch.setattr(tp, "gpu_path_times", gpu_times)
        return tp.choose_decode(source, torch.device("cuda", 0))

    return set_rates


def test_auto_on_cuda_takes_the_faster_path(fake_timings):
    # 4 workers on 2 CPUs count as 2: PIL gives 2 x 100 = 200 images/s.
    fast = fake_timings(cpu=100.0, read=1000.0, gpu=900.0)
    assert fast.mode == "gpu" and (fast.cpu_images_per_s, fast.gpu_images_per_s) == (200.0, 900.0)
    assert "900 images/s with nvJPEG vs 200 with PIL in 2 process(es), timed on 18 files" in fast.describe()
    # The workers' half of the GPU path (read the bytes) limits it too: 2 x 90 = 180 < 200.
    assert fake_timings(cpu=100.0, read=90.0, gpu=5000.0).mode == "cpu"
    assert fake_timings(cpu=100.0, read=1000.0, gpu=150.0).mode == "cpu"
    assert "none of 18 sampled files" in fake_timings(100.0, 1000.0, 900.0, jpeg_fraction=0.0).reason
    failed = fake_timings(100.0, 1000.0, 900.0, error="decode_jpegs_cuda: torchvision not compiled with nvJPEG")
    assert failed.mode == "cpu" and "not compiled with nvJPEG" in failed.reason


# ---- throughput and the benchmark ---------------------------------------------------------------------------------

def _positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_decode_throughput_per_worker_and_loader(tree):
    source = open_tree(tree, workers=2)
    figures = measure_decode(source, torch.device("cpu"))
    assert _positive(figures.per_worker) and _positive(figures.loader)
    assert (figures.sample, figures.workers, figures.choice, figures.gpu) == (18, 2, "cpu", None)
    assert figures.loader_images == 16  # 8 batches of 2: steady state needs several rounds of the 2 workers
    assert figures.delivered == figures.loader
    assert figures.workers_needed(figures.per_worker * 2.5) == 3


def test_bench_reports_decode_throughput_for_folder_data(tree, capsys):
    argv = ["bench", "--model", "resnet20", "--batch-size", "4", "--data", f"folder:{tree}", "--image-size", "16",
            "--workers", "0", "--windows", "1", "--steps", "1", "--warmup", "1", "--no-peak", "--no-memory",
            "--no-inference", "--threads", "1"]
    assert main([*argv, "--json"]) == 0
    decode = json.loads(capsys.readouterr().out)["decode"]
    for key in ("per_worker", "loader", "training_images_per_s", "delivered_over_training"):
        assert _positive(decode[key]), key
    assert decode["workers"] == 0 and decode["choice"] == "cpu" and decode["workers_needed"] >= 1
    cfg = BenchConfig(model="resnet20", batch_size=4, image_size=16, data=f"folder:{tree}", workers=0, windows=1,
                      steps=1, warmup=1, peak=False, memory=False, inference=False)
    text = format_report(run_bench(cfg, say=lambda msg: None))
    for needle in ("decode (folder data", "per worker", "loader", "in use      cpu", "of ours' training step"):
        assert needle in text


# ---- on a GPU ------------------------------------------------------------------------------------------------------

@pytest.fixture
def photos(tmp_path):
    return smooth_tree(tmp_path / "photos")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_decoding_gives_the_cpu_path_batches_on_the_gpu(photos):
    # Tolerance: nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's (about a grey level on smooth images) and
    # the resize differs by at most one: a mean of 3 grey levels allows both; a wrong crop, flip or orientation of
    # these gradients differs by tens.
    cpu_source = open_tree(photos, image_size=32, workers=2, decode="cpu")
    gpu_source = open_tree(photos, image_size=32, workers=2, decode="gpu")
    cpu = list(cpu_source.train_batches(0, 4, seed=5, device="cuda"))
    gpu = list(gpu_source.train_batches(0, 4, seed=5, device="cuda"))
    assert len(cpu) == len(gpu) == 4
    for (x, y), (gx, gy) in zip(cpu, gpu, strict=True):
        assert gx.shape == (4, 3, 32, 32) and gx.dtype == torch.float32 and gx.device.type == "cuda"
        assert gy.device.type == "cuda" and torch.equal(y, gy)
        per_sample = grey_levels(x, gx).mean(dim=(1, 2, 3))
        assert per_sample.max() < 3, per_sample
    for (x, y), (gx, gy) in zip(cpu_source.test_batches(4, device="cuda"), gpu_source.test_batches(4, device="cuda"),
                                strict=True):
        assert torch.equal(y, gy) and grey_levels(x, gx).mean(dim=(1, 2, 3)).max() < 3
    assert gpu_source._train.gpu_refused == set()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_decoding_of_every_awkward_file_and_the_auto_choice(tree, capsys):
    # PNG, greyscale, CMYK and EXIF-rotated files among JPEGs: per-sample fallbacks, no crash, the CPU path's labels.
    source = open_tree(tree, workers=2, decode="gpu")
    cpu = list(open_tree(tree, workers=2, decode="cpu").train_batches(0, 4, seed=5, device="cuda"))
    for (x, y), (gx, gy) in zip(cpu, source.train_batches(0, 4, seed=5, device="cuda"), strict=True):
        assert torch.equal(y, gy) and gx.shape == x.shape and torch.isfinite(gx).all()
    auto = open_tree(tree, workers=2)
    choice = auto.decode_choice("cuda")
    assert choice.mode in ("cpu", "gpu") and choice.cpu_images_per_s > 0 and choice.gpu_images_per_s > 0
    assert "decode: " in capsys.readouterr().err
    figures = measure_decode(auto, torch.device("cuda"))
    assert _positive(figures.gpu) and _positive(figures.loader)
