"""Pipeline model parallelism: a model's layers split into K stages, one process each, fed with micro-batches.

``torchrun --nproc-per-node K -m convcanon train --pipeline-stages K --microbatches M --pipeline-schedule 1f1b``

The model's chain of layers is cut into K contiguous stages (``parallel.pipeline_split``: balanced by FLOPs or
measured time, or by hand). Each process keeps its stage's layers (the others are freed) inside a
``torch.distributed.pipelining`` ``PipelineStage``; ``ScheduleGPipe`` (all forwards, then all backwards) or
``Schedule1F1B`` (one forward, one backward, so at most K micro-batches of activations held) runs the M micro-batches
of each batch. :class:`Pipeline` is the strategy the run skeleton (``train.run``) plugs in; everything else of a run
(the run directory, logs, checkpoints, progress, the non-finite check, the final line) is the skeleton's.

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
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..layers import check_input, checkpoint_seq
from ..train.optim import build_optimizer
from ..train.reproducibility import capture_rng_state
from ..train.step import TrainStep
from ..train.strategy import Placement, Strategy
from ..train.task import ClassificationTask
from .pipeline_split import (
    Layer,
    describe_split,
    layer_costs,
    layer_shapes,
    pipeline_layers,
    resolve_split,
    stage_bounds,
)

# ---------------------------------------------------------------------------------------------------------------------
# One stage of a pipeline


class StageModule(nn.Sequential):
    """The layers of one stage in order, computing in the engine's precision and memory format (as the unsplit model
    would) but sending float32 in the default layout, so that every stage receives what its buffers expect."""

    def __init__(self, layers: list[Layer], compute=None, memory_format=torch.contiguous_format) -> None:
        super().__init__(*[layer.module for layer in layers])
        self._names = [layer.name for layer in layers]
        self.grad_checkpointing = False
        self._compute = compute
        self._memory_format = memory_format

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each of this stage's layers in backward (--activation-checkpointing, as the model's own)."""
        self.grad_checkpointing = enable

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=self._memory_format)
        run = functools.partial(checkpoint_seq, self) if self.grad_checkpointing else super().forward
        if self._compute is None:
            y = run(x)
        else:
            with self._compute():
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
# The step and the strategy


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


class PipelineStep(TrainStep):
    """The engine's step with the forward and backward of a batch done by the pipeline's schedule (the stage's
    layers compute under autocast themselves, see :class:`StageModule`), and clipping by the whole model's norm."""

    counts_errors = False  # the schedule computes the loss inside; no stage sees the logits

    def __init__(self, engine: Any, stage_module: nn.Module, optimizer: torch.optim.Optimizer, task: ClassificationTask,
                 schedule: Any, *, rank: int, stages: int, grad_clip: float) -> None:
        super().__init__(engine, stage_module, optimizer, task, params=stage_module.parameters(), grad_clip=grad_clip)
        self.schedule, self.rank, self.stages = schedule, rank, stages

    def forward_backward(self, batches, count: int) -> Tensor:
        ((x, y),) = batches  # one batch per step: the schedule splits it into micro-batches
        first, last = self.rank == 0, self.rank == self.stages - 1
        losses = run_step(self.schedule, self.rank, self.stages, x if first else None, y if last else None)
        # The loss lives on the last stage; the others report zero, so a sum over the stages is the last one's.
        return torch.stack(losses).mean().detach() if last else torch.zeros((), device=self.engine.device)

    def clip(self) -> None:
        clip_global_norm(self.params, self.grad_clip, self.engine.device, self.stages)


