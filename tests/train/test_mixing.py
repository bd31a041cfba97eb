"""MixUp and CutMix as a specification: a pure function of (seed, epoch, micro-batch), targets that are distributions,
label smoothing that composes with them, shards that mix as the whole batch does, and training accuracy counted
against the labels, never against the blended target."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from convcanon.train.config import TrainConfig
from convcanon.train.mixing import BatchMixing, MixDraw, partners
from convcanon.train.task import ClassificationTask

K = 10


def _mixing(**kw) -> BatchMixing:
    return BatchMixing(**{"mixup": 0.4, "cutmix": 1.0, "num_classes": K, "seed": 7, **kw})


def _batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, K, (n,), generator=g)


def test_off_unless_an_alpha_is_given():
    assert BatchMixing.from_config(TrainConfig(), K) is None
    assert BatchMixing.from_config(TrainConfig(cutmix=1.0), K) == BatchMixing(0.0, 1.0, K, 0, 1.0, 0.5)


def test_the_draw_is_a_pure_function_of_seed_epoch_and_index():
    m = _mixing()
    draws = [m.draw(e, i, 8, 8) for e in range(3) for i in range(20)]
    torch.manual_seed(123)  # the global random state plays no part
    assert draws == [m.draw(e, i, 8, 8) for e in range(3) for i in range(20)]
    assert draws == [_mixing().draw(e, i, 8, 8) for e in range(3) for i in range(20)]  # a new object, same draws
    # They vary with the epoch and index (CutMix's lam is a share of 64 pixels, so fewer distinct values than draws).
    assert len({d.lam for d in draws}) > 30
    assert [d.lam for d in draws] != [_mixing(seed=8).draw(e, i, 8, 8).lam for e in range(3) for i in range(20)]
    x, y = _batch()
    a, b = m(x, y, draws[5]), m(x.clone(), y.clone(), draws[5])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_probabilities_of_applying_and_switching():
    draws = [_mixing(prob=0.5, switch_prob=0.25).draw(0, i, 8, 8) for i in range(4000)]
    kinds = [d.kind for d in draws]
    mixed = len(draws) - kinds.count("none")
    # Binomial(4000, 0.5): sd 32, so +-200 is over 6 sd; the CutMix share of mixed batches: sd 0.01, +-0.06.
    assert abs(mixed - 2000) < 200
    assert abs(kinds.count("cutmix") / mixed - 0.25) < 0.06
    assert {d.kind for d in (_mixing(mixup=0.0).draw(0, i, 8, 8) for i in range(50))} == {"cutmix"}
    assert {d.kind for d in (_mixing(cutmix=0.0).draw(0, i, 8, 8) for i in range(50))} == {"mixup"}


def test_targets_are_distributions_and_mix_the_pair_by_lam():
    x, y = _batch(9)  # odd: the last image pairs with itself
    m = _mixing()
    for index in range(40):
        draw = m.draw(0, index, 8, 8)
        mx, t = m(x, y, draw)
        assert t.shape == (9, K) and t.dtype == torch.float32
        # Each row is lam * onehot + (1 - lam) * onehot: float32 rounds each weight once (~6e-8), so 1e-6 is ample
        # and anything structurally wrong (a missing term, a lam applied twice) is off by >= 1e-2.
        assert torch.allclose(t.sum(1), torch.ones(9), atol=1e-6)
        pair = partners(9, "cpu")
        expect = draw.lam * F.one_hot(y, K).float() + (1 - draw.lam) * F.one_hot(y[pair], K).float()
        assert torch.allclose(t, expect, atol=1e-6)
        if draw.kind == "mixup":
            assert torch.allclose(mx, draw.lam * x + (1 - draw.lam) * x[pair], atol=1e-6)
        elif draw.kind == "cutmix":
            y0, y1, x0, x1 = draw.box
            inside = torch.zeros(8, 8, dtype=torch.bool)
            inside[y0:y1, x0:x1] = True
            assert torch.equal(mx[:, :, inside], x[pair][:, :, inside])
            assert torch.equal(mx[:, :, ~inside], x[:, :, ~inside])
            assert math.isclose(draw.lam, 1 - inside.sum().item() / 64)  # lam is the share of the image left
    assert torch.equal(partners(5, "cpu"), torch.tensor([1, 0, 3, 2, 4]))


def test_label_smoothing_composes_with_the_mixed_target():
    """CE(logits, mixed, eps) = CE against (1 - eps) * mixed + eps / K = lam * CE(y, eps) + (1 - lam) * CE(y', eps):
    cross-entropy is linear in its target, so smoothing the blend is blending the smoothed one-hots (torchvision's
    reference and timm's ``mixup_target`` compute the same). The three are different float32 sums of ten terms, equal
    to ~1e-7 relative; 1e-5 leaves room and still catches a smoothing applied twice or not at all (>= 1e-3 here)."""
    x, y = _batch(16)
    logits = torch.randn(16, K, generator=torch.Generator().manual_seed(1)) * 3
    eps = 0.1
    task = ClassificationTask(label_smoothing=eps)
    draw = MixDraw("mixup", 0.7)
    _, t = _mixing()(x, y, draw)
    loss = task.loss(logits, t)
    explicit = -(((1 - eps) * t + eps / K) * logits.log_softmax(1)).sum(1).mean()
    pair = partners(16, "cpu")
    by_parts = 0.7 * F.cross_entropy(logits, y, label_smoothing=eps) + 0.3 * F.cross_entropy(
        logits, y[pair], label_smoothing=eps)
    assert loss.item() == pytest.approx(explicit.item(), rel=1e-5)
    assert loss.item() == pytest.approx(by_parts.item(), rel=1e-5)
    unsmoothed = ClassificationTask(label_smoothing=0.0).loss(logits, t)
    assert abs(loss.item() - unsmoothed.item()) > 1e-3


def test_an_unmixed_batch_of_a_mixing_run_has_one_hot_targets():
    x, y = _batch()
    mx, t = _mixing()(x, y, MixDraw("none"))
    assert mx is x and torch.equal(t, F.one_hot(y, K).float())


def test_training_accuracy_counts_each_label_by_its_weight():
    task = ClassificationTask()
    y, y2 = torch.tensor([3, 3, 3, 3]), torch.tensor([5, 5, 5, 5])
    target = 0.7 * F.one_hot(y, K).float() + 0.3 * F.one_hot(y2, K).float()
    logits = torch.full((4, K), -5.0)
    logits[0, 3] = logits[1, 5] = logits[2, 0] = logits[3, 3] = 5.0  # predicts 3, 5, 0, 3
    # misses: 0.3 + 0.7 + 1 + 0.3; the arg-max of the blend (3 everywhere) would have said 2 misses.
    assert task.errors(logits, target).item() == pytest.approx(2.3)
    assert task.errors(logits, y).item() == 2  # plain labels: plain misses


def test_two_shards_mix_like_the_whole_batch():
    """An even per-device batch keeps each pair inside its shard, so two ranks mixing their halves compute exactly
    the rows one process computes for the whole global batch (the draw is the same on every rank)."""
    x, y = _batch(16)
    m = _mixing()
    for index in range(10):
        draw = m.draw(1, index, 8, 8)
        whole = m(x, y, draw)
        halves = [m(x[r * 8:(r + 1) * 8], y[r * 8:(r + 1) * 8], draw) for r in range(2)]
        for i in range(2):
            assert torch.equal(torch.cat([h[i] for h in halves]), whole[i])


def test_batches_key_each_micro_batch_by_its_index_in_the_epoch():
    m = _mixing()
    data = [_batch(8, seed=s) for s in range(6)]
    full = list(m.batches(iter(data), epoch=2, start=0))
    resumed = list(m.batches(iter(data[3:]), epoch=2, start=3))  # a run resumed at micro-batch 3
    for (a, ta), (b, tb) in zip(full[3:], resumed, strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    assert list(m.batches(iter([(None, None)]), 0, 0)) == [(None, None)]  # a pipeline's middle stage
