"""The evidence experiments: each claim of the canon as numbers, plots and a verdict computed from them.

One module per experiment (see ``core`` for the protocol); ``convcanon experiment NAME`` runs one,
``convcanon report`` all of them.
"""

from __future__ import annotations

from .core import EXPERIMENTS, ExperimentRun, Unit, Verdict, expected_seconds, run_experiment

__all__ = ["EXPERIMENTS", "ExperimentRun", "Unit", "Verdict", "expected_seconds", "run_experiment"]
