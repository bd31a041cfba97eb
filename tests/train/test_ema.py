"""The weight average (--model-ema) as a specification: the average a hand computes, torchvision's decay adjustment,
a copy during warmup, its state in checkpoints, the same average on every process, bad values refused before any
work; and the regularizer flags (--mixup, --cutmix, --model-ema*) checked like every other setting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convcanon.train.run
from convcanon.cli import main
from convcanon.train.config import TrainConfig, config_from_dict
from convcanon.train.ema import ModelEma, better, decay_per_update, resolve_model_ema
from convcanon.train.strategy import SingleDevice, Strategy


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x):
        return self.bn(self.fc(x))


def _trajectory(steps: int) -> list[dict[str, torch.Tensor]]:
    """A model's state after each of ``steps`` SGD steps (step 0: the initial weights)."""
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    states = [{k: v.clone() for k, v in model.state_dict().items()}]
    for _ in range(steps):
        (model(torch.randn(8, 3)) - torch.randn(8, 2)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    return states


def _run_ema(decay: float, interval: int, warmup: int, steps: int) -> tuple[ModelEma, list]:
    states = _trajectory(steps)
    model = Tiny()
    ema = ModelEma(model, decay, interval, warmup)
    for step in range(1, steps + 1):
        model.load_state_dict(states[step])
        if ema.due(step):
            ema.update(model, step)
    return ema, states


def test_the_average_is_the_one_computed_by_hand():
    """e = w at the first update, then e = d * e + (1 - d) * w at each update, in float64 by hand. lerp rounds each
    update once in float32 (~6e-8 relative), 12 updates stay below 1e-6; a wrong decay (0.8 for 0.9) or a missed
    update differs by >= 1e-3."""
    decay, interval, steps = 0.9, 2, 25
    ema, states = _run_ema(decay, interval, 0, steps)
    for key, value in ema.module.state_dict().items():
        if not value.is_floating_point():  # batch norm's step counter: copied, not averaged
            assert torch.equal(value, states[steps - steps % interval][key]), key
            continue
        hand = None
        for step in range(interval, steps + 1, interval):
            w = states[step][key].double()
            hand = w if hand is None else decay * hand + (1 - decay) * w
        assert torch.allclose(value.double(), hand, rtol=0, atol=1e-6), key
    for key in ("fc.weight", "bn.weight", "bn.running_mean"):  # it did average (fc.bias gets no gradient under BN)
        assert not torch.allclose(ema.module.state_dict()[key], states[steps][key], atol=1e-3), key
    assert ema.updates == steps // interval


def test_the_average_is_a_copy_during_warmup_and_restarts_after_it():
    ema, states = _run_ema(0.9, 1, warmup=10, steps=10)
    for key, value in ema.module.state_dict().items():
        assert torch.equal(value, states[10][key]), key
    assert ema.updates == 0
    ema, states = _run_ema(0.9, 1, warmup=10, steps=12)  # step 11 copies, step 12 averages
    w = ema.module.fc.weight.double()
    assert torch.allclose(w, 0.9 * states[11]["fc.weight"].double() + 0.1 * states[12]["fc.weight"].double(),
                          atol=1e-7)


def test_decay_is_adjusted_as_torchvisions_reference_does():
    # references/classification/train.py: adjust = world_size * batch_size * model_ema_steps / epochs,
    # alpha = min(1, (1 - decay) * adjust); its ResNet-50 recipe: 8 x 128 images, every 32 steps, 600 epochs.
    assert decay_per_update(0.99998, 1024, 32, 600) == pytest.approx(1 - 2e-5 * 1024 * 32 / 600)
    assert decay_per_update(0.998, 64, 1, 30) == pytest.approx(1 - 0.002 * 64 / 30)
    assert decay_per_update(0.5, 1024, 32, 1) == 0.0  # alpha clipped to 1: the average is the weights


def test_the_state_round_trips_and_continues_exactly():
    full, _ = _run_ema(0.9, 1, 0, 20)
    half, states = _run_ema(0.9, 1, 0, 10)
    again = ModelEma(Tiny(), 0.9, 1, 0)
    again.load_state_dict(half.state_dict())
    model = Tiny()
    for step in range(11, 21):
        model.load_state_dict(states[step] if step < len(states) else _trajectory(20)[step])
        again.update(model, step)
    for key, value in full.module.state_dict().items():
        assert torch.equal(again.module.state_dict()[key], value), key
    assert again.updates == full.updates == 20


def test_auto_is_on_for_the_main_job_only():
    assert resolve_model_ema(TrainConfig())[0] is True
    assert resolve_model_ema(TrainConfig(data="synthetic"))[0] is False
    assert resolve_model_ema(TrainConfig(model_ema=False))[0] is False
    assert resolve_model_ema(TrainConfig(data="synthetic", model_ema=True))[0] is True
    assert resolve_model_ema(TrainConfig(pipeline_stages=2, microbatches=2))[0] is False


def test_better_is_higher_top1_then_lower_loss():
    assert better({"top1": 99.0, "loss": 0.5}, {"top1": 98.0, "loss": 0.1})
    assert better({"top1": 99.0, "loss": 0.1}, {"top1": 99.0, "loss": 0.2})
    assert not better({"top1": 99.0, "loss": 0.2}, {"top1": 99.0, "loss": 0.2})


class _TwoRanks:
    """A process group of two seen from one rank: the other rank's fingerprint is ``other``."""

    distributed = True

    def __init__(self, other: torch.Tensor) -> None:
        self.calls, self.other = 0, other

    def all_reduce_max(self, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.maximum(t, self.other if self.calls == 1 else -self.other)


def test_an_average_that_differs_between_processes_stops_the_run():
    ema = ModelEma(Tiny(), 0.9)
    fp = ema.fingerprint()
    strategy = Strategy()
    strategy.ctx = _TwoRanks(fp.clone())
    strategy.check_same_everywhere(fp, "the average")
    strategy.ctx = _TwoRanks(fp + torch.nn.functional.one_hot(torch.tensor(2), fp.numel()) * 1e-9)
    with pytest.raises(RuntimeError, match="the average differs between processes"):
        strategy.check_same_everywhere(fp, "the average")


@pytest.mark.parametrize(("key", "value", "valid"), [
    ("mixup", -0.2, "a finite number >= 0"),
    ("cutmix", float("inf"), "a finite number >= 0"),
    ("mixup_prob", 1.5, r"a probability in \[0, 1\]"),
    ("mixup_switch_prob", -0.1, r"a probability in \[0, 1\]"),
    ("model_ema_decay", 1.0, r"a number in \(0, 1\), e\.g\. 0\.995"),
    ("model_ema_decay", 0.0, r"a number in \(0, 1\), e\.g\. 0\.995"),
    ("model_ema_decay", float("nan"), r"a number in \(0, 1\), e\.g\. 0\.995"),
    ("model_ema_steps", 0, "an integer >= 1"),
])  # fmt: skip
def test_bad_values_name_their_flag_and_range(key, value, valid):
    flag = "--" + key.replace("_", "-")
    with pytest.raises(ValueError, match=f"command line: {flag} must be {valid}; got"):
        config_from_dict({key: value}, where="command line")


def test_ema_with_a_pipeline_is_accepted_and_auto_stays_off_there():
    from convcanon.train.ema import resolve_model_ema

    cfg = config_from_dict({"model_ema": True, "pipeline_stages": 2, "microbatches": 2})
    assert resolve_model_ema(cfg) == (True, "as asked")
    assert resolve_model_ema(config_from_dict({"pipeline_stages": 2, "microbatches": 2}))[0] is False


@pytest.mark.parametrize(("argv", "flag"), [
    (["--mixup", "-1"], "--mixup"),
    (["--cutmix", "-0.5"], "--cutmix"),
    (["--model-ema-decay", "1.5"], "--model-ema-decay"),
    (["--model-ema-decay", "0"], "--model-ema-decay"),
    (["--model-ema-steps", "0"], "--model-ema-steps"),
])  # fmt: skip
def test_the_command_refuses_bad_values_before_any_work(argv, flag, tmp_path, capsys, monkeypatch):
    def fail(*a, **k):
        pytest.fail("the run started before its settings were checked")

    monkeypatch.setattr(SingleDevice, "setup", fail)
    monkeypatch.setattr(convcanon.train.run, "claim_new_run_dir", fail)
    assert main(["train", "--out", str(tmp_path / "run"), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convcanon train: error: ") and flag in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_run_evaluates_the_average_beside_the_model_and_keeps_the_better(tmp_path):
    import io
    import json

    from safetensors import safe_open

    from convcanon.train import checkpoint as ckpt
    from convcanon.train.run import train

    out = tmp_path / "run"
    said = io.StringIO()
    cfg = TrainConfig(epochs=2, out=str(out), progress=False, workers=0, amp="off", mixup=0.2, cutmix=1.0,
                      label_smoothing=0.1, model_ema_decay=0.99)  # digits: the average is on by default
    result = train(cfg, out_stream=said)
    text = said.getvalue()
    assert "weight EMA: decay" in text and "batch mixing: MixUp alpha 0.2 and CutMix alpha 1" in text
    assert text.count("EMA test loss") == 2  # one line per epoch beside the model's
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 2 and all({"top1", "ema_top1", "ema_loss", "ema_top5"} <= r.keys() for r in evals)
    assert all(0 <= r["top1"] <= 100 for r in records if r["kind"] == "train")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_ema"]["top1"] == evals[-1]["ema_top1"] == result.final_ema["top1"]
    chosen = "ema" if better(summary["final_ema"], summary["final"]) else "raw"
    assert summary["weights"] == result.weights == chosen
    state, _ = ckpt.load_latest(out)
    expected = state["ema"]["module"] if chosen == "ema" else state["model"]
    weights = ckpt.load_safetensors(out / "model.safetensors")
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata()["chosen"] == chosen
    assert ("EMA " + f"{summary['final_ema']['top1']:.2f}%") in text.splitlines()[-1]
    # The best evaluation is the better of the two at each epoch; summary, checkpoint and the last line say whose.
    scored = [("ema", r["ema_top1"]) if better({"top1": r["ema_top1"], "loss": r["ema_loss"]}, r) else
              ("raw", r["top1"]) for r in evals]
    best = max(scored, key=lambda s: s[1])  # the first of equal figures: a later tie does not replace it
    assert (summary["best_top1"], summary["best_weights"]) == (best[1], best[0])
    assert (result.best_top1, result.best_weights) == (best[1], best[0])
    assert ckpt.load_checkpoint(out / "checkpoints" / "best.pt")["metrics"]["best_weights"] == best[0]


def test_the_best_evaluation_may_be_the_averages_and_eval_uses_its_weights(tmp_path, monkeypatch):
    # Scripted figures: the average scores 100% after epoch 2 (after the warmup epoch, where it is a copy of the
    # weights) and 0% after epochs 1 and 3, the model 50% each time. The best is then the average's epoch-2
    # evaluation: best.pt is that checkpoint, its metrics and summary.json say "ema", and `convcanon eval` of the run
    # (or of best.pt) loads the average's weights, of any other checkpoint the model's.
    import io
    import json

    from convcanon.train import checkpoint as ckpt
    from convcanon.train.evaluate_cli import _load
    from convcanon.train.run import train

    calls = {"ema": 0}
    real_evaluate, real_module = SingleDevice.evaluate, SingleDevice.evaluate_module

    def model_half(self, *args, **kwargs):
        return {**real_evaluate(self, *args, **kwargs), "top1": 50.0}

    def average_first(self, module, *args, **kwargs):
        figures = real_module(self, module, *args, **kwargs)
        if any(p.requires_grad for p in module.parameters()):  # the model's own evaluation goes through here too
            return figures
        calls["ema"] += 1
        return {**figures, "top1": 100.0 if calls["ema"] == 2 else 0.0}

    monkeypatch.setattr(SingleDevice, "evaluate", model_half)
    monkeypatch.setattr(SingleDevice, "evaluate_module", average_first)
    out, said = tmp_path / "run", io.StringIO()
    # Stopped 3 steps into epoch 3 (22 steps an epoch), then resumed: the mid-epoch checkpoint keeps whose the best is.
    stopped = train(TrainConfig(epochs=3, out=str(out), progress=False, workers=0, amp="off", max_steps=47),
                    out_stream=io.StringIO())
    assert stopped.steps == 47 and (stopped.best_top1, stopped.best_weights) == (100.0, "ema")
    mid, _ = ckpt.load_latest(out)
    assert mid["step"] == 47 and mid["metrics"] == {"best_top1": 100.0, "best_weights": "ema"}
    result = train(TrainConfig(epochs=3, out=str(out), progress=False, workers=0, amp="off"), resume=out,
                   out_stream=said)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["best_top1"], summary["best_weights"]) == (100.0, "ema") == (result.best_top1, result.best_weights)
    assert summary["weights"] == "raw"  # the final choice is the last evaluation's: 50% against 0%
    assert "(best 100.00% of the EMA)" in said.getvalue().splitlines()[-1]
    best = ckpt.load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["epoch"] == 2 and best["metrics"]["best_weights"] == "ema"
    for path in (out, out / "checkpoints" / "best.pt"):
        weights = _load(path)[0]
        assert all(torch.equal(weights[k], best["ema"]["module"][k]) for k in best["model"])
        assert any(not torch.equal(weights[k], best["model"][k]) for k in best["model"])
    from convcanon.train.weights import read_weights

    loaded = read_weights(out / "checkpoints" / "best.pt").state  # load_model and --init read best.pt alike
    assert all(torch.equal(loaded[k], best["ema"]["module"][k]) for k in best["model"])
    latest = sorted((out / "checkpoints").glob("step-*.pt"))[-1]
    state = ckpt.load_checkpoint(latest)
    assert state["metrics"]["best_weights"] == "ema"  # the best so far, as the run resumes it
    assert all(torch.equal(_load(latest)[0][k], state["model"][k]) for k in state["model"])
    # A resumed run continues from the best so far: one more epoch scores 50% and 0%, the best stays the average's.
    again = train(TrainConfig(epochs=4, out=str(out), progress=False, workers=0, amp="off"), resume=out,
                  out_stream=io.StringIO())
    assert again.epochs_done == 4 and (again.best_top1, again.best_weights) == (100.0, "ema")
    assert json.loads((out / "summary.json").read_text())["best_weights"] == "ema"
