"""Identity: a stack of K conventional blocks must *learn* H(x) = x; a residual stack only has to learn F(x) = 0.

The blocks are the zoo's own ``BasicBlock`` (conv-BN-ReLU-conv-BN, then ReLU; ``residual=False`` drops the ``+ x``),
16 channels at 8x8, stacked K deep and trained to reproduce their input (mean squared error). The input is the
positive part of the normalized digit images copied to 16 channels, so the identity is exactly representable after
the final ReLU. Three stacks: conventional; residual with the usual initialization (the last BN scale at 1, so F(x)
starts as noise of the input's size); residual with the last BN scale at 0 (Goyal et al. 2017, sec. 5.1), where F(x) =
0 and the stack *is* the identity before any step. The loss is relative: MSE / mean(x^2), so 1 is "outputs zero".

Optimizer: Adam (``build_optimizer`` with optimizer="adamw" and no weight decay) at a constant LR from ``lr_at``: for
a regression target without a classification scale, Adam makes the comparison independent of a tuned SGD LR.

What the numbers show, and the report says: with the usual initialization a residual stack does *not* start at the
identity (each block adds a unit-variance BN output, so the loss at step 0 grows with K) and for a few blocks a
conventional stack learns the identity as well; the difference is depth. A conventional stack's final loss grows
steeply with K while the residual stack's barely moves, and with F = 0 the residual stack is the identity from step 0.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .core import Unit, Verdict, images, md_table, pick, verdict_lines

NAME = "identity"
TITLE = "Identity: K conventional vs K residual blocks trained to reproduce their input"
CLAIM = "A residual block represents the identity trivially (F = 0); a conventional block has to learn it"
DEPENDS: tuple[str, ...] = ()

VARIANTS = ("conventional", "residual", "residual-zero-init")
# Cost estimate of a unit (orders the work, predicts the runtime): ms per block per training step (forward + backward)
# of one BasicBlock, 16 channels, 8x8, batch 64, one thread.
MS_PER_BLOCK_STEP = 2.8
FACTOR = 5.0  # "much lower": a loss ratio of at least this


def settings(mode: str, seed: int = 0, device: str = "auto",
             data: str = "digits") -> dict[str, Any]:
    return {
        "depths": pick(mode, [2], [4, 16], [4, 16, 64]),
        "steps": pick(mode, 4, 200, 2000),
        "channels": 16,
        "batch_size": 64,
        "lr": 1e-2,
        "seed": seed,
        "device": device,
    }


def units(s: dict[str, Any]) -> list[Unit]:
    out = []
    for k in s["depths"]:
        for variant in VARIANTS:
            params = {"variant": variant, "blocks": k, "steps": s["steps"], "channels": s["channels"],
                      "batch_size": s["batch_size"], "lr": s["lr"], "seed": s["seed"], "device": s["device"]}
            cost = MS_PER_BLOCK_STEP * k * s["steps"] / 1000
            out.append(Unit(f"{variant}/K{k}", f"{__name__}:train_stack", params, cost))
    return out


class Reconstruction:
    """The task of the identity stack: reproduce the input; the loss is the squared error relative to the input's
    energy (1.0 for an output of zeros), so it reads the same at every depth."""

    def loss(self, output, target):
        import torch.nn.functional as F

        return F.mse_loss(output, target) / target.pow(2).mean()

    def errors(self, output, target) -> None:
        return None


def train_stack(variant: str, blocks: int, steps: int, channels: int, batch_size: int, lr: float, seed: int,
                device: str) -> dict[str, Any]:
    import torch
    from torch import nn

    from ...models.resnet import BasicBlock
    from ...train.optim import build_optimizer, lr_at
    from ...train.step import TrainStep
    from . import lean

    data = lean.digits()
    dev = lean.resolve_device(device)
    torch.manual_seed(seed)
    residual = variant != "conventional"
    stack = nn.Sequential(*[BasicBlock(channels, channels, residual=residual, shortcut="A") for _ in range(blocks)])
    for m in stack.modules():  # the zoo's init for ResNets (resnet.init_weights): Kaiming normal, fan_out
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if variant == "residual-zero-init":
        for block in stack:
            nn.init.zeros_(block.last_bn().weight)
    engine = lean.exact_engine(dev)
    stack = engine.prepare_model(stack).train()
    cfg, plan = lean.make_lr_plan(data, steps=steps, batch_size=batch_size, lr=lr, schedule="constant",
                                  weight_decay=0.0, optimizer="adamw")
    step_fn = TrainStep(engine, stack, build_optimizer(stack, cfg, dev), Reconstruction())

    def target(images: torch.Tensor) -> torch.Tensor:
        return images.clamp(min=0).expand(-1, channels, -1, -1).contiguous()

    losses: list[float] = []
    for step, (pixels, _) in enumerate(lean.batches(data, batch_size, seed, dev)):
        x = target(pixels)
        # The loss of the forward before this step's update: losses[0] is the loss at initialization. The last
        # step's update is never looked at.
        losses.append(float(step_fn([(x, x)], 1, lr_at(step, plan), step)))
        if step == steps or not math.isfinite(losses[-1]):
            break
    return {"variant": variant, "blocks": blocks, "losses": losses}


def _tail(losses: list[float], n: int = 10) -> float:
    tail = losses[-n:]
    return sum(tail) / len(tail)


def steps_to(losses: list[float], level: float) -> int | None:
    """First step whose loss is at or below ``level`` (None: never)."""
    return next((i for i, v in enumerate(losses) if v <= level), None)


def assemble(s: dict[str, Any], outputs: dict[str, Any], deps: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for k in s["depths"]:
        conv_final = _tail(outputs[f"conventional/K{k}"]["losses"])
        for variant in VARIANTS:
            losses = outputs[f"{variant}/K{k}"]["losses"]
            rows.append({"variant": variant, "blocks": k, "initial": losses[0], "final": _tail(losses),
                         "steps_to_conventional_final": steps_to(losses, conv_final), "losses": losses})
    return {"depths": s["depths"], "steps": s["steps"], "rows": rows}


def _get(results: dict[str, Any], variant: str, k: int) -> dict[str, Any]:
    return next(r for r in results["rows"] if r["variant"] == variant and r["blocks"] == k)


def verdict_identity(results: dict[str, Any]) -> Verdict:
    """Deepest stack: the conventional stack's final loss is at least FACTOR x the residual stack's."""
    k = max(results["depths"])
    claim = f"A stack of {k} residual blocks reproduces its input far better than {k} conventional blocks"
    conv, res = _get(results, "conventional", k)["final"], _get(results, "residual", k)["final"]
    nums = (f"relative loss after {results['steps']} steps: conventional {conv:.3g}, residual {res:.3g}, "
            f"residual with zero-init {_get(results, 'residual-zero-init', k)['final']:.3g}")
    if not (math.isfinite(conv) and math.isfinite(res)):
        return Verdict(claim, None, f"{nums}: a run diverged.")
    if conv >= FACTOR * res:
        return Verdict(claim, True, f"{nums} ({conv / max(res, 1e-12):.0f}x lower with the shortcut).")
    if res >= FACTOR * conv:
        return Verdict(claim, False, f"{nums}: the conventional stack does better.")
    return Verdict(claim, None, f"{nums}: within a factor {FACTOR:g}.")


def verdict_from_the_start(results: dict[str, Any]) -> Verdict:
    """With F = 0 (last BN scale zeroed) a residual stack is the identity before any step: loss 0 at step 0."""
    k = max(results["depths"])
    claim = "A residual block with F = 0 is the identity from the start"
    zero, conv = _get(results, "residual-zero-init", k), _get(results, "conventional", k)
    reach = _get(results, "residual", k)["steps_to_conventional_final"]
    nums = (f"K={k}: zero-init residual stack loss {zero['initial']:.3g} at step 0 and {zero['final']:.3g} at the "
            f"end; conventional stack {conv['initial']:.3g} at step 0. (With the usual init, the residual stack "
            f"reaches the conventional stack's final loss at step {'never' if reach is None else reach} of "
            f"{results['steps']}.)")
    if zero["initial"] <= 1e-9 * max(conv["initial"], 1e-12):
        return Verdict(claim, True, nums)
    return Verdict(claim, False, nums)


def verdict_depth(results: dict[str, Any]) -> Verdict:
    """From the fewest to the most blocks, the conventional stack's final loss grows FACTOR x more than the
    residual stack's."""
    lo, hi = min(results["depths"]), max(results["depths"])
    claim = "Learning the identity gets harder with depth for conventional blocks, not for residual ones"
    if lo == hi:
        return Verdict(claim, None, "a single stack depth was run.")
    growth = {v: _get(results, v, hi)["final"] / max(_get(results, v, lo)["final"], 1e-12)
              for v in ("conventional", "residual")}
    nums = (f"final loss from K={lo} to K={hi}: conventional x{growth['conventional']:.1f} "
            f"({_get(results, 'conventional', lo)['final']:.3g} -> {_get(results, 'conventional', hi)['final']:.3g}), "
            f"residual x{growth['residual']:.1f} ({_get(results, 'residual', lo)['final']:.3g} -> "
            f"{_get(results, 'residual', hi)['final']:.3g})")
    if not all(math.isfinite(g) for g in growth.values()):
        return Verdict(claim, None, f"{nums}: a run diverged.")
    if growth["conventional"] >= FACTOR * growth["residual"]:
        return Verdict(claim, True, f"{nums}.")
    if growth["residual"] >= FACTOR * growth["conventional"]:
        return Verdict(claim, False, f"{nums}.")
    return Verdict(claim, None, f"{nums}: the growths differ by less than {FACTOR:g}x.")


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    return [verdict_identity(results), verdict_depth(results), verdict_from_the_start(results)]


