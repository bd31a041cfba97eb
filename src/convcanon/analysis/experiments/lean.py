"""A lean training loop for the experiments: in-memory digits, no run directory, curves returned as lists.

The experiments train dozens of small networks for a few hundred steps each; ``convcanon.train.train`` (run
directory, TensorBoard, checkpoints, per-epoch evaluation) would cost more than the training itself there. This loop
runs the engine's own training step (``train.step.TrainStep``, fp32, NCHW, eager: :func:`exact_engine`) with the parts
a claim can depend on identical to a run's: the data order and augmentation (``DataSource.train_batches``), the loss
(``ClassificationTask``), the optimizer (``build_optimizer``: SGD with Nesterov momentum, no weight decay on BN and
biases) and the LR (``make_plan`` + ``lr_at``: linear warmup, cosine). Experiments whose claim is about the run
itself (scaling) use ``convcanon.train.train``.

A *step* is one optimizer update, as everywhere in convcanon.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from ...train.config import config_from_dict
from ...train.optim import Plan, lr_at, make_plan
from ...train.step import build_step
from ...train.task import ClassificationTask


@lru_cache(maxsize=4)
def digits(image_size: int = 8):
    """The embedded digits (1,437 train / 360 test, 8x8 grey), optionally resized once; cached per process."""
    from ...data import open_data

    return open_data("digits", image_size=None if image_size == 8 else image_size)


@lru_cache(maxsize=1)
def digits_unaugmented():
    """The embedded digits without the 1-pixel translation: for overfitting studies, where augmentation would be a
    second regularizer. (A fresh source whose ``augment`` is the inactive ``BatchAugment()``, as synthetic data has.)"""
    from ...data import BatchAugment, make_digits

    source = make_digits()
    source.augment = BatchAugment()
    return source


@lru_cache(maxsize=4)
def dataset(spec: str, augment: bool = True, image_size: int | None = None):
    """The data set of a ``--data`` spec (CIFAR in memory, augmented as in the ResNet paper; an ImageFolder tree
    streamed and cropped to ``image_size``), opened once per process; ``augment=False`` drops the augmentation (for
    claims measured without any regularization: in-memory data only)."""
    from ...data import BatchAugment, open_data

    if spec == "digits" and augment and image_size is None:
        return digits()
    source = open_data(spec, image_size=image_size, progress=False)
    if not augment:
        if not hasattr(source, "augment"):
            raise ValueError(f"--data {spec}: this experiment needs in-memory data (digits or CIFAR)")
        source.augment = BatchAugment()
    return source


def resolve_device(device: str) -> torch.device:
    from ...train.distributed import resolve_device as resolve

    return resolve(device)


def exact_engine(device: torch.device):
    """The engine the experiments run: fp32, NCHW, eager, every convolution a convolution, so that their figures hold
    on any machine (bf16's rounding depends on the hardware; the fast path changes nothing that a claim here is
    about)."""
    from ...train.engine import resolve_engine

    return resolve_engine(device=device, amp="off", channels_last=False, compile=False, small_map_gemm=False)


# Compiling costs tens of seconds per network and saves a fraction of each small step: it pays over the paper
# protocols' 64k-step runs, not over short sweeps.
COMPILE_MIN_STEPS = 20_000


def fast_engine(device: torch.device, model: nn.Module, steps: int):
    """The paper protocols' engine: on a GPU, train's automatic choices (bf16 where native, channels-last; compile for
    runs of ``COMPILE_MIN_STEPS`` steps or more); on a CPU, the exact engine."""
    from ...train.engine import resolve_engine

    if device.type != "cuda":
        return exact_engine(device)
    return resolve_engine(device=device, model=model, compile=None if steps >= COMPILE_MIN_STEPS else False)


def make_lr_plan(data, *, steps: int, batch_size: int, lr: float, warmup_steps: int = 0,
                 schedule: str = "cosine", weight_decay: float = 5e-4, momentum: float = 0.9,
                 optimizer: str = "sgd", nesterov: bool = True) -> tuple[Any, Plan]:
    """A TrainConfig and its Plan for exactly ``steps`` optimizer steps at ``lr`` (``base_batch = batch_size``, so
    ``lr`` is the peak LR itself, not a rate to be scaled)."""
    per_epoch = data.num_train_batches(batch_size)
    cfg = config_from_dict({
        "epochs": max(1, math.ceil(steps / per_epoch)), "batch_size": batch_size, "base_batch": batch_size, "lr": lr,
        "warmup_epochs": 0.0, "schedule": schedule, "weight_decay": weight_decay, "momentum": momentum,
        "optimizer": optimizer, "nesterov": nesterov, "progress": False,
    }, where="experiment settings")  # fmt: skip
    plan = dataclasses.replace(make_plan(cfg, per_epoch), total_steps=steps, warmup_steps=warmup_steps)
    return cfg, plan


def batches(data, batch_size: int, seed: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """Training batches epoch after epoch, in the engine's order (a pure function of seed, epoch, position)."""
    epoch = 0
    while True:
        yield from data.train_batches(epoch, batch_size, seed=seed, device=device)
        epoch += 1


