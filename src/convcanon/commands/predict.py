"""``convcanon predict``: the classes a trained model sees in image files, with its own preprocessing."""

from __future__ import annotations

import argparse
import csv
import json
import sys

_EPILOG = """examples:
  convcanon predict --weights runs/photos ~/new-photos/            every image under the folder, top 5
  convcanon predict --weights runs/photos/model.safetensors a.jpg b.png --top-k 1
  convcanon predict --weights runs/photos ~/new-photos --json > predictions.json
  convcanon predict --weights runs/photos ~/new-photos --csv predictions.csv

Files that cannot be read are reported one by one and skipped; the exit status is 1 when any was."""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..train.config import add_shared_flags

    p = subparsers.add_parser(
        "predict", help="classify image files with a trained model",
        description="Classify image files (or every image under folders) with a trained model: its class names and "
        "the preprocessing it was trained with come from its weights' record.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--weights", required=True, metavar="RUN|FILE",
                   help="a run directory, its model.safetensors, or a checkpoint")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|DIR", help="image files, or folders searched recursively")
    p.add_argument("--top-k", type=int, default=5, help="classes shown per image (default: 5)")
    add_shared_flags(p, ("batch_size", "device"))
    p.add_argument("--json", action="store_true", help="print a JSON list: {path, top_k: [{class, index, "
                   "probability}]} or {path, error} per file")
    p.add_argument("--csv", metavar="OUT.csv", help="also write path,rank,class,index,probability,error rows here")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.walk import shown
    from ..deploy.predict import image_files, predict
    from ..train.distributed import resolve_device
    from ..train.weights import load_model

    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1; got {args.top_k}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1; got {args.batch_size}")
    device = resolve_device(args.device)
    model = load_model(args.weights, device=device)
    files, problems = image_files(args.inputs)
    if not files and not problems:
        raise ValueError(f"no image files in {', '.join(map(shown, args.inputs))} (extensions: .jpg, .png, ...)")
    bar = _bar(args.progress and not args.json and len(files) > args.batch_size, len(files))
    results = [p.as_dict() for p in predict(model, files, top_k=args.top_k, batch_size=args.batch_size,
                                            device=device, progress=bar.update if bar else None)]
    if bar:
        bar.close()
    results += [{"path": path, "error": why} for path, why in problems]
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            what = r.get("error") or "  ".join(f"{shown(t['class'])} {100 * t['probability']:.1f}%" for t in r["top_k"])
            print(f"{shown(r['path'])}  {what}")
    if args.csv:
        _write_csv(args.csv, results)
    failed = sum("error" in r for r in results)
    if failed:
        print(f"convcanon predict: {failed} of {len(results)} files could not be used (listed above)", file=sys.stderr)
    return 1 if failed else 0


def _bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr)


def _write_csv(path: str, results: list[dict]) -> None:
    import io

    from ..io import atomic_write_text

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["path", "rank", "class", "index", "probability", "error"])
    for r in results:
        if "error" in r:
            writer.writerow([r["path"], "", "", "", "", r["error"]])
        for rank, t in enumerate(r.get("top_k", []), 1):
            writer.writerow([r["path"], rank, t["class"], t["index"], t["probability"], ""])
    atomic_write_text(path, out.getvalue())
