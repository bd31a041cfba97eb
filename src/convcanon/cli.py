"""The ``convcanon`` command: a thin layer over functions a user can also import.

Each subcommand lives in ``convcanon.commands.<name>`` and exposes ``register(subparsers)``; its parser calls
``set_defaults(func=run)`` with ``run(args) -> int``. Modules are imported lazily by name so that ``convcanon models``
does not pay for importing the training stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .io import WriteError

EXIT_WRITE_REFUSED = 74  # EX_IOERR of sysexits.h

COMMANDS = ("models", "train", "eval", "predict", "export", "scan", "bench", "estimate", "experiment", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convcanon",
        description="The canon of image classification (AlexNet, VGG, GoogLeNet, ResNet) and how to train it at scale.",
        epilog="Run `convcanon COMMAND --help` for the options and examples of each command.",
    )
    parser.add_argument("--version", action="version", version=f"convcanon {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"convcanon.commands.{name}")
        except ModuleNotFoundError as err:  # a command whose module is not part of this build
            if err.name != f"convcanon.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        # Bad input found before work started: one clear line, no traceback.
        print(f"convcanon {args.command}: error: {err}", file=sys.stderr)
        return 2
    except WriteError as err:
        # The disk refused a write (full, read-only, no permission): what was written before is intact.
        print(f"convcanon {args.command}: error: {err.strerror}", file=sys.stderr)
        return EXIT_WRITE_REFUSED
    except OSError as err:  # a file that cannot be read (permissions, a vanished mount): named, without a traceback
        where = f" {err.filename}" if err.filename else ""
        print(f"convcanon {args.command}: error:{where}: {err.strerror or err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
