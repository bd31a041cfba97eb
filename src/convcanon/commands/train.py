"""``convcanon train``: train a model of the zoo on a data set; ``--resume DIR`` continues a run."""

from __future__ import annotations

import argparse
import os
import sys

_EPILOG = """examples:
  convcanon train                                   ResNet-20 on the embedded digits (the main job, ~1 min on 2 cores)
  convcanon train --model plain20 --out runs/plain  the same net without shortcuts
  convcanon train --model resnet20 --model-option activation=tanh --epochs 30
  convcanon train --data cifar10:~/data/cifar-10-batches-py --config experiments/resnet_cifar.yaml
  convcanon train --data folder:~/data/imagenet --model resnet50 --batch-size 64 --accum-steps 4 --amp bf16
  convcanon train --data folder:~/data/imagenet --model resnet50 --batch-size 256 --workers 8 --decode gpu
  convcanon train --resume runs/plain               continue a run from its newest valid checkpoint
  torchrun --nproc-per-node 4 -m convcanon train --model resnet50 --data folder:/data/imagenet

Learning rate: --lr is the rate at --base-batch (default 256) and is scaled by the linear scaling rule to the global
batch (batch size x processes x accumulation steps); the resolved figures are printed at start and saved in the run.
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


def run(args: argparse.Namespace) -> int:
    from ..parallel import strategy_for
    from ..train.config import config_from_args
    from ..train.run import NonFiniteLossError, RunInterrupted, train
    from ..train.rundir import resume_config
    from ..train.settings import check_settings

    cfg, given = config_from_args(args)
    if args.resume:
        cfg = resume_config(args.resume, cfg.__dict__, given)
    check_settings(cfg)  # every setting, before anything is created, opened or written
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
