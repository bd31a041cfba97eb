"""Interrupts as part of a run's contract: SIGINT (Ctrl-C) and SIGTERM (what Slurm and Kubernetes send before they
kill or preempt a job) ask the run to stop after the step in progress, with a checkpoint; a second one stops it at
once (the newest checkpoint is intact: checkpoints are written atomically)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(Exception):
    """The run stopped on a signal, at a checkpoint; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int, step: int, run_dir: Path) -> None:
        self.signum, self.step, self.run_dir = signum, step, run_dir
        super().__init__(f"interrupted ({signal.Signals(signum).name}) at step {step}; resume with: convcanon train "
                         f"--resume {run_dir}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """While active (a context manager), SIGINT and SIGTERM set :attr:`received` instead of stopping the process; the
    run reads it after each step. A second signal raises at once: KeyboardInterrupt for SIGINT, SystemExit(143) for
    SIGTERM. Outside the main thread (where Python cannot install handlers) it does nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            return
        self._restore()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()


__all__ = ["RunInterrupted", "STOP_SIGNALS", "StopSignals"]
