"""The evidence report: every experiment, then ``DIR/report.md`` with the verdicts, tables and plots.

``build_report`` runs the experiments that support its data (``--data``: the embedded digits by default, or CIFAR for
the papers' protocols; see ``experiments.datasets``), each cached per configuration (see ``experiments.core``), states
the expected runtime before it starts (and in full mode the estimator's predicted cost), and writes one Markdown file
whose images are the experiments' PNGs (relative links, so the directory can be moved or committed as it is).
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..io import atomic_write_json, atomic_write_text
from .experiments import EXPERIMENTS
from .experiments.core import (
    ExperimentRun,
    Mode,
    default_jobs,
    duration,
    expected_seconds,
    experiment_module,
    md_table,
    pending_units,
    run_experiment,
    run_units,
)
from .experiments.datasets import DEFAULT_DATA, data_kind, describe, supported


@dataclass
class ReportResult:
    path: Path
    runs: list[ExperimentRun]
    seconds: float
    cpu_seconds: float
    expected_seconds: float
    rows: list[dict[str, Any]] = field(default_factory=list)  # the main table: one row per verdict


def resolve_names(only: str | Sequence[str] | None, data: str = DEFAULT_DATA) -> list[str]:
    """Experiment names in report order, those that support ``data``; ``only`` as a comma-separated string or a list
    (hyphens allowed), each of which must support ``data``."""
    kind = data_kind(data)
    runs_on = [n for n in EXPERIMENTS if kind in supported(experiment_module(n))]
    if not runs_on:
        raise ValueError(f"--data {data}: no experiment runs on {kind} data; the digits experiments run on digits, "
                         "the paper protocols on cifar10:PATH or cifar100:PATH")
    if not only:
        return runs_on
    wanted = [n.strip().replace("-", "_") for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    unknown = [n for n in wanted if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"--only: unknown experiment(s) {', '.join(unknown)}; experiments: {', '.join(EXPERIMENTS)}")
    elsewhere = [n for n in wanted if n not in runs_on]
    if elsewhere:
        raise ValueError(f"--only: {', '.join(elsewhere)} do(es) not run on --data {data}; on {kind} data: "
                         f"{', '.join(runs_on)}")
    return [n for n in EXPERIMENTS if n in wanted]


def catalog_device(device: str = "auto") -> str:
    """The estimator's catalog name for this machine's device: its GPU's (by name), else ``cpu``."""
    import torch

    from ..estimate import DEVICES

    if device == "cpu" or not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name(0).lower()
    matches = [k for k in DEVICES if k != "cpu" and k.split("-")[0] in name]
    return max(matches, key=len) if matches else "h100"


def cost_line(names: Sequence[str], mode: Mode, seed: int, data: str, device: str, jobs: int) -> str | None:
    """What the full report prints first when it runs the CIFAR protocols: the estimator's predicted cost (digits runs
    are not priced: the estimator knows CIFAR-size inputs, and they take minutes on a CPU)."""
    if mode != "full" or data_kind(data) == "digits" or not any(hasattr(experiment_module(n), "gpu_seconds")
                                                                 for n in names):
        return None
    cost = predicted_cost(names, mode, seed, data, device)
    return ("predicted cost (convcanon's estimator, every unit one after the other on one device): "
            + "; ".join(f"{duration(v)} on {k}" for k, v in cost.items()) + f"; {jobs} worker(s) share it")


