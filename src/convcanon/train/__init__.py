"""Training: config, the run skeleton and its strategies' interface, the engine and its step, optimizer and schedule,
checkpoints, metrics."""

from .config import TrainConfig, config_from_dict
from .optim import Plan, lr_at, make_plan


def __getattr__(name: str):
    # The skeleton pulls in data, checkpoints and TensorBoard; import it only when asked for.
    if name in ("train", "RunResult", "NonFiniteLossError"):
        from . import run

        return getattr(run, name)
    raise AttributeError(name)


__all__ = ["TrainConfig", "config_from_dict", "train", "RunResult", "NonFiniteLossError", "Plan", "lr_at", "make_plan"]
