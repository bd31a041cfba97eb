"""The cost model: from a model's measured work and a device's datasheet to wall-clock, scaling and memory.

Per image, on one device (the kernels of a CNN run one after another, each bound by one resource, so times add):

    t_image = 3 * 2 * MACs_eff / (peak[precision] * MATMUL_EFFICIENCY[arch] * PRECISION_EFFICIENCY[precision])
            + ACTIVATION_ACCESSES * elements_written * bytes[precision] / (memory_bandwidth * MEMORY_EFFICIENCY)

MACs_eff counts the Winograd-eligible 3x3 convolutions at 1/WINOGRAD_SPEEDUP of their direct cost on devices whose
library uses Winograd in fp32. A step adds the optimizer's pass over the parameters (memory bound) and is never shorter
than the host's time to launch its operations. Data parallelism adds a ring all-reduce of the fp32 gradients,
``2 (D-1)/D * bytes / bandwidth`` over the slowest link of the ring plus ``2 (D-1)`` hop latencies, of which at most
OVERLAP_FRACTION hides behind the backward pass. The paper's two-GPU AlexNet ("towers") halves each device's work and
adds the activation exchange at the layers that read both towers, on the critical path. An epoch adds the evaluation
pass and a fixed recipe overhead (validation loader, checkpoint). A run that keeps a weight average (``--model-ema``)
adds its update (EMA_WORDS_PER_PARAM words of memory traffic per parameter, every ``--model-ema-steps`` steps), its
fp32 copy in memory and a second evaluation pass per epoch. A run measured on this machine (``--measure``,
:mod:`.measure`) is ``convcanon train``'s own: its step, evaluation pass and checkpoint write are timed rather than
modelled, its epochs drop the last incomplete batch as train's do, and its warm-up (compilation, first allocations)
is paid once.

There is no per-family fudge factor: families differ through what is measured of them (VGG's work is almost all
Winograd-eligible 3x3 convolutions; ResNet's and GoogLeNet's batch norms and ReLUs make memory traffic a large share;
AlexNet's LRN too). The input pipeline is assumed to keep up (the calibration runs' own loaders did).

Calibration. Each fitted constant is the value that reproduces one published run; ``validation.calibrate()``
re-derives them and tests/test_estimate.py checks that the source holds their fit:

- MATMUL_EFFICIENCY[pascal]: Goyal et al. 2017's single-server baseline, ResNet-50 on 8x P100 in 29 h (Caffe2, real
  data: 138 img/s per GPU);
- WINOGRAD_SPEEDUP: the VGG16 / ResNet-50 throughput ratio on one P100 in TensorFlow's May 2017 benchmarks (154 / 219);
- MATMUL_EFFICIENCY[kepler] (and [fermi], the closest calibrated generation): TensorFlow's K80 ResNet-50, 51.9 img/s;
- MATMUL_EFFICIENCY[volta, ampere, hopper]: NVIDIA DeepLearningExamples (DLE) ResNet-50 v1.5 AMP on 1x V100, 1200 img/s;
- PRECISION_EFFICIENCY[tf32]: DLE TF32 on 1x A100, 938 img/s;
- EPOCH_OVERHEAD_S[files]: DLE AMP on 8x V100, ~5 h for 90 epochs;
- OVERLAP_FRACTION: Horovod's ResNet-101 at 512 GPUs, 90% scaling efficiency.

The efficiencies differ between generations partly because the software of each calibration run differs (Caffe2 in
2017, PyTorch with NHWC and cuDNN 8 in 2021): they are the share of peak a good run of that era reached, not a
property of the silicon. H100 and H200 take the Volta/Ampere figure; no published run checks them.

Held out, predicted without touching a constant (``validation.PUBLISHED_RUNS`` lists them with their sources):
AlexNet on 2x GTX 580 (five to six days), ResNet-50 AMP on 1x and 8x A100 (~14 h, ~3 h), ResNet-50 AMP and FP32 on
1x V100 (~29 h, ~92 h), ResNet-50 on 256 P100s (~1 h at ~90% scaling), VGG-16 on 512 GPUs (68%). Every other constant
comes from hardware documentation or first principles and says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from .catalog import DATASETS, Device
from .inputs import RunSpec, plan_input, run_spec
from .workload import Workload, measure_workload

if TYPE_CHECKING:
    from .measure import Measurement

GIB = 1024**3

# ---- compute -----------------------------------------------------------------------------------------------------
# Fraction of the precision's peak that convolution and linear kernels reach in a real training run (framework,
# library and stragglers included), with the memory-bound work priced separately. Pascal: Goyal et al.'s 8x P100
# baseline (29 h). Kepler: TensorFlow's K80 ResNet-50 (51.9 img/s). Fermi: Kepler's, the closest calibrated generation
# (the AlexNet run on GTX 580s is held out). Volta and newer: DLE's 1x V100 AMP ResNet-50 (1200 img/s). CPU: no
# published run; 0.30 is a typical share for oneDNN training convolutions, and --measure replaces it.
MATMUL_EFFICIENCY: dict[str, float] = {
    "fermi": 0.27, "kepler": 0.27, "pascal": 0.29, "volta": 0.64, "ampere": 0.64, "hopper": 0.64, "cpu": 0.30,
}  # fmt: skip
# Relative to MATMUL_EFFICIENCY. TF32 convolutions reach a smaller share of their peak than fp16/bf16 ones: calibrated
# on DLE's 1x A100 TF32 ResNet-50 (938 img/s). fp16/bf16 and fp32 share one figure: DLE's FP32 V100 run (~92 h) and its
# A100 AMP runs are held out and confirm it.
PRECISION_EFFICIENCY: dict[str, float] = {"fp32": 1.0, "tf32": 0.41, "bf16": 1.0, "fp16": 1.0}
# Effective speed-up of Winograd's minimal filtering on 3x3 stride-1 convolutions in fp32 (Lavin & Gray 2016: F(2x2,3x3)
# needs 2.25x fewer multiplies, F(4x4,3x3) 4x, less the transforms). Calibrated on the TensorFlow P100 benchmark's
# VGG16 / ResNet-50 throughput ratio (154 / 219 img/s), which no other constant affects.
WINOGRAD_SPEEDUP = 3.4
# Sustained fraction of peak DRAM bandwidth for streaming kernels (STREAM-like copy/triad on GPUs reach 80-90%).
MEMORY_EFFICIENCY = 0.8
# DRAM accesses per activation element in one training step: the forward writes it and the next op reads it (2), the
# backward reads the saved value, writes its gradient and reads that gradient again (3).
ACTIVATION_ACCESSES = 5
PRECISION_BYTES: dict[str, int] = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}
# Optimizer step: fp32 words read and written per parameter (SGD with momentum: read w, g, m; write w, m. AdamW: read w,
# g, m, v; write w, m, v) and optimizer state copies per parameter.
OPTIMIZER_WORDS_PER_PARAM: dict[str, int] = {"sgd": 5, "adamw": 7}
OPTIMIZER_STATE_COPIES: dict[str, int] = {"sgd": 1, "adamw": 2}
# The weight average's update (--model-ema, ``train.ema.ModelEma``): fp32 words read and written per parameter (read the
# average and the weight, write the average: one ``_foreach_lerp_``); it keeps one fp32 copy of the weights. Under data
# parallelism each update is preceded by a broadcast of rank 0's batch-norm statistics (a small message: its latency).
# Its evaluation each epoch is a second pass over the validation set, priced like the model's.
EMA_WORDS_PER_PARAM = 3
# Host time per operation in PyTorch eager mode (Python, dispatcher, autograd bookkeeping; on a GPU the asynchronous
# kernel launch, on a CPU also the oneDNN primitive set-up of small kernels), and operations per training step per
# forward operation (the backward runs about two per forward op). A GPU step cannot be shorter than the host's dispatch
# time; on a CPU the same cores do both, so the times add. Typical profiler figures, not calibrated on a published run.
HOST_SECONDS_PER_OP: dict[str, float] = {"gpu": 10e-6, "cpu": 20e-6}
OPS_PER_STEP_PER_FORWARD_OP = 3
# An evaluation image costs a forward pass: a third of a training image.
EVAL_COST_FRACTION = 1 / 3

# ---- communication -----------------------------------------------------------------------------------------------
# Achieved all-reduce bus bandwidth as a fraction of the nominal link rate (nccl-tests on NVLink, InfiniBand, RoCE).
LINK_EFFICIENCY = 0.8
# Latency of one step of a ring all-reduce (NCCL over RDMA: a few microseconds); a ring of D devices takes 2 (D-1)
# steps, paid once per step (the gradient buckets pipeline behind the first).
RING_STEP_LATENCY_S = 5e-6
# Share of the all-reduce time that can overlap the backward pass (the gradients of the last-computed layers can only
# be reduced after it ends, and the reduction competes with it for the GPU's memory): calibrated on Horovod's
# ResNet-101 at 512 GPUs (90%).
OVERLAP_FRACTION = 0.34
GRADIENT_BYTES = 4  # gradients are reduced in fp32: autocast keeps fp32 master weights, and so fp32 gradients

# ---- recipe ------------------------------------------------------------------------------------------------------
# Per-epoch wall-clock outside the training steps that more devices do not shorten: restarting the data loader's
# workers, writing the checkpoint, logging. File data on an accelerator: calibrated on DLE's 8x V100 AMP run (~5 h for
# 90 epochs, of which the model's steps and evaluation take 3.4 h). DLE's own throughput column implies 3.85 h of steps
# (46 s per epoch left over): the figure is rounded, the constant is loose. In-memory data sets (CIFAR, MNIST, digits)
# and CPU runs restart nothing worth counting: a checkpoint write.
EPOCH_OVERHEAD_S: dict[str, float] = {"files": 64.0, "memory": 0.5}

# ---- memory ------------------------------------------------------------------------------------------------------
# Under fp16/bf16 autocast, PyTorch keeps fp32 weights and caches a half-precision copy of each for the step.
AUTOCAST_WEIGHT_BYTES = 2
# Per GPU: CUDA context, cuDNN/cuBLAS workspaces and handles. CPUs have none of these.
RESERVED_GIB: dict[str, float] = {"gpu": 0.75, "cpu": 0.0}
# Share of device memory the caching allocator can hand out before fragmentation bites.
USABLE_MEMORY_FRACTION = 0.9



@dataclass(frozen=True)
class MemoryPlan:
    """Memory per device at the run's per-device batch, and what makes it fit when it does not."""

    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    activations_gib: float
    reserved_gib: float
    total_gib: float
    device_gib: float
    fits: bool
    micro_batch: int  # largest per-device micro-batch that fits (0: not even one image)
    accumulation_steps: int  # micro-batches per optimizer step that make the batch fit (1 when it fits)
    pipeline_stages: int  # devices one replica must span when even one image does not fit (1 otherwise)
    verdict: str
    ema_gib: float = 0.0  # the weight average's copy (--model-ema)


