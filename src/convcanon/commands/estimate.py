"""``convcanon estimate``: what a training run will cost, whether it fits and how it scales, checked against published
runs."""

from __future__ import annotations

import argparse
import dataclasses

from ..tables import emit

_EPILOG = """examples:
  convcanon estimate --model resnet50 --data imagenet --epochs 90 --device a100 --devices 8 --amp bf16
  convcanon estimate --model resnet50 --device p100 --devices 1,8,32,256 --batch-size 128     a scaling table
  convcanon estimate --model alexnet --device gtx580 --devices 2 --parallel towers --batch-size 128   the 2012 run
  convcanon estimate --model vgg16 --device p100-pcie --devices 512 --network-gbit 25    Horovod's cluster
  convcanon estimate --model resnet20 --data digits --measure      time this machine: the main job (train's defaults)
  convcanon estimate --model resnet50 --images 250000 --device h100 --devices 16 --nodes 2 --global-batch 4096
  convcanon estimate --model resnet18 --data folder:~/photos --image-size 160 --measure   your own tree, timed here
  convcanon estimate --canon                      the canon's cost for 90 ImageNet epochs on each GPU generation
  convcanon estimate --validate                   predictions for the published runs vs their figures
  convcanon estimate --catalog                    the devices and their datasheet figures

The model: training FLOPs (3x the forward, measured with torch.utils.flop_counter at the run's image size) at a
calibrated share of the device's peak, plus memory traffic for the element-wise work, plus a ring all-reduce of the
gradients partly hidden behind the backward pass. The flags shared with train mean what they mean there:
--batch-size is per device (default 64, train's; --global-batch gives the images per step instead), --amp is the
precision (auto = bf16 where the device has it natively, else fp32, as train resolves it). --measure times the step
`convcanon train` runs on this machine, with train's engine and defaults, and predicts that run. Which published run
calibrated which constant: `--validate`, and the docstring of convcanon.estimate.costmodel.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..train.config import TrainConfig, add_shared_flags

    p = subparsers.add_parser(
        "estimate", help="predict wall-clock, images/s, scaling and memory of a training run",
        description="Predict a training run: time per epoch and in total, images/s, scaling efficiency against one "
        "device, and memory per device (weights, gradients, optimizer state, activations) with a verdict and, when "
        "it does not fit, the accumulation steps or pipeline stages that make it fit.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add_shared_flags(p, ("model", "model_options", "data", "image_size", "batch_size", "amp", "device",
                         "channels_last", "compile", "optimizer", "model_ema", "model_ema_steps"), _overrides())
    p.add_argument("--images", type=int, help="training-set size of your own data (ImageNet-style files)")
    p.add_argument("--val-images", type=int, help="images evaluated after each epoch (default: the data set's)")
    p.add_argument("--epochs", type=float, help=f"epochs, fractions allowed (default: 90, ImageNet's recipe; with "
                   f"--measure, train's {TrainConfig.epochs})")
    p.add_argument("--devices", default="1", help="device count, or a comma list for a scaling table (e.g. 1,8,64)")
    p.add_argument("--nodes", type=int, help="machines (default: devices / the device's usual devices per node)")
    p.add_argument("--global-batch", type=int, help="images per optimizer step over all devices, instead of "
                   "--batch-size (split evenly over the data-parallel devices)")
    p.add_argument("--parallel", default="data", help="data (default) or towers (the 2012 AlexNet's 2-GPU split)")
    p.add_argument("--network-gbit", type=float, help="inter-node bandwidth per node in Gbit/s (default: catalog)")
    p.add_argument("--link-gbs", type=float, help="intra-node bandwidth per device in GB/s (default: catalog)")
    p.add_argument("--epoch-overhead", type=float, help="seconds per epoch outside the steps and evaluation "
                   "(default: by data; with --measure, a checkpoint write timed here)")
    p.add_argument("--measure", action="store_true", help="time the step `convcanon train` runs here first (its "
                   "engine, evaluation and checkpoint write too) and predict that run on this machine (one device; "
                   "--device picks the local one)")
    p.add_argument("--measure-seconds", type=float, default=3.0, help="how long to time steps (default 3)")
    p.add_argument("--canon", action="store_true", help="the canon's cost table: alexnet, vgg16, googlenet, "
                   "resnet50 for --epochs ImageNet epochs on --devices devices of each generation")
    p.add_argument("--validate", action="store_true", help="predictions for the published runs vs their figures")
    p.add_argument("--catalog", action="store_true", help="list the device catalog")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _overrides() -> dict:
    """How estimate takes train's flags (``train.config.FlagOverride``)."""
    from ..train.config import FlagOverride

    measure_only = "estimate: for --measure's timed step"
    return {
        "model": FlagOverride(default=None, default_text="none: required unless --canon, --validate or --catalog"),
        "data": FlagOverride(default=None, default_text="imagenet, or none with --images",
                             note="estimate: a data set of its catalog (imagenet, cifar10, cifar100, mnist, "
                                  "fashion-mnist, digits; a standard set's own folder, e.g. cifar10:PATH, is its "
                                  "entry), or train's synthetic:C:S:K or ImageFolder tree (folder:PATH or PATH: "
                                  "listed, not decoded, for its image counts, classes and train's side)"),
        "image_size": FlagOverride(default_text="the data set's, or the model's own"),
        "batch_size": FlagOverride(default=None, default_text="64, train's"),
        "amp": FlagOverride(extra_choices=("fp32", "tf32"), aliases=("--precision",),
                            note="estimate also takes fp32 (= off) and tf32, which only the estimator models; "
                                 "--precision is the same flag"),
        "device": FlagOverride(default=None, default_text="none: give a catalog device, or --measure",
                               note="estimate: a catalog device to predict for (--catalog lists them); with --measure, "
                                    "the local device to time"),
        "channels_last": FlagOverride(note=measure_only),
        "compile": FlagOverride(note=measure_only),
        "optimizer": FlagOverride(note="estimate: sets the optimizer's state in memory and its pass over the weights"),
        "model_ema": FlagOverride(note="estimate: counts the average's update, copy and evaluation"),
    }


