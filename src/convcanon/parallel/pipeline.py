"""Pipeline model parallelism: a model's layers split into K stages, one process each, fed with micro-batches.

``torchrun --nproc-per-node K -m convcanon train --pipeline-stages K --microbatches M --pipeline-schedule 1f1b``

How a model becomes a pipeline:

1. :func:`pipeline_layers` takes a model's ordered list of layers from the model contract, ``model.blocks()`` (the
   stem, each residual block, Inception module or conv with its norm/activation/pool, each FC with its activation and
   dropout); composed in order they compute exactly ``model(x)``. Models with auxiliary heads (GoogLeNet with
   ``aux_heads=True``) are refused: their heads branch off the chain in training.
2. The split into K contiguous stages balances the measured cost of each layer (:func:`layer_costs`: forward FLOPs
   counted by ``torch.utils.flop_counter`` on the meta device, or forward+backward time measured on the device) by
   minimizing the slowest stage (:func:`balance`), or is given by hand (``--pipeline-split 5 6``: layers per stage).
3. Each process keeps its stage's layers (the others are freed) inside a ``torch.distributed.pipelining``
   ``PipelineStage``; ``ScheduleGPipe`` (all forwards, then all backwards) or ``Schedule1F1B`` (one forward, one
   backward, so at most K micro-batches of activations held) runs the M micro-batches of each batch.

What it computes: each optimizer step sees ``--batch-size`` images split into M equal micro-batches; the gradient is
the mean over them, exactly as one process with ``--batch-size B/M --accum-steps M`` computes it (batch norm
included: each micro-batch is normalized by its own statistics, in both). Without batch norm that is also the
gradient of the whole batch. Dropout masks come from each stage's own generator, so they differ from a one-process
run's (equal in distribution).

Evaluation runs the test set through the stages with point-to-point sends (exact: every image once); checkpoints
gather every stage's weights, optimizer state and RNG state on rank 0 into one file whose ``model`` is the full
model's state dict, so ``convcanon eval`` and ``model.safetensors`` need no pipeline.
"""

from __future__ import annotations

import functools
import itertools
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..layers import checkpoint_seq


class Layer(NamedTuple):
    name: str  # where it starts in the model, e.g. "stem", "stage2.1", "features.conv3", "classifier.1"
    module: nn.Module


# ---------------------------------------------------------------------------------------------------------------------
# Flattening a model into layers


def pipeline_layers(model: nn.Module) -> list[Layer]:
    """``model`` as an ordered list of layers whose composition is ``model.forward`` (without its input check): the
    model contract's ``blocks()``, which hold the model's own modules (no parameter is copied).

    Raises ValueError for a model without ``blocks()`` and for one with auxiliary heads (``has_aux``: GoogLeNet's
    branch off mid-network in training, which a linear pipeline cannot carry).
    """
    name = getattr(model, "name", type(model).__name__)
    if not callable(getattr(model, "blocks", None)):
        raise ValueError(f"pipeline parallelism splits a model's blocks(); {name} has none (every model of the zoo "
                         "has)")
    if getattr(model, "has_aux", False):
        raise ValueError(f"{name} has auxiliary heads, which branch off mid-network in training and a linear "
                         "pipeline cannot carry: pass --model-option aux_heads=false, or train it data-parallel")
    return [Layer(block_name, block) for block_name, block in model.blocks()]


# ---------------------------------------------------------------------------------------------------------------------
# Cost and balance


