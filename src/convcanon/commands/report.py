"""``convcanon report``: every experiment, then one Markdown report with tables, plots and verdicts."""

from __future__ import annotations

import argparse

_EPILOG = """examples:
  convcanon report --quick                     all experiments in under 15 minutes on 2 CPU cores -> evidence/quick/
  convcanon report --quick --out docs/evidence  where the README's figures come from
  convcanon report                             full mode (states its expected runtime first; runs on a GPU if any)
  convcanon report --quick --only degradation,gradient-flow
  convcanon report --quick --force             recompute instead of reading the cache
  convcanon report --full --data cifar10:~/data/cifar-10-batches-py --out evidence/cifar10
                                               the papers' CIFAR-10 protocols (He et al. Table 6 + Fig. 6, AlexNet
                                               Fig. 1); prints the estimator's predicted cost first; hours on a GPU
  convcanon report --tiny --data cifar10:PATH  the same sections in a smoke run (numbers mean nothing)

Writes OUT/report.md (a summary table of every verdict, then one section per experiment with its tables and plots),
OUT/report.json (the verdicts), and per experiment OUT/NAME/results.json and its PNGs. Each experiment is cached per
configuration (a key over its settings, the data's identity, not its path, and the convcanon version), so a rerun
computes only what is missing, and units computed on several machines assemble into one report: copy their OUT
directories together (cp -r machine1/OUT/. OUT/; units never collide) and run the same command again to re-render.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from .experiment import add_run_arguments

    p = subparsers.add_parser(
        "report", help="run every experiment and write the evidence report",
        description="Reproduce the canon's claims on this machine: run every experiment (or --only some) and write "
        "a Markdown report with tables, plots and verdicts computed from the numbers.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add_run_arguments(p)
    p.add_argument("--only", metavar="NAME,...", help="only these experiments (comma-separated)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from ..analysis.experiments.datasets import default_out
    from ..analysis.report import build_report, resolve_names
    from ..tables import emit
    from .experiment import check

    check(args)
    resolve_names(args.only, args.data)  # unknown names and unsupported data fail before anything runs
    out = args.out or default_out(args.mode, args.data)
    command = "convcanon report" + {"quick": " --quick", "tiny": " --tiny", "full": ""}[args.mode]
    command += f" --data {args.data}" if args.data != "digits" else ""
    command += f" --out {out}" if args.out else ""
    command += f" --only {args.only}" if args.only else ""
    command += f" --seed {args.seed}" if args.seed else ""
    result = build_report(out, mode=args.mode, seed=args.seed, only=args.only, force=args.force, jobs=args.jobs,
                          threads=args.threads, device=args.device, progress=args.progress, command=command,
                          data=args.data)
    if args.json:
        json.dump({"report": str(result.path), "seconds": round(result.seconds, 1),
                   "cpu_seconds": round(result.cpu_seconds, 1), "verdicts": result.rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    emit(result.rows, [("experiment", "experiment"), ("verdict", "verdict"), ("claim", "claim")], False)
    print(f"\nreport: {result.path}")
    return 0
