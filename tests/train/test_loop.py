"""The run skeleton and the training step as a specification: it learns, accumulation is exact, bad losses stop
it, resume is bit-exact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import convcanon
from convcanon.train import checkpoint as ckpt
from convcanon.train.config import TrainConfig
from convcanon.train.run import NonFiniteLossError, train
from convcanon.train.task import ClassificationTask

QUIET = {"progress": False, "workers": 0}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_safetensors(run_dir / "model.safetensors")


def test_overfits_one_small_batch():
    torch.manual_seed(0)
    model = convcanon.create_model("resnet20", num_classes=10, in_chans=1)
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 10
    task = ClassificationTask()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        task.loss(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all()
        assert task.loss(model(x), y).item() < 0.05


def _run(tmp_path: Path, name: str, **kw) -> Path:
    cfg = TrainConfig(**{**QUIET, "out": str(tmp_path / name), **kw})
    train(cfg, out_stream=open(os.devnull, "w"))
    return tmp_path / name


def test_accumulation_equals_one_big_batch_without_batch_norm(tmp_path):
    # Without BN, k micro-batches of b and one batch of k*b are the same gradient: the loop scales each micro-batch's
    # loss by 1/k, and the data order puts the same k*b samples in one step either way.
    # constant LR: the cosine's length depends on steps per epoch, which differ (44 steps of 32 vs 45 of 4 x 8).
    # The inputs are pinned to the one-pixel translation and no label smoothing: this net without BN amplifies the
    # two groupings' rounding along its trajectory, and with the digits' default recipe (random-resized crop, label
    # smoothing 0.1) the weights agreed to 3e-8 through step 4 but differed by 1.7e-5 at step 6 (measured; the batches
    # themselves are identical, tested in tests/data). The claim here is about accumulation, not that trajectory.
    common = dict(model="resnet20", model_options={"batch_norm": False}, epochs=1, max_steps=6, lr=0.05,
                  warmup_epochs=0.0, schedule="constant", deterministic=True, amp="off", pad=1, label_smoothing=0.0)
    big = _weights(_run(tmp_path, "big", batch_size=32, accum_steps=1, **common))
    acc = _weights(_run(tmp_path, "acc", batch_size=8, accum_steps=4, **common))
    # 1e-5 relative: the two sums group the same float32 terms differently; 6 SGD steps amplify that rounding only a
    # little (observed ~1e-7); a real difference (another batch, a missing 1/k) is >= 1e-2.
    for key in big:
        assert torch.allclose(acc[key], big[key], rtol=1e-5, atol=1e-6), key


def test_accumulation_differs_with_batch_norm(tmp_path):
    # With BN, each micro-batch is normalized by its own statistics, so 4 x 8 is NOT the same as 1 x 32: documented
    # behaviour (use --sync-bn across devices; within one device accumulation cannot share BN statistics).
    common = dict(model="resnet20", epochs=1, max_steps=4, lr=0.05, warmup_epochs=0.0, schedule="constant",
                  deterministic=True)
    big = _weights(_run(tmp_path, "big", batch_size=32, accum_steps=1, **common))
    acc = _weights(_run(tmp_path, "acc", batch_size=8, accum_steps=4, **common))
    worst = max((acc[k].float() - big[k].float()).abs().max().item() for k in big if big[k].is_floating_point())
    assert worst > 1e-4


def test_partial_last_group_is_an_optimizer_step(tmp_path):
    # digits: 1437 training images // 64 = 22 micro-batches; with 4 per step: 5 full steps + one of 2.
    run = _run(tmp_path, "r", batch_size=64, accum_steps=4, epochs=1, warmup_epochs=0.0)
    summary = json.loads((run / "summary.json").read_text())
    plan = json.loads((run / "run.json").read_text())["plan"]
    assert plan["micro_batches_per_epoch"] == 22
    assert plan["steps_per_epoch"] == 6
    assert summary["steps"] == 6


def test_short_run_learns_and_writes_the_run_directory(tmp_path):
    run = _run(tmp_path, "r", epochs=2, batch_size=64)
    names = {p.name for p in run.iterdir()}
    expected = {"config.yaml", "run.json", "metrics.jsonl", "model.safetensors", "summary.json", "checkpoints", "tb"}
    assert expected <= names
    assert any((run / "tb").iterdir())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 2
    assert evals[-1]["samples"] == 360  # every test image once
    # after 2 short epochs a ResNet-20 is far above chance (10%) on digits
    assert evals[-1]["top1"] > 80
    info = json.loads((run / "run.json").read_text())
    assert info["torch"] == torch.__version__ and info["plan"]["global_batch"] == 64
    state = ckpt.load_checkpoint(run / "checkpoints" / "best.pt")
    assert state["classes"] == [str(i) for i in range(10)]


def test_bf16_autocast_path_on_cpu(tmp_path):
    run = _run(tmp_path, "r", epochs=1, max_steps=8, amp="bf16", batch_size=32)
    info = json.loads((run / "run.json").read_text())
    assert info["amp"] == "bf16"
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"train"' in line]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert all(v.dtype == torch.float32 for v in _weights(run).values() if v.is_floating_point())


def test_non_finite_loss_stops_before_the_step_and_keeps_checkpoints(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = ClassificationTask.loss

    def poisoned(self, output, target):
        calls["n"] += 1
        loss = original(self, output, target)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(ClassificationTask, "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="step 5"):
        _run(tmp_path, "r", epochs=1, batch_size=32, checkpoint_every=2)
    newest = ckpt.load_latest(tmp_path / "r")
    assert newest is not None
    state, path = newest
    assert state["step"] == 4  # the last good checkpoint, intact
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_non_finite_loss_is_caught_at_the_next_log_line_before_any_save(tmp_path, monkeypatch):
    # No checkpoint in between: the check runs at step 20 (--log-every), names step 5, and nothing was saved.
    calls = {"n": 0}
    original = ClassificationTask.loss

    def poisoned(self, output, target):
        calls["n"] += 1
        loss = original(self, output, target)
        return loss * float("inf") if calls["n"] == 5 else loss

    monkeypatch.setattr(ClassificationTask, "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 5 \(found at step 20"):
        _run(tmp_path, "r", epochs=1, batch_size=32, log_every=20)
    assert ckpt.load_latest(tmp_path / "r") is None
    assert not (tmp_path / "r" / "model.safetensors").exists()
    events = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [(e["step"], e["event"]) for e in events if e.get("kind") == "event"] == [(4, "non-finite loss")]


_SYNCS = ("item", "__bool__", "__float__", "__int__", "tolist")


def _count_host_syncs_in_loop(monkeypatch) -> dict[str, int]:
    """Count the run skeleton's, the strategy's, the step's, the weight average's and the batch mixing's own reads of
    tensor values on the host (each is a device sync on a GPU)."""
    from convcanon.train import ema, mixing, run, step, strategy

    counts = {"n": 0}
    files = {module.__file__ for module in (run, step, strategy, ema, mixing)}
    for name in _SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            if sys._getframe(1).f_code.co_filename in files:
                counts["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_the_training_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch, amp):
    # Host reads happen at log lines only (the loss window and the non-finite check), never per step: 6 and 18 steps
    # with one log line at the end read back exactly as often.
    counts = _count_host_syncs_in_loop(monkeypatch)
    reads = []
    for steps in (6, 18):
        counts["n"] = 0
        _run(tmp_path, f"r{steps}", epochs=1, batch_size=16, max_steps=steps, log_every=1000, amp=amp, mixup=0.2,
             cutmix=1.0, model_ema=True)
        reads.append(counts["n"])
    assert reads[0] == reads[1] > 0, reads


def test_existing_run_directory_is_not_overwritten(tmp_path):
    _run(tmp_path, "r", epochs=1, max_steps=2, batch_size=32)
    with pytest.raises(ValueError, match="--resume"):
        _run(tmp_path, "r", epochs=1, max_steps=2, batch_size=32)


def test_model_too_big_for_the_data_is_an_error_before_work(tmp_path):
    with pytest.raises(ValueError, match="--image-size"):
        _run(tmp_path, "r", model="googlenet", epochs=1)  # needs >= 79 px; digits are 8 px
    assert not (tmp_path / "r" / "config.yaml").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Bit-exact resume through a real process killed with SIGKILL

# The batch-level regularizers and the weight average on: their draws and their state must survive the kill too.
RECIPE = ("--mixup", "0.4", "--cutmix", "1.0", "--mixup-prob", "0.8", "--label-smoothing", "0.1", "--model-ema",
          "--model-ema-decay", "0.99", "--model-ema-steps", "2")


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "convcanon", "train", "--model", "resnet20", "--epochs", "2", "--batch-size", "64",
            "--deterministic", "--checkpoint-every", "3", "--no-progress", "--workers", "0", "--out", str(out),
            "--seed", "3", *RECIPE, *extra]


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """The final weights and, from the last checkpoint, the raw weights and the weight average with its counter."""
    state, _ = ckpt.load_latest(run_dir)
    return {**{f"final.{k}": v for k, v in _weights(run_dir).items()},
            **{f"raw.{k}": v for k, v in state["model"].items()},
            **{f"ema.{k}": v for k, v in state["ema"]["module"].items()},
            "ema updates": torch.tensor(state["ema"]["updates"])}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(convcanon.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _kill_after_checkpoint(out: Path, min_step: int, *extra: str) -> None:
    proc = subprocess.Popen(_cli(out, *extra), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        steps = [int(p.stem.split("-")[1]) for p in (out / "checkpoints").glob("step-*.pt")] if out.exists() else []
        if steps and max(steps) >= min_step:
            break
        if proc.poll() is not None:
            raise AssertionError(f"training ended before the kill: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists(), "the kill came too late to test anything"


def _amp(run_dir: Path) -> tuple[str, str]:
    """The precision the run resolved (``--amp auto`` measures fp32 against bf16 on this machine and keeps the choice
    in config.yaml), as flags for the run it is compared with: two measurements of a close race may disagree."""
    return "--amp", yaml.safe_load((run_dir / "config.yaml").read_text())["amp"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    subprocess.run(_cli(out), env=_env(), check=True, stdout=subprocess.DEVNULL)
    return _final_state(out), _amp(out)


@pytest.mark.parametrize("min_step", [4, 25])  # mid-epoch 1, and mid-epoch 2 (22 steps per epoch)
def test_sigkill_then_resume_is_bit_exact(tmp_path, uninterrupted, min_step):
    uninterrupted, amp = uninterrupted
    out = tmp_path / "run"
    _kill_after_checkpoint(out, min_step, *amp)
    subprocess.run(_cli(out, "--resume", str(out)), env=_env(), check=True, stdout=subprocess.DEVNULL)
    resumed = _final_state(out)
    assert resumed.keys() == uninterrupted.keys()
    for key in resumed:
        assert torch.equal(resumed[key], uninterrupted[key]), key


# Every augmentation option on: random-resized crop, flip, a policy, random erasing, a train crop apart from the
# evaluation's resize and crop, repeated augmentation. Each sample's pixels are a pure function of (seed, epoch,
# position), so the resumed run sees exactly the pixels the uninterrupted one saw.
EVERY_AUGMENTATION = ("--image-size", "12", "--hflip", "0.5", "--scale", "0.35", "1", "--ratio", "0.8", "1.25",
                      "--aa", "trivialaugment", "--reprob", "0.25", "--train-crop-size", "10", "--val-resize-size",
                      "12", "--val-crop-size", "11", "--ra-reps", "2")


@pytest.fixture(scope="module")
def uninterrupted_augmented(tmp_path_factory):
    out = tmp_path_factory.mktemp("full-augmented") / "run"
    subprocess.run(_cli(out, *EVERY_AUGMENTATION), env=_env(), check=True, stdout=subprocess.DEVNULL)
    return _weights(out), _amp(out)


def test_sigkill_then_resume_is_bit_exact_with_every_augmentation_option(tmp_path, uninterrupted_augmented):
    uninterrupted_augmented, amp = uninterrupted_augmented
    out = tmp_path / "run"
    _kill_after_checkpoint(out, 25, *EVERY_AUGMENTATION, *amp)  # mid-epoch 2
    subprocess.run(_cli(out, *EVERY_AUGMENTATION, "--resume", str(out)), env=_env(), check=True,
                   stdout=subprocess.DEVNULL)
    resumed = _weights(out)
    assert resumed.keys() == uninterrupted_augmented.keys()
    for key in resumed:
        assert torch.equal(resumed[key], uninterrupted_augmented[key]), key
    config = (out / "config.yaml").read_text()
    assert "aa: trivialaugment" in config and "ra_reps: 2" in config  # recorded with the run
    recipe = json.loads((out / "run.json").read_text())["data"]["recipe"]
    assert (recipe["train_crop"], recipe["val_resize"], recipe["val_crop"], recipe["reprob"]) == (10, 12, 11, 0.25)
    # The weights carry the fixed preprocessing of their inputs: evaluation's resize, crop and normalization.
    pre = json.loads(ckpt.safetensors_metadata(out / "model.safetensors")["preprocessing"])
    assert (pre["resize"], pre["crop"], len(pre["mean"]), len(pre["std"])) == (12, 11, 1, 1)
    assert pre["input_size"] == [1, 11, 11]


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path, uninterrupted):
    uninterrupted, amp = uninterrupted
    out = tmp_path / "run"
    _kill_after_checkpoint(out, 10, *amp)
    newest = ckpt.find_checkpoints(out)[0]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    done = subprocess.run(_cli(out, "--resume", str(out)), env=_env(), check=True, capture_output=True, text=True)
    assert newest.name in done.stderr + done.stdout
    resumed = _final_state(out)
    for key in resumed:
        assert torch.equal(resumed[key], uninterrupted[key]), key


def test_eval_command_reports_the_best_checkpoint(tmp_path, capsys):
    from convcanon.cli import main

    run = _run(tmp_path, "r", epochs=2, batch_size=64)
    # The best evaluation of the model or of its weight average (on for the digits): the weights that scored it.
    best = max(max(r["top1"], r.get("ema_top1", 0.0)) for r in map(json.loads, (run / "metrics.jsonl").read_text()
               .splitlines()) if r["kind"] == "eval")  # fmt: skip
    assert best == json.loads((run / "summary.json").read_text())["best_top1"]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 360
    assert result["top1"] == pytest.approx(best, abs=1e-9)  # the same weights on the same images
    assert result["amp"] == json.loads((run / "run.json").read_text())["amp"]  # ... in the run's own precision
    assert sum(row["samples"] for row in result["per_class"]) == 360
    assert sum(sum(r) for r in result["confusion"]) == 360
    assert Path(result["plot"]).stat().st_size > 1000
