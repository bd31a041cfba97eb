"""Exact evaluation: every test sample counted once across ranks, metrics summed over ranks before dividing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import DistContext

EVAL_MIN_BATCH = 256  # evaluation keeps no activations for backward, so it takes larger batches than training


def eval_batch_size(batch_size: int) -> int:
    """The batch a run evaluates with, for training batch ``batch_size``."""
    return max(batch_size, EVAL_MIN_BATCH)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data,  # a convcanon.data.DataSource
    ctx: DistContext,
    *,
    batch_size: int,
    compute: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    channels_last: bool = False,
    confusion: bool = False,
) -> dict:
    """Loss, top-1 and top-5 (%) and the sample count over the whole test split; optionally the confusion matrix
    (rows: true class, columns: predicted)."""
    num_classes = data.info.num_classes
    was_training = model.training
    model.eval()
    device = ctx.device
    # [loss sum, samples, top-1 hits, top-5 hits], accumulated on the device: no host sync per batch.
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device) if confusion else None
    k5 = min(5, num_classes)
    for x, y in data.test_batches(batch_size, rank=ctx.rank, world_size=ctx.world_size, device=device):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with compute():
            logits = model(x).float()
        pred = logits.topk(k5, dim=1).indices
        hits = pred.eq(y[:, None])
        totals += torch.stack([
            F.cross_entropy(logits, y, reduction="sum").double(), torch.tensor(y.numel(), device=device).double(),
            hits[:, 0].sum().double(), hits.any(dim=1).sum().double(),
        ])  # fmt: skip
        if matrix is not None:
            matrix += torch.bincount(y * num_classes + pred[:, 0], minlength=num_classes**2).view_as(matrix)
    ctx.all_reduce_sum(totals)
    if matrix is not None:
        ctx.all_reduce_sum(matrix)
    model.train(was_training)
    loss_sum, n, top1, top5 = totals.tolist()
    n = int(n)
    if n == 0:
        raise ValueError("the test split is empty: nothing to evaluate")
    result = {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "samples": n}
    if num_classes > 5:
        result["top5"] = 100.0 * top5 / n
    if matrix is not None:
        result["confusion"] = matrix.cpu()
    return result
