"""Pipeline parallelism as a specification: the layers compose to the model, the split balances cost, and the
pipelined run computes what one process computes."""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import convcanon
from convcanon.parallel.pipeline import StageModule, clip_global_norm
from convcanon.parallel.pipeline_split import (
    balance,
    describe_split,
    layer_costs,
    layer_shapes,
    pipeline_layers,
    resolve_split,
)
from convcanon.train import checkpoint as ckpt
from convcanon.train.config import TrainConfig
from convcanon.train.run import train

# (model, options, input side): one or two of each family, ImageNet ones at small inputs (the layers do not care).
MODELS = [
    ("resnet20", {}, 8),
    ("plain20", {"batch_norm": False}, 8),
    ("resnet18", {}, 64),
    ("resnet50", {}, 64),
    ("vgg11_bn", {"head": "avgpool"}, 32),
    ("vgg16_cifar", {}, 32),
    ("alexnet", {"batch_norm": True}, 227),
    ("alexnet_owt", {}, 224),
    ("alexnet_cifar", {}, 32),
    ("googlenet_cifar", {}, 32),  # aux heads off (its default): a chain like the others
    ("googlenet", {"aux_heads": False}, 64),
    ("googlenet_cifar", {"head": "fc"}, 32),
]


def _model(name: str, options: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return convcanon.create_model(name, num_classes=10, **options).eval()


@pytest.mark.parametrize(("name", "options", "size"), MODELS, ids=[m[0] for m in MODELS])
def test_layers_compose_to_the_model(name, options, size):
    model = _model(name, options)
    layers = pipeline_layers(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        # Bit for bit: the same modules applied in the same order (eval mode: dropout is the identity).
        assert torch.equal(torch.nn.Sequential(*[layer.module for layer in layers])(x), model(x))
    # Every parameter is in exactly one layer, and nothing was copied.
    owned = [id(p) for layer in layers for p in layer.module.parameters()]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())
    assert len({layer.name for layer in layers}) == len(layers)


def test_layer_names_follow_the_model():
    names = [layer.name for layer in pipeline_layers(_model("resnet20", {}))]
    assert names == ["stem", *[f"stage{s}.{b}" for s in (1, 2, 3) for b in range(3)], "fc"]
    names = [layer.name for layer in pipeline_layers(_model("alexnet_cifar", {}))]
    assert names == [f"features.conv{i}" for i in range(1, 6)] + ["classifier.0", "classifier.4", "classifier.6"]


def test_models_with_auxiliary_heads_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="auxiliary heads.*aux_heads=false"):
        pipeline_layers(convcanon.create_model("googlenet_cifar", aux_heads=True))
    with pytest.raises(ValueError, match="blocks"):
        pipeline_layers(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3)))


def test_a_checkpointed_stage_gives_the_plain_stages_gradients():
    torch.manual_seed(0)
    model = _model("resnet20", {}).train()
    layers = pipeline_layers(model)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    grads = []
    for checkpointed in (False, True):
        stage = StageModule(layers)
        stage.set_grad_checkpointing(checkpointed)  # what the engine does with --activation-checkpointing
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(stage(x), y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_flop_costs_add_up_to_the_whole_model():
    model = _model("resnet20", {})
    layers = pipeline_layers(model)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    costs = layer_costs(layers, (4, 3, 32, 32))
    assert sum(costs) == counter.get_total_flops()
    assert layer_shapes(layers, (4, 3, 32, 32))[-1] == (4, 10)


def test_time_costs_leave_the_model_untouched():
    model = _model("resnet20", {}).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    costs = layer_costs(pipeline_layers(model), (4, 3, 8, 8), "time", repeats=1)
    assert len(costs) == 11 and all(c > 0 for c in costs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running statistics too
    assert all(p.grad is None for p in model.parameters())


def _brute_force(costs: list[float], stages: int) -> float:
    best = float("inf")
    for cuts in itertools.combinations(range(1, len(costs)), stages - 1):
        bounds = [0, *cuts, len(costs)]
        best = min(best, max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:])))
    return best


def test_balance_minimizes_the_slowest_stage():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 9)
        stages = rng.randint(1, n)
        costs = [rng.choice([1.0, 2.0, 5.0, 0.5, 13.0]) for _ in range(n)]
        sizes = balance(costs, stages)
        assert len(sizes) == stages and sum(sizes) == n and min(sizes) >= 1
        bounds = list(itertools.accumulate([0, *sizes]))
        assert max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:])) == _brute_force(costs, stages)
    assert balance([1, 1, 1, 1], 2) == [2, 2]
    assert balance([8, 1, 1, 1, 1], 2) == [1, 4]


