"""Data parallelism: N processes under torchrun, each with a replica of the model and a shard of every global batch.

``torchrun --nproc-per-node N -m convcanon train ...`` (add ``--nnodes`` and a rendezvous endpoint for several
machines). Each process builds the model from the same seed (so the replicas start equal), reads its rank's slice of
each global micro-batch (``data.base.rank_slice``: the data order is a function of the global position only), and
DistributedDataParallel averages the gradients over the processes on the last micro-batch of each step. The same
gradient descent as one process with the global batch: tested equal to one process with N times the batch.

Batch norm normalizes over each process's own images unless ``--sync-bn`` (``parallel.sync_batchnorm``). Each rank
draws its own dropout masks (identical masks on every shard would be one mask for the global batch, repeated), and a
checkpoint keeps every rank's random stream, so a resume continues each one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..train.reproducibility import derive_seed, seed_everything
from ..train.strategy import RANK_STREAM, Strategy


class DataParallel(Strategy):
    """N replicas, one per process, gradients averaged by DDP (a world of one works too, without DDP)."""

    name = "data parallel"

    def prepare(self, model: nn.Module, cfg: Any) -> nn.Module:
        if cfg.sync_bn and self.ctx.distributed:
            from .sync_batchnorm import convert_sync_batchnorm

            model = convert_sync_batchnorm(model, self.ctx.device)
        return model

    def wrap(self, net: nn.Module, cfg: Any) -> nn.Module:
        if not self.ctx.distributed:
            return net
        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(net, device_ids=device_ids)

    def sync_buffers(self, model: nn.Module) -> None:
        # Batch norm's running statistics differ between ranks after a step (each saw its own shard) until DDP
        # broadcasts rank 0's at the next forward; the weight average takes rank 0's now, so that it is one average.
        # One flat broadcast, not one per buffer; integer buffers (batch norm's step counter) agree anyway.
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        if not self.ctx.distributed or not buffers:
            return
        flat = torch.cat([b.detach().reshape(-1).to(buffers[0].dtype) for b in buffers])
        torch.distributed.broadcast(flat, src=0)
        for b, part in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
            b.detach().copy_(part.view_as(b))

    def gather_rng(self, rng: dict[str, Any]) -> list[Any]:
        if not self.ctx.distributed:
            return [rng]
        ranks: list[Any] | None = [None] * self.ctx.world_size if self.ctx.is_main else None
        torch.distributed.gather_object(rng, ranks, dst=0)  # every rank's stream, so a resume continues each one
        return ranks

    def seed_streams(self, cfg: Any) -> None:
        # Every rank seeded alike, so the initial weights agree; from here each rank draws its own dropout masks.
        # Rank 0 keeps the single-process stream.
        if self.ctx.distributed and self.ctx.rank > 0:
            seed_everything(derive_seed(cfg.seed, RANK_STREAM, self.ctx.rank))


__all__ = ["DataParallel"]
