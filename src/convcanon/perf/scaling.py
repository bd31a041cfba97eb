"""Data-parallel scaling: images/s of the DDP training step with 1, 2, ... processes, and the scaling efficiency.

Weak scaling, as data-parallel training is used: every process keeps ``batch_size`` images, so N processes train on
an N times larger global batch; efficiency(N) = images/s(N) / (N x images/s(1)). Each process count runs in its own
``torchrun --standalone --nproc-per-node N`` (the stock launcher, gloo on CPU, NCCL on GPUs), timing ``steps`` of the
engine's training step (``train.step.TrainStep``: forward, loss, backward with the gradient all-reduce, the optimizer
update; with the engine's choices for the device, as ``convcanon train`` runs it) on random images held on the device,
after ``warmup`` untimed ones. On CPU the machine's cores are shared: each process gets cores // N threads,
so on one machine the figure shows what the all-reduce and the smaller per-process thread count cost, not more
compute.

    python -m convcanon.perf.scaling --nproc 1 2 --model resnet20 --batch-size 64 --image-size 32 --steps 20

or from Python ``scaling_benchmark("resnet20", 64, 32, [1, 2], 20)``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def scaling_benchmark(model: str, batch_size: int, image_size: int, nprocs: list[int], steps: int, *,
                      warmup: int = 3, device: str = "auto", amp: str = "auto", model_options: dict | None = None,
                      threads: int | None = None, timeout: float = 600.0) -> list[dict]:
    """One row per process count: ``nproc``, ``images_per_s``, ``step_ms``, ``global_batch``, ``threads_per_proc``,
    ``device``, ``efficiency`` (against the smallest count run, scaled to 1 process: exact when 1 is among
    ``nprocs``). ``threads``: CPU threads per process (default: the machine's cores divided by the process count)."""
    if not nprocs or min(nprocs) < 1:
        raise ValueError(f"nprocs must be process counts >= 1; got {nprocs}")
    rows = []
    cores = os.cpu_count() or 1
    for n in nprocs:
        per_proc = threads or max(1, cores // n)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                    "-m", "convcanon.perf.scaling", "--worker", "--model", model, "--batch-size", str(batch_size),
                    "--image-size", str(image_size), "--steps", str(steps), "--warmup", str(warmup), "--device",
                    device, "--amp", amp, "--result", str(out), "--model-options", json.dumps(model_options or {})]
            env = {**os.environ, "OMP_NUM_THREADS": str(per_proc)}
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
            try:
                output, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_session(proc)
                raise RuntimeError(f"scaling benchmark with {n} process(es) did not finish in {timeout:g} s") from None
            if proc.returncode != 0 or not out.exists():
                raise RuntimeError(f"scaling benchmark with {n} process(es) failed (exit {proc.returncode}):\n"
                                   f"{output[-4000:]}")
            rows.append({**json.loads(out.read_text()), "threads_per_proc": per_proc})
    base = min(rows, key=lambda r: r["nproc"])
    per_process = base["images_per_s"] / base["nproc"]
    for row in rows:
        row["efficiency"] = row["images_per_s"] / (row["nproc"] * per_process)
    return rows


def _kill_session(proc: subprocess.Popen) -> None:
    """Stop torchrun and its workers: SIGTERM lets torchrun stop the workers (they run in sessions of their own, out of
    reach of a signal to torchrun's group); SIGKILL if it has not finished after torchrun's own 30 s grace."""
    proc.terminate()
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _worker(args: argparse.Namespace) -> None:
    import torch

    from ..parallel.data_parallel import DataParallel
    from ..registry import model_info
    from ..train.config import TrainConfig
    from ..train.engine import engine_for
    from ..train.settings import build_model
    from ..train.step import TrainStep

    cfg = TrainConfig(model=args.model, model_options=json.loads(args.model_options), batch_size=args.batch_size,
                      lr=1e-3, device=args.device, amp=args.amp)  # a tiny LR: timing, not learning
    strategy = DataParallel()
    ctx = strategy.setup(cfg)
    torch.manual_seed(0)
    classes = model_info(cfg.model).default_num_classes
    model = build_model(cfg.model, cfg.model_options, num_classes=classes, in_chans=3, image_size=args.image_size)
    engine = engine_for(cfg, ctx.device, model, data=(3, args.image_size))
    placement = strategy.place(model, engine, cfg, None, lambda msg: None)
    step: TrainStep = placement.step  # DDP around the model, as `convcanon train` under torchrun
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=ctx.device)
    y = torch.randint(0, classes, (args.batch_size,), device=ctx.device)

    def sync() -> None:
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        ctx.barrier()

    for i in range(args.warmup):
        step([(x, y)], 1, cfg.lr, i)
    sync()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step([(x, y)], 1, cfg.lr, args.warmup + i)
    sync()
    seconds = time.perf_counter() - t0
    if ctx.is_main:
        Path(args.result).write_text(json.dumps({
            "nproc": ctx.world_size, "images_per_s": args.steps * args.batch_size * ctx.world_size / seconds,
            "step_ms": 1000 * seconds / args.steps, "global_batch": args.batch_size * ctx.world_size,
            "device": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu",
            "backend": ctx.backend, "model": args.model, "batch_size": args.batch_size, "amp": engine.amp,
            "image_size": args.image_size, "steps": args.steps,
        }))  # fmt: skip
    strategy.teardown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m convcanon.perf.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts to compare (default: 1 2)")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--model-options", default="{}", help="JSON object of model options, e.g. '{\"batch_norm\": false}'")
    p.add_argument("--batch-size", type=int, default=64, help="images per process per step")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"),
                   help="autocast precision, as in train (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: cores // N)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    rows = scaling_benchmark(args.model, args.batch_size, args.image_size, args.nproc, args.steps,
                             warmup=args.warmup, device=args.device, amp=args.amp,
                             model_options=json.loads(args.model_options), threads=args.threads)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.model}, {args.batch_size} images of {args.image_size}px per process, {args.steps} steps, "
          f"device {rows[0]['device']}")
    print(f"{'processes':>9} {'threads':>7} {'global batch':>12} {'step ms':>8} {'images/s':>9} {'efficiency':>10}")
    for r in rows:
        print(f"{r['nproc']:>9} {r['threads_per_proc']:>7} {r['global_batch']:>12} {r['step_ms']:>8.1f} "
              f"{r['images_per_s']:>9.0f} {100 * r['efficiency']:>9.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["scaling_benchmark"]
