"""Scaling: the same algorithm at scale. Every run here goes through the training engine, ``convcanon.train.train``.

- **Data parallel vs one process.** ``torchrun --nproc-per-node 2 -m convcanon train`` (run as ``python -m
  torch.distributed.run``, the same entry point, so no PATH is needed) with 32 images per process, against one process
  that takes the same two micro-batches of 32 by gradient accumulation: same samples per step, same batch-norm
  batches. And with ``--sync-bn`` (batch statistics over the global 64) against one process at batch 64.
- **Gradient accumulation vs a big batch.** 4 micro-batches of 16 against one batch of 64: AlexNet without dropout
  (no batch norm; dropout masks would be drawn in another order), and ResNet-20, whose batch norm then normalizes over
  16 instead of 64 images (the one thing accumulation changes), with its accuracy after a few epochs.
- **The linear scaling rule with and without warmup** (Goyal et al. 2017): ResNet-20 at base batch 8 and at 8x and 32x
  that batch, the LR scaled by the same factor, the same number of epochs, with and without linear warmup.
- **bf16 vs fp32**: the same run with ``--amp bf16`` (autocast) and without: loss curves and final accuracy.

How "the same" is measured: both runs checkpoint after every step, and the largest parameter difference is taken at
each step (batch-norm running averages excluded: under DDP they are rank 0's, by design). The comparisons use a
constant LR, so that the two runs' schedules cannot differ (see the note on accumulation below). Equal mathematics in
a different summation order agrees to float rounding after the first step; from there, rounding differences may grow
(for ResNet-20 on digits they do, fast). Two yardsticks, measured in the same run: ``reference/rounding-*``, the same
run on one thread and on two (nothing changes but the float summation order), and ``reference/seed-*``, two seeds (a
different run). A comparison is "the same algorithm" when it agrees to rounding after step 1 and then stays within
10x of the rounding reference (or, where rounding differences do not grow, within 1/10 of the seed distance).

A note on accumulation and schedules: with ``accum_steps`` k the engine counts ``ceil(micro-batches / k)`` steps per
epoch, so a trailing short group is an extra step (23 steps of 4 x 16 on digits against 22 batches of 64, whose
incomplete last batch is dropped); a cosine schedule then differs slightly between the two runs. That is why the
comparisons use a constant LR; the ResNet-20 accuracy comparison over several epochs keeps the default schedule.

If torchrun fails (no distributed support in this build, no free port...), the failure is recorded in the results and
the verdicts say so; the rest of the report is unaffected.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from .core import Unit, Verdict, images, md_table, pick, verdict_lines

# The runs live in scaling_runs; the units name them through this module (their cache keys hold its name).
from .scaling_runs import ddp_pair, engine_pair, engine_run  # noqa: F401

NAME = "scaling"
TITLE = "Scaling: data parallelism, accumulation, the linear scaling rule, bf16"
CLAIM = "Training at scale is the same gradient descent: data parallel and accumulated runs equal the one-process run"
DEPENDS: tuple[str, ...] = ()

ROUNDING_TOL = 1e-5  # max |parameter difference| after one step that is float32 rounding, not another algorithm
SAME_RUN_FRACTION = 0.1  # after N steps, an equivalent run stays within this fraction of the seed-to-seed distance
ACC_TOL = 1.0  # points of test accuracy: "matches" (3-4 test images)
DATA = {"digits": 8, "cifar10": 32, "cifar100": 32}


def settings(mode: str, seed: int = 0, device: str = "auto",
             data: str = "digits") -> dict[str, Any]:
    base = _settings(mode, seed, device)
    if data == "digits":
        return base
    # CIFAR (50k images): the equivalences are step-limited as on digits; the accuracy runs start from the paper's
    # batch 128 (8x: 1,024, 32x: 4,096) and train these epochs (tiny, quick, full; tiny keeps digits' base 8, which
    # a test's small CIFAR folder holds).
    base["accum"]["epochs"] = pick(mode, 1, 1, 5)
    base["linear"].update(base_batch=pick(mode, 8, 128, 128), lr=pick(mode, 0.05, 0.1, 0.1),
                          epochs=pick(mode, 1, 5, 30), warmup_epochs=pick(mode, 1.0, 1.0, 5.0))
    base["amp"]["epochs"] = pick(mode, 1, 2, 10)
    return {**base, "data": data}


def _settings(mode: str, seed: int, device: str) -> dict[str, Any]:
    return {
        "seed": seed,
        "device": device,
        "ddp": {"model": "resnet20", "batch_size": 32, "steps": pick(mode, 3, 20, 20), "lr": 0.1,
                "timeout_s": pick(mode, 240, 300, 900)},
        "accum": {"micro_batch": 16, "accum_steps": 4, "exact_steps": pick(mode, 2, 20, 20),
                  "epochs": pick(mode, 1, 3, 15), "resnet_max_steps": pick(mode, 2, 0, 0)},
        # tiny: 2 steps per run (no evaluation, so no accuracy: the verdicts say so)
        "linear": {"base_batch": 8, "lr": 0.05, "multipliers": pick(mode, [8], [8, 32], [8, 16, 32]),
                   "epochs": pick(mode, 1, 10, 30), "warmup_epochs": pick(mode, 1.0, 2.0, 5.0),
                   "max_steps": pick(mode, 2, 0, 0)},
        "amp": {"model": "resnet20", "batch_size": 64, "epochs": pick(mode, 1, 5, 30),
                "max_steps": pick(mode, 2, 0, 0)},
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# units


def units(s: dict[str, Any]) -> list[Unit]:
    seed, dev = s["seed"], s["device"]
    d, a, li, amp = s["ddp"], s["accum"], s["linear"], s["amp"]
    n = a["exact_steps"]
    out = [
        Unit("ddp/vs-accumulation", f"{__name__}:ddp_pair", {**d, "sync_bn": False, "seed": seed}, 16),
        Unit("ddp/sync-bn-vs-big-batch", f"{__name__}:ddp_pair", {**d, "sync_bn": True, "seed": seed}, 16),
    ]
    if "data" in s:  # CIFAR; digits units keep the parameters (and cache keys) they always had
        out = [replace(u, params={**u.params, "data": s["data"]}) for u in out]
    # fp32 unless a unit asks for bf16: equivalence to rounding is a claim about fp32 arithmetic, and the report's
    # figures must not depend on whether the CPU that runs it has native bf16 (where auto would pick it).
    base = {"data": s.get("data", "digits"), "seed": seed, "device": dev, "lr": 0.1, "base_batch": 256,
            "warmup_epochs": 0.0, "amp": "off"}
    const = {**base, "schedule": "constant"}
    alex = {**const, "model": "alexnet_cifar", "model_options": {"dropout": 0.0}, "image_size": 16, "epochs": 1,
            "max_steps": n}
    res = {**const, "model": "resnet20", "epochs": 1, "max_steps": n}
    big = a["micro_batch"] * a["accum_steps"]
    split = {"batch_size": a["micro_batch"], "accum_steps": a["accum_steps"]}
    # The ResNet-20 accumulation pair also trains a few epochs for its accuracy: default (cosine) schedule there.
    res_long = {**base, "model": "resnet20", "epochs": a["epochs"], "max_steps": a["resnet_max_steps"]}
    pairs = [
        ("accum/alexnet", {**alex, "batch_size": big}, {**alex, **split}, 1, 0.25 * n),
        ("accum/resnet20", {**res_long, "batch_size": big}, {**res_long, **split}, 1, 2.5 * a["epochs"]),
        ("reference/rounding-alexnet", {**alex, "batch_size": big}, {**alex, "batch_size": big}, 2, 0.2 * n),
        ("reference/rounding-resnet20", {**res, "batch_size": big}, {**res, "batch_size": big}, 2, 0.1 * n),
        ("reference/seed-alexnet", {**alex, "batch_size": big}, {**alex, "batch_size": big, "seed": seed + 1}, 1,
         0.2 * n),
        ("reference/seed-resnet20", {**res, "batch_size": big}, {**res, "batch_size": big, "seed": seed + 1}, 1,
         0.1 * n),
    ]
    for name, cfg_a, cfg_b, threads_b, cost in pairs:
        out.append(Unit(name, f"{__name__}:engine_pair",
                        {"a": cfg_a, "b": cfg_b, "track_steps": n, "threads_b": threads_b}, cost + 4))
    lin = {**base, "model": "resnet20", "base_batch": li["base_batch"], "lr": li["lr"], "epochs": li["epochs"],
           "max_steps": li["max_steps"]}
    out.append(Unit("linear/1x", f"{__name__}:engine_run", {"config": {**lin, "batch_size": li["base_batch"]}},
                    2.0 * li["epochs"] + 2))
    for k in li["multipliers"]:
        for warm in (0.0, li["warmup_epochs"]):
            cfg = {**lin, "batch_size": k * li["base_batch"], "warmup_epochs": warm}
            out.append(Unit(f"linear/{k}x/{'warmup' if warm else 'no-warmup'}", f"{__name__}:engine_run",
                            {"config": cfg}, 0.5 * li["epochs"] + 2))
    for mode in ("off", "bf16"):
        cfg = {**base, "model": amp["model"], "batch_size": amp["batch_size"], "epochs": amp["epochs"], "amp": mode,
               "warmup_epochs": min(1.0, float(amp["epochs"])), "max_steps": amp["max_steps"]}
        out.append(Unit(f"amp/{'fp32' if mode == 'off' else 'bf16'}", f"{__name__}:engine_run", {"config": cfg},
                        1.2 * amp["epochs"] + 2))
    return out


def gpu_seconds(s: dict[str, Any], device: str) -> float:
    """The estimator's price of the engine runs on CIFAR-size inputs (the torchrun pairs run on the CPU: not priced)."""
    from ...estimate import estimate

    configs = [c for u in units(s) for c in ([u.params["config"]] if "config" in u.params else
                                             [u.params["a"], u.params["b"]] if "a" in u.params else [])]
    total = 0.0
    for c in configs:
        batch = c["batch_size"] * c.get("accum_steps", 1)
        epochs = c["max_steps"] * batch / 50_000 if c.get("max_steps") else c["epochs"]
        total += estimate(c["model"], data="cifar10", epochs=epochs, device=device, batch_size=c["batch_size"],
                          image_size=c.get("image_size")).total_s
    return total


