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


def entry() -> None:
    """The ``convcanon`` console script and ``python -m convcanon``: :func:`main`, then :func:`exit_now`."""
    exit_now(main())


def exit_now(code: int) -> None:
    """End the process with ``code`` once the command is done, skipping the interpreter's teardown: with torch and
    torch._dynamo loaded (every optimizer imports it), freeing the module graph object by object takes about a second
    on the CPUs measured (BENCHMARKS.md), after everything of the command is over. What an exit owes is still done:
    threads that are not daemons are joined, exit handlers run (logging, multiprocessing's workers, TensorBoard's
    writers), and stdout and stderr are flushed. Only the entry points call this: ``main`` itself returns."""
    import atexit
    import os
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or stream: nothing more can be said there
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