@dataclass(frozen=True)
class Estimate:
    """A predicted training run. Times in seconds unless the name says otherwise."""

    model: str
    data: str
    input_size: str
    epochs: float
    train_images: int
    device: str
    devices: int
    nodes: int
    precision: str
    parallel: str
    optimizer: str
    global_batch: int
    per_device_batch: int
    images_per_s: float
    step_s: float
    compute_s: float  # per step, one device, communication excluded
    allreduce_s: float  # per step, whole gradient all-reduce (0 without data parallelism)
    exposed_comm_s: float  # per step, communication not hidden behind the backward pass
    epoch_s: float
    eval_s: float  # per epoch
    overhead_s: float  # per epoch
    total_s: float
    scaling_efficiency: float  # throughput / (devices x one device's throughput at the same per-device batch)
    gflops_per_image: float
    achieved_tflops: float  # per device
    utilization: float | None  # achieved / peak at this precision
    memory: MemoryPlan
    notes: tuple[str, ...] = field(default=())
    startup_s: float = 0.0  # once per run: a measured local run's warm-up (compilation, first allocations)
    model_ema: bool = False  # the run keeps a weight average (--model-ema): its update and evaluation are counted
    ema_s: float = 0.0  # per step (in step_s): the weight average's update, spread over its interval

    @property
    def total_hours(self) -> float:
        return self.total_s / 3600

    @property
    def total_days(self) -> float:
        return self.total_s / 86400

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out.update(total_hours=self.total_hours, total_days=self.total_days, notes=list(self.notes))
        return out