# ---------------------------------------------------------------------------------------------------------------------
# results


def assemble(s: dict[str, Any], outputs: dict[str, Any], deps: dict[str, Any]) -> dict[str, Any]:
    def pair(name: str) -> dict[str, Any]:
        o = outputs[name]
        if "a" in o:  # engine pairs
            return {"ok": o["ok"], "step_diffs": o.get("step_diffs", []), "max_param": o.get("max_param"),
                    "error": o["a"].get("error") or o["b"].get("error"), "a": _summary(o["a"]), "b": _summary(o["b"])}
        return {k: v for k, v in o.items() if k != "output_tail"} | {"output_tail": o.get("output_tail", "")[-1500:]}

    equivalence = {
        "ddp_vs_accumulation": pair("ddp/vs-accumulation"),
        "ddp_sync_bn_vs_big_batch": pair("ddp/sync-bn-vs-big-batch"),
        "accumulation_alexnet": pair("accum/alexnet"), "accumulation_resnet20": pair("accum/resnet20"),
        "rounding_alexnet": pair("reference/rounding-alexnet"),
        "rounding_resnet20": pair("reference/rounding-resnet20"),
        "seed_alexnet": pair("reference/seed-alexnet"), "seed_resnet20": pair("reference/seed-resnet20"),
    }  # fmt: skip
    li = s["linear"]
    linear = {"base_batch": li["base_batch"], "lr": li["lr"], "epochs": li["epochs"],
              "warmup_epochs": li["warmup_epochs"], "runs": {}}
    linear["runs"]["1x"] = _summary(outputs["linear/1x"], curves=True)
    for k in li["multipliers"]:
        for tag in ("no-warmup", "warmup"):
            linear["runs"][f"{k}x/{tag}"] = _summary(outputs[f"linear/{k}x/{tag}"], curves=True)
    amp = {m: _summary(outputs[f"amp/{m}"], curves=True) for m in ("fp32", "bf16")}
    return {"equivalence": equivalence, "linear": linear, "amp": amp, "multipliers": li["multipliers"],
            "settings": {k: v for k, v in s.items() if k not in ("seed", "device")}}