def _device_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"--devices must be a positive integer or a comma list of them (e.g. 8 or 1,8,64), "
                         f"got {text!r}")
    return counts


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days ({seconds / 3600:,.0f} h)"


def _rows(e) -> list[dict[str, object]]:
    m = e.memory
    util = f" ({e.utilization:.0%} of peak)" if e.utilization is not None else ""
    rows = [
        ("model", f"{e.model} at {e.input_size}, {e.gflops_per_image:.3g} GFLOPs per training image"),
        ("run", f"{e.epochs:g} epoch{'' if e.epochs == 1 else 's'} of {e.data} ({e.train_images:,} images), "
                f"{e.optimizer}"),
        ("devices", f"{e.devices} x {e.device} on {e.nodes} node(s), {e.precision}, {e.parallel} parallel"),
        ("batch", f"{e.global_batch:,} global, {e.per_device_batch:,} per device"),
        ("throughput", f"{e.images_per_s:,.1f} images/s, {e.achieved_tflops:.3g} TFLOP/s per device{util}"),
        ("step", f"{e.step_s * 1e3:,.1f} ms: compute {e.compute_s * 1e3:,.1f} ms + exposed communication "
                 f"{e.exposed_comm_s * 1e3:,.1f} ms (of {e.allreduce_s * 1e3:,.1f} ms)"
                 + (f" + weight average {e.ema_s * 1e3:,.2f} ms" if e.model_ema else "")),
        ("scaling efficiency", f"{e.scaling_efficiency:.1%} of {e.devices} x one device"),
        ("epoch", f"{_duration(e.epoch_s)} (evaluation {_duration(e.eval_s)}"
                  f"{' of the model and its weight average' if e.model_ema else ''}, overhead "
                  f"{_duration(e.overhead_s)})"),
        *([("start-up", f"{_duration(e.startup_s)} once (warm-up: compilation, first allocations)")]
          if e.startup_s else []),
        ("total", _duration(e.total_s)),
        ("memory per device", f"weights {m.weights_gib:.2f} + gradients {m.gradients_gib:.2f} + optimizer "
                              f"{m.optimizer_gib:.2f}{f' + weight average {m.ema_gib:.2f}' if e.model_ema else ''} "
                              f"+ activations {m.activations_gib:.2f} + reserved "
                              f"{m.reserved_gib:.2f} = {m.total_gib:.2f} GiB of {m.device_gib:.1f}"),
        ("verdict", m.verdict),
    ]  # fmt: skip
    rows += [("note", note) for note in e.notes]
    return [{"quantity": k, "value": v} for k, v in rows]


def _scaling_row(e) -> dict[str, object]:
    return {
        "devices": e.devices, "nodes": e.nodes, "global_batch": e.global_batch,
        "images_per_s": round(e.images_per_s, 1), "step_ms": round(e.step_s * 1e3, 1),
        "exposed_comm_ms": round(e.exposed_comm_s * 1e3, 1),
        "scaling_efficiency": round(e.scaling_efficiency, 3), "epoch_min": round(e.epoch_s / 60, 2),
        "total_hours": round(e.total_hours, 2), "fits": e.memory.fits, "memory_gib": round(e.memory.total_gib, 2),
    }  # fmt: skip


