"""``--measure``: time the training step ``convcanon train`` runs, on this machine, for the estimator to extrapolate.

The step is the engine's own (``train.step.build_step``, with the engine ``train.engine.engine_for`` resolves for this
device from a ``TrainConfig``: precision, channels-last and compilation ``auto`` as train resolves them, the default
recipe's optimizer), so the figure is what a run's steps cost. A few warm-up steps (compilation, allocator, oneDNN
primitive caches, cuDNN autotuning), then steps on synthetic data until the time budget is spent, each timed on its
own (the GPU synchronized after each). The mean step time is the measurement: a run's wall-clock is a sum of steps, so
on a machine shared with other work the slow steps count as they will in the run; the median and the extremes show
the spread. Then the evaluation forward pass at the run's evaluation batch (``train.evaluate.eval_batch_size``), a
checkpoint write (the model's and optimizer's state, written atomically into a temporary folder as a run writes its
checkpoints), the weight average's update when the run keeps one (``--model-ema``: ``ModelEma.update`` on the stepped
model, whose evaluation costs what the model's does), and the warm-up's time beyond its steps' share, which a run pays
once (``startup_s``). What it leaves
out: the input pipeline (the data are synthetic tensors already on the device) and a run's set-up (opening the data,
building the model, writing the run's files).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import atomic_write
from ..registry import model_info
from ..train.config import TrainConfig
from ..train.distributed import resolve_device
from ..train.ema import ModelEma
from ..train.engine import DeviceFacts, engine_for
from ..train.evaluate import eval_batch_size
from ..train.settings import build_model
from ..train.step import build_step
from .catalog import Device
from .workload import measure_workload

MEASURE_LR = 1e-3  # timing, not learning: random labels at the recipe's LR make nets without batch norm diverge
EVAL_CALLS = 3  # timed evaluation batches, after one warm-up call
CHECKPOINT_WRITES = 3  # timed checkpoint writes; the median is kept
EMA_UPDATES = 5  # timed updates of the weight average, after the first (a copy); the median is kept


@dataclass(frozen=True)
class Measurement:
    device: str  # what was timed, in words
    device_type: str  # "cpu" | "cuda"
    memory_gib: float
    model: str
    input_size: tuple[int, int, int]
    batch_size: int  # per device
    precision: str  # the engine's precision, in the estimator's words: fp32 | tf32 | bf16 | fp16
    steps: int  # timed steps
    step_s: float  # mean
    step_median_s: float
    step_min_s: float
    step_max_s: float
    images_per_s: float
    achieved_tflops: float  # training FLOPs per image (3x forward) x images/s
    eval_image_s: float = 0.0  # seconds per evaluated image, at the run's evaluation batch
    startup_s: float = 0.0  # the warm-up's time beyond its steps' share: compilation, first allocations
    checkpoint_s: float = 0.0  # one checkpoint write (model and optimizer state, atomic, synced to disk)
    engine: tuple[str, ...] = ()  # the engine's choices, as ``convcanon train`` prints them
    ema_update_s: float | None = None  # one update of the weight average (--model-ema); None: not timed
    halves_s: tuple[float, float] = (0.0, 0.0)  # mean step of the first and of the second half of the timed steps

    def as_device(self) -> Device:
        """This machine as a one-device catalog entry (its figures are measured, not datasheet peaks)."""
        return Device(
            name="local", description=self.device, year=0, arch="cpu" if self.device_type == "cpu" else "local",
            peak_tflops={}, memory_gib=self.memory_gib, memory_gbs=0.0, intra_node_gbs=0.0, inter_node_gbs=0.0,
            devices_per_node=1, winograd=False,
        )  # fmt: skip


def engine_amp(amp: str, device: torch.device) -> str:
    """``--amp`` as the estimator takes it (auto | off | fp32 | tf32 | bf16 | fp16) in the engine's words (auto | off
    | bf16 | fp16): fp32 is off, and tf32 is off with TF32 convolutions and matmuls, which needs an Ampere GPU."""
    if amp not in ("auto", "off", "fp32", "tf32", "bf16", "fp16"):
        raise ValueError(f"--amp must be auto, off, fp32, tf32, bf16 or fp16; got {amp!r}")
    if amp == "tf32" and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0)):
        raise ValueError(f"--amp tf32 needs an Ampere or newer GPU (compute capability 8.0); {device} is not one")
    return "off" if amp in ("fp32", "tf32") else amp


def _describe(dev: torch.device) -> tuple[str, float]:
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        return f"cuda: {props.name}", props.total_memory / 1024**3
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3 if hasattr(os, "sysconf") else 0.0
    return f"cpu: {DeviceFacts.of(dev).name}", memory


@contextlib.contextmanager
def _tf32(enabled: bool):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _timed(fn: Callable[[], None], sync: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def _checkpoint_write_s(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: ModelEma | None) -> float:
    """The median time to write the model's and optimizer's state (and the weight average's) as a run's checkpoint
    is written (``io.atomic_write`` of ``torch.save``), into a temporary folder of this machine."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             **({"ema": ema.state_dict()} if ema is not None else {})}
    with tempfile.TemporaryDirectory(prefix="convcanon-measure-") as folder:
        path = Path(folder) / "step.pt"
        return statistics.median(_timed(lambda: atomic_write(path, lambda f: torch.save(state, f)), lambda: None)
                                 for _ in range(CHECKPOINT_WRITES))


def measure_local(
    model: str,
    *,
    batch_size: int = TrainConfig.batch_size,
    image_size: int | None = None,
    num_classes: int | None = None,
    amp: str = "auto",
    channels_last: bool | None = None,
    compile: bool | None = None,
    optimizer: str = TrainConfig.optimizer,
    seconds: float = 3.0,
    warmup_steps: int = 2,
    min_steps: int = 3,
    device: str | None = None,
    model_options: dict[str, object] | None = None,
    model_ema: bool = False,
    say: Callable[[str], None] = lambda msg: None,
) -> Measurement:
    """Time ``model``'s training step as ``convcanon train`` runs it (see the module docstring) for about
    ``seconds`` after ``warmup_steps``, at per-device ``batch_size`` with ``--amp amp``; ``channels_last`` and
    ``compile`` None are train's auto; ``model_options`` may carry ``in_chans``; ``model_ema`` times the weight
    average's update too (and writes it with the checkpoint). ``say`` gets the engine's lines."""
    for flag, value in (("--batch-size", batch_size), ("--image-size", image_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{flag} must be a positive integer, got {value!r}")
    if not seconds > 0:
        raise ValueError(f"the measurement needs a positive time budget, got {seconds!r} s")
    dev = resolve_device(device or "auto")
    options = {k: v for k, v in (model_options or {}).items() if v is not None}
    info = model_info(model)
    in_chans = int(options.pop("in_chans", info.input_size[0]))
    side = image_size or info.input_size[1]
    classes = num_classes or info.default_num_classes
    cfg = TrainConfig(model=model, model_options=options, batch_size=batch_size, lr=MEASURE_LR, optimizer=optimizer,
                      amp=engine_amp(amp, dev), channels_last=channels_last, compile=compile)  # fmt: skip
    torch.manual_seed(0)
    net = build_model(model, options, num_classes=classes, in_chans=in_chans, image_size=side, for_what="--image-size")
    engine = engine_for(cfg, dev, net, data=(in_chans, side))
    precision = "tf32" if amp == "tf32" else {"off": "fp32"}.get(engine.amp, engine.amp)
    for line in engine.describe():
        say(line)
    placed, step = build_step(net, engine, cfg, say=say)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, in_chans, side, side, generator=gen).to(dev)
    y = torch.randint(0, classes, (batch_size,), generator=gen).to(dev)
    x_eval = torch.randn(eval_batch_size(batch_size), in_chans, side, side, generator=gen).to(dev)

    def train_step() -> None:
        step([(x, y)], 1, MEASURE_LR, 0)  # as the run feeds it: NCHW batches, converted by the engine

    def eval_step() -> None:
        with torch.no_grad(), engine.compute():
            step.net(engine.prepare_input(x_eval))

    with _tf32(precision == "tf32") if dev.type == "cuda" else contextlib.nullcontext():
        times, warmup, evals = _time_run(dev, train_step, eval_step, step.net, seconds, warmup_steps, min_steps)
    step_s, eval_s = statistics.fmean(times), statistics.fmean(evals[1:])
    # What a run pays once: the warm-up steps and the first evaluation call beyond their steady-state time.
    startup_s = sum(max(0.0, t - statistics.median(times)) for t in warmup) + max(0.0, evals[0] - eval_s)
    flops = measure_workload(model, num_classes=classes, image_size=side, in_chans=in_chans,
                             **options).flops_per_image
    name, memory = _describe(dev)
    ema = ModelEma(placed, decay=0.999) if model_ema else None
    return Measurement(
        device=name, device_type=dev.type, memory_gib=memory, model=model, input_size=(in_chans, side, side),
        batch_size=batch_size, precision=precision, steps=len(times), step_s=step_s,
        step_median_s=statistics.median(times), step_min_s=min(times), step_max_s=max(times),
        images_per_s=batch_size / step_s, achieved_tflops=flops * batch_size / step_s / 1e12,
        eval_image_s=eval_s / len(x_eval), startup_s=startup_s,
        checkpoint_s=_checkpoint_write_s(placed, step.optimizer, ema), engine=tuple(engine.describe()),
        ema_update_s=_ema_update_s(ema, placed, dev) if ema is not None else None, halves_s=_halves(times),
    )  # fmt: skip


def _halves(times: list[float]) -> tuple[float, float]:
    """The mean of the first and of the second half of ``times``: apart, the machine's speed changed while timing."""
    half = len(times) // 2
    return statistics.fmean(times[:half] or times), statistics.fmean(times[half:])


def _ema_update_s(ema: ModelEma, model: torch.nn.Module, dev: torch.device) -> float:
    """The median time of one averaging update of ``ema`` from ``model`` (the first update, a copy, is not timed)."""
    ema.update(model, 1)
    return statistics.median(_timed(lambda: ema.update(model, 2), lambda: _sync(dev)) for _ in range(EMA_UPDATES))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time_run(dev: torch.device, train_step: Callable[[], None], eval_step: Callable[[], None], net: torch.nn.Module,
              seconds: float, warmup_steps: int, min_steps: int) -> tuple[list[float], list[float], list[float]]:
    """(timed steps, warm-up steps, evaluation calls: the first one warms up), each timed on its own."""
    def sync() -> None:
        _sync(dev)

    warmup = [_timed(train_step, sync) for _ in range(warmup_steps)]
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - start < seconds:
        times.append(_timed(train_step, sync))
    net.eval()
    evals = [_timed(eval_step, sync) for _ in range(1 + EVAL_CALLS)]
    net.train()
    return times, warmup, evals