def test_manual_split_is_checked_against_the_model():
    layers = pipeline_layers(_model("resnet20", {}))
    costs = [1.0] * len(layers)
    assert resolve_split(layers, costs, 2, [5, 6]) == [5, 6]
    with pytest.raises(ValueError, match=r"add up to the model's 11 layers: 0:stem, 1:stage1.0"):
        resolve_split(layers, costs, 2, [5, 5])
    text = describe_split(layers, costs, [5, 6], unit="units")
    assert "stage 0: stem .. stage2.0 (5 layers" in text and "stage 1: stage2.1 .. fc (6 layers" in text


@pytest.mark.parametrize("max_norm", [0.05, 1e6])  # clipping, and a bound the gradient never reaches
def test_clipping_by_the_global_norm_equals_clip_grad_norm(max_norm):
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    x = torch.randn(4, 6)
    for net in nets:
        net(x).square().sum().backward()
    norm = clip_global_norm(list(nets[0].parameters()), max_norm, torch.device("cpu"), stages=1)
    ref = torch.nn.utils.clip_grad_norm_(nets[1].parameters(), max_norm)
    # 1e-6 relative: the norm is summed in float64 here, in float32 by torch; the coefficient is the same formula.
    assert float(norm) == pytest.approx(float(ref), rel=1e-6)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=0)
    if max_norm > float(ref):  # not clipped: untouched (multiplied by exactly 1)
        assert all(torch.equal(a.grad, b.grad) for a, b in zip(nets[0].parameters(), nets[1].parameters()))


# ----------------------------------------------------------------------------------------------------- torchrun runs

COMMON = ["--epochs", "1", "--schedule", "constant", "--warmup-epochs", "0", "--workers", "0", "--no-progress",
          "--deterministic", "--amp", "off", "--log-every", "1"]


def _accumulated(out: Path, model: str, options: dict, data: str, batch: int, micro: int, steps: int,
                 **recipe) -> None:
    """The reference: one process, micro-batches of batch/micro accumulated micro times (one thread, as the
    workers); ``recipe``: more settings (mixing, label smoothing)."""
    cfg = TrainConfig(model=model, model_options=options, data=data, batch_size=batch // micro, accum_steps=micro,
                      max_steps=steps, epochs=1, schedule="constant", warmup_epochs=0.0, workers=0, progress=False,
                      deterministic=True, amp="off", log_every=1, out=str(out), **recipe)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, out_stream=open(os.devnull, "w"))
    finally:
        torch.set_num_threads(threads)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_safetensors(run / "model.safetensors")


def _train_losses(run: Path) -> list[float]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in records if r["kind"] == "train"]