@dataclass(frozen=True)
class _Step:
    device_s: float  # arithmetic + memory + optimizer on the device
    backward_s: float
    host_s: float
    total_s: float  # the step without communication


def _step_time(w: Workload, dev: Device, precision: str, batch: int, optimizer: str, share: float = 1.0,
               per_image_s: float | None = None) -> _Step:
    """One device's step for ``batch`` images, doing ``share`` of the model's work (0.5 for one tower)."""
    if per_image_s is not None:  # a measured step: optimizer and host dispatch are already in it
        t_work = batch * share * per_image_s
        return _Step(t_work, t_work * 2 / 3, 0.0, t_work)
    t_work = batch * share * _image_time(w, dev, precision)
    t_opt = share * w.params * OPTIMIZER_WORDS_PER_PARAM[optimizer] * 4 / (dev.memory_gbs * 1e9 * MEMORY_EFFICIENCY)
    device_s = t_work + t_opt
    on_cpu = dev.arch == "cpu"
    host_s = w.forward_ops * OPS_PER_STEP_PER_FORWARD_OP * HOST_SECONDS_PER_OP["cpu" if on_cpu else "gpu"]
    total = device_s + host_s if on_cpu else max(device_s, host_s)
    return _Step(device_s, t_work * 2 / 3, host_s, total)