def _measured(args: argparse.Namespace, counts: list[int], data: str | None, options: dict, common: dict):
    """--measure: time `convcanon train`'s step on this machine's device, then predict the run from it."""
    import sys

    from .. import estimate as est
    from ..estimate.inputs import DEFAULT_BATCH_PER_DEVICE
    from ..train.ema import ema_choice

    local = args.device or "auto"
    if local.partition(":")[0] not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--measure times this machine: --device takes auto, cpu, cuda or cuda:N there; {local} is a "
                         "catalog device (leave out --measure to predict for it)")
    if counts != [1] or (args.nodes or 1) != 1:
        raise ValueError("--measure predicts a run on this machine's one device: use --devices 1")
    # Check every flag with a dry estimate on the generic CPU entry before spending time on the measurement.
    est.estimate(args.model, device="cpu", **{**common, "precision": "fp32"})
    plan = est.plan_input(args.model, data, common["image_size"], options)
    measured = est.measure_local(
        args.model, batch_size=args.batch_size or args.global_batch or DEFAULT_BATCH_PER_DEVICE,
        image_size=plan.image_size, num_classes=plan.num_classes, amp=args.amp, channels_last=args.channels_last,
        compile=args.compile, optimizer=args.optimizer, seconds=args.measure_seconds, device=local,
        model_options={**{k: v for k, v in options.items() if k != "num_classes"}, "in_chans": plan.in_chans},
        say=lambda line: print(line, file=sys.stderr),
        model_ema=ema_choice(args.model_ema, data)[0],
    )  # fmt: skip
    return est.estimate(args.model, measured=measured, **common)


def run(args: argparse.Namespace) -> int:
    from .. import estimate as est
    from ..train.config import TrainConfig, parse_model_options

    if args.catalog:
        emit([d.as_row() for d in est.DEVICES.values()],
             [("device", "device"), ("year", "year"), ("fp32_tflops", "fp32"), ("tf32_tflops", "tf32"),
              ("bf16_tflops", "bf16"), ("fp16_tflops", "fp16"), ("memory_gib", "GiB"), ("memory_gbs", "mem GB/s"),
              ("intra_node_gbs", "link GB/s"), ("inter_node_gbit", "net Gbit/s"), ("description", "description")],
             args.json)  # fmt: skip
        return 0
    if args.validate:
        emit(est.validation_table(), [("run", "run"), ("role", "role"), ("published", "published"),
                                  ("predicted", "predicted"), ("unit", "unit"), ("error", "error"),
                                  ("within", "within"), ("claim", "claim")], args.json)  # fmt: skip
        return 0
    counts = _device_counts(args.devices)
    epochs = args.epochs if args.epochs is not None else TrainConfig.epochs if args.measure else 90.0
    if args.canon:
        if len(counts) != 1:
            raise ValueError("--canon takes one --devices count")
        rows = est.canon_cost_table(epochs=epochs, count=counts[0])
        emit(rows, [("model", "model"), ("device", "device"), ("precision", "precision"),
                    ("images_per_s", "images/s"), ("hours", "hours"), ("days", "days"), ("fits", "fits"),
                    ("accumulation_steps", "accum"), ("memory_gib", "GiB/device")], args.json)  # fmt: skip
        return 0
    if not args.model:
        raise ValueError("--model is required (or one of --canon, --validate, --catalog)")
    # train's --data: a catalog set (a standard set's own folder is its entry), or your own data's size and shape
    own = est.train_data(args.data, args.image_size) if args.data is not None else None
    data = own.catalog if own is not None else (None if args.images else "imagenet")
    options = parse_model_options(args.model_options or [])
    if own is not None and own.catalog is None:
        options = {"num_classes": own.num_classes, "in_chans": own.in_chans, **options}
    common = dict(
        data=data, images=args.images if args.images is not None or own is None else own.images,
        val_images=args.val_images if args.val_images is not None or own is None else own.val_images,
        epochs=epochs, nodes=args.nodes, precision=args.amp, batch_size=args.batch_size,
        global_batch=args.global_batch, optimizer=args.optimizer, parallel=args.parallel,
        image_size=args.image_size if args.image_size is not None or own is None else own.image_size,
        network_gbit=args.network_gbit,
        link_gbs=args.link_gbs, epoch_overhead_s=args.epoch_overhead, model_options=options,
        model_ema=args.model_ema, model_ema_steps=args.model_ema_steps, in_memory=own.in_memory if own else None,
    )  # fmt: skip
    if args.measure:
        results = [_measured(args, counts, data, options, common)]
    else:
        results = [est.estimate(args.model, device=args.device, devices=n, **common) for n in counts]
    if own is not None and own.catalog is None and args.images is None:
        results = [dataclasses.replace(e, data=own.label) for e in results]

    if len(results) == 1:
        if args.json:
            emit([results[0].as_dict()], [], True)
        else:
            emit(_rows(results[0]), [("quantity", "quantity"), ("value", "value")], False)
        return 0
    emit([_scaling_row(e) for e in results],
         [("devices", "devices"), ("nodes", "nodes"), ("global_batch", "batch"), ("images_per_s", "images/s"),
          ("step_ms", "step ms"), ("exposed_comm_ms", "exposed comm ms"), ("scaling_efficiency", "efficiency"),
          ("epoch_min", "epoch min"), ("total_hours", "total h"), ("fits", "fits"), ("memory_gib", "GiB/device")],
         args.json)  # fmt: skip
    return 0
