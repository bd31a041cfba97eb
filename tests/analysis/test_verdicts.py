"""Verdict logic on hand-made results: each claim holds, does not hold, or is inconclusive from the numbers alone."""

import pytest

from convcanon.analysis.experiments import canon, degradation, gradient_flow, ideas, identity, pitfalls, scaling
from convcanon.analysis.experiments.core import Verdict, separated

# ---- the noise rule every verdict uses ------------------------------------------------------------------------------


def test_separated_against_seed_spread():
    assert separated([10, 11, 12], [1, 2, 3], floor=1) is True  # gap 9, twice the std 2: an effect
    assert separated([1, 2, 3], [10, 11, 12], floor=1) is False  # the same effect the other way
    assert separated([5, 1, 9], [4, 5, 6], floor=1) is None  # gap 0, std 4: noise
    assert separated([2.0], [1.5], floor=1) is None  # one seed each: only the floor counts
    assert separated([3.0], [1.5], floor=1) is True


# ---- degradation ----------------------------------------------------------------------------------------------------


def _deg(plain20, plain56, res20, res56, params=(269_722, 853_018)):
    rows = []
    for depth, p, r, n in ((20, plain20, res20, params[0]), (56, plain56, res56, params[1])):
        rows.append({"model": f"plain{depth}", "depth": depth, "residual": False, "params": n, "train_error": p,
                     "test_error": p, "seeds": list(range(len(p)))})
        rows.append({"model": f"resnet{depth}", "depth": depth, "residual": True, "params": n, "train_error": r,
                     "test_error": r, "seeds": list(range(len(r)))})
    return {"depths": [20, 56], "steps": 200, "seeds": [0, 1, 2], "batch_size": 64, "lr": 0.05, "rows": rows}


def test_degradation_holds():
    res = _deg([2.0, 2.5, 3.0], [70.0, 72.0, 74.0], [0.8, 0.9, 1.0], [1.0, 1.1, 1.2])
    v = degradation.verdicts(res)
    assert [x.holds for x in v] == [True, True]
    assert "72.0 ± 2.0%" in v[0].text  # the numbers are in the sentence


