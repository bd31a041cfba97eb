"""``convcanon bench``: training and inference images/s of the fast path, against the naive way, in one process."""

from __future__ import annotations

import argparse
import json
import sys

_EPILOG = """examples:
  convcanon bench --model resnet50 --batch-size 32 --baseline          ResNet-50 at 224 vs torchvision's naive loop
  convcanon bench --model resnet20 --batch-size 128 --baseline         ResNet-20 at 32x32 (naive: same model)
  convcanon bench --model resnet20 --batch-size 64 --data digits       end-to-end data path vs synthetic, same shape
  convcanon bench --model resnet50 --batch-size 256 --data folder:~/data/imagenet --workers 8    + decode throughput
  convcanon bench --model resnet18 --image-size 32 --data folder:~/digits --data-cache stream --aa trivialaugment
      --reprob 0.25       the loader's images/s with the recipe's augmentation, and the workers that keep up
  convcanon bench --model resnet50 --data folder:~/data/imagenet --config experiments/resnet50_imagenet_tv2.yaml
                      the augmentation keys of a recipe (flags given here win)
  convcanon bench --model resnet50 --batch-size 256 --amp bf16 --baseline --json     on a GPU, as JSON
  convcanon bench --model resnet152 --batch-size 16 --activation-checkpointing     memory saved, speed paid
  convcanon bench --model resnet50 --no-channels-last --no-compile     switch the fast path's pieces off one by one

What is measured: images/s of the training step (forward, backward, optimizer) and of inference on synthetic data,
after warm-up, as the median of timed windows with their min..max; subjects take turns window by window, so that a
busy machine slows them alike, and each ratio is the median of per-round ratios. Model FLOP/s = images/s x training
FLOPs per image (3 x forward MACs x 2); utilization = model FLOP/s / the peak of a large matmul timed in the same
run. Peak memory of a training step: torch.cuda.max_memory_allocated on GPU, a child process's peak RSS on CPU.
The engine's choices (precision, channels-last, compile, cuDNN autotuning) are the ones `convcanon train` makes; each
is printed with its reason and can be overridden by the same flag as in train.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..train.config import AUGMENT_FLAGS, DATA_FLAGS, ENGINE_FLAGS, MODEL_FLAGS, FlagOverride, add_shared_flags

    p = subparsers.add_parser(
        "bench", help="throughput of the fast path against the naive baseline",
        description="Images/s of a model's training step and inference on this device, with the engine `convcanon "
        "train` uses, optionally against the naive baseline and the real data path, measured in the same process.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add_shared_flags(p, (*MODEL_FLAGS, "batch_size", *DATA_FLAGS, *AUGMENT_FLAGS, *ENGINE_FLAGS,
                         "activation_checkpointing"), {
        "model": FlagOverride(default="resnet50", default_text="resnet50, a 224x224 ImageNet model; train's is "
                              "resnet20"),
        "batch_size": FlagOverride(default=32, default_text="32; train's is 64"),
        "image_size": FlagOverride(default_text="the model's, e.g. 224; or the data's"),
        "data": FlagOverride(default=None, default_text="none: synthetic tensors only",
                             note="bench also times ours fed by this data's batches; folder data also reports decode "
                                  "throughput per worker and of the loader"),
        "activation_checkpointing": FlagOverride(note="bench also times and measures the model without it"),
    })
    p.add_argument("--config", metavar="FILE.yaml", help="take the augmentation keys of a training recipe (flags given "
                   "here win)")
    p.add_argument("--baseline", action="store_true", help="also time the naive reference, alternating with ours")
    p.add_argument("--in-chans", type=int, help="input channels (default: the model's, or the data's)")
    p.add_argument("--num-classes", type=int, help="classes (default: the model's, or the data's)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--windows", type=int, default=5, help="timed windows per subject (default: %(default)s)")
    p.add_argument("--steps", type=int, help="steps per window (default: enough for about --window-seconds)")
    p.add_argument("--window-seconds", type=float, default=2.0, help="(default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per subject (default: %(default)s)")
    p.add_argument("--no-inference", dest="inference", action="store_false", help="skip the inference timing")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurement")
    p.add_argument("--no-peak", dest="peak", action="store_false", help="skip the matmul peak (and utilization)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--save", metavar="FILE.json", help="also write the JSON object to this file")
    p.set_defaults(func=run)


def _augmentation(args: argparse.Namespace) -> dict:
    """The augmentation keys: the recipe's (``--config``), then each flag given a value other than its default;
    checked by train's rules (the message names the flag)."""
    from ..train.config import AUGMENT_FLAGS, TrainConfig, config_from_dict, load_yaml

    default = TrainConfig()
    values = {k: v for k, v in (load_yaml(args.config) if args.config else {}).items() if k in AUGMENT_FLAGS}
    values.update({k: getattr(args, k) for k in AUGMENT_FLAGS if getattr(args, k) != getattr(default, k)})
    cfg = config_from_dict(values, f"--config {args.config}" if args.config else "command line")
    return {k: getattr(cfg, k) for k in AUGMENT_FLAGS}


def run(args: argparse.Namespace) -> int:
    from ..perf.bench import BenchConfig, run_bench
    from ..perf.report import format_report
    from ..train.config import parse_model_options

    augment = _augmentation(args)
    cfg = BenchConfig(
        model=args.model, batch_size=args.batch_size, image_size=args.image_size, in_chans=args.in_chans,
        num_classes=args.num_classes, model_options=parse_model_options(args.model_options or []), amp=args.amp,
        channels_last=args.channels_last, compile=args.compile, small_map_gemm=args.small_map_gemm,
        activation_checkpointing=args.activation_checkpointing, deterministic=args.deterministic,
        device=args.device, threads=args.threads, baseline=args.baseline, data=args.data, workers=args.workers,
        data_root=args.data_root, decode=args.decode, windows=args.windows, augment=augment,
        ra_reps=augment.pop("ra_reps", 1), data_cache=augment.pop("data_cache", "auto"),
        steps=args.steps, window_seconds=args.window_seconds, warmup=args.warmup, inference=args.inference,
        memory=args.memory, peak=args.peak,
    )  # fmt: skip
    result = run_bench(cfg)
    if args.save:
        from pathlib import Path

        Path(args.save).write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    if args.json:
        json.dump(result.as_dict(), sys.stdout, indent=2)
        print()
    else:
        print(format_report(result))
    return 0
