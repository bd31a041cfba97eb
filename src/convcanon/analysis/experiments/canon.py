"""The canon side by side: quoted ImageNet results, measured parameters and MACs, and a measured run on digits.

Three kinds of numbers, kept apart and labelled:

- **Quoted** (not measured here): ImageNet-1K top-1/top-5 accuracy of torchvision's reference weights (its model table,
  https://pytorch.org/vision/stable/models.html, single 224x224 center crop), and each paper's headline ILSVRC
  result with its protocol. Differences of a point between rows of different years mix architecture with training
  recipe and evaluation protocol (the pitfalls experiment shows how much the recipe alone moves ResNet-50).
- **Measured, no training**: parameters and forward GMACs of the very models those weights belong to
  (``profile_model``: torch.utils.flop_counter on the meta device), checked against torchvision's published figures.
- **Measured, trained here**: the small-image versions of the four families on the embedded digits, the same number of
  steps and batch for all: test error, training time and parameters. Each runs at the smallest power-of-two input side
  it accepts (ResNet-20 and GoogLeNet at the native 8x8, AlexNet at 16x16, VGG-16 at 32x32: five 2x2 pools need 32
  pixels), so the digits are upsampled for those two; the input side is in the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .core import Unit, Verdict, fmt_pm, images, md_table, mean_std, pick, separated, verdict_lines

NAME = "canon"
TITLE = "The canon side by side: AlexNet, VGG-16, GoogLeNet, ResNet"
CLAIM = "Each architecture of the canon improved on the last, and not by adding parameters"
DEPENDS: tuple[str, ...] = ()

TORCHVISION_TABLE = "https://pytorch.org/vision/stable/models.html"

# Quoted figures. torchvision: the `_metrics` and `num_params`/`_ops` of each weights enum (torchvision 0.15+; the
# same values as the model table). Papers: the headline ILSVRC classification results, with their protocol.
QUOTED: list[dict[str, Any]] = [
    {"architecture": "AlexNet", "year": 2012, "idea": "ReLU, dropout, two GPUs", "model": "alexnet_owt",
     "tv_weights": "AlexNet_Weights.IMAGENET1K_V1", "tv_top1": 56.522, "tv_top5": 79.066, "tv_params": 61_100_840,
     "tv_gmacs": 0.714,
     "paper": "ILSVRC-2012 test top-5 error 15.3% (ensemble of 7 CNNs; runner-up 26.2%)",
     "paper_top5_error": 15.3, "source": "Krizhevsky et al. 2012, NeurIPS, Table 2"},
    {"architecture": "VGG-16", "year": 2014, "idea": "depth, only 3x3 convs", "model": "vgg16",
     "tv_weights": "VGG16_Weights.IMAGENET1K_V1", "tv_top1": 71.592, "tv_top5": 90.382, "tv_params": 138_357_544,
     "tv_gmacs": 15.47,
     "paper": "ILSVRC-2014 test top-5 error 7.3% (2nd place, 7 nets; 6.8% with 2 nets after the contest)",
     "paper_top5_error": 7.3, "source": "Simonyan and Zisserman 2015, ICLR, Table 7"},
    {"architecture": "GoogLeNet", "year": 2014, "idea": "Inception, 1x1 reductions, avg-pool head",
     "model": "googlenet_bn", "options": {"aux_heads": False},
     "tv_weights": "GoogLeNet_Weights.IMAGENET1K_V1", "tv_top1": 69.778, "tv_top5": 89.530, "tv_params": 6_624_904,
     "tv_gmacs": 1.498,
     "paper": "ILSVRC-2014 test top-5 error 6.67% (1st place, 7 models x 144 crops)",
     "paper_top5_error": 6.67, "source": "Szegedy et al. 2014, CVPR 2015, Tables 2-3"},
    {"architecture": "ResNet-50", "year": 2015, "idea": "y = F(x) + x, batch norm", "model": "resnet50",
     "tv_weights": "ResNet50_Weights.IMAGENET1K_V1", "tv_top1": 76.130, "tv_top5": 92.862, "tv_params": 25_557_032,
     "tv_gmacs": 4.089,
     "paper": "single model, ImageNet val top-5 error 5.25% (top-1 20.74%, multi-scale)",
     "paper_top5_error": 5.25, "source": "He et al. 2015, CVPR 2016, Table 4"},
    {"architecture": "ResNet-152", "year": 2015, "idea": "y = F(x) + x, batch norm", "model": "resnet152",
     "tv_weights": "ResNet152_Weights.IMAGENET1K_V1", "tv_top1": 78.312, "tv_top5": 94.046, "tv_params": 60_192_808,
     "tv_gmacs": 11.514,
     "paper": "ILSVRC-2015 test top-5 error 3.57% (1st place, ensemble; single model 4.49% val)",
     "paper_top5_error": 3.57, "source": "He et al. 2015, CVPR 2016, Tables 4-5"},
]  # fmt: skip

# ResNet-50 with torchvision's 2021 recipe: the same architecture, 4.7 points of top-1 from training alone.
RESNET50_V2 = {"tv_weights": "ResNet50_Weights.IMAGENET1K_V2", "tv_top1": 80.858, "tv_top5": 95.434}

# Small-image versions trained on digits: (model, input side, peak LR). The no-BN AlexNet needs a lower LR (it stays
# at chance at 0.05; the paper itself used 0.01); the batch-norm nets share 0.05.
SMALL: list[tuple[str, int, float]] = [
    ("alexnet_cifar", 16, 0.02),
    ("vgg16_bn_cifar", 32, 0.05),
    ("googlenet_cifar", 8, 0.05),
    ("resnet20", 8, 0.05),
]
# Measured ms per step at batch 32, one thread (noisy shared machine; used only for the runtime estimate).
MS_PER_STEP_B32 = {"alexnet_cifar": 60, "vgg16_bn_cifar": 730, "googlenet_cifar": 70, "resnet20": 17}
ARCH_OF = {"alexnet_cifar": "AlexNet", "vgg16_bn_cifar": "VGG-16", "googlenet_cifar": "GoogLeNet",
           "resnet20": "ResNet"}  # fmt: skip
ERROR_FLOOR = 0.6  # points of test error (two test images)


def settings(mode: str, seed: int = 0, device: str = "auto",
             data: str = "digits") -> dict[str, Any]:
    small = SMALL if mode != "tiny" else [("alexnet_cifar", 16, 0.02), ("resnet20", 8, 0.05)]
    return {
        "small": [list(x) for x in small],
        "seeds": [seed + k for k in range(pick(mode, 1, 1, 3))],
        "steps": pick(mode, 3, 150, 1500),
        "batch_size": pick(mode, 32, 32, 64),
        "warmup_steps": pick(mode, 1, 15, 100),
        "device": device,
    }


def units(s: dict[str, Any]) -> list[Unit]:
    out = [Unit("imagenet-profiles", f"{__name__}:imagenet_profiles", {}, 10.0)]
    for model, side, lr in s["small"]:
        for seed in s["seeds"]:
            params = {"model": model, "image_size": side, "lr": lr, "seed": seed, "steps": s["steps"],
                      "batch_size": s["batch_size"], "warmup_steps": s["warmup_steps"], "device": s["device"]}
            cost = MS_PER_STEP_B32[model] * s["steps"] * s["batch_size"] / 32 / 1000
            out.append(Unit(f"{model}/seed{seed}", f"{__name__}:train_small", params, cost))
    return out


def imagenet_profiles() -> list[dict[str, Any]]:
    from ...registry import model_info
    from ..profile import profile_model

    rows = []
    for q in QUOTED:
        p = profile_model(q["model"], **q.get("options", {}))
        rows.append({"model": q["model"], "params": p.params, "macs": p.macs, "depth": model_info(q["model"]).depth,
                     "input": "x".join(map(str, p.input_size))})
    return rows


def train_small(model: str, image_size: int, lr: float, seed: int, steps: int, batch_size: int, warmup_steps: int,
                device: str) -> dict[str, Any]:
    import torch

    from ... import create_model
    from ...registry import model_info
    from ..profile import count_macs, count_params
    from . import lean

    data = lean.digits(image_size)
    torch.manual_seed(seed)
    net = create_model(model, num_classes=data.info.num_classes, in_chans=data.info.in_chans)
    fit = lean.fit(net, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, warmup_steps=warmup_steps,
                   device=lean.resolve_device(device))
    return {"model": model, "depth": model_info(model).depth, "image_size": image_size, "lr": lr,
            "params": count_params(net), "macs": count_macs(net, (1, image_size, image_size)), **fit}


def assemble(s: dict[str, Any], outputs: dict[str, Any], deps: dict[str, Any]) -> dict[str, Any]:
    prof = {p["model"]: p for p in outputs["imagenet-profiles"]}
    imagenet = []
    for q in QUOTED:
        p = prof[q["model"]]
        imagenet.append({**q, "params": p["params"], "gmacs": p["macs"] / 1e9, "depth": p["depth"],
                         "input": p["input"]})
    small = []
    for model, side, lr in s["small"]:
        runs = [outputs[f"{model}/seed{seed}"] for seed in s["seeds"]]
        small.append({
            "model": model, "architecture": ARCH_OF.get(model, model), "depth": runs[0]["depth"], "input": side,
            "lr": lr, "params": runs[0]["params"], "mmacs": runs[0]["macs"] / 1e6,
            "test_error": [_num(r["final_test_error"]) for r in runs],
            "train_error": [_num(r["final_train_error"]) for r in runs],
            "seconds": [r["seconds"] for r in runs], "cpu_seconds": [r["cpu_seconds"] for r in runs],
            "ms_per_step": [1000 * r["cpu_seconds"] / max(1, r["steps"]) for r in runs],
            "curves": [r.get("test_curve", []) for r in runs],
        })  # fmt: skip
    return {"imagenet": imagenet, "resnet50_v2": RESNET50_V2, "small": small, "steps": s["steps"],
            "batch_size": s["batch_size"], "seeds": s["seeds"], "torchvision_table": TORCHVISION_TABLE}


def _num(x: Any) -> float:
    return 90.0 if x is None else float(x)


def verdict_measured_matches_published(results: dict[str, Any]) -> Verdict:
    """Our parameter counts equal torchvision's and our GMACs are within 1% of its published figures."""
    claim = "Measured parameters and GMACs match the published figures of the weights quoted"
    bad = []
    for r in results["imagenet"]:
        if r["params"] != r["tv_params"] or abs(r["gmacs"] - r["tv_gmacs"]) > 0.01 * r["tv_gmacs"]:
            bad.append(f"{r['model']}: {r['params']:,} params / {r['gmacs']:.3f} GMACs vs published "
                       f"{r['tv_params']:,} / {r['tv_gmacs']}")
    if bad:
        return Verdict(claim, False, "; ".join(bad) + ".")
    return Verdict(claim, True, f"all {len(results['imagenet'])} models: parameters exactly, GMACs within 1%.")


