"""Data parallelism under torchrun (gloo, CPU) as a specification: the same algorithm as one process.

Each test starts real torchrun processes (``python -m torch.distributed.run ... -m convcanon train``), one thread each,
and always kills what it started. The reference single-process runs are in-process ``train()`` calls.

The run: ResNet-20 without batch norm on the embedded digits, 2 processes x 40 images = 80 per step, 17 steps an
epoch (1437 // 80), 20 steps, so one exact evaluation (360 test images) happens at step 17 and training crosses an
epoch boundary. Constant LR: both sides have the same plan anyway, but the test then does not depend on it. LR
0.01 x 80/256: batch norm's scale invariance amplifies rounding with the step size (at 0.05, a single process run
with 1 and with 2 threads parts by 3e-3 in a BN bias after 17 steps), and the test is about the algorithm, not the LR.

Why tanh: two runs of the same algorithm differ by float32 rounding (~1e-7 a step); through a smooth network that
stays ~1e-6 for 20 steps. Through ReLU an activation sitting within rounding of its kink can switch off in one run
only, a discrete jump that grows to ~1e-2 in a few steps: measured here, a single process run with 1 thread and with
2 threads (no second process at all) part by 0.8% in one weight gradient at step 4 with ReLU, by 3e-6 after 20 steps
with tanh. A tolerance test of "same algorithm" needs the smooth network; the equivalence itself holds for any model.
Workers and references all compute with one thread, for the same reason.

Every run mixes its batches (MixUp and CutMix, label smoothing) and keeps a weight average: the draws are the same on
every rank and pairs stay inside a rank's even shard (``train.mixing``), and every rank holds the same average
(``train.ema``; the run checks it at every checkpoint), so the equivalence covers them too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from torchrun_helpers import Launcher, free_port, worker_pid

from convcanon.train import checkpoint as ckpt
from convcanon.train.config import TrainConfig
from convcanon.train.distributed import heartbeat_interval
from convcanon.train.run import train

STEPS = 20
PER_RANK = 40
RECIPE = {"mixup": 0.4, "cutmix": 1.0, "label_smoothing": 0.1, "model_ema": True, "model_ema_decay": 0.99}


def _args(out: Path, *extra: str, batch_norm: bool = False, per_rank: int = PER_RANK, steps: int = STEPS) -> list[str]:
    args = ["train", "--model", "resnet20", "--data", "digits", "--epochs", "2", "--max-steps", str(steps),
            "--batch-size", str(per_rank), "--lr", "0.01", "--schedule", "constant", "--warmup-epochs", "0",
            "--workers", "0", "--no-progress", "--deterministic", "--amp", "off", "--log-every", "5", "--out", str(out),
            "--small-map-gemm"]  # forced on (the digits' small maps are below the auto threshold): DDP over the mode
    args += [f for key, value in RECIPE.items() for f in (
        ["--model-ema"] if value is True else ["--" + key.replace("_", "-"), str(value)])]
    args += ["--model-option", "activation=tanh"]
    if not batch_norm:
        args += ["--model-option", "batch_norm=false"]
    return args + list(extra)


def _single(out: Path, *, batch_norm: bool = False, steps: int = STEPS, **kw) -> dict[str, torch.Tensor]:
    """The same run in this process: 1 process x 2 x PER_RANK, one thread like the workers."""
    options = {"activation": "tanh", **({} if batch_norm else {"batch_norm": False})}
    cfg = TrainConfig(model="resnet20", model_options=options, data="digits", epochs=2, max_steps=steps,
                      batch_size=2 * PER_RANK, lr=0.01, schedule="constant", warmup_epochs=0.0, workers=0,
                      progress=False, deterministic=True, amp="off", log_every=5, out=str(out), small_map_gemm=True,
                      **{**RECIPE, **kw})  # fmt: skip
    _train_one_thread(cfg)
    return _weights(out)


def _train_one_thread(cfg: TrainConfig, **kw) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, out_stream=open(os.devnull, "w"), **kw)
    finally:
        torch.set_num_threads(threads)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_safetensors(run / "model.safetensors")


def _rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all learned parameters together (running statistics are checked elementwise only)."""
    assert list(a) == list(b)
    keys = [k for k in b if b[k].is_floating_point() and "running_" not in k]
    va, vb = (torch.cat([w[k].double().flatten() for k in keys]) for w in (a, b))
    return ((va - vb).norm() / vb.norm()).item()