def predicted_cost(names: Sequence[str], mode: Mode, seed: int, data: str, device: str) -> dict[str, float]:
    """The estimator's wall-clock (seconds, units one after the other) for the experiments that price their units
    (``gpu_seconds``: the paper protocols), on this device and on one H100."""
    priced = [experiment_module(n) for n in names if hasattr(experiment_module(n), "gpu_seconds")]
    here = catalog_device(device)
    out: dict[str, float] = {}
    for dev in dict.fromkeys((here, "h100")):
        out[dev] = sum(m.gpu_seconds(m.settings(mode, seed, device, data), dev) for m in priced)
    return out


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the workers, torchrun's ranks)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def build_report(
    out: str | Path,
    *,
    mode: Mode = "quick",
    seed: int = 0,
    only: str | Sequence[str] | None = None,
    force: bool = False,
    jobs: int | None = None,
    threads: int | None = None,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    command: str | None = None,
    data: str = DEFAULT_DATA,
) -> ReportResult:
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    names = resolve_names(only, data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs_used = jobs or default_jobs(device)
    expected = expected_seconds(names, mode, seed, device, jobs, out, data)
    line = cost_line(names, mode, seed, data, device, jobs_used)
    if line:
        log(line)
    runtime = (f"{duration(expected)} for what is not cached yet ({jobs_used} worker process(es), one CPU core each"
               f"{'; a GPU is faster' if mode == 'full' else ''})")
    if line and catalog_device(device) != "cpu":  # the CPU-core figure would mislead: the estimator's is above
        runtime = f"the predicted cost above for what is not cached yet ({jobs_used} worker process(es))"
    log(f"convcanon report ({mode} mode) on {describe(data)}: {len(names)} experiment(s) into {out}; expected runtime "
        f"{runtime}. Finished pieces are cached: an interrupted run resumes.")
    t0, c0 = time.perf_counter(), _cpu_seconds()
    # Every experiment's missing units in one pool, longest first, so no worker idles while another finishes a
    # long unit of one experiment; then each experiment is assembled from the cache.
    tasks = pending_units(names, out=out, mode=mode, seed=seed, device=device, force=force, data=data)
    _, _, computed, unit_cpu = run_units(tasks, force=force, jobs=jobs, threads=threads, device=device,
                                         progress=progress, log=log, label="report")
    done: dict[str, ExperimentRun] = {}
    runs = []
    for name in names:
        if name not in done:
            done[name] = run_experiment(name, out=out, mode=mode, seed=seed, device=device, reassemble=force,
                                        jobs=jobs, threads=threads, progress=progress, log=log, data=data,
                                        _deps_done=done)
        runs.append(done[name])
    for run in runs:  # what the pool computed, not what the assembly found in the cache
        if run.name in computed:
            run.computed, run.cpu_seconds = computed[run.name], unit_cpu[run.name]
            run.cached = max(0, len(run.unit_stats) - run.computed)
            run.reused = False
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    rows = main_rows(runs)
    text = render(runs, rows, mode=mode, seed=seed, seconds=seconds, cpu_seconds=cpu, expected=expected,
                  jobs=jobs_used, command=command, data=data)
    path = atomic_write_text(out / "report.md", text)
    summary = {"mode": mode, "seed": seed, "data": describe(data), "convcanon": __version__,
               "seconds": round(seconds, 1),
               "cpu_seconds": round(cpu, 1), "expected_seconds": round(expected, 1), "verdicts": rows,
               "experiments": {r.name: {"results": str(r.dir / "results.json"),
                                        "plots": [str(r.dir / p) for p in r.plots], "computed_units": r.computed,
                                        "cached_units": r.cached} for r in runs}}
    atomic_write_json(out / "report.json", summary, indent=1)
    log(f"report: {path} ({duration(seconds)} wall, {cpu:.0f} CPU seconds)")
    return ReportResult(path, runs, seconds, cpu, expected, rows)


def main_rows(runs: Sequence[ExperimentRun]) -> list[dict[str, Any]]:
    return [{"experiment": r.name, "claim": v.claim, "verdict": v.label, "evidence": v.text}
            for r in runs for v in r.verdicts]  # fmt: skip


def main_table(rows: Sequence[dict[str, Any]]) -> str:
    marks = {"holds": "✅ holds", "does not hold": "❌ does not hold", "inconclusive": "➖ inconclusive"}
    return md_table([(r["experiment"], r["claim"], marks[r["verdict"]], r["evidence"]) for r in rows],
                    ["experiment", "claim", "verdict", "evidence (measured here unless marked quoted)"], "llll")


def _unit_cpu(runs: Sequence[ExperimentRun]) -> float:
    return sum(u.get("cpu_seconds") or 0.0 for r in runs for u in r.unit_stats.values())


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def cost_section(number: int) -> str:
    """What training each canon network on ImageNet costs on each GPU generation, from the estimator (analytic: no
    training), with the published runs that check it. Estimates, and labelled so."""
    from ..estimate.validation import CANON_MODELS, GENERATIONS, IMAGENET_EPOCHS, canon_cost_table, validation_table

    cells = {(r["model"], r["device"]): r for r in canon_cost_table()}

    def cell(model: str, device: str) -> str:
        r = cells[(model, device)]
        days = f"{r['days']:.1f} d" if r["days"] >= 1 else f"{r['hours']:.1f} h"
        note = "" if r["fits"] else f" (x{r['accumulation_steps']} accum.)"
        return f"{days} {r['precision']}{note}"

    alex_then, alex_now = cells[("alexnet", "gtx580")]["days"], cells[("alexnet", "h100")]["hours"]
    vgg_over_resnet = [cells[("vgg16", d)]["hours"] / cells[("resnet50", d)]["hours"] for d in GENERATIONS]
    lo, hi = min(vgg_over_resnet), max(vgg_over_resnet)
    table = md_table([(m, *(cell(m, d) for d in GENERATIONS)) for m in CANON_MODELS], ["model", *GENERATIONS],
                     "l" + "r" * len(GENERATIONS))
    checks = validation_table()
    held = sum(bool(r["within"]) for r in checks)

    def error(r: dict[str, Any]) -> str:  # scaling efficiencies are off by points, everything else relatively
        return f"{r['error']:+.1f} points" if r["unit"] == "%" else f"{100 * r['error']:+.1f}%"

    check_rows = [(r["claim"], "calibration" if str(r["role"]).startswith("calibrates") else "held out",
                   f"{r['published']:.3g} {r['unit']}", f"{r['predicted']:.3g} {r['unit']}", error(r),
                   "yes" if r["within"] else "no") for r in checks]
    return "\n".join([
        f"## {number}. What the canon costs to train (estimated)", "",
        f"*Not measured:* the estimator's prediction (`convcanon estimate --canon`) for {IMAGENET_EPOCHS} ImageNet "
        "epochs on one device of each generation, batch 128, in the generation's usual precision (fp32 before "
        "Volta, fp16 on Volta, bf16 from Ampere); where the batch does not fit in memory, the accumulation steps it "
        "needs. The model is compute + memory traffic + ring all-reduce with overlap, seven constants calibrated on "
        f"named runs; the rest of the published runs are held out. AlexNet's {alex_then:.0f} days on one GTX 580 are "
        f"{alex_now:.1f} hours on an H100, and VGG-16 costs {lo:.1f}-{hi:.1f}x ResNet-50 on every generation.", "",
        table, "",
        f"Checked against published runs (`convcanon estimate --validate`): {held} of {len(checks)} within their "
        "tolerance.", "",
        md_table(check_rows, ["published run", "role", "published", "predicted", "error", "within tolerance"],
                 "llrrrc"),
    ])


def render(runs: Sequence[ExperimentRun], rows: Sequence[dict[str, Any]], *, mode: str, seed: int, seconds: float,
           cpu_seconds: float, expected: float, jobs: int, command: str | None, data: str = DEFAULT_DATA) -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else (platform.processor() or
                                                                               platform.machine())
    counts = {k: sum(r["verdict"] == k for r in rows) for k in ("holds", "does not hold", "inconclusive")}
    cmd = command or (f"convcanon report{' --quick' if mode == 'quick' else ' --tiny' if mode == 'tiny' else ''}"
                      + (f" --data {data}" if data != DEFAULT_DATA else ""))
    lines = [
        "# convcanon evidence report",
        "",
        f"Generated by `{cmd}` (convcanon {__version__}, torch {torch.__version__}, Python "
        f"{platform.python_version()}) on {time.strftime('%Y-%m-%d %H:%M')}: {mode} mode, seed {seed}, "
        f"{os.cpu_count()} CPU core(s), {device}, {jobs} worker process(es). This run took {duration(seconds)} wall "
        f"and {cpu_seconds:.0f} CPU seconds (expected {duration(expected)} before it started; cached pieces cost "
        f"nothing); the results shown cost {_unit_cpu(runs):.0f} CPU seconds of training and measuring, whenever "
        "they were computed. Raw results: `<experiment>/results.json`.",
        "",
        f"Data: {describe(data)}.",
        "",
        f"**{_count(counts['holds'], 'claim holds', 'claims hold')}, "
        f"{_count(counts['does not hold'], 'does not', 'do not')}, "
        f"{_count(counts['inconclusive'], 'is inconclusive', 'are inconclusive')}.** Every verdict is computed from "
        "the numbers by a small function (see `convcanon/analysis/experiments/`); an effect inside the seed spread "
        "is reported as inconclusive, never as holding. Numbers marked *quoted* come from torchvision's model table "
        "or the papers; everything else was measured by this run.",
        "",
        main_table(rows),
        "",
    ]
    for i, run in enumerate(runs, 1):
        mod = experiment_module(run.name)
        lines += [f"## {i}. {mod.TITLE}", "", f"*Claim:* {mod.CLAIM}.", "",
                  mod.section(run.results, run.verdicts, run.plots), ""]
    lines += [cost_section(len(runs) + 1), ""]
    lines += ["## Runtime", "",
              md_table([(r.name, r.computed, r.cached, f"{_unit_cpu([r]):.0f}") for r in runs],
                       ["experiment", "units computed now", "units from the cache", "CPU s of its units"], "lrrr"),
              ""]
    return "\n".join(lines)