def _image_time(w: Workload, dev: Device, precision: str) -> float:
    """Seconds of device time per training image (arithmetic + memory traffic)."""
    macs = w.macs
    if dev.winograd and precision == "fp32":
        macs -= w.winograd_macs * (1 - 1 / WINOGRAD_SPEEDUP)
    peak = dev.peak(precision) * 1e12  # type: ignore[operator]
    t_math = 3 * 2 * macs / (peak * MATMUL_EFFICIENCY[dev.arch] * PRECISION_EFFICIENCY[precision])
    t_mem = ACTIVATION_ACCESSES * w.written_elements * PRECISION_BYTES[precision] / (dev.memory_gbs * 1e9
                                                                                    * MEMORY_EFFICIENCY)
    return t_math + t_mem


def allreduce_time(grad_bytes: float, devices: int, nodes: int, dev: Device, inter_node_gbs: float | None = None,
                   intra_node_gbs: float | None = None) -> float:
    """Ring all-reduce of ``grad_bytes`` over ``devices`` on ``nodes``: 2 (D-1)/D x bytes over the slowest link."""
    if devices == 1:
        return 0.0
    intra = intra_node_gbs or dev.intra_node_gbs
    link = intra if nodes == 1 else min(intra, inter_node_gbs or dev.inter_node_gbs)
    steps = 2 * (devices - 1)
    return steps / devices * grad_bytes / (link * 1e9 * LINK_EFFICIENCY) + steps * RING_STEP_LATENCY_S