def _meta_call(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` with every parameter and buffer replaced by a meta tensor: shapes and FLOPs, no arithmetic."""
    from torch.func import functional_call

    tensors = {n: torch.empty_like(t, device="meta") for n, t in
               itertools.chain(module.named_parameters(), module.named_buffers())}
    return functional_call(module, tensors, (x,))


def layer_shapes(layers: list[Layer], input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The input shape of every layer and, last, the output shape (meta device: nothing is computed)."""
    shapes = [tuple(input_shape)]
    x = torch.empty(input_shape, device="meta")
    with torch.no_grad():
        for layer in layers:
            x = _meta_call(layer.module, x)
            shapes.append(tuple(x.shape))
    return shapes


def layer_costs(layers: list[Layer], input_shape: tuple[int, ...], method: str = "flops", *,
                device: torch.device | str = "cpu", repeats: int = 3) -> list[float]:
    """Cost of each layer at ``input_shape`` (one micro-batch).

    ``flops``: forward FLOPs counted by ``torch.utils.flop_counter`` on the meta device (convolutions and matrix
    products; backward is about twice forward for every layer, so the proportions hold), deterministic, the same on
    every rank. ``time``: median seconds of forward+backward measured on ``device`` with copies of the weights (the
    model's running statistics are untouched); includes what FLOPs miss (memory-bound pooling, norms) but is noisy.
    """
    from torch.utils.flop_counter import FlopCounterMode

    shapes = layer_shapes(layers, input_shape)
    costs = []
    for layer, shape in zip(layers, shapes):
        if method == "flops":
            counter = FlopCounterMode(display=False)
            with counter, torch.no_grad():
                _meta_call(layer.module, torch.empty(shape, device="meta"))
            costs.append(float(counter.get_total_flops()))
        elif method == "time":
            costs.append(_time_layer(layer.module, shape, torch.device(device), repeats))
        else:
            raise ValueError(f"cost method must be 'flops' or 'time', got {method!r}")
    return costs


def _time_layer(module: nn.Module, shape: tuple[int, ...], device: torch.device, repeats: int) -> float:
    from torch.func import functional_call

    tensors = {n: t.detach().to(device).clone().requires_grad_(t.requires_grad) for n, t in
               itertools.chain(module.named_parameters(), module.named_buffers())}
    x = torch.randn(shape, device=device, requires_grad=True)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        y = functional_call(module, tensors, (x,))
        y.backward(torch.ones_like(y))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first call warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def balance(costs: list[float], stages: int) -> list[int]:
    """Layers per stage for ``stages`` contiguous stages that minimize the most expensive stage (linear partition,
    dynamic programming over (layers so far, stages used), O(stages x n^2)); ties go to the earliest cut."""
    n = len(costs)
    if not 1 <= stages <= n:
        raise ValueError(f"cannot split {n} layers into {stages} stages: each stage needs at least one layer")
    prefix = [0.0, *itertools.accumulate(costs)]
    # best[k][i]: the smallest possible maximum stage cost for the first i layers in k stages; cut[k][i]: where the
    # last of those k stages begins.
    best = [[math.inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    sizes, i = [], n
    for k in range(stages, 0, -1):
        j = cut[k][i]
        sizes.append(i - j)
        i = j
    return sizes[::-1]


def resolve_split(layers: list[Layer], costs: list[float], stages: int, manual: list[int] | None = None) -> list[int]:
    """``manual`` checked against the model, or the balanced split of ``costs``."""
    if manual:
        if len(manual) != stages or sum(manual) != len(layers) or min(manual) < 1:
            names = ", ".join(f"{i}:{layer.name}" for i, layer in enumerate(layers))
            raise ValueError(f"--pipeline-split {' '.join(map(str, manual))}: give {stages} stage sizes (each >= 1) "
                             f"that add up to the model's {len(layers)} layers: {names}")
        return list(manual)
    return balance(costs, stages)


def describe_split(layers: list[Layer], costs: list[float], split: list[int], unit: str = "GFLOPs") -> str:
    total = sum(costs) or 1.0
    lines, start = [], 0
    scale = 1e-9 if unit == "GFLOPs" else 1e3
    for k, size in enumerate(split):
        part = layers[start:start + size]
        cost = sum(costs[start:start + size])
        lines.append(f"  stage {k}: {part[0].name} .. {part[-1].name} ({size} layers, {cost * scale:.3g} {unit}, "
                     f"{100 * cost / total:.0f}%)")
        start += size
    slowest = max(sum(costs[s:s + n]) for s, n in zip(itertools.accumulate([0, *split[:-1]]), split))
    lines.append(f"  balance: slowest stage {100 * slowest / total:.0f}% of the work (ideal {100 / len(split):.0f}%)")
    return "\n".join(lines)


def stage_bounds(split: list[int], stage: int) -> tuple[int, int]:
    start = sum(split[:stage])
    return start, start + split[stage]


# ---------------------------------------------------------------------------------------------------------------------
# One stage of a pipeline


class StageModule(nn.Sequential):
    """The layers of one stage in order, computing in the engine's precision and memory format (as the unsplit model
    would) but sending float32 in the default layout, so that every stage receives what its buffers expect."""

    def __init__(self, layers: list[Layer], autocast=None, memory_format=torch.contiguous_format) -> None:
        super().__init__(*[layer.module for layer in layers])
        self._names = [layer.name for layer in layers]
        self.grad_checkpointing = False
        self._autocast = autocast
        self._memory_format = memory_format

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each of this stage's layers in backward (--activation-checkpointing, as the model's own)."""
        self.grad_checkpointing = enable

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=self._memory_format)
        run = functools.partial(checkpoint_seq, self) if self.grad_checkpointing else super().forward
        if self._autocast is None:
            y = run(x)
        else:
            with self._autocast():
                y = run(x)
        return y.float().contiguous()


def parameter_names(model: nn.Module) -> dict[int, str]:
    """id(tensor) -> the model's state-dict name, to map a stage's tensors back to the full model's keys."""
    return {id(t): name for name, t in model.state_dict(keep_vars=True).items()}


def stage_state(stage: nn.Module, names: dict[int, str]) -> dict[str, Tensor]:
    """A stage's parameters and buffers under the full model's names (CPU copies)."""
    return {names[id(t)]: t.detach().cpu().clone() for t in stage.state_dict(keep_vars=True).values()}


def load_stage_state(stage: nn.Module, names: dict[int, str], full: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for t in stage.state_dict(keep_vars=True).values():
            t.copy_(full[names[id(t)]])


def free_other_layers(layers: list[Layer], keep: range) -> None:
    """Move the layers another stage owns to the meta device: their memory is released, their names stay."""
    for i, layer in enumerate(layers):
        if i not in keep:
            layer.module.to("meta")


def make_schedule(stage_module: nn.Module, stage: int, stages: int, device: torch.device, microbatches: int,
                  schedule: str, loss_fn, shapes: list[tuple[int, ...]], split: list[int]):
    """A ``PipelineStage`` with static shapes (no inference pass: nothing runs before the first step, on every torch
    version that has the module) and its GPipe or 1F1B schedule."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    if schedule == "1f1b" and microbatches < stages:
        raise ValueError(f"--pipeline-schedule 1f1b needs --microbatches >= --pipeline-stages ({stages}); got "
                         f"{microbatches} (or use gpipe)")
    start, end = stage_bounds(split, stage)
    # The received activation of a later stage must require grad, or no gradient flows back to the stage before.
    example_in = torch.empty(shapes[start], device="meta", requires_grad=stage > 0)
    example_out = torch.empty(shapes[end], device="meta", requires_grad=True)
    pipe_stage = PipelineStage(stage_module, stage, stages, device, input_args=(example_in,),
                               output_args=(example_out,))
    cls = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B
    return cls(pipe_stage, n_microbatches=microbatches, loss_fn=loss_fn)


def run_step(schedule, stage: int, stages: int, x: Tensor | None, y: Tensor | None) -> list[Tensor]:
    """One pipelined forward and backward of a batch; the last stage returns the micro-batch losses."""
    losses: list[Tensor] = []
    if stage == 0 and stages == 1:
        schedule.step(x, target=y, losses=losses)
    elif stage == 0:
        schedule.step(x)
    elif stage == stages - 1:
        schedule.step(target=y, losses=losses)
    else:
        schedule.step()
    return losses


# ---------------------------------------------------------------------------------------------------------------------
# Exact evaluation through the stages

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_HEADER = 8  # [ndim, dtype index, up to 6 sizes]; ndim 0 ends the stream


def _send(t: Tensor, dst: int, device: torch.device) -> None:
    header = torch.zeros(_HEADER, dtype=torch.int64, device=device)
    header[0], header[1] = t.dim(), _DTYPES.index(t.dtype)
    header[2:2 + t.dim()] = torch.tensor(t.shape)
    dist.send(header, dst)
    dist.send(t.contiguous(), dst)


def _recv(src: int, device: torch.device) -> Tensor | None:
    header = torch.zeros(_HEADER, dtype=torch.int64, device=device)
    dist.recv(header, src)
    ndim = int(header[0])
    if ndim == 0:
        return None
    t = torch.empty(header[2:2 + ndim].tolist(), dtype=_DTYPES[int(header[1])], device=device)
    dist.recv(t, src)
    return t


@torch.no_grad()
def evaluate_pipeline(stage_module: nn.Module, data, stage: int, stages: int, device: torch.device, *,
                      batch_size: int) -> dict[str, Any]:
    """Loss, top-1, top-5 and the sample count over the whole test split, computed through the stages (each test
    image once); every rank returns the same result."""
    import torch.nn.functional as F

    num_classes = data.info.num_classes
    was_training = stage_module.training
    stage_module.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    first, last = stage == 0, stage == stages - 1
    batches = data.test_batches(batch_size, device=device) if first or last else None
    k5 = min(5, num_classes)
    while True:
        if first:
            x, y = next(batches, (None, None))
            if x is None:
                if not last:
                    dist.send(torch.zeros(_HEADER, dtype=torch.int64, device=device), stage + 1)
                break
        else:
            x = _recv(stage - 1, device)
            if x is None:
                if not last:
                    dist.send(torch.zeros(_HEADER, dtype=torch.int64, device=device), stage + 1)
                break
            if last:
                _, y = next(batches)
        h = stage_module(x)
        if not last:
            _send(h, stage + 1, device)
            continue
        logits = h.float()
        hits = logits.topk(k5, dim=1).indices.eq(y[:, None])
        totals += torch.stack([
            F.cross_entropy(logits, y, reduction="sum").double(), torch.tensor(y.numel(), device=device).double(),
            hits[:, 0].sum().double(), hits.any(dim=1).sum().double(),
        ])  # fmt: skip
    if stages > 1:
        dist.broadcast(totals, src=stages - 1)
    stage_module.train(was_training)
    loss_sum, n, top1, top5 = totals.tolist()
    n = int(n)
    result = {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "samples": n}
    if num_classes > 5:
        result["top5"] = 100.0 * top5 / n
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Training


def clip_global_norm(params: list[Tensor], max_norm: float, device: torch.device, stages: int) -> Tensor:
    """Clip by the norm of the whole model's gradient, summed over the stages, as ``clip_grad_norm_`` does for one
    device (same coefficient, max_norm / (norm + 1e-6), capped at 1), on the device: no host sync. Returns the norm."""
    grads = [p.grad for p in params if p.grad is not None]
    local = torch.zeros((), dtype=torch.float64, device=device)
    for g in grads:
        local += g.detach().double().square().sum()
    if stages > 1:
        dist.all_reduce(local)
    norm = local.sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype))  # x 1.0 (no clipping) leaves a gradient exactly as it was
    return norm


def train_pipeline(cfg, *, resume: str | Path | None = None, out_stream=None):
    """``convcanon.train.loop.train`` for ``cfg.pipeline_stages`` > 1: the same run directory, logs, checkpoints and
    exact evaluation, with the model split over the torchrun processes (one stage each)."""
    from .. import __version__
    from ..data import open_data
    from ..layers import check_input
    from ..train import checkpoint as ckpt
    from ..train import distributed, loop  # the loop's run directory, model building and printing are reused
    from ..train.config import dump_yaml, to_dict
    from ..train.engine import engine_for
    from ..train.metrics import MetricsLog
    from ..train.optim import build_optimizer, lr_at, make_plan
    from ..train.reproducibility import capture_rng_state, restore_rng_state, seed_everything, set_deterministic
    from ..train.task import ClassificationTask

    out_stream = out_stream or sys.stdout
    stages, micro = cfg.pipeline_stages, cfg.microbatches
    ctx = distributed.setup(cfg.device, cfg.dist_backend, cfg.dist_timeout)
    if ctx.world_size != stages:
        raise ValueError(f"--pipeline-stages {stages} runs one stage per process: start it with torchrun "
                         f"--nproc-per-node {stages} (this job has {ctx.world_size} process(es); pipeline x data "
                         "parallelism is not supported)")
    rank, device = ctx.rank, ctx.device
    first, last = rank == 0, rank == stages - 1
    say = (lambda msg: print(msg, file=out_stream, flush=True)) if ctx.is_main else (lambda msg: None)
    t_start = time.perf_counter()
    if resume is None and (resume := loop.restarted_run(cfg)) is not None:
        say(f"torchrun restart {distributed.restart_count()}: continuing the run in {resume}")

    run_dir = Path(resume) if resume else Path(cfg.out) if cfg.out else loop.default_run_dir(cfg)
    state = None
    if resume:
        found = ckpt.load_latest(run_dir)
        if found is not None:
            state, path = found
            if not isinstance(state["optimizer"], dict) or "pipeline" not in state["optimizer"]:
                raise ValueError(f"--resume {run_dir}: {path} was written by a data-parallel run; continue it without "
                                 "--pipeline-stages")
            say(f"resuming from {path} (step {state['step']})")
    elif ctx.is_main:
        loop.prepare_new_run_dir(run_dir)

    set_deterministic(cfg.deterministic)
    seed_everything(cfg.seed)
    data = open_data(cfg.data, image_size=cfg.image_size, skip_bad=cfg.skip_bad, workers=cfg.workers,
                     progress=cfg.progress and ctx.is_main, decode=cfg.decode)
    info = data.info
    model = loop.build_model(cfg, info.num_classes, info.in_chans, info.image_size)  # same seed, same weights
    engine = engine_for(cfg, device, model=model)  # the same precision and memory format as one process
    amp = engine.amp
    if amp == "fp16":
        raise ValueError("--amp fp16 is not supported with --pipeline-stages (no loss scaler across stages); use bf16")
    autocast = engine.autocast if amp != "off" else None
    plan = make_plan(cfg, data.num_train_batches(cfg.batch_size, 1), 1)
    layers = pipeline_layers(model)
    mb = cfg.batch_size // micro
    input_shape = (mb, info.in_chans, info.image_size, info.image_size)
    check_input(torch.empty(input_shape, device="meta"), in_chans=model.in_chans, min_size=model.min_size,
                model=cfg.model)
    shapes = layer_shapes(layers, input_shape)
    if cfg.pipeline_balance == "time" and not cfg.pipeline_split:
        measured: list[Any] = [layer_costs(layers, input_shape, "time", device=device) if first else None]
        dist.broadcast_object_list(measured, src=0)  # one measurement, so every rank cuts at the same place
        costs, unit = measured[0], "ms"
    else:
        costs, unit = layer_costs(layers, input_shape, "flops"), "GFLOPs"
    split = resolve_split(layers, costs, stages, cfg.pipeline_split or None)
    if state is not None and state.get("pipeline_split") != split:
        saved = " ".join(map(str, state.get("pipeline_split") or []))
        raise ValueError(f"--resume {run_dir}: the checkpoint's stages hold {saved} layers, this run would split "
                         f"{split}: pass --pipeline-split {saved}")
    start, end = stage_bounds(split, rank)
    free_other_layers(layers, range(start, end))
    stage_module = engine.prepare_model(StageModule(layers[start:end], autocast, engine.memory_format))
    names = parameter_names(model)  # after the moves: a move to another device makes new tensors
    optimizer = build_optimizer(stage_module, cfg, device)
    task = ClassificationTask(label_smoothing=cfg.label_smoothing, aux_weight=cfg.aux_weight)

    step, epoch, start_batch, best_top1 = 0, 0, 0, None
    if state is not None:
        load_stage_state(stage_module, names, state["model"])
        optimizer.load_state_dict(state["optimizer"]["pipeline"][rank])
        step, epoch, start_batch = state["step"], state["epoch"], state["batch_in_epoch"]
        best_top1 = state.get("metrics", {}).get("best_top1")

    schedule = make_schedule(stage_module, rank, stages, device, micro, cfg.pipeline_schedule, task.loss, shapes,
                             split)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if state is None:
            ckpt.atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
        ckpt.atomic_write_json(run_dir / "run.json", {
            "plan": plan.__dict__, "amp": amp, "engine": engine.as_dict(), "device": str(device),
            "world_size": ctx.world_size,
            "backend": ctx.backend, "pipeline": {"stages": stages, "microbatches": micro,
                                                 "schedule": cfg.pipeline_schedule, "split": split,
                                                 "layers": [layer.name for layer in layers], "costs": costs,
                                                 "cost_unit": unit},
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
            or platform.machine(),
            "convcanon": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "git_commit": loop.git_commit(), "argv": sys.argv, "data": dict(info.__dict__),
            "threads": torch.get_num_threads(),
        })  # fmt: skip
    say(f"{cfg.model} on {info.name}: {info.train_size} train / {info.test_size} test images, {info.num_classes} "
        f"classes, {info.in_chans}x{info.image_size}x{info.image_size}; device {device}, amp {amp}")
    say(plan.describe())
    for line in engine.describe():
        say(line)
    if engine.compile:
        say("note: --compile is not applied to pipeline stages (each stage runs eager)")
    say(f"pipeline: {stages} stages x {micro} micro-batches of {mb} images, {cfg.pipeline_schedule} schedule; split "
        f"{'by hand' if cfg.pipeline_split else f'balanced by {cfg.pipeline_balance}'}:\n"
        + describe_split(layers, costs, split, unit))
    log = MetricsLog(run_dir, enabled=ctx.is_main, resume_step=step if state is not None else None)
    if state is not None:
        restore_rng_state(state["rng_stages"][rank])

    def save(batch_in_epoch: int, ep: int, metrics: dict[str, Any], best: bool = False) -> None:
        payload = {"model": stage_state(stage_module, names), "optimizer": optimizer.state_dict(),
                   "rng": capture_rng_state()}
        gathered: list[Any] | None = [None] * stages if ctx.is_main else None
        dist.gather_object(payload, gathered, dst=0)
        if not ctx.is_main:
            return
        full = {}
        for part in gathered:
            full.update(part["model"])
        full = {k: full[k] for k in model.state_dict()}  # the model's own key order
        ckpt.save_checkpoint(run_dir, {
            "model": full, "optimizer": {"pipeline": [part["optimizer"] for part in gathered]},
            "step": step, "epoch": ep, "batch_in_epoch": batch_in_epoch, "rng": gathered[0]["rng"],
            "rng_stages": [part["rng"] for part in gathered], "world_size": stages, "pipeline_split": split,
            "classes": list(info.classes), "config": to_dict(cfg), "metrics": metrics, "model_name": cfg.model,
            "num_classes": info.num_classes, "in_chans": info.in_chans, "image_size": info.image_size,
        }, keep_last=cfg.keep_checkpoints, best=best)  # fmt: skip

    nb = plan.micro_batches_per_epoch  # here: batches (optimizer steps) per epoch
    watch = loop.NonFiniteWatch(device)
    final: dict[str, Any] = {}
    stop = False
    loss_window = torch.zeros((), device=device)
    window_steps, window_t0, train_seconds = 0, time.perf_counter(), 0.0
    stage_module.train()
    while epoch < plan.epochs and not stop:
        if first or last:
            batches = data.train_batches(epoch, cfg.batch_size, seed=cfg.seed, start=start_batch, device=device)
        else:
            batches = itertools.repeat((None, None), nb - start_batch)
        for b, (x, y) in enumerate(batches, start=start_batch):
            lr = lr_at(step, plan)
            for group in optimizer.param_groups:
                group["lr"] = lr
            losses = run_step(schedule, rank, stages, x if first else None, y if last else None)
            step_loss = torch.stack(losses).mean().detach() if last else torch.zeros((), device=device)
            watch.see(step_loss, step)  # read back at log lines and checkpoints only, as in the one-device loop
            if cfg.grad_clip:
                clip_global_norm(list(stage_module.parameters()), cfg.grad_clip, device, stages)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_window += step_loss
            window_steps += 1

            end_of_epoch = b == nb - 1
            reached_max = bool(cfg.max_steps) and step >= cfg.max_steps
            checkpoint_now = bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0
            if step % cfg.log_every == 0 or end_of_epoch or reached_max or checkpoint_now:
                first_bad = watch.first_bad_step(ctx)  # a collective: every stage reaches it at the same steps
                if first_bad is not None:
                    log.close()
                    raise loop.NonFiniteLossError(
                        f"loss became inf or NaN at step {first_bad + 1} (found at step {step}); stopped before "
                        f"saving anything after it. The last good checkpoint in {run_dir / 'checkpoints'} is intact.")
            if step % cfg.log_every == 0 or end_of_epoch or reached_max:
                dist.broadcast(loss_window, src=stages - 1)  # the loss lives on the last stage
                now = time.perf_counter()
                train_seconds += now - window_t0
                log.log("train", step, epoch=epoch + (b + 1) / nb, loss=loss_window.item() / window_steps, lr=lr,
                        images_per_s=window_steps * cfg.batch_size / max(now - window_t0, 1e-9))
                loss_window.zero_()
                window_steps, window_t0 = 0, time.perf_counter()
            if end_of_epoch:
                t_eval = time.perf_counter()
                final = evaluate_pipeline(stage_module, data, rank, stages, device,
                                          batch_size=max(cfg.batch_size, 256))
                window_t0 += time.perf_counter() - t_eval
                is_best = best_top1 is None or final["top1"] > best_top1
                best_top1 = final["top1"] if is_best else best_top1
                log.log("eval", step, epoch=epoch + 1, **final)
                say(loop.eval_line(epoch + 1, plan.epochs, step, final))
                save(0, epoch + 1, {**final, "best_top1": best_top1}, best=is_best)
            elif reached_max or checkpoint_now:
                save(b + 1, epoch, {"best_top1": best_top1})
            if reached_max:
                stop = True
                break
        if not stop:
            epoch += 1
        start_batch = 0

    payload = stage_state(stage_module, names)
    gathered: list[Any] | None = [None] * stages if ctx.is_main else None
    dist.gather_object(payload, gathered, dst=0)
    seconds = time.perf_counter() - t_start
    if ctx.is_main:
        full = {}
        for part in gathered:
            full.update(part)
        ckpt.save_safetensors({k: full[k] for k in model.state_dict()}, run_dir / "model.safetensors", metadata={
            "model": cfg.model, "num_classes": str(info.num_classes), "in_chans": str(info.in_chans),
            "classes": "\n".join(info.classes), "convcanon": __version__,
        })  # fmt: skip
        ckpt.atomic_write_json(run_dir / "summary.json", {
            "steps": step, "epochs": epoch, "final": final, "best_top1": best_top1, "seconds": round(seconds, 2),
            "train_seconds": round(train_seconds, 2),
        })  # fmt: skip
        say(f"done: {step} steps in {seconds:.1f} s; weights in {run_dir / 'model.safetensors'}" if final else
            f"stopped after {step} steps in {seconds:.1f} s; continue with --resume {run_dir}")
    log.close()
    distributed.teardown(ctx)
    return loop.RunResult(run_dir, step, epoch, plan, final, best_top1, seconds)


__all__ = [
    "Layer", "StageModule", "balance", "describe_split", "evaluate_pipeline", "layer_costs",
    "layer_shapes", "make_schedule", "pipeline_layers", "resolve_split", "run_step", "train_pipeline",
]
