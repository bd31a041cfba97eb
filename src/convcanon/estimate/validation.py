"""Published training runs the cost model is calibrated on or validated against, and the canon's cost table.

Each run is data: what was published, where, and the estimate that predicts it. ``role`` says whether a constant of
:mod:`convcanon.estimate.costmodel` was fitted to it ("calibrates X") or it is held out ("validation"). ``calibrate()``
re-derives every fitted constant from its run, so the constants in the source can be checked against their evidence
(tests/test_estimate.py does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import costmodel
from .costmodel import estimate

IMAGENET_EPOCHS = 90


@dataclass(frozen=True)
class PublishedRun:
    key: str
    claim: str  # the published figure, in words
    source: str
    published: float
    unit: str  # "days" | "hours" | "%" | "img/s"
    tolerance: float  # relative (0.3 = +-30%) or, for "%", absolute points
    role: str  # "validation" or "calibrates CONSTANT"
    predict: Callable[[], float]

    def error(self, predicted: float) -> float:
        """Relative error, or for efficiencies the difference in points."""
        return predicted - self.published if self.unit == "%" else predicted / self.published - 1

    def within(self, predicted: float) -> bool:
        return abs(self.error(predicted)) <= self.tolerance


def _goyal(devices: int):
    # Goyal et al. report the time of the training iterations (their Fig. 7 plots time per epoch; 90 of them make the
    # hour), so no evaluation pass or per-epoch recipe overhead is added. 32 images per GPU, 8 GPUs per server.
    return estimate("resnet50", data="imagenet", epochs=IMAGENET_EPOCHS, device="p100", devices=devices,
                    batch_size=32, precision="fp32", val_images=0, epoch_overhead_s=0)


def _horovod(model: str, devices: int = 512):
    # tf_cnn_benchmarks as in Horovod's docs/benchmarks.rst: --batch_size 64 per GPU, synthetic data, fp32;
    # 128 servers x 4 Pascal GPUs (taken as P100 PCIe) on RoCE 25 Gbit/s (the p100-pcie catalog default).
    return estimate(model, data="imagenet", device="p100-pcie", devices=devices, nodes=max(1, devices // 4),
                    batch_size=64, precision="fp32")


def _dle(device: str, devices: int, precision: str, per_gpu: int = 256):
    # NVIDIA DeepLearningExamples PyTorch ResNet-50 v1.5 (configs.yml: 256 per GPU, 112 for FP32 on 16GB V100s):
    # 90 epochs with evaluation and a checkpoint every epoch, so the default recipe overhead applies.
    return estimate("resnet50", data="imagenet", epochs=IMAGENET_EPOCHS, device=device, devices=devices,
                    batch_size=per_gpu, precision=precision)


def _tf_p100(model: str):
    # TensorFlow benchmarks (May 2017, cuDNN 5.1), DGX-1 P100, 1 GPU, synthetic data, batch 64.
    return estimate(model, data="imagenet", device="p100", batch_size=64, precision="fp32")


_DLE = "NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md (pytorch-21.03)"
_TF = "tensorflow/docs_src/performance/benchmarks.md (TensorFlow benchmarks, May 2017)"
_GOYAL = ("Goyal et al. 2017, 'Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour' (arXiv:1706.02677); "
          "29 h baseline: developer.nvidia.com/facebook-trains-imagenet-1-hour")
_HOROVOD = ("Sergeev & Del Balso 2018, 'Horovod' (arXiv:1802.05799); "
            "github.com/horovod/horovod docs/benchmarks.rst: 128 servers x 4 Pascal GPUs, RoCE 25 Gbit/s")

PUBLISHED_RUNS: tuple[PublishedRun, ...] = (
    # ---- calibration ----
    PublishedRun(
        "goyal-8xp100", "ResNet-50, 90 epochs, 8x P100 (one Big Basin server), batch 256: 29 hours", _GOYAL,
        29.0, "hours", 0.02, "calibrates MATMUL_EFFICIENCY[pascal]", lambda: _goyal(8).total_hours,
    ),
    PublishedRun(
        "tf-p100-vgg16-vs-resnet50", "TensorFlow, 1x P100, batch 64: VGG16 154 img/s vs ResNet-50 219 img/s",
        _TF, 154 / 219, "ratio", 0.02, "calibrates WINOGRAD_SPEEDUP",
        lambda: _tf_p100("vgg16").images_per_s / _tf_p100("resnet50").images_per_s,
    ),
    PublishedRun(
        "tf-k80-resnet50", "TensorFlow, 1x K80 (one GK210, GCE), ResNet-50 batch 64: 51.9 img/s", _TF,
        51.9, "img/s", 0.02, "calibrates MATMUL_EFFICIENCY[kepler] (and fermi)",
        lambda: estimate("resnet50", data="imagenet", device="k80", batch_size=64, precision="fp32").images_per_s,
    ),
    PublishedRun(
        "dle-1xv100-amp-throughput", "DLE ResNet-50 v1.5, 1x V100 16GB, AMP, batch 256: 1200 img/s", _DLE,
        1200.0, "img/s", 0.02, "calibrates MATMUL_EFFICIENCY[volta/ampere/hopper]",
        lambda: _dle("v100-16gb", 1, "fp16").images_per_s,
    ),
    PublishedRun(
        "dle-1xa100-tf32-throughput", "DLE ResNet-50 v1.5, 1x A100 80GB, TF32, batch 256: 938 img/s", _DLE,
        938.0, "img/s", 0.02, "calibrates PRECISION_EFFICIENCY[tf32]",
        lambda: _dle("a100", 1, "tf32").images_per_s,
    ),
    PublishedRun(
        "dle-8xv100-amp", "DLE ResNet-50 v1.5, 8x V100 16GB, AMP, 90 epochs: ~5 hours", _DLE,
        5.0, "hours", 0.02, "calibrates EPOCH_OVERHEAD_S[files]", lambda: _dle("v100-16gb", 8, "fp16").total_hours,
    ),
    PublishedRun(
        "horovod-resnet101-512", "Horovod, ResNet-101 on 512 Pascal GPUs: 90% scaling efficiency", _HOROVOD,
        90.0, "%", 1.0, "calibrates OVERLAP_FRACTION", lambda: 100 * _horovod("resnet101").scaling_efficiency,
    ),
    # ---- held-out validation ----
    # What each one tests. AlexNet: the Fermi efficiency borrowed from Kepler, and the two-tower model parallelism.
    PublishedRun(
        "alexnet-2xgtx580",
        "AlexNet, ~90 epochs of 1.2M images on 2x GTX 580 3GB, one tower per GPU: five to six days",
        "Krizhevsky, Sutskever, Hinton 2012, 'ImageNet Classification with Deep Convolutional Neural Networks', "
        "sections 3.2 and 5", 5.5, "days", 0.30, "validation",
        lambda: estimate("alexnet", data="imagenet", images=1_200_000, val_images=0, epochs=IMAGENET_EPOCHS,
                         device="gtx580", devices=2, parallel="towers", batch_size=128, precision="fp32").total_days,
    ),
    # DLE A100 AMP: the Volta efficiency on Ampere and in bf16/fp16's peak, the recipe overhead, NVLink all-reduce.
    PublishedRun(
        "dle-1xa100-amp", "DLE ResNet-50 v1.5, 1x A100 80GB, AMP, 90 epochs: ~14 hours", _DLE,
        14.0, "hours", 0.30, "validation", lambda: _dle("a100", 1, "fp16").total_hours,
    ),
    PublishedRun(
        "dle-8xa100-amp", "DLE ResNet-50 v1.5, 8x A100 80GB, AMP, 90 epochs: ~3 hours", _DLE,
        3.0, "hours", 0.30, "validation", lambda: _dle("a100", 8, "fp16").total_hours,
    ),
    # DLE 1x V100 AMP: its throughput calibrated the efficiency, so this checks the epoch (evaluation and overhead).
    PublishedRun(
        "dle-1xv100-amp", "DLE ResNet-50 v1.5, 1x V100 16GB, AMP, 90 epochs: ~29 hours", _DLE,
        29.0, "hours", 0.30, "validation", lambda: _dle("v100-16gb", 1, "fp16").total_hours,
    ),
    # DLE 1x V100 FP32: that fp32 (with Winograd) and fp16 share one efficiency.
    PublishedRun(
        "dle-1xv100-fp32", "DLE ResNet-50 v1.5, 1x V100 16GB, FP32, batch 112, 90 epochs: ~92 hours", _DLE,
        92.0, "hours", 0.30, "validation", lambda: _dle("v100-16gb", 1, "fp32", per_gpu=112).total_hours,
    ),
    # Goyal 256: the per-GPU speed is their own 8-GPU baseline's, so these check the communication model.
    PublishedRun(
        "goyal-256xp100", "ResNet-50, 90 epochs, 256x P100, batch 8192: about 1 hour", _GOYAL,
        1.0, "hours", 0.30, "validation", lambda: _goyal(256).total_hours,
    ),
    PublishedRun(
        "goyal-256xp100-scaling", "ResNet-50, 8 -> 256 P100s: ~90% scaling efficiency", _GOYAL,
        90.0, "%", 10.0, "validation",
        lambda: 100 * _goyal(256).images_per_s / (32 * _goyal(8).images_per_s),
    ),
    # Horovod VGG-16: the overlap fitted on ResNet-101 applied to 3x the gradient and a Winograd-short step.
    PublishedRun(
        "horovod-vgg16-512", "Horovod, VGG-16 on 512 Pascal GPUs: 68% scaling efficiency", _HOROVOD,
        68.0, "%", 10.0, "validation", lambda: 100 * _horovod("vgg16").scaling_efficiency,
    ),
)


def validation_table() -> list[dict[str, object]]:
    """Every published run: the figure, the prediction, the error and whether it is within its tolerance."""
    rows = []
    for run in PUBLISHED_RUNS:
        predicted = run.predict()
        rows.append({
            "run": run.key, "role": run.role, "published": run.published, "predicted": round(predicted, 3),
            "unit": run.unit, "error": round(run.error(predicted), 3), "tolerance": run.tolerance,
            "within": run.within(predicted), "claim": run.claim, "source": run.source,
        })  # fmt: skip
    return rows


# ---- calibration ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _patched(**constants: object) -> Iterator[None]:
    """Temporarily set cost-model constants (dict entries as ``NAME__key``)."""
    saved = []
    try:
        for name, value in constants.items():
            attr, _, key = name.partition("__")
            holder = getattr(costmodel, attr)
            if key:
                saved.append((holder, key, holder[key]))
                holder[key] = value
            else:
                saved.append((costmodel, attr, getattr(costmodel, attr)))
                setattr(costmodel, attr, value)
        yield
    finally:
        for holder, key, value in reversed(saved):
            if isinstance(holder, dict):
                holder[key] = value
            else:
                setattr(holder, key, value)


def _solve(run_key: str, lo: float, hi: float, make: Callable[[float], dict[str, object]]) -> float:
    """The constant value in [lo, hi] that makes the run's prediction equal its published figure (bisection)."""
    run = next(r for r in PUBLISHED_RUNS if r.key == run_key)

    def gap(x: float) -> float:
        with _patched(**make(x)):
            return run.predict() - run.published

    g_lo = gap(lo)
    for _ in range(40):
        mid = (lo + hi) / 2
        if (gap(mid) > 0) == (g_lo > 0):
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def calibrate() -> dict[str, float]:
    """Re-derive every fitted constant from its published run, in dependency order, with the others as in the source.

    The Pascal efficiency and the Winograd speed-up depend on each other (ResNet-50 has Winograd-eligible layers), so
    they are iterated to a fixed point; the rest follow.
    """
    arch = ("pascal",)
    modern = ("volta", "ampere", "hopper")
    out: dict[str, float] = {"WINOGRAD_SPEEDUP": costmodel.WINOGRAD_SPEEDUP}
    for _ in range(4):
        with _patched(WINOGRAD_SPEEDUP=out["WINOGRAD_SPEEDUP"]):
            out["MATMUL_EFFICIENCY[pascal]"] = _solve(
                "goyal-8xp100", 0.05, 1.0, lambda e: {f"MATMUL_EFFICIENCY__{a}": e for a in arch})
        with _patched(MATMUL_EFFICIENCY__pascal=out["MATMUL_EFFICIENCY[pascal]"]):
            out["WINOGRAD_SPEEDUP"] = _solve(
                "tf-p100-vgg16-vs-resnet50", 1.0, 8.0, lambda w: {"WINOGRAD_SPEEDUP": w})
    fixed = {"MATMUL_EFFICIENCY__pascal": out["MATMUL_EFFICIENCY[pascal]"], "WINOGRAD_SPEEDUP": out["WINOGRAD_SPEEDUP"]}
    with _patched(**fixed):
        out["MATMUL_EFFICIENCY[kepler]"] = _solve(
            "tf-k80-resnet50", 0.02, 1.0, lambda e: {"MATMUL_EFFICIENCY__kepler": e})
        out["MATMUL_EFFICIENCY[volta]"] = _solve(
            "dle-1xv100-amp-throughput", 0.05, 1.0, lambda e: {f"MATMUL_EFFICIENCY__{a}": e for a in modern})
        modern_fixed = {f"MATMUL_EFFICIENCY__{a}": out["MATMUL_EFFICIENCY[volta]"] for a in modern}
        with _patched(**modern_fixed):
            out["PRECISION_EFFICIENCY[tf32]"] = _solve(
                "dle-1xa100-tf32-throughput", 0.05, 2.0, lambda r: {"PRECISION_EFFICIENCY__tf32": r})
            out["EPOCH_OVERHEAD_S[files]"] = _solve(
                "dle-8xv100-amp", 0.0, 600.0, lambda s: {"EPOCH_OVERHEAD_S__files": s})
        out["OVERLAP_FRACTION"] = _solve("horovod-resnet101-512", 0.0, 1.0, lambda f: {"OVERLAP_FRACTION": f})
    return out


