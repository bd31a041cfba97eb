"""The benchmark's figures are well formed and measured the way it says (no timing is asserted: the machine is
shared and noisy; BENCHMARKS.md holds the measured figures)."""

import json
import math

import pytest
import torch

from convcanon.analysis.profile import count_macs
from convcanon.cli import main
from convcanon.perf.bench import (
    BenchConfig,
    baseline_description,
    build_model,
    make_baseline,
    resolve_shape,
    run_bench,
)
from convcanon.perf.report import format_report
from convcanon.perf.timing import Series, per_round_ratio

TINY = dict(model="resnet20", batch_size=4, image_size=8, windows=2, steps=1, warmup=1, peak_size=512)


def _positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def tiny():
    return run_bench(BenchConfig(**TINY, baseline=True, memory=False), say=lambda msg: None)


def test_tiny_run_gives_well_formed_figures(tiny):
    for phase in (tiny.train, tiny.infer):
        assert set(phase) == {"ours", "baseline"}
        for series in phase.values():
            assert len(series.rates) == 2 and all(_positive(r) for r in series.rates)
            assert series.steps == 1
            assert min(series.rates) <= series.median <= max(series.rates)
    assert _positive(tiny.peak.median)
    assert _positive(tiny.ratios["train_ours_over_baseline"]) and _positive(tiny.ratios["infer_ours_over_baseline"])
    assert set(tiny.utilization) == {"train_ours", "train_baseline", "infer_ours"}
    assert all(map(_positive, tiny.utilization.values()))
    # Model FLOPs are counted from the model at the benchmarked shape: 3 x forward x 2 FLOPs per MAC.
    shape = resolve_shape(BenchConfig(**TINY))
    macs = count_macs(build_model(BenchConfig(**TINY), shape), (3, 8, 8))
    assert tiny.setup["train_flops_per_image"] == 6 * macs and tiny.setup["infer_flops_per_image"] == 2 * macs


def test_subjects_alternate_window_by_window(tiny):
    # Every round times each subject once; the order reverses every round (ours, baseline, peak, then peak, ...).
    assert tiny.setup["window_order"] == ["ours", "baseline", "peak", "peak", "baseline", "ours"]


def test_ratio_is_the_median_of_per_round_ratios():
    ours, base = Series(rates=[10.0, 30.0, 20.0]), Series(rates=[5.0, 10.0, 20.0])
    assert per_round_ratio(ours, base) == 2.0  # rounds: 2, 3, 1 -> median 2 (not 20/10 of the medians)
    assert Series(rates=[1.0, 2.0, 4.0]).spread == pytest.approx(1.5)


def test_report_and_json_carry_everything(tiny):
    text = format_report(tiny)
    for needle in ("training step", "inference", "ours / baseline", "utilization", "engine on cpu",
                   "convcanon resnet20 (no torchvision twin"):
        assert needle in text
    data = json.loads(json.dumps(tiny.as_dict()))
    assert data["train_images_per_s"]["ours"]["windows"] == tiny.train["ours"].rates
    assert data["setup"]["engine"]["channels_last"] is True  # the CPU rule


def test_baseline_is_torchvision_where_it_has_the_architecture():
    what, twin = baseline_description(BenchConfig(model="resnet50"), resolve_shape(BenchConfig(model="resnet50")))
    assert twin == "resnet50" and what.startswith("torchvision resnet50, fp32, NCHW, eager")
    cifar = BenchConfig(model="resnet20")
    assert baseline_description(cifar, resolve_shape(cifar))[1] is None
    gray = BenchConfig(model="resnet18", in_chans=1)  # torchvision takes RGB only: ours, run the naive way
    assert baseline_description(gray, resolve_shape(gray))[1] is None


def test_torchvision_baseline_runs_a_naive_step():
    cfg = BenchConfig(model="resnet18", batch_size=2, image_size=32, num_classes=10)
    subject = make_baseline(cfg, torch.device("cpu"), resolve_shape(cfg))
    subject.train_step()
    subject.infer_step()


def test_end_to_end_subject_reads_the_data_path_and_memory_is_measured():
    cfg = BenchConfig(model="resnet20", batch_size=8, windows=2, steps=2, warmup=1, data="digits", inference=False,
                      peak=False, memory=True)
    result = run_bench(cfg, say=lambda msg: None)
    assert result.setup["shape"] == {"in_chans": 1, "image_size": 8, "num_classes": 10}  # taken from the data
    assert set(result.train) == {"ours", "data"}
    assert _positive(result.ratios["train_data_over_synthetic"])
    assert set(result.memory) == {"ours"} and result.memory["ours"] > 0
    assert "end-to-end / synthetic" in format_report(result)


def test_data_shape_conflicts_are_errors():
    with pytest.raises(ValueError, match="--in-chans 3 disagrees with --data digits"):
        run_bench(BenchConfig(model="resnet20", in_chans=3, data="digits"), say=lambda msg: None)


def test_activation_checkpointing_is_timed_against_the_plain_model():
    cfg = BenchConfig(**TINY, activation_checkpointing=True, inference=False, peak=False, memory=False)
    result = run_bench(cfg, say=lambda msg: None)
    assert set(result.train) == {"ours", "ours_plain"}
    assert _positive(result.ratios["train_checkpointed_over_plain"])
    assert result.setup["engine"]["activation_checkpointing"] is True


def test_cli_json(capsys):
    argv = ["bench", "--model", "resnet20", "--batch-size", "2", "--image-size", "8", "--windows", "1", "--steps",
            "1", "--warmup", "1", "--no-memory", "--no-inference", "--no-peak", "--json", "--no-channels-last"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["setup"]["engine"]["reasons"]["channels_last"] == "as asked"
    assert len(data["train_images_per_s"]["ours"]["windows"]) == 1


def test_bad_settings_are_errors_before_work():
    with pytest.raises(ValueError, match="--windows must be >= 1"):
        BenchConfig(windows=0)
    assert main(["bench", "--model", "resnet20", "--image-size", "0"]) == 2  # one line on stderr, exit status 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_run_on_the_gpu_compiles_and_measures_memory():
    cfg = BenchConfig(**TINY, baseline=True, inference=False, device="cuda")
    result = run_bench(cfg, say=lambda msg: None)
    assert result.setup["engine"]["compile"] is True  # the GPU default
    assert result.setup["compile_failed"] == {}, result.setup["compile_failed"]
    assert _positive(result.ratios["train_ours_over_baseline"]) and _positive(result.peak.median)
    assert set(result.memory) == {"ours", "baseline"} and all(v > 0 for v in result.memory.values())