class Pipeline(Strategy):
    """K stages, one per process; every process sees the whole batch's position in the data, the first stage reads
    the images and the last the labels."""

    name = "pipeline"

    def check(self, cfg: Any) -> None:
        stages, world = cfg.pipeline_stages, int(os.environ.get("WORLD_SIZE", "1"))
        if world != stages:
            raise ValueError(f"--pipeline-stages {stages} runs one stage per process: start it with torchrun "
                             f"--nproc-per-node {stages} (this job has {world} process(es); pipeline x data "
                             "parallelism is not supported)")
        if cfg.amp == "fp16":
            raise ValueError("--amp fp16 is not supported with --pipeline-stages (no loss scaler across stages); use "
                             "bf16")

    def data_world(self) -> tuple[int, int]:
        return 0, 1

    def train_batches(self, data: Any, epoch: int, cfg: Any, start: int):
        rank, stages = self.ctx.rank, cfg.pipeline_stages
        if rank in (0, stages - 1):
            return data.train_batches(epoch, cfg.batch_size, seed=cfg.seed, start=start, device=self.ctx.device)
        return itertools.repeat((None, None), data.num_train_batches(cfg.batch_size, 1) - start)

    def place(self, model: nn.Module, engine: Any, cfg: Any, info: Any, say) -> Placement:
        ctx, stages, micro = self.ctx, cfg.pipeline_stages, cfg.microbatches
        self.model, self.engine, self.cfg = model, engine, cfg
        self.layers = pipeline_layers(model)
        input_shape = (cfg.batch_size // micro, info.in_chans, info.image_size, info.image_size)
        check_input(torch.empty(input_shape, device="meta"), in_chans=model.in_chans, min_size=model.min_size,
                    model=cfg.model)
        shapes = layer_shapes(self.layers, input_shape)
        self.costs, self.unit = self._costs(input_shape, cfg)
        self.split = resolve_split(self.layers, self.costs, stages, cfg.pipeline_split or None)
        start, end = stage_bounds(self.split, ctx.rank)
        free_other_layers(self.layers, range(start, end))
        compute = engine.compute if engine.amp != "off" or engine.small_map_gemm else None
        stage_module = engine.prepare_model(StageModule(self.layers[start:end], compute, engine.memory_format))
        self.names = parameter_names(model)  # after the moves: a move to another device makes new tensors
        optimizer = build_optimizer(stage_module, cfg, ctx.device)
        task = ClassificationTask.for_run(cfg)
        schedule = make_schedule(stage_module, ctx.rank, stages, ctx.device, micro, cfg.pipeline_schedule, task.loss,
                                 shapes, self.split)
        step = PipelineStep(engine, stage_module, optimizer, task, schedule, rank=ctx.rank, stages=stages,
                            grad_clip=cfg.grad_clip)
        return Placement(stage_module, step, stage_module)

    def _costs(self, input_shape: tuple[int, ...], cfg: Any) -> tuple[list[float], str]:
        if cfg.pipeline_balance == "time" and not cfg.pipeline_split:
            first = self.ctx.rank == 0
            measured: list[Any] = [layer_costs(self.layers, input_shape, "time", device=self.ctx.device)
                                   if first else None]
            dist.broadcast_object_list(measured, src=0)  # one measurement, so every rank cuts at the same place
            return measured[0], "ms"
        return layer_costs(self.layers, input_shape, "flops"), "GFLOPs"

    def evaluate(self, placement: Placement, data: Any, engine: Any, batch_size: int) -> dict[str, Any]:
        return self.evaluate_module(placement.model, data, engine, batch_size)

    def evaluate_module(self, module: nn.Module, data: Any, engine: Any, batch_size: int) -> dict[str, Any]:
        """Through the stages: ``module`` is this rank's stage (the trained one, or its weight average)."""
        return evaluate_pipeline(module, data, self.ctx.rank, self.cfg.pipeline_stages, self.ctx.device,
                                 batch_size=batch_size)

    # ---- the weight average: each stage averages its own layers (train.ema), gathered like the model

    def check_same_everywhere(self, fingerprint: Tensor, what: str) -> None:
        """Each stage holds another part of the model: there is nothing to compare between ranks."""

    def _ema_names(self, placement: Placement, ema: Any) -> dict[int, str]:
        """The stage's average (a copy of the stage) under the whole model's names, tensor by tensor."""
        return {id(mine): self.names[id(theirs)] for theirs, mine in zip(
            placement.model.state_dict(keep_vars=True).values(), ema.module.state_dict(keep_vars=True).values(),
            strict=True)}

    def ema_state(self, placement: Placement, ema: Any) -> dict[str, Any] | None:
        gathered = self._gather(stage_state(ema.module, self._ema_names(placement, ema)))
        return None if gathered is None else {"module": self._whole(gathered), "updates": ema.updates}

    def ema_weights(self, placement: Placement, ema: Any) -> dict[str, Tensor] | None:
        gathered = self._gather(stage_state(ema.module, self._ema_names(placement, ema)))
        return None if gathered is None else self._whole(gathered)

    def load_ema(self, placement: Placement, ema: Any, state: dict[str, Any]) -> None:
        load_stage_state(ema.module, self._ema_names(placement, ema), state["module"])
        ema.updates = int(state["updates"])

    # ---- checkpoints: every stage's part, gathered on rank 0 under the whole model's names

    def _gather(self, payload: dict[str, Any]) -> list[Any] | None:
        gathered: list[Any] | None = [None] * self.ctx.world_size if self.ctx.is_main else None
        dist.gather_object(payload, gathered, dst=0)
        return gathered

    def _whole(self, parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        full: dict[str, Tensor] = {}
        for part in parts:
            full.update(part)
        return {k: full[k] for k in self.model.state_dict()}  # the model's own key order

    def checkpoint_state(self, placement: Placement) -> dict[str, Any] | None:
        gathered = self._gather({"model": stage_state(placement.model, self.names),
                                 "optimizer": placement.step.optimizer.state_dict(), "rng": capture_rng_state()})
        if gathered is None:
            return None
        return {"model": self._whole([part["model"] for part in gathered]),
                "optimizer": {"pipeline": [part["optimizer"] for part in gathered]}, "scaler": None,
                "rng": gathered[0]["rng"], "rng_ranks": [part["rng"] for part in gathered],
                "pipeline_split": self.split}

    def full_state_dict(self, placement: Placement) -> dict[str, Tensor] | None:
        gathered = self._gather(stage_state(placement.model, self.names))
        return None if gathered is None else self._whole(gathered)

    def check_resumable(self, state: dict[str, Any], run_dir: Any, path: Any) -> None:
        if not isinstance(state["optimizer"], dict) or "pipeline" not in state["optimizer"]:
            raise ValueError(f"--resume {run_dir}: {path} was written by a data-parallel run; continue it without "
                             "--pipeline-stages")

    def load_state(self, placement: Placement, state: dict[str, Any]) -> None:
        if state.get("pipeline_split") != self.split:
            saved = " ".join(map(str, state.get("pipeline_split") or []))
            raise ValueError(f"the checkpoint's stages hold {saved} layers, this run would split {self.split}: pass "
                             f"--pipeline-split {saved}")
        load_stage_state(placement.model, self.names, state["model"])
        placement.step.optimizer.load_state_dict(state["optimizer"]["pipeline"][self.ctx.rank])

    def resume_position(self, state: dict[str, Any], cfg: Any, plan: Any, data: Any, say) -> int:
        return state["batch_in_epoch"]

    def describe(self, placement: Placement) -> tuple[list[str], dict[str, Any]]:
        cfg, stages, micro = self.cfg, self.cfg.pipeline_stages, self.cfg.microbatches
        lines = ["note: --compile is not applied to pipeline stages (each stage runs eager)"] if self.engine.compile \
            else []
        how = "by hand" if cfg.pipeline_split else f"balanced by {cfg.pipeline_balance}"
        lines.append(f"pipeline: {stages} stages x {micro} micro-batches of {cfg.batch_size // micro} images, "
                     f"{cfg.pipeline_schedule} schedule; split {how}:\n"
                     + describe_split(self.layers, self.costs, self.split, self.unit))
        return lines, {"pipeline": {"stages": stages, "microbatches": micro, "schedule": cfg.pipeline_schedule,
                                    "split": self.split, "layers": [layer.name for layer in self.layers],
                                    "costs": self.costs, "cost_unit": self.unit}}


__all__ = [
    "Layer", "Pipeline", "PipelineStep", "StageModule", "clip_global_norm", "evaluate_pipeline", "make_schedule",
    "run_step",
]
