"""The training loop: one explicit path for every setting.

Mixed precision is one path (autocast does nothing when off; the GradScaler is a pass-through unless fp16), gradient
accumulation and DDP gradient sync are one path (``no_sync`` on all but the last micro-batch of a step), and the LR is
``lr_at(step)``. A *step* is one optimizer update.
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import __version__
from ..registry import create_model, model_info, model_options
from . import checkpoint as ckpt
from . import distributed
from . import engine as engine_lib
from .config import RESUME_OVERRIDABLE, TrainConfig, config_from_dict, dump_yaml, load_yaml, to_dict
from .evaluate import evaluate
from .metrics import MetricsLog
from .optim import Plan, build_optimizer, lr_at, make_plan
from .reproducibility import capture_rng_state, derive_seed, restore_rng_state, seed_everything, set_deterministic
from .task import ClassificationTask


class NonFiniteLossError(RuntimeError):
    """The loss became inf or NaN; the run stopped at the next check, before saving anything, checkpoints untouched."""


class NonFiniteWatch:
    """Remembers, on the device, the first optimizer step whose loss was inf or NaN, so that the training step needs no
    host-device sync: the host reads it only where the loop syncs anyway (each log line, before each checkpoint and
    evaluation). Steps after a bad one are garbage but never saved: the check runs before anything is written, so the
    newest checkpoint is the last good state (at most ``--log-every`` steps of wasted compute, instead of one stall of
    the GPU's queue per step)."""

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((), -1, dtype=torch.long, device=device)

    def see(self, loss: Tensor, step: int) -> None:
        """Record ``step`` (0-based) if ``loss`` is not finite and no earlier step was; device-side only."""
        # A Python scalar enters the kernel as an argument: no host-to-device copy.
        self.first = torch.where((self.first < 0) & ~torch.isfinite(loss), step, self.first)

    def first_bad_step(self, ctx: Any) -> int | None:
        """The first bad step on any rank (a collective: every rank calls it at the same steps), or None."""
        bad = ctx.all_reduce_max((self.first >= 0).float())
        if not bad.item():
            return None
        # -1 (no bad step on this rank) must not win the minimum: negate and take the maximum of the rest.
        flipped = torch.where(self.first >= 0, -self.first, torch.full_like(self.first, -(2**62)))
        return int(-ctx.all_reduce_max(flipped).item())


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    epochs_done: int
    plan: Plan
    final: dict[str, Any] = field(default_factory=dict)  # last evaluation
    best_top1: float | None = None
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Run directory


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = cfg.data.split(":")[0]
    return Path("runs") / f"{cfg.model}-{data}-{stamp}"


def prepare_new_run_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path}: exists and is not a directory")
    if path.exists() and any(path.iterdir()):
        if (path / "config.yaml").exists():
            raise ValueError(f"--out {path} already holds a run: continue it with --resume {path}, or pick a new --out")
        raise ValueError(f"--out {path} is not empty: pick a new or empty directory")
    path.mkdir(parents=True, exist_ok=True)


