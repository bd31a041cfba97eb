"""Throughput benchmark: images/s of the training step and of inference, against the naive way, in the same process.

What is timed (issue 5):

- *ours*: the step ``convcanon train`` runs, with the engine it resolves for this device (``train/engine.py``:
  precision, channels-last, compile, cuDNN autotuning, activation checkpointing) and its optimizer (fused SGD with
  the weight-decay groups, where the device has the kernel), its loss, and its device-side non-finite-loss check
  (``loop.NonFiniteWatch``: no host sync in the step).
- *baseline* (``--baseline``): the naive reference. The torchvision model of the same architecture when there is one
  (``models.torchvision_compat.torchvision_name``), else the same convcanon model (CIFAR ResNets have no torchvision
  twin); fp32, NCHW, eager, default cuDNN flags, a plain ``torch.optim.SGD(model.parameters(), foreach=False)`` loop,
  and ``loss.item()`` every step as naive code logs it.
- *data* (``--data SPEC``): ours fed by the real data path (``open_data(SPEC).train_batches``, the loop's batches,
  augmented on the device) instead of one synthetic tensor of the same shape: the end-to-end figure.
- *decode* (``--data`` folder data): images/s of one worker's per-sample path (read, decode, crop, flip, to tensor),
  of the DataLoader with ``--workers`` workers, and on CUDA of the GPU-decode path (``data/throughput.py``), measured
  before the timed windows; the report says whether the path in use keeps up with ours' training step and how many
  CPU workers would.
- *peak*: a large matrix multiply in the compute precision of ours (fp32 on CPU, bf16 with ``--amp bf16``), the
  device's attainable FLOP/s measured on this machine in this run, so the utilization figure holds anywhere.

Method: every subject warms up (allocator, oneDNN/cuDNN algorithm choice, compilation), then the subjects take turns
in timed windows, the order reversed every round, so that a shared machine's load hits them alike. Each window runs
enough steps to last about ``window_seconds``; a figure is the median over windows with its min..max, and a ratio is
the median of the per-round ratios (adjacent windows share the machine's state). The GPU is synchronized at window
boundaries only. Model FLOPs are counted, not quoted: training = 3 x forward (backward computes gradients for inputs
and weights) x 2 FLOPs per multiply-accumulate (``analysis.profile``), recomputation by activation checkpointing not
counted (the usual "model FLOPs" convention).

Peak memory of a training step, counting everything the subject holds (weights, gradients, optimizer state, input,
activations): on CUDA ``torch.cuda.max_memory_allocated`` during its second step minus what was allocated before it
was built (measured right after building it, before the next subject exists); on CPU, where the allocator keeps no
statistics, a fresh child process builds the subject and runs two steps, and the figure is its peak resident set
(VmHWM) minus its resident set before building, so allocator caching in this process cannot hide or inflate
anything (libraries and code pages are loaded by a tiny step first and not counted).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import create_model, model_info, model_options

Say = Callable[[str], None]
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
    activation_checkpointing: bool = False
    deterministic: bool = False
    device: str = "auto"
    threads: int | None = None
    baseline: bool = False
    data: str | None = None  # a --data spec: add the end-to-end subject fed by the real data path
    workers: int = 2  # DataLoader workers for folder data (as convcanon train's --workers)
    decode: str = "auto"  # folder data: auto | cpu | gpu (JPEG decoding on the GPU; data/folder.py)
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
class Series:
    """One subject's rate per timed window (images/s, or FLOP/s for the matmul peak)."""

    rates: list[float] = field(default_factory=list)
    steps: int = 0  # per window
    warmup_s: float = 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def spread(self) -> float:
        """(max - min) / median: how much the windows disagree (the machine's noise, mostly)."""
        return (max(self.rates) - min(self.rates)) / self.median if self.rates and self.median else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": min(self.rates), "max": max(self.rates), "spread": self.spread,
                "windows": list(self.rates), "steps_per_window": self.steps, "warmup_s": round(self.warmup_s, 3)}


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


# ---------------------------------------------------------------------------------------------------------------------
# Subjects: something to call repeatedly, and what one call is worth