def _summary(run: dict[str, Any], curves: bool = False) -> dict[str, Any]:
    out = {"ok": run["ok"], "error": run.get("error"), "steps": run.get("steps"),
           "top1": (run.get("final") or {}).get("top1"), "test_loss": (run.get("final") or {}).get("loss"),
           "seconds": run.get("seconds"), "cpu_seconds": run.get("cpu_seconds"),
           "images_per_s": run.get("images_per_s")}
    train = run.get("train", [])
    out["max_train_loss"] = max((p[2] for p in train if math.isfinite(p[2])), default=None)
    if curves:
        out["train"], out["eval"] = train, run.get("eval", [])
    return out


# ---------------------------------------------------------------------------------------------------------------------
# verdicts

# The yardsticks (rounding reference, seed reference) each comparison is judged against: those of its model.
REFERENCE = {"ddp_vs_accumulation": "resnet20", "ddp_sync_bn_vs_big_batch": "resnet20",
             "accumulation_alexnet": "alexnet", "accumulation_resnet20": "resnet20"}
ROUNDING_GROWTH = 10.0  # an equivalent run stays within this factor of the pure-rounding reference


def same_run(results: dict[str, Any], key: str) -> tuple[bool | None, str]:
    """(verdict, numbers) for one comparison: equal to rounding after step 1, then within ROUNDING_GROWTH x the
    rounding reference (same run, other thread count), or, where rounding differences do not grow, within
    SAME_RUN_FRACTION of the seed reference."""
    eq = results["equivalence"]
    r = eq[key]
    rounding, seed = eq.get(f"rounding_{REFERENCE[key]}", {}), eq.get(f"seed_{REFERENCE[key]}", {})
    if not r.get("ok") or not r.get("step_diffs"):
        return None, f"no measurement ({r.get('error') or 'missing'})"
    d = r["step_diffs"]
    n = len(d)
    nums = f"max |parameter difference| {d[0]:.2g} after step 1, {d[-1]:.2g} after step {n}"
    if d[-1] == 0:
        return True, nums + " (bit-identical)"
    ref_r = rounding.get("step_diffs") or [] if rounding.get("ok") else []
    ref_s = seed.get("step_diffs") or [] if seed.get("ok") else []
    if len(ref_r) >= n:
        nums += f"; rounding alone (1 vs 2 threads) {ref_r[n - 1]:.2g}"
    if len(ref_s) >= n:
        nums += f"; another seed {ref_s[n - 1]:.2g}"
    if d[0] > ROUNDING_TOL:
        return False, nums + f": beyond float rounding ({ROUNDING_TOL:g}) from the first step"
    if len(ref_r) >= n and ref_r[n - 1] > 0 and ref_r[n - 1] >= ROUNDING_TOL:
        if d[-1] <= ROUNDING_GROWTH * ref_r[n - 1]:
            return True, nums + ": rounding differences, grown as rounding grows in this net"
        return False, nums + f": more than {ROUNDING_GROWTH:g}x what rounding alone grows to"
    if len(ref_s) >= n:
        if d[-1] <= min(SAME_RUN_FRACTION * ref_s[n - 1], max(ROUNDING_TOL, ROUNDING_GROWTH * (ref_r or [0])[-1])):
            return True, nums
        return False, nums + ": growing where rounding alone does not"
    return None, nums + ": no reference to judge the growth against"


