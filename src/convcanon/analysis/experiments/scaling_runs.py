"""The runs of the scaling experiment (``analysis.experiments.scaling``): the training engine run once, in pairs
whose parameters are compared step by step, and under torchrun against one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def _run_session(cmd: list[str], env: dict[str, str], timeout_s: float) -> tuple[int, str]:
    """Run ``cmd`` in a session of its own; on timeout kill the whole session (torchrun and its workers), not only
    torchrun. Returns (exit code, the output's tail)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return proc.returncode, output[-3000:]


def _parameter_names(model: str, model_options: dict[str, Any] | None = None, in_chans: int = 1) -> list[str]:
    import torch

    from ... import create_model

    with torch.device("meta"):
        net = create_model(model, num_classes=10, in_chans=in_chans, **(model_options or {}))
    return [n for n, _ in net.named_parameters()]


def _step_diffs(run_a: Path, run_b: Path, names: list[str], steps: int) -> tuple[list[float], float]:
    """Max |parameter difference| after each step 1..steps (from the per-step checkpoints), and max |parameter|."""
    from ...train.checkpoint import checkpoint_path, load_checkpoint

    diffs, scale = [], 0.0
    for step in range(1, steps + 1):
        pa, pb = checkpoint_path(run_a, step), checkpoint_path(run_b, step)
        if not (pa.exists() and pb.exists()):
            break
        a, b = load_checkpoint(pa)["model"], load_checkpoint(pb)["model"]
        diffs.append(max(float((a[n].double() - b[n].double()).abs().max()) for n in names))
        scale = max(float(a[n].abs().max()) for n in names)
    return diffs, scale


def _curves(run_dir: Path) -> dict[str, Any]:
    from ...train.metrics import read_metrics

    records = read_metrics(run_dir)
    train = [(r["step"], r["epoch"], r["loss"]) for r in records if r.get("kind") == "train"]
    evals = [(r["step"], r["epoch"], r["top1"], r["loss"]) for r in records if r.get("kind") == "eval"]
    ips = [r["images_per_s"] for r in records if r.get("kind") == "train" and "images_per_s" in r]
    return {"train": train, "eval": evals, "images_per_s": sorted(ips)[len(ips) // 2] if ips else None}


def _train(cfg_values: dict[str, Any], out: Path, track_steps: int = 0) -> dict[str, Any]:
    """One ``convcanon.train.train`` run into ``out``; with ``track_steps``, a checkpoint after each of those steps."""
    import io
    import time

    from ...train.config import config_from_dict
    from ...train.run import train

    values = {"progress": False, "log_every": 1, "keep_checkpoints": 1, **cfg_values, "out": str(out)}
    if track_steps:
        values.update(checkpoint_every=1, keep_checkpoints=10**6)
    cfg = config_from_dict(values, where="scaling experiment")
    log = io.StringIO()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = train(cfg, out_stream=log)
    except Exception as err:  # noqa: BLE001 - a diverged or failed run is a result here, not a crash of the report
        return {"ok": False, "error": f"{type(err).__name__}: {err}"[:500], "log": log.getvalue()[-2000:],
                **(_curves(out) if (out / "metrics.jsonl").exists() else {})}
    return {"ok": True, "steps": result.steps, "final": result.final, "seconds": round(time.perf_counter() - t0, 3),
            "cpu_seconds": round(time.process_time() - c0, 3), **_curves(out)}


def engine_run(config: dict[str, Any]) -> dict[str, Any]:
    """One run of ``convcanon.train.train`` in a temporary run directory; returns its curves and final metrics."""
    with tempfile.TemporaryDirectory(prefix="convcanon-scaling-") as tmp:
        return _train(config, Path(tmp) / "run")


def engine_pair(a: dict[str, Any], b: dict[str, Any], track_steps: int, threads_b: int = 1) -> dict[str, Any]:
    """Two engine runs and the largest parameter difference between them after each of the first steps; run ``b``
    on ``threads_b`` threads (2 for the rounding reference: only the float summation order changes)."""
    import torch

    with tempfile.TemporaryDirectory(prefix="convcanon-pair-") as tmp:
        threads = torch.get_num_threads()
        ra = _train(a, Path(tmp) / "a", track_steps)
        torch.set_num_threads(threads_b)
        try:
            rb = _train(b, Path(tmp) / "b", track_steps)
        finally:
            torch.set_num_threads(threads)
        out: dict[str, Any] = {"a": ra, "b": rb, "ok": ra["ok"] and rb["ok"]}
        if out["ok"]:
            names = _parameter_names(a["model"], a.get("model_options"))
            out["step_diffs"], out["max_param"] = _step_diffs(Path(tmp) / "a", Path(tmp) / "b", names, track_steps)
        return out


def ddp_pair(model: str, batch_size: int, steps: int, lr: float, timeout_s: int, sync_bn: bool,
             seed: int, data: str = "digits") -> dict[str, Any]:
    """torchrun with 2 processes x ``batch_size`` vs one process: accumulation of 2 x ``batch_size`` (same micro-
    batches), or with ``sync_bn`` one batch of 2 x ``batch_size`` (same batch statistics)."""
    import torch

    common = {"model": model, "data": data, "lr": lr, "base_batch": 256, "warmup_epochs": 0.0, "epochs": 1,
              "max_steps": steps, "seed": seed, "deterministic": True, "device": "cpu", "schedule": "constant",
              "amp": "off", "label_smoothing": 0.0, "model_ema": False}  # the plain step: no default recipe
    with tempfile.TemporaryDirectory(prefix="convcanon-ddp-") as tmp:
        ddp_dir, single_dir = Path(tmp) / "ddp", Path(tmp) / "single"
        flags = ["--model", model, "--data", data, "--batch-size", str(batch_size), "--lr", str(lr),
                 "--base-batch", "256", "--warmup-epochs", "0", "--schedule", "constant", "--epochs", "1",
                 "--max-steps", str(steps),
                 "--seed", str(seed), "--deterministic", "--device", "cpu", "--amp", "off", "--no-progress",
                 "--log-every", "1", "--label-smoothing", "0", "--no-model-ema"]
        flags += ["--sync-bn"] if sync_bn else []
        tracking = ["--checkpoint-every", "1", "--keep-checkpoints", str(steps + 1), "--out", str(ddp_dir)]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
               "-m", "convcanon", "train", *flags, *tracking]
        src = str(Path(__file__).resolve().parents[3])  # the directory holding the convcanon package
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)}
        shown = "torchrun --nproc-per-node 2 -m convcanon train " + " ".join(flags)
        try:
            returncode, tail = _run_session(cmd, env, timeout_s)
            failed = returncode != 0 or not (ddp_dir / "model.safetensors").exists()
            error = f"exit code {returncode}" if failed else None
        except (OSError, subprocess.TimeoutExpired) as err:
            failed, error, tail = True, f"{type(err).__name__}: {err}", ""
        if failed:
            return {"ok": False, "command": shown, "error": error, "output_tail": tail, "sync_bn": sync_bn}
        single_cfg = {**common, "batch_size": batch_size, "accum_steps": 2} if not sync_bn else \
            {**common, "batch_size": 2 * batch_size}
        torch.set_num_threads(1)
        single = _train(single_cfg, single_dir, track_steps=steps)
        if not single["ok"]:
            return {"ok": False, "command": shown, "error": f"the one-process run failed: {single['error']}",
                    "sync_bn": sync_bn}
        diffs, scale = _step_diffs(ddp_dir, single_dir, _parameter_names(model), steps)
        return {"ok": True, "command": shown, "sync_bn": sync_bn, "steps": steps, "step_diffs": diffs,
                "max_param": scale,
                "single": f"accumulation 2 x {batch_size}" if not sync_bn else f"one batch of {2 * batch_size}"}


__all__ = ["ddp_pair", "engine_pair", "engine_run"]
