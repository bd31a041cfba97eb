"""``convcanon eval``: top-1/top-5, per-class accuracy and a confusion matrix for a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

_EPILOG = """examples:
  convcanon eval --checkpoint runs/digits            the run's best checkpoint on its own test split
  convcanon eval --checkpoint runs/digits/checkpoints/step-00000330.pt
  convcanon eval --checkpoint runs/c10 --data cifar10:~/data/cifar-10-batches-py --json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..train.config import FlagOverride, add_shared_flags

    p = subparsers.add_parser(
        "eval", help="evaluate a checkpoint: accuracy, per-class accuracy, confusion matrix",
        description="Evaluate a trained model on a test split. PATH is a run directory (its best checkpoint, else "
        "the newest), a checkpoint file, or a run's model.safetensors. The best checkpoint is evaluated with the "
        "weights that scored it: the model's, or its weight average's (--model-ema) when the average scored better.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="run directory, .pt checkpoint or .safetensors")
    add_shared_flags(p, ("data", "data_root", "image_size", "batch_size", "amp", "device"), {
        "data": FlagOverride(default=None, default_text="the run's"),
        "data_root": FlagOverride(note="not given: the run's, else as train"),
        "image_size": FlagOverride(default_text="the run's"),
        "batch_size": FlagOverride(default=256, default_text="256: evaluation keeps no activations for backward"),
        "amp": FlagOverride(default=None, default_text="the run's setting, resolved on this device as in training"),
    })
    p.add_argument("--plot", metavar="FILE.png|none", help="where to draw the confusion matrix (default: confusion.png "
                   "in the run directory; a directory gets confusion.png inside; none: no plot)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run)


def _plot_path(arg: str | None, default_dir: Path) -> Path | None:
    if arg is not None and arg.lower() == "none":
        return None
    if arg is None:
        return default_dir / "confusion.png"
    path = Path(arg)
    return path / "confusion.png" if path.is_dir() or arg.endswith(("/", "\\")) else path


def _draw(evaluation, plot: Path) -> str:
    """Draw the confusion matrix into ``plot``; a run directory another process owns is not written to."""
    from ..analysis.plots import plot_confusion
    from ..io import LOCK_NAME, RunLock

    title = f"{evaluation.model} on {evaluation.dataset}: top-1 {evaluation.metrics['top1']:.2f}%"
    run_dir = plot.parent if (plot.parent / LOCK_NAME).exists() or (plot.parent / "config.yaml").exists() else None
    if run_dir is None:
        plot_confusion(evaluation.confusion, evaluation.classes, plot, title=title)
        return str(plot)
    with RunLock(run_dir).acquire("convcanon eval"):
        plot_confusion(evaluation.confusion, evaluation.classes, plot, title=title)
    return str(plot)


def run(args: argparse.Namespace) -> int:
    import json

    from ..train.evaluate_cli import evaluate_checkpoint

    evaluation = evaluate_checkpoint(
        Path(args.checkpoint), data=args.data, data_root=args.data_root, image_size=args.image_size,
        batch_size=args.batch_size,
        device=args.device, amp=args.amp,
    )  # fmt: skip
    plot = _plot_path(args.plot, evaluation.out_dir)
    result = evaluation.as_dict()
    if args.json:  # the figures first: a plot that cannot be written costs nothing already computed
        print(json.dumps({**result, "plot": str(plot) if plot else None}, indent=2), flush=True)
    else:
        from ..tables import format_table

        top5 = f"  top-5 {result['top5']:.2f}%" if "top5" in result else ""
        print(f"{result['model']} on {result['data']}: top-1 {result['top1']:.2f}%{top5}  loss {result['loss']:.4f}  "
              f"({result['samples']} images, amp {result['amp']})")
        print(format_table(result["per_class"], [("class", "class"), ("samples", "samples"),
                                                 ("accuracy", "accuracy %")]), flush=True)
    if plot is not None:
        where = _draw(evaluation, plot)
        if not args.json:
            print(f"confusion matrix: {where}")
    return 0
