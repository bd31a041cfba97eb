"""Ideas: one ablation for each row of the canon's idea table, each flipping one switch of the zoo.

- ReLU vs tanh (AlexNet, sec. 3.1 and Fig. 1): optimizer steps until the running training error first reaches 25%,
  for a four-layer CNN, as the paper measured on CIFAR-10 ("six times faster" with ReLU), each activation at the
  fastest LR of a small grid, as the paper chose them ("the learning rates for each network were chosen
  independently to make training as fast as possible").
- Dropout (AlexNet, sec. 4.2): the train-test gap (test minus training loss and error) of a net with an FC tower,
  trained without data augmentation so that overfitting is the only thing to counter.
- 3x3 stacks vs one large kernel (VGG, sec. 2.3): parameters and MACs of VGG-16 with ``kernels="stack"`` and
  ``"large"`` at 224x224 (measured, with the average-pool head so that the 124M weights of the FC tower do not hide
  the convolutions), and of a small VGG on digits, with its test error.
- Inception's 1x1 reductions (GoogLeNet, sec. 4): parameters and MACs of GoogLeNet with ``reductions=False``.
- Average-pool head vs FC tower (GoogLeNet, sec. 5): parameters of AlexNet, VGG-16 and GoogLeNet with each head at
  ImageNet size, and the test error of a small VGG on digits with each.
- Batch norm (Ioffe and Szegedy 2015; "heavy use" in ResNet): training speed (steps to 10% running training error at a
  fixed LR) and the largest LR of a sweep at which training stays stable (finite and better than chance).

The small networks are built from the zoo's ``VGG`` class (``convcanon.models.vgg.VGG``) with short configuration lists
(``MINI_CONFIGS``), so each switch is the one the full-size models have; the ImageNet-size figures are measured on the
real models with ``profile_model`` (meta device: shapes only, no arithmetic). One change to the small VGGs: their
Linear layers get PyTorch's default init instead of VGG's N(0, 0.01), which is sized for 4096-wide layers; at width
256 it shrinks the FC tower's output to ~1e-3 of its input and the tower barely trains in a few hundred steps.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from .core import Unit, Verdict, fmt_pm, images, md_table, mean_std, pick, separated, verdict_lines

NAME = "ideas"
TITLE = "Ideas: one ablation per row of the canon's idea table"
CLAIM = "ReLU, dropout, 3x3 stacks, 1x1 reductions, the average-pool head and batch norm each do what the canon says"
DEPENDS: tuple[str, ...] = ()

# Small VGG configurations (conv widths, "M" = 2x2 max pool) for 8x8 digits.
MINI_CONFIGS: dict[str, list[int | str]] = {
    "four_layer": [32, "M", 64, "M", 128, "M"],  # 3 conv + 1 linear: the AlexNet paper's four-layer CNN of Fig. 1
    "fc_tower": [32, "M", 64, "M"],  # 2 conv + a 3-layer FC tower on a 2x2 map: where dropout acts
    "stacks": [64, "M", 64, 64, 64, "M"],  # one stage of three 3x3 convs (64 -> 64), or one 7x7 conv
    "deep": [32, 32, 32, "M", 64, 64, 64, "M"],  # six convs: deep enough for batch norm to matter
    # AlexNet Fig. 1's four-layer net on 32x32 CIFAR (alexnet_fig1): the widths of cuda-convnet's CIFAR net, 3x3 convs
    "cifar_four_layer": [32, "M", 32, "M", 64, "M"],
}
RELU_TARGET = 25.0  # % running training error, the AlexNet paper's Fig. 1 criterion
BN_TARGET = 10.0  # % running training error, for the batch-norm speed comparison
CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over 10 classes
ERROR_FLOOR = 0.6  # points of test error: two test images (0.28 points each); smaller gaps are not called effects
CIFAR_ERROR_FLOOR = 0.3  # the same on CIFAR's 10,000 test images: 30 images
DATA = {"digits": 8, "cifar10": 32, "cifar100": 32}
# On CIFAR (32x32 RGB, 50k images) the same ablations run at batch 128 over these step budgets (tiny, quick, full):
# a few epochs each, enough for the switches' effects to show, not to reach the papers' accuracies.
CIFAR_STEPS = {"relu": (6, 1000, 4000), "dropout": (4, 1500, 6000), "kernels": (4, 1000, 4000),
               "head": (4, 1000, 4000), "bn_speed": (4, 1000, 3000), "bn_sweep": (4, 200, 400)}
CIFAR_COST = 32.0  # a CIFAR step costs ~32 digits steps (16x the pixels, 2x the batch)


def settings(mode: str, seed: int = 0, device: str = "auto",
             data: str = "digits") -> dict[str, Any]:
    n = pick(mode, 1, 3, 5) if data == "digits" else pick(mode, 1, 1, 3)
    base = {
        "seeds": [seed + k for k in range(n)],
        "relu": {"lrs": pick(mode, [0.01], [0.01, 0.03, 0.1, 0.3], [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]),
                 "max_steps": pick(mode, 6, 400, 1000), "batch_size": 64},
        "dropout": {"rates": [0.0, 0.5], "steps": pick(mode, 4, 500, 2000), "lr": 0.02, "batch_size": 64},
        "kernels": {"steps": pick(mode, 4, 150, 1000), "lr": 0.05, "batch_size": 64},
        "head": {"steps": pick(mode, 4, 150, 1000), "lr": 0.05, "batch_size": 64},
        "bn_speed": {"lr": 0.02, "steps": pick(mode, 4, 200, 1000), "batch_size": 64},
        "bn_sweep": {"lrs": pick(mode, [0.01, 1.0], [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0],
                                 [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]),
                     "steps": pick(mode, 4, 60, 200), "batch_size": 64},
        "device": device,
    }
    if data == "digits":
        return base
    for part, steps in CIFAR_STEPS.items():
        key = "max_steps" if part == "relu" else "steps"
        base[part] = {**base[part], key: pick(mode, *steps), "batch_size": pick(mode, 16, 128, 128)}
    return {**base, "data": data}


# ---------------------------------------------------------------------------------------------------------------------
# units


def units(s: dict[str, Any]) -> list[Unit]:
    f = f"{__name__}:run_small"
    dev = s["device"]
    out: list[Unit] = [Unit("profiles", f"{__name__}:profiles", {}, 8.0)]
    for seed in s["seeds"]:
        r = s["relu"]
        for act in ("relu", "tanh"):
            for lr in r["lrs"]:
                out.append(Unit(f"relu/{act}/lr{lr:g}/seed{seed}", f, {
                    "config": "four_layer", "options": {"activation": act, "head": "avgpool", "dropout": 0.0},
                    "steps": r["max_steps"], "lr": lr, "batch_size": r["batch_size"], "seed": seed, "device": dev,
                    "schedule": "constant", "weight_decay": 0.0, "stop_below": RELU_TARGET},
                    0.003 * r["max_steps"]))
        d = s["dropout"]
        for p in d["rates"]:
            out.append(Unit(f"dropout/{p}/seed{seed}", f, {
                "config": "fc_tower", "options": {"dropout": p, "head": "fc"}, "steps": d["steps"], "lr": d["lr"],
                "batch_size": d["batch_size"], "seed": seed, "device": dev, "weight_decay": 0.0, "augment": False},
                0.007 * d["steps"]))
        k = s["kernels"]
        for kind in ("stack", "large"):
            out.append(Unit(f"kernels/{kind}/seed{seed}", f, {
                "config": "stacks", "options": {"kernels": kind, "head": "avgpool", "batch_norm": True},
                "steps": k["steps"], "lr": k["lr"], "batch_size": k["batch_size"], "seed": seed, "device": dev},
                0.02 * k["steps"]))
        h = s["head"]
        for head in ("fc", "avgpool"):
            out.append(Unit(f"head/{head}/seed{seed}", f, {
                "config": "fc_tower", "options": {"head": head, "batch_norm": True}, "steps": h["steps"],
                "lr": h["lr"], "batch_size": h["batch_size"], "seed": seed, "device": dev}, 0.008 * h["steps"]))
        b = s["bn_speed"]
        for bn in (True, False):
            out.append(Unit(f"bn_speed/{'bn' if bn else 'nobn'}/seed{seed}", f, {
                "config": "deep", "options": {"batch_norm": bn, "head": "avgpool"}, "steps": b["steps"],
                "lr": b["lr"], "batch_size": b["batch_size"], "seed": seed, "device": dev, "schedule": "constant"},
                0.02 * b["steps"]))
    w = s["bn_sweep"]
    for bn in (True, False):
        for lr in w["lrs"]:
            out.append(Unit(f"bn_sweep/{'bn' if bn else 'nobn'}/lr{lr:g}", f, {
                "config": "deep", "options": {"batch_norm": bn, "head": "avgpool"}, "steps": w["steps"], "lr": lr,
                "batch_size": w["batch_size"], "seed": s["seeds"][0], "device": dev, "schedule": "constant",
                "eval": False}, 0.02 * w["steps"]))
    if "data" in s:  # CIFAR: the same units on the given data (the profiles are data-free)
        out = [u if u.name == "profiles" else replace(u, params={**u.params, "data": s["data"]},
                                                      cost=u.cost * CIFAR_COST) for u in out]
    return out


def gpu_seconds(s: dict[str, Any], device: str) -> float:
    """The estimator's price on CIFAR: every unit's steps at ResNet-20's step time (these small VGGs do 0.5-1.2x its
    work per image; such small steps are bound by launch latency more than by arithmetic)."""
    from ...estimate import estimate

    step = estimate("resnet20", data="cifar10", epochs=1, device=device, batch_size=128).step_s
    return step * sum(u.params["steps"] for u in units(s) if u.name != "profiles")


def mini_vgg(config: str, *, num_classes: int = 10, in_chans: int = 1, **options: Any):
    """A small VGG from ``MINI_CONFIGS``: the zoo's VGG class, so every switch is the real one."""
    from torch import nn

    from ...models.vgg import VGG

    options.setdefault("pool_size", 2 if options.get("head", "fc") == "fc" else 1)
    options.setdefault("hidden", 256)
    net = VGG(MINI_CONFIGS[config], num_classes=num_classes, in_chans=in_chans, name=f"vgg-mini-{config}", **options)
    for m in net.modules():  # PyTorch's default init: VGG's N(0, 0.01) is sized for 4096-wide layers (docstring)
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    return net


