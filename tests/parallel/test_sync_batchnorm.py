"""Sync batch norm on any device: over every rank's batch it computes exactly what one ``BatchNorm2d`` computes over
the joint batch (outputs, gradients, running statistics); converting a model keeps its tensors and keys."""

from __future__ import annotations

import threading

import torch
from torch import nn

from convcanon.parallel import sync_batchnorm
from convcanon.parallel.sync_batchnorm import SyncBatchNorm, _SyncBatchNormFunction, convert_sync_batchnorm


class _FakeWorld:
    """All-reduce between threads: what two ranks' ``dist.all_reduce`` would compute, inside one process."""

    def __init__(self, n: int) -> None:
        self.barrier = threading.Barrier(n)
        self.lock = threading.Lock()
        self.parts: list[torch.Tensor] = []
        self.result: torch.Tensor | None = None

    def all_reduce(self, tensor, op=None, group=None):
        with self.lock:
            self.parts.append(tensor.clone())
        if self.barrier.wait() == 0:
            self.result = torch.stack(self.parts).sum(0)
        self.barrier.wait()
        tensor.copy_(self.result)
        if self.barrier.wait() == 0:
            self.parts, self.result = [], None
        self.barrier.wait()


def test_sync_batchnorm_equals_batchnorm_over_the_joint_batch(monkeypatch):
    # Two "ranks" (threads) normalize halves of one batch with statistics all-reduced between them. Their outputs and
    # input gradients, their weight/bias gradients summed (DDP averages per-rank gradients of per-rank mean losses:
    # the same up to the factor 1/world it also applies to a plain model) and their running statistics equal one
    # BatchNorm2d over the whole batch.
    world = _FakeWorld(2)
    monkeypatch.setattr(sync_batchnorm.dist, "all_reduce", world.all_reduce)
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    w = torch.randn(8, 3, 5, 5)

    ref = nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    xr = x.clone().requires_grad_()
    yr = ref(xr)
    (yr * w).sum().backward()

    results = {}

    def rank(r: int) -> None:
        bn = SyncBatchNorm(3)
        with torch.no_grad():
            bn.weight.copy_(ref.weight)
            bn.bias.copy_(ref.bias)
        xs = x[4 * r:4 * (r + 1)].clone().requires_grad_()
        y = _SyncBatchNormFunction.apply(xs, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                                     bn.eps, bn.momentum, None)
        (y * w[4 * r:4 * (r + 1)]).sum().backward()
        results[r] = (y.detach(), xs.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert set(results) == {0, 1}
    # A few float32 ulps: the same float64 sums as ATen's kernel, added in two halves; the weight gradient is
    # the sum of two rounded halves (measured: 2e-7 on outputs, 1e-6 on weight gradients of ~10).
    tol = dict(rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(torch.cat([results[0][0], results[1][0]]), yr.detach(), **tol)
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]), xr.grad, **tol)
    torch.testing.assert_close(results[0][2] + results[1][2], ref.weight.grad, **tol)
    torch.testing.assert_close(results[0][3] + results[1][3], ref.bias.grad, **tol)
    for r in range(2):  # the unbiased variance over all 200 values per channel, as BatchNorm2d keeps it
        torch.testing.assert_close(results[r][4], ref.running_mean, **tol)
        torch.testing.assert_close(results[r][5], ref.running_var, **tol)


def test_the_module_over_two_ranks_trains_and_evaluates_as_one_batchnorm_over_the_joint_batches(monkeypatch):
    # The module's own path (process group, momentum=None's cumulative average, num_batches_tracked, eval on the
    # running statistics) over two steps, each rank holding half of each batch.
    world = _FakeWorld(2)
    monkeypatch.setattr(sync_batchnorm.dist, "all_reduce", world.all_reduce)
    monkeypatch.setattr(sync_batchnorm.dist, "get_world_size", lambda group=None: 2)
    batches = [torch.randn(8, 3, 4, 4) * s + s for s in (1.0, 3.0)]
    ref = nn.BatchNorm2d(3, momentum=None)
    ref_grads = []
    for x in batches:
        ref.zero_grad()
        ref(x).square().sum().backward()
        ref_grads.append((ref.weight.grad.clone(), ref.bias.grad.clone()))
    probe = torch.randn(5, 3, 4, 4)
    results = {}

    def rank(r: int) -> None:
        bn = SyncBatchNorm(3, momentum=None, process_group=object())  # any group: the fake world is the group
        grads = []
        for x in batches:
            bn.zero_grad()
            bn(x[4 * r:4 * (r + 1)]).square().sum().backward()
            grads.append((bn.weight.grad.clone(), bn.bias.grad.clone()))
        results[r] = (bn, grads)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert set(results) == {0, 1}
    tol = dict(rtol=1e-6, atol=1e-5)
    for step in range(2):  # weight/bias gradients stay local: their sum over ranks is the joint batch's
        torch.testing.assert_close(results[0][1][step][0] + results[1][1][step][0], ref_grads[step][0], **tol)
        torch.testing.assert_close(results[0][1][step][1] + results[1][1][step][1], ref_grads[step][1], **tol)
    for bn, _ in results.values():
        assert int(bn.num_batches_tracked) == 2
        torch.testing.assert_close(bn.running_mean, ref.running_mean, **tol)
        torch.testing.assert_close(bn.running_var, ref.running_var, **tol)
        torch.testing.assert_close(bn.eval()(probe), ref.eval()(probe), **tol)


def test_convert_sync_batchnorm_keeps_the_same_tensors_and_keys():
    import convcanon

    model = convcanon.create_model("resnet20", num_classes=10, in_chans=1)
    before = model.state_dict()
    params = {n: p for n, p in model.named_parameters()}
    model = convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(model.bn1, SyncBatchNorm)
    assert sum(isinstance(m, SyncBatchNorm) for m in model.modules()) == 19  # 1 stem + 2 x 9 blocks
    assert list(model.state_dict()) == list(before)
    assert all(p is params[n] for n, p in model.named_parameters())  # the optimizer sees the very same tensors
    # Without a process group (one process) it is plain batch norm.
    x = torch.randn(4, 1, 8, 8)
    ref = convcanon.create_model("resnet20", num_classes=10, in_chans=1)
    ref.load_state_dict(before)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
