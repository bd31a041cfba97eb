"""Gradient flow: the gradient each layer receives, from the output back to the input, with and without ``+ x``.

For the CIFAR nets of depth 20, 56 and 110 (plain and residual, batch norm on as in the paper), the norm of the
loss gradient with respect to each convolution's weight, in forward order (the stem, then ``conv1``/``conv2`` of every
block, along the model's ``blocks()``), averaged over a few batches: at initialization and after some training. The
summary number is the ratio between the gradient reaching the first blocks and the one at the last blocks (mean over
three layers at each end), as a power of ten.

What to expect: with the shortcut, each block's backward pass adds the identity, so the ratio stays within about an
order of magnitude at any depth. Without it the signal is multiplied by every layer's Jacobian on the way back and
drifts exponentially with depth. Its direction depends on the normalization: with batch norm, plain nets' gradients
*explode* towards the input at initialization (Yang et al. 2019, "A Mean Field Theory of Batch Normalization"); the
variant without batch norm (at initialization only, it does not train at these depths) shows the whole gradient
vanishing, the textbook picture. After some training the batch-norm plain net flips to the other failure: its first
layers get a vanishing gradient. Either way the first layers of a deep plain net get a gradient unrelated in scale to
the last layers', which is what the shortcut fixes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .core import Unit, Verdict, images, md_table, pick, verdict_lines

NAME = "gradient_flow"
TITLE = "Gradient flow: per-layer gradient norms, plain vs residual"
CLAIM = "Without the shortcut the gradient reaching the first layers drifts exponentially with depth; with it, not"
DEPENDS: tuple[str, ...] = ()

MS_PER_LAYER_STEP = 1.3
THRESHOLD = 1.0  # decades: the plain net's first/last ratio must be this much further from 1 than the residual's


def settings(mode: str, seed: int = 0, device: str = "auto",
             data: str = "digits") -> dict[str, Any]:
    return {
        "depths": pick(mode, [20, 32], [20, 56, 110], [20, 56, 110]),
        "steps": pick(mode, 3, 60, 500),
        "probe_batches": pick(mode, 1, 4, 8),
        "batch_size": 64,
        "lr": 0.05,
        "warmup_steps": pick(mode, 1, 10, 50),
        "seed": seed,
        "device": device,
    }


def _variants(s: dict[str, Any]) -> list[tuple[str, int, bool]]:
    """(kind, depth, batch_norm): the zoo's nets, and plain nets without batch norm at initialization only."""
    out = [(kind, d, True) for d in s["depths"] for kind in ("plain", "resnet")]
    return out + [("plain", d, False) for d in s["depths"]]


def _label(kind: str, depth: int, batch_norm: bool) -> str:
    return f"{kind}{depth}" + ("" if batch_norm else "-nobn")


def units(s: dict[str, Any]) -> list[Unit]:
    out = []
    for kind, depth, bn in _variants(s):
        steps = s["steps"] if bn else 0
        params = {"model": f"{kind}{depth}", "batch_norm": bn, "steps": steps, "probe_batches": s["probe_batches"],
                  "batch_size": s["batch_size"], "lr": s["lr"], "warmup_steps": s["warmup_steps"], "seed": s["seed"],
                  "device": s["device"]}  # fmt: skip
        cost = MS_PER_LAYER_STEP * depth * (steps + 2 * s["probe_batches"]) / 1000
        out.append(Unit(_label(kind, depth, bn), f"{__name__}:measure", params, cost))
    return out


def _probe(model, data, batches: int, batch_size: int, seed: int, device) -> list[float]:
    """RMS over ``batches`` batches of each conv weight's gradient norm, in forward order (train mode, as in SGD)."""
    import torch

    from ...train.task import ClassificationTask

    task = ClassificationTask()
    layers = _convs(model)
    sq = torch.zeros(len(layers), dtype=torch.float64)
    for i, (x, y) in enumerate(data.train_batches(10_000, batch_size, seed=seed, device=device)):
        if i == batches:
            break
        model.zero_grad(set_to_none=True)
        task.loss(model(x), y).backward()
        sq += torch.tensor([float(layer.weight.grad.norm()) ** 2 for layer in layers], dtype=torch.float64)
    model.zero_grad(set_to_none=True)
    return [float(v) for v in (sq / batches).sqrt()]


