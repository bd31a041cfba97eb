"""In-memory data (embedded digits, synthetic) and the order/augmentation rules every source follows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convcanon.data import (
    BatchAugment,
    DataInfo,
    DataSource,
    InMemorySource,
    crop_flip,
    epoch_permutation,
    open_data,
)
from convcanon.data.memory import _digits_arrays, digits_split


@pytest.fixture(scope="module")
def digits() -> InMemorySource:
    return open_data("digits")


def cifar_like(n_train: int = 40, n_test: int = 11) -> InMemorySource:
    """Random 3x8x8 images with the CIFAR policy (pad + crop + flip), the strongest augmentation to check."""
    gen = torch.Generator().manual_seed(7)
    info = DataInfo(name="toy", num_classes=4, classes=("a", "b", "c", "d"), in_chans=3, image_size=8,
                    train_size=n_train, test_size=n_test, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), source="test")
    train = (torch.randint(0, 256, (n_train, 3, 8, 8), dtype=torch.uint8, generator=gen),
             torch.randint(0, 4, (n_train,), generator=gen))
    test = (torch.randint(0, 256, (n_test, 3, 8, 8), dtype=torch.uint8, generator=gen),
            torch.randint(0, 4, (n_test,), generator=gen))
    return InMemorySource(info, train, test, BatchAugment(pad=1, flip=True))


def epoch(source, batch_size, **kw):
    return list(source.train_batches(kw.pop("epoch", 0), batch_size, seed=kw.pop("seed", 3), **kw))


# ---- digits ------------------------------------------------------------------------------------------------------

def test_digits_info(digits):
    info = digits.info
    assert isinstance(digits, DataSource)
    assert (info.name, info.num_classes, info.in_chans, info.image_size) == ("digits", 10, 1, 8)
    assert info.classes == tuple("0123456789")
    assert (info.train_size, info.test_size) == (1437, 360)
    # a mild zoom and shift, never mirrored: digits are not mirror-symmetric
    assert info.augment == "random-resized crop 8 (scale 0.8-1, ratio 0.9-1.1, bilinear)"


def test_digits_split_is_pinned_stratified_and_disjoint():
    grey, target = _digits_arrays()
    labels = torch.from_numpy(target)
    train, test = digits_split(labels)
    assert sorted(train.tolist() + test.tolist()) == list(range(1797))
    # Pinned: changing the split would silently change every published digits number.
    assert torch.bincount(labels[test]).tolist() == [36, 37, 35, 37, 36, 36, 36, 36, 35, 36]
    assert int(test.sum()) == 332982 and test[:5].tolist() == [10, 14, 21, 22, 26]
    counts = torch.bincount(labels)
    # Stratified: every class within one image of 20% of its count.
    assert ((torch.bincount(labels[test]) - 0.2 * counts).abs() < 1).all()


def test_digits_pixels_match_scikit_learn():
    from sklearn.datasets import load_digits

    grey, target = _digits_arrays()
    reference = load_digits()
    np.testing.assert_array_equal(grey, reference.data)
    np.testing.assert_array_equal(target, reference.target)


def test_digits_batches_are_normalized_float_on_device(digits):
    x, y = next(digits.train_batches(0, 32, seed=0, device="cpu"))
    assert x.dtype == torch.float32 and x.shape == (32, 1, 8, 8) and x.is_contiguous()
    assert y.dtype == torch.int64 and y.shape == (32,)
    xs = torch.cat([x for x, _ in digits.test_batches(100)])
    raw = digits._cpu[2].to(torch.float64) / 255
    expected = (raw - digits.info.mean[0]) / digits.info.std[0]
    torch.testing.assert_close(xs.double(), expected, rtol=0, atol=1e-5)  # float32 rounding of a fused mul-sub


def test_digits_resized_once():
    big = open_data("digits", image_size=16)
    x, _ = next(big.train_batches(0, 4, seed=0))
    assert x.shape == (4, 1, 16, 16) and big.info.image_size == 16
    assert big.info.augment == "random-resized crop 16 (scale 0.8-1, ratio 0.9-1.1, bilinear)"  # the same recipe


def test_digits_num_classes_must_match():
    with pytest.raises(ValueError, match="10 classes"):
        open_data("digits", num_classes=5)


# ---- order, sharding, resume -------------------------------------------------------------------------------------

def test_num_train_batches_drops_the_last_incomplete_global_batch(digits):
    assert digits.num_train_batches(64) == 1437 // 64
    assert digits.num_train_batches(64, world_size=2) == 1437 // 128
    assert len(epoch(digits, 64, rank=1, world_size=2)) == 11
    with pytest.raises(ValueError, match="larger than the 1437 training images"):
        digits.num_train_batches(1000, world_size=2)


def test_an_epoch_is_one_permutation():
    source = cifar_like()
    perm = epoch_permutation(40, seed=3, epoch=0)
    labels = torch.cat([y for _, y in epoch(source, 8)])
    assert labels.tolist() == source._cpu[1][perm[:40]].tolist()
    assert not torch.equal(perm, epoch_permutation(40, seed=3, epoch=1))
    assert not torch.equal(perm, epoch_permutation(40, seed=4, epoch=0))


@pytest.mark.parametrize("make", [cifar_like, lambda: open_data("digits")], ids=["pad+flip", "digits"])
def test_two_ranks_see_exactly_what_one_rank_with_double_batch_sees(make):
    source = make()
    one = epoch(source, 8)
    two = [epoch(source, 4, rank=r, world_size=2) for r in range(2)]
    assert len(one) == len(two[0]) == len(two[1])
    for (x, y), (x0, y0), (x1, y1) in zip(one, *two, strict=True):
        assert torch.equal(torch.cat([x0, x1]), x)  # same samples, same augmented pixels
        assert torch.equal(torch.cat([y0, y1]), y)


def test_start_reproduces_the_tail_of_an_epoch():
    source = cifar_like()
    full = epoch(source, 4, epoch=2)
    tail = epoch(source, 4, epoch=2, start=6)
    assert len(tail) == len(full) - 6
    for (x, y), (xt, yt) in zip(full[6:], tail, strict=True):
        assert torch.equal(x, xt) and torch.equal(y, yt)
    assert epoch(source, 4, start=len(full)) == []
    with pytest.raises(ValueError, match="start batch"):
        epoch(source, 4, start=len(full) + 1)


def test_augmentation_neither_uses_nor_touches_the_global_rng():
    source = cifar_like()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = epoch(source, 8)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(12345)
    again = epoch(source, 8)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    other_seed = epoch(source, 8, seed=4)
    assert not torch.equal(first[0][0], other_seed[0][0])


def test_augmentation_really_crops_and_flips():
    source = cifar_like()
    x, _ = epoch(source, 40, epoch=0)[0]
    source.augment = BatchAugment()
    unaugmented, _ = epoch(source, 40, epoch=0)[0]
    changed = (x != unaugmented).flatten(1).any(1)
    assert changed.float().mean() > 0.5  # with 9 offsets x 2 flips, 1/18 of samples stay as they were


def test_test_batches_cover_every_image_once_across_ranks():
    source = cifar_like(n_test=11)
    whole = list(source.test_batches(4))
    xs = torch.cat([x for x, _ in whole])
    shards = [list(source.test_batches(2, rank=r, world_size=3)) for r in range(3)]
    counts = [sum(len(y) for _, y in shard) for shard in shards]
    assert counts == [3, 4, 4] and sum(counts) == 11  # no padding, no duplicate
    assert torch.equal(torch.cat([x for shard in shards for x, _ in shard]), xs)
    assert torch.equal(torch.cat([y for shard in shards for _, y in shard]), source._cpu[3])


def test_rank_and_batch_errors():
    source = cifar_like()
    with pytest.raises(ValueError, match="rank 2"):
        source.train_batches(0, 4, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="at least 1"):
        source.test_batches(0)


# ---- crop and flip -----------------------------------------------------------------------------------------------

def reference_crop_flip(x, pad, oy, ox, flip):
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    h, w = x.shape[-2:]
    out = []
    for n in range(x.shape[0]):
        crop = padded[n, :, oy[n]:oy[n] + h, ox[n]:ox[n] + w]
        out.append(crop.flip(-1) if flip[n] else crop)
    return torch.stack(out)


def test_crop_flip_on_a_hand_made_tensor():
    x = torch.arange(1, 1 + 3 * 2 * 4 * 5, dtype=torch.uint8).view(3, 2, 4, 5)
    oy, ox = torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0])
    flip = torch.tensor([False, True, True])
    out = crop_flip(x, 1, oy, ox, flip)
    assert torch.equal(out, reference_crop_flip(x, 1, oy, ox, flip))
    # Sample 1: offset (1, 1) is the identity crop, then mirrored.
    assert torch.equal(out[1], x[1].flip(-1))
    # Sample 0: shifted down by one (top row of zeros) and left by one (last column of zeros).
    assert (out[0, :, 0] == 0).all() and (out[0, :, :, -1] == 0).all()
    assert torch.equal(out[0, :, 1:, :-1], x[0, :, :3, 1:])


def test_crop_flip_random_offsets_match_reference():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 6, 6), dtype=torch.uint8, generator=gen)
    oy, ox, flip = BatchAugment(pad=2, flip=True).draw(16, gen)
    assert torch.equal(crop_flip(x, 2, oy, ox, flip), reference_crop_flip(x, 2, oy, ox, flip))


# ---- synthetic and specs -----------------------------------------------------------------------------------------

def test_synthetic_spec_and_sizes():
    source = open_data("synthetic:1:12:5", synthetic_size=64)
    info = source.info
    assert (info.in_chans, info.image_size, info.num_classes, info.train_size, info.test_size) == (1, 12, 5, 64, 16)
    x, y = next(source.train_batches(0, 16, seed=0))
    assert x.shape == (16, 1, 12, 12) and int(y.max()) < 5
    assert open_data("synthetic").info.spec == "synthetic:3:32:10"
    assert open_data("synthetic:3", image_size=20, num_classes=7).info.spec == "synthetic:3:20:7"
    with pytest.raises(ValueError, match="set it in one place"):
        open_data("synthetic:3:32", image_size=20)
    with pytest.raises(ValueError, match=r"synthetic\[:C\[:S\[:K\]\]\]"):
        open_data("synthetic:3:x")


def test_unknown_specs_name_the_accepted_forms(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'digits'") as err:
        open_data("digts")
    assert "cifar10:PATH" in str(err.value) and "folder:PATH" in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_data(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_data(f"cifar10:{tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match="needs the folder"):
        open_data("folder")
    with pytest.raises(ValueError, match="take no argument"):
        open_data("digits:8")