def verdict_ddp(results: dict[str, Any]) -> Verdict:
    claim = "Data-parallel training on 2 processes is the same algorithm as one process"
    r = results["equivalence"]["ddp_vs_accumulation"]
    if not r.get("ok"):
        return Verdict(claim, None, f"torchrun failed ({r.get('error')}); command: `{r.get('command')}`; its output "
                                    "is in results.json.")
    holds, nums = same_run(results, "ddp_vs_accumulation")
    return Verdict(claim, holds, f"2 processes x 32 vs one process with {r['single']}: {nums}.")


def verdict_sync_bn(results: dict[str, Any]) -> Verdict:
    claim = "With synchronized batch norm, 2 processes x 32 equal one batch of 64"
    r = results["equivalence"]["ddp_sync_bn_vs_big_batch"]
    if not r.get("ok"):
        return Verdict(claim, None, f"torchrun failed ({r.get('error')}).")
    holds, nums = same_run(results, "ddp_sync_bn_vs_big_batch")
    return Verdict(claim, holds, f"{nums}.")


def verdict_accumulation(results: dict[str, Any]) -> Verdict:
    claim = "Gradient accumulation equals one big batch (for a net without batch norm)"
    s = results["settings"]["accum"]
    holds, nums = same_run(results, "accumulation_alexnet")
    text = f"{s['accum_steps']} x {s['micro_batch']} vs 1 x {s['accum_steps'] * s['micro_batch']}, AlexNet: {nums}"
    bn = results["equivalence"]["accumulation_resnet20"]
    if bn.get("ok") and bn["a"]["top1"] is not None and bn["b"]["top1"] is not None:
        _, bn_nums = same_run(results, "accumulation_resnet20")
        text += (f". ResNet-20, whose batch norm sees {s['micro_batch']} instead of "
                 f"{s['accum_steps'] * s['micro_batch']} images: {bn_nums}; test accuracy after {s['epochs']} "
                 f"epoch(s) {bn['b']['top1']:.1f}% accumulated vs {bn['a']['top1']:.1f}% big batch")
    return Verdict(claim, holds, f"{text}.")


