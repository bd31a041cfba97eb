"""The data-parallel scaling benchmark: one torchrun per process count, images/s and efficiency (never asserted:
timings on a shared machine are not a specification, only their bookkeeping is)."""

from __future__ import annotations

import pytest

from convcanon.perf.scaling import main, scaling_benchmark


@pytest.mark.slow
def test_scaling_benchmark_reports_every_process_count():
    rows = scaling_benchmark("resnet20", 8, 8, [1, 2], steps=3, warmup=1, threads=1, timeout=300)
    assert [r["nproc"] for r in rows] == [1, 2]
    assert [r["global_batch"] for r in rows] == [8, 16]
    assert rows[0]["efficiency"] == 1.0
    for r in rows:
        assert r["images_per_s"] > 0 and r["step_ms"] > 0 and r["threads_per_proc"] == 1
        assert r["backend"] == (None if r["nproc"] == 1 else "gloo")
        assert r["efficiency"] == pytest.approx(r["images_per_s"] / (r["nproc"] * rows[0]["images_per_s"]))


@pytest.mark.slow
def test_a_failing_worker_is_reported_with_its_output(capsys):
    with pytest.raises(RuntimeError, match="unknown model|no_such_model"):
        main(["--nproc", "1", "--model", "no_such_model", "--steps", "1"])


def test_process_counts_are_checked():
    with pytest.raises(ValueError, match="process counts >= 1"):
        scaling_benchmark("resnet20", 8, 8, [0], steps=1)