def run_small(config: str, options: dict[str, Any], steps: int, lr: float, batch_size: int, seed: int, device: str,
              schedule: str = "cosine", weight_decay: float = 5e-4, stop_below: float | None = None,
              augment: bool = True, eval: bool = True, data: str = "digits") -> dict[str, Any]:
    import torch

    from ..profile import count_macs, count_params
    from . import lean

    if data == "digits":
        source = lean.digits() if augment else lean.digits_unaugmented()
    else:
        source = lean.dataset(data, augment)
    info = source.info
    torch.manual_seed(seed)
    net = mini_vgg(config, num_classes=info.num_classes, in_chans=info.in_chans, **options)
    stop = (lambda step, err: err <= stop_below) if stop_below is not None else None
    fit = lean.fit(net, source, steps=steps, batch_size=batch_size, lr=lr, seed=seed, schedule=schedule,
                   weight_decay=weight_decay, device=lean.resolve_device(device), stop=stop, window=5,
                   final_eval=eval, fast=data != "digits")
    reached = None
    if stop_below is not None:
        reached = next((p[0] for p in fit["train_curve"] if p[1] <= stop_below), None)
    macs = count_macs(net, (info.in_chans, info.image_size, info.image_size))
    return {"params": count_params(net), "macs": macs, "steps_to_target": reached, **fit}


