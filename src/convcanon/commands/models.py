"""``convcanon models``: the zoo as a table, or one model layer by layer."""

from __future__ import annotations

import argparse

from ..tables import emit

_EPILOG = """examples:
  convcanon models                       every model: family, depth, parameters, GMACs, input size
  convcanon models --family resnet_cifar only the CIFAR-size ResNets and their plain twins
  convcanon models --family 'vgg*_bn'    the models whose names match a pattern
  convcanon models --json                the same as JSON, for scripts
  convcanon models resnet50              one model, stage by stage (output shape, parameters, MACs)
  convcanon models vgg16 --option kernels=large   what an idea switch does to a model
"""

_COLUMNS = [
    ("name", "model"), ("family", "family"), ("depth", "depth"), ("params", "params"),
    ("gmacs", "GMACs"), ("input_size", "input"), ("summary", "summary"),
]  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models", help="list the model zoo with parameters and GMACs",
        description="The model zoo: weighted layers (depth), parameters and forward multiply-accumulates "
        "(GMACs, measured with torch.utils.flop_counter at the default input size).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("name", nargs="?", help="show one model layer by layer")
    p.add_argument("--family", help="only this family (alexnet, vgg, googlenet, resnet, resnet_cifar), or the names "
                   "matching an fnmatch pattern ('resnet*')")
    p.add_argument("--num-classes", type=int, default=None, help="class count (default: the model's own)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a model option (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis.profile import layer_table, profile_model
    from ..registry import list_models
    from ..train.config import parse_model_options

    options = parse_model_options(args.option)
    if args.name:
        rows = layer_table(args.name, num_classes=args.num_classes, **options)
        columns = [("layer", "layer"), ("type", "type"), ("output", "output shape"), ("params", "params"),
                   ("macs", "MACs")]  # fmt: skip
        emit(rows, columns, args.json)
        return 0
    names = list_models(args.family)  # an unknown family is a ValueError that lists the families
    if not names:
        raise ValueError(f"--family {args.family!r} matches no model; `convcanon models` lists them all")
    rows = [profile_model(n, num_classes=args.num_classes, **options).as_row() for n in names]
    emit(rows, _COLUMNS, args.json)
    return 0