def test_degradation_does_not_hold_when_deeper_plain_is_better():
    res = _deg([30.0, 31.0, 32.0], [5.0, 6.0, 7.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    assert degradation.verdict_degradation(res).holds is False


def test_degradation_inconclusive_inside_seed_spread():
    # Plain-56 is 3 points worse on average, but the seeds span 20 points: not an effect.
    res = _deg([2.0, 12.0, 22.0], [5.0, 15.0, 25.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    v = degradation.verdict_degradation(res)
    assert v.holds is None and "seed spread" in v.text


def test_residual_depth_fails_when_deep_resnet_degrades():
    res = _deg([2.0, 2.0, 2.0], [70.0, 70.0, 70.0], [1.0, 1.0, 1.0], [20.0, 21.0, 22.0])
    assert degradation.verdict_residual_depth(res).holds is False


# ---- gradient flow --------------------------------------------------------------------------------------------------


def _gf(plain_ratio, res_ratio, plain_lo=0.5, res_lo=0.3):
    rows = []
    for depth, p, r in ((20, plain_lo, res_lo), (110, plain_ratio, res_ratio)):
        rows.append({"model": f"plain{depth}", "depth": depth, "residual": False, "batch_norm": True,
                     "log_ratio_init": p, "log_ratio_trained": p, "train_error": 5.0, "init": [], "trained": []})
        rows.append({"model": f"resnet{depth}", "depth": depth, "residual": True, "batch_norm": True,
                     "log_ratio_init": r, "log_ratio_trained": r, "train_error": 1.0, "init": [], "trained": []})
    return {"depths": [20, 110], "steps": 60, "rows": rows}


def test_gradient_flow_verdicts():
    assert gradient_flow.verdict_gradient_flow(_gf(6.7, 1.1)).holds is True  # explodes without the shortcut
    assert gradient_flow.verdict_gradient_flow(_gf(-5.0, 0.2)).holds is True  # or vanishes: both are drift
    assert gradient_flow.verdict_gradient_flow(_gf(0.5, 3.0)).holds is False
    assert gradient_flow.verdict_gradient_flow(_gf(1.2, 0.9)).holds is None
    assert gradient_flow.verdict_drift_grows_with_depth(_gf(6.7, 1.1)).holds is True
    missing = _gf(6.7, None)
    assert gradient_flow.verdict_gradient_flow(missing).holds is None  # a diverged run is no evidence


def test_log_ratio():
    assert gradient_flow.log_ratio([1.0, 100.0, 100.0, 100.0, 1.0, 1.0, 1.0]) == pytest.approx(2.0)
    assert gradient_flow.log_ratio([1.0, float("nan"), 1, 1, 1, 1, 1]) is None
    assert gradient_flow.log_ratio([1.0, 2.0]) is None  # too few layers


# ---- identity -------------------------------------------------------------------------------------------------------


def _id(conv_lo, conv_hi, res_lo, res_hi, zero_init=0.0):
    rows = []
    for k, c, r in ((4, conv_lo, res_lo), (16, conv_hi, res_hi)):
        rows.append({"variant": "conventional", "blocks": k, "initial": 1.3, "final": c, "losses": [1.3, c],
                     "steps_to_conventional_final": 1})
        rows.append({"variant": "residual", "blocks": k, "initial": 4.0, "final": r, "losses": [4.0, r],
                     "steps_to_conventional_final": 1})
        rows.append({"variant": "residual-zero-init", "blocks": k, "initial": zero_init, "final": zero_init,
                     "losses": [zero_init], "steps_to_conventional_final": 0})
    return {"depths": [4, 16], "steps": 200, "rows": rows}


def test_identity_verdicts():
    good = _id(0.004, 0.15, 0.009, 0.02)
    assert [v.holds for v in identity.verdicts(good)] == [True, True, True]
    bad = _id(0.001, 0.002, 0.1, 0.2, zero_init=0.5)
    assert [v.holds for v in identity.verdicts(bad)] == [False, None, False]
    close = _id(0.01, 0.05, 0.01, 0.03)
    assert identity.verdict_identity(close).holds is None


# ---- ideas ----------------------------------------------------------------------------------------------------------


def _ideas(relu=(40, 45, 50), tanh=(200, 220, 240), gap_off=(0.3, 0.32, 0.34), gap_on=(0.1, 0.12, 0.14),
           bn_steps=(30, 35, 40), nobn_steps=(150, 160, 170), lr_bn=1.0, lr_nobn=0.1, small_params=(1000, 2000)):
    def prof(model, **o):
        return {"model": model, "options": o, "params": 0, "macs": 0, "input": "3x224x224"}

    profiles = {
        "kernels": [{**prof("vgg16", kernels="stack"), "params": 138_000_000, "macs": 15_000_000_000},
                    {**prof("vgg16", kernels="large"), "params": 145_000_000, "macs": 15_500_000_000}],
        "reductions": [{**prof("googlenet", aux_heads=False, reductions=True), "params": 7_000_000, "macs": 1.6e9},
                       {**prof("googlenet", aux_heads=False, reductions=False), "params": 25_000_000, "macs": 4.4e9}],
        "head": [{**prof("vgg16", head="fc"), "params": 138_000_000}, {**prof("vgg16", head="avgpool"),
                                                                       "params": 15_000_000}],
    }
    err = [2.0, 2.2, 2.4]
    return {
        "seeds": [0, 1, 2],
        "settings": {"relu": {"max_steps": 400}, "bn_speed": {"steps": 200}, "bn_sweep": {"steps": 60}},
        "relu": {"relu": {"steps_to_target": list(map(float, relu)), "reached": [True] * 3, "curves": [],
                          "best_lr": 0.01},
                 "tanh": {"steps_to_target": list(map(float, tanh)), "reached": [True] * 3, "curves": [],
                          "best_lr": 0.03}},
        "dropout": {"0.0": {"loss_gap": list(gap_off), "error_gap": [2, 2, 2], "test_error": err, "train_error": err,
                            "train_loss": [0, 0, 0], "test_loss": [0, 0, 0]},
                    "0.5": {"loss_gap": list(gap_on), "error_gap": [1, 1, 1], "test_error": err, "train_error": err,
                            "train_loss": [0, 0, 0], "test_loss": [0, 0, 0]}},
        "small": {"kernels": {"stack": {"params": small_params[0], "macs": 1, "test_error": err, "train_error": err},
                              "large": {"params": small_params[1], "macs": 1, "test_error": err, "train_error": err}},
                  "head": {"fc": {"params": 150_000, "macs": 1, "test_error": err, "train_error": err},
                           "avgpool": {"params": 20_000, "macs": 1, "test_error": err, "train_error": err}}},
        "bn_speed": {"bn": {"steps_to_target": list(map(float, bn_steps)), "train_error": err, "curves": []},
                     "nobn": {"steps_to_target": list(map(float, nobn_steps)), "train_error": err, "curves": []}},
        "bn_sweep": {"bn": {"points": [], "max_stable_lr": lr_bn}, "nobn": {"points": [], "max_stable_lr": lr_nobn}},
        "profiles": profiles,
    }  # fmt: skip


def test_ideas_all_hold():
    assert [v.holds for v in ideas.verdicts(_ideas())] == [True] * 6


def test_ideas_do_not_hold():
    res = _ideas(relu=(200, 220, 240), tanh=(40, 45, 50), gap_off=(0.1, 0.12, 0.14), gap_on=(0.3, 0.32, 0.34),
                 bn_steps=(150, 160, 170), nobn_steps=(30, 35, 40), lr_bn=0.1, lr_nobn=1.0)
    v = {x.claim.split()[0]: x.holds for x in ideas.verdicts(res)}
    assert v["Dropout"] is False and v["Batch"] is False
    # 8x8 digits cannot test ReLU vs tanh as the paper did: no weak verdict, a pointer to the CIFAR protocol
    relu = ideas.verdict_relu(res)
    assert relu.holds is None and "tanh is faster here" in relu.text and "alexnet-fig1 --data cifar10" in relu.text


def test_ideas_inconclusive_inside_noise():
    res = _ideas(relu=(40, 200, 120), tanh=(50, 210, 130), gap_off=(0.1, 0.3, 0.5), gap_on=(0.12, 0.28, 0.45),
                 bn_steps=(30, 160, 90), nobn_steps=(40, 170, 95), lr_bn=1.0, lr_nobn=1.0)
    assert ideas.verdict_relu(res).holds is None
    assert ideas.verdict_dropout(res).holds is None
    assert ideas.verdict_batchnorm(res).holds is None


# ---- scaling --------------------------------------------------------------------------------------------------------


def _scaling(ddp_diffs=(0.0, 0.0), ddp_ok=True, acc_diffs=(3e-8, 6e-8), sync_diffs=(1.2e-7, 0.08),
             seed_diffs=(0.7, 0.8), rounding_alexnet=(3e-8, 7e-8), rounding_resnet20=(3e-5, 0.05),
             base=98.0, warm=98.5, cold=86.0, warm32=20.0, bf16=97.0, fp32=97.5):
    def eq(diffs, ok=True):
        return {"ok": ok, "step_diffs": list(diffs), "error": None if ok else "exit code 1", "command": "torchrun ...",
                "single": "accumulation 2 x 32", "a": {"top1": 90.0}, "b": {"top1": 89.0}}

    def run(top1, steps=100, max_loss=2.5):
        return {"ok": top1 is not None, "top1": top1, "steps": steps, "max_train_loss": max_loss, "train": [],
                "eval": [], "images_per_s": 100.0, "error": None, "cpu_seconds": 1.0}

    return {
        "equivalence": {"ddp_vs_accumulation": eq(ddp_diffs, ddp_ok), "ddp_sync_bn_vs_big_batch": eq(sync_diffs),
                        "accumulation_alexnet": eq(acc_diffs), "accumulation_resnet20": eq((0.02, 0.05)),
                        "rounding_alexnet": eq(rounding_alexnet), "rounding_resnet20": eq(rounding_resnet20),
                        "seed_alexnet": eq(seed_diffs), "seed_resnet20": eq(seed_diffs)},
        "linear": {"base_batch": 8, "lr": 0.05, "epochs": 10, "warmup_epochs": 2.0,
                   "runs": {"1x": run(base), "8x/no-warmup": run(cold, max_loss=12.0), "8x/warmup": run(warm),
                            "32x/no-warmup": run(15.0), "32x/warmup": run(warm32)}},
        "amp": {"fp32": run(fp32), "bf16": run(bf16)},
        "multipliers": [8, 32],
        "settings": {"accum": {"accum_steps": 4, "micro_batch": 16, "epochs": 3, "exact_steps": 20}},
    }  # fmt: skip


def test_scaling_verdicts_hold():
    v = scaling.verdicts(_scaling())
    assert [x.holds for x in v] == [True, True, True, True, True, True]
    assert "bit-identical" in v[0].text


def test_scaling_torchrun_failure_is_inconclusive_not_a_crash():
    v = scaling.verdict_ddp(_scaling(ddp_ok=False))
    assert v.holds is None and "torchrun failed" in v.text


def test_scaling_does_not_hold():
    res = _scaling(ddp_diffs=(0.01, 0.5), acc_diffs=(1e-3, 0.9), sync_diffs=(1e-7, 3.0), warm=80.0, bf16=80.0)
    v = {x.claim: x.holds for x in scaling.verdicts(res)}
    assert v["Data-parallel training on 2 processes is the same algorithm as one process"] is False
    assert v["With synchronized batch norm, 2 processes x 32 equal one batch of 64"] is False
    assert v["Gradient accumulation equals one big batch (for a net without batch norm)"] is False
    assert v["The linear scaling rule needs warmup (batch 8x the base, LR 8x)"] is False
    assert v["bf16 mixed precision trains like fp32"] is False


def test_scaling_growth_judged_against_the_rounding_reference():
    # Where rounding alone does not grow (AlexNet: 7e-8 after N steps), a comparison that grows is another algorithm.
    assert scaling.same_run(_scaling(acc_diffs=(3e-8, 0.003)), "accumulation_alexnet")[0] is False
    assert scaling.same_run(_scaling(acc_diffs=(3e-8, 6e-8)), "accumulation_alexnet")[0] is True
    # Where rounding alone grows to 0.05 (ResNet-20), 0.08 is rounding; 2.0 is not.
    assert scaling.same_run(_scaling(sync_diffs=(1e-7, 0.08)), "ddp_sync_bn_vs_big_batch")[0] is True
    assert scaling.same_run(_scaling(sync_diffs=(1e-7, 2.0)), "ddp_sync_bn_vs_big_batch")[0] is False
    # Beyond rounding at step 1: different from the start, whatever happens later.
    assert scaling.same_run(_scaling(sync_diffs=(1e-3, 0.01)), "ddp_sync_bn_vs_big_batch")[0] is False


def test_linear_scaling_inconclusive_when_warmup_makes_no_difference():
    assert scaling.verdict_linear_scaling(_scaling(cold=98.2)).holds is None


# ---- canon and pitfalls ---------------------------------------------------------------------------------------------


def _canon(small_errors=None):
    imagenet = [{**q, "params": q["tv_params"], "gmacs": q["tv_gmacs"], "depth": 1, "input": "3x224x224"}
                for q in canon.QUOTED]
    small_errors = small_errors or {"alexnet_cifar": [10.0], "vgg16_bn_cifar": [8.0], "googlenet_cifar": [5.0],
                                    "resnet20": [1.5]}
    params = {"alexnet_cifar": 1_400_000, "vgg16_bn_cifar": 15_000_000, "googlenet_cifar": 370_000,
              "resnet20": 270_000}
    small = [{"model": m, "params": params[m], "test_error": e, "train_error": e} for m, e in small_errors.items()]
    return {"imagenet": imagenet, "resnet50_v2": canon.RESNET50_V2, "small": small, "steps": 150}


def test_canon_verdicts():
    v = canon.verdicts(_canon())
    assert [x.holds for x in v] == [True, True, True]
    wrong = _canon()
    wrong["imagenet"][0]["params"] += 1
    assert canon.verdict_measured_matches_published(wrong).holds is False
    behind = _canon({"alexnet_cifar": [10.0], "resnet20": [15.0]})
    assert canon.verdict_small(behind).holds is False


def _pitfalls(ddp_ok=True, plain56=(70.0, 72.0, 74.0)):
    c = _canon()
    d = _deg([2.0, 2.5, 3.0], list(plain56), [0.8, 0.9, 1.0], [1.0, 1.1, 1.2])
    s = _scaling(ddp_ok=ddp_ok)
    return pitfalls.assemble({}, {}, {"canon": c, "degradation": d, "scaling": s})


def test_pitfalls_hold_from_the_evidence():
    v = pitfalls.verdicts(_pitfalls())
    assert [x.holds for x in v] == [True] * 5
    assert "GoogLeNet" in v[0].text and "quoted" in v[0].text


def test_pitfalls_follow_the_numbers():
    v = pitfalls.verdicts(_pitfalls(ddp_ok=False, plain56=(1.5, 2.0, 2.9)))
    assert v[1].holds is None  # plain-56 as good as plain-20: "deeper is worse" not shown
    assert v[2].holds is None  # and the shortcut made no difference at equal parameters
    assert v[3].holds is None and "failed" in v[3].text  # no data-parallel run, no verdict


def test_verdict_labels():
    assert Verdict("c", True, "t").label == "holds"
    assert Verdict("c", False, "t").label == "does not hold"
    assert Verdict("c", None, "t").as_dict()["label"] == "inconclusive"