def verdict_linear_scaling(results: dict[str, Any]) -> Verdict:
    """At the smallest multiplier: with warmup within ACC_TOL of the base; without warmup clearly worse."""
    li = results["linear"]
    k = min(results["multipliers"])
    claim = f"The linear scaling rule needs warmup (batch {k}x the base, LR {k}x)"
    base, warm, cold = li["runs"]["1x"], li["runs"][f"{k}x/warmup"], li["runs"][f"{k}x/no-warmup"]
    if any(r["top1"] is None for r in (base, warm, cold)):
        failed = [n for n, r in li["runs"].items() if r["top1"] is None]
        return Verdict(claim, None, f"runs without a result: {', '.join(failed)}.")
    nums = (f"test accuracy after {li['epochs']} epochs: base batch {li['base_batch']} {base['top1']:.1f}%; "
            f"{k}x with warmup {warm['top1']:.1f}%, without {cold['top1']:.1f}% (largest training loss "
            f"{warm['max_train_loss']:.2f} vs {cold['max_train_loss']:.2f})")
    matches = warm["top1"] >= base["top1"] - ACC_TOL
    warm_helps = warm["top1"] - cold["top1"] > ACC_TOL
    if matches and warm_helps:
        return Verdict(claim, True, f"{nums}.")
    if matches and not warm_helps:
        return Verdict(claim, None, f"{nums}: the rule holds, but warmup makes no difference beyond {ACC_TOL:g} point "
                                    "here.")
    return Verdict(claim, False, f"{nums}: even with warmup the big batch falls short of the base.")


def verdict_scaling_limit(results: dict[str, Any]) -> Verdict:
    """The largest multiplier at which the warmed-up run is within ACC_TOL of the base (the rule's reach)."""
    li = results["linear"]
    claim = "The linear scaling rule has a limit"
    base = li["runs"]["1x"]["top1"]
    if base is None:
        return Verdict(claim, None, "the base run failed.")
    parts, reach = [], None
    for k in sorted(results["multipliers"]):
        r = li["runs"][f"{k}x/warmup"]
        top1 = r["top1"]
        parts.append(f"{k}x: {'failed' if top1 is None else f'{top1:.1f}%'} in {r['steps']} steps")
        if top1 is not None and top1 >= base - ACC_TOL:
            reach = k
    nums = f"with warmup, base {base:.1f}%; " + "; ".join(parts)
    top = max(results["multipliers"])
    if reach == top:
        return Verdict(claim, None, f"{nums}: it holds up to the largest batch tried ({top}x).")
    if reach is None:
        return Verdict(claim, True, f"{nums}: it fails already at the smallest multiplier tried.")
    return Verdict(claim, True, f"{nums}: it holds up to {reach}x and breaks beyond (with a batch this large the "
                                "whole run is a handful of steps; Goyal et al. saw the same beyond 8k on ImageNet).")