def _assert_same_algorithm(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    # The parameters' relative difference <= 1e-5, and every tensor (running statistics included) elementwise within
    # rtol 1e-5 / atol 1e-6, so that one wrong tensor cannot hide in the global norm. Why that much: the two runs
    # compute the same sums grouped differently (two means of 40 averaged by the all-reduce against one mean of 80;
    # batch statistics of 2 x 40 against 80), float32 rounding of ~1e-7 a step that 20 SGD steps grow to ~1e-7 (measured
    # 6e-8 with sync batch norm); a real difference (another sample, a missing 1/world, unsynced batch norm, another
    # LR) is >= 1e-3.
    rel = _rel_diff(a, b)
    assert rel <= 1e-5, rel
    bad = [k for k in b if b[k].is_floating_point() and not torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6)]
    assert not bad, {k: (a[k] - b[k]).abs().max().item() for k in bad}


def _ema(run: Path) -> dict[str, torch.Tensor]:
    """The weight average of the run's last checkpoint, and its update counter."""
    state, _ = ckpt.load_latest(run)
    return {**state["ema"]["module"], "updates": torch.tensor(float(state["ema"]["updates"]))}


def _evals(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]


@pytest.fixture(scope="module")
def two_procs(tmp_path_factory):
    """One 2-process run shared by the tests that compare against it."""
    out = tmp_path_factory.mktemp("ddp") / "two"
    launcher = Launcher()
    try:
        launch = launcher.run(_args(out), timeout=300)
    finally:
        launcher.cleanup()
    return out, launch.output


def test_two_processes_equal_one_process_with_twice_the_batch(two_procs, tmp_path):
    run, output = two_procs
    meta = json.loads((run / "run.json").read_text())
    assert (meta["world_size"], meta["backend"], meta["plan"]["global_batch"]) == (2, "gloo", 80)
    assert json.loads((run / "summary.json").read_text())["steps"] == STEPS
    ref_run = tmp_path / "one"
    ref = _single(ref_run)
    _assert_same_algorithm(_weights(run), ref)
    # Exact evaluation: every test image counted once across the two ranks, the same metrics as one process.
    assert "on 360 images" in output
    (two_eval,), (one_eval,) = _evals(run), _evals(ref_run)
    assert two_eval["samples"] == one_eval["samples"] == 360
    assert abs(two_eval["top1"] - one_eval["top1"]) <= 100 / 360 + 1e-9  # at most one borderline image flips
    assert two_eval["loss"] == pytest.approx(one_eval["loss"], rel=1e-4)
    # The weight average: the same on both ranks (checked by the run at each checkpoint), and the one process's.
    _assert_same_algorithm(_ema(run), _ema(ref_run))
    assert abs(two_eval["ema_top1"] - one_eval["ema_top1"]) <= 100 / 360 + 1e-9
    assert two_eval["ema_loss"] == pytest.approx(one_eval["ema_loss"], rel=1e-4)
    # The logged training loss is the mean over both ranks' shards, the global batch's loss: one process's figure.
    # 1e-5 relative: float32 means of 40 averaged against means of 80; a single rank's loss is off by ~1e-2.
    two_losses, one_losses = ([r["loss"] for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())
                               if r["kind"] == "train"] for p in (run, ref_run))
    assert two_losses == pytest.approx(one_losses, rel=1e-5)
    # Training top-1 (each mixed image counted by its labels' weights) over the same images: at most one
    # borderline prediction apart in a window (the smallest has 2 steps of 80 images: 0.625 points).
    two_top1, one_top1 = ([r["top1"] for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())
                           if r["kind"] == "train"] for p in (run, ref_run))
    assert two_top1 == pytest.approx(one_top1, abs=0.63)
    # Only rank 0 prints: the plan line appears once.
    assert output.count("global batch 80") == 1


# Every augmentation option on (random-resized crop, flip, a policy, random erasing, separate train and evaluation
# sizes, repeated augmentation): each sample's pixels are a pure function of (seed, epoch, position), so 2 x 40 see
# exactly the pixels of 1 x 80 and the runs are the same algorithm.
EVERY_AUGMENTATION = {"image_size": 12, "hflip": 0.5, "scale": [0.35, 1.0], "ratio": [0.8, 1.25],
                      "aa": "trivialaugment", "reprob": 0.25, "train_crop_size": 10, "val_resize_size": 12,
                      "val_crop_size": 11, "ra_reps": 2}