def verdict_progression(results: dict[str, Any]) -> Verdict:
    """Quoted top-1 of the reference weights rises from each year to the next (best model of each year)."""
    claim = "Each year's architecture beats the previous year's on ImageNet (quoted top-1, torchvision weights)"
    best: dict[int, tuple[float, str]] = {}
    for r in results["imagenet"]:
        if r["year"] not in best or r["tv_top1"] > best[r["year"]][0]:
            best[r["year"]] = (r["tv_top1"], r["architecture"])
    years = sorted(best)
    chain = " < ".join(f"{best[y][1]} {best[y][0]:.1f}% ({y})" for y in years)
    rising = all(best[a][0] < best[b][0] for a, b in zip(years, years[1:]))
    return Verdict(claim, rising, f"{chain}." if rising else f"not monotone: {chain}.")


def verdict_small(results: dict[str, Any]) -> Verdict:
    """On digits, ResNet-20 is at least as accurate as every older design, with the fewest parameters but one."""
    claim = "On digits, the residual net matches or beats the older designs with a fraction of their parameters"
    rows = {r["model"]: r for r in results["small"]}
    res = rows.get("resnet20")
    if res is None or len(rows) < 2:
        return Verdict(claim, None, "ResNet-20 or the older designs were not run.")
    others = [r for m, r in rows.items() if m != "resnet20"]
    worse_than = [r["model"] for r in others if separated(res["test_error"], r["test_error"], ERROR_FLOOR) is True]
    nums = "; ".join(f"{r['model']} {fmt_pm(r['test_error'], 2)}% with {r['params'] / 1e6:.2f}M params"
                     for r in results["small"])
    if worse_than:
        return Verdict(claim, False, f"{nums}: ResNet-20 is behind {', '.join(worse_than)} beyond the noise.")
    ratio = max(r["params"] for r in others) / res["params"]
    return Verdict(claim, True, f"{nums}: ResNet-20 is not behind any of them, with up to {ratio:.0f}x fewer "
                                "parameters.")


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    return [verdict_measured_matches_published(results), verdict_progression(results), verdict_small(results)]


