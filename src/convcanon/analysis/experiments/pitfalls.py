"""Pitfalls: each line of the canon's pitfalls table, with the evidence measured by the other experiments.

Nothing is trained here: the results of ``canon``, ``degradation`` and ``scaling`` (run first, or read from their
cache) are the evidence, and each verdict reads their numbers. A verdict "holds" when the numbers show the pitfall to
be a pitfall: its claim is the "reality" column, in the numbers' words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .core import Unit, Verdict, fmt_pm, md_table, mean_std, separated

NAME = "pitfalls"
TITLE = "Pitfalls: what the numbers above say about each"
CLAIM = "Each pitfall of the canon is contradicted by measured (or quoted, where marked) numbers"
DEPENDS: tuple[str, ...] = ("canon", "degradation", "scaling")

PITFALLS = [
    ("parameters", "Parameter count = capability", "GoogLeNet (~7M) competed with VGG-16 (~138M), 20x smaller"),
    ("depth", "\"Deeper is always better\"", "Only once residual blocks made depth trainable"),
    ("shortcut", "Skip connections are exotic", "They are `+ x`: no parameters, and they decide whether depth trains"),
    ("distributed", "Distributed training is a different algorithm", "The same gradient descent, parallelized"),
    ("precision", "Year-by-year ImageNet numbers are precise",
     "Directional: small differences depend on training tricks, protocol and seed"),
]  # fmt: skip


def settings(mode: str, seed: int = 0, device: str = "auto",
             data: str = "digits") -> dict[str, Any]:
    return {"mode": mode, "seed": seed}


def units(s: dict[str, Any]) -> list[Unit]:
    return []


def assemble(s: dict[str, Any], outputs: dict[str, Any], deps: dict[str, Any]) -> dict[str, Any]:
    """Only the numbers the verdicts read, copied from the dependencies (so results.json stands alone)."""
    canon, deg, scaling = deps["canon"], deps["degradation"], deps["scaling"]
    return {
        "imagenet": [{k: r[k] for k in ("architecture", "year", "params", "gmacs", "tv_top1", "tv_top5",
                                        "paper_top5_error")} for r in canon["imagenet"]],
        "resnet50_v2_top1": canon["resnet50_v2"]["tv_top1"],
        "small": [{k: r[k] for k in ("model", "params", "test_error")} for r in canon["small"]],
        "degradation": {"depths": deg["depths"], "steps": deg["steps"],
                        "rows": [{k: r[k] for k in ("model", "depth", "residual", "params", "train_error",
                                                    "test_error")} for r in deg["rows"]]},
        "equivalence": {k: {"ok": v.get("ok"), "step_diffs": v.get("step_diffs"), "error": v.get("error")}
                        for k, v in scaling["equivalence"].items()},
    }  # fmt: skip


def verdict_parameters(results: dict[str, Any]) -> Verdict:
    """A model with fewer parameters beats one with more: quoted top-1 by more than a point, or measured on digits
    beyond the seed spread."""
    claim = "Parameter count is not capability"
    pairs = []
    rows = results["imagenet"]
    for small in rows:
        for big in rows:
            if small["params"] < big["params"] and small["tv_top1"] > big["tv_top1"] + 1:
                pairs.append(f"{small['architecture']} ({small['params'] / 1e6:.1f}M) {small['tv_top1']:.1f}% vs "
                             f"{big['architecture']} ({big['params'] / 1e6:.1f}M) {big['tv_top1']:.1f}%")
    # Single-seed digits runs are judged against the seed spread the degradation runs measured (twice the typical
    # standard deviation of a configuration's test error), not against zero.
    stds = [mean_std(r["test_error"])[1] for r in results["degradation"]["rows"] if len(r["test_error"]) > 1]
    floor = max(0.6, 2 * mean_std(stds)[0]) if stds else 0.6
    measured = []
    for small in results["small"]:
        for big in results["small"]:
            if small["params"] < big["params"] and separated(big["test_error"], small["test_error"], floor) is True:
                measured.append(f"{small['model']} ({small['params'] / 1e6:.2f}M) {fmt_pm(small['test_error'], 2)}% "
                                f"vs {big['model']} ({big['params'] / 1e6:.2f}M) {fmt_pm(big['test_error'], 2)}% "
                                f"test error on digits (gap beyond {floor:.1f} points of seed noise)")
    by_name = {r["architecture"]: r for r in rows}
    note = ""
    if "GoogLeNet" in by_name and "VGG-16" in by_name:
        g, v = by_name["GoogLeNet"], by_name["VGG-16"]
        note = (f" GoogLeNet vs VGG-16: {v['params'] / g['params']:.0f}x fewer parameters, ILSVRC-2014 top-5 error "
                f"{g['paper_top5_error']}% vs {v['paper_top5_error']}% (quoted), torchvision top-1 "
                f"{g['tv_top1']:.1f}% vs {v['tv_top1']:.1f}% (quoted).")
    if pairs or measured:
        evidence = "; ".join(pairs[:2] + measured[:2])
        return Verdict(claim, True, f"fewer parameters, higher accuracy: {evidence}.{note}")
    return Verdict(claim, False, f"accuracy rose with parameters in every pair here.{note}")


def _deg(results: dict[str, Any], residual: bool, depth: int) -> dict[str, Any]:
    return next(r for r in results["degradation"]["rows"] if r["residual"] == residual and r["depth"] == depth)


def verdict_depth(results: dict[str, Any]) -> Verdict:
    claim = "Depth alone does not help: without shortcuts, deeper is worse"
    depths = results["degradation"]["depths"]
    lo, hi = min(depths), max(depths)
    if lo == hi:
        return Verdict(claim, None, "one depth only.")
    p_lo, p_hi = _deg(results, False, lo), _deg(results, False, hi)
    r_lo, r_hi = _deg(results, True, lo), _deg(results, True, hi)
    nums = (f"test error plain-{lo} {fmt_pm(p_lo['test_error'])}% -> plain-{hi} {fmt_pm(p_hi['test_error'])}%, "
            f"resnet-{lo} {fmt_pm(r_lo['test_error'])}% -> resnet-{hi} {fmt_pm(r_hi['test_error'])}% (training "
            f"error plain {fmt_pm(p_lo['train_error'])}% -> {fmt_pm(p_hi['train_error'])}%)")
    plain_worse = separated(p_hi["train_error"], p_lo["train_error"], 1.0)
    if plain_worse is True:
        return Verdict(claim, True, f"{nums}: without shortcuts, more depth made the net worse.")
    if plain_worse is False:
        return Verdict(claim, False, f"{nums}: the deeper plain net is better here.")
    return Verdict(claim, None, f"{nums}: inside the seed spread.")


def verdict_shortcut(results: dict[str, Any]) -> Verdict:
    claim = "The skip connection is a plain `+ x` that decides whether depth trains"
    hi = max(results["degradation"]["depths"])
    p, r = _deg(results, False, hi), _deg(results, True, hi)
    nums = (f"plain-{hi} and resnet-{hi}: {p['params']:,} vs {r['params']:,} parameters, training error "
            f"{fmt_pm(p['train_error'])}% vs {fmt_pm(r['train_error'])}%")
    if p["params"] != r["params"]:
        return Verdict(claim, None, f"{nums}: the twins differ in parameters, so this is not the `+ x` alone.")
    sep = separated(p["train_error"], r["train_error"], 1.0)
    if sep is True:
        return Verdict(claim, True, f"{nums}: one addition, no parameters, and the difference between training and "
                                    "not.")
    return Verdict(claim, None if sep is None else False, f"{nums}: no difference beyond the seed spread here.")


def verdict_distributed(results: dict[str, Any]) -> Verdict:
    claim = "Distributed training is the same algorithm"
    eq = results["equivalence"]
    ddp, acc = eq["ddp_vs_accumulation"], eq["accumulation_alexnet"]
    if not ddp.get("ok"):
        acc_txt = ""
        if acc.get("ok") and acc.get("step_diffs"):
            acc_txt = f"; accumulation vs big batch: {acc['step_diffs'][0]:.2g} after one step"
        return Verdict(claim, None, f"the data-parallel run failed ({ddp.get('error')}){acc_txt}.")
    d = ddp["step_diffs"]
    nums = f"2-process DDP vs 1 process: max parameter difference {d[-1]:.2g} after {len(d)} steps"
    if acc.get("ok") and acc.get("step_diffs"):
        nums += f"; accumulation vs big batch: {acc['step_diffs'][0]:.2g} after one step"
    if d[-1] <= 1e-5:
        return Verdict(claim, True, f"{nums}: the same algorithm.")
    return Verdict(claim, False, f"{nums}.")


def verdict_precision(results: dict[str, Any]) -> Verdict:
    """Recipe effect (ResNet-50 torchvision V1 -> V2 weights) and seed spread vs the gaps between architectures."""
    claim = "Year-by-year ImageNet numbers are directional, not precise"
    rows = sorted(results["imagenet"], key=lambda r: r["tv_top1"])
    gaps = [(b["tv_top1"] - a["tv_top1"], a["architecture"], b["architecture"]) for a, b in zip(rows, rows[1:])]
    smallest = min(gaps) if gaps else None
    r50 = next((r for r in results["imagenet"] if r["architecture"] == "ResNet-50"), None)
    recipe = results["resnet50_v2_top1"] - r50["tv_top1"] if r50 else None
    spreads = [max(r["test_error"]) - min(r["test_error"]) for r in results["degradation"]["rows"]
               if len(r["test_error"]) > 1]  # fmt: skip
    mean_spread = mean_std(spreads)[0] if spreads else None
    parts = []
    if recipe is not None:
        parts.append(f"the training recipe alone moves ResNet-50 by {recipe:.1f} points of top-1 "
                     f"({r50['tv_top1']:.1f}% -> {results['resnet50_v2_top1']:.1f}%, quoted)")
    if smallest is not None:
        parts.append(f"the closest two architectures differ by {smallest[0]:.1f} ({smallest[1]} vs {smallest[2]})")
    if mean_spread is not None:
        parts.append(f"on digits the same configuration spans {mean_spread:.2f} points of test error from seed to seed "
                     f"(mean max-min over {len(spreads)} configurations)")
    text = "; ".join(parts)
    if recipe is not None and smallest is not None and recipe > smallest[0]:
        return Verdict(claim, True, f"{text}: differences of this size are recipe and noise, not architecture.")
    if mean_spread is not None and mean_spread > 0.5:
        return Verdict(claim, True, f"{text}: single-run differences below that are noise.")
    return Verdict(claim, None, f"{text}.")


VERDICTS = {"parameters": verdict_parameters, "depth": verdict_depth, "shortcut": verdict_shortcut,
            "distributed": verdict_distributed, "precision": verdict_precision}


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    return [VERDICTS[key](results) for key, _, _ in PITFALLS]


def plot(results: dict[str, Any], out_dir: Path) -> list[str]:
    return []  # the evidence is plotted by the experiments it comes from


def section(results: dict[str, Any], verdicts: list[Verdict], plots: list[str]) -> str:
    rows = [(pitfall, reality, f"**{v.label}**", v.text) for (_, pitfall, reality), v in zip(PITFALLS, verdicts)]
    return md_table(rows, ["pitfall", "reality (the canon)", "verdict", "evidence"], "llll")
