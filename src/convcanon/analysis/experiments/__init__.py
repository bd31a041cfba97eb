"""The evidence experiments: each claim of the canon as numbers, plots and a verdict computed from them.

One module per experiment (see ``core`` for the protocol); ``convcanon experiment NAME`` runs one,
``convcanon report`` all of them.
"""

from __future__ import annotations

# In report order; pitfalls last, it reads the others' results.
EXPERIMENTS: tuple[str, ...] = ("canon", "degradation", "identity", "gradient_flow", "ideas", "scaling", "pitfalls")

from .core import ExperimentRun, Unit, Verdict, expected_seconds, run_experiment  # noqa: E402

__all__ = ["EXPERIMENTS", "ExperimentRun", "Unit", "Verdict", "expected_seconds", "run_experiment"]
