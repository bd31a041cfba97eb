"""``--measure``: time real training steps of a model on this machine, for the estimator to extrapolate from.

A few warm-up steps (allocator, cuDNN autotuning, oneDNN primitive caches), then steps on synthetic data until the time
budget is spent, each timed on its own (the GPU synchronized before and after). The mean step time is the measurement:
a run's wall-clock is a sum of steps, so on a machine shared with other work the slow steps count as they will in the
run; the median and the extremes are kept to show the spread. What it leaves out: the input pipeline (the data are
synthetic tensors already on the device) and evaluation.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..registry import create_model, model_info
from ..registry import model_options as accepted_options
from .catalog import Device
from .workload import measure_workload


@dataclass(frozen=True)
class Measurement:
    device: str  # what was timed, in words
    device_type: str  # "cpu" | "cuda"
    memory_gib: float
    model: str
    input_size: tuple[int, int, int]
    batch_size: int
    precision: str
    steps: int  # timed steps
    step_s: float  # mean
    step_median_s: float
    step_min_s: float
    step_max_s: float
    images_per_s: float
    achieved_tflops: float  # training FLOPs per image (3x forward) x images/s

    def as_device(self) -> Device:
        """This machine as a one-device catalog entry (its figures are measured, not datasheet peaks)."""
        return Device(
            name="local", description=self.device, year=0, arch="cpu" if self.device_type == "cpu" else "local",
            peak_tflops={}, memory_gib=self.memory_gib, memory_gbs=0.0, intra_node_gbs=0.0, inter_node_gbs=0.0,
            devices_per_node=1, winograd=False,
        )  # fmt: skip


def _resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--measure on cuda: no CUDA device is visible here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--measure times a cpu or cuda device, got {device!r}")
    return dev


def _describe(dev: torch.device) -> tuple[str, float]:
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        return f"cuda: {props.name}", props.total_memory / 1024**3
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3 if hasattr(os, "sysconf") else 0.0
    return f"cpu: {cpu} ({torch.get_num_threads()} threads)", memory


def _check_precision(precision: str, dev: torch.device) -> None:
    allowed = ("fp32", "bf16") if dev.type == "cpu" else ("fp32", "tf32", "bf16", "fp16")
    if precision not in allowed:
        raise ValueError(f"--precision {precision} cannot be measured on {dev.type}; choices there: "
                         f"{', '.join(allowed)}")
    if dev.type == "cuda":
        major, _ = torch.cuda.get_device_capability(dev)
        if precision in ("tf32", "bf16") and major < 8:
            raise ValueError(f"--precision {precision} needs an Ampere or newer GPU (compute capability 8.0)")


@contextlib.contextmanager
def _tf32(enabled: bool):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def measure_local(
    model: str,
    *,
    batch_size: int = 64,
    image_size: int | None = None,
    num_classes: int | None = None,
    precision: str = "fp32",
    seconds: float = 3.0,
    warmup_steps: int = 2,
    min_steps: int = 3,
    device: str | None = None,
    model_options: dict[str, object] | None = None,
) -> Measurement:
    """Train ``model`` on synthetic data for about ``seconds`` (after ``warmup_steps``) and time its steps."""
    for flag, value in (("--batch-size", batch_size), ("--image-size", image_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{flag} must be a positive integer, got {value!r}")
    if not seconds > 0:
        raise ValueError(f"the measurement needs a positive time budget, got {seconds!r} s")
    dev = _resolve_device(device)
    _check_precision(precision, dev)
    options = {k: v for k, v in (model_options or {}).items() if v is not None}
    if "in_chans" in options and "in_chans" not in accepted_options(model):
        options.pop("in_chans")
    info = model_info(model)
    net = create_model(model, num_classes=num_classes, **options).to(dev).train()
    in_chans = int(options.get("in_chans", info.input_size[0]))
    side_h, side_w = (image_size, image_size) if image_size else info.input_size[1:]
    classes = num_classes or info.default_num_classes
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, in_chans, side_h, side_w, generator=gen).to(dev)
    y = torch.randint(0, classes, (batch_size,), generator=gen).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)  # tiny LR: timing, not learning
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(dev.type, dtype=dtype)) if dtype else contextlib.nullcontext
    scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def step() -> None:
        with autocast():
            loss = F.cross_entropy(net.forward_with_aux(x).logits.float(), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    times: list[float] = []
    with _tf32(precision == "tf32") if dev.type == "cuda" else contextlib.nullcontext():
        for _ in range(warmup_steps):
            step()
        sync()
        start = time.perf_counter()
        while len(times) < min_steps or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
    step_s = statistics.fmean(times)
    flops = measure_workload(model, num_classes=num_classes, image_size=image_size, **options).flops_per_image
    name, memory = _describe(dev)
    return Measurement(
        device=name, device_type=dev.type, memory_gib=memory, model=model, input_size=(in_chans, side_h, side_w),
        batch_size=batch_size, precision=precision, steps=len(times), step_s=step_s,
        step_median_s=statistics.median(times), step_min_s=min(times),
        step_max_s=max(times), images_per_s=batch_size / step_s, achieved_tflops=flops * batch_size / step_s / 1e12,
    )  # fmt: skip
