"""The machinery every experiment shares: settings presets, units of work, the cache, the worker pool, verdicts.

An experiment is a module with:

- ``NAME``, ``TITLE``, ``CLAIM`` (the canon's claim it tests, one line), ``DEPENDS`` (experiments whose results it
  reads; only ``pitfalls`` has any);
- ``settings(mode, seed, device) -> dict``: every knob, resolved for ``mode`` ("tiny" for the tests, "quick" for the
  15-minute report, "full"); JSON values only, since they are hashed into the cache key;
- ``units(settings) -> list[Unit]``: independent pieces of work (one training run, one profile), each a pure function
  of its parameters, run in worker processes and cached one by one;
- ``assemble(settings, outputs, deps) -> dict``: the results from the units' outputs (keyed by unit name);
- ``verdicts(results) -> list[Verdict]``: small pure functions of the results;
- ``plot(results, out_dir) -> list[str]``: PNG file names written into ``out_dir``;
- ``section(results, verdicts, plots) -> str``: the experiment's part of report.md.

Caching: a unit's result is stored under ``DIR/<experiment>/units/<key>.json``, the key hashing the experiment name,
the unit's function and parameters, and the convcanon version; the assembled results under
``DIR/<experiment>/results.json`` with a key hashing the resolved settings, the dependencies' keys and the version.
A rerun therefore computes only what is missing (an interrupted run keeps its finished units); ``force`` recomputes.

Workers: units run in ``jobs`` spawned processes with ``threads`` intra-op threads each (default: one process per
core, one thread each). The experiments' networks are small (8x8 digits), where one thread per process does more work
per CPU second than two threads on one process, and independent runs parallelize perfectly.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ... import __version__
from ...io import atomic_write_json
from .datasets import check_supported, keyed

# The experiments in report order (pitfalls last: it reads the others'); a report runs those its data supports.
EXPERIMENTS: tuple[str, ...] = ("canon", "degradation", "he_table6", "alexnet_fig1", "identity", "gradient_flow",
                                "ideas", "scaling", "pitfalls")

Mode = Literal["tiny", "quick", "full"]
MODES: tuple[str, ...] = ("tiny", "quick", "full")

# Units computed in this process since import (tests read it to check that a rerun computes nothing).
COMPUTED: list[str] = []


# ---------------------------------------------------------------------------------------------------------------------
# Verdicts


@dataclass(frozen=True)
class Verdict:
    """Whether a claim shows in the numbers: ``holds`` True/False, or None when the effect is inside the noise or the
    evidence is missing. ``text`` says which numbers decided it."""

    claim: str
    holds: bool | None
    text: str

    @property
    def label(self) -> str:
        return {True: "holds", False: "does not hold", None: "inconclusive"}[self.holds]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def separated(a: Sequence[float], b: Sequence[float], floor: float = 0.0) -> bool | None:
    """Is mean(a) - mean(b) larger than the seed noise? True when the gap exceeds both ``floor`` and twice the larger
    standard deviation (or, with one seed each, ``floor`` alone); False when it is as large the other way; None when
    inside the noise."""
    ma, sa = mean_std(a)
    mb, sb = mean_std(b)
    if math.isnan(ma) or math.isnan(mb):
        return None
    noise = max(floor, 2 * max(sa, sb))
    gap = ma - mb
    if gap > noise:
        return True
    if -gap > noise:
        return False
    return None


def fmt_pm(values: Sequence[float], digits: int = 1) -> str:
    m, s = mean_std(values)
    if math.isnan(m):
        return "-"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


# ---------------------------------------------------------------------------------------------------------------------
# Units of work


@dataclass(frozen=True)
class Unit:
    """One cacheable piece of work: ``func(**params)`` returns a JSON-serializable dict.

    ``func`` is "module:function" (importable in a fresh worker process); ``cost`` is the estimated compute in
    seconds of one CPU core, for scheduling (longest first) and the up-front runtime estimate.
    """

    name: str
    func: str
    params: dict[str, Any]
    cost: float = 1.0

    def key(self, experiment: str) -> str:
        return stable_hash({"experiment": experiment, "func": self.func, "params": keyed(self.params),
                            "convcanon": __version__})



def stable_hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _call(func: str, params: dict[str, Any], threads: int) -> tuple[dict[str, Any], float, float]:
    """Run one unit in this process; returns (output, wall seconds, CPU seconds of this process)."""
    import torch

    torch.set_num_threads(threads)
    module, _, name = func.partition(":")
    fn = getattr(importlib.import_module(module), name)
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(**params)
    return out, time.perf_counter() - t0, time.process_time() - c0


def _worker_init(gpus: Any = None) -> None:
    # Spawned workers import torch once; keep their OpenMP pools from spinning on shared cores. With several GPUs,
    # each worker is given one (round robin), before this process initializes CUDA.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())


def default_jobs(device: str = "auto") -> int:
    """One worker per GPU (its kernels, not Python, are the bottleneck), else one per CPU core (at most 8)."""
    if device.startswith("cuda:"):
        return 1
    gpus = _gpu_count(device)
    return gpus if gpus else max(1, min(os.cpu_count() or 1, 8))


def _gpu_count(device: str) -> int:
    if device not in ("auto", "cuda"):
        return 0  # cpu, or one named GPU (cuda:1): every worker uses what was asked for
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# ---------------------------------------------------------------------------------------------------------------------
# Running an experiment


@dataclass
class ExperimentRun:
    name: str
    dir: Path
    key: str
    settings: dict[str, Any]
    results: dict[str, Any]
    verdicts: list[Verdict]
    plots: list[str]
    computed: int = 0  # units computed now
    cached: int = 0  # units read from the cache
    reused: bool = False  # results.json was up to date: nothing computed, nothing assembled
    seconds: float = 0.0  # wall time of this call
    cpu_seconds: float = 0.0  # CPU seconds of the units computed now (all workers)
    unit_stats: dict[str, Any] = field(default_factory=dict)


def experiment_module(name: str):
    key = name.replace("-", "_")
    if key not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; experiments: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"{__package__}.{key}")


def expected_seconds(names: str | Sequence[str], mode: Mode, seed: int = 0, device: str = "auto",
                     jobs: int | None = None, out: str | Path | None = None, data: str = "digits") -> float:
    """Estimated wall seconds for the units of ``names`` (and their dependencies) not cached yet under ``out``, all
    sharing one pool of ``jobs`` workers of one CPU core each (a GPU is faster). ``out=None``: as if nothing were."""
    names = [names] if isinstance(names, str) else list(names)
    tasks = pending_units(names, out=out if out is not None else Path("/nonexistent"), mode=mode, seed=seed,
                          device=device, data=data)
    todo = [u for exp, u, unit_dir in tasks if out is None or not (unit_dir / f"{u.key(exp)}.json").exists()]
    if not todo:
        return 0.0
    jobs = jobs or default_jobs(device)
    costs = [u.cost for u in todo]
    # Longest first on `jobs` workers: the makespan is at least the longest unit; + worker start-up.
    return max(sum(costs) / jobs, max(costs)) + 3.0 * min(jobs, len(todo))


def experiment_key(name: str, mode: Mode, seed: int = 0, device: str = "auto", data: str = "digits") -> str:
    """The cache key of an experiment's results: its resolved settings (the data by identity, not path), its
    dependencies' keys, the version."""
    mod = experiment_module(name)
    deps = {d: experiment_key(d, mode, seed, device, data) for d in getattr(mod, "DEPENDS", ())}
    return stable_hash({"experiment": mod.NAME, "settings": keyed(mod.settings(mode, seed, device, data)),
                        "deps": deps, "convcanon": __version__})


