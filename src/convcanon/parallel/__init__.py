"""Parallel strategies the run skeleton (``convcanon.train.run``) plugs in, and AlexNet's two towers.

- :class:`~convcanon.parallel.data_parallel.DataParallel`: N replicas under torchrun, gradients averaged (DDP);
- :class:`~convcanon.parallel.pipeline.Pipeline`: the model's layers split into K stages, one process each;
- ``towers``: the paper AlexNet's two-tower split over two devices;
- ``sync_batchnorm``: batch norm over the global batch, for data parallelism on any device.

:func:`strategy_for` picks the one ``convcanon train`` uses for a config.
"""

from __future__ import annotations

import os
from typing import Any


def strategy_for(cfg: Any):
    """The pipeline for ``pipeline_stages`` > 1; data parallelism under torchrun (``WORLD_SIZE`` > 1); else one
    device."""
    if cfg.pipeline_stages > 1:
        from .pipeline import Pipeline

        return Pipeline()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from .data_parallel import DataParallel

        return DataParallel()
    from ..train.strategy import SingleDevice

    return SingleDevice()


__all__ = ["strategy_for"]