def resume_config(run_dir: str | Path, overrides: dict[str, Any], given: set[str]) -> TrainConfig:
    """The config of the run in ``run_dir``, with the keys a resume may change taken from ``overrides``."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"--resume {run_dir}: no config.yaml there; is it a convcanon run directory?")
    saved = load_yaml(cfg_path)
    conflicts = []
    for key in sorted(given):
        if key in ("out",):
            continue
        if key in RESUME_OVERRIDABLE:
            saved[key] = overrides[key]
        elif overrides.get(key) != saved.get(key):
            conflicts.append(f"--{key.replace('_', '-')} {overrides.get(key)!r} (run has {saved.get(key)!r})")
    if conflicts:
        raise ValueError(
            f"--resume {run_dir}: these settings differ from the run being continued: {'; '.join(conflicts)}. "
            f"Only {', '.join(sorted(RESUME_OVERRIDABLE))} may change on resume."
        )
    saved["out"] = str(run_dir)
    return config_from_dict(saved, where=str(cfg_path))


# ---------------------------------------------------------------------------------------------------------------------
# Engine settings


# Precision, memory format, compilation, cuDNN autotuning and activation checkpointing are resolved once by
# engine.resolve_engine (auto rules documented there), printed at start, and applied by the Engine.
resolve_amp, autocast_factory = engine_lib.resolve_amp, engine_lib.autocast_factory  # kept importable from here


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    info = model_info(cfg.model)
    options = dict(cfg.model_options)
    if "in_chans" in model_options(cfg.model) and "in_chans" not in options:
        options["in_chans"] = in_chans
    elif options.get("in_chans", info.input_size[0]) != in_chans:
        raise ValueError(
            f"--model {cfg.model} takes {options.get('in_chans', info.input_size[0])}-channel input but --data "
            f"{cfg.data} has {in_chans} channel(s)"
        )
    model = create_model(cfg.model, num_classes=num_classes, **options)
    min_size = getattr(model, "min_size", 1)
    if image_size < min_size:
        raise ValueError(
            f"--model {cfg.model} needs inputs of at least {min_size}x{min_size} pixels; --data {cfg.data} gives "
            f"{image_size}x{image_size}: pass --image-size {min_size} (or larger) or pick a small-image model"
        )
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Resuming on a restart or on another number of processes


def restarted_run(cfg: TrainConfig) -> Path | None:
    """Under ``torchrun --max-restarts N``, a restarted worker continues the run its first attempt began in ``--out``
    (torchrun starts the same command again; without this it would refuse the non-empty ``--out``)."""
    if distributed.restart_count() == 0 or not cfg.out:
        return None
    out = Path(cfg.out)
    return out if (out / "config.yaml").exists() else None


def resume_position(state: dict[str, Any], cfg: TrainConfig, plan: Plan, data, world_size: int, say) -> int:
    """The micro-batch (of ``cfg.batch_size`` x ``world_size`` images) to continue the checkpoint's epoch at.

    Same world size and batch: the checkpoint's own position (bit-exact on CPU). Another world size (or per-device
    batch, or accumulation) is supported when the global batch and the images used per epoch stay the same, e.g. 2
    processes x 32 -> 1 x 64 or 4 x 16: the data order is a function of the global position only, so every step sees
    the same images and learning rate; sums are grouped differently, so the weights agree to rounding, not bit for
    bit. In practice: keep ``--accum-steps`` and give ``--batch-size`` = old batch x old processes / new processes
    (changing the accumulation changes which incomplete micro-batch ends an epoch). Anything else would be a
    different run and is refused, naming the batch size that would fit.
    """
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
            f"this run was trained with {old_world} process(es) x batch {saved.batch_size} x {saved.accum_steps} "
            f"accumulation step(s) = global batch {old_plan.global_batch}; resuming with {world_size} x "
            f"{cfg.batch_size} x {cfg.accum_steps} = {plan.global_batch} would change the run: {hint} (the images of "
            "each step and the learning rate then stay the same)"
        )
    if cfg.batch_size != saved.batch_size and not cfg.sync_bn:
        say(f"note: batch norm (if the model has it) now sees {cfg.batch_size} images per device instead of "
            f"{saved.batch_size}; --sync-bn normalizes over the global micro-batch instead")
    say(f"resuming a run of {old_world} process(es) x batch {saved.batch_size} x {saved.accum_steps} as {world_size} x "
        f"{cfg.batch_size} x {cfg.accum_steps}: the same global batch {plan.global_batch}")
    return position * old_micro // new_micro


# ---------------------------------------------------------------------------------------------------------------------
# The loop


def train(cfg: TrainConfig, *, resume: str | Path | None = None, out_stream=None) -> RunResult:
    """Train ``cfg``; with ``resume``, continue the run in that directory from its newest valid checkpoint."""
    from ..data import open_data

    if cfg.pipeline_stages > 1:
        from ..parallel.pipeline import train_pipeline

        return train_pipeline(cfg, resume=resume, out_stream=out_stream)
    out_stream = out_stream or sys.stdout
    ctx = distributed.setup(cfg.device, cfg.dist_backend, cfg.dist_timeout)
    say = (lambda msg: print(msg, file=out_stream, flush=True)) if ctx.is_main else (lambda msg: None)
    t_start = time.perf_counter()
    if resume is None and (resume := restarted_run(cfg)) is not None:
        say(f"torchrun restart {distributed.restart_count()}: continuing the run in {resume}")

    run_dir = Path(resume) if resume else Path(cfg.out) if cfg.out else default_run_dir(cfg)
    state = None
    if resume:
        found = ckpt.load_latest(run_dir)
        if found is not None:
            state, path = found
            say(f"resuming from {path} (step {state['step']})")
    elif ctx.is_main:
        prepare_new_run_dir(run_dir)

    set_deterministic(cfg.deterministic)
    seed_everything(cfg.seed)
    data = open_data(
        cfg.data, image_size=cfg.image_size, skip_bad=cfg.skip_bad, workers=cfg.workers,
        progress=cfg.progress and ctx.is_main, decode=cfg.decode,
    )  # fmt: skip
    info = data.info
    model = build_model(cfg, info.num_classes, info.in_chans, info.image_size)
    engine = engine_lib.engine_for(cfg, ctx.device, model)
    amp, autocast = engine.amp, engine.autocast
    plan = make_plan(cfg, data.num_train_batches(cfg.batch_size, ctx.world_size), ctx.world_size)

    model = engine.prepare_model(model)
    if cfg.sync_bn and ctx.distributed:
        from ..parallel.sync_batchnorm import convert_sync_batchnorm

        model = convert_sync_batchnorm(model, ctx.device)
    optimizer = build_optimizer(model, cfg, ctx.device)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp == "fp16")
    task = ClassificationTask(label_smoothing=cfg.label_smoothing, aux_weight=cfg.aux_weight)

    step, epoch, start_batch, best_top1 = 0, 0, 0, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch = state["step"], state["epoch"]
        start_batch = resume_position(state, cfg, plan, data, ctx.world_size, say)
        best_top1 = state.get("metrics", {}).get("best_top1")

    # The raw module holds the weights we save; `net` is what runs (maybe DDP-wrapped, maybe compiled).
    raw = model
    net: nn.Module = model
    if ctx.distributed:
        ddp_device = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ddp_device)
    net = engine.maybe_compile(net, say)

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if state is None:
            ckpt.atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
        ckpt.atomic_write_json(run_dir / "run.json", {
            "plan": plan.__dict__, "amp": amp, "engine": engine.as_dict(), "device": str(ctx.device),
            "device_name": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else platform.processor()
            or platform.machine(),
            "world_size": ctx.world_size, "backend": ctx.backend, "convcanon": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "git_commit": git_commit(), "argv": sys.argv,
            "data": {k: v for k, v in info.__dict__.items()}, "threads": torch.get_num_threads(),
        })  # fmt: skip
    say(f"{cfg.model} on {info.name}: {info.train_size} train / {info.test_size} test images, "
        f"{info.num_classes} classes, {info.in_chans}x{info.image_size}x{info.image_size}; device {ctx.device}, "
        f"amp {amp}, {ctx.world_size} process(es)")
    say(plan.describe())
    for line in engine.describe():
        say(line)
    log = MetricsLog(run_dir, enabled=ctx.is_main, resume_step=step if state is not None else None)

    if state is not None:
        # Last: building the model and data above consumed RNG; the checkpoint's state is what the next step expects.
        restore_rng_state(_rank_rng(state, ctx, cfg.seed))
    elif ctx.distributed and ctx.rank > 0:
        # Every rank seeded alike above, so the initial weights agree; from here each rank draws its own dropout masks
        # (identical masks on every shard would be one mask for the global batch, repeated). Rank 0 keeps the
        # single-process stream.
        seed_everything(derive_seed(cfg.seed, _RANK_STREAM, ctx.rank))

    def save(batch_in_epoch: int, ep: int, metrics: dict[str, Any], best: bool = False) -> None:
        rng = capture_rng_state()
        rng_ranks: list[Any] | None = [rng]
        if ctx.distributed:  # every rank's stream, so that a resume continues each one (a collective)
            rng_ranks = [None] * ctx.world_size if ctx.is_main else None
            torch.distributed.gather_object(rng, rng_ranks, dst=0)
        if not ctx.is_main:
            return
        ckpt.save_checkpoint(run_dir, {
            "format": "convcanon-checkpoint", "version": 1, "model": raw.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "step": step, "epoch": ep, "batch_in_epoch": batch_in_epoch, "rng": rng, "rng_ranks": rng_ranks,
            "world_size": ctx.world_size,
            "classes": list(info.classes), "config": to_dict(cfg), "metrics": metrics,
            "model_name": cfg.model, "num_classes": info.num_classes, "in_chans": info.in_chans,
            "image_size": info.image_size,
        }, keep_last=cfg.keep_checkpoints, best=best)  # fmt: skip

    nb, k = plan.micro_batches_per_epoch, plan.accum_steps
    watch = NonFiniteWatch(ctx.device)

    def check_finite(ep: int) -> None:
        first = watch.first_bad_step(ctx)
        if first is None:
            return
        log.log("event", first, event="non-finite loss", epoch=ep)
        log.close()
        raise NonFiniteLossError(
            f"loss became inf or NaN at step {first + 1} (found at step {step}, epoch {ep + 1}); stopped before "
            f"saving anything after it. The last good checkpoint in {run_dir / 'checkpoints'} is intact. Lower --lr, "
            "add --warmup-epochs or --grad-clip, or use --amp fp16 with its loss scaler."
        )

    final: dict[str, Any] = {}
    stop = False
    loss_window = torch.zeros((), device=ctx.device)  # summed loss since the last log line, kept on the device
    window_steps, window_images, window_t0 = 0, 0, time.perf_counter()
    train_seconds = 0.0
    progress = _progress(cfg.progress and ctx.is_main, plan, step, say)
    net.train()
    while epoch < plan.epochs and not stop:
        group_loss = torch.zeros((), device=ctx.device)
        for b, (x, y) in enumerate(
            data.train_batches(epoch, cfg.batch_size, seed=cfg.seed, start=start_batch, rank=ctx.rank,
                               world_size=ctx.world_size, device=ctx.device),
            start=start_batch,
        ):
            group_start = (b // k) * k
            group_len = min(k, nb - group_start)  # the last group of an epoch may be shorter
            last_micro = b == group_start + group_len - 1
            x = engine.prepare_input(x)
            sync = contextlib.nullcontext() if last_micro or not ctx.distributed else net.no_sync()
            with sync:
                with autocast():
                    loss = task.loss(net(x), y)
                # Mean over the group's micro-batches, so k micro-batches of b equal one batch of k*b.
                scaler.scale(loss / group_len).backward()
            group_loss += loss.detach() / group_len
            if not last_micro:
                continue

            lr = lr_at(step, plan)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if scaler.is_enabled():
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
                scaler.step(optimizer)  # skips the step when a gradient is inf/NaN, then lowers the scale
                scaler.update()
            else:
                watch.see(group_loss, step)
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_window += group_loss
            group_loss = torch.zeros((), device=ctx.device)
            window_steps += 1
            window_images += plan.global_batch if group_len == k else cfg.batch_size * ctx.world_size * group_len
            progress.update(1)

            end_of_epoch = b == nb - 1
            reached_max = bool(cfg.max_steps) and step >= cfg.max_steps
            checkpoint_now = bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0
            if step % cfg.log_every == 0 or end_of_epoch or reached_max or checkpoint_now:
                check_finite(epoch)
            if step % cfg.log_every == 0 or end_of_epoch or reached_max:
                now = time.perf_counter()
                train_seconds += now - window_t0
                # The mean over every rank's micro-batches, i.e. over the global batch (a collective: every rank logs
                # at the same steps); rank 0's own loss alone would be a sample of one shard.
                mean_loss = ctx.all_reduce_sum(loss_window).item() / (window_steps * ctx.world_size)
                ips = window_images / max(now - window_t0, 1e-9)
                log.log("train", step, epoch=epoch + (b + 1) / nb, loss=mean_loss, lr=lr, images_per_s=ips)
                progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}", img_s=f"{ips:.0f}")
                loss_window.zero_()
                window_steps, window_images, window_t0 = 0, 0, time.perf_counter()

            if end_of_epoch:
                t_eval = time.perf_counter()
                final = evaluate(net, data, ctx, batch_size=max(cfg.batch_size, 256), autocast=autocast,
                                 channels_last=engine.channels_last)
                window_t0 += time.perf_counter() - t_eval  # evaluation time is not training throughput
                is_best = best_top1 is None or final["top1"] > best_top1
                best_top1 = final["top1"] if is_best else best_top1
                log.log("eval", step, epoch=epoch + 1, **{k2: v for k2, v in final.items() if k2 != "confusion"})
                progress.write(eval_line(epoch + 1, plan.epochs, step, final))
                save(0, epoch + 1, {**final, "best_top1": best_top1}, best=is_best)
            elif reached_max or checkpoint_now:
                save(b + 1, epoch, {"best_top1": best_top1})
            if reached_max:
                stop = True
                break
        if not stop:
            epoch += 1
        start_batch = 0
    progress.close()

    seconds = time.perf_counter() - t_start
    if ctx.is_main:
        ckpt.save_safetensors(
            {k2: v.detach().cpu() for k2, v in raw.state_dict().items()}, run_dir / "model.safetensors",
            metadata={"model": cfg.model, "num_classes": str(info.num_classes), "in_chans": str(info.in_chans),
                      "classes": "\n".join(info.classes), "convcanon": __version__},
        )  # fmt: skip
        ckpt.atomic_write_json(run_dir / "summary.json", {
            "steps": step, "epochs": epoch, "final": {k2: v for k2, v in final.items() if k2 != "confusion"},
            "best_top1": best_top1, "seconds": round(seconds, 2), "train_seconds": round(train_seconds, 2),
        })  # fmt: skip
        if final:
            say(f"done: {step} steps, test top-1 {final['top1']:.2f}% (best {best_top1:.2f}%) in {seconds:.1f} s; "
                f"weights in {run_dir / 'model.safetensors'}")
        else:
            say(f"stopped after {step} steps in {seconds:.1f} s; continue with --resume {run_dir}")
    log.close()
    distributed.teardown(ctx)
    return RunResult(run_dir, step, epoch, plan, final, best_top1, seconds)


_RANK_STREAM = 0x52414E4B  # a constant part of the per-rank seed, apart from (seed, epoch, index) of the data


def _rank_rng(state: dict[str, Any], ctx: Any, seed: int) -> dict[str, Any]:
    """This rank's RNG state from a checkpoint: its own stream when the checkpoint has one for it (same world size, or
    a rank that existed before); a new rank of a larger world starts a fresh stream of its own (rank 0's would repeat
    rank 0's masks). Checkpoints from before per-rank streams hold only ``rng``."""
    ranks = state.get("rng_ranks") or [state["rng"]]
    if ctx.rank < len(ranks):
        return ranks[ctx.rank]
    seed_everything(derive_seed(seed, _RANK_STREAM, ctx.rank, state["step"]))
    return capture_rng_state()


def eval_line(epoch: int, epochs: int, step: int, result: dict[str, Any]) -> str:
    top5 = f", top-5 {result['top5']:.2f}%" if "top5" in result else ""
    return (f"epoch {epoch}/{epochs} (step {step}): test loss {result['loss']:.4f}, top-1 {result['top1']:.2f}%"
            f"{top5} on {result['samples']} images")


class _Lines:
    """Progress without a bar (not a terminal, or --no-progress): only the per-epoch lines, through ``say``."""

    def __init__(self, say) -> None:
        self.write = say

    def update(self, n: int) -> None: ...
    def set_postfix(self, **kw: Any) -> None: ...
    def close(self) -> None: ...


def _progress(enabled: bool, plan: Plan, initial: int, say):
    if not enabled or not sys.stderr.isatty():
        return _Lines(say)
    from tqdm.auto import tqdm

    return tqdm(total=plan.total_steps, initial=initial, unit="step", dynamic_ncols=True, leave=False)


__all__ = ["train", "RunResult", "NonFiniteLossError", "resume_config", "resolve_amp"]