def _assert_identical(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert list(wa) == list(wb)
    worst = {k: (wa[k].double() - wb[k].double()).abs().max().item() for k in wb if not torch.equal(wa[k], wb[k])}
    assert not worst, worst


# model, options, data, stages, schedule: every family, both schedules, batch norm and not, 2 and 3 stages.
CASES = [
    ("alexnet_cifar", {"dropout": 0.0}, "synthetic", 2, "1f1b"),
    ("vgg16_bn_cifar", {"dropout": 0.0}, "synthetic", 2, "gpipe"),
    ("resnet18", {}, "synthetic:3:32:10", 3, "1f1b"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "options", "data", "stages", "schedule"), CASES, ids=[c[0] for c in CASES])
def test_pipeline_step_equals_the_unsplit_model(launcher, tmp_path, model, options, data, stages, schedule):
    # Two optimizer steps on 16 images in 4 micro-batches; the unsplit model, one process, sees the same micro-batches
    # (the data order is a function of the position only) and accumulates them the same way. Bit for bit: each stage
    # runs the model's own layers on the same micro-batch shapes, the gradient is summed over micro-batches in the
    # same order and divided by 4 (a power of two: exact either way), and the SGD update is elementwise. Batch norm
    # sees each micro-batch alone, in the pipeline and in the reference.
    args = ["train", "--model", model, "--data", data, "--batch-size", "16", "--max-steps", "2", *COMMON,
            "--pipeline-stages", str(stages), "--microbatches", "4", "--pipeline-schedule", schedule,
            "--out", str(tmp_path / "pipe")]
    for key, value in options.items():
        args += ["--model-option", f"{key}={value}"]
    launcher.run(args, nproc=stages)
    _accumulated(tmp_path / "ref", model, options, data, 16, 4, 2)
    # The same loss at each step (to 1 ulp: the loop logs the sum of loss/4 over micro-batches, the pipeline the mean
    # of the 4 losses), and the same weights after each update, bit for bit.
    assert _train_losses(tmp_path / "pipe") == pytest.approx(_train_losses(tmp_path / "ref"), rel=1e-6, abs=0)
    _assert_identical(tmp_path / "pipe", tmp_path / "ref")
    if "bn" not in model and not model.startswith("resnet"):
        # Without batch norm, 4 accumulated micro-batches are the whole batch of 16 at once, to rounding (the mean of
        # four means of 4 against one mean of 16): the pipelined model is the unsplit model on the same batch.
        _accumulated(tmp_path / "whole", model, options, data, 16, 1, 2)
        wp, ww = _weights(tmp_path / "pipe"), _weights(tmp_path / "whole")
        assert all(torch.allclose(wp[k], ww[k], rtol=1e-5, atol=1e-7) for k in ww)


@pytest.mark.slow
def test_a_pipeline_trains_on_mixed_batches_as_the_unsplit_model_does(launcher, tmp_path):
    # MixUp/CutMix mix the global batch of 16 before the pipeline splits it into micro-batches, and the last stage's
    # loss takes the mixed targets (class probabilities) with label smoothing on top: the pipelined model without
    # batch norm is the unsplit model on the same mixed batch of 16, to rounding (the mean of four means of 4 against
    # one mean of 16, as in the test above).
    recipe = {"mixup": 0.4, "cutmix": 1.0, "label_smoothing": 0.1}
    args = ["train", "--model", "alexnet_cifar", "--model-option", "dropout=0.0", "--data", "synthetic",
            "--batch-size", "16", "--max-steps", "2", *COMMON, "--pipeline-stages", "2", "--microbatches", "4",
            "--mixup", "0.4", "--cutmix", "1.0", "--label-smoothing", "0.1", "--out", str(tmp_path / "pipe")]
    launcher.run(args, nproc=2)
    _accumulated(tmp_path / "whole", "alexnet_cifar", {"dropout": 0.0}, "synthetic", 16, 1, 2, **recipe)
    assert _train_losses(tmp_path / "pipe") == pytest.approx(_train_losses(tmp_path / "whole"), rel=1e-5, abs=0)
    wp, ww = _weights(tmp_path / "pipe"), _weights(tmp_path / "whole")
    assert all(torch.allclose(wp[k], ww[k], rtol=1e-5, atol=1e-7) for k in ww)
    # and mixing changed the run: without it the weights differ
    _accumulated(tmp_path / "plain", "alexnet_cifar", {"dropout": 0.0}, "synthetic", 16, 1, 2, label_smoothing=0.1)
    plain = _weights(tmp_path / "plain")
    assert any(not torch.allclose(plain[k], ww[k], rtol=1e-3, atol=1e-6) for k in ww)


@pytest.mark.slow
def test_each_stage_averages_its_layers_into_the_whole_models_average(launcher, tmp_path):
    # --model-ema with 2 stages (ResNet-20 on the digits, one epoch of 22 steps, as the test below): each stage keeps
    # the average of its own layers, evaluated through the stages; checkpoints and model.safetensors gather them under
    # the whole model's names. Bit for bit what one process keeps while accumulating the same micro-batches (the
    # weights are, as the test below shows; the update is elementwise), with the same update count; evaluated in one
    # process, that average gives the figures the pipeline logged for it.
    ema = {"model_ema": True, "model_ema_decay": 0.999}  # 0.997 per update after the adjustment for batch 64
    args = ["train", "--model", "resnet20", "--batch-size", "64", *COMMON, "--pipeline-stages", "2",
            "--microbatches", "4", "--pipeline-schedule", "gpipe", "--model-ema", "--model-ema-decay", "0.999",
            "--out", str(tmp_path / "pipe")]
    launcher.run(args, nproc=2)
    _accumulated(tmp_path / "ref", "resnet20", {}, "digits", 64, 4, 22, **ema)
    pipe, ref = (ckpt.load_checkpoint(ckpt.find_checkpoints(tmp_path / run)[0]) for run in ("pipe", "ref"))
    assert pipe["step"] == ref["step"] == 22
    assert pipe["ema"]["updates"] == ref["ema"]["updates"] > 0
    assert list(pipe["ema"]["module"]) == list(ref["ema"]["module"])
    assert all(torch.equal(pipe["ema"]["module"][k], ref["ema"]["module"][k]) for k in ref["ema"]["module"])
    assert not all(torch.equal(pipe["ema"]["module"][k], pipe["model"][k]) for k in pipe["model"])  # an average
    from convcanon.data import open_data
    from convcanon.train.distributed import DistContext
    from convcanon.train.evaluate import evaluate

    model = convcanon.create_model("resnet20", num_classes=10, in_chans=1)
    model.load_state_dict(ref["ema"]["module"])
    one = evaluate(model, open_data("digits", progress=False), DistContext(0, 1, 0, torch.device("cpu"), None),
                   batch_size=256)
    logged = pipe["metrics"]["ema"]  # evaluated through the stages at the epoch's end
    assert one["samples"] == logged["samples"] == 360 and one["top1"] == logged["top1"]
    assert one["loss"] == pytest.approx(logged["loss"], rel=1e-6)  # float64 sums; batch 256 in both
    # model.safetensors: the average when it evaluated better, gathered from the stages, else the model
    chosen = json.loads((tmp_path / "pipe" / "summary.json").read_text())["weights"]
    expected = ref["ema"]["module"] if chosen == "ema" else _weights(tmp_path / "ref")
    delivered = _weights(tmp_path / "pipe")
    assert list(delivered) == list(expected) and all(torch.equal(delivered[k], expected[k]) for k in expected)
    # Stopped at step 11 and resumed: each stage reloads its part of the average and its count, bit for bit.
    launcher.run([*args[:-1], str(tmp_path / "part"), "--max-steps", "11"])
    launcher.run(["train", "--resume", str(tmp_path / "part"), "--max-steps", "0"])
    resumed = ckpt.load_checkpoint(ckpt.find_checkpoints(tmp_path / "part")[0])
    assert resumed["ema"]["updates"] == pipe["ema"]["updates"]
    assert all(torch.equal(resumed["ema"]["module"][k], pipe["ema"]["module"][k]) for k in pipe["ema"]["module"])


@pytest.mark.slow
def test_pipeline_run_trains_evaluates_exactly_and_resumes(launcher, tmp_path):
    # ResNet-20 (batch norm) on the digits, 2 stages, GPipe, 64 images in 4 micro-batches: 22 steps, one epoch.
    base = ["train", "--model", "resnet20", "--batch-size", "64", *COMMON, "--pipeline-stages", "2",
            "--microbatches", "4", "--pipeline-schedule", "gpipe"]
    full = tmp_path / "full"
    launch = launcher.run([*base, "--out", str(full)])
    assert "on 360 images" in launch.output  # exact evaluation through the stages
    assert "stage 0: stem .. " in launch.output
    # Bit for bit the one-process run with 4 accumulated micro-batches of 16 (22 steps: its 23rd, a partial group of
    # one micro-batch, is where the two plans part, so it stops before).
    _accumulated(tmp_path / "ref", "resnet20", {}, "digits", 64, 4, 22)
    _assert_identical(full, tmp_path / "ref")
    # The weights are the whole model's; evaluated in one process they give the logged numbers.
    from convcanon.data import open_data
    from convcanon.train.distributed import DistContext
    from convcanon.train.evaluate import evaluate

    model = convcanon.create_model("resnet20", num_classes=10, in_chans=1)
    model.load_state_dict(_weights(full))
    one = evaluate(model, open_data("digits", progress=False), DistContext(0, 1, 0, torch.device("cpu"), None),
                   batch_size=256)
    (logged,) = [r for r in map(json.loads, (full / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]
    assert one["samples"] == logged["samples"] == 360 and one["top1"] == logged["top1"]
    assert one["loss"] == pytest.approx(logged["loss"], rel=1e-6)  # float64 sums; batch 256 in both
    # Stopped at step 11 and resumed: the uninterrupted run, bit for bit (stage weights, optimizer and RNG states are
    # all in the gathered checkpoint).
    part = tmp_path / "part"
    launcher.run([*base, "--out", str(part), "--max-steps", "11"])
    launcher.run(["train", "--resume", str(part), "--max-steps", "0"])
    _assert_identical(part, full)


@pytest.mark.slow
def test_time_balanced_split_is_the_same_on_every_rank(launcher, tmp_path):
    # Measured times differ between processes; rank 0 measures and broadcasts, so the stages always fit together.
    out = tmp_path / "timed"
    launch = launcher.run(["train", "--model", "alexnet_cifar", "--data", "synthetic", "--batch-size", "16",
                           "--max-steps", "2", *COMMON, "--pipeline-stages", "3", "--microbatches", "4",
                           "--pipeline-balance", "time", "--out", str(out)], nproc=3)
    assert "balanced by time" in launch.output
    meta = json.loads((out / "run.json").read_text())["pipeline"]
    assert sum(meta["split"]) == len(meta["layers"]) == 8 and meta["cost_unit"] == "ms"
    shutil.rmtree(out)


@pytest.mark.slow
def test_pipeline_run_stops_on_a_non_finite_loss_before_saving_it(launcher, tmp_path):
    # A far too high LR (5 x 16/256 for AlexNet without batch norm) drives the loss to inf/NaN at step 4 (measured;
    # deterministic on CPU). The check waits on the device until the next log line or checkpoint (every 3 steps here):
    # the run stops at step 6 naming step 4, and the newest checkpoint, step 3, is from before it, with finite weights.
    out = tmp_path / "pipe"
    args = ["train", "--model", "alexnet_cifar", "--model-option", "dropout=0.0", "--data", "synthetic",
            "--batch-size", "16", "--max-steps", "40", "--lr", "5", *COMMON[:-2], "--log-every", "100",
            "--checkpoint-every", "3", "--pipeline-stages", "2", "--microbatches", "2", "--out", str(out)]
    launch = launcher.run(args, nproc=2, check=False)
    assert launch.wait(5) != 0, launch.output[-3000:]  # torchrun reports a failed worker (exit 3) as its own failure
    match = re.search(r"loss became inf or NaN at step (\d+) \(found at step (\d+),", launch.output)
    assert match, launch.output[-3000:]
    first, found = int(match[1]), int(match[2])
    assert 3 < first <= found and found % 3 == 0, (first, found)
    assert not (out / "model.safetensors").exists()
    state, _ = ckpt.load_latest(out)
    assert state["step"] < first
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# --------------------------------------------------- the run skeleton's behaviours, on the pipeline (default suite)


def test_pipeline_run_prints_and_records_what_a_one_device_run_does(launcher, tmp_path):
    # One epoch of 8 steps on small synthetic data through 2 stages: the skeleton's epoch line, final accuracy line
    # and summary, as for one device.
    out = tmp_path / "pipe"
    launch = launcher.run(["train", "--model", "resnet20", "--data", "synthetic:1:8:4", "--batch-size", "128",
                           *COMMON, "--pipeline-stages", "2", "--microbatches", "4", "--out", str(out)])
    assert re.search(r"epoch 1/1 \(step 8\): test loss [\d.]+, top-1 [\d.]+% on 256 images", launch.output)
    final = json.loads((out / "summary.json").read_text())
    assert final["steps"] == 8 and final["final"]["samples"] == 256
    assert f"done: 8 steps, test top-1 {final['final']['top1']:.2f}%" in launch.output
    assert "(pipeline)" in launch.output and json.loads((out / "run.json").read_text())["strategy"] == "pipeline"


def test_pipeline_non_finite_loss_gives_the_hints_and_logs_the_event(launcher, tmp_path):
    # As the slow test above, checked for what the one-device run also does: the advice and the metrics event.
    out = tmp_path / "pipe"
    args = ["train", "--model", "alexnet_cifar", "--model-option", "dropout=0.0", "--data", "synthetic",
            "--batch-size", "16", "--max-steps", "12", "--lr", "5", *COMMON[:-2], "--log-every", "100",
            "--checkpoint-every", "3", "--pipeline-stages", "2", "--microbatches", "2", "--out", str(out)]
    launch = launcher.run(args, nproc=2, check=False)
    assert launch.wait(5) != 0
    assert "Lower --lr, add --warmup-epochs or --grad-clip" in launch.output, launch.output[-3000:]
    first = int(re.search(r"loss became inf or NaN at step (\d+)", launch.output)[1])
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(e["step"], e["event"]) for e in events if e["kind"] == "event"] == [(first - 1, "non-finite loss")]
