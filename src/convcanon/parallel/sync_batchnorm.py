"""Sync batch norm on any device: batch statistics over the whole global batch of a data-parallel run.

torch's ``nn.SyncBatchNorm`` runs only on GPUs; :class:`SyncBatchNorm` is the same computation (statistics over every
rank's batch, the matching backward) for any device with plain all-reduces, used on CPU so that ``--sync-bn`` works,
and is tested, with gloo. :func:`convert_sync_batchnorm` picks torch's fused one on CUDA and this one elsewhere.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm over the union of every rank's batch: the statistics and, in backward, the two gradient sums that
    couple the samples are all-reduced; the weight and bias gradients stay local (DDP averages them like any other).

    The arithmetic follows ATen's CPU kernel step by step (float64 sums and two-pass variance, ``y = x * alpha +
    beta``, the same backward terms), so that with one process, or with the same numbers split over ranks, it agrees
    with ``BatchNorm2d`` to the last bits rather than to 1e-6: rounding differences are what training amplifies.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group):
        ctx.in_dtype = x.dtype
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # as autocast runs batch norm: in fp32
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        x64 = x.double()
        local = torch.cat([x64.sum(dims), x64.new_tensor([x.numel() // x.shape[1]])])
        dist.all_reduce(local, group=group)
        count = local[-1]
        mean64 = local[:-1] / count
        sq = (x64 - mean64.view(shape)).square().sum(dims)  # two passes: no cancellation in E[x^2] - E[x]^2
        dist.all_reduce(sq, group=group)
        var64 = sq / count
        mean, invstd = mean64.to(x.dtype), torch.rsqrt(var64 + eps).to(x.dtype)
        alpha = invstd if weight is None else invstd * weight
        beta = -mean * alpha if bias is None else bias - mean * alpha
        y = x * alpha.view(shape) + beta.view(shape)
        if running_mean is not None:
            n = count.item()
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean64.to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_((var64 * (n / max(n - 1, 1))).to(running_var.dtype),
                                                    alpha=momentum)
        ctx.save_for_backward(x, mean, invstd, weight)
        ctx.count, ctx.group, ctx.dims, ctx.shape = count.item(), group, dims, shape
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, mean, invstd, weight = ctx.saved_tensors
        dims, shape, n = ctx.dims, ctx.shape, ctx.count
        grad_out = grad_out.to(x.dtype)
        centered = x - mean.view(shape)
        sum_g = grad_out.double().sum(dims)
        dotp = (centered.double() * grad_out.double()).sum(dims)
        grad_weight = (dotp * invstd.double()).to(x.dtype) if weight is not None else None
        grad_bias = sum_g.to(x.dtype) if weight is not None else None
        both = torch.cat([sum_g, dotp])
        dist.all_reduce(both, group=ctx.group)
        total_g, total_dotp = both.chunk(2)
        k = (total_dotp * invstd.double().square() / n).to(x.dtype)
        grad_mean = (total_g / n).to(x.dtype)
        scale = invstd if weight is None else invstd * weight
        grad_x = (grad_out - grad_mean.view(shape) - centered * k.view(shape)) * scale.view(shape)
        return grad_x.to(ctx.in_dtype), grad_weight, grad_bias, None, None, None, None, None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """``nn.SyncBatchNorm`` for every device: in training, statistics over the whole global batch; the same
    parameters, buffers and state-dict keys as the ``BatchNorm*d`` it replaces. Eval uses the running statistics."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {input.dim()}D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        group = self.process_group or (dist.group.WORLD if dist.is_available() and dist.is_initialized() else None)
        if not self.training or group is None or dist.get_world_size(group) == 1:
            return super().forward(input)
        self._check_input_dim(input)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as _BatchNorm
                momentum = 1.0 / float(self.num_batches_tracked)
        return _SyncBatchNormFunction.apply(
            input, self.weight, self.bias, self.running_mean if self.track_running_stats else None,
            self.running_var if self.track_running_stats else None, self.eps, momentum, group,
        )  # fmt: skip


def convert_sync_batchnorm(module: nn.Module, device: torch.device, process_group=None) -> nn.Module:
    """Replace every ``BatchNorm*d`` by a synchronized one: torch's fused ``nn.SyncBatchNorm`` on CUDA, ours elsewhere.

    Parameters and buffers are moved over, not copied, so optimizers and state-dict keys see the same tensors.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (SyncBatchNorm,
                                                                                         nn.SyncBatchNorm)):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device, process_group))
    return out


__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]
