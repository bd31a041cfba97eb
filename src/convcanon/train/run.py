"""The run skeleton: one training run from its settings to its final weights, for every parallel strategy.

The skeleton owns the run directory, resume, seeding, the data, logging, checkpoints, evaluation, the final weights
and the summary; a strategy (``train.strategy``: one device; ``convcanon.parallel``: data parallel, pipeline) owns
only what differs between them, and the engine's :class:`~convcanon.train.step.TrainStep` owns the step. A *step* is
one optimizer update, everywhere: schedule, logs, checkpoints, ``max_steps``.

The order of a run: settings checked (``train.settings``: nothing created, opened or written yet); the process group;
the run directory claimed (or the newest valid checkpoint found); seeds; the data; the model (the same weights on
every process); the engine's choices; the plan (global batch, scaled LR, warmup); the model placed by the strategy;
the checkpoint's state restored; the run's files written and its plan printed; then epochs of steps, each epoch
ending in an exact evaluation and a checkpoint; last the final weights (``model.safetensors``) and ``summary.json``.
A standard set named without a path (``--data cifar10``) is downloaded before the run directory is claimed.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.recipe import describe_info
from ..io import RunLock, atomic_write_json, atomic_write_text, remove_stale_temps
from . import checkpoint as ckpt
from . import engine as engine_lib
from .config import TrainConfig, dump_yaml, to_dict
from .distributed import restart_count
from .ema import ModelEma, better, resolve_model_ema
from .evaluate import eval_batch_size
from .finetune import InitWeights, apply_init, freeze, read_init
from .metrics import MetricsLog
from .mixing import BatchMixing
from .optim import Plan, lr_at
from .progress import ema_words, eval_line, progress_for
from .reproducibility import restore_rng_state, seed_everything, set_deterministic
from .rundir import claim_new_run_dir, default_run_dir, restarted_run, run_facts
from .settings import build_model, check_settings
from .signals import RunInterrupted, StopSignals
from .step import NonFiniteLossError
from .strategy import SingleDevice, Strategy
from .task import describe_label_smoothing
from .weights import as_metadata, weights_record


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    epochs_done: int
    plan: Plan | None  # None when the run had finished before (nothing was trained)
    final: dict[str, Any] = field(default_factory=dict)  # last evaluation
    best_top1: float | None = None  # the best evaluation's top-1, of the model or of its average (best_weights)
    seconds: float = 0.0
    final_ema: dict[str, Any] = field(default_factory=dict)  # the weight average's last evaluation (--model-ema)
    weights: str = "raw"  # what model.safetensors holds: raw (the final weights) or ema (their average, when better)
    best_weights: str = "raw"  # which weights scored best_top1 (and best.pt's evaluation uses): raw or ema


def train(cfg: TrainConfig, *, resume: str | Path | None = None, strategy: Strategy | None = None,
          out_stream=None) -> RunResult:
    """Train ``cfg`` with ``strategy`` (default: one device); with ``resume``, continue the run in that directory
    from its newest valid checkpoint. ``convcanon.parallel.strategy_for(cfg)`` picks the strategy ``convcanon train``
    uses (data parallel under torchrun, the pipeline with ``pipeline_stages`` > 1)."""
    return Run(cfg, strategy or SingleDevice(), resume=resume, out_stream=out_stream).execute()


class Run:
    """One run of the skeleton (see the module docstring); :func:`train` is how it is used."""

    def __init__(self, cfg: TrainConfig, strategy: Strategy, *, resume: str | Path | None = None,
                 out_stream=None) -> None:
        self.cfg, self.strategy, self.resume = cfg, strategy, resume
        self.out_stream = out_stream or sys.stdout
        self.state: dict[str, Any] | None = None
        self.step, self.epoch, self.start_batch = 0, 0, 0
        self.best_top1: float | None = None
        self.best_weights = "raw"  # raw or ema: which of the two scored best_top1
        self.final: dict[str, Any] = {}
        self.final_ema: dict[str, Any] = {}
        self.eval_step: int | None = None  # the step of the last evaluation
        self.weights = "raw"
        self.saved_step: int | None = None

    def say(self, msg: str) -> None:
        if self.ctx.is_main:
            print(msg, file=self.out_stream, flush=True)

    def execute(self) -> RunResult:
        from ..data import fetch_data
        from ..data.scan import BadDataError

        t_start = time.perf_counter()
        data_spec = check_settings(self.cfg)  # before anything is created, opened or written
        self.strategy.check(self.cfg)
        self.ctx = self.strategy.setup(self.cfg)
        self.lock: RunLock | None = None
        try:
            # A standard set named without a path is downloaded (once) before the run directory exists: offline,
            # the error leaves nothing behind.
            fetch_data(data_spec, data_root=self.cfg.data_root, progress=self.cfg.progress and self.ctx.is_main)
            self._claim_run_dir()
            if self.finished is not None:
                return self._already_finished()
            self._build()
            self._write_run_files()
            self.train_seconds = 0.0
            with StopSignals() as self.signals:
                try:
                    while self.epoch < self.plan.epochs and not self._run_epoch():
                        pass
                except BadDataError as err:  # a file changed after the scan, found while reading a batch
                    raise BadDataError(f"{err}; the run stopped at step {self.step} and its checkpoints are intact: "
                                       f"fix the data (or pass --skip-bad), then continue with: convcanon train "
                                       f"--resume {self.run_dir}", path=err.path, reason=err.reason) from None
                finally:
                    self.progress.close()
            seconds = time.perf_counter() - t_start
            self._finish(seconds)
        finally:
            if getattr(self, "log", None) is not None:
                self.log.close()
            if self.lock is not None:
                self.lock.release()
        self.strategy.teardown()
        return RunResult(self.run_dir, self.step, self.epoch, self.plan, self.final, self.best_top1, seconds,
                         self.final_ema, self.weights, self.best_weights)

    # ---- start

    def _claim_run_dir(self) -> None:
        """Lock the run directory (a new one, or the one resumed) and read the newest valid checkpoint."""
        cfg, main = self.cfg, self.ctx.is_main
        if self.resume is None and (restarted := restarted_run(cfg)) is not None:
            self.say(f"torchrun restart {restart_count()}: continuing the run in {restarted}")
            self.resume = restarted
        self.run_dir = Path(self.resume) if self.resume else Path(cfg.out) if cfg.out else default_run_dir(cfg)
        self.finished = None
        if not self.resume:
            self.lock = claim_new_run_dir(self.run_dir) if main else None
            return
        if main:
            self.lock = RunLock(self.run_dir).acquire("convcanon train --resume")
            remove_stale_temps(self.run_dir)  # what writes killed with the process before left behind
        found = ckpt.load_latest(self.run_dir)
        if found is None:
            return
        self.state, self.state_path = found
        self.strategy.check_resumable(self.state, self.run_dir, self.state_path)
        if self.state.get("model_name", cfg.model) != cfg.model:
            raise ValueError(f"{self.state_path} is a checkpoint of {self.state['model_name']}, but the run in "
                             f"{self.run_dir} trains {cfg.model}: remove the file that does not belong there")
        summary = self.run_dir / "summary.json"
        if self.state["epoch"] >= cfg.epochs and summary.exists():
            self.finished = json.loads(summary.read_text())
            return
        self.say(f"resuming from {self.state_path} (step {self.state['step']})")

    def _already_finished(self) -> RunResult:
        """Resuming a run that has finished: say so and change nothing."""
        done, final = self.finished, self.finished.get("final") or {}
        top1 = f", test top-1 {final['top1']:.2f}%" if "top1" in final else ""
        self.say(f"the run in {self.run_dir} is finished ({done.get('steps')} steps{top1}); nothing to do (pass a "
                 f"larger --epochs than {self.cfg.epochs} to train it further)")
        self.strategy.teardown()
        return RunResult(self.run_dir, self.state["step"], self.state["epoch"], None, final, done.get("best_top1"),
                         0.0, done.get("final_ema") or {}, done.get("weights", "raw"), done.get("best_weights", "raw"))

    def _build(self) -> None:
        """Seeds, data, model, engine, plan, placement, and the checkpoint's state when resuming."""
        from ..data import open_data
        from ..data.recipe import AugmentOptions

        state = self.state
        init = self._read_init() if self.cfg.init is not None and state is None else None  # may set mean and std
        cfg, ctx = self.cfg, self.ctx
        set_deterministic(cfg.deterministic)
        seed_everything(cfg.seed)
        self.data = open_data(cfg.data, image_size=cfg.image_size, skip_bad=cfg.skip_bad, workers=cfg.workers,
                              progress=cfg.progress and ctx.is_main, decode=cfg.decode, data_root=cfg.data_root,
                              augment=AugmentOptions.from_mapping(to_dict(cfg)), ra_reps=cfg.ra_reps,
                              cache=cfg.data_cache)
        info = self.data.info
        model = build_model(cfg.model, cfg.model_options, num_classes=info.num_classes, in_chans=info.in_chans,
                            image_size=info.image_size, for_what=f"--data {cfg.data}")  # the same weights everywhere
        self.init_facts: dict[str, Any] | None = None
        if init is not None:  # a resumed run's weights are its checkpoint's
            self.init_facts = apply_init(model, init, self.say)
        freeze(model, cfg.freeze, cfg.head_lr_mult, self.say)
        self.engine = engine_lib.engine_for(cfg, ctx.device, model, step_shape=self._step_shape(),
                                            agree=ctx.all_reduce_sum, data=(info.in_chans, info.image_size))
        if self.engine.amp_measured:  # decided for this step: config.yaml keeps it, so a resume computes alike
            self.cfg = cfg = dataclasses.replace(cfg, amp=self.engine.amp)
        self.plan = self.strategy.plan(cfg, self.data)
        self.placement = self.strategy.place(model, self.engine, cfg, info, self.say)
        self.mixing = BatchMixing.from_config(cfg, info.num_classes)
        use_ema, self.ema_reason = resolve_model_ema(cfg)
        self.ema = ModelEma.for_run(cfg, self.plan, self.placement.model) if use_ema else None
        if state is not None:
            try:
                self.strategy.load_state(self.placement, state)
            except (RuntimeError, KeyError) as err:  # another model's weights, or a damaged optimizer state
                raise ValueError(f"{self.state_path} does not fit this run ({cfg.model}): "
                                 f"{str(err).strip().splitlines()[0][:300]}") from None
            self.step, self.epoch = state["step"], state["epoch"]
            metrics = state.get("metrics", {})
            if state["batch_in_epoch"] == 0 and "top1" in metrics:  # written at the end of an epoch: its evaluation
                self.final = {k: v for k, v in metrics.items() if k not in ("best_top1", "best_weights", "ema")}
                self.final_ema, self.eval_step = metrics.get("ema", {}), self.step
            self.start_batch = self.strategy.resume_position(state, cfg, self.plan, self.data, self.say)
            self.best_top1 = metrics.get("best_top1")
            self.best_weights = metrics.get("best_weights", "raw")
            if self.ema is not None and "ema" in state:  # a checkpoint from before the average: it starts anew
                self.strategy.load_ema(self.placement, self.ema, state["ema"])

    def _step_shape(self) -> engine_lib.StepShape | None:
        """The step's input for the measured bf16-or-fp32 choice: new CPU runs, not pipelines (shapes per stage)."""
        cfg, info, cpu = self.cfg, self.data.info, self.ctx.device.type == "cpu"
        new_run = self.state is None and cfg.amp == "auto" and self.strategy.name != "pipeline" and cpu
        return engine_lib.StepShape.of(cfg.model, cfg.model_options, batch=cfg.batch_size, in_chans=info.in_chans,
                                       side=cfg.train_crop_size or info.image_size, num_classes=info.num_classes
                                       ) if new_run else None

    def _read_init(self) -> InitWeights:
        """``--init``'s weights, read before the data opens: a source that records how its inputs were normalized
        (torchvision's weights, a convcanon record) gives the run its mean and std unless ``--mean``/``--std`` are
        given; they go into the run's config, so that a resume normalizes the same way."""
        from ..data import parse_data

        cfg = self.cfg
        spec = parse_data(cfg.data, image_size=cfg.image_size, decode=cfg.decode, data_root=cfg.data_root)
        init = read_init(cfg.init, cfg.model, cfg.model_options, num_classes=spec.num_classes, in_chans=spec.in_chans)
        if init.mean and init.std and not cfg.mean and not cfg.std and len(init.mean) == spec.in_chans:
            mean, std = [round(m, 6) for m in init.mean], [round(v, 6) for v in init.std]
            self.cfg = dataclasses.replace(cfg, mean=mean, std=std)
            self.say(f"normalization from --init {cfg.init}: mean {mean}, std {std} (--mean/--std override it)")
        return init

    def _write_run_files(self) -> None:
        cfg, ctx, info, plan = self.cfg, self.ctx, self.data.info, self.plan
        lines, extra = self.strategy.describe(self.placement)
        if ctx.is_main:
            if self.state is None:
                atomic_write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
            atomic_write_json(self.run_dir / "run.json", self._run_record(extra))
        self.say(f"{cfg.model} on {info.name}: {info.train_size} train / {info.test_size} test images, "
                 f"{info.num_classes} classes, {info.in_chans}x{info.image_size}x{info.image_size}; device "
                 f"{ctx.device}, amp {self.engine.amp}, {ctx.world_size} process(es) ({self.strategy.name})")
        self.say(describe_info(info))
        self.say(plan.describe())
        regularizers = [describe_label_smoothing(cfg)]
        regularizers += [self.mixing.describe()] if self.mixing else []
        regularizers += [self.ema.describe(self.ema_reason)] if self.ema else [f"weight EMA: off ({self.ema_reason})"]
        for line in [*self.engine.describe(), *lines, *regularizers]:
            self.say(line)
        resumed = self.state is not None
        # A resumed run's log is cut back to its checkpoint (to nothing when there was none yet).
        self.log = MetricsLog(self.run_dir, enabled=ctx.is_main, resume_step=self.step if self.resume else None)
        if resumed:
            # Last: building the model and data consumed RNG; the checkpoint's state is what the next step expects.
            restore_rng_state(self.strategy.rank_rng(self.state, cfg))
        else:
            self.strategy.seed_streams(cfg)
        self.progress = progress_for(cfg.progress and ctx.is_main, plan, self.step, self.say)
        self.loss_window = torch.zeros((), device=ctx.device)  # summed step losses since the last log line
        self.window_steps, self.window_images, self.window_t0 = 0, 0, time.perf_counter()

    def _run_record(self, extra: dict[str, Any]) -> dict[str, Any]:
        """run.json: the plan, the engine, the strategy, the machine and the data. A resume keeps the command that
        started the run and appends its own to ``resumes``."""
        ctx = self.ctx
        record = {
            "plan": self.plan.__dict__, "amp": self.engine.amp, "engine": self.engine.as_dict(),
            "world_size": ctx.world_size, "backend": ctx.backend, "strategy": self.strategy.name, **extra,
            "model_ema": {"decay_per_update": self.ema.decay, "every_steps": self.ema.interval,
                          "why": self.ema_reason} if self.ema else None,
            "mixing": self.mixing.describe() if self.mixing else None,
            **run_facts(ctx.device), "data": dict(self.data.info.__dict__),
        }  # fmt: skip
        if self.init_facts is not None:
            record["init"] = self.init_facts
        path = self.run_dir / "run.json"
        if self.resume and path.exists():
            try:
                before = json.loads(path.read_text())
            except (OSError, ValueError):
                before = {}
            resumes = [*before.get("resumes", []), {"argv": record["argv"], "step": self.step,
                                                    "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                    "world_size": ctx.world_size}]
            record.update(argv=before.get("argv", record["argv"]), resumes=resumes)
            if "init" in before:  # where the run's weights started
                record["init"] = before["init"]
        return record

    # ---- the epochs

    def _run_epoch(self) -> bool:
        """Train from the current position to the end of the epoch (or ``max_steps``); True when the run stops early."""
        cfg, plan = self.cfg, self.plan
        nb, k = plan.micro_batches_per_epoch, plan.accum_steps
        step_fn = self.placement.step
        if cfg.max_steps and self.step >= cfg.max_steps:
            return True
        batches = iter(self.strategy.train_batches(self.data, self.epoch, cfg, self.start_batch))
        if self.mixing is not None:
            batches = self.mixing.batches(batches, self.epoch, self.start_batch)
        self.placement.model.train()
        step_fn.net.train()
        for group_start in range(self.start_batch, nb, k):
            count = min(k, nb - group_start)  # the last group of an epoch may be shorter
            lr = lr_at(self.step, plan)
            self.loss_window += step_fn(itertools.islice(batches, count), count, lr, self.step)
            self.step += 1
            if self.ema is not None and self.ema.due(self.step):
                self.strategy.sync_buffers(self.placement.model)
                self.ema.update(self.placement.model, self.step)
            self.window_steps += 1
            self.window_images += plan.global_batch if count == k else plan.global_batch // k * count
            self.progress.update(1)
            position = group_start + count
            if self._after_step(position, nb, lr):
                return True
            if self.strategy.any_process(self.signals.received is not None):
                self._stop_on_signal(position)
        self.epoch += 1
        self.start_batch = 0
        return False

    def _after_step(self, position: int, nb: int, lr: float) -> bool:
        """Logs, the non-finite check, evaluation and checkpoints due after a step; True when ``max_steps`` is
        reached."""
        cfg, step = self.cfg, self.step
        end_of_epoch = position == nb
        reached_max = bool(cfg.max_steps) and step >= cfg.max_steps
        checkpoint_now = bool(cfg.checkpoint_every) and step % cfg.checkpoint_every == 0
        log_now = step % cfg.log_every == 0 or end_of_epoch or reached_max
        if log_now or checkpoint_now:
            self._check_finite()
        if log_now:
            self._log_window(position / nb, lr)
        if end_of_epoch:
            self._evaluate_and_save()
        elif reached_max or checkpoint_now:
            self._save(position, self.epoch, self._best())
        return reached_max

    def _stop_on_signal(self, position: int) -> None:
        """A stop signal reached a process: every process checkpoints where it is (unless this step just did) and the
        run ends, resumable."""
        if self.saved_step != self.step:
            self._check_finite()
            self._save(position, self.epoch, self._best())
        self.progress.close()
        raise RunInterrupted(self.signals.received or signal.SIGTERM, self.step, self.run_dir)

    def _check_finite(self) -> None:
        first = self.placement.step.watch.first_bad_step(self.ctx)
        if first is None:
            return
        self.log.log("event", first, event="non-finite loss", epoch=self.epoch)
        self.log.close()
        self.progress.close()
        raise NonFiniteLossError(
            f"loss became inf or NaN at step {first + 1} (found at step {self.step}, epoch {self.epoch + 1}); stopped "
            f"before saving anything after it. The last good checkpoint in {self.run_dir / 'checkpoints'} is intact. "
            "Lower --lr, add --warmup-epochs or --grad-clip, or use --amp fp16 with its loss scaler."
        )

    def _log_window(self, epoch_fraction: float, lr: float) -> None:
        now = time.perf_counter()
        self.train_seconds += now - self.window_t0
        # The mean over every process's micro-batches, i.e. over the global batch (a collective: every process logs
        # at the same steps); one process's loss alone would be a sample of one shard. A pipeline's stages other than
        # the last hold zeros, so the sum is the last stage's loss.
        # Training top-1 over the same images, against their labels (a mixed image's by each label's weight:
        # ``task.errors``), in the same all-reduce.
        _, data_world = self.strategy.data_world()
        step_fn = self.placement.step
        totals = torch.stack([self.loss_window, step_fn.reset_errors().to(self.loss_window.dtype)])
        loss_sum, wrong = self.ctx.all_reduce_sum(totals).tolist()
        mean_loss = loss_sum / (self.window_steps * data_world)
        ips = self.window_images / max(now - self.window_t0, 1e-9)
        top1 = {"top1": 100.0 * (1.0 - wrong / self.window_images)} if step_fn.counts_errors else {}
        self.log.log("train", self.step, epoch=self.epoch + epoch_fraction, loss=mean_loss, lr=lr, images_per_s=ips,
                     **top1)
        self.progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}", img_s=f"{ips:.0f}")
        self.loss_window.zero_()
        self.window_steps, self.window_images, self.window_t0 = 0, 0, time.perf_counter()

    def _evaluate_and_save(self) -> None:
        t_eval = time.perf_counter()
        batch = eval_batch_size(self.cfg.batch_size)
        final = self.strategy.evaluate(self.placement, self.data, self.engine, batch)
        ema: dict[str, Any] = {}
        if self.ema is not None:  # beside the raw model, in the same precision, over the same exact split
            ema = self.strategy.evaluate_module(self.ema.module, self.data, self.engine, batch)
        self.window_t0 += time.perf_counter() - t_eval  # evaluation time is not training throughput
        # The best evaluation so far, of the model or of its average, whichever scored better at this one.
        scored = "ema" if ema and better(ema, final) else "raw"
        top1 = (ema if scored == "ema" else final)["top1"]
        is_best = self.best_top1 is None or top1 > self.best_top1
        if is_best:
            self.best_top1, self.best_weights = top1, scored
        self.final, self.final_ema, self.eval_step = final, ema, self.step
        self.log.log("eval", self.step, epoch=self.epoch + 1, **{k: v for k, v in final.items() if k != "confusion"},
                     **{f"ema_{k}": v for k, v in ema.items() if k not in ("confusion", "samples")})
        self.progress.write(eval_line(self.epoch + 1, self.plan.epochs, self.step, final))
        if ema:
            self.progress.write(eval_line(self.epoch + 1, self.plan.epochs, self.step, ema, "EMA "))
        metrics = {**final, **self._best(), **({"ema": ema} if ema else {})}
        self._save(0, self.epoch + 1, metrics, best=is_best)

    def _best(self) -> dict[str, Any]:
        """The best evaluation so far, as every checkpoint keeps it for a resumed run."""
        return {"best_top1": self.best_top1, "best_weights": self.best_weights}

    def _save(self, batch_in_epoch: int, epoch: int, metrics: dict[str, Any], best: bool = False) -> None:
        self.saved_step = self.step
        if self.ema is not None and self.ctx.distributed:  # a collective: every process holds the same average
            self.strategy.check_same_everywhere(self.ema.fingerprint(), "the weight average (--model-ema)")
        ema = self.strategy.ema_state(self.placement, self.ema) if self.ema is not None else None  # a collective
        part = self.strategy.checkpoint_state(self.placement)  # a collective; None except on the main process
        if part is None:
            return
        info = self.data.info
        ckpt.save_checkpoint(self.run_dir, {
            "format": "convcanon-checkpoint", "version": 1, **part, "step": self.step, "epoch": epoch,
            "batch_in_epoch": batch_in_epoch, "world_size": self.ctx.world_size, "classes": list(info.classes),
            "config": to_dict(self.cfg), "metrics": metrics, "model_name": self.cfg.model,
            "num_classes": info.num_classes, "in_chans": info.in_chans, "image_size": info.image_size,
            "weights": self.record(), **({"ema": ema} if self.ema is not None else {}),
        }, keep_last=self.cfg.keep_checkpoints, best=best)  # fmt: skip

    def record(self) -> dict[str, Any]:
        """What rebuilds the model these weights are (``train.weights``): name, options, classes, preprocessing."""
        info = self.data.info
        return weights_record(self.cfg.model, self.cfg.model_options, num_classes=info.num_classes,
                              in_chans=info.in_chans, classes=info.classes, preprocessing=info.preprocessing(),
                              data=info.spec)

    # ---- the end

    def _finish(self, seconds: float) -> None:
        final, ema, run_dir = self.final, self.final_ema, self.run_dir
        # The average when it evaluates better than the final weights (both after the last step; same on every rank).
        use_ema = bool(ema) and self.ema is not None and self.eval_step == self.step and better(ema, final)
        averaged = self.strategy.ema_weights(self.placement, self.ema) if use_ema else None  # a collective
        weights = self.strategy.full_state_dict(self.placement)  # a collective; None except on the main process
        if weights is None:
            return
        if use_ema:
            self.weights, weights = "ema", averaged
        ckpt.save_safetensors(weights, run_dir / "model.safetensors",
                              metadata=as_metadata({**self.record(), "chosen": self.weights}))
        shown = {"final": final, **({"final_ema": ema} if ema else {})}
        atomic_write_json(run_dir / "summary.json", {
            "steps": self.step, "epochs": self.epoch,
            **{key: {k: v for k, v in res.items() if k != "confusion"} for key, res in shown.items()},
            "weights": self.weights, "best_top1": self.best_top1, "best_weights": self.best_weights,
            "seconds": round(seconds, 2),
            "train_seconds": round(self.train_seconds, 2),
        })  # fmt: skip
        if final:
            best_of = " of the EMA" if self.best_weights == "ema" else ""
            self.say(f"done: {self.step} steps, test top-1 {final['top1']:.2f}% (best {self.best_top1:.2f}%{best_of})"
                     f"{ema_words(ema, self.weights)} in {seconds:.1f} s; weights in {run_dir / 'model.safetensors'}"
                     f"{' (the EMA)' if self.weights == 'ema' else ''}")
        else:
            why = f" (--max-steps {self.cfg.max_steps})" if self.cfg.max_steps else ""
            self.say(f"stopped at step {self.step}{why} after {seconds:.1f} s; continue with: convcanon train --resume "
                     f"{run_dir}")


__all__ = ["NonFiniteLossError", "Run", "RunInterrupted", "RunResult", "build_model", "eval_line", "train"]
