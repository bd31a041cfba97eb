"""``python -m convcanon``: the CLI; also the entry point for ``torchrun -m convcanon train ...``."""

from .cli import entry

entry()
