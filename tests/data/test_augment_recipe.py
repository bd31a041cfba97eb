"""The augmentation recipe as a specification: each transform applied with the stated probability, the whole recipe a
pure function of (seed, epoch, position), the policies and random erasing torchvision's own, repeated augmentation's
order, and the per-data-set defaults.

Probability tests: a transform with probability p applied to n independent positions is applied k ~ Binomial(n, p)
times; the tests accept |k/n - p| <= 5 sqrt(p (1 - p) / n), five standard deviations, which a correct implementation
fails about once in 1.7 million runs, while an off-by-a-factor bug (p/2, 1 - p, always, never) is many deviations out.
The draws are pure functions of the seed, so a passing seed passes forever: the tolerance is about the choice of seed.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torchvision.transforms import v2

from convcanon.data import derive_seed, open_data
from convcanon.data.augment import BatchRecipe, resized_crop, rrc_boxes
from convcanon.data.base import epoch_order, generator
from convcanon.data.memory import InMemorySource, in_memory_source
from convcanon.data.recipe import AugmentOptions, Recipe

N = 2000


def within_five_sigma(k: int, n: int, p: float) -> bool:
    return abs(k / n - p) <= 5 * math.sqrt(p * (1 - p) / n)


def toy(n: int = N, side: int = 8, chans: int = 3, **options) -> InMemorySource:
    """``n`` random images, every one distinct and not mirror-symmetric, with the recipe ``options``."""
    gen = torch.Generator().manual_seed(11)
    train = (torch.randint(0, 256, (n, chans, side, side), dtype=torch.uint8, generator=gen),
             torch.randint(0, 4, (n,), generator=gen))
    test = (train[0][:16], train[1][:16])
    return in_memory_source(name="toy", kind="synthetic", classes=("a", "b", "c", "d"), source="test", spec="toy",
                            train=train, test=test, augment=AugmentOptions(**options))


def raw_epoch(source: InMemorySource, epoch: int = 0, seed: int = 3, batch: int = 100):
    """The epoch's augmented uint8 batches (before normalization) and the images they came from."""
    order = epoch_order(source.info.train_size, seed=seed, epoch=epoch, reps=source.ra_reps)
    x = source._cpu[0][order]
    out = torch.cat([xb for xb, _ in source.train_batches(epoch, batch, seed=seed)])
    mean = torch.tensor(source.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(source.info.std).view(1, -1, 1, 1)
    pixels = (out * std + mean) * 255
    return pixels.round().clamp(0, 255).to(torch.uint8), x[: len(out)]


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_horizontal_flip_with_the_stated_probability(p):
    source = toy(hflip=p)
    out, x = raw_epoch(source)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert bool((flipped | same).all())  # nothing else happened
    assert within_five_sigma(int(flipped.sum()), len(x), p)


@pytest.mark.parametrize("p", [0.25, 0.5])
def test_random_erasing_with_the_stated_probability(p):
    source = toy(reprob=p)
    out, x = raw_epoch(source)
    erased = (out != x).flatten(1).any(1)
    assert within_five_sigma(int(erased.sum()), len(x), p)
    # Erased pixels take the mean colour (0 once normalized, as in torchvision's recipe).
    fill = torch.tensor([round(255 * m) for m in source.info.mean], dtype=torch.uint8).view(3, 1)
    sample = int(erased.nonzero()[0])
    diff = (out[sample] != x[sample]).any(0)
    assert bool((out[sample][:, diff] == fill).all())


@pytest.mark.parametrize("policy, cls", [("trivialaugment", v2.TrivialAugmentWide), ("randaugment", v2.RandAugment)])
def test_policies_are_torchvisions_under_each_positions_seed(policy, cls):
    source = toy(n=64, aa=policy)
    out, x = raw_epoch(source, epoch=2, seed=5, batch=16)
    reference = cls(interpolation=v2.InterpolationMode.BILINEAR)  # --interpolation bilinear (the default)
    for position in range(len(x)):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(derive_seed(5, 2, position))
            expected = reference(x[position])
        assert torch.equal(out[position], expected), position
    assert (out != x).flatten(1).any(1).float().mean() > 0.5  # not the identity


def test_random_resized_crop_boxes_follow_torchvisions_rule():
    side, scale, ratio = 32, (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = rrc_boxes(N, side, scale, ratio, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T.double()
    assert bool(((top >= 0) & (left >= 0) & (top + h <= side) & (left + w <= side) & (h > 0) & (w > 0)).all())
    # Rounding w and h to whole pixels moves the area by at most (w + h) / 2 + 1/4 pixels and the ratio a little.
    area = h * w / side**2
    slack = (w + h) / 2 / side**2 + 0.25 / side**2
    assert bool(((area >= scale[0] - slack) & (area <= scale[1] + slack)).all())
    # torchvision's own boxes on the same image have the same distribution: compare the mean area (std of the mean
    # ~0.27/sqrt(N) = 0.006 each; 5 sigma of the difference ~0.04).
    assert abs(float(area.mean()) - _torchvision_areas(side, N)) < 0.04
    aspect = w / h
    rounding = 1 / h + 1 / w  # one pixel of rounding on each side moves the ratio by about this much
    assert bool(((aspect >= ratio[0] * (1 - rounding)) & (aspect <= ratio[1] * (1 + rounding))).all())


def _torchvision_areas(side: int, n: int) -> float:
    """The mean area fraction of torchvision's RandomResizedCrop boxes on a ``side`` square."""
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(1)
    img = torch.zeros(3, side, side)
    areas = [h * w / side**2 for _, _, h, w in (RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
                                               for _ in range(n))]
    return sum(areas) / n


def test_resized_crop_of_the_whole_image_is_the_identity_and_the_flip_a_mirror():
    x = torch.randint(0, 256, (3, 2, 9, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    whole = torch.tensor([[0, 0, 9, 9]] * 3)
    assert torch.equal(resized_crop(x, whole, None, 9, "bilinear"), x)
    flip = torch.tensor([True, False, True])
    out = resized_crop(x, whole, flip, 9, "nearest")
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])
    # A 3x3 box at (2, 4) read at its own size: exactly those pixels.
    box = torch.tensor([[2, 4, 3, 3]] * 3)
    assert torch.equal(resized_crop(x, box, None, 3, "bilinear"), x[:, :, 2:5, 4:7])


EVERY_OPTION = dict(hflip=0.5, scale=(0.35, 1.0), ratio=(0.8, 1.25), aa="trivialaugment", reprob=0.25,
                    train_crop_size=10, val_resize_size=9, val_crop_size=8, interpolation="bicubic")


def every_option(reps: int = 2) -> InMemorySource:
    return open_data("digits", image_size=12, augment=AugmentOptions(**EVERY_OPTION), ra_reps=reps)


def test_every_option_is_a_pure_function_of_seed_epoch_and_position():
    source = every_option()
    one = list(source.train_batches(1, 16, seed=7))
    two = [list(source.train_batches(1, 8, seed=7, rank=r, world_size=2)) for r in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(one, *two, strict=True):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    tail = list(source.train_batches(1, 16, seed=7, start=30))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(one[30:], tail, strict=True))
    again = list(every_option().train_batches(1, 16, seed=7))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(one, again, strict=True))
    assert not torch.equal(one[0][0], next(iter(source.train_batches(1, 16, seed=8)))[0])
    assert not torch.equal(one[0][0], next(iter(source.train_batches(2, 16, seed=7)))[0])
    assert one[0][0].shape == (16, 1, 10, 10)
    assert next(iter(source.test_batches(8)))[0].shape == (8, 1, 8, 8)


def test_augmentation_neither_uses_nor_touches_the_global_rng():
    source = every_option()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = next(iter(source.train_batches(0, 32, seed=1)))[0]
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(99)
    assert torch.equal(next(iter(source.train_batches(0, 32, seed=1)))[0], first)


def test_repeated_augmentation_order_and_distinct_copies():
    order = epoch_order(10, seed=0, epoch=0, reps=3)
    perm = epoch_order(10, seed=0, epoch=0)
    assert order.tolist() == perm.repeat_interleave(3)[:10].tolist()  # torchvision's RASampler order at one process
    source = toy(n=60, hflip=0.5, scale=(0.3, 1.0))
    source.ra_reps = 3
    out, x = raw_epoch(source, batch=30)
    order = epoch_order(60, seed=3, epoch=0, reps=3)
    assert order[0] == order[1] == order[2]
    assert not torch.equal(out[0], out[1])  # the same image, augmented twice differently


def test_defaults_per_data_set_keep_todays_recipes():
    digits = open_data("digits")  # the main job's: a mild random-resized crop, never mirrored
    recipe = digits.augment.recipe
    assert (recipe.hflip, recipe.pad, recipe.scale, recipe.ratio) == (0.0, 0, (0.8, 1.0), (0.9, 1.1))
    # given flags still win over the defaults: the former recipe is one flag away
    former = open_data("digits", augment=AugmentOptions(pad=1)).augment.recipe
    assert (former.pad, former.scale) == (1, None)
    synthetic = open_data("synthetic", synthetic_size=16)
    assert not synthetic.augment.recipe.active
    recipe = toy(n=8, side=32).augment.recipe
    assert (recipe.train_crop, recipe.val_resize, recipe.val_crop) == (32, 32, 32)


def test_recipe_is_recorded_in_the_data_info():
    info = every_option().info
    assert info.recipe["aa"] == "trivialaugment" and info.recipe["ra_reps"] == 2
    assert (info.recipe["train_crop"], info.recipe["val_resize"], info.recipe["val_crop"]) == (10, 9, 8)
    assert "TrivialAugmentWide" in info.augment and "random erasing p=0.25" in info.augment
    assert info.image_size == 8


def test_recipe_validation_in_the_data_layer():
    with pytest.raises(ValueError, match="--pad .* --scale"):
        open_data("digits", augment=AugmentOptions(pad=1, scale=(0.5, 1.0)))
    with pytest.raises(ValueError, match="one value per channel"):
        open_data("digits", augment=AugmentOptions(mean=(0.5, 0.5, 0.5)))


def test_batch_recipe_draws_are_fixed_in_number():
    recipe = Recipe(train_crop=8, val_resize=8, val_crop=8, mean=(0.5,), std=(0.5,), hflip=0.5, pad=1,
                    scale=None)
    a = BatchRecipe(recipe, 8).draw(50, generator(1, 2, -1))
    b = BatchRecipe(recipe, 8).draw(50, generator(1, 2, -1))
    assert torch.equal(a.oy, b.oy) and torch.equal(a.flip, b.flip)


@pytest.mark.parametrize("augment", [None, AugmentOptions(scale=(0.08, 1.0), hflip=0.5, train_crop_size=12)])
def test_a_samples_augmentation_does_not_depend_on_the_batch_it_is_in(augment):
    """The digits' default recipe (a random-resized crop) and torchvision's folder recipe: the first 192 images of an
    epoch are the same pixels in batches of 32, of 8, or of 1."""
    data = open_data("digits", augment=augment)

    def first(batch):
        return torch.cat([x for x, _ in itertools.islice(data.train_batches(1, batch, seed=5), 192 // batch)])

    assert torch.equal(first(32), first(8)) and torch.equal(first(32), first(1))
