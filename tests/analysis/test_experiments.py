"""Each experiment runs in its tiny preset and writes its files; the cache computes only what is missing; the report
and the commands put it together. Tiny runs train a handful of steps in this process (jobs=1, one thread): their
numbers mean nothing, the files and the plumbing are what is checked. Verdict logic is in test_verdicts.py."""

import json
import subprocess
import sys

import pytest

from convcanon.analysis.experiments import EXPERIMENTS, core, run_experiment, scaling_runs
from convcanon.analysis.report import build_report
from convcanon.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ("canon", "degradation", "identity", "gradient_flow", "ideas")


def _run(name, out, **kw):
    return run_experiment(name, out=out, mode="tiny", jobs=1, threads=1, progress=False, log=lambda m: None, **kw)


def _check_files(run):
    record = json.loads((run.dir / "results.json").read_text())
    assert record["experiment"] == run.name and record["mode"] == "tiny"
    assert record["key"] == run.key and record["settings"] == run.settings
    assert record["verdicts"] and all(v["label"] in ("holds", "does not hold", "inconclusive")
                                      for v in record["verdicts"])
    for plot in run.plots:
        assert (run.dir / plot).read_bytes()[:8] == PNG_MAGIC
    section = __import__(f"convcanon.analysis.experiments.{run.name}", fromlist=["section"]).section(
        run.results, run.verdicts, run.plots)
    assert isinstance(section, str) and section.strip()


@pytest.mark.parametrize("name", FAST)
def test_tiny_experiment_writes_results_and_plots(name, tmp_path):
    run = _run(name, tmp_path)
    assert run.computed == len(run.unit_stats) and run.computed > 0
    assert run.plots, f"{name} made no plot"
    _check_files(run)


@pytest.fixture
def failing_torchrun(monkeypatch):
    """torchrun cannot start: the scaling experiment must record that, not crash (and the test stays fast)."""

    def refuse(*args, **kwargs):
        raise OSError("torchrun is not available here (test stub)")

    monkeypatch.setattr(scaling_runs.subprocess, "Popen", refuse)


def test_tiny_scaling_records_a_torchrun_failure(tmp_path, failing_torchrun):
    run = _run("scaling", tmp_path)
    _check_files(run)
    ddp = run.results["equivalence"]["ddp_vs_accumulation"]
    assert ddp["ok"] is False and "not available" in ddp["error"]
    verdict = next(v for v in run.verdicts if v.claim.startswith("Data-parallel"))
    assert verdict.holds is None and "torchrun failed" in verdict.text
    # The engine runs that need no torchrun did run: accumulation is compared step by step.
    assert run.results["equivalence"]["accumulation_alexnet"]["step_diffs"]
    assert run.results["linear"]["runs"]["1x"]["steps"] == 2


def test_rerun_computes_nothing_and_only_what_is_missing(tmp_path):
    first = _run("degradation", tmp_path)
    n = first.computed
    before = len(core.COMPUTED)
    again = _run("degradation", tmp_path)
    assert again.reused and again.computed == 0 and len(core.COMPUTED) == before  # cache hit: nothing computed
    assert again.results == first.results and [v.text for v in again.verdicts] == [v.text for v in first.verdicts]

    def errors(run):  # the measured numbers, without the timings
        return [(r["model"], r["train_error"], r["test_error"]) for r in run.results["rows"]]


    # Lose the assembled results and one unit: only that unit is computed again.
    (first.dir / "results.json").unlink()
    unit_files = sorted((first.dir / "units").glob("*.json"))
    assert len(unit_files) == n
    unit_files[0].unlink()
    partial = _run("degradation", tmp_path)
    assert (partial.computed, partial.cached) == (1, n - 1)
    assert errors(partial) == errors(first)  # deterministic on one thread: the recomputed unit agrees

    forced = _run("degradation", tmp_path, force=True)
    assert forced.computed == n


def test_cache_key_changes_with_the_configuration(tmp_path):
    a = _run("identity", tmp_path)
    b = _run("identity", tmp_path, seed=1)
    assert a.key != b.key and b.computed == a.computed  # another seed is another configuration: all computed
    c = _run("identity", tmp_path)  # and the first configuration's units are still cached
    assert c.computed == 0


def test_report_writes_markdown_with_main_table_and_plots(tmp_path):
    result = build_report(tmp_path, mode="tiny", only="identity,degradation", jobs=1, threads=1, progress=False,
                          log=lambda m: None)
    text = result.path.read_text()
    assert text.startswith("# convcanon evidence report")
    assert "| experiment | claim | verdict |" in text
    assert "(degradation/degradation_curves.png)" in text and "(identity/identity.png)" in text
    assert text.index("Degradation") < text.index("Identity")  # report order, not --only order
    # The estimator's cost of the canon (analytic) follows the experiments, labelled as an estimate.
    assert text.index("Identity") < text.index("What the canon costs to train (estimated)") < text.index("Runtime")
    assert "| resnet50 |" in text and "gtx580" in text and "within their tolerance" in text
    summary = json.loads((tmp_path / "report.json").read_text())
    assert {r["experiment"] for r in summary["verdicts"]} == {"degradation", "identity"}
    with pytest.raises(ValueError, match="unknown experiment"):
        build_report(tmp_path, mode="tiny", only="degradation,nope", log=lambda m: None)


def test_experiment_command_json(tmp_path, capsys):
    rc = main(["experiment", "identity", "--tiny", "--out", str(tmp_path), "--jobs", "1", "--threads", "1",
               "--no-progress", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["experiment"] == "identity" and out["verdicts"] and out["computed_units"] > 0
    assert (tmp_path / "identity" / "results.json").exists()


def test_experiment_command_refuses_unknown_names(capsys):
    assert main(["experiment", "nope", "--tiny"]) == 2
    assert "unknown experiment" in capsys.readouterr().err


def test_every_experiment_is_registered_with_the_protocol():
    for name in EXPERIMENTS:
        mod = core.experiment_module(name)
        for attr in ("NAME", "TITLE", "CLAIM", "settings", "units", "assemble", "verdicts", "plot", "section"):
            assert hasattr(mod, attr), f"{name}.{attr}"
        for mode in core.MODES:
            settings = mod.settings(mode, 0, "cpu")
            json.dumps(settings)  # hashed into the cache key: JSON values only
            assert len({u.name for u in mod.units(settings)}) == len(mod.units(settings))
    assert core.experiment_module("gradient-flow").NAME == "gradient_flow"  # the CLI spelling works too


@pytest.mark.slow
def test_tiny_report_of_everything_with_worker_processes_and_torchrun(tmp_path):
    """The whole pipeline as a user runs it: a subprocess, spawned workers, real torchrun, pitfalls last."""
    proc = subprocess.run([sys.executable, "-m", "convcanon", "report", "--tiny", "--out", str(tmp_path), "--jobs",
                           "2", "--no-progress"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "report.md").read_text()
    for name in EXPERIMENTS:  # the digits report: every experiment that runs on digits, and only those
        digits = "digits" in getattr(core.experiment_module(name), "DATA", {"digits": 8})
        assert (tmp_path / name / "results.json").exists() == digits, name
    ddp = json.loads((tmp_path / "scaling" / "results.json").read_text())["results"]["equivalence"]
    assert ddp["ddp_vs_accumulation"]["ok"], ddp["ddp_vs_accumulation"].get("output_tail")
    assert "Pitfalls" in text