def _flags(options: dict) -> list[str]:
    out = []
    for key, value in options.items():
        out += ["--" + key.replace("_", "-"), *(map(str, value) if isinstance(value, list) else [str(value)])]
    return out


def test_two_processes_equal_one_process_with_every_augmentation_option(launcher, tmp_path):
    steps = 10
    launcher.run(_args(tmp_path / "two", *_flags(EVERY_AUGMENTATION), steps=steps), timeout=300)
    ref = _single(tmp_path / "one", steps=steps, **EVERY_AUGMENTATION)
    _assert_same_algorithm(_weights(tmp_path / "two"), ref)
    assert json.loads((tmp_path / "two" / "run.json").read_text())["data"]["recipe"]["ra_reps"] == 2


@pytest.mark.slow
def test_sync_batch_norm_two_processes_equal_one_process(launcher, tmp_path):
    synced = tmp_path / "sync"
    launcher.run(_args(synced, "--sync-bn", batch_norm=True))
    plain = tmp_path / "plain"
    launcher.run(_args(plain, batch_norm=True))
    ref = _single(tmp_path / "one", batch_norm=True)
    # Sync batch norm sums in float64 as ATen's one-process kernel does. The running means and variances are
    # compared too (they are in model.safetensors).
    _assert_same_algorithm(_weights(synced), ref)
    # Without --sync-bn each rank normalizes its own 40 images: a different algorithm, visibly.
    assert _rel_diff(_weights(plain), ref) > 1e-3


@pytest.mark.slow
def test_exact_evaluation_when_the_world_does_not_divide_the_test_set(launcher, tmp_path):
    # synthetic:1:8:10 has 256 test images: 3 ranks take 85, 85 and 86, no padding, no duplicate.
    out = tmp_path / "three"
    launch = launcher.run(["train", "--model", "resnet20", "--model-option", "batch_norm=false", "--data",
                           "synthetic:1:8:10", "--epochs", "1", "--batch-size", "16", "--workers", "0",
                           "--no-progress", "--amp", "off", "--out", str(out)], nproc=3)
    assert "on 256 images" in launch.output
    (record,) = _evals(out)
    assert record["samples"] == 256
    # The same weights evaluated by one process give the same numbers.
    import convcanon
    from convcanon.data import open_data
    from convcanon.train.distributed import DistContext
    from convcanon.train.evaluate import evaluate

    model = convcanon.create_model("resnet20", num_classes=10, in_chans=1, batch_norm=False)
    model.load_state_dict(_weights(out))
    one = evaluate(model, open_data("synthetic:1:8:10", progress=False), DistContext(0, 1, 0, torch.device("cpu"),
                                                                                     None), batch_size=256)
    assert one["samples"] == 256 and one["top1"] == record["top1"]
    assert one["loss"] == pytest.approx(record["loss"], rel=1e-6)  # float64 sums, grouped by rank or not


@pytest.mark.slow
def test_two_nodes_on_loopback_equal_one_two_process_run(two_procs, launcher, tmp_path):
    # Two torchrun agents, one process each, meeting through the c10d rendezvous on 127.0.0.1: what two machines do.
    out = tmp_path / "nodes"
    port = free_port()
    nodes = [launcher.torchrun(_args(out), nproc=1, torchrun_args=[
        "--nnodes", "2", "--node-rank", str(r), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
        "--rdzv-id", f"test{port}"]) for r in range(2)]  # fmt: skip
    for node in nodes:
        assert node.wait(300) == 0, node.output[-4000:]
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    ref = _weights(two_procs[0])
    got = _weights(out)
    # Bit for bit: the same ranks compute the same slices, and the all-reduce of two values is one addition, so
    # where the processes run (one machine or two) changes nothing.
    assert all(torch.equal(got[k], ref[k]) for k in ref), _rel_diff(got, ref)


