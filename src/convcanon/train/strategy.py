"""Parallel strategies: what differs between running one training on one device, on N data-parallel processes, or on
a pipeline of K stages. The run skeleton (``train.run``) owns everything else.

A strategy owns exactly this:

- ``setup``: the process group (torchrun's, or a world of one) and the device of this process;
- ``place``: how the model is placed and wrapped, and the :class:`~convcanon.train.step.TrainStep` that trains it
  (the optimizer over the parameters this process owns);
- ``train_batches``: which images of a step this process reads (all of them, its rank's shard, or, for a pipeline's
  middle stages, none);
- ``evaluate``: the exact evaluation over the test split, every image counted once;
- ``checkpoint_state`` / ``load_state`` / ``full_state_dict``: how the model, optimizer and RNG states of every process
  are gathered into one checkpoint (always the whole model's state dict, so eval and ``model.safetensors`` need no
  strategy) and handed back out on resume;
- ``describe``: what it prints at start and records in ``run.json``.

:class:`SingleDevice` is a world of one; ``convcanon.parallel`` holds the data-parallel and pipeline strategies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import distributed
from .config import config_from_dict
from .evaluate import evaluate
from .optim import Plan, build_optimizer, make_plan
from .reproducibility import capture_rng_state, derive_seed, seed_everything
from .step import TrainStep, training_view
from .task import ClassificationTask

# A constant part of the per-rank seed, apart from (seed, epoch, index) of the data.
RANK_STREAM = 0x52414E4B


@dataclass
class Placement:
    """A model as a strategy placed it: ``model`` holds this process's weights (the whole model, or one stage's
    layers), ``step`` trains it, ``eval_net`` is what evaluation calls."""

    model: nn.Module
    step: TrainStep
    eval_net: nn.Module


class Strategy:
    """The parts every strategy shares, written for any number of data-parallel processes (all collectives are no-ops
    in a world of one); see the module docstring for what a strategy owns."""

    name = "strategy"

    def __init__(self) -> None:
        self.ctx: distributed.DistContext | None = None
        self._control = None

    # ---- before anything is written

    def check(self, cfg: Any) -> None:
        """Settings this strategy cannot run, refused before any side effect."""

    def setup(self, cfg: Any) -> distributed.DistContext:
        self.ctx = distributed.setup(cfg.device, cfg.dist_backend, cfg.dist_timeout)
        # Control messages (a stop signal) travel on the CPU, whatever the backend of the training collectives.
        self._control = torch.distributed.new_group(backend="gloo") if self.ctx.distributed else None
        return self.ctx

    def any_process(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process (a collective every process calls after each step: a CPU
        all-reduce over gloo, no device sync)."""
        if self._control is None:
            return flag
        t = torch.tensor([int(flag)])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=self._control)
        return bool(t.item())

    def teardown(self) -> None:
        distributed.teardown(self.ctx)

    # ---- data

    def data_world(self) -> tuple[int, int]:
        """(rank, world size) of this process in the data: which share of each global micro-batch it reads."""
        return self.ctx.rank, self.ctx.world_size

    def plan(self, cfg: Any, data: Any) -> Plan:
        _, world = self.data_world()
        return make_plan(cfg, data.num_train_batches(cfg.batch_size, world), world)

    def train_batches(self, data: Any, epoch: int, cfg: Any, start: int):
        rank, world = self.data_world()
        return data.train_batches(epoch, cfg.batch_size, seed=cfg.seed, start=start, rank=rank, world_size=world,
                                  device=self.ctx.device)

    # ---- the model

    def place(self, model: nn.Module, engine: Any, cfg: Any, info: Any, say) -> Placement:
        model = self.prepare(engine.prepare_model(model), cfg)
        optimizer = build_optimizer(model, cfg, self.ctx.device)
        net = engine.maybe_compile(self.wrap(training_view(model), cfg), say)
        task = ClassificationTask.for_run(cfg)
        step = TrainStep(engine, net, optimizer, task, params=model.parameters(), grad_clip=cfg.grad_clip,
                         distributed=self.ctx.distributed)
        return Placement(model, step, net)

    def prepare(self, model: nn.Module, cfg: Any) -> nn.Module:
        """The placed model before its optimizer is built (data parallelism converts batch norm here)."""
        return model

    def wrap(self, net: nn.Module, cfg: Any) -> nn.Module:
        """The module the step calls, around the placed model (data parallelism wraps it in DDP)."""
        return net

    def evaluate(self, placement: Placement, data: Any, engine: Any, batch_size: int) -> dict[str, Any]:
        return self.evaluate_module(placement.eval_net, data, engine, batch_size)

    def evaluate_module(self, module: nn.Module, data: Any, engine: Any, batch_size: int) -> dict[str, Any]:
        """The exact evaluation of ``module`` (the same on every process: the raw model, or its weight average)."""
        return evaluate(module, data, self.ctx, batch_size=batch_size, compute=engine.compute,
                        channels_last=engine.channels_last)

    # ---- the weight average (train.ema)

    def sync_buffers(self, model: nn.Module) -> None:
        """Make ``model``'s buffers the same on every process before they are averaged (data parallelism: rank 0's, as
        DDP's next forward would)."""

    def check_same_everywhere(self, fingerprint: torch.Tensor, what: str) -> None:
        """Raise when ``fingerprint`` (float64 sums) differs between processes (a collective; nothing in a world of
        one)."""
        if not self.ctx.distributed:
            return
        high = self.ctx.all_reduce_max(fingerprint.clone())
        low = -self.ctx.all_reduce_max(-fingerprint)
        if not torch.equal(high, low):
            raise RuntimeError(f"{what} differs between processes ({int((high != low).sum())} tensor(s)): a bug; "
                               "please report it with the run's command")

    def ema_state(self, placement: Placement, ema: Any) -> dict[str, Any] | None:
        """The average's checkpoint entry (``ModelEma.state_dict``) on the main process (a collective; None on the
        others)."""
        return ema.state_dict() if self.ctx.is_main else None

    def ema_weights(self, placement: Placement, ema: Any) -> dict[str, torch.Tensor] | None:
        """The average's weights under the model's names, on the CPU, on the main process (a collective)."""
        return {k: v.detach().cpu() for k, v in ema.module.state_dict().items()} if self.ctx.is_main else None

    def load_ema(self, placement: Placement, ema: Any, state: dict[str, Any]) -> None:
        ema.load_state_dict(state)

    # ---- checkpoints

    def checkpoint_state(self, placement: Placement) -> dict[str, Any] | None:
        """This strategy's part of a checkpoint, gathered on the main process (a collective: every process calls it;
        the others get None)."""
        rngs = self.gather_rng(capture_rng_state())
        if not self.ctx.is_main:
            return None
        return {"model": placement.model.state_dict(), "optimizer": placement.step.optimizer.state_dict(),
                **placement.step.state_dict(), "rng": rngs[0], "rng_ranks": rngs}

    def gather_rng(self, rng: dict[str, Any]) -> list[Any]:
        return [rng]

    def load_state(self, placement: Placement, state: dict[str, Any]) -> None:
        placement.model.load_state_dict(state["model"])
        placement.step.optimizer.load_state_dict(state["optimizer"])
        placement.step.load_state_dict(state)

    def full_state_dict(self, placement: Placement) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on the main process (a collective), None elsewhere."""
        if not self.ctx.is_main:
            return None
        return {k: v.detach().cpu() for k, v in placement.model.state_dict().items()}

    def check_resumable(self, state: dict[str, Any], run_dir: Any, path: Any) -> None:
        if isinstance(state.get("optimizer"), dict) and "pipeline" in state["optimizer"]:
            raise ValueError(f"--resume {run_dir}: {path} was written by a pipeline run; continue it with "
                             f"--pipeline-stages {len(state['optimizer']['pipeline'])}")

    def resume_position(self, state: dict[str, Any], cfg: Any, plan: Plan, data: Any, say) -> int:
        """The micro-batch (of ``cfg.batch_size`` x the data world's images) to continue the checkpoint's epoch at.

        Same world size and batch: the checkpoint's own position (bit-exact on CPU). Another world size (or
        per-device batch, or accumulation) is supported when the global batch and the images used per epoch stay the
        same, e.g. 2 processes x 32 -> 1 x 64 or 4 x 16: the data order is a function of the global position only, so
        every step sees the same images and learning rate; sums are grouped differently, so the weights agree to
        rounding, not bit for bit. In practice: keep ``--accum-steps`` and give ``--batch-size`` = old batch x old
        processes / new processes (changing the accumulation changes which incomplete micro-batch ends an epoch).
        Anything else would be a different run and is refused, naming the batch size that would fit.
        """
        _, world_size = self.data_world()
        saved = config_from_dict(state["config"], where="checkpoint")
        old_world = int(state.get("world_size", world_size))
        position = state["batch_in_epoch"]
        if (old_world, saved.batch_size, saved.accum_steps) == (world_size, cfg.batch_size, cfg.accum_steps):
            return position
        old_plan = make_plan(saved, data.num_train_batches(saved.batch_size, old_world), old_world)
        old_micro, new_micro = saved.batch_size * old_world, cfg.batch_size * world_size
        same = (old_plan.global_batch == plan.global_batch and old_plan.steps_per_epoch == plan.steps_per_epoch
                and old_plan.micro_batches_per_epoch * old_micro == plan.micro_batches_per_epoch * new_micro)
        if not same or (position * old_micro) % new_micro:
            hint = (f"pass --batch-size {old_micro // world_size} --accum-steps {saved.accum_steps}"
                    if old_micro % world_size == 0 else
                    f"{world_size} processes cannot share its {old_micro} images per micro-batch evenly")
            raise ValueError(
                f"this run was trained with {old_world} process(es) x batch {saved.batch_size} x "
                f"{saved.accum_steps} accumulation step(s) = global batch {old_plan.global_batch}; resuming with "
                f"{world_size} x {cfg.batch_size} x {cfg.accum_steps} = {plan.global_batch} would change the run: "
                f"{hint} (the images of each step and the learning rate then stay the same)"
            )
        if cfg.batch_size != saved.batch_size and not cfg.sync_bn:
            say(f"note: batch norm (if the model has it) now sees {cfg.batch_size} images per device instead of "
                f"{saved.batch_size}; --sync-bn normalizes over the global micro-batch instead")
        say(f"resuming a run of {old_world} process(es) x batch {saved.batch_size} x {saved.accum_steps} as "
            f"{world_size} x {cfg.batch_size} x {cfg.accum_steps}: the same global batch {plan.global_batch}")
        return position * old_micro // new_micro

    # ---- random streams

    def seed_streams(self, cfg: Any) -> None:
        """After the model is built (the same weights everywhere): each process's own random stream, if it needs
        one."""

    def rank_rng(self, state: dict[str, Any], cfg: Any) -> dict[str, Any]:
        """This process's RNG state from a checkpoint: its own stream when the checkpoint has one for it; a process
        of a larger world than the checkpoint's starts a fresh stream of its own."""
        ranks = state.get("rng_ranks") or state.get("rng_stages") or [state["rng"]]
        if self.ctx.rank < len(ranks):
            return ranks[self.ctx.rank]
        seed_everything(derive_seed(cfg.seed, RANK_STREAM, self.ctx.rank, state["step"]))
        return capture_rng_state()

    # ---- what the run prints and records

    def describe(self, placement: Placement) -> tuple[list[str], dict[str, Any]]:
        """Lines printed at start after the engine's, and the entries this strategy adds to run.json."""
        return [], {}


class SingleDevice(Strategy):
    """One process on one device."""

    name = "one device"

    def check(self, cfg: Any) -> None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            raise ValueError(f"this process was started by torchrun with {world} processes, but the one-device "
                             "strategy runs alone: train with convcanon.parallel.strategy_for(cfg) (what `convcanon "
                             "train` does) or start one process")

__all__ = ["Placement", "RANK_STREAM", "SingleDevice", "Strategy"]