def _convs(model: Any) -> list[Any]:
    """Every convolution in forward order (option-A shortcuts have none: the stem, then conv1/conv2 of each block)."""
    from torch import nn

    return [m for _, block in model.blocks() for m in block.modules() if isinstance(m, nn.Conv2d)]


def measure(model: str, batch_norm: bool, steps: int, probe_batches: int, batch_size: int, lr: float,
            warmup_steps: int, seed: int, device: str) -> dict[str, Any]:
    import torch

    from ... import create_model
    from . import lean

    data = lean.digits()
    dev = lean.resolve_device(device)
    torch.manual_seed(seed)
    net = create_model(model, num_classes=data.info.num_classes, in_chans=data.info.in_chans,
                       batch_norm=batch_norm).to(dev)
    out: dict[str, Any] = {"model": model, "batch_norm": batch_norm, "layers": len(_convs(net)),
                           "init": _probe(net, data, probe_batches, batch_size, seed, dev)}
    if steps:
        fit = lean.fit(net, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, warmup_steps=warmup_steps,
                       device=dev)
        out["trained"] = None if fit["diverged"] else _probe(net, data, probe_batches, batch_size, seed, dev)
        out["train_error"] = fit["final_train_error"]
        out["steps"] = steps
    return out


def log_ratio(norms: list[float] | None, k: int = 3) -> float | None:
    """log10(mean gradient norm of the first k block convs / of the last k): > 0 grows towards the input."""
    if not norms or len(norms) < 2 * k + 1:
        return None
    first = sum(norms[1 : 1 + k]) / k  # skip the stem: its input is the image, not a block's output
    last = sum(norms[-k:]) / k
    if not (first > 0 and last > 0 and math.isfinite(first) and math.isfinite(last)):
        return None
    return math.log10(first / last)