def plot(results: dict[str, Any], out_dir: Path) -> list[str]:
    from ..plots import plain_log_ticks, pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    ax = axes[0]
    for r in results["imagenet"]:
        ax.scatter(r["params"] / 1e6, r["tv_top1"], s=30 + 12 * r["gmacs"], alpha=0.7)
        ax.annotate(f"{r['architecture']} ({r['year']})\n{r['gmacs']:.1f} GMACs", (r["params"] / 1e6, r["tv_top1"]),
                    textcoords="offset points", xytext=(6, -4), fontsize=8)
    v2 = results["resnet50_v2"]
    r50 = next(r for r in results["imagenet"] if r["model"] == "resnet50")
    ax.scatter(r50["params"] / 1e6, v2["tv_top1"], marker="*", s=120, color="k")
    ax.annotate("ResNet-50, 2021 recipe", (r50["params"] / 1e6, v2["tv_top1"]), textcoords="offset points",
                xytext=(6, 2), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (millions, log scale; measured)")
    ax.set_ylabel("ImageNet top-1 (%), QUOTED: torchvision weights")
    ax.set_title("Accuracy is not parameter count (marker area ~ GMACs)")
    ax.set_xlim(3, 400)

    ax = axes[1]
    for r in results["small"]:
        m, s = mean_std(r["test_error"])
        ax.errorbar(r["params"] / 1e6, m, yerr=s if len(r["test_error"]) > 1 else None, marker="o", capsize=4)
        ax.annotate(f"{r['model']} ({r['input']}x{r['input']})\n{mean_std(r['ms_per_step'])[0]:.0f} ms/step",
                    (r["params"] / 1e6, m), textcoords="offset points", xytext=(6, -4), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (millions, log scale)")
    ax.set_ylabel("test error on digits (%), log scale, MEASURED")
    ax.set_title(f"Small-image versions on digits, {results['steps']} steps at batch {results['batch_size']}")
    ax.set_xlim(0.1, 60)
    errors = [mean_std(r["test_error"])[0] for r in results["small"]]
    ax.set_ylim(min(errors) / 1.6, max(errors) * 1.8)  # room for the labels
    plain_log_ticks(ax)
    return [save(fig, out_dir, "canon.png")]


def section(results: dict[str, Any], verdicts: list[Verdict], plots: list[str]) -> str:
    rows = [(r["year"], r["architecture"], f"`{r['model']}`", r["depth"], f"{r['params']:,}", f"{r['gmacs']:.2f}",
             f"{r['tv_top1']:.1f}", f"{r['tv_top5']:.1f}", r["paper"] + f" [{r['source']}]")
            for r in results["imagenet"]]  # fmt: skip
    imagenet = md_table(rows, ["year", "architecture", "convcanon model", "depth", "params (measured)",
                               "GMACs (measured)", "top-1 % (quoted)", "top-5 % (quoted)",
                               "paper's headline result (quoted)"], "lllrrrrrl")
    rows = [(r["architecture"], f"`{r['model']}`", f"{r['input']}x{r['input']}", f"{r['params']:,}",
             f"{r['mmacs']:.1f}", fmt_pm(r["test_error"], 2), fmt_pm(r["train_error"], 2),
             f"{mean_std(r['seconds'])[0]:.0f}", f"{mean_std(r['ms_per_step'])[0]:.0f}") for r in results["small"]]
    small = md_table(rows, ["family", "model", "input", "params", "MMACs", "test error %", "train error %",
                            "train time (s, wall)", "CPU ms/step"], "lllrrrrrr")
    v2 = results["resnet50_v2"]
    return (
        f"**Quoted** top-1/top-5: ImageNet-1K validation, single 224x224 crop, torchvision's reference weights "
        f"([model table]({results['torchvision_table']})); the papers' figures are ILSVRC results with their own "
        f"protocols (ensembles, many crops), so compare them within a column only. ResNet-50 with torchvision's newer "
        f"recipe ({v2['tv_weights']}): {v2['tv_top1']}% top-1, the same network. Parameters and GMACs are "
        f"**measured** on the models those weights load into.\n\n{imagenet}\n\n"
        f"**Measured here**: the small-image versions on digits, {results['steps']} steps at batch "
        f"{results['batch_size']}, {len(results['seeds'])} seed(s); CPU ms/step is single-threaded.\n\n{small}\n\n"
        f"{verdict_lines(verdicts)}\n\n" + images(plots, NAME, {"canon.png": "the canon: accuracy vs parameters"})
    )