@dataclass
class Subject:
    key: str
    label: str
    train_step: Callable[[], None]
    infer_step: Callable[[], None] | None = None
    flags: Callable[[], None] = lambda: None  # global switches (cuDNN autotuning) this subject runs under
    net: nn.Module | None = None  # what runs (for the record: did compiling fail?)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is visible here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N; got {device!r}")
    return dev


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
    options = dict(cfg.model_options)
    if "in_chans" in model_options(cfg.model):
        options["in_chans"] = shape.in_chans
    elif shape.in_chans != model_info(cfg.model).input_size[0]:
        raise ValueError(f"--model {cfg.model} takes {model_info(cfg.model).input_size[0]}-channel input, not "
                         f"{shape.in_chans}")
    model = create_model(cfg.model, num_classes=shape.num_classes, **options)
    min_size = getattr(model, "min_size", 1)
    if shape.image_size < min_size:
        raise ValueError(f"--model {cfg.model} needs images of at least {min_size}x{min_size}: pass --image-size "
                         f"{min_size} or larger")
    return model


def _engine(cfg: BenchConfig, device: torch.device, model: nn.Module, *,
            activation_checkpointing: bool | None = None):
    from .train.engine import resolve_engine

    ckpt = cfg.activation_checkpointing if activation_checkpointing is None else activation_checkpointing
    return resolve_engine(
        device=device, model=model, amp=cfg.amp, channels_last=cfg.channels_last, compile=cfg.compile,
        activation_checkpointing=ckpt, deterministic=cfg.deterministic,
    )  # fmt: skip


def _synthetic(shape: Shape, batch: int, device: torch.device, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, shape.in_chans, shape.image_size, shape.image_size, generator=g)
    y = torch.randint(0, shape.num_classes, (batch,), generator=g)
    return x.to(device), y.to(device)


def make_ours(cfg: BenchConfig, device: torch.device, shape: Shape, say: Say, *, key: str = "ours",
              activation_checkpointing: bool | None = None, data: Any = None) -> Subject:
    """The training step of ``convcanon train`` (see the module docstring); ``data``: feed it the data path."""
    from .train.config import TrainConfig
    from .train.loop import NonFiniteWatch
    from .train.optim import build_optimizer
    from .train.task import ClassificationTask

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, shape)
    engine = _engine(cfg, device, model, activation_checkpointing=activation_checkpointing)
    model = engine.prepare_model(model)
    # The default recipe's optimizer (SGD, Nesterov momentum, weight decay groups) at a small LR: random labels at the
    # recipe's LR make nets without batch norm (AlexNet) diverge, and the baseline uses the same LR.
    train_cfg = TrainConfig(model=cfg.model, batch_size=cfg.batch_size, lr=BENCH_LR)
    optimizer = build_optimizer(model, train_cfg, device)
    watch = NonFiniteWatch(device)
    net = engine.maybe_compile(model, say)
    task = ClassificationTask(label_smoothing=train_cfg.label_smoothing, aux_weight=train_cfg.aux_weight)
    scaler = torch.amp.GradScaler(device.type, enabled=engine.amp == "fp16")
    x_syn, y_syn = _synthetic(shape, cfg.batch_size, device, cfg.seed)
    x_syn = engine.prepare_input(x_syn)
    batches = _endless_batches(data, cfg.batch_size, cfg.seed, device) if data is not None else None

    def train_step() -> None:
        if batches is not None:
            x, y = next(batches)
            x = engine.prepare_input(x)
        else:
            x, y = x_syn, y_syn
        with engine.autocast():
            loss = task.loss(net(x), y)
        scaler.scale(loss).backward()
        if scaler.is_enabled():
            scaler.step(optimizer)
            scaler.update()
        else:
            watch.see(loss.detach(), 0)  # the loop's non-finite check: device-side, read at log lines only
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer_step() -> None:
        net.eval()
        with torch.no_grad(), engine.autocast():
            net(x_syn)
        net.train()

    def flags() -> None:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = engine.cudnn_benchmark

    labels = {"ours": "ours", "data": f"ours on --data {cfg.data}", "ours_plain": "ours without checkpointing"}
    net.train()
    return Subject(key, labels.get(key, key), train_step, infer_step if data is None else None, flags, net)