def _up_to_date(results_path: Path, key: str) -> dict[str, Any] | None:
    try:
        saved = json.loads(results_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return saved if saved.get("key") == key else None


def run_experiment(
    name: str,
    *,
    out: str | Path,
    mode: Mode = "quick",
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    reassemble: bool = False,
    jobs: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    data: str = "digits",
    _deps_done: dict[str, ExperimentRun] | None = None,
) -> ExperimentRun:
    """Run (or read from the cache) experiment ``name`` and write ``out/<name>/results.json`` and its plots.

    ``force`` recomputes every unit; ``reassemble`` ignores results.json but uses the unit cache (the report computes
    all experiments' units in one pool first, then assembles each). ``data``: a ``--data`` spec in its ``DATA``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    mod = experiment_module(name)
    check_supported(mod, data)
    t0 = time.perf_counter()
    done = _deps_done if _deps_done is not None else {}
    deps: dict[str, dict[str, Any]] = {}
    dep_keys: dict[str, str] = {}
    for dep in getattr(mod, "DEPENDS", ()):
        if dep not in done:
            done[dep] = run_experiment(dep, out=out, mode=mode, seed=seed, device=device, force=force,
                                       reassemble=reassemble, jobs=jobs, threads=threads, progress=progress, log=log,
                                       data=data, _deps_done=done)
        deps[dep] = done[dep].results
        dep_keys[dep] = done[dep].key

    settings = mod.settings(mode, seed, device, data)
    key = experiment_key(mod.NAME, mode, seed, device, data)
    exp_dir = Path(out) / mod.NAME
    exp_dir.mkdir(parents=True, exist_ok=True)
    results_path = exp_dir / "results.json"

    saved = None if (force or reassemble) else _up_to_date(results_path, key)
    if saved is not None:
        plots = saved.get("plots", [])
        if any(not (exp_dir / p).exists() for p in plots):
            plots = mod.plot(saved["results"], exp_dir)
        # Verdicts are cheap pure functions of the results: recomputed, so a corrected rule needs no rerun.
        verdicts = mod.verdicts(saved["results"])
        if [v.as_dict() for v in verdicts] != saved["verdicts"] or plots != saved.get("plots", []):
            saved.update(verdicts=[v.as_dict() for v in verdicts], plots=plots)
            atomic_write_json(results_path, saved, indent=1, default=_json_default)
        log(f"{mod.NAME}: up to date ({results_path}), nothing to compute")
        return ExperimentRun(mod.NAME, exp_dir, key, settings, saved["results"], verdicts, plots,
                             cached=len(saved.get("units", {})), reused=True,
                             seconds=time.perf_counter() - t0, unit_stats=saved.get("units", {}))

    units = mod.units(settings)
    tasks = [(mod.NAME, u, exp_dir / "units") for u in units]
    outputs, stats, computed, cpu = run_units(tasks, force=force, jobs=jobs, threads=threads, device=device,
                                              progress=progress, log=log, label=mod.NAME)
    results = mod.assemble(settings, outputs.get(mod.NAME, {}), deps)
    verdicts = mod.verdicts(results)
    plots = mod.plot(results, exp_dir)
    import torch

    record = {
        "experiment": mod.NAME, "title": mod.TITLE, "claim": mod.CLAIM, "key": key, "mode": mode, "seed": seed,
        "convcanon": __version__, "torch": torch.__version__, "python": sys.version.split()[0],
        "created": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": settings, "depends": dep_keys,
        "results": results, "verdicts": [v.as_dict() for v in verdicts], "plots": plots,
        "units": stats.get(mod.NAME, {}),
    }  # fmt: skip
    atomic_write_json(results_path, record, indent=1, default=_json_default)
    return ExperimentRun(mod.NAME, exp_dir, key, settings, results, verdicts, plots, computed=computed.get(mod.NAME, 0),
                         cached=len(units) - computed.get(mod.NAME, 0), seconds=time.perf_counter() - t0,
                         cpu_seconds=cpu.get(mod.NAME, 0.0), unit_stats=stats.get(mod.NAME, {}))


def pending_units(names: Sequence[str], *, out: str | Path, mode: Mode, seed: int = 0, device: str = "auto",
                  force: bool = False, data: str = "digits") -> list[tuple[str, Unit, Path]]:
    """(experiment, unit, unit dir) of every unit the experiments ``names`` (and their dependencies) still need:
    none for an experiment whose results.json is up to date (unless ``force``)."""
    seen: list[str] = []

    def visit(name: str) -> None:
        mod = experiment_module(name)
        for dep in getattr(mod, "DEPENDS", ()):
            visit(dep)
        if mod.NAME not in seen:
            seen.append(mod.NAME)

    for n in names:
        visit(n)
    tasks = []
    for name in seen:
        mod = experiment_module(name)
        exp_dir = Path(out) / mod.NAME
        if not force and _up_to_date(exp_dir / "results.json", experiment_key(name, mode, seed, device, data)):
            continue
        tasks += [(mod.NAME, u, exp_dir / "units") for u in mod.units(mod.settings(mode, seed, device, data))]
    return tasks


def run_units(tasks: Sequence[tuple[str, Unit, Path]], *, force: bool, jobs: int | None, threads: int | None,
              device: str, progress: bool, log: Callable[[str], None], label: str = "units",
              ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, int], dict[str, float]]:
    """Compute the units not cached yet (all with ``force``), in one pool, longest first.

    Returns, per experiment: outputs and stats by unit name, the number computed now, their CPU seconds."""
    outputs: dict[str, dict[str, Any]] = {}
    stats: dict[str, dict[str, Any]] = {}
    computed: dict[str, int] = {}
    cpu: dict[str, float] = {}
    todo: list[tuple[str, Unit, Path]] = []
    for experiment, u, unit_dir in tasks:
        if u.name in outputs.get(experiment, {}) or any(t[0] == experiment and t[1].name == u.name for t in todo):
            raise RuntimeError(f"{experiment}: duplicate unit name {u.name!r}")
        path = unit_dir / f"{u.key(experiment)}.json"
        if not force and path.exists():
            try:
                saved = json.loads(path.read_text())
                outputs.setdefault(experiment, {})[u.name] = saved["output"]
                stats.setdefault(experiment, {})[u.name] = {
                    "key": u.key(experiment), "cached": True, "seconds": saved.get("seconds"),
                    "cpu_seconds": saved.get("cpu_seconds")}  # fmt: skip
                continue
            except (OSError, json.JSONDecodeError, KeyError):
                pass  # a damaged cache entry is recomputed
        todo.append((experiment, u, unit_dir))
    if not todo:
        return outputs, stats, computed, cpu

    jobs = max(1, min(jobs or default_jobs(device), len(todo)))
    cores = os.cpu_count() or 1
    threads = threads or max(1, cores // jobs)
    todo.sort(key=lambda t: -t[1].cost)  # longest first: the workers finish together
    costs = [t[1].cost for t in todo]
    estimate = max(sum(costs) / jobs, max(costs))
    log(f"{label}: {len(todo)} of {len(tasks)} unit(s) to compute ({len(tasks) - len(todo)} cached), {jobs} "
        f"worker(s) x {threads} thread(s); estimated {duration(estimate)}")
    bar = _bar(progress, total=sum(costs), desc=label)

    def finish(task: tuple[str, Unit, Path], result: tuple[dict[str, Any], float, float]) -> None:
        experiment, u, unit_dir = task
        out, wall, cpu_s = result
        unit_dir.mkdir(parents=True, exist_ok=True)
        key = u.key(experiment)
        entry = {"unit": u.name, "func": u.func, "params": u.params, "convcanon": __version__,
                 "seconds": round(wall, 3), "cpu_seconds": round(cpu_s, 3), "output": out}
        atomic_write_json(unit_dir / f"{key}.json", entry, indent=None, default=_json_default)
        outputs.setdefault(experiment, {})[u.name] = json.loads(json.dumps(out, default=_json_default))
        stats.setdefault(experiment, {})[u.name] = {"key": key, "cached": False, "seconds": round(wall, 3),
                                                    "cpu_seconds": round(cpu_s, 3)}
        computed[experiment] = computed.get(experiment, 0) + 1
        cpu[experiment] = cpu.get(experiment, 0.0) + cpu_s
        COMPUTED.append(f"{experiment}/{u.name}")
        bar.set_postfix_str(f"{experiment}/{u.name}"[:48])
        bar.update(u.cost)

    if jobs == 1:
        import torch

        # In-process: leave this process's torch settings as they were (the engine's runs change them).
        saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        try:
            for task in todo:
                bar.set_postfix_str(f"{task[0]}/{task[1].name}"[:48])
                finish(task, _call(task[1].func, task[1].params, threads))
        finally:
            torch.set_num_threads(saved[0])
            torch.use_deterministic_algorithms(saved[1])
    else:
        with _pool(jobs, device) as pool:
            pending = {pool.submit(_call, t[1].func, t[1].params, threads): t for t in todo}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    finish(pending.pop(fut), fut.result())
    bar.close()
    return outputs, stats, computed, cpu


def _pool(jobs: int, device: str) -> ProcessPoolExecutor:
    """``jobs`` spawned workers, sharing several GPUs round robin (more jobs than GPUs: several workers per GPU)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    gpus, queue = _gpu_count(device), None
    if gpus > 1:
        queue = ctx.Queue()
        for i in range(jobs):
            queue.put(i % gpus)
    return ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(queue,))


class _NoBar:
    def update(self, n: float = 1) -> None: ...
    def set_postfix_str(self, s: str) -> None: ...
    def close(self) -> None: ...


def _bar(enabled: bool, total: float, desc: str):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="cpu-s", dynamic_ncols=True, leave=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} est. cpu-s [{elapsed}<{remaining}"
                           "{postfix}]")


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------------------------------
# Small helpers shared by the experiment modules


def pick(mode: Mode, tiny: Any, quick: Any, full: Any) -> Any:
    return {"tiny": tiny, "quick": quick, "full": full}[mode]


def md_table(rows: Sequence[Sequence[Any]], header: Sequence[str], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one character per column: l, r or c."""
    align = align or "l" * len(header)
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join("-" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict_lines(verdicts: Sequence[Verdict]) -> str:
    return "\n".join(f"- **{v.label}**: {v.claim}. {v.text}" for v in verdicts)


def images(plots: Sequence[str], experiment: str, captions: dict[str, str] | None = None) -> str:
    captions = captions or {}
    return "\n\n".join(f"![{captions.get(p, p)}]({experiment}/{p})" for p in plots)
