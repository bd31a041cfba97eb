"""Krizhevsky et al. 2012, Fig. 1, on CIFAR-10: a four-layer convolutional net reaches 25% training error six times
faster with ReLUs than with tanh.

The net is three 3x3 conv layers (32, 32, 64 channels, each followed by 2x2 max pooling) and one linear layer after
global average pooling (``ideas.MINI_CONFIGS["cifar_four_layer"]``: the zoo's VGG class, so the activation is the real
switch); the paper does not print its net, whose widths these are (cuda-convnet's CIFAR example). As in the paper, no
regularization of any kind (no weight decay, no dropout, no augmentation), and each activation trains at the LR of a
stated sweep that reaches the target in the fewest steps ("the learning rates for each network were chosen
independently to make training as fast as possible"). The measure is optimizer steps (batch 128, SGD with momentum
0.9, constant LR) until the running training error over ``window`` steps first reaches 25%.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import papers
from .core import Unit, Verdict, fmt_pm, images, md_table, mean_std, pick, separated, verdict_lines

NAME = "alexnet_fig1"
TITLE = "ReLU vs tanh on CIFAR-10, as AlexNet's Fig. 1"
CLAIM = "A four-layer CNN with ReLUs reaches 25% training error six times faster than with tanh (Krizhevsky 2012)"
DEPENDS: tuple[str, ...] = ()
DATA = {"cifar10": 32, "cifar100": 32}
CONFIG = "cifar_four_layer"
# CPU cost of a unit: seconds per step of the four-layer net at batch 128 on 32x32, one thread (a tenth of ResNet-20).
S_PER_STEP = 0.08


def settings(mode: str, seed: int = 0, device: str = "auto", data: str = "cifar10") -> dict[str, Any]:
    return {
        "data": data,
        "lrs": pick(mode, [0.01], [0.01, 0.03, 0.1], [0.003, 0.01, 0.03, 0.1, 0.3]),
        "max_steps": pick(mode, 6, 4000, 20_000),  # full: 51 epochs; the paper's tanh curve needs ~35
        "batch_size": pick(mode, 16, 128, 128),
        "window": pick(mode, 2, 50, 100),  # steps per point of the running training error
        "target": papers.AF1_TARGET,
        "seeds": [seed + k for k in range(pick(mode, 1, 1, 3))],
        "device": device,
    }


def units(s: dict[str, Any]) -> list[Unit]:
    out = []
    for act in ("relu", "tanh"):
        for lr in s["lrs"]:
            for seed in s["seeds"]:
                params = {"activation": act, "lr": lr, "seed": seed, "data": s["data"], "max_steps": s["max_steps"],
                          "batch_size": s["batch_size"], "window": s["window"], "target": s["target"],
                          "device": s["device"]}  # fmt: skip
                cost = S_PER_STEP * s["max_steps"] * s["batch_size"] / 128
                out.append(Unit(f"{act}/lr{lr:g}/seed{seed}", f"{__name__}:steps_to_target", params, cost))
    return out


def steps_to_target(activation: str, lr: float, seed: int, data: str, max_steps: int, batch_size: int, window: int,
                    target: float, device: str) -> dict[str, Any]:
    import torch

    from . import lean
    from .ideas import mini_vgg

    source = lean.dataset(data, augment=False)
    torch.manual_seed(seed)
    net = mini_vgg(CONFIG, num_classes=source.info.num_classes, in_chans=source.info.in_chans, activation=activation,
                   head="avgpool", dropout=0.0)
    fit = lean.fit(net, source, steps=max_steps, batch_size=batch_size, lr=lr, seed=seed, schedule="constant",
                   weight_decay=0.0, nesterov=False, window=window, stop=lambda step, err: err <= target,
                   final_eval=False, fast=True, device=lean.resolve_device(device))
    reached = next((p[0] for p in fit["train_curve"] if p[1] <= target), None)
    return {"steps_to_target": reached, "train_curve": fit["train_curve"], "diverged": fit["diverged"]}


def gpu_seconds(s: dict[str, Any], device: str) -> float:
    """The estimator's price, an upper bound: every unit runs all ``max_steps`` at ResNet-20's step time (the
    four-layer net does a fifth of its work per image, but such small steps are bound by their launch latency)."""
    from ...estimate import estimate

    step = estimate("resnet20", data="cifar10", epochs=1, device=device, batch_size=s["batch_size"]).step_s
    return step * s["max_steps"] * len(units(s))


def assemble(s: dict[str, Any], outputs: dict[str, Any], deps: dict[str, Any]) -> dict[str, Any]:
    cap = float(s["max_steps"])
    acts: dict[str, Any] = {}
    for act in ("relu", "tanh"):
        by_lr = {}
        for lr in s["lrs"]:
            runs = [outputs[f"{act}/lr{lr:g}/seed{seed}"] for seed in s["seeds"]]
            by_lr[f"{lr:g}"] = {"lr": lr, "steps": [cap if r["steps_to_target"] is None else float(r["steps_to_target"])
                                                    for r in runs],
                                "reached": [r["steps_to_target"] is not None for r in runs],
                                "curves": [r["train_curve"] for r in runs]}  # fmt: skip
        best = min(by_lr.values(), key=lambda v: (mean_std(v["steps"])[0], v["lr"]))
        acts[act] = {"best_lr": best["lr"], "steps": best["steps"], "reached": best["reached"],
                     "curves": best["curves"], "by_lr": by_lr}
    return {"data": s["data"], "lrs": s["lrs"], "max_steps": s["max_steps"], "batch_size": s["batch_size"],
            "target": s["target"], "seeds": s["seeds"], "window": s["window"], **acts}


def ratio_text(results: dict[str, Any]) -> str:
    relu, tanh = results["relu"], results["tanh"]
    ratio = mean_std(tanh["steps"])[0] / max(1.0, mean_std(relu["steps"])[0])
    bound = ">= " if not all(tanh["reached"]) else ""
    return f"{bound}{ratio:.1f}x (paper: {papers.AF1_RATIO:g}x)"


def verdict_relu(results: dict[str, Any]) -> Verdict:
    claim = (f"ReLU reaches {results['target']:g}% training error faster than tanh, each at its best LR "
             f"(paper: {papers.AF1_RATIO:g}x faster)")
    relu, tanh = results["relu"], results["tanh"]
    if not any(relu["reached"]):
        return Verdict(claim, None, f"ReLU never reached {results['target']:g}% within {results['max_steps']} steps "
                                    "at any LR of the sweep")
    nums = (f"ReLU {fmt_pm(relu['steps'], 0)} steps (lr {relu['best_lr']:g}), tanh {fmt_pm(tanh['steps'], 0)} steps "
            f"(lr {tanh['best_lr']:g}{'' if all(tanh['reached']) else '; not reached: capped'}); ratio "
            f"{ratio_text(results)}")
    sep = separated(tanh["steps"], relu["steps"], floor=results["window"])  # a window is the step resolution
    label = {True: "ReLU is faster, beyond the seed spread", False: "tanh is faster here",
             None: f"inside the seed spread (or within one {results['window']}-step window)"}[sep]
    return Verdict(claim, sep, f"{nums}: {label}.")


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    return [verdict_relu(results)]


def plot(results: dict[str, Any], out_dir: Path) -> list[str]:
    from ..plots import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for act, style in (("relu", "-"), ("tanh", "--")):
        for curve in results[act]["curves"]:
            if curve:
                ax.plot([p[0] for p in curve], [p[1] for p in curve], ls=style, color="black", lw=1.2,
                        label=f"{act} (lr {results[act]['best_lr']:g})")
    ax.axhline(results["target"], color="tab:red", lw=0.8)
    ax.set_xlabel(f"optimizer step (batch {results['batch_size']})")
    ax.set_ylabel("running training error (%)")
    ax.set_title("As AlexNet Fig. 1: ReLU (solid) vs tanh (dashed)")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys())
    return [save(fig, out_dir, "alexnet_fig1.png")]


def section(results: dict[str, Any], verdicts: list[Verdict], plots: list[str]) -> str:
    rows = []
    for act in ("relu", "tanh"):
        for key, v in results[act]["by_lr"].items():
            best = " (best)" if v["lr"] == results[act]["best_lr"] else ""
            reached = f"{sum(v['reached'])}/{len(v['reached'])}"
            rows.append((act, f"{key}{best}", fmt_pm(v["steps"], 0), reached))
    table = md_table(rows, ["activation", "lr", f"steps to {results['target']:g}% (capped at {results['max_steps']})",
                            "seeds that reached it"], "lrrr")
    return (f"Data: `{results['data']}`. The four-layer net (3 conv + 1 linear, no regularization), batch "
            f"{results['batch_size']}, constant LR from the sweep {', '.join(f'{x:g}' for x in results['lrs'])}, "
            f"{len(results['seeds'])} seed(s). Measured ratio {ratio_text(results)}.\n\n{table}\n\n"
            f"{verdict_lines(verdicts)}\n\n" + images(plots, NAME, {"alexnet_fig1.png": "Fig. 1 curves"}))
