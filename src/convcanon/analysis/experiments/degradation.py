"""Degradation: deeper plain nets train worse; deeper residual nets do not (He et al. 2015, Fig. 6 and Sec. 4.2).

The CIFAR ResNets and their plain twins (same layers, same parameters, no ``+ x``) at depths 20, 32, 56 (and 110 in
full mode) on the embedded digits, several seeds each, the same recipe for all: SGD with Nesterov momentum, linear
warmup then cosine, batch 64. Training error is what the claim is about (a deeper plain net is *harder to optimize*,
not overfitting): it is measured on the training split in eval mode at the end, and as the running error of the
training batches along the way.

Quick mode trains 200 steps (9 epochs): short, and that is where the plain nets' optimization difficulty shows most
(plain-56 has barely left chance level while plain-20 is at a few percent). Full mode trains 2,000 steps (~90 epochs),
closer to the paper's schedule, where the gap narrows but stays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .core import Unit, Verdict, fmt_pm, images, md_table, mean_std, pick, separated, verdict_lines

NAME = "degradation"
TITLE = "Degradation: plain vs residual nets of growing depth"
CLAIM = "Deeper plain nets have higher training error; deeper residual nets do not (He et al. 2015, Fig. 6)"
DEPENDS: tuple[str, ...] = ()

# Training error gaps below this many points are not called an effect even with zero seed spread (one-seed runs).
FLOOR = 1.0
# Cost estimate of a unit (orders the work, predicts the runtime): ms per weighted layer per training step, timed with
# one thread at batch 64 on 8x8 digits.
MS_PER_LAYER_STEP = 1.3


def settings(mode: str, seed: int = 0, device: str = "auto",
             data: str = "digits") -> dict[str, Any]:
    return {
        "depths": pick(mode, [20, 32], [20, 32, 56], [20, 32, 56, 110]),
        "seeds": [seed + k for k in range(pick(mode, 1, 3, 5))],
        "steps": pick(mode, 4, 200, 2000),
        "batch_size": 64,
        "lr": 0.05,  # peak LR at batch 64 (0.1 at 128 in the paper, scaled linearly)
        "warmup_steps": pick(mode, 1, 20, 100),
        "eval_every": pick(mode, 2, 25, 100),
        "device": device,
    }


def units(s: dict[str, Any]) -> list[Unit]:
    out = []
    for depth in s["depths"]:
        for kind in ("plain", "resnet"):
            for seed in s["seeds"]:
                params = {"model": f"{kind}{depth}", "seed": seed, "steps": s["steps"], "batch_size": s["batch_size"],
                          "lr": s["lr"], "warmup_steps": s["warmup_steps"], "eval_every": s["eval_every"],
                          "device": s["device"]}  # fmt: skip
                cost = MS_PER_LAYER_STEP * depth * s["steps"] * 1.1 / 1000  # +10%: evaluations
                out.append(Unit(f"{kind}{depth}/seed{seed}", f"{__name__}:train_one", params, cost))
    return out


def train_one(model: str, seed: int, steps: int, batch_size: int, lr: float, warmup_steps: int, eval_every: int,
              device: str) -> dict[str, Any]:
    import torch

    from ... import create_model
    from ..profile import count_params
    from . import lean

    data = lean.digits()
    torch.manual_seed(seed)
    net = create_model(model, num_classes=data.info.num_classes, in_chans=data.info.in_chans)
    result = lean.fit(net, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, warmup_steps=warmup_steps,
                      eval_every=eval_every, device=lean.resolve_device(device))
    return {"model": model, "seed": seed, "params": count_params(net), **result}


def assemble(s: dict[str, Any], outputs: dict[str, Any], deps: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for depth in s["depths"]:
        for kind in ("plain", "resnet"):
            runs = [outputs[f"{kind}{depth}/seed{seed}"] for seed in s["seeds"]]
            rows.append({
                "model": f"{kind}{depth}", "depth": depth, "residual": kind == "resnet", "params": runs[0]["params"],
                "seeds": s["seeds"], "train_error": [_num(r["final_train_error"]) for r in runs],
                "test_error": [_num(r["final_test_error"]) for r in runs],
                "diverged": sum(bool(r["diverged"]) for r in runs),
                "train_curves": [r["train_curve"] for r in runs],
                "test_curves": [r.get("test_curve", []) for r in runs],
                "cpu_seconds": [r["cpu_seconds"] for r in runs],
            })  # fmt: skip
    return {"depths": s["depths"], "seeds": s["seeds"], "steps": s["steps"], "batch_size": s["batch_size"],
            "lr": s["lr"], "rows": rows}


def _num(x: Any) -> float:
    return 90.0 if x is None else float(x)  # a diverged run is at chance level (10 classes)


def _row(results: dict[str, Any], residual: bool, depth: int) -> dict[str, Any]:
    return next(r for r in results["rows"] if r["residual"] == residual and r["depth"] == depth)


def verdict_degradation(results: dict[str, Any]) -> Verdict:
    """Deepest plain net vs shallowest plain net, final training error, against the seed spread."""
    claim = "Deeper plain nets have higher training error"
    depths = results["depths"]
    lo, hi = min(depths), max(depths)
    if lo == hi:
        return Verdict(claim, None, "only one depth was run")
    shallow, deep = _row(results, False, lo)["train_error"], _row(results, False, hi)["train_error"]
    nums = (f"plain-{hi} ends at {fmt_pm(deep)}% training error, plain-{lo} at {fmt_pm(shallow)}% "
            f"({len(deep)} seed(s), after {results['steps']} steps)")
    sep = separated(deep, shallow, FLOOR)
    if sep is True:
        return Verdict(claim, True, f"{nums}: the deeper plain net trains worse, beyond the seed spread.")
    if sep is False:
        return Verdict(claim, False, f"{nums}: the deeper plain net trains *better* here.")
    return Verdict(claim, None, f"{nums}: the difference is inside the seed spread (or below {FLOOR} point).")


def verdict_residual_depth(results: dict[str, Any]) -> Verdict:
    """Deepest residual net: not worse than the shallowest residual net, and better than the plain net of its depth."""
    claim = "Deeper residual nets do not degrade, and beat their plain twins"
    depths = results["depths"]
    lo, hi = min(depths), max(depths)
    res_lo, res_hi = _row(results, True, lo)["train_error"], _row(results, True, hi)["train_error"]
    plain_hi = _row(results, False, hi)["train_error"]
    nums = (f"resnet-{hi} {fmt_pm(res_hi)}% vs resnet-{lo} {fmt_pm(res_lo)}% vs plain-{hi} {fmt_pm(plain_hi)}% "
            "training error")
    worse_with_depth = separated(res_hi, res_lo, FLOOR) is True if lo != hi else False
    beats_plain = separated(plain_hi, res_hi, FLOOR)
    if worse_with_depth:
        return Verdict(claim, False, f"{nums}: the deeper residual net trains worse, beyond the seed spread.")
    if beats_plain is True:
        return Verdict(claim, True, f"{nums}: depth costs the residual nets nothing beyond the seed spread, and the "
                                    "shortcut wins at equal depth and parameters.")
    if beats_plain is False:
        return Verdict(claim, False, f"{nums}: the plain net trains better than its residual twin.")
    return Verdict(claim, None, f"{nums}: residual and plain are within the seed spread at depth {hi}.")


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    return [verdict_degradation(results), verdict_residual_depth(results)]


def plot(results: dict[str, Any], out_dir: Path) -> list[str]:
    import numpy as np

    from ..plots import plain_log_ticks, pyplot, save

    plt = pyplot()
    depths = results["depths"]
    cmap = plt.get_cmap("viridis")
    colours = {d: cmap(0.85 - 0.75 * i / max(1, len(depths) - 1)) for i, d in enumerate(depths)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, residual in zip(axes, (False, True)):
        for depth in depths:
            row = _row(results, residual, depth)
            label = f"{'resnet' if residual else 'plain'}-{depth}"
            curves = [c for c in row["train_curves"] if c]
            n = min(len(c) for c in curves)
            steps = np.array([p[0] for p in curves[0][:n]])
            errs = np.array([[p[1] for p in c[:n]] for c in curves])
            ax.plot(steps, errs.mean(0), color=colours[depth], lw=1.2, label=f"{label} train")
            if len(curves) > 1:
                ax.fill_between(steps, errs.min(0), errs.max(0), color=colours[depth], alpha=0.15, lw=0)
            tests = [c for c in row["test_curves"] if c]
            if tests:
                m = min(len(c) for c in tests)
                tsteps = np.array([p[0] for p in tests[0][:m]])
                terrs = np.array([[p[1] for p in c[:m]] for c in tests]).mean(0)
                ax.plot(tsteps, terrs, color=colours[depth], lw=2.2, ls="--", label=f"{label} test")
        ax.set_yscale("log")
        plain_log_ticks(ax)
        ax.set_xlabel("optimizer step (batch 64)")
        ax.set_title("Residual nets (with + x)" if residual else "Plain nets (no shortcut)")
        ax.legend(ncol=2, loc="lower left")
    axes[0].set_ylabel("error (%), log scale")
    n_seeds = len(results["seeds"])
    fig.suptitle(f"Degradation on digits: training (thin, band = min-max over {n_seeds} seed(s)) and test (dashed) "
                 "error", fontsize=11)
    names = [save(fig, out_dir, "degradation_curves.png")]

    fig, ax = plt.subplots(figsize=(6, 4))
    for residual, colour, label in ((False, "tab:red", "plain"), (True, "tab:blue", "residual")):
        means, stds = zip(*(mean_std(_row(results, residual, d)["train_error"]) for d in depths))
        ax.errorbar(depths, means, yerr=stds, color=colour, marker="o", capsize=4, label=f"{label}: training error")
        tmeans, tstds = zip(*(mean_std(_row(results, residual, d)["test_error"]) for d in depths))
        ax.errorbar(depths, tmeans, yerr=tstds, color=colour, marker="s", ls="--", capsize=4, alpha=0.6,
                    label=f"{label}: test error")
    ax.set_xlabel("depth (weighted layers)")
    ax.set_ylabel(f"final error (%), log scale, mean ± std of {n_seeds}")
    ax.set_yscale("log")
    plain_log_ticks(ax)
    ax.set_xticks(depths)
    ax.set_title(f"Final error vs depth after {results['steps']} steps")
    ax.legend()
    names.append(save(fig, out_dir, "degradation_final.png"))
    return names


def section(results: dict[str, Any], verdicts: list[Verdict], plots: list[str]) -> str:
    rows = [(f"`{r['model']}`", r["depth"], "yes" if r["residual"] else "no", f"{r['params']:,}",
             fmt_pm(r["train_error"], 2), fmt_pm(r["test_error"], 2), len(r["seeds"]))
            for r in results["rows"]]  # fmt: skip
    table = md_table(rows, ["model", "depth", "shortcut", "params", "final train error %", "final test error %",
                            "seeds"], "lrcrrrr")
    return (
        f"Plain and residual CIFAR nets on digits, {results['steps']} steps at batch {results['batch_size']}, peak LR "
        f"{results['lr']}, mean ± std over {len(results['seeds'])} seed(s). On 8x8 inputs ResNet-20's three stages run "
        "at 8, 4 and 2 pixels, not the paper's 32, 16 and 8, and no test error here can be set beside the paper's: "
        "He et al.'s own protocol on CIFAR-10, with Table 6 beside the measured errors, is `convcanon experiment "
        f"he-table6 --data cifar10:PATH`.\n\n{table}\n\n{verdict_lines(verdicts)}\n\n"
        + images(plots, NAME, {"degradation_curves.png": "degradation curves", "degradation_final.png": "final error"})
    )
