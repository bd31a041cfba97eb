"""``python -m convcanon``: the CLI; also the entry point for ``torchrun -m convcanon train ...``."""

import sys

from .cli import main

sys.exit(main())