def profiles() -> dict[str, Any]:
    """Parameters and MACs at ImageNet size (and GoogLeNet's small-image version) for each switch, on meta."""
    from ..profile import profile_model

    def pm(name: str, **opts: Any) -> dict[str, Any]:
        p = profile_model(name, **opts)
        return {"model": name, "options": opts, "params": p.params, "macs": p.macs,
                "input": "x".join(map(str, p.input_size))}

    return {
        "kernels": [pm("vgg16", kernels="stack", head="avgpool"), pm("vgg16", kernels="large", head="avgpool")],
        "reductions": [pm("googlenet", aux_heads=False, reductions=True),
                       pm("googlenet", aux_heads=False, reductions=False),
                       pm("googlenet_cifar", reductions=True), pm("googlenet_cifar", reductions=False)],
        "head": [pm("alexnet", head="fc"), pm("alexnet", head="avgpool"), pm("vgg16", head="fc"),
                 pm("vgg16", head="avgpool"), pm("googlenet", aux_heads=False, head="fc"),
                 pm("googlenet", aux_heads=False, head="avgpool")],
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# results


def assemble(s: dict[str, Any], outputs: dict[str, Any], deps: dict[str, Any]) -> dict[str, Any]:
    seeds = s["seeds"]

    def runs(prefix: str) -> list[dict[str, Any]]:
        return [outputs[f"{prefix}/seed{seed}"] for seed in seeds]

    def steps_or_cap(r: dict[str, Any], cap: int) -> float:
        return float(r["steps_to_target"]) if r["steps_to_target"] is not None else float(cap)

    relu: dict[str, Any] = {}
    for act in ("relu", "tanh"):
        by_lr = {}
        for lr in s["relu"]["lrs"]:
            rs = runs(f"relu/{act}/lr{lr:g}")
            by_lr[f"{lr:g}"] = {"lr": lr, "steps_to_target": [steps_or_cap(r, s["relu"]["max_steps"]) for r in rs],
                                "reached": [r["steps_to_target"] is not None for r in rs],
                                "curves": [r["train_curve"] for r in rs]}
        best = min(by_lr.values(), key=lambda v: (mean_std(v["steps_to_target"])[0], v["lr"]))
        relu[act] = {**best, "best_lr": best["lr"], "by_lr": by_lr}
    dropout = {}
    for p in s["dropout"]["rates"]:
        rs = runs(f"dropout/{p}")
        dropout[str(p)] = {
            "train_error": [r["final_train_error"] for r in rs], "test_error": [r["final_test_error"] for r in rs],
            "train_loss": [r["final_train_loss"] for r in rs], "test_loss": [r["final_test_loss"] for r in rs],
            "loss_gap": [r["final_test_loss"] - r["final_train_loss"] for r in rs],
            "error_gap": [r["final_test_error"] - r["final_train_error"] for r in rs],
        }  # fmt: skip
    small = {}
    for group, variants in (("kernels", ("stack", "large")), ("head", ("fc", "avgpool"))):
        small[group] = {v: {"params": runs(f"{group}/{v}")[0]["params"], "macs": runs(f"{group}/{v}")[0]["macs"],
                            "test_error": [r["final_test_error"] for r in runs(f"{group}/{v}")],
                            "train_error": [r["final_train_error"] for r in runs(f"{group}/{v}")]}
                        for v in variants}  # fmt: skip
    speed = {}
    for key in ("bn", "nobn"):
        rs = runs(f"bn_speed/{key}")
        cap = s["bn_speed"]["steps"]
        speed[key] = {"steps_to_target": [_first_below(r["train_curve"], BN_TARGET, cap) for r in rs],
                      "train_error": [_num(r["final_train_error"]) for r in rs],
                      "curves": [r["train_curve"] for r in rs]}  # fmt: skip
    sweep = {}
    for key in ("bn", "nobn"):
        points = []
        for lr in s["bn_sweep"]["lrs"]:
            r = outputs[f"bn_sweep/{key}/lr{lr:g}"]
            last = r["train_curve"][-1][2] if r["train_curve"] else math.inf
            stable = (not r["diverged"]) and math.isfinite(last) and last < CHANCE_LOSS
            points.append({"lr": lr, "final_loss": last if math.isfinite(last) else None, "stable": stable,
                           "diverged": r["diverged"]})
        good = [p["lr"] for p in points if p["stable"]]
        sweep[key] = {"points": points, "max_stable_lr": max(good) if good else None}
    return {"seeds": seeds, "settings": {k: v for k, v in s.items() if k not in ("seeds", "device")},
            "relu": relu, "dropout": dropout, "small": small, "bn_speed": speed, "bn_sweep": sweep,
            "profiles": outputs["profiles"]}


def _num(x: Any) -> float:
    return 90.0 if x is None else float(x)


def _where(results: dict[str, Any]) -> str:
    """The data the small networks trained on: digits, cifar10 or cifar100 (from the spec, not its folder)."""
    return str(results["settings"].get("data", "digits")).partition(":")[0]


def _floor(results: dict[str, Any]) -> float:
    return ERROR_FLOOR if _where(results) == "digits" else CIFAR_ERROR_FLOOR


def _first_below(curve: list, level: float, cap: int) -> float:
    return float(next((p[0] for p in curve if p[1] <= level), cap))


# ---------------------------------------------------------------------------------------------------------------------
# verdicts


def verdict_relu(results: dict[str, Any]) -> Verdict:
    """Each activation at its fastest LR of the grid (the paper's protocol): steps to RELU_TARGET vs the seed spread."""
    claim = f"ReLU trains faster than tanh (steps to {RELU_TARGET:g}% training error, each at its best LR)"
    relu, tanh = results["relu"]["relu"], results["relu"]["tanh"]
    cap = results["settings"]["relu"]["max_steps"]
    nums = (f"ReLU {fmt_pm(relu['steps_to_target'], 0)} steps (LR {relu['best_lr']:g}), tanh "
            f"{fmt_pm(tanh['steps_to_target'], 0)} steps (LR {tanh['best_lr']:g})")
    common = sorted(set(relu.get("by_lr", {})) & set(tanh.get("by_lr", {})), key=float)
    if len(common) > 1:
        nums += "; per LR " + ", ".join(f"{lr}: {mean_std(relu['by_lr'][lr]['steps_to_target'])[0]:.0f} vs "
                                       f"{mean_std(tanh['by_lr'][lr]['steps_to_target'])[0]:.0f}" for lr in common)
    if not all(relu["reached"]):
        return Verdict(claim, None, f"{nums}: ReLU did not reach the target within {cap} steps in every seed.")
    ratio = mean_std(tanh["steps_to_target"])[0] / max(1.0, mean_std(relu["steps_to_target"])[0])
    note = "" if all(tanh["reached"]) else f" (tanh counted at the {cap}-step cap where it never got there)"
    sep = separated(tanh["steps_to_target"], relu["steps_to_target"], floor=5)
    if sep is True:
        return Verdict(claim, True, f"{nums}{note}: {ratio:.1f}x fewer steps with ReLU (the paper: 6x on CIFAR-10).")
    # Not a "does not hold": digits reach 25% training error in a few dozen steps, where the paper's curves of
    # CIFAR-10 take thousands; the claim is tested as the paper made it by alexnet_fig1.
    found = "tanh is faster here" if sep is False else "inside the seed spread"
    if _where(results) != "digits":
        return Verdict(claim, sep, f"{nums}{note}: {found}.")
    return Verdict(claim, None, f"{nums}{note}: {found}. 8x8 digits cannot test this as AlexNet's Fig. 1 did (they "
                                "reach 25% in tens of steps, where CIFAR-10 takes thousands): the paper's protocol is "
                                "`convcanon experiment alexnet-fig1 --data cifar10:PATH`.")


def verdict_dropout(results: dict[str, Any]) -> Verdict:
    claim = "Dropout in the FC layers narrows the train-test gap"
    off, on = results["dropout"]["0.0"], results["dropout"]["0.5"]
    nums = (f"test minus training loss: {fmt_pm(off['loss_gap'], 3)} without dropout, {fmt_pm(on['loss_gap'], 3)} with "
            f"p=0.5; error gap {fmt_pm(off['error_gap'], 2)} vs {fmt_pm(on['error_gap'], 2)} points; test error "
            f"{fmt_pm(off['test_error'], 2)}% vs {fmt_pm(on['test_error'], 2)}%")
    sep = separated(off["loss_gap"], on["loss_gap"], floor=0.01)
    if sep is True:
        return Verdict(claim, True, f"{nums}.")
    if sep is False:
        return Verdict(claim, False, f"{nums}: the gap is wider with dropout.")
    return Verdict(claim, None, f"{nums}: inside the seed spread.")


def _profile(results: dict[str, Any], group: str, model: str, **opts: Any) -> dict[str, Any]:
    return next(p for p in results["profiles"][group] if p["model"] == model
                and all(p["options"].get(k) == v for k, v in opts.items()))  # fmt: skip


def verdict_kernels(results: dict[str, Any]) -> Verdict:
    claim = "3x3 stacks need fewer parameters than one large kernel of the same receptive field, at no loss of accuracy"
    stack, large = _profile(results, "kernels", "vgg16", kernels="stack"), _profile(results, "kernels", "vgg16",
                                                                                    kernels="large")
    small = results["small"]["kernels"]
    nums = (f"VGG-16 (average-pool head) at 224x224: {stack['params'] / 1e6:.1f}M parameters / "
            f"{stack['macs'] / 1e9:.1f} GMACs with 3x3 "
            f"stacks vs {large['params'] / 1e6:.1f}M / {large['macs'] / 1e9:.1f} GMACs with large kernels; small VGG "
            f"on {_where(results)}: {small['stack']['params']:,} vs {small['large']['params']:,} parameters, test "
            "error "
            f"{fmt_pm(small['stack']['test_error'], 2)}% vs {fmt_pm(small['large']['test_error'], 2)}%")
    if stack["params"] >= large["params"]:
        return Verdict(claim, False, f"{nums}: the stacks are not smaller.")
    worse = separated(small["stack"]["test_error"], small["large"]["test_error"], _floor(results))
    if worse is True:
        return Verdict(claim, False, f"{nums}: fewer parameters, but the stacks are less accurate here.")
    extra = " and more accurate" if worse is False else " and as accurate (within the seed spread)"
    return Verdict(claim, True, f"{nums}: VGG-16's convolutions are {large['params'] / stack['params']:.2f}x smaller "
                                f"as stacks{extra}.")


def verdict_reductions(results: dict[str, Any]) -> Verdict:
    claim = "Inception's 1x1 reductions cut parameters and MACs"
    on = _profile(results, "reductions", "googlenet", reductions=True)
    off = _profile(results, "reductions", "googlenet", reductions=False)
    nums = (f"GoogLeNet (no aux heads) at 224x224: {on['params'] / 1e6:.2f}M parameters / {on['macs'] / 1e9:.2f} "
            f"GMACs with reductions, {off['params'] / 1e6:.2f}M / {off['macs'] / 1e9:.2f} GMACs without")
    if on["params"] < off["params"] and on["macs"] < off["macs"]:
        return Verdict(claim, True, f"{nums}: {off['params'] / on['params']:.1f}x the parameters and "
                                    f"{off['macs'] / on['macs']:.1f}x the MACs without them.")
    return Verdict(claim, False, f"{nums}.")


def verdict_head(results: dict[str, Any]) -> Verdict:
    claim = "The average-pool head removes most parameters of the FC tower at no loss of accuracy"
    fc, avg = _profile(results, "head", "vgg16", head="fc"), _profile(results, "head", "vgg16", head="avgpool")
    small = results["small"]["head"]
    nums = (f"VGG-16: {fc['params'] / 1e6:.1f}M parameters with the FC tower, {avg['params'] / 1e6:.1f}M with the "
            f"average-pool head; small VGG on {_where(results)}: test error "
            f"{fmt_pm(small['fc']['test_error'], 2)}% (FC, "
            f"{small['fc']['params']:,} params) vs {fmt_pm(small['avgpool']['test_error'], 2)}% (avg-pool, "
            f"{small['avgpool']['params']:,} params)")
    if avg["params"] >= fc["params"]:
        return Verdict(claim, False, f"{nums}.")
    worse = separated(small["avgpool"]["test_error"], small["fc"]["test_error"], _floor(results))
    if worse is True:
        pointer = (" On 8x8 inputs both heads see a 2x2 map; the same ablation at 32x32 is `convcanon experiment ideas "
                   "--data cifar10:PATH`." if _where(results) == "digits" else "")
        return Verdict(claim, None, f"{nums}: far fewer parameters, but less accurate on {_where(results)} in this "
                                    f"budget.{pointer}")
    return Verdict(claim, True, f"{nums}: {fc['params'] / avg['params']:.0f}x fewer parameters, accuracy "
                                f"{'better' if worse is False else 'within the seed spread'}.")


def verdict_batchnorm(results: dict[str, Any]) -> Verdict:
    claim = "Batch norm speeds up training and tolerates larger learning rates"
    bn, nobn = results["bn_speed"]["bn"], results["bn_speed"]["nobn"]
    lr_bn, lr_nobn = results["bn_sweep"]["bn"]["max_stable_lr"], results["bn_sweep"]["nobn"]["max_stable_lr"]
    cap = results["settings"]["bn_speed"]["steps"]
    nums = (f"steps to {BN_TARGET:g}% training error: {fmt_pm(bn['steps_to_target'], 0)} with BN, "
            f"{fmt_pm(nobn['steps_to_target'], 0)} without (cap {cap}); largest stable LR of the sweep: "
            f"{lr_bn if lr_bn is not None else 'none'} with BN, {lr_nobn if lr_nobn is not None else 'none'} without")
    faster = separated(nobn["steps_to_target"], bn["steps_to_target"], floor=5)
    larger = (lr_bn or 0) > (lr_nobn or 0)
    if faster is True and larger:
        return Verdict(claim, True, f"{nums}.")
    if faster is False or (lr_bn or 0) < (lr_nobn or 0):
        return Verdict(claim, False, f"{nums}.")
    return Verdict(claim, None, f"{nums}: only one of the two effects shows beyond the noise.")


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    return [verdict_relu(results), verdict_dropout(results), verdict_kernels(results), verdict_reductions(results),
            verdict_head(results), verdict_batchnorm(results)]


# ---------------------------------------------------------------------------------------------------------------------
# plots and report


def plot(results: dict[str, Any], out_dir: Path) -> list[str]:
    import numpy as np

    from ..plots import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for act, colour in (("relu", "tab:blue"), ("tanh", "tab:orange")):
        for i, curve in enumerate(results["relu"][act]["curves"]):
            if curve:
                ax.plot([p[0] for p in curve], [p[1] for p in curve], color=colour, alpha=0.8, lw=1.2,
                        label=f"{act} (LR {results['relu'][act]['best_lr']:g})" if i == 0 else None)
    ax.axhline(RELU_TARGET, color="k", ls=":", lw=1, label=f"{RELU_TARGET:g}% target")
    ax.set_yscale("log")
    ax.set_xlabel(f"SGD step (batch {results['settings']['relu']['batch_size']}, constant LR: each activation's "
                  "fastest)")
    ax.set_ylabel("running training error (%), log scale")
    ax.set_title("ReLU vs tanh: four-layer CNN (AlexNet Fig. 1)")
    ax.legend()

    ax = axes[1]
    for key, colour, label in (("bn", "tab:blue", "with batch norm"), ("nobn", "tab:red", "without")):
        for i, curve in enumerate(results["bn_speed"][key]["curves"]):
            if curve:
                ax.plot([p[0] for p in curve], [p[1] for p in curve], color=colour, alpha=0.8, lw=1.2,
                        label=label if i == 0 else None)
    ax.axhline(BN_TARGET, color="k", ls=":", lw=1, label=f"{BN_TARGET:g}% target")
    ax.set_yscale("log")
    ax.set_xlabel(f"SGD step (batch {results['settings']['bn_speed']['batch_size']}, LR "
                  f"{results['settings']['bn_speed']['lr']:g})")
    ax.set_ylabel("running training error (%), log scale")
    ax.set_title("Batch norm: training speed (6-conv VGG)")
    ax.legend()

    ax = axes[2]
    for key, colour, label in (("bn", "tab:blue", "with batch norm"), ("nobn", "tab:red", "without")):
        pts = results["bn_sweep"][key]["points"]
        lrs = np.array([p["lr"] for p in pts])
        loss = np.array([p["final_loss"] if p["final_loss"] is not None else np.nan for p in pts], dtype=float)
        ax.plot(lrs, np.minimum(loss, 10.0), color=colour, marker="o", label=label)
        bad = ~np.isfinite(loss)
        if bad.any():
            ax.scatter(lrs[bad], np.full(bad.sum(), 10.0), color=colour, marker="x", s=60, zorder=3)
    ax.axhline(CHANCE_LOSS, color="k", ls=":", lw=1, label="chance (ln 10)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate (constant)")
    ax.set_ylabel(f"training loss after {results['settings']['bn_sweep']['steps']} steps (x = diverged)")
    ax.set_title("Batch norm: learning-rate sweep")
    ax.legend()
    return [save(fig, out_dir, "ideas.png")]


def section(results: dict[str, Any], verdicts: list[Verdict], plots: list[str]) -> str:
    p = results["profiles"]

    def prow(entry: dict[str, Any]) -> tuple:
        opts = ", ".join(f"{k}={v}" for k, v in entry["options"].items())
        return (f"`{entry['model']}`", opts, entry["input"], f"{entry['params']:,}", f"{entry['macs'] / 1e9:.3f}")

    prof = md_table([prow(e) for g in ("kernels", "reductions", "head") for e in p[g]],
                    ["model", "switch", "input", "params", "GMACs"], "lllrr")
    d = results["dropout"]
    drop = md_table([(f"p={k}", fmt_pm(v["train_error"], 2), fmt_pm(v["test_error"], 2), fmt_pm(v["train_loss"], 3),
                      fmt_pm(v["test_loss"], 3), fmt_pm(v["loss_gap"], 3)) for k, v in d.items()],
                    ["dropout", "train error %", "test error %", "train loss", "test loss", "loss gap"], "lrrrrr")
    sm, where = results["small"], _where(results)
    small = md_table([(f"{g}={v}", f"{x['params']:,}", f"{x['macs'] / 1e6:.2f}", fmt_pm(x["test_error"], 2))
                      for g in ("kernels", "head") for v, x in sm[g].items()],
                     [f"small VGG on {where}", "params", f"MMACs ({DATA[where]}x{DATA[where]})", "test error %"],
                     "lrrr")
    return (
        f"{len(results['seeds'])} seed(s) per trained variant. Measured at ImageNet size (no training):\n\n{prof}\n\n"
        f"Dropout (FC tower, no augmentation, no weight decay):\n\n{drop}\n\nSmall networks on {where}:\n\n{small}\n\n"
        f"{verdict_lines(verdicts)}\n\n"
        + images(plots, NAME, {"ideas.png": "ReLU vs tanh, batch norm speed, LR sweep"})
    )