@pytest.mark.slow
def test_resume_on_the_same_and_on_another_world_size(two_procs, launcher, tmp_path):
    part = tmp_path / "part"
    launcher.run(_args(part, steps=10))
    other = tmp_path / "other"
    shutil.copytree(part, other)
    # Same world size: bit for bit the uninterrupted 2-process run.
    launcher.run(["train", "--resume", str(part), "--max-steps", str(STEPS)])
    ref = _weights(two_procs[0])
    got = _weights(part)
    assert all(torch.equal(got[k], ref[k]) for k in ref), _rel_diff(got, ref)
    # 2 processes x 40 -> 1 process x 80: the same global batch and images per step; equal to rounding (1e-5 as in
    # the equivalence test).
    cfg = TrainConfig(**{**_config_of(other), "batch_size": 2 * PER_RANK, "max_steps": STEPS})
    _train_one_thread(cfg, resume=other)
    _assert_same_algorithm(_weights(other), ref)


@pytest.mark.slow
def test_each_rank_draws_its_own_dropout_masks_and_resumes_them(launcher, tmp_path):
    # AlexNet (CIFAR size) with dropout 0.5 on digits upsampled to 16x16, 2 processes x 16 images, 6 steps.
    def args(out: Path, steps: int) -> list[str]:
        return ["train", "--model", "alexnet_cifar", "--model-option", "dropout=0.5", "--data", "digits",
                "--image-size", "16", "--epochs", "1", "--max-steps", str(steps), "--batch-size", "16",
                "--schedule", "constant", "--warmup-epochs", "0", "--workers", "0", "--no-progress", "--deterministic",
                "--amp", "off", "--checkpoint-every", "3", "--out", str(out)]

    whole, part = tmp_path / "whole", tmp_path / "part"
    launcher.run(args(whole, 6))
    state = ckpt.load_checkpoint(whole / "checkpoints" / "step-00000003.pt")
    streams = [r["torch"] for r in state["rng_ranks"]]
    assert len(streams) == 2 and not torch.equal(streams[0], streams[1])  # one dropout stream per rank
    # Interrupted after step 3 and resumed: each rank continues its own stream, so the run is bit-identical.
    launcher.run(args(part, 3))
    launcher.run(["train", "--resume", str(part), "--max-steps", "6"])
    ref, got = _weights(whole), _weights(part)
    assert all(torch.equal(got[k], ref[k]) for k in ref), _rel_diff(got, ref)


def _config_of(run: Path) -> dict:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())


@pytest.mark.slow
def test_killed_rank_restarts_from_the_newest_checkpoint_and_completes(two_procs, launcher, tmp_path):
    out = tmp_path / "restart"
    launch = launcher.torchrun(_args(out, "--checkpoint-every", "2"), torchrun_args=["--max-restarts", "1"])
    launch.wait_for(lambda: (out / "checkpoints" / "step-00000002.pt").exists(), 240, "first checkpoint")
    pid = worker_pid(launch.tag, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert launch.wait(300) == 0, launch.output[-4000:]
    assert "torchrun restart 1: continuing the run in" in launch.output
    assert "resuming from" in launch.output
    # The restarted job continued from a checkpoint (bit-exact resume) and so ends where the uninterrupted run did.
    ref, got = _weights(two_procs[0]), _weights(out)
    assert all(torch.equal(got[k], ref[k]) for k in ref), _rel_diff(got, ref)
    assert json.loads((out / "summary.json").read_text())["steps"] == STEPS


@pytest.mark.slow
def test_a_stopped_rank_is_named_within_the_timeout(launcher, tmp_path):
    out = tmp_path / "hang"
    timeout = 4.0
    launch = launcher.torchrun(_args(out, "--checkpoint-every", "2", "--dist-timeout", str(timeout), steps=400,
                                     per_rank=8))
    launch.wait_for(lambda: (out / "checkpoints" / "step-00000002.pt").exists(), 240, "first checkpoint")
    pid = worker_pid(launch.tag, 1)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        waited = launch.wait_for(lambda: "sent no heartbeat" in launch.output, 120, "the stuck rank's name")
    finally:
        os.kill(pid, signal.SIGKILL)  # a stopped process ignores SIGTERM; torchrun would wait 30 s before SIGKILL
    # Silence is counted from the last heartbeat seen, up to two intervals before the stop, and checked every
    # interval: named between timeout - 2 intervals and timeout + 2 intervals (plus slack for a loaded 2-core machine).
    interval = heartbeat_interval(timeout)
    assert timeout - 2 * interval - 0.1 <= waited < timeout + 2 * interval + 10, waited
    assert "rank 1 of 2" in launch.output and f"--dist-timeout {timeout:g}" in launch.output
    assert launch.wait(120) != 0
