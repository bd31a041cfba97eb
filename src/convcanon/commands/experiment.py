"""``convcanon experiment NAME``: one claim of the canon as numbers, plots and a verdict."""

from __future__ import annotations

import argparse

_EPILOG = """experiments:
  canon          the four architectures side by side: quoted ImageNet accuracy, measured params/GMACs, digits runs
  degradation    plain-20/32/56 vs ResNet-20/32/56 (110 in full mode): deeper plain nets train worse
  he-table6      on CIFAR (--data cifar10:PATH): He et al. 2016 Table 6 and Fig. 6 with the paper's protocol
  alexnet-fig1   on CIFAR (--data cifar10:PATH): AlexNet's Fig. 1, ReLU vs tanh steps to 25% training error
  identity       K conventional vs K residual blocks trained to reproduce their input
  gradient-flow  per-layer gradient norms, plain vs residual, depth 20/56/110
  ideas          ReLU vs tanh, dropout, 3x3 stacks, 1x1 reductions, avg-pool head, batch norm
  scaling        torchrun data parallel vs 1 process, accumulation, linear scaling + warmup, bf16
  pitfalls       the pitfalls table, judged by the numbers of canon, degradation and scaling

examples:
  convcanon experiment degradation --quick          ~2 min on 2 CPU cores; writes evidence/quick/degradation/
  convcanon experiment degradation                  full mode: 5 seeds, 2,000 steps, depth 110 too (states its time)
  convcanon experiment ideas --quick --json         the verdicts as JSON
  convcanon experiment scaling --quick --force      recompute instead of reading the cache
  convcanon experiment he-table6 --data cifar10:~/data/cifar-10-batches-py   the paper's 64k-step protocol (GPU)

--data picks the data: digits (the default) for every experiment but he-table6 and alexnet-fig1; cifar10:PATH or
cifar100:PATH for he-table6, alexnet-fig1, ideas and scaling at 32x32; folder:PATH for he-table6 (docs/evidence.md).

Results are cached per experiment and configuration under OUT/NAME/ (results.json, units/, PNG plots): a rerun
computes only what is missing. The report of every experiment at once is `convcanon report`.
"""


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by `experiment` and `report`."""
    from ..train.config import add_shared_flags

    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="the small configuration: the whole report in under 15 minutes on 2 CPU cores")
    size.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="the full configuration (the default): more seeds, steps and depths; hours on a CPU")
    size.add_argument("--tiny", dest="mode", action="store_const", const="tiny",
                      help="a smoke test: a handful of steps, one seed (the test suite's preset; numbers mean nothing)")
    p.set_defaults(mode="full")
    p.add_argument("--out", metavar="DIR",
                   help="output directory (default: evidence/<mode>; evidence/<mode>-cifar10 etc. for other data)")
    p.add_argument("--data", default="digits", metavar="SPEC",
                   help="digits (the default: the 8x8 digits experiments), cifar10:PATH or cifar100:PATH (the papers' "
                   "CIFAR protocols: He et al. Table 6, AlexNet Fig. 1, and the ideas at 32x32), folder:PATH (Table "
                   "6's protocol on an ImageFolder tree)")
    p.add_argument("--seed", type=int, default=0, help="first seed; experiments with n seeds use seed..seed+n-1")
    p.add_argument("--force", action="store_true", help="recompute everything instead of reading the cache")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes (default: one per CPU core on CPU, one per GPU with GPUs; more than the "
                   "GPUs: several workers share each GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / jobs)")
    add_shared_flags(p, ("device",))  # train's --device
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the verdicts as JSON instead of a table")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "experiment", help="run one experiment of the evidence report",
        description="Run one experiment of the evidence report: its results (OUT/NAME/results.json), plots (PNG) "
        "and verdicts computed from the numbers.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("name", help="canon, degradation, he-table6, alexnet-fig1, identity, gradient-flow, ideas, scaling "
                   "or pitfalls")
    add_run_arguments(p)
    p.set_defaults(func=run)


def check(args: argparse.Namespace) -> None:
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1; got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1; got {args.threads}")


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from ..analysis.experiments import run_experiment
    from ..analysis.experiments.core import default_jobs, duration, expected_seconds, experiment_module
    from ..analysis.experiments.datasets import check_supported, default_out
    from ..analysis.report import cost_line
    from ..tables import emit

    check(args)
    mod = experiment_module(args.name)  # an unknown name fails here, before anything runs
    check_supported(mod, args.data)  # and data it does not run on
    out = args.out or default_out(args.mode, args.data)
    if args.mode == "full":
        est = expected_seconds(mod.NAME, "full", args.seed, args.device, args.jobs, out, args.data)
        print(f"convcanon experiment {mod.NAME} (full mode): expected {duration(est)} for what is not cached yet "
              f"(use --quick for the small configuration)", file=sys.stderr, flush=True)
        line = cost_line([mod.NAME], "full", args.seed, args.data, args.device, args.jobs or default_jobs(args.device))
        if line:
            print(line, file=sys.stderr, flush=True)
    result = run_experiment(mod.NAME, out=out, mode=args.mode, seed=args.seed, device=args.device, force=args.force,
                            jobs=args.jobs, threads=args.threads, progress=args.progress, data=args.data)
    rows = [{"claim": v.claim, "verdict": v.label, "evidence": v.text} for v in result.verdicts]
    if args.json:
        json.dump({"experiment": result.name, "mode": args.mode, "dir": str(result.dir),
                   "results": str(result.dir / "results.json"), "plots": [str(result.dir / p) for p in result.plots],
                   "computed_units": result.computed, "cached_units": result.cached, "verdicts": rows},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    emit(rows, [("verdict", "verdict"), ("claim", "claim"), ("evidence", "evidence")], False)
    print(f"\nresults: {result.dir / 'results.json'}; plots: "
          f"{', '.join(str(result.dir / p) for p in result.plots) or 'none'}")
    return 0
