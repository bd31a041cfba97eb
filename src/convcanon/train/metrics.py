"""Run logs: ``metrics.jsonl`` (one JSON object per line) and TensorBoard event files, written by rank 0 only."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..io import atomic_write_text, refused_write


class MetricsLog:
    """Appends records to ``DIR/metrics.jsonl`` and mirrors numeric fields to TensorBoard under ``DIR/tb``.

    Each record has ``kind`` (train, eval, event) and ``step`` (optimizer steps done). On resume the log is appended to;
    lines for steps past the checkpoint are dropped first (the file rewritten atomically) so that it tells one
    consistent history.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        with refused_write(self.path):
            self._file = self.path.open("a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)
        except ImportError:  # tensorboard is a dependency; tolerate its absence in stripped environments
            self._tb = None

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:  # a line cut by a kill: drop it
                continue
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def log(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with refused_write(self.path):
            self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