def verdict_bf16(results: dict[str, Any]) -> Verdict:
    claim = "bf16 mixed precision trains like fp32"
    f32, b16 = results["amp"]["fp32"], results["amp"]["bf16"]
    if f32["top1"] is None or b16["top1"] is None:
        return Verdict(claim, None, f"a run failed: {f32.get('error') or b16.get('error')}.")
    speed = ""
    if f32.get("images_per_s") and b16.get("images_per_s"):
        speed = f"; throughput {b16['images_per_s'] / f32['images_per_s']:.2f}x fp32's on this machine"
    nums = f"test accuracy {b16['top1']:.1f}% (bf16) vs {f32['top1']:.1f}% (fp32){speed}"
    gap = f32["top1"] - b16["top1"]
    if abs(gap) <= 2 * ACC_TOL:
        return Verdict(claim, True, f"{nums}: within {2 * ACC_TOL:g} points (one seed each).")
    if gap > 4 * ACC_TOL:
        return Verdict(claim, False, f"{nums}: bf16 is {gap:.1f} points behind.")
    return Verdict(claim, None, f"{nums}: {abs(gap):.1f} points apart, which one seed cannot tell from noise.")


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    return [verdict_ddp(results), verdict_sync_bn(results), verdict_accumulation(results),
            verdict_linear_scaling(results), verdict_scaling_limit(results), verdict_bf16(results)]


# ---------------------------------------------------------------------------------------------------------------------
# plots and report


def plot(results: dict[str, Any], out_dir: Path) -> list[str]:
    from ..plots import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    ax = axes[0]
    li = results["linear"]
    cmap = plt.get_cmap("plasma")
    ks = sorted(results["multipliers"])
    base = li["runs"]["1x"]
    if base["train"]:
        xs, ys = _smooth(base["train"])
        ax.plot(xs, ys, color="k", lw=1, label=f"base batch {li['base_batch']}")
    for i, k in enumerate(ks):
        colour = cmap(0.15 + 0.6 * i / max(1, len(ks) - 1))
        for tag, ls in (("warmup", "-"), ("no-warmup", "--")):
            run = li["runs"][f"{k}x/{tag}"]
            pts = [p for p in run["train"] if math.isfinite(p[2])]
            if pts:
                xs, ys = _smooth(pts)
                ax.plot(xs, ys, color=colour, ls=ls, lw=1.5, label=f"{k}x batch, {tag.replace('-', ' ')}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (log scale)")
    ax.set_title("Linear scaling rule, with and without warmup (ResNet-20)")
    ax.text(0.99, 0.99, "curves: mean of each 1/4 epoch", ha="right", va="top", fontsize=7, transform=ax.transAxes)
    ax.legend(fontsize=7)

    ax = axes[1]
    for key, colour, label in (("fp32", "tab:blue", "fp32"), ("bf16", "tab:orange", "bf16 autocast")):
        run = results["amp"][key]
        if run["train"]:
            ax.plot([p[0] for p in run["train"]], [p[2] for p in run["train"]], color=colour, lw=1.2, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step (batch 64)")
    ax.set_ylabel("training loss (log scale)")
    ax.set_title("bf16 vs fp32 (ResNet-20)")
    ax.legend()

    ax = axes[2]
    floor = 1e-10  # log axes cannot show an exact zero (bit-identical runs)
    eq = results["equivalence"]
    plotted = False
    for key, colour, ls, label in (
        ("ddp_vs_accumulation", "tab:green", "-", "DDP 2x32 vs 1 process, accumulation 2x32"),
        ("ddp_sync_bn_vs_big_batch", "tab:purple", "-", "DDP 2x32 + sync BN vs 1 process, batch 64"),
        ("accumulation_alexnet", "tab:blue", "-", "accumulation 4x16 vs batch 64, AlexNet (no BN)"),
        ("accumulation_resnet20", "tab:brown", "-", "accumulation 4x16 vs batch 64, ResNet-20 (BN)"),
        ("rounding_resnet20", "k", "--", "reference: ResNet-20, 1 vs 2 threads (rounding only)"),
        ("rounding_alexnet", "tab:gray", "--", "reference: AlexNet, 1 vs 2 threads (rounding only)"),
        ("seed_resnet20", "k", ":", "reference: ResNet-20, seed 0 vs seed 1"),
        ("seed_alexnet", "tab:gray", ":", "reference: AlexNet, seed 0 vs seed 1"),
    ):
        r = eq[key]
        if r.get("ok") and r.get("step_diffs"):
            diffs = [max(d, floor) for d in r["step_diffs"]]
            ax.plot(range(1, len(diffs) + 1), diffs, color=colour, ls=ls, marker="." if ls == "-" else None,
                    label=label)
            plotted = True
    if not eq["ddp_vs_accumulation"].get("ok"):
        ax.text(0.5, 0.95, "torchrun failed: see the verdict", ha="center", va="top", transform=ax.transAxes,
                color="tab:red")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"max |parameter difference| (log scale, floor {floor:g})")
    ax.set_title("Same algorithm? Distance between the two runs")
    if plotted:
        ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 0.08))
    return [save(fig, out_dir, "scaling.png")]