def memory_plan(w: Workload, dev: Device, precision: str, per_device_batch: int, optimizer: str = "sgd",
                share: float = 1.0, memory_gib: float | None = None, model_ema: bool = False) -> MemoryPlan:
    """Memory per device: weights, gradients, optimizer state, the weight average's copy (``model_ema``), saved
    activations x batch, reserve; and a way to fit."""
    weight_bytes = 4 + (AUTOCAST_WEIGHT_BYTES if precision in ("fp16", "bf16") else 0)
    params = w.params * share
    weights = params * weight_bytes
    grads = params * 4
    opt = params * 4 * OPTIMIZER_STATE_COPIES[optimizer]
    ema = params * 4 if model_ema else 0.0
    per_image = share * (w.saved_float_elements * PRECISION_BYTES[precision] + w.saved_other_bytes)
    reserved = RESERVED_GIB["cpu" if dev.arch == "cpu" else "gpu"] * GIB
    capacity = (memory_gib if memory_gib is not None else dev.memory_gib) * GIB
    usable = capacity * USABLE_MEMORY_FRACTION
    static = weights + grads + opt + ema + reserved
    total = static + per_image * per_device_batch
    micro = int(max(0.0, (usable - static) // per_image)) if per_image else per_device_batch
    micro = min(micro, per_device_batch)
    fits = total <= usable
    stages, accum = 1, 1
    if fits:
        verdict = f"fits: {total / GIB:.1f} of {capacity / GIB:.1f} GiB"
    elif micro >= 1:
        accum = math.ceil(per_device_batch / micro)
        micro = math.ceil(per_device_batch / accum)
        verdict = (f"does not fit ({total / GIB:.1f} of {capacity / GIB:.1f} GiB): use {accum} accumulation steps "
                   f"of micro-batch {micro}")
    else:
        # 1F1B pipeline: a stage holds 1/S of the static state, and activations of 1/S of the layers for the S
        # micro-batches in flight, i.e. about one micro-batch of the whole model's activations.
        room = usable - reserved - per_image
        if room <= 0:
            verdict = (f"does not fit: the activations of one image ({per_image / GIB:.2f} GiB) exceed the device; "
                       "use a smaller image size or activation checkpointing")
            stages = 0
        else:
            stages = math.ceil((static - reserved) / room)
            micro, accum = 1, per_device_batch
            verdict = (f"does not fit: the weights and optimizer state alone need {static / GIB:.1f} GiB; split the "
                       f"model into {stages} pipeline stages with micro-batch 1")
    return MemoryPlan(
        weights_gib=weights / GIB, gradients_gib=grads / GIB, optimizer_gib=opt / GIB,
        activations_gib=per_image * per_device_batch / GIB, reserved_gib=reserved / GIB, total_gib=total / GIB,
        device_gib=capacity / GIB, fits=fits, micro_batch=micro, accumulation_steps=accum, pipeline_stages=stages,
        verdict=verdict, ema_gib=ema / GIB,
    )  # fmt: skip


# The two halves of a measurement whose mean steps differ by more than this: the machine's speed changed while it was
# timed (a shared machine's neighbours), and the estimate says so rather than extrapolating one half's speed quietly.
UNSTEADY_HALVES = 1.25


def _measured_notes(measured: Measurement) -> list[str]:
    notes = [f"step time measured on this machine ({measured.device}) with the engine `convcanon train` resolves "
             f"there: {measured.images_per_s:.1f} img/s at batch {measured.batch_size}, {measured.precision}; "
             "evaluation, checkpoint writes and start-up measured too; the input pipeline is not timed"]
    first, second = measured.halves_s
    if min(first, second) > 0 and max(first, second) / min(first, second) > UNSTEADY_HALVES:
        notes.append(f"this machine's speed changed while the step was timed ({first * 1e3:.1f} ms a step in the "
                     f"first half, {second * 1e3:.1f} ms in the second): the total is as uncertain; time longer with "
                     "--measure-seconds, or measure when the machine is quiet")
    return notes


def estimate(
    model: str,
    *,
    data: str | None = "imagenet",
    images: int | None = None,
    val_images: int | None = None,
    epochs: float = 90,
    device: str | Device | None = None,
    devices: int = 1,
    nodes: int | None = None,
    precision: str = "auto",
    batch_size: int | None = None,
    global_batch: int | None = None,
    optimizer: str = "sgd",
    parallel: str = "data",
    image_size: int | None = None,
    network_gbit: float | None = None,
    link_gbs: float | None = None,
    epoch_overhead_s: float | None = None,
    model_options: dict[str, object] | None = None,
    measured: Measurement | None = None,
    model_ema: bool | None = None,
    model_ema_steps: int = 1,
    in_memory: bool | None = None,
) -> Estimate:
    """Predict a training run. ``batch_size`` is per device, as in ``convcanon train`` (default: train's, 64);
    ``global_batch`` gives the images per step instead (not both). ``precision`` takes ``--amp``'s words: auto (bf16
    where the device computes in bf16 natively, else fp32), off or fp32, tf32, bf16, fp16.

    ``data`` names a data set of the catalog (``DATASETS``) or is None with ``images`` giving the training-set size;
    ``images`` also overrides a named set's size. ``device`` is a catalog name (``DEVICES``); or ``measured``, a
    :class:`~convcanon.estimate.measure.Measurement` of this machine, whose timed step, evaluation, checkpoint write
    and start-up replace the datasheet model (one device). ``model_ema`` is train's ``--model-ema`` (None: auto, on
    for the digits as train resolves it): the weight average's update every ``model_ema_steps`` steps, its copy in
    memory and its evaluation each epoch are counted (a measurement must have timed the update). Raises ValueError
    naming the flag at fault before any work. ``in_memory`` says whether the run holds its data in memory (no loader
    restart per epoch; None: the catalog set's, or files for ``images``).
    """
    spec = run_spec(model, data=data, images=images, val_images=val_images, epochs=epochs, device=device,
                    devices=devices, nodes=nodes, precision=precision, batch_size=batch_size,
                    global_batch=global_batch, optimizer=optimizer, parallel=parallel, image_size=image_size,
                    network_gbit=network_gbit, link_gbs=link_gbs, epoch_overhead_s=epoch_overhead_s,
                    measured=measured, model_ema=model_ema, model_ema_steps=model_ema_steps,
                    in_memory=in_memory)  # fmt: skip
    options = dict(model_options or {})
    plan = plan_input(model, data, image_size, options)
    notes = list(plan.notes)
    options.pop("num_classes", None)
    options["in_chans"] = plan.in_chans
    w = measure_workload(model, num_classes=plan.num_classes, image_size=plan.image_size, **options)
    if parallel == "towers" and w.towers != 2:
        raise ValueError(f"--parallel towers needs a two-tower model (alexnet or alexnet_cifar with towers=2); "
                         f"{model} as built here has one tower: use --parallel data")
    if measured is not None:
        if (measured.model, measured.input_size) != (model, w.input_size):
            raise ValueError(f"the measurement is of {measured.model} at {measured.input_size}, the run is {model} at "
                             f"{w.input_size}: measure the run's own model and image size")
        notes += _measured_notes(measured)
    return _predict(spec, w, measured, notes)


def _predict(spec: RunSpec, w: Workload, measured: Measurement | None, notes: list[str]) -> Estimate:
    """The cost model proper (the module docstring), for settings ``run_spec`` has checked."""
    dev, precision, per_device, parallel = spec.device, spec.precision, spec.per_device_batch, spec.parallel
    per_image_s = measured.step_s / measured.batch_size if measured is not None else None
    share = 0.5 if parallel == "towers" else 1.0
    step = _step_time(w, dev, precision, per_device, spec.optimizer, share, per_image_s)
    ema_s = _ema_time(spec, w, measured, share, spec.replicas)
    comm = exposed = 0.0
    if parallel == "data":
        comm = allreduce_time(w.params * GRADIENT_BYTES, spec.devices, spec.nodes, dev,
                              inter_node_gbs=spec.network_gbit / 8 if spec.network_gbit else None,
                              intra_node_gbs=spec.link_gbs)
        exposed = comm - min(OVERLAP_FRACTION * comm, step.backward_s)
        one = step.total_s + _ema_time(spec, w, measured, share, 1)
    else:
        # Both tower GPUs send their half of the crossing layers' inputs (forward) and of the gradients wrt them
        # (backward) at once, over the PCIe/NVLink link; the next layer waits for them, so nothing hides this.
        link = (spec.link_gbs or dev.intra_node_gbs) * 1e9 * LINK_EFFICIENCY
        exposed = comm = 2 * per_device * w.tower_exchange_elements * PRECISION_BYTES[precision] / link
        one = _step_time(w, dev, precision, per_device, spec.optimizer, 1.0, per_image_s).total_s
        one += _ema_time(spec, w, measured, 1.0, 1)
        notes.append("model parallel as in Krizhevsky et al. 2012: each GPU holds one tower (half of every layer) and "
                     "runs the whole batch through it; the GPUs exchange activations at conv3 and the FC layers")
    step_s = step.total_s + exposed + ema_s
    if spec.ema_every:
        notes.append(f"weight EMA counted ({spec.ema_reason}): its update every {spec.ema_every} step(s), its "
                     "evaluation beside the model's each epoch, its fp32 copy in memory")
    # Weak scaling, as Goyal et al. and Horovod measure it: the same per-device batch on one device. Two towers are
    # compared with one device running the whole model on the whole batch.
    efficiency = one / step_s if parallel == "data" else one / (2 * step_s)
    eval_s, overhead_s = _epoch_extras(spec, w, measured, per_image_s, share)
    # A measured run is convcanon train's, whose epochs drop the last incomplete batch.
    steps_per_epoch = (max(1, spec.train_images // spec.global_batch) if measured is not None
                       else math.ceil(spec.train_images / spec.global_batch))
    epoch_s = steps_per_epoch * step_s + eval_s + overhead_s
    startup_s = measured.startup_s if measured is not None else 0.0
    peak = None if measured is not None else dev.peak(precision)
    achieved = w.flops_per_image * share * per_device / step_s / 1e12
    return Estimate(
        model=spec.model, data=spec.data, input_size="x".join(map(str, w.input_size)), epochs=spec.epochs,
        train_images=spec.train_images, device=dev.name if measured is None else f"local {measured.device}",
        devices=spec.devices, nodes=spec.nodes, precision=precision, parallel=parallel, optimizer=spec.optimizer,
        global_batch=spec.global_batch, per_device_batch=per_device, images_per_s=spec.global_batch / step_s,
        step_s=step_s, compute_s=step.total_s, allreduce_s=comm, exposed_comm_s=exposed, epoch_s=epoch_s,
        eval_s=eval_s, overhead_s=overhead_s, total_s=startup_s + spec.epochs * epoch_s,
        scaling_efficiency=efficiency, gflops_per_image=w.flops_per_image / 1e9, achieved_tflops=achieved,
        utilization=achieved / peak if peak else None,
        memory=memory_plan(w, dev, precision, per_device, spec.optimizer, share, model_ema=spec.ema_every > 0),
        notes=tuple(notes), startup_s=startup_s, model_ema=spec.ema_every > 0, ema_s=ema_s,
    )  # fmt: skip


def _ema_time(spec: RunSpec, w: Workload, measured: Measurement | None, share: float, replicas: int) -> float:
    """The weight average's update per step (its time over ``--model-ema-steps``): measured, or its memory traffic
    (EMA_WORDS_PER_PARAM fp32 words per parameter of the device's ``share``) plus, with data-parallel ``replicas``,
    the broadcast of rank 0's batch-norm statistics that precedes each update (one small message: its ring latency).
    0 without an average."""
    if not spec.ema_every:
        return 0.0
    if measured is not None and measured.ema_update_s is not None:
        return measured.ema_update_s / spec.ema_every
    traffic = share * w.params * EMA_WORDS_PER_PARAM * 4
    broadcast = (replicas - 1) * RING_STEP_LATENCY_S
    return (traffic / (spec.device.memory_gbs * 1e9 * MEMORY_EFFICIENCY) + broadcast) / spec.ema_every


def _epoch_extras(spec: RunSpec, w: Workload, measured: Measurement | None, per_image_s: float | None,
                  share: float) -> tuple[float, float]:
    """(evaluation, other overhead) per epoch: evaluation twice with a weight average (the model's and the average's).
    A measured local run: its own evaluation pass at the run's evaluation batch and its own checkpoint write.
    Otherwise: a forward pass per validation image (a third of a training image) and the recipe overhead of the
    data's kind (EPOCH_OVERHEAD_S); ``--epoch-overhead`` overrides either."""
    if measured is not None and measured.eval_image_s:
        eval_s = spec.val_images * measured.eval_image_s
    else:
        image_s = per_image_s if per_image_s is not None else _image_time(w, spec.device, spec.precision)
        eval_s = spec.val_images * image_s * share * EVAL_COST_FRACTION / spec.replicas
    if spec.ema_every:  # the weight average is evaluated beside the model, over the same split
        eval_s *= 2
    if spec.epoch_overhead_s is not None:
        return eval_s, spec.epoch_overhead_s
    if measured is not None and measured.checkpoint_s:
        return eval_s, measured.checkpoint_s
    return eval_s, EPOCH_OVERHEAD_S["memory" if spec.in_memory or spec.device.arch == "cpu" else "files"]


__all__ = [
    "DATASETS", "Estimate", "MemoryPlan", "allreduce_time", "estimate", "memory_plan",
]  # fmt: skip
