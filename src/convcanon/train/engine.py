"""The engine: how a model runs on this device (precision, memory format, compilation, autotuning, checkpointing).

None of these settings changes what is computed, only how fast and in how much memory (bf16 changes rounding).
``resolve_engine`` turns the config's ``auto`` values into one choice each, with the reason, once at start; every
user of the training step (``train.step``: the run, ``convcanon bench``, ``estimate --measure``, the experiments)
prints the choices and applies them through the same ``Engine``. Every choice is overridable: ``--amp``,
``--channels-last/--no-channels-last``, ``--compile/--no-compile``, ``--small-map-gemm/--no-small-map-gemm``,
``--activation-checkpointing``, ``--deterministic`` (turns cuDNN autotuning off). The measurements behind the
automatic rules are in BENCHMARKS.md.

- amp: bf16 autocast where the hardware computes in bf16 natively: GPUs of compute capability >= 8.0 (Ampere and
  newer) and CPUs with AVX512-BF16 or AMX; fp32 elsewhere. On such a CPU the choice is measured when the caller gives
  the step's input shape (``StepShape``) and the step is small (at most ``PROBE_MAX_FLOP``): oneDNN's bf16 kernels
  pay on large convolutions (ResNet-50 at 224 px: 2.3-2.9x fp32) and lose on small ones (ResNet-18 at 32 px:
  0.6-0.8x), and no static rule separated the two on the measured grid (BENCHMARKS.md), so ``measure_amp`` times one
  forward-backward pass of each on a copy of the model and keeps bf16 unless fp32 is at least ``FP32_MARGIN``
  faster (every process agrees: the times are summed over them). A run writes the choice into its config.yaml, so a
  resume computes as the run began, and the two times are kept on the machine for the next run of the same step
  (``train.amp_probe``). Weights, optimizer state and the loss stay fp32; only the
  convolutions and matrix products round to bf16's 8-bit mantissa, which is why a run's numbers depend on the
  hardware it runs on, as they do across GPU generations: ``--amp off`` pins fp32 where they must not (exactness
  tests, comparisons across machines, the evidence report's runs). fp16 (with loss scaling) only when asked for, on
  CUDA.
- channels-last (NHWC): on, on every device, except for models with local response normalization (the paper
  AlexNet). cuDNN's tensor-core convolutions are NHWC kernels, and oneDNN's CPU convolutions avoid a reorder per call
  in NHWC, while ``F.local_response_norm`` has no NHWC path (it averages through a 3-D pool of a reshaped copy).
- compile: on CUDA with Triton (compute capability >= 7.0): fusing batch norm, activation and the residual addition
  removes most of the memory traffic between convolutions. Off on CPU, where it does not pay: with bf16, oneDNN's
  convolutions are the time and inductor calls the same ones; in fp32 the gain is small after minutes of compiling,
  a poor trade for the short runs CPUs are used for (``--compile`` for long ones). Off by default with activation
  checkpointing (the checkpointed recomputation stays eager). When compiling fails, the run says why and continues
  eagerly (``CompiledWithFallback``).
- small-map GEMM: on CPU, a convolution whose every output position sees the whole input map (the last stages of an
  ImageNet network at small inputs: ResNet-18's 2x2 and 1x1 maps at 32 px) runs as one matrix product
  (``train.small_maps``): oneDNN's backward is 3-7x its forward on such maps, the matrix product 2.5-5x faster. Off
  under ``--compile`` (inductor lowers the convolutions itself), with activation checkpointing (the recomputation in
  backward runs outside the forward's context), on GPUs (cuDNN; not measured there), and for a model with no such
  convolution at the run's input size (counted on the meta device), which would pay the mode's Python call per
  operation for nothing. Every other convolution is untouched.
- cudnn.benchmark (autotuning): on CUDA unless ``deterministic``.
- optimizer: fused SGD/AdamW (the whole update of a parameter group in one kernel) where torch has the kernel for the
  device (CUDA; CPU from torch 2.4), else multi-tensor ("foreach"); ``optim.build_optimizer`` applies it.
- no host-device sync in the step: the non-finite-loss check stays on the device until a log line
  (``step.NonFiniteWatch``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .small_maps import SmallMapConvolutions, resolve_small_map_gemm

# Triton, which inductor generates GPU kernels with, needs compute capability 7.0 (Volta) or newer.
COMPILE_MIN_CAPABILITY = (7, 0)
BF16_MIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class DeviceFacts:
    """What the rules look at, separate from torch so that tests can describe a GPU this machine does not have."""

    type: str  # "cpu" | "cuda"
    name: str
    capability: tuple[int, int] | None = None  # CUDA compute capability
    cpu_bf16: bool = False  # the CPU has native bf16 arithmetic (AVX512-BF16 or AMX)

    @classmethod
    def of(cls, device: torch.device | str) -> DeviceFacts:
        device = torch.device(device)
        if device.type == "cuda":
            return cls("cuda", torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device)))
        return cls(device.type, cpu_name(), cpu_bf16=bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"}))

    @property
    def bf16(self) -> bool:
        """Native bf16 arithmetic: a GPU of capability >= 8.0, or a CPU with AVX512-BF16 or AMX."""
        if self.type == "cuda":
            return self.capability is not None and self.capability >= BF16_MIN_CAPABILITY
        return self.type == "cpu" and self.cpu_bf16


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def cpu_name() -> str:
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{name} ({threads} thread{'s' if threads != 1 else ''})"


@dataclass(frozen=True)
class Engine:
    device: torch.device
    amp: str  # off | bf16 | fp16
    channels_last: bool
    compile: bool
    cudnn_benchmark: bool
    activation_checkpointing: bool
    reasons: dict[str, str] = field(default_factory=dict, compare=False)
    amp_measured: bool = field(default=False, compare=False)  # amp auto, decided for this step (``measure_amp``)
    small_map_gemm: bool = False  # covering convolutions as one matrix product (train.small_maps)

    # ---- what a run prints and saves

    def describe(self) -> list[str]:
        """One line per choice, with the reason and the flag that overrides it."""
        on = {True: "on", False: "off"}
        gpu = self.device.type == "cuda"
        rows = [
            ("amp", "amp", self.amp, "--amp"),
            ("channels-last", "channels_last", on[self.channels_last], "--[no-]channels-last"),
            ("compile", "compile", on[self.compile], "--[no-]compile"),
            ("small-map GEMM", "small_map_gemm", on[self.small_map_gemm], "--[no-]small-map-gemm"),
            ("cudnn.benchmark", "cudnn_benchmark", on[self.cudnn_benchmark] if gpu else "n/a", "--deterministic"),
            ("activation ckpt", "activation_checkpointing", on[self.activation_checkpointing],
             "--activation-checkpointing"),
            ("optimizer", "optimizer", optimizer_kernel(self.device), ""),
        ]
        lines = [f"engine on {self.device}:"]
        for label, key, value, flag in rows:
            reason = self.reasons.get(key, "")
            override = f"  [{flag}]" if flag and reason else ""
            lines.append(f"  {label:<16} {value:<7} {reason}{override}".rstrip())
        return lines

    def as_dict(self) -> dict[str, Any]:
        return {
            "amp": self.amp, "channels_last": self.channels_last, "compile": self.compile,
            "small_map_gemm": self.small_map_gemm, "cudnn_benchmark": self.cudnn_benchmark,
            "activation_checkpointing": self.activation_checkpointing,
            "optimizer": optimizer_kernel(self.device), "reasons": dict(self.reasons),
        }  # fmt: skip

    # ---- applying it

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def compute(self) -> contextlib.AbstractContextManager:
        """The context every forward pass runs in: autocast at the engine's precision and, when on, the small-map
        convolutions as matrix products."""
        return compute_context(self.amp, self.device, self.small_map_gemm)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device and memory format, and turn on its activation checkpointing if asked
        (``set_grad_checkpointing``, part of the model contract: every block recomputed in backward, about one tensor
        per block kept instead of all of its activations, for one extra forward pass; Chen et al. 2016); also sets
        cuDNN autotuning. Parameters keep their identity and names (state dicts are unaffected)."""
        if self.activation_checkpointing and not callable(getattr(model, "set_grad_checkpointing", None)):
            raise ValueError(f"--activation-checkpointing needs a model with blocks to recompute; "
                             f"{type(model).__name__} has no set_grad_checkpointing (every model of the zoo has)")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        model.to(self.device, memory_format=self.memory_format)
        if self.activation_checkpointing:
            model.set_grad_checkpointing(True)
        return model

    def prepare_input(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def maybe_compile(self, net: nn.Module, say: Callable[[str], None] = print) -> nn.Module:
        return CompiledWithFallback(net, say) if self.compile else net


@dataclass(frozen=True)
class StepShape:
    """What a training step sees: micro-batches of ``batch`` images of ``in_chans`` x ``side`` x ``side``,
    ``num_classes`` labels, ``flop`` floating-point operations per step (forward and backward; the estimator's
    count)."""

    batch: int
    in_chans: int
    side: int
    num_classes: int
    flop: float

    @classmethod
    def of(cls, model: str, options: dict[str, Any], *, batch: int, in_chans: int, side: int,
           num_classes: int) -> StepShape:
        """The step of ``model`` (a zoo name, built with ``options``) on such batches, its FLOPs counted by the
        estimator (on the meta device: nothing is computed)."""
        from ..estimate.workload import measure_workload

        work = measure_workload(model, num_classes=num_classes, image_size=side, in_chans=in_chans, **options)
        return cls(batch, in_chans, side, num_classes, work.flops_per_image * batch)


# A step above this many FLOP is bf16's regime on the CPUs measured (and timing it would cost seconds): not measured.
PROBE_MAX_FLOP = 100e9
# fp32 is chosen only when this much faster than bf16: near a tie, the established default stays.
FP32_MARGIN = 1.15


def measure_amp(model: nn.Module, shape: StepShape, channels_last: bool,
                agree: Callable[[Tensor], Tensor] | None = None, repeats: int = 2,
                small_map_gemm: bool = False, keep: bool = False) -> tuple[str, str]:
    """bf16 or fp32 (``off``) for ``model``'s training step on this CPU, and why: the fastest of ``repeats`` timed
    forward-backward passes of each (alternating), after one warm-up each, on a copy of the model (the model, its
    gradients and every random generator are left as they were). ``agree`` sums the two times over the processes of
    a run; ``small_map_gemm`` times the passes as the run will compute them; with ``keep``, the times of this step on
    this machine are read from, or kept in, the probe's file (``train.amp_probe``)."""
    from . import amp_probe

    if shape.flop > PROBE_MAX_FLOP:
        return "bf16", (f"auto: this CPU has native bf16 (AVX512-BF16/AMX), and a step of {shape.flop / 1e9:.0f} "
                        "GFLOP is where it pays")
    key = amp_probe.probe_key(model, shape, channels_last, small_map_gemm, cpu_name()) if keep else None
    kept = amp_probe.recall(key) if key else None
    if kept is None:
        seconds = _time_passes(model, shape, channels_last, repeats, small_map_gemm)
        if key:
            amp_probe.remember(key, *seconds)
    else:
        seconds = kept[:2]
    times = torch.tensor(seconds, dtype=torch.float64)
    fp32, bf16 = (agree(times) if agree is not None else times).tolist()
    amp, why = choose_amp(fp32, bf16)
    if kept is not None:
        why = why.replace("measured on this step", f"measured on this step on {kept[2]} (kept in "
                          f"{amp_probe.probe_path()}; delete it to measure again)", 1)
    return amp, why


def _time_passes(model: nn.Module, shape: StepShape, channels_last: bool, repeats: int,
                 small_map_gemm: bool) -> tuple[float, float]:
    """``measure_amp``'s timing: (fp32 seconds, bf16 seconds) of the fastest pass of each."""
    import copy
    import time

    net = copy.deepcopy(model).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape.batch, shape.in_chans, shape.side, shape.side, generator=gen)
    y = torch.randint(0, shape.num_classes, (shape.batch,), generator=gen)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    seconds = {"off": float("inf"), "bf16": float("inf")}
    with torch.random.fork_rng(devices=[]):
        for i in range(1 + repeats):  # alternating, so that a busy moment of the machine hits both alike
            for amp in seconds:
                t0 = time.perf_counter()
                with compute_context(amp, torch.device("cpu"), small_map_gemm):
                    loss = nn.functional.cross_entropy(net(x), y)
                loss.backward()
                net.zero_grad(set_to_none=True)
                if i:  # the first pass of each creates oneDNN's kernels
                    seconds[amp] = min(seconds[amp], time.perf_counter() - t0)
    return seconds["off"], seconds["bf16"]


