"""Folder data under the augmentation settings: the streamed path's per-sample transforms (the stated probabilities,
torchvision's transforms), the choice to hold a tree in memory and what it gives, repeated augmentation's seeds, and
``convcanon scan --stats``.

Probability tolerance: five standard deviations of a binomial proportion, as in test_augment_recipe.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from imagetree import make_tree
from PIL import Image

from convcanon.cli import main
from convcanon.data import derive_seed, open_data
from convcanon.data.folder import FolderSource, ImageFiles, _Batches, train_transform
from convcanon.data.memory import InMemorySource
from convcanon.data.recipe import AugmentOptions

N = 1000


def square_tree(root: Path, side: int = 12, per_class: int = 8, val: int = 3) -> Path:
    """Two classes of random RGB PNGs, all ``side`` x ``side``."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / split / cls /
                                                                                            f"{i}.png")
    return root


def open_tree(root, **kw):
    return open_data(str(root), image_size=kw.pop("image_size", 12), workers=0, progress=False, **kw)


def within_five_sigma(k: int, n: int, p: float) -> bool:
    return abs(k / n - p) <= 5 * math.sqrt(p * (1 - p) / n)


def samples(source: FolderSource, index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``index`` under N seeds, and the image unaugmented (no crop: a 12 px image at crop side 12)."""
    files: ImageFiles = source._train
    out = torch.stack([files[index, derive_seed(9, s)][0] for s in range(N)])
    plain = torch.from_numpy(np.asarray(Image.open(files.paths[index]).convert("RGB")).copy()).permute(2, 0, 1)
    return out, plain


@pytest.mark.parametrize("p", [0.3, 1.0])
def test_streamed_flip_with_the_stated_probability(tmp_path, p):
    source = open_tree(square_tree(tmp_path / "t"), augment=AugmentOptions(hflip=p, pad=0))
    out, plain = samples(source)
    flipped = (out == plain.flip(-1)).flatten(1).all(1)
    assert bool((flipped | (out == plain).flatten(1).all(1)).all())
    assert within_five_sigma(int(flipped.sum()), N, p)


def test_streamed_random_erasing_with_the_stated_probability(tmp_path):
    source = open_tree(square_tree(tmp_path / "t"), augment=AugmentOptions(hflip=0.0, pad=0, reprob=0.25))
    out, plain = samples(source)
    erased = (out != plain).flatten(1).any(1)
    assert within_five_sigma(int(erased.sum()), N, 0.25)


def test_streamed_transform_is_torchvisions_recipe(tmp_path):
    from torchvision.transforms import v2

    source = open_tree(square_tree(tmp_path / "t"), augment=AugmentOptions(
        scale=(0.25, 1.0), ratio=(0.5, 2.0), interpolation="bicubic", aa="trivialaugment", reprob=0.5, hflip=0.2))
    steps = source._train.train_tf.transforms
    assert [type(t) for t in steps] == [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.TrivialAugmentWide,
                                        v2.PILToTensor, v2.RandomErasing]
    assert (steps[0].scale, steps[0].ratio, steps[1].p, steps[4].p) == ((0.25, 1.0), (0.5, 2.0), 0.2, 0.5)
    assert steps[0].interpolation == v2.InterpolationMode.BICUBIC
    # The default recipe is torchvision's ImageNet one, as before.
    default = [type(t) for t in train_transform(16).transforms]
    assert default == [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.PILToTensor]


def test_repeated_augmentation_gives_each_copy_its_own_seed():
    keys = list(_Batches([[4, 4, 7]], (1, 0), copies=[[0, 1, 0]]))[0]
    assert keys[0] == (4, derive_seed(1, 0, 4)) and keys[2] == (7, derive_seed(1, 0, 7))
    assert keys[1] == (4, derive_seed(1, 0, 4, 1))


def test_streamed_repeated_augmentation_order(tmp_path):
    source = open_tree(square_tree(tmp_path / "t"), ra_reps=2)
    (x, y), *_ = list(source.train_batches(0, 4, seed=0))
    assert y[0] == y[1] and y[2] == y[3]
    assert not torch.equal(x[0], x[1])  # the same file, two crops


# ---- held in memory ----------------------------------------------------------------------------------------------

def test_auto_holds_a_square_tree_in_memory(tmp_path, capsys):
    root = square_tree(tmp_path / "t")
    source = open_tree(root, cache="auto", augment=AugmentOptions(val_resize_size=12))
    assert isinstance(source, InMemorySource)
    assert source.info.recipe["cache"].startswith("memory")
    assert "decoded once into memory" in capsys.readouterr().err
    streamed = open_tree(root, cache="stream", augment=AugmentOptions(val_resize_size=12))
    assert isinstance(streamed, FolderSource)
    # Evaluation of a 12 px tree at 12 px: the pixels as stored, on both paths.
    a = torch.cat([x for x, _ in source.test_batches(4)])
    b = torch.cat([x for x, _ in streamed.test_batches(4)])
    assert torch.equal(a, b)
    assert source.info.classes == streamed.info.classes and source.info.mean == streamed.info.mean
    # Training: the folder recipe (random-resized crop + flip) on whole batches, to the crop side asked for.
    x, _ = next(iter(open_tree(root, cache="memory", image_size=16).train_batches(0, 8, seed=1)))
    assert x.shape == (8, 3, 16, 16)


def test_a_tree_held_in_memory_is_read_and_decoded_once(tmp_path, monkeypatch):
    # The scan decodes every file to check it; for a tree that will be held in memory it keeps those pixels
    # (scan.held_pixels) instead of decoding the tree a second time. A bad file left out with --skip-bad leaves the
    # kept pixels in line with the report's files.
    import convcanon.data.folder_cache
    import convcanon.data.scan
    from convcanon.data.folder_cache import decode_all

    root = square_tree(tmp_path / "t", per_class=60)  # 126 files: > 1% bad would stop --skip-bad
    (root / "train" / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    opened: list[str] = []
    for module in (convcanon.data.scan, convcanon.data.folder_cache):
        real = module.load_rgb
        monkeypatch.setattr(module, "load_rgb", lambda path, real=real: opened.append(path) or real(path))
    as_stored = AugmentOptions(val_resize_size=12)  # evaluation at the stored size: the test split kept as decoded
    state = torch.random.get_rng_state()
    source = open_tree(root, cache="auto", skip_bad=True, augment=as_stored)
    assert isinstance(source, InMemorySource) and torch.equal(torch.random.get_rng_state(), state)
    good = [p for p in opened if not p.endswith("broken.png")]
    assert len(good) == 126 and len(set(good)) == 126  # every good file decoded exactly once
    report = convcanon.data.scan.scan_folder(root, progress=False)  # the scan's cached report: nothing kept
    assert convcanon.data.scan.held_pixels(report) is None
    train = decode_all([p for p, _ in report.train], 0)
    test = decode_all([p for p, _ in report.val], 0)
    images, labels, test_images, _ = source._cpu
    assert torch.equal(images, train) and torch.equal(test_images, test)
    assert labels.tolist() == [c for _, c in report.train]
    opened.clear()
    # The report from the scan's cache: nothing kept, so decoded for memory; either way torch's random state is left
    # as it was (the model built next gets the seed's weights).
    state = torch.random.get_rng_state()
    again = open_tree(root, cache="auto", skip_bad=True, augment=as_stored)
    assert torch.equal(again._cpu[0], train) and len(opened) == 126
    assert torch.equal(torch.random.get_rng_state(), state)


def test_a_tree_whose_sizes_differ_after_the_first_streams_from_the_kept_scan(tmp_path, capsys):
    root = square_tree(tmp_path / "t")
    Image.fromarray(np.zeros((12, 10, 3), dtype=np.uint8)).save(root / "val" / "b" / "1.png")
    assert isinstance(open_tree(root, cache="auto"), FolderSource)
    err = capsys.readouterr().err
    assert "streamed" in err and "sizes differ" in err and "1.png is 12x10, the first image 12x12" in err


def test_a_tree_of_mixed_sizes_streams_or_is_refused(tmp_path, capsys, monkeypatch):
    import convcanon.data.scan

    root = make_tree(tmp_path / "pets")  # 20x14 images, not square
    assert isinstance(open_tree(root, cache="auto"), FolderSource)
    assert "streamed" in capsys.readouterr().err

    def decoded(*_args, **_kwargs):
        raise AssertionError("decoded a tree --data-cache memory refuses")

    monkeypatch.setattr(convcanon.data.scan, "_decode_all", decoded)
    convcanon.data.scan._CACHE.clear()
    with pytest.raises(ValueError, match="--data-cache memory: the first image is 14x20, not square"):
        open_tree(root, cache="memory")  # from the first file's header, before any file is decoded


def test_scan_stats_are_the_training_images_mean_and_std(tmp_path, capsys):
    root = square_tree(tmp_path / "t")
    assert main(["scan", str(root), "--stats", "--json", "--workers", "0"]) == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    pixels = np.stack([np.asarray(Image.open(p)) for p in sorted((root / "train").rglob("*.png"))]) / 255
    assert stats["mean"] == pytest.approx(pixels.mean(axis=(0, 1, 2)).tolist(), abs=1e-4)
    assert stats["std"] == pytest.approx(pixels.std(axis=(0, 1, 2)).tolist(), abs=1e-4)
    assert main(["scan", str(root), "--stats", "--workers", "0"]) == 0
    assert "--mean " in capsys.readouterr().out


# ---- the benchmark with the recipe's augmentation ----------------------------------------------------------------

BENCH = ["bench", "--model", "resnet20", "--batch-size", "4", "--image-size", "12", "--workers", "0", "--windows", "1",
         "--steps", "1", "--warmup", "1", "--no-peak", "--no-memory", "--no-inference", "--threads", "1", "--json"]


def test_bench_times_the_streamed_loader_with_the_recipes_augmentation(tmp_path, capsys):
    root = square_tree(tmp_path / "t")
    assert main([*BENCH, "--data", f"folder:{root}", "--data-cache", "stream", "--aa", "trivialaugment", "--reprob",
                 "0.25"]) == 0
    decode = json.loads(capsys.readouterr().out)["decode"]
    assert "TrivialAugmentWide" in decode["augment"] and "random erasing p=0.25" in decode["augment"]
    assert decode["per_worker"] > 0 and decode["workers_needed"] >= 1


def test_bench_times_the_in_memory_augmentation_and_takes_a_recipes_keys(tmp_path, capsys):
    root = square_tree(tmp_path / "t")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("aa: trivialaugment\nreprob: 0.25\nmixup: 0.2\nepochs: 600\n")  # only augmentation keys count
    assert main([*BENCH, "--data", f"folder:{root}", "--data-cache", "memory", "--config", str(recipe)]) == 0
    decode = json.loads(capsys.readouterr().out)["decode"]
    assert decode["kind"] == "memory" and decode["cache"].startswith("memory")
    assert "TrivialAugmentWide" in decode["augment"] and decode["images_per_s"] > 0
    assert main([*BENCH, "--data", "digits", "--hflip", "2"]) == 2  # checked by train's rules, the flag named
    assert "--hflip must be a probability" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 2])
def test_decoding_into_memory_keeps_every_pixel_and_names_an_odd_sized_file(tmp_path, workers):
    from convcanon.data.folder_cache import decode_all

    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(300)]  # more than one worker batch
    paths = []
    for i, p in enumerate(pixels):
        paths.append(str(tmp_path / f"{i:03d}.png"))
        Image.fromarray(p).save(paths[-1])
    out = decode_all(paths, workers)
    assert out.shape == (300, 3, 6, 6) and out.dtype == torch.uint8
    assert torch.equal(out, torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2))
    Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).save(paths[270])
    with pytest.raises(ValueError, match="270.png is 5x6, the first image 6x6"):
        decode_all(paths, workers)