def _endless_batches(data: Any, batch: int, seed: int, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    for epoch in itertools.count():
        yield from data.train_batches(epoch, batch, seed=seed, device=device)


def baseline_description(cfg: BenchConfig, shape: Shape) -> tuple[str, str | None]:
    """(what the baseline is, in words; the torchvision builder name or None)."""
    from .models.torchvision_compat import torchvision_name

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


def peak_matmul_subject(device: torch.device, dtype: torch.dtype, n: int | None = None) -> tuple[Subject, float]:
    """A large square matrix product; returns the subject and its FLOPs per call (2 n^3).

    On CPU the same product is also run as a 1x1 convolution (oneDNN, the library the model's convolutions use) and
    the faster of the two kernels is kept: ``torch.mm`` goes to MKL, which may take a slower path on some CPUs (AMD),
    and a peak below what the convolutions reach would make the utilization meaningless.
    """
    n = n or (8192 if device.type == "cuda" else 2048)
    n = max(32, n // 32 * 32)  # the 1x1-convolution view splits n into 32 rows
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    tf32 = dtype == torch.float32 and device.type == "cuda" and torch.backends.cudnn.allow_tf32

    def matmul() -> None:
        # fp32 convolutions on CUDA run on TF32 tensor cores by default (cudnn.allow_tf32); the peak they are compared
        # with must allow it too.
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            torch.mm(a, b, out=out)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old

    label = f"matmul {n}x{n}x{n} {_dtype_name(dtype)}{' (tf32)' if tf32 else ''}"
    call = matmul
    if device.type == "cpu":
        x = a.view(1, n, 32, n // 32).contiguous(memory_format=torch.channels_last)
        w = b.view(n, n, 1, 1).contiguous(memory_format=torch.channels_last)

        def conv_gemm() -> None:
            F.conv2d(x, w)

        if _fastest(conv_gemm, matmul) is conv_gemm:
            call, label = conv_gemm, label + " as a 1x1 convolution (oneDNN, faster than torch.mm here)"
    return Subject("peak", label, call), 2.0 * n**3


def _fastest(*calls: Callable[[], None]) -> Callable[[], None]:
    best, best_s = calls[0], math.inf
    for call in calls:
        call()  # warm-up
        seconds = min(_window(call, 1, torch.device("cpu")) for _ in range(2))
        if seconds < best_s:
            best, best_s = call, seconds
    return best


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


# ---------------------------------------------------------------------------------------------------------------------
# Timing


def _window(fn: Callable[[], None], steps: int, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return time.perf_counter() - t0


def _warm(subject_fn: Callable[[], None], flags: Callable[[], None], cfg: BenchConfig, device: torch.device,
          steps: int) -> tuple[float, float]:
    """Run ``steps`` warm-up calls; return (their total seconds, the last call's seconds)."""
    flags()
    total, last = 0.0, 0.0
    for _ in range(steps):
        last = _window(subject_fn, 1, device)
        total += last
    return total, last


def _steps_per_window(cfg: BenchConfig, step_s: float) -> int:
    if cfg.steps is not None:
        return cfg.steps
    return max(1, round(cfg.window_seconds / max(step_s, 1e-6)))


def alternate(
    subjects: list[tuple[Subject, Callable[[], None], float]],  # (subject, the call to time, work per call)
    cfg: BenchConfig,
    device: torch.device,
    say: Say,
    phase: str,
) -> tuple[dict[str, Series], list[str]]:
    """Warm every subject up, then time them in alternating windows; returns the series and the order actually run
    (for the record: subject keys in the order their windows ran)."""
    series: dict[str, Series] = {}
    for subject, call, _work in subjects:
        total, last = _warm(call, subject.flags, cfg, device, cfg.warmup)
        series[subject.key] = Series(steps=_steps_per_window(cfg, last), warmup_s=total)
        say(f"{phase}: {subject.label} warmed up in {total:.1f} s ({cfg.warmup} calls), "
            f"{series[subject.key].steps} per window")
    order: list[str] = []
    for w in range(cfg.windows):
        # Reverse the order every round: a subject is not always the one that runs right after another's window.
        rounds = subjects if w % 2 == 0 else subjects[::-1]
        for subject, call, work in rounds:
            subject.flags()
            s = series[subject.key]
            seconds = _window(call, s.steps, device)
            s.rates.append(work * s.steps / seconds)
            order.append(subject.key)
        say(f"{phase}: window {w + 1}/{cfg.windows}: " + ", ".join(
            f"{sub.key} {series[sub.key].rates[-1]:.4g}" for sub, _, _ in subjects))
    return series, order


def per_round_ratio(a: Series, b: Series) -> float:
    """Median over rounds of a's rate / b's rate in the same round."""
    return statistics.median(x / y for x, y in zip(a.rates, b.rates, strict=True))


# ---------------------------------------------------------------------------------------------------------------------
# Memory


def _proc_status_bytes(field_name: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux), in bytes; None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_now() -> int:
    return _proc_status_bytes("VmRSS") or 0


def _rss_peak() -> int:
    """The resident set's high-water mark. VmHWM belongs to this process's address space; ``ru_maxrss`` would not
    do on Linux: it keeps the parent's high-water mark across the fork and exec that start the child."""
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux and BSD kilobytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _reset_rss_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0, documented in proc(5))
    except OSError:
        pass


def _touch_kernels() -> None:
    """Import the training stack and run one tiny step, so that loading libraries and code pages (hundreds of MiB of
    oneDNN/MKL) is not counted as the benchmarked step's memory."""
    from .train import optim, task  # noqa: F401
    from .train.engine import optimizer_kernel

    conv, norm, fc = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8, 2)
    net = nn.Sequential(conv, norm, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, **{optimizer_kernel("cpu"): True})
    for fmt in (torch.contiguous_format, torch.channels_last):
        net.to(memory_format=fmt)
        x = torch.randn(2, 3, 8, 8).contiguous(memory_format=fmt)
        F.cross_entropy(net(x), torch.tensor([0, 1])).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _child_peak_memory(cfg: BenchConfig, key: str, queue: Any) -> None:
    """In a fresh process: peak RSS of building ``key`` and running two training steps, minus the RSS before."""
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        _touch_kernels()
        _reset_rss_peak()
        before = _rss_now()
        device = torch.device("cpu")
        subject = _build_subjects(cfg, device, lambda msg: None, only=key)[0]
        for _ in range(2):
            subject.train_step()
        queue.put((key, max(0, _rss_peak() - before), None))
    except Exception as err:  # noqa: BLE001 - reported by the parent
        queue.put((key, 0, f"{type(err).__name__}: {err}"))


def cuda_peak_memory(subject: Subject, device: torch.device, allocated_before: int) -> int:
    """Peak bytes allocated during a training step (after one that creates the optimizer state), above what was
    allocated before ``subject`` was built: its weights, gradients, optimizer state, input and activations."""
    subject.flags()
    subject.train_step()
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    subject.train_step()
    _sync(device)
    return int(torch.cuda.max_memory_allocated(device)) - allocated_before


_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def cpu_peak_memory(cfg: BenchConfig, subject: Subject) -> int:
    """The same figure on CPU, from a child process (see the module docstring)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_peak_memory, args=(cfg, subject.key, queue))
    # glibc's malloc raises its mmap threshold as large blocks are freed and then keeps freed memory in its heap,
    # so the resident set would depend on the order of allocations more than on what is alive. A fixed threshold
    # serves every block of 128 KiB or more by mmap and returns it on free: peak RSS follows the live tensors.
    saved = {k: os.environ.get(k) for k in _MALLOC_ENV}
    os.environ.update(_MALLOC_ENV)
    try:
        proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        key, value, error = queue.get(timeout=3600)
    finally:
        proc.join()
    if error:
        raise RuntimeError(f"measuring the memory of {subject.label} failed in the child process: {error}")
    return int(value)


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark


def _open_data(cfg: BenchConfig):
    if cfg.data is None:
        return None
    from .data import open_data

    return open_data(cfg.data, image_size=cfg.image_size, workers=cfg.workers, decode=cfg.decode, progress=False)


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


def run_bench(cfg: BenchConfig, say: Say | None = None) -> BenchResult:
    """Run the benchmark described by ``cfg``; ``say`` gets progress lines."""
    from .analysis.profile import count_macs
    from .train.engine import DeviceFacts

    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    data = _open_data(cfg)
    shape = resolve_shape(cfg, data.info if data is not None else None)
    model = build_model(cfg, shape)
    engine = _engine(cfg, device, model)
    macs = count_macs(model, (shape.in_chans, shape.image_size, shape.image_size))
    del model
    train_flops, infer_flops = 3 * 2 * macs, 2 * macs
    baseline_what = baseline_description(cfg, shape)[0] if cfg.baseline else None

    decode = None
    if data is not None and data.info.name == "folder":
        from .data.throughput import measure_decode

        say("decode: timing one worker and the loader on a sample of the training files ...")
        decode = measure_decode(data, device, seed=cfg.seed)  # before any subject: nothing else runs meanwhile
    memory: dict[str, int] = {}
    subjects = _build_subjects(cfg, device, say, memory=memory if cfg.memory else None, data=data)
    peak_subject, peak_work = None, 0.0
    if cfg.peak:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(engine.amp, torch.float32)
        peak_subject, peak_work = peak_matmul_subject(device, dtype, cfg.peak_size)

    timed = [(s, s.train_step, float(cfg.batch_size)) for s in subjects]
    if peak_subject is not None:
        timed.append((peak_subject, peak_subject.train_step, peak_work))
    train_series, order = alternate(timed, cfg, device, say, "train")
    peak = train_series.pop("peak", None)

    infer_series: dict[str, Series] = {}
    if cfg.inference:
        infer_timed = [(s, s.infer_step, float(cfg.batch_size)) for s in subjects if s.infer_step is not None]
        infer_series, _ = alternate(infer_timed, cfg, device, say, "inference")

    ratios: dict[str, float] = {}
    if "baseline" in train_series:
        ratios["train_ours_over_baseline"] = per_round_ratio(train_series["ours"], train_series["baseline"])
        if "baseline" in infer_series:
            ratios["infer_ours_over_baseline"] = per_round_ratio(infer_series["ours"], infer_series["baseline"])
    if "data" in train_series:
        ratios["train_data_over_synthetic"] = per_round_ratio(train_series["data"], train_series["ours"])
    if "ours_plain" in train_series:
        ratios["train_checkpointed_over_plain"] = per_round_ratio(train_series["ours"], train_series["ours_plain"])

    utilization: dict[str, float] = {}
    if peak is not None:
        # Every subject against the peak of ours' precision: for the fp32 baseline under --amp bf16 that is the share
        # of what the device can do, not of what fp32 can.
        for key, s in train_series.items():
            utilization[f"train_{key}"] = statistics.median(
                r * train_flops / p for r, p in zip(s.rates, peak.rates, strict=True))
        if "ours" in infer_series:
            utilization["infer_ours"] = infer_series["ours"].median * infer_flops / peak.median

    if cfg.memory and device.type != "cuda":
        for s in subjects:
            if s.key == "data":
                continue  # the same step as ours, with another input
            say(f"memory: {s.label} ...")
            memory[s.key] = cpu_peak_memory(cfg, s)

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
    if decode is not None:
        training = train_series["ours"].median
        decode_figures = {**decode.as_dict(), "delivered": decode.delivered, "training_images_per_s": training,
                          "delivered_over_training": decode.delivered / training,
                          "workers_needed": decode.workers_needed(training)}
    return BenchResult(dataclasses.asdict(cfg), setup, train_series, infer_series, peak, ratios, utilization, memory,
                       decode_figures)


# ---------------------------------------------------------------------------------------------------------------------
# Report


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def format_report(result: BenchResult) -> str:
    cfg, setup = result.config, result.setup
    shape = setup["shape"]
    lines = [
        f"convcanon bench: {cfg['model']}, batch {cfg['batch_size']}, {shape['in_chans']}x{shape['image_size']}x"
        f"{shape['image_size']}, {shape['num_classes']} classes; {setup['device_name']} ({setup['device']}), torch "
        f"{setup['torch']}",
        *setup["engine_lines"],
    ]
    for key, why in setup.get("compile_failed", {}).items():
        lines.append(f"note: torch.compile failed for {key} ({why}); it ran in eager mode")
    if setup["baseline"]:
        lines.append(f"baseline: {setup['baseline']}")
    if cfg["data"]:
        lines.append(f"data: ours fed by --data {cfg['data']} (the training loop's batches) vs one synthetic batch")
    lines.append(f"{cfg['windows']} timed windows per subject, alternating, after {cfg['warmup']} warm-up calls; "
                 "median [min..max] images/s")
    lines.append(f"model FLOPs per image: {_si(setup['train_flops_per_image'], 'FLOP')} training (3 x forward), "
                 f"{_si(setup['infer_flops_per_image'], 'FLOP')} inference")

    def table(title: str, series: dict[str, Series], flops: float) -> None:
        if not series:
            return
        lines.append(f"{title}:")
        for key, s in series.items():
            lines.append(f"  {key:<11} {s.median:10.1f} [{min(s.rates):.1f}..{max(s.rates):.1f}] images/s  "
                         f"spread {100 * s.spread:3.0f}%  {_si(s.median * flops, 'FLOP/s')}")

    table("training step", result.train, setup["train_flops_per_image"])
    table("inference", result.infer, setup["infer_flops_per_image"])
    r = result.ratios
    if "train_ours_over_baseline" in r:
        infer = f", inference {r['infer_ours_over_baseline']:.2f}x" if "infer_ours_over_baseline" in r else ""
        lines.append(f"ours / baseline: training {r['train_ours_over_baseline']:.2f}x{infer} (median of per-round "
                     "ratios)")
    if "train_data_over_synthetic" in r:
        lines.append(f"end-to-end / synthetic: {100 * r['train_data_over_synthetic']:.1f}% (target >= 90%)")
    if "train_checkpointed_over_plain" in r:
        lines.append(f"activation checkpointing: {r['train_checkpointed_over_plain']:.2f}x the speed without it")
    if result.decode:
        lines += _decode_lines(result.decode)
    if result.peak is not None:
        p = result.peak
        lines.append(f"peak ({setup['peak']}): {_si(p.median, 'FLOP/s')} [{_si(min(p.rates), '')}.."
                     f"{_si(max(p.rates), '')}]")
        lines.append("utilization (model FLOP/s / peak, per round): " + ", ".join(
            f"{k} {100 * v:.1f}%" for k, v in result.utilization.items()))
    if result.memory:
        lines.append(f"peak memory of a training step ({setup['memory_method']}): " + ", ".join(
            f"{k} {v / 2**20:.0f} MiB" for k, v in result.memory.items()))
        if "ours_plain" in result.memory and result.memory["ours_plain"]:
            saving = 1 - result.memory["ours"] / result.memory["ours_plain"]
            lines.append(f"activation checkpointing saves {100 * saving:.0f}% of the step's peak memory")
    return "\n".join(lines)


def _decode_lines(d: dict[str, Any]) -> list[str]:
    lines = [
        "decode (folder data; per sample: read + PIL decode + RandomResizedCrop + flip + to tensor):",
        f"  per worker  {d['per_worker']:10.1f} images/s  (one process, {d['sample']} files)",
        f"  loader      {d['loader']:10.1f} images/s  ({d['workers']} workers, {d['cpus']} CPUs usable, "
        f"{d['loader_images']} files)",
    ]
    if d["gpu"] is not None:
        lines.append(f"  GPU decode  {d['gpu']:10.1f} images/s  (loader of file bytes + nvJPEG + crop on the GPU)")
    elif d["gpu_error"]:
        lines.append(f"  GPU decode  unavailable: {d['gpu_error']}")
    lines.append(f"  in use      {d['choice_line']}")
    ratio, need = d["delivered_over_training"], d["workers_needed"]
    verdict = "keeps up" if ratio >= 1 else "is the bottleneck"
    lines.append(f"  the {d['choice']} decode path {verdict}: {d['delivered']:.1f} / {d['training_images_per_s']:.1f} "
                 f"images/s of ours' training step = {ratio:.2f}x; PIL decoding would need {need} worker(s)"
                 f"{' (more than the CPUs here)' if need > d['cpus'] else ''}")
    return lines


__all__ = [
    "BenchConfig", "BenchResult", "Series", "Subject", "run_bench", "format_report", "resolve_device", "resolve_shape",
    "build_model", "make_ours", "make_baseline", "baseline_description", "peak_matmul_subject", "per_round_ratio",
]  # fmt: skip