def choose_amp(fp32: float, bf16: float) -> tuple[str, str]:
    """The measured rule: fp32 (``off``) when its step time ``fp32`` beats bf16's by ``FP32_MARGIN``, else bf16."""
    measured = f"measured on this step: fp32 {1e3 * fp32:.0f} ms, bf16 {1e3 * bf16:.0f} ms"
    if bf16 > fp32 * FP32_MARGIN:
        return "off", f"auto: {measured}; fp32 is {bf16 / fp32:.2f}x faster here"
    return "bf16", f"auto: {measured}; --amp off for fp32"


def resolve_amp(amp: str, device: torch.device, facts: DeviceFacts | None = None) -> str:
    """``auto``: bf16 where the device computes in bf16 natively (Ampere+ GPUs, CPUs with AVX512-BF16 or AMX), fp32
    elsewhere. ``bf16`` when asked for runs on any device (emulated where it is not native: slower, same rounding)."""
    device = torch.device(device)
    if amp == "auto":
        facts = facts or DeviceFacts.of(device)
        return "bf16" if facts.bf16 else "off"
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device (fp16 with loss scaling is a GPU technique); use --amp bf16")
    return amp


AMP_DTYPES = {"off": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str) -> torch.dtype:
    """The dtype convolutions and matrix products compute in under ``amp`` (off, bf16, fp16)."""
    return AMP_DTYPES[amp]


