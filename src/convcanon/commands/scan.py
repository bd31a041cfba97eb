"""``convcanon scan DIR``: the check that training runs on folder data before step 1, on its own."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..tables import emit

EXAMPLES = """examples:
  convcanon scan ~/data/imagenet              list bad files, then a summary; exit 1 if any
  convcanon scan ~/data/imagenet --json       the same as one JSON object
  convcanon scan ~/data/pets --skip-bad       exit 0 while at most 1% are bad (what `train --skip-bad` accepts)
  convcanon scan --data cifar10               download CIFAR-10 once (checksums verified), read and check it
  convcanon scan ~/data/pets --stats          also the mean and std of the training images, as --mean/--std flags

exit status: 0 clean, 1 bad files found (or a download failed), 2 the folder's layout or a data file is wrong (the
message says what to fix)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..train.config import FlagOverride, add_shared_flags

    parser = subparsers.add_parser(
        "scan",
        help="decode every file of an image folder and list the bad ones",
        description="Check an ImageFolder tree (DIR/train/CLASS/IMAGE, DIR/val/CLASS/IMAGE) the way training\n"
                    "does before step 1: every file is decoded in full; truncated, corrupt, empty and non-image\n"
                    "files are listed with their path and reason, and so are symlink loops, dangling links and\n"
                    "unreadable entries. Hidden files and folders (.name) are ignored. Names are printed escaped\n"
                    "(a newline as \\n); --json gives them exactly. With --data, a CIFAR or MNIST-style set (named:\n"
                    "downloaded first if missing, checksums verified) is read and checked as training reads it.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", metavar="DIR", nargs="?", help="the folder holding train/ and val/")
    add_shared_flags(parser, ("data", "data_root"), {
        "data": FlagOverride(default=None, default_text="DIR",
                             note="scan: instead of DIR; a named set is downloaded if missing, then read and checked "
                                  "as training reads it"),
    })
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--skip-bad", action="store_true",
                        help="exit 0 if the bad files are at most 1%% of all (training with --skip-bad would start)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes decoding in parallel (default: %(default)s)")
    parser.add_argument("--stats", action="store_true",
                        help="also measure the per-channel mean and std of the training images (for train's --mean "
                             "and --std)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.scan import MAX_BAD_FRACTION, scan_folder
    from ..data.walk import shown

    if args.workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {args.workers}")
    folder = _folder(args)
    if folder is None:
        return _check_in_memory(args)
    report = scan_folder(folder, progress=sys.stderr.isatty(), workers=args.workers, cache=False)
    accepted = not report.bad or (args.skip_bad and report.bad_fraction <= MAX_BAD_FRACTION)
    bad_rows = [{"split": b.split, "path": b.path, "reason": b.reason} for b in report.bad]
    stats = None
    if args.stats:
        from ..data.folder_cache import folder_stats

        mean, std = folder_stats([p for p, _ in report.train], args.workers)
        stats = {"mean": list(mean), "std": list(std), "images": len(report.train)}
    if args.json:
        out = {**report.summary(), "class_names": list(report.classes), "bad_files": bad_rows,
               "ignored_files": list(report.ignored), "ok": accepted, **({"stats": stats} if stats else {})}
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0 if accepted else 1
    if bad_rows:
        # Names are printed escaped: a newline or an escape sequence in a file name cannot forge or erase a line.
        rows = [{**row, "path": shown(row["path"])} for row in bad_rows]
        emit(rows, [("split", "split"), ("path", "path"), ("reason", "reason")], False)
        print()
    for path in report.ignored:
        print(f"ignored (not inside a class folder): {shown(path)}")
    summary = report.summary()
    emit([summary], [("files", "files"), ("classes", "classes"), ("train_images", "train images"),
                     ("val_images", "val images"), ("bad", "bad"), ("bad_percent", "bad %"), ("ignored", "ignored")],
         False)
    if stats:
        print(f"training images ({stats['images']:,}): --mean {' '.join(map(str, stats['mean']))} --std "
              f"{' '.join(map(str, stats['std']))}")
    if not report.bad:
        print(f"clean: every one of the {report.files:,} files decodes")
    elif accepted:
        print(f"{len(report.bad)} bad files ({report.bad_fraction:.2%}): `train --skip-bad` would leave them out")
    else:
        too_many = report.bad_fraction > MAX_BAD_FRACTION
        advice = (f"more than {MAX_BAD_FRACTION:.0%}, so even --skip-bad stops: fix the copy" if too_many
                  else "fix or remove them, or train with --skip-bad")
        print(f"{len(report.bad)} bad files ({report.bad_fraction:.2%}): {advice}")
    return 0 if accepted else 1


def _folder(args: argparse.Namespace) -> str | None:
    """The ImageFolder tree to scan (DIR, or --data naming one); None when --data names an in-memory set."""
    from ..data import parse_data

    if (args.dir is None) == (args.data is None):
        raise ValueError("scan takes a folder DIR or --data SPEC (e.g. --data cifar10), one of the two")
    if args.dir is not None:
        return args.dir
    parsed = parse_data(args.data, data_root=args.data_root)
    if parsed.kind == "folder":
        return str(parsed.path)
    if parsed.kind in ("digits", "synthetic"):
        raise ValueError(f"--data {args.data} is generated, not read from files: there is nothing to scan")
    return None


def _check_in_memory(args: argparse.Namespace) -> int:
    """A CIFAR or MNIST-style set (downloaded first when named and missing): every file read and checked, as training
    does before step 1; a bad file is an error naming it (exit 2)."""
    from ..data import open_data

    info = open_data(args.data, data_root=args.data_root, progress=sys.stderr.isatty()).info
    summary = {"data": info.name, "source": info.source, "train_images": info.train_size,
               "test_images": info.test_size, "classes": info.num_classes,
               "shape": f"{info.in_chans}x{info.image_size}x{info.image_size}"}
    if args.json:
        json.dump({**summary, "class_names": list(info.classes), "ok": True}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    emit([summary], [("data", "data"), ("train_images", "train images"), ("test_images", "test images"),
                     ("classes", "classes"), ("shape", "shape"), ("source", "source")], False)
    print(f"clean: every file of {info.name} read and checked")
    return 0
