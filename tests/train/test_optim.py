"""The LR function at its boundaries, the linear scaling rule, and which parameters get weight decay."""

import math

import pytest
import torch
from torch import nn

from convcanon.train.config import TrainConfig
from convcanon.train.optim import build_optimizer, lr_at, make_plan, param_groups


def _plan(**kw):
    cfg = TrainConfig(**{"epochs": 10, "batch_size": 32, "lr": 0.1, "base_batch": 256, "warmup_epochs": 2, **kw})
    return make_plan(cfg, micro_batches_per_epoch=100, world_size=kw.pop("world", 1) if "world" in kw else 1)


def test_linear_scaling_rule_uses_the_global_batch():
    cfg = TrainConfig(batch_size=64, accum_steps=4, lr=0.1, base_batch=256, epochs=3, warmup_epochs=0)
    plan = make_plan(cfg, micro_batches_per_epoch=10, world_size=8)
    assert plan.global_batch == 64 * 8 * 4
    assert plan.peak_lr == pytest.approx(0.1 * 2048 / 256)
    # 10 micro-batches in groups of 4: 4 + 4 + 2 -> 3 optimizer steps per epoch
    assert plan.steps_per_epoch == 3
    assert plan.total_steps == 9


def test_warmup_is_linear_and_reaches_the_peak_exactly():
    plan = _plan()
    assert plan.warmup_steps == 200
    assert lr_at(0, plan) == pytest.approx(plan.peak_lr / 200)
    assert lr_at(99, plan) == pytest.approx(plan.peak_lr * 100 / 200)
    assert lr_at(199, plan) == pytest.approx(plan.peak_lr)
    # first step after warmup starts the cosine at its top
    assert lr_at(200, plan) == pytest.approx(plan.peak_lr)


def test_cosine_ends_at_zero_and_is_monotone():
    plan = _plan()
    values = [lr_at(s, plan) for s in range(plan.warmup_steps, plan.total_steps)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_at(plan.total_steps, plan) == pytest.approx(0.0, abs=1e-12)
    mid = plan.warmup_steps + (plan.total_steps - plan.warmup_steps) // 2
    assert lr_at(mid, plan) == pytest.approx(plan.peak_lr / 2, rel=1e-6)


def test_step_schedule_drops_by_gamma_at_each_milestone():
    plan = _plan(schedule="step", milestones=[4, 7], gamma=0.1, warmup_epochs=0)
    peak = plan.peak_lr
    assert lr_at(399, plan) == pytest.approx(peak)
    assert lr_at(400, plan) == pytest.approx(peak * 0.1)
    assert lr_at(699, plan) == pytest.approx(peak * 0.1)
    assert lr_at(700, plan) == pytest.approx(peak * 0.01)


def test_no_warmup_starts_at_the_peak():
    plan = _plan(warmup_epochs=0, schedule="constant")
    assert lr_at(0, plan) == plan.peak_lr
    assert lr_at(plan.total_steps - 1, plan) == plan.peak_lr


def test_lr_is_a_pure_function_of_the_step():
    plan = _plan()
    assert [lr_at(s, plan) for s in range(0, 1000, 37)] == [lr_at(s, plan) for s in range(0, 1000, 37)]
    assert all(math.isfinite(lr_at(s, plan)) for s in range(plan.total_steps))


def test_weight_decay_skips_norm_and_bias_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 5, 5))
    decay, no_decay = param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {2, 4}  # conv and linear weights
    assert len(no_decay["params"]) == 4  # conv bias, bn weight, bn bias, linear bias
    opt = build_optimizer(model, TrainConfig(optimizer="sgd", nesterov=True), torch.device("cpu"))
    assert opt.param_groups[0]["nesterov"] is True


def test_too_small_training_split_is_an_error():
    with pytest.raises(ValueError, match="--batch-size"):
        make_plan(TrainConfig(), micro_batches_per_epoch=0)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))


def _reference_sgd(model, cfg):
    groups = param_groups(model, cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, foreach=False)


def _grads(model, x, y):
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()


@pytest.mark.parametrize("nesterov", [False, True])
def test_fused_sgd_matches_the_textbook_update(nesterov):
    cfg = TrainConfig(nesterov=nesterov)
    ours, ref = _net(), _net()
    opt = build_optimizer(ours, cfg, torch.device("cpu"))
    assert opt.defaults["fused"]  # CPU has fused SGD (torch >= 2.4)
    ref_opt = _reference_sgd(ref, cfg)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    for _ in range(4):
        for model, o in ((ours, opt), (ref, ref_opt)):
            _grads(model, x, y)
            o.step()
    # 1e-6 relative: one fused kernel vs per-tensor loops may contract multiply-adds differently (FMA), a last-bit
    # difference per step; a wrong formula (decay on BN, missing momentum) differs by >= 1e-3.
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-8)