def compute_context(amp: str, device: torch.device, small_map_gemm: bool = False) -> contextlib.AbstractContextManager:
    """Autocast at ``amp`` on ``device`` and, with ``small_map_gemm``, ``train.small_maps``'s mode, entered together."""
    if not small_map_gemm:
        return autocast_factory(amp, device)()
    stack = contextlib.ExitStack()
    stack.enter_context(autocast_factory(amp, device)())
    stack.enter_context(SmallMapConvolutions())
    return stack


def autocast_factory(amp: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    dtype = amp_dtype(amp)
    if dtype == torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def has_local_response_norm(model: nn.Module | None) -> bool:
    return model is not None and any("LocalResponseNorm" in type(m).__name__ for m in model.modules())


def resolve_engine(
    *,
    device: torch.device | str,
    model: nn.Module | None = None,
    amp: str = "auto",
    channels_last: bool | None = None,
    compile: bool | None = None,
    small_map_gemm: bool | None = None,
    activation_checkpointing: bool = False,
    deterministic: bool = False,
    facts: DeviceFacts | None = None,
    step_shape: StepShape | None = None,
    agree: Callable[[Tensor], Tensor] | None = None,
    input_shape: tuple[int, int, int] | None = None,
    keep_probe: bool = False,
) -> Engine:
    """Resolve every ``None``/``auto`` setting for ``model`` on ``device`` (described by ``facts``, read from torch by
    default); the rules are in the module docstring. ``step_shape`` (with ``model``) lets a CPU with native bf16
    measure whether bf16 pays for this step; ``agree`` sums the measurements over a run's processes. ``input_shape``
    (C, H, W; or ``step_shape``'s) tells whether the model has convolutions for the small-map GEMM; ``keep_probe``
    reads and keeps the measurement in the probe's file (``train.amp_probe``: ``engine_for`` does, for runs)."""
    device = torch.device(device)
    facts = facts or DeviceFacts.of(device)
    reasons: dict[str, str] = {}
    gpu = facts.type == "cuda"
    what = facts.name if gpu else "CPU"

    resolved_amp = resolve_amp(amp, device, facts)
    if amp != "auto":
        reasons["amp"] = "as asked"
    elif gpu:
        reasons["amp"] = (f"auto: {what} has native bf16" if facts.bf16
                          else f"auto: {what} (capability {_cap(facts)}) lacks native bf16; fp32")
    elif facts.cpu_bf16:
        reasons["amp"] = "auto: this CPU has native bf16 (AVX512-BF16/AMX); --amp off for fp32"
    else:
        reasons["amp"] = "auto: fp32 on CPU (no native bf16)"

    if channels_last is not None:
        resolved_cl, reasons["channels_last"] = channels_last, "as asked"
    elif has_local_response_norm(model):
        resolved_cl, reasons["channels_last"] = False, "auto: local response norm has no NHWC kernel"
    elif gpu:
        resolved_cl, reasons["channels_last"] = True, "auto: cuDNN's tensor-core convolutions are NHWC"
    else:
        resolved_cl, reasons["channels_last"] = True, "auto: oneDNN's NHWC convolutions skip a reorder per call"

    if compile is not None:
        resolved_compile, reasons["compile"] = compile, "as asked"
    elif activation_checkpointing:
        resolved_compile, reasons["compile"] = False, "auto: not combined with activation checkpointing"
    elif gpu and facts.capability is not None and facts.capability >= COMPILE_MIN_CAPABILITY:
        resolved_compile, reasons["compile"] = True, "auto: inductor fuses BN/activation/residual on GPU"
    elif gpu:
        resolved_compile, reasons["compile"] = False, f"auto: Triton needs capability >= 7.0, {what} has {_cap(facts)}"
    else:
        resolved_compile, reasons["compile"] = False, "auto: off on CPU, where it does not pay"

    if input_shape is None and step_shape is not None:
        input_shape = (step_shape.in_chans, step_shape.side, step_shape.side)
    small_maps, reasons["small_map_gemm"] = resolve_small_map_gemm(small_map_gemm, gpu, resolved_compile,
                                                                   activation_checkpointing, model, input_shape)
    measured = amp == "auto" and not gpu and facts.cpu_bf16 and model is not None and step_shape is not None
    if measured:
        resolved_amp, reasons["amp"] = measure_amp(model, step_shape, resolved_cl, agree, small_map_gemm=small_maps,
                                                   keep=keep_probe)

    benchmark = gpu and not deterministic
    reasons["cudnn_benchmark"] = ("off: deterministic" if deterministic else "auto: fixed input shapes") if gpu else ""
    reasons["activation_checkpointing"] = "as asked" if activation_checkpointing else "default"
    reasons["optimizer"] = ("auto: one kernel per parameter group" if optimizer_kernel(device) == "fused"
                            else "auto: multi-tensor updates (no fused kernel for this device)")
    return Engine(device, resolved_amp, resolved_cl, resolved_compile, benchmark, activation_checkpointing, reasons,
                  measured, small_maps)


def engine_for(cfg: Any, device: torch.device, model: nn.Module | None = None,
               facts: DeviceFacts | None = None, step_shape: StepShape | None = None,
               agree: Callable[[Tensor], Tensor] | None = None, data: tuple[int, int] | None = None) -> Engine:
    """``resolve_engine`` for a ``TrainConfig``; ``data`` = (channels, side) of the images, cropped to the config's
    ``train_crop_size`` when it has one."""
    input_shape = None
    if data is not None:
        side = cfg.train_crop_size or data[1]
        input_shape = (data[0], side, side)
    return resolve_engine(
        device=device, model=model, amp=cfg.amp, channels_last=cfg.channels_last, compile=cfg.compile,
        small_map_gemm=cfg.small_map_gemm, activation_checkpointing=cfg.activation_checkpointing,
        deterministic=cfg.deterministic, facts=facts, step_shape=step_shape, agree=agree, input_shape=input_shape,
        keep_probe=True,
    )  # fmt: skip


def optimizer_kernel(device: torch.device | str) -> str:
    """``fused`` where torch has fused SGD/AdamW kernels for ``device``'s type (CUDA; CPU from torch 2.4), else
    ``foreach``."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        supported = _get_fused_kernels_supported_devices()
    except ImportError:  # pragma: no cover - a torch without the helper: the safe choice
        return "foreach"
    return "fused" if torch.device(device).type in supported else "foreach"


def _cap(facts: DeviceFacts) -> str:
    return ".".join(map(str, facts.capability)) if facts.capability else "unknown"


# ---------------------------------------------------------------------------------------------------------------------
# torch.compile with a fallback


def _is_compile_failure(err: BaseException) -> bool:
    try:
        from torch._dynamo.exc import TorchDynamoException
    except ImportError:  # pragma: no cover - every supported torch has it
        return False
    return isinstance(err, TorchDynamoException)


class CompiledWithFallback(nn.Module):
    """``torch.compile(module)``, falling back to eager with one message when compiling fails.

    Compilation is lazy: it happens (and fails: no C++ compiler, an unsupported op, Triton missing) at the first call
    of each new graph, not at ``torch.compile``. Dynamo traces with fake tensors, so a failed compile has run nothing
    and the eager call that replaces it computes the step once. ``module`` stays a submodule (``train()``/``eval()``
    reach it); the compiled wrapper shares its parameters and is kept out of the module tree.
    """

    def __init__(self, module: nn.Module, say: Callable[[str], None] = print, **compile_options: Any) -> None:
        super().__init__()
        self.module = module
        self._say = say
        self._failed: str | None = None
        try:
            compiled = torch.compile(module, **compile_options)
        except Exception as err:  # noqa: BLE001 - e.g. an unsupported Python version; eager always works
            compiled = None
            self._fail(err)
        object.__setattr__(self, "_compiled", compiled)

    @property
    def failed(self) -> str | None:
        """Why compilation failed, or None while the compiled path runs."""
        return self._failed

    def _fail(self, err: BaseException) -> None:
        self._failed = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        self._say(f"torch.compile failed ({self._failed[:300]}); continuing in eager mode (pass --no-compile to skip)")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._failed is None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as err:
                if not _is_compile_failure(err):
                    raise
                self._fail(err)
        return self.module(*args, **kwargs)

    def no_sync(self) -> contextlib.AbstractContextManager:
        return self.module.no_sync()  # DDP's gradient-sync switch, when the wrapped module is DDP


__all__ = [
    "AMP_DTYPES", "DeviceFacts", "Engine", "StepShape", "measure_amp", "choose_amp", "amp_dtype", "resolve_engine",
    "engine_for", "resolve_amp",
    "autocast_factory", "compute_context", "CompiledWithFallback", "optimizer_kernel", "has_local_response_norm",
]  # fmt: skip