@torch.no_grad()
def evaluate(model: nn.Module, data, device: torch.device, split: str = "test", seed: int = 0) -> dict[str, float]:
    """Error (%) and mean loss in eval mode over the test split, or over one full pass of the (augmented) training
    split, as the network sees it in training."""
    task = ClassificationTask()
    was_training = model.training
    model.eval()
    if split == "test":
        it = data.test_batches(512, device=device)
    else:
        n = data.info.train_size
        # The largest batch <= 512 that divides the split, so one "epoch" covers every training image once.
        size = max(d for d in range(1, min(n, 512) + 1) if n % d == 0)
        it = data.train_batches(0, size, seed=seed, device=device)
    wrong, loss, count = 0, 0.0, 0
    for x, y in it:
        out = model(x)
        logits = out.logits if hasattr(out, "logits") else out
        loss += float(task.loss(logits, y)) * len(y)
        wrong += int((logits.argmax(1) != y).sum())
        count += len(y)
    model.train(was_training)
    return {"error": 100.0 * wrong / count, "loss": loss / count}


def fit(
    model: nn.Module,
    data,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device,
    warmup_steps: int = 0,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    schedule: str = "cosine",
    eval_every: int = 0,
    window: int = 10,
    stop: Callable[[int, float], bool] | None = None,
    final_eval: bool = True,
    lr_fn: Callable[[int], float] | None = None,
    fast: bool = False,
    nesterov: bool = True,
) -> dict[str, Any]:
    """Train ``model`` for ``steps`` steps; returns curves and the final train/test error.

    ``train_curve``: (step, running training error %, running loss) over each ``window`` steps, measured on the
    training batches in train mode, as the papers' training curves. ``test_curve``: (step, test error %, test loss)
    every ``eval_every`` steps (0: at the end only). ``stop(step, running_error)`` ends training early (steps-to-
    threshold measurements). A non-finite loss ends training and is reported as ``diverged``. ``final_eval=False``
    skips the final evaluations (LR sweeps read the training curve only). ``lr_fn(step)`` (0-based) replaces the
    warmup + ``schedule`` LR (a paper's own schedule); ``fast`` trains on :func:`fast_engine`.
    """
    cfg, plan = make_lr_plan(data, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                             schedule=schedule, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)
    engine = fast_engine(device, model, steps) if fast else exact_engine(device)
    model, train_step = build_step(model, engine, cfg)
    lr_of = lr_fn or (lambda i: lr_at(i, plan))
    model.train()
    train_curve: list[tuple[int, float, float]] = []
    test_curve: list[tuple[int, float, float]] = []
    loss_sum = torch.zeros((), device=device)
    seen, diverged, step = 0, False, 0
    t0, c0 = time.perf_counter(), time.process_time()
    for step, (x, y) in enumerate(batches(data, batch_size, seed, device), start=1):
        loss = train_step([(x, y)], 1, lr_of(step - 1), step - 1)
        loss_sum += loss * len(y)
        seen += len(y)
        if step % window == 0 or step == steps:
            running_loss = float(loss_sum) / seen
            running_error = 100.0 * float(train_step.reset_errors()) / seen
            if not math.isfinite(running_loss):
                diverged = True
            train_curve.append((step, running_error, running_loss))
            loss_sum.zero_()
            seen = 0
            if diverged or (stop is not None and stop(step, running_error)):
                break
        if eval_every and step % eval_every == 0 and step != steps:
            test = evaluate(model, data, device)
            test_curve.append((step, test["error"], test["loss"]))
        if step >= steps:
            break
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    result: dict[str, Any] = {"steps": step, "diverged": diverged, "train_curve": train_curve,
                              "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3)}
    if diverged or not final_eval:
        result.update(final_train_error=None, final_test_error=None, final_train_loss=None, final_test_loss=None)
        return result
    train = evaluate(model, data, device, split="train", seed=seed)
    test = evaluate(model, data, device)
    test_curve.append((step, test["error"], test["loss"]))
    result.update(test_curve=test_curve, final_train_error=train["error"], final_train_loss=train["loss"],
                  final_test_error=test["error"], final_test_loss=test["loss"])
    return result