def plot(results: dict[str, Any], out_dir: Path) -> list[str]:
    from ..plots import PLAIN, RESIDUAL, pyplot, save

    plt = pyplot()
    colours = {"conventional": PLAIN, "residual": RESIDUAL, "residual-zero-init": "tab:green"}
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    floor = 1e-7  # log axes cannot show an exact zero (zero-init residual stacks start there)
    for i, k in enumerate(results["depths"]):
        for variant in VARIANTS:
            losses = [max(v, floor) for v in _get(results, variant, k)["losses"] if math.isfinite(v)]
            ax.plot(range(len(losses)), losses, color=colours[variant], ls=styles[i % len(styles)], lw=1.5,
                    label=f"{variant}, K={k}")
    ax.set_yscale("log")
    ax.set_xlabel("Adam step (batch 64)")
    ax.set_ylabel(f"relative MSE to the input (log scale; floor {floor:g})")
    ax.set_title("Learning the identity: K stacked blocks trained to output their input")
    ax.legend(ncol=2)
    return [save(fig, out_dir, "identity.png")]


def section(results: dict[str, Any], verdicts: list[Verdict], plots: list[str]) -> str:
    rows = [(r["variant"], r["blocks"], f"{r['initial']:.3g}", f"{r['final']:.3g}",
             "-" if r["steps_to_conventional_final"] is None else r["steps_to_conventional_final"])
            for r in results["rows"]]  # fmt: skip
    table = md_table(rows, ["stack", "K blocks", "loss at init", f"loss after {results['steps']} steps",
                            "steps to the conventional stack's final loss"], "lrrrr")
    return (f"Relative MSE (1 = outputting zeros).\n\n{table}\n\n{verdict_lines(verdicts)}\n\n"
            + images(plots, NAME, {"identity.png": "identity loss curves"}))