def _smooth(points: list, per_epoch_bins: int = 4) -> tuple[list[float], list[float]]:
    """(epoch, loss) averaged over bins of 1/per_epoch_bins epoch: per-step losses at batch 8 are too noisy to read."""
    bins: dict[int, list[tuple[float, float]]] = {}
    for _step, epoch, loss in points:
        bins.setdefault(int(epoch * per_epoch_bins), []).append((epoch, loss))
    xs = [sum(e for e, _ in b) / len(b) for _, b in sorted(bins.items())]
    ys = [sum(v for _, v in b) / len(b) for _, b in sorted(bins.items())]
    return xs, ys


def section(results: dict[str, Any], verdicts: list[Verdict], plots: list[str]) -> str:
    eq = results["equivalence"]
    rows = []
    for key, label in (("ddp_vs_accumulation", "DDP 2 x 32 vs 1 process, accumulation 2 x 32 (ResNet-20)"),
                       ("ddp_sync_bn_vs_big_batch", "DDP 2 x 32 with --sync-bn vs 1 process, batch 64 (ResNet-20)"),
                       ("accumulation_alexnet", "accumulation 4 x 16 vs batch 64 (AlexNet, no BN)"),
                       ("accumulation_resnet20", "accumulation 4 x 16 vs batch 64 (ResNet-20, BN)"),
                       ("rounding_resnet20", "reference: ResNet-20, 1 vs 2 threads (rounding only)"),
                       ("rounding_alexnet", "reference: AlexNet, 1 vs 2 threads (rounding only)"),
                       ("seed_resnet20", "reference: ResNet-20, seed 0 vs seed 1"),
                       ("seed_alexnet", "reference: AlexNet, seed 0 vs seed 1")):
        r = eq[key]
        d = r.get("step_diffs") or []
        if r.get("ok") and d:
            rows.append((label, f"{d[0]:.2g}", f"{d[-1]:.2g}", len(d)))
        else:
            rows.append((label, f"failed: {r.get('error')}", "-", "-"))
    equiv = md_table(rows, ["comparison", "max abs parameter difference after step 1", "after the last step",
                            "steps"], "lrrr")
    li = results["linear"]
    lin_rows = [(name, r["steps"], "-" if r["top1"] is None else f"{r['top1']:.1f}",
                 "-" if r["max_train_loss"] is None else f"{r['max_train_loss']:.2f}", r.get("error") or "")
                for name, r in li["runs"].items()]  # fmt: skip
    lin = md_table(lin_rows, ["run (batch multiple, warmup)", "steps", "test top-1 %", "largest training loss", "note"],
                   "lrrrl")
    amp_rows = [(k, "-" if r["top1"] is None else f"{r['top1']:.1f}", f"{r['images_per_s'] or 0:.0f}",
                 f"{r['cpu_seconds'] or 0:.1f}") for k, r in results["amp"].items()]
    amp = md_table(amp_rows, ["precision", "test top-1 %", "images/s (median)", "CPU s"], "lrrr")
    cmd = eq["ddp_vs_accumulation"].get("command", "")
    return (
        f"All runs through `convcanon.train.train`. Data parallel: `{cmd}`. Parameters compared after every step "
        f"(batch-norm running averages excluded).\n\n{equiv}\n\n"
        f"Linear scaling rule: ResNet-20, base batch {li['base_batch']} at LR {li['lr']}, {li['epochs']} epochs, "
        f"warmup {li['warmup_epochs']:g} epochs where on.\n\n{lin}\n\nbf16 vs fp32:\n\n{amp}\n\n"
        f"{verdict_lines(verdicts)}\n\n" + images(plots, NAME, {"scaling.png": "scaling"})
    )