def test_a_first_step_skipped_by_the_loss_scaler_leaves_clean_momentum():
    # Fused SGD allocates momentum buffers uninitialized and fills them in its kernel; when the fp16 loss scaler skips
    # the very first step (inf gradients: common at the initial scale), they would stay garbage. build_optimizer
    # zero-fills them: the skipped step changes nothing and the next one equals a fresh optimizer's first step.
    cfg = TrainConfig()
    ours, ref = _net(), _net()
    opt = build_optimizer(ours, cfg, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    before = [p.detach().clone() for p in ours.parameters()]
    scaler.scale(nn.functional.cross_entropy(ours(x), y)).backward()
    next(ours.parameters()).grad[0].fill_(float("inf"))
    scaler.step(opt)  # skipped: inf found while unscaling
    scaler.update()
    for p, b in zip(ours.parameters(), before, strict=True):
        assert torch.equal(p, b)
        assert torch.count_nonzero(opt.state[p]["momentum_buffer"]) == 0
    ref_opt = _reference_sgd(ref, cfg)
    opt.zero_grad(set_to_none=True)
    scaler.scale(nn.functional.cross_entropy(ours(x), y)).backward()
    _grads(ref, x, y)
    scaler.step(opt)
    ref_opt.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        # 1e-6 relative: the scaled gradient is unscaled by a power of two (exact); FMA contraction as above.
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-8)


def _cl_net():
    # Shapes whose (O, H, W, I) view differs from (O, I, H, W), and one ([6, 3, 3, 3]) where both read the same.
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.Conv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                         nn.Flatten(), nn.Linear(5 * 6 * 6, 4))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_channels_last_weights_update_in_place_as_contiguous_ones(optimizer):
    # The fused kernels copy non-contiguous tensors in and out; build_optimizer's update runs on the contiguous views
    # of channels-last weights instead (optim.dense_views). Elementwise, so every value equals the NCHW model's
    # update, and afterwards the weights, gradients and state have their own shapes, layout and memory again.
    # Tolerance 1e-6 relative: the kernel's vector loop contracts multiply-adds (FMA) and its scalar tail may not, and
    # another memory order puts other elements in the tail (numel not a multiple of the vector width): a last-bit
    # difference per step; a wrong element mapping differs by the size of an update (>= 1e-4 here).
    cfg = TrainConfig(optimizer=optimizer, nesterov=True, weight_decay=5e-4)
    cl = _cl_net().to(memory_format=torch.channels_last)
    ref = _cl_net()
    opts = [build_optimizer(m, cfg, torch.device("cpu")) for m in (cl, ref)]
    storage = {n: p.data_ptr() for n, p in cl.named_parameters()}
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        _grads(ref, x, y)  # the same gradients for both (the convolutions round differently in the two layouts)
        for a, b in zip(cl.parameters(), ref.parameters(), strict=True):
            a.grad = b.grad.contiguous(memory_format=torch.channels_last) if a.dim() == 4 else b.grad.clone()
        for o in opts:
            o.step()
    close = {"rtol": 1e-6, "atol": 1e-9}
    for (name, a), b in zip(cl.named_parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, **close), name
        assert a.shape == b.shape and a.grad.shape == b.shape and a.data_ptr() == storage[name]
        if a.dim() == 4:
            assert a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous()
        for key, value in opts[0].state[a].items():
            if key != "step":
                assert value.shape == a.shape and torch.allclose(value, opts[1].state[b][key], **close), (name, key)
    saved = opts[0].state_dict()
    fresh = build_optimizer(cl, cfg, torch.device("cpu"))
    fresh.load_state_dict(saved)  # the checkpoint form is the plain optimizer's


def test_dense_views_leave_everything_as_it_was_when_the_step_raises():
    from convcanon.train.optim import dense_views

    net = _cl_net().to(memory_format=torch.channels_last)
    opt = build_optimizer(net, TrainConfig(), torch.device("cpu"))
    _grads(net, torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    before = {n: (p.shape, p.stride(), p.grad.stride()) for n, p in net.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"), dense_views(opt):
        assert not any(p.dim() == 4 and not p.is_contiguous() for p in net.parameters())
        raise RuntimeError("boom")
    assert before == {n: (p.shape, p.stride(), p.grad.stride()) for n, p in net.named_parameters()}
