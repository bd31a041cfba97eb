"""``convcanon export``: a trained model as ONNX, an ExportedProgram or TorchScript, checked after reloading."""

from __future__ import annotations

import argparse
import json

_EPILOG = """examples:
  convcanon export --weights runs/photos --format onnx --out photos.onnx --dynamic-batch
  convcanon export --weights runs/photos/model.safetensors --format exported-program --out photos.pt2
  convcanon export --weights runs/photos --format torchscript --out photos.pt

The artifact is reloaded and run on random inputs of the model's input size; the command fails (exit 1, no file
written) when its logits differ from PyTorch's by more than 1e-4 x max(1, largest logit)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a trained model to ONNX, torch.export or TorchScript, checked after reloading",
        description="Export a trained model for other runtimes. The input is named 'images' (N, C, H, W float, "
        "normalized as the model's preprocessing says), the output 'logits'.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--weights", required=True, metavar="RUN|FILE",
                   help="a run directory, its model.safetensors, or a checkpoint")
    p.add_argument("--format", required=True, choices=("onnx", "exported-program", "torchscript"))
    p.add_argument("--out", required=True, metavar="FILE", help="where to write it (.onnx, .pt2 or .pt)")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: the traced one only, for "
                   "formats that fix it)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..deploy.export import check_target, export_model
    from ..train.weights import load_model

    check_target(args.format, args.out)  # before the weights are read
    model = load_model(args.weights)
    report = export_model(model, args.format, args.out, dynamic_batch=args.dynamic_batch)
    diff = "not run" if report.max_abs_diff is None else f"{report.max_abs_diff:.2e}"
    if args.json:
        print(json.dumps({"format": report.format, "path": str(report.path), "max_abs_diff": report.max_abs_diff,
                          "tolerance": report.tolerance, "batch_sizes": report.batch_sizes, "ok": report.ok,
                          **report.details}))
    else:
        facts = ", ".join(f"{k} {v}" for k, v in report.details.items())
        print(f"{report.format}: max |difference| to PyTorch {diff} (tolerance {report.tolerance:.2e}) on batches of "
              f"{' and '.join(map(str, report.batch_sizes))}; {facts}")
    if not report.ok:
        print(f"convcanon export: the exported model differs from PyTorch by {diff}, above the tolerance; nothing "
              "was written")
        return 1
    print(f"written: {report.path}")
    return 0
