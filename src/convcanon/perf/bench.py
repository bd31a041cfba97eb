"""Throughput benchmark: images/s of the training step and of inference, against the naive way, in the same process.

What is timed:

- *ours*: the engine's :class:`~convcanon.train.step.TrainStep`, the step ``convcanon train`` runs, with the engine it
  resolves for this device (precision, channels-last, compile, cuDNN autotuning, activation checkpointing), its
  optimizer (fused SGD with the weight-decay groups, where the device has the kernel), its loss and its device-side
  non-finite-loss check, at the default recipe's settings (no accumulation, no clipping) and a small LR.
- *baseline* (``--baseline``): the naive reference, deliberately plain and written here on its own. The torchvision
  model of the same architecture when there is one (``models.torchvision_compat.torchvision_name``), else the same
  convcanon model (CIFAR ResNets have no torchvision twin); fp32, NCHW, eager, default cuDNN flags, a plain
  ``torch.optim.SGD(model.parameters(), foreach=False)`` loop, and ``loss.item()`` every step as naive code logs it.
- *data* (``--data SPEC``): ours fed by the real data path (``open_data(SPEC).train_batches``, the run's batches,
  augmented on the device) instead of one synthetic tensor of the same shape: the end-to-end figure.
- *decode* (``--data`` folder data): images/s of one worker's per-sample path (read, decode, crop, flip, to tensor),
  of the DataLoader with ``--workers`` workers, and on CUDA of the GPU-decode path (``perf.decode``), measured before
  the timed windows; the report says whether the path in use keeps up with ours' training step and how many CPU
  workers would.
- *peak*: a large matrix multiply in the compute precision of ours (fp32 on CPU, bf16 with ``--amp bf16``), the
  device's attainable FLOP/s measured on this machine in this run, so the utilization figure holds anywhere.

How the subjects take turns is ``perf.timing``; how peak memory is measured, ``perf.memory``. Model FLOPs are
counted, not quoted: training = 3 x forward (backward computes gradients for inputs and weights) x 2 FLOPs per
multiply-accumulate (``analysis.profile``), recomputation by activation checkpointing not counted (the usual "model
FLOPs" convention).
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import model_info
from ..train.distributed import resolve_device
from .memory import cpu_peak_memory, cuda_peak_memory
from .timing import Say, Series, Subject, alternate, peak_matmul_subject, per_round_ratio

BENCH_LR = 1e-3

@dataclass(frozen=True)
class BenchConfig:
    model: str = "resnet50"
    batch_size: int = 32
    image_size: int | None = None  # default: the model's input size (224 ImageNet, 32 CIFAR), or the data's
    in_chans: int | None = None  # default: the model's, or the data's
    num_classes: int | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    amp: str = "auto"
    channels_last: bool | None = None  # None = the engine's automatic rule
    compile: bool | None = None
    small_map_gemm: bool | None = None  # None = the engine's automatic rule
    activation_checkpointing: bool = False
    deterministic: bool = False
    device: str = "auto"
    threads: int | None = None
    baseline: bool = False
    data: str | None = None  # a --data spec: add the end-to-end subject fed by the real data path
    workers: int = 2  # DataLoader workers for folder data (as convcanon train's --workers)
    data_root: str | None = None  # where a named standard set is downloaded (as convcanon train's --data-root)
    decode: str = "auto"  # folder data: auto | cpu | gpu (JPEG decoding on the GPU; data/folder.py)
    augment: dict[str, Any] = field(default_factory=dict)  # the recipe's augmentation keys (data/recipe.py)
    ra_reps: int = 1
    data_cache: str = "auto"  # folder data held in memory (data/folder_cache.py)
    windows: int = 5
    steps: int | None = None  # steps per window; None = enough for about window_seconds
    window_seconds: float = 2.0
    warmup: int = 2  # steps (or calls) per subject before timing
    inference: bool = True
    memory: bool = True
    peak: bool = True
    peak_size: int | None = None  # side of the peak's square matrices; default 8192 on GPU, 2048 on CPU
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("batch_size", "windows", "warmup"):
            if getattr(self, key) < 1:
                raise ValueError(f"--{key.replace('_', '-')} must be >= 1; got {getattr(self, key)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"--steps must be >= 1; got {self.steps}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"--image-size must be >= 1; got {self.image_size}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"--amp must be auto, off, bf16 or fp16; got {self.amp!r}")
        if not self.window_seconds > 0:
            raise ValueError(f"window_seconds must be > 0; got {self.window_seconds}")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0; got {self.workers}")
        if self.decode not in ("auto", "cpu", "gpu"):
            raise ValueError(f"--decode must be auto, cpu or gpu; got {self.decode!r}")
        if self.decode != "auto" and self.data is None:
            raise ValueError(f"--decode {self.decode} sets how --data folder:PATH is decoded: give --data")


@dataclass
class BenchResult:
    config: dict[str, Any]
    setup: dict[str, Any]  # device, shapes, engine, baseline description, FLOPs per image
    train: dict[str, Series]
    infer: dict[str, Series]
    peak: Series | None
    ratios: dict[str, float]  # e.g. train ours/baseline, medians of per-round ratios
    utilization: dict[str, float]  # achieved model FLOP/s over the matmul peak, per subject
    memory: dict[str, int]  # peak bytes of a training step, per subject
    decode: dict[str, Any] | None = None  # folder data: decode throughput (data/throughput.py) against ours' step

    def as_dict(self) -> dict[str, Any]:
        return {
            "config": self.config, "setup": self.setup,
            "train_images_per_s": {k: s.as_dict() for k, s in self.train.items()},
            "infer_images_per_s": {k: s.as_dict() for k, s in self.infer.items()},
            "peak_flops": self.peak.as_dict() if self.peak else None,
            "achieved_train_flops": {k: s.median * self.setup["train_flops_per_image"] for k, s in self.train.items()},
            "ratios": self.ratios, "utilization": self.utilization, "memory_bytes": self.memory,
            "decode": self.decode,
        }  # fmt: skip


@dataclass(frozen=True)
class Shape:
    in_chans: int
    image_size: int
    num_classes: int


def resolve_shape(cfg: BenchConfig, data_info: Any | None = None) -> Shape:
    info = model_info(cfg.model)
    if data_info is not None:
        for key, have in (("image_size", data_info.image_size), ("in_chans", data_info.in_chans),
                          ("num_classes", data_info.num_classes)):  # fmt: skip
            asked = getattr(cfg, key)
            if asked is not None and asked != have:
                raise ValueError(f"--{key.replace('_', '-')} {asked} disagrees with --data {cfg.data} ({have})")
        return Shape(data_info.in_chans, data_info.image_size, data_info.num_classes)
    in_chans = cfg.in_chans or int(cfg.model_options.get("in_chans", info.input_size[0]))
    return Shape(in_chans, cfg.image_size or info.input_size[1], cfg.num_classes or info.default_num_classes)


def build_model(cfg: BenchConfig, shape: Shape) -> nn.Module:
    from ..train.settings import build_model as build

    return build(cfg.model, cfg.model_options, num_classes=shape.num_classes, in_chans=shape.in_chans,
                 image_size=shape.image_size, for_what=f"--data {cfg.data}" if cfg.data else "--image-size")


def _engine(cfg: BenchConfig, device: torch.device, model: nn.Module, shape: Shape, *,
            activation_checkpointing: bool | None = None, step_shape: Any = None):
    from ..train.engine import resolve_engine

    ckpt = cfg.activation_checkpointing if activation_checkpointing is None else activation_checkpointing
    return resolve_engine(
        device=device, model=model, amp=cfg.amp, channels_last=cfg.channels_last, compile=cfg.compile,
        small_map_gemm=cfg.small_map_gemm, activation_checkpointing=ckpt, deterministic=cfg.deterministic,
        step_shape=step_shape, input_shape=(shape.in_chans, shape.image_size, shape.image_size),
    )  # fmt: skip


def _step_shape(cfg: BenchConfig, shape: Shape) -> Any:
    """What ``train`` gives the engine for its measured bf16-or-fp32 choice on a CPU."""
    from ..train.engine import StepShape

    return StepShape.of(cfg.model, cfg.model_options, batch=cfg.batch_size, in_chans=shape.in_chans,
                        side=shape.image_size, num_classes=shape.num_classes)


def _synthetic(shape: Shape, batch: int, device: torch.device, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, shape.in_chans, shape.image_size, shape.image_size, generator=g)
    y = torch.randint(0, shape.num_classes, (batch,), generator=g)
    return x.to(device), y.to(device)


def make_ours(cfg: BenchConfig, device: torch.device, shape: Shape, say: Say, *, key: str = "ours",
              activation_checkpointing: bool | None = None, data: Any = None) -> Subject:
    """The engine's training step, as ``convcanon train`` runs it (see the module docstring); ``data``: feed it the
    data path."""
    from ..train.config import TrainConfig
    from ..train.step import build_step

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, shape)
    engine = _engine(cfg, device, model, shape, activation_checkpointing=activation_checkpointing)
    # The default recipe's optimizer (SGD, Nesterov momentum, weight decay groups) at a small LR: random labels at the
    # recipe's LR make nets without batch norm (AlexNet) diverge, and the baseline uses the same LR.
    model, step = build_step(model, engine, TrainConfig(model=cfg.model, batch_size=cfg.batch_size, lr=BENCH_LR),
                             say=say)
    x_syn, y_syn = _synthetic(shape, cfg.batch_size, device, cfg.seed)
    x_syn = engine.prepare_input(x_syn)
    batches = _endless_batches(data, cfg.batch_size, cfg.seed, device) if data is not None else None

    def train_step() -> None:
        step([next(batches) if batches is not None else (x_syn, y_syn)], 1, BENCH_LR, 0)

    def infer_step() -> None:
        step.net.eval()
        with torch.no_grad(), engine.compute():
            step.net(x_syn)
        step.net.train()

    def flags() -> None:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = engine.cudnn_benchmark

    labels = {"ours": "ours", "data": f"ours on --data {cfg.data}", "ours_plain": "ours without checkpointing"}
    step.net.train()
    return Subject(key, labels.get(key, key), train_step, infer_step if data is None else None, flags, step.net)


def _endless_batches(data: Any, batch: int, seed: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    for epoch in itertools.count():
        yield from data.train_batches(epoch, batch, seed=seed, device=device)


def baseline_description(cfg: BenchConfig, shape: Shape) -> tuple[str, str | None]:
    """(what the baseline is, in words; the torchvision builder name or None)."""
    from ..models.torchvision_compat import torchvision_name

    twin = torchvision_name(cfg.model)
    if twin and (cfg.model_options or shape.in_chans != 3):
        twin = None  # torchvision has no switches and takes RGB only: the same architecture is ours, run naively
    what = f"torchvision {twin}" if twin else f"convcanon {cfg.model} (no torchvision twin with these settings)"
    return f"{what}, fp32, NCHW, eager, for-loop SGD, loss.item() every step", twin


def make_baseline(cfg: BenchConfig, device: torch.device, shape: Shape) -> Subject:
    _, twin = baseline_description(cfg, shape)
    torch.manual_seed(cfg.seed)
    if twin:
        import torchvision

        extra = {"aux_logits": True, "init_weights": True} if twin == "googlenet" else {}
        model = torchvision.models.get_model(twin, weights=None, num_classes=shape.num_classes, **extra)
    else:
        model = build_model(cfg, shape)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=BENCH_LR, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                foreach=False)
    x, y = _synthetic(shape, cfg.batch_size, device, cfg.seed)
    losses: list[float] = []

    def train_step() -> None:
        optimizer.zero_grad()
        loss = _naive_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())  # what a naive loop logs; one host sync per step
        del losses[:-1]

    def infer_step() -> None:
        model.eval()
        with torch.no_grad():
            model(x)
        model.train()

    def flags() -> None:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False  # torch's default: no autotuning

    model.train()
    return Subject("baseline", "baseline", train_step, infer_step, flags)


def _naive_loss(out: Any, y: Tensor) -> Tensor:
    if isinstance(out, Tensor):
        return F.cross_entropy(out, y)
    main, *aux = (o for o in out if o is not None)  # GoogLeNet: logits and auxiliary heads, 0.3 each (the paper)
    return F.cross_entropy(main, y) + sum(0.3 * F.cross_entropy(a, y) for a in aux)


def _open_data(cfg: BenchConfig):
    if cfg.data is None:
        return None
    from ..data import open_data
    from ..data.recipe import AugmentOptions

    return open_data(cfg.data, image_size=cfg.image_size, workers=cfg.workers, decode=cfg.decode, progress=False,
                     data_root=cfg.data_root, augment=AugmentOptions.from_mapping(cfg.augment), ra_reps=cfg.ra_reps,
                     cache=cfg.data_cache)


def _build_subjects(cfg: BenchConfig, device: torch.device, say: Say, only: str | None = None,
                    memory: dict[str, int] | None = None, data: Any = None) -> list[Subject]:
    """The subjects to time (``data``: the opened --data, else opened here). With ``memory`` on CUDA, each one's
    peak step memory is measured right after it is built, before the next one allocates anything."""
    data = data if data is not None else _open_data(cfg)
    shape = resolve_shape(cfg, data.info if data is not None else None)
    wanted = [only] if only else ["ours"] + (["ours_plain"] if cfg.activation_checkpointing else []) + (
        ["data"] if data is not None else []) + (["baseline"] if cfg.baseline else [])
    subjects = []
    for key in wanted:
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        if key == "ours":
            subjects.append(make_ours(cfg, device, shape, say))
        elif key == "ours_plain":
            subjects.append(make_ours(cfg, device, shape, say, key=key, activation_checkpointing=False))
        elif key == "data":
            subjects.append(make_ours(cfg, device, shape, say, key=key, data=data))
        elif key == "baseline":
            subjects.append(make_baseline(cfg, device, shape))
        if memory is not None and device.type == "cuda" and key != "data":
            say(f"memory: {subjects[-1].label} ...")
            memory[key] = cuda_peak_memory(subjects[-1], device, before)
    return subjects


def _ratios(train: dict[str, Series], infer: dict[str, Series]) -> dict[str, float]:
    """Ours against each reference timed beside it, as medians of per-round ratios."""
    ratios: dict[str, float] = {}
    if "baseline" in train:
        ratios["train_ours_over_baseline"] = per_round_ratio(train["ours"], train["baseline"])
        if "baseline" in infer:
            ratios["infer_ours_over_baseline"] = per_round_ratio(infer["ours"], infer["baseline"])
    if "data" in train:
        ratios["train_data_over_synthetic"] = per_round_ratio(train["data"], train["ours"])
    if "ours_plain" in train:
        ratios["train_checkpointed_over_plain"] = per_round_ratio(train["ours"], train["ours_plain"])
    return ratios


def _utilization(train: dict[str, Series], infer: dict[str, Series], peak: Series | None, train_flops: float,
                 infer_flops: float) -> dict[str, float]:
    """Model FLOP/s over the matmul peak, per subject. Every subject against the peak of ours' precision: for the
    fp32 baseline under --amp bf16 that is the share of what the device can do, not of what fp32 can."""
    utilization: dict[str, float] = {}
    if peak is None:
        return utilization
    for key, s in train.items():
        utilization[f"train_{key}"] = statistics.median(
            r * train_flops / p for r, p in zip(s.rates, peak.rates, strict=True))
    if "ours" in infer:
        utilization["infer_ours"] = infer["ours"].median * infer_flops / peak.median
    return utilization


def run_bench(cfg: BenchConfig, say: Say | None = None) -> BenchResult:
    """Run the benchmark described by ``cfg``; ``say`` gets progress lines."""
    from ..analysis.profile import count_macs
    from ..train.engine import DeviceFacts, amp_dtype

    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    data = _open_data(cfg)
    shape = resolve_shape(cfg, data.info if data is not None else None)
    model = build_model(cfg, shape)
    engine = _engine(cfg, device, model, shape, step_shape=_step_shape(cfg, shape) if cfg.amp == "auto" else None)
    cfg = dataclasses.replace(cfg, amp=engine.amp)  # measured once: every subject runs the choice train would make
    macs = count_macs(model, (shape.in_chans, shape.image_size, shape.image_size))
    del model
    train_flops, infer_flops = 3 * 2 * macs, 2 * macs
    baseline_what = baseline_description(cfg, shape)[0] if cfg.baseline else None

    decode, augment = None, None
    if data is not None and hasattr(data, "decode_choice"):  # streamed folder data
        from .decode import measure_decode

        say("decode: timing one worker and the loader on a sample of the training files ...")
        decode = measure_decode(data, device, seed=cfg.seed)  # before any subject: nothing else runs meanwhile
    elif data is not None and data.augment.recipe.active:
        from .decode import measure_augment

        say("augmentation: timing the in-memory batches through the recipe ...")
        augment = measure_augment(data, device, cfg.batch_size, seed=cfg.seed)
    memory: dict[str, int] = {}
    subjects = _build_subjects(cfg, device, say, memory=memory if cfg.memory else None, data=data)
    peak_subject, peak_work = None, 0.0
    if cfg.peak:
        peak_subject, peak_work = peak_matmul_subject(device, amp_dtype(engine.amp), cfg.peak_size)

    timed = [(s, s.train_step, float(cfg.batch_size)) for s in subjects]
    if peak_subject is not None:
        timed.append((peak_subject, peak_subject.train_step, peak_work))
    train_series, order = alternate(timed, cfg, device, say, "train")
    peak = train_series.pop("peak", None)

    infer_series: dict[str, Series] = {}
    if cfg.inference:
        infer_timed = [(s, s.infer_step, float(cfg.batch_size)) for s in subjects if s.infer_step is not None]
        infer_series, _ = alternate(infer_timed, cfg, device, say, "inference")

    ratios = _ratios(train_series, infer_series)
    utilization = _utilization(train_series, infer_series, peak, train_flops, infer_flops)

    if cfg.memory and device.type != "cuda":
        for s in subjects:
            if s.key == "data":
                continue  # the same step as ours, with another input
            say(f"memory: {s.label} ...")
            memory[s.key] = cpu_peak_memory(build_subject, cfg, s)

    setup = {
        "device": str(device), "device_name": DeviceFacts.of(device).name, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "shape": dataclasses.asdict(shape), "batch_size": cfg.batch_size,
        "engine": engine.as_dict(), "engine_lines": engine.describe(), "baseline": baseline_what,
        "macs_per_image": macs, "train_flops_per_image": train_flops, "infer_flops_per_image": infer_flops,
        "peak": peak_subject.label if peak_subject else None, "window_order": order,
        "compile_failed": {s.key: getattr(s.net, "failed", None) for s in subjects if getattr(s.net, "failed", None)},
        "memory_method": ("torch.cuda.max_memory_allocated in a step minus allocated before building"
                          if device.type == "cuda" else
                          "child process: peak RSS (VmHWM) minus RSS before building, 2 steps"),
    }  # fmt: skip
    decode_figures = None
    if augment is not None:
        training = train_series["ours"].median
        decode_figures = {**augment, "training_images_per_s": training,
                          "delivered_over_training": augment["images_per_s"] / training}
    if decode is not None:
        training = train_series["ours"].median
        decode_figures = {**decode.as_dict(), "delivered": decode.delivered, "training_images_per_s": training,
                          "delivered_over_training": decode.delivered / training,
                          "workers_needed": decode.workers_needed(training)}
    return BenchResult(dataclasses.asdict(cfg), setup, train_series, infer_series, peak, ratios, utilization, memory,
                       decode_figures)


def build_subject(cfg: BenchConfig, key: str) -> Subject:
    """One subject on the CPU, built afresh (what the memory measurement's child process runs)."""
    return _build_subjects(cfg, torch.device("cpu"), lambda msg: None, only=key)[0]


__all__ = [
    "BenchConfig", "BenchResult", "baseline_description", "build_model", "make_baseline", "make_ours", "resolve_shape",
    "run_bench",
]