# ---- the canon's cost ----------------------------------------------------------------------------------------------

CANON_MODELS = ("alexnet", "vgg16", "googlenet", "resnet50")
GENERATIONS = ("gtx580", "k80", "p100", "v100", "a100", "h100", "h200")


def best_precision(device: str) -> str:
    """The precision a practitioner would pick: bf16 where it exists, then fp16 on tensor cores, else fp32."""
    from .catalog import get_device

    dev = get_device(device)
    if dev.peak("bf16"):
        return "bf16"
    if dev.peak("fp16") and dev.arch not in ("pascal",):  # Pascal's fp16 lacks tensor cores: fp32 was the practice
        return "fp16"
    return "fp32"


def canon_cost_table(devices: tuple[str, ...] = GENERATIONS, models: tuple[str, ...] = CANON_MODELS,
                     epochs: float = IMAGENET_EPOCHS, count: int = 1, batch_per_device: int = 128,
                     precision: str | None = None) -> list[dict[str, object]]:
    """What each canon model costs for ``epochs`` ImageNet epochs on ``count`` devices of each generation.

    One row per (model, device): precision (the generation's usual one unless given), images/s, days, whether the
    batch fits in memory (and the accumulation steps if not).
    """
    rows = []
    for model in models:
        for device in devices:
            prec = precision or best_precision(device)
            e = estimate(model, data="imagenet", epochs=epochs, device=device, devices=count,
                         batch_size=batch_per_device, precision=prec)
            rows.append({
                "model": model, "device": device, "devices": count, "precision": prec,
                "images_per_s": round(e.images_per_s, 1), "hours": round(e.total_hours, 2),
                "days": round(e.total_days, 2), "fits": e.memory.fits,
                "accumulation_steps": e.memory.accumulation_steps, "memory_gib": round(e.memory.total_gib, 1),
            })  # fmt: skip
    return rows
