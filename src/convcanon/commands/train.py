"""``convcanon train``: train a model of the zoo on a data set; ``--resume DIR`` continues a run."""

from __future__ import annotations

import argparse
import os
import sys

_EPILOG = """examples:
  convcanon train                                   ResNet-20 on the embedded digits (the main job, ~1 min on 2 cores)
  convcanon train --model plain20 --out runs/plain  the same net without shortcuts
  convcanon train --model resnet20 --model-option activation=tanh --epochs 30
  convcanon train --data cifar10:~/data/cifar-10-batches-py --config experiments/resnet_cifar10.yaml
  convcanon train --data folder:~/data/imagenet --model resnet50 --batch-size 64 --accum-steps 4 --amp bf16
  convcanon train --data folder:~/data/imagenet --model resnet50 --batch-size 256 --workers 8 --decode gpu
  convcanon train --data folder:~/digits --model resnet18 --image-size 32 --hflip 0 --scale 0.35 1 --aa trivialaugment
      --reprob 0.25                                 timm's augmentation flags; no flip for digits
  convcanon train --data folder:/data/imagenet --config experiments/resnet50_imagenet_tv2.yaml
  convcanon train --resume runs/plain               continue a run from its newest valid checkpoint
  torchrun --nproc-per-node 4 -m convcanon train --model resnet50 --data folder:/data/imagenet

Learning rate: --lr is the rate at --base-batch (default 256) and is scaled by the linear scaling rule to the global
batch (batch size x processes x accumulation steps); the resolved figures are printed at start and saved in the run.
Augmentation: what --hflip, --scale, --pad, --aa, --reprob ... do not set is the data set's default; the resolved
recipe is printed at start ("augmentation: ...") and saved in run.json (docs/data.md#augmentation).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..train.config import add_config_arguments

    p = subparsers.add_parser(
        "train", help="train a model (the main job)",
        description="Train a model of the zoo. Writes the run directory: config.yaml, run.json, metrics.jsonl, "
        "TensorBoard events (tb/), checkpoints/ and the final weights as model.safetensors.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its newest valid checkpoint")
    add_config_arguments(p)
    p.set_defaults(func=run)


SMALLEST_SIDE = 8  # the embedded digits' side: the smallest input any experiment of this tool trains on


def check_memory(cfg, data) -> None:
    """Refuse a step that cannot fit in this device's memory, with the estimator's figure (``estimate.fits``); a
    pipeline spreads the model over its stages and activation checkpointing keeps less, so both are left to run."""
    if data.kind == "synthetic":  # the data's own size first: its message names the setting to change
        from ..data.memory import check_synthetic_fits

        check_synthetic_fits(cfg.data, data.in_chans, data.image_size)
    if cfg.pipeline_stages > 1 or cfg.activation_checkpointing:
        return
    from ..estimate.fits import check_fits
    from ..train.distributed import resolve_device
    from ..train.ema import resolve_model_ema
    from ..train.engine import resolve_amp

    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    amp = resolve_amp(cfg.amp, device)
    check_fits(cfg.model, cfg.model_options, num_classes=data.num_classes, in_chans=data.in_chans,
               image_size=data.image_size, micro_batch=cfg.batch_size, precision="fp32" if amp == "off" else amp,
               optimizer=cfg.optimizer, device=device,
               size_flag="the side S of --data synthetic:C:S:K" if cfg.data.startswith("synthetic:") and
               cfg.image_size is None else "--image-size", model_ema=resolve_model_ema(cfg)[0])


def run(args: argparse.Namespace) -> int:
    from ..parallel import strategy_for
    from ..train.config import config_from_args
    from ..train.run import NonFiniteLossError, RunInterrupted, train
    from ..train.rundir import resume_config
    from ..train.settings import check_settings

    cfg, given = config_from_args(args)
    if args.resume:
        cfg = resume_config(args.resume, cfg.__dict__, given)
    data = check_settings(cfg)  # every setting, before anything is created, opened or written
    check_memory(cfg, data)
    if data.image_size < SMALLEST_SIDE and int(os.environ.get("RANK", "0")) == 0:
        print(f"convcanon train: warning: the images are {data.image_size}x{data.image_size} pixels, smaller than the "
              f"{SMALLEST_SIDE}x{SMALLEST_SIDE} of the smallest data set the canon's networks are shown on (digits): "
              "the network sees little more than each image's mean colour; raise --image-size",
              file=sys.stderr, flush=True)
    try:
        train(cfg, resume=args.resume, strategy=strategy_for(cfg))
    except NonFiniteLossError as err:
        if int(os.environ.get("RANK", "0")) == 0:  # every rank stops at the same check; one says why
            print(f"convcanon train: {err}")
        return 3
    except RunInterrupted as stop:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"convcanon train: {stop}", file=sys.stderr, flush=True)
        return stop.exit_code
    return 0