def assemble(s: dict[str, Any], outputs: dict[str, Any], deps: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for kind, depth, bn in _variants(s):
        o = outputs[_label(kind, depth, bn)]
        rows.append({"label": _label(kind, depth, bn), "model": o["model"], "depth": depth,
                     "residual": kind == "resnet", "batch_norm": bn, "init": o["init"], "trained": o.get("trained"),
                     "log_ratio_init": log_ratio(o["init"]), "log_ratio_trained": log_ratio(o.get("trained")),
                     "train_error": o.get("train_error")})  # fmt: skip
    return {"depths": s["depths"], "steps": s["steps"], "rows": rows}


def _find(results: dict[str, Any], residual: bool, depth: int, batch_norm: bool = True) -> dict[str, Any] | None:
    return next((r for r in results["rows"] if r["residual"] == residual and r["depth"] == depth
                 and r["batch_norm"] == batch_norm), None)  # fmt: skip


def _drift_text(lr: float) -> str:
    return f"10^{lr:+.1f} ({'grows' if lr > 0 else 'shrinks'} towards the input)"


def verdict_gradient_flow(results: dict[str, Any], when: str = "init") -> Verdict:
    """At the deepest depth: |log10 first/last| of the plain net exceeds the residual net's by THRESHOLD decades."""
    depth = max(results["depths"])
    stage = "at initialization" if when == "init" else f"after {results['steps']} training steps"
    claim = f"The shortcut keeps the gradient at the first layers on the scale of the last ones ({stage})"
    plain, res = _find(results, False, depth), _find(results, True, depth)
    p = plain and plain[f"log_ratio_{when}"]
    r = res and res[f"log_ratio_{when}"]
    if p is None or r is None:
        why = "a run diverged or was not measured" if plain and res else "the runs are missing"
        return Verdict(claim, None, f"no ratio at depth {depth}: {why}.")
    nums = (f"first-to-last gradient ratio at depth {depth}: plain {_drift_text(p)}, residual {_drift_text(r)}")
    gap = abs(p) - abs(r)
    if gap > THRESHOLD:
        return Verdict(claim, True, f"{nums}; the plain net is {gap:.1f} decades further from 1.")
    if gap < -THRESHOLD:
        return Verdict(claim, False, f"{nums}; the residual net drifts more.")
    return Verdict(claim, None, f"{nums}; within {THRESHOLD:g} decade of each other.")


def verdict_drift_grows_with_depth(results: dict[str, Any]) -> Verdict:
    """Plain nets at init: the drift grows with depth (deepest vs shallowest), the residual nets' much less."""
    claim = "Without the shortcut the drift grows with depth"
    depths = results["depths"]
    lo, hi = min(depths), max(depths)
    vals = {(res, d): (_find(results, res, d) or {}).get("log_ratio_init") for res in (False, True) for d in (lo, hi)}
    if any(v is None for v in vals.values()) or lo == hi:
        return Verdict(claim, None, "missing measurements (or a single depth).")
    plain_growth = abs(vals[(False, hi)]) - abs(vals[(False, lo)])
    res_growth = abs(vals[(True, hi)]) - abs(vals[(True, lo)])
    nums = (f"|log10 ratio| from depth {lo} to {hi}: plain {abs(vals[(False, lo)]):.1f} -> "
            f"{abs(vals[(False, hi)]):.1f}, residual {abs(vals[(True, lo)]):.1f} -> {abs(vals[(True, hi)]):.1f}")
    if plain_growth > res_growth + THRESHOLD:
        return Verdict(claim, True, f"{nums}.")
    if plain_growth < res_growth - THRESHOLD:
        return Verdict(claim, False, f"{nums}: the residual nets drift more with depth.")
    return Verdict(claim, None, f"{nums}: the growth differs by less than {THRESHOLD:g} decade.")


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    return [verdict_gradient_flow(results, "init"), verdict_drift_grows_with_depth(results),
            verdict_gradient_flow(results, "trained")]


def plot(results: dict[str, Any], out_dir: Path) -> list[str]:
    import numpy as np

    from ..plots import DEPTH_STYLES, PLAIN, RESIDUAL, pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for ax, when in zip(axes, ("init", "trained")):
        for row in results["rows"]:
            norms = row[when]
            if not norms:
                continue
            norms = np.array(norms, dtype=float)
            if not np.all(np.isfinite(norms)) or np.any(norms <= 0):
                continue
            pos = np.linspace(0, 1, len(norms))
            colour = RESIDUAL if row["residual"] else (PLAIN if row["batch_norm"] else "tab:gray")
            kind = "resnet" if row["residual"] else "plain"
            label = f"{kind}-{row['depth']}" + ("" if row["batch_norm"] else " (no BN)")
            ax.plot(pos, norms, color=colour, ls=DEPTH_STYLES.get(row["depth"], "-"), lw=1.6, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("relative position of the conv layer (0 = input side, 1 = output side)")
        title = "At initialization" if when == "init" else f"After {results['steps']} SGD steps"
        ax.set_title(title)
        ax.legend(ncol=3, fontsize=7)
    axes[0].set_ylabel("||dLoss/dW|| per conv layer (log scale)")
    fig.suptitle("Gradient reaching each layer (digits, batch 64): red plain, blue residual, grey plain without BN; "
                 "line style = depth", fontsize=10)
    return [save(fig, out_dir, "gradient_flow.png")]


def section(results: dict[str, Any], verdicts: list[Verdict], plots: list[str]) -> str:
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:+.2f}"

    rows = []
    for r in results["rows"]:
        kind = ("residual" if r["residual"] else "plain") + ("" if r["batch_norm"] else ", no BN")
        rows.append((f"`{r['model']}`", r["depth"], kind, f(r["log_ratio_init"]),
                     f(r["log_ratio_trained"]) if r["batch_norm"] else "(not trained)",
                     "-" if r["train_error"] is None else f"{r['train_error']:.1f}"))
    table = md_table(rows, ["model", "depth", "kind", "log10 first/last at init", "after training",
                            "train error % after"], "lrlrrr")
    return (
        "log10 of the gradient norm at the first three block convolutions over that at the last three: 0 means the "
        f"first layers learn at the scale of the last; training is {results['steps']} steps.\n\n{table}\n\n"
        f"{verdict_lines(verdicts)}\n\n" + images(plots, NAME, {"gradient_flow.png": "per-layer gradient norms"})
    )
