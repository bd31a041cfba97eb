"""Files of folder data that decoded at the scan but fail when a batch reads them (deleted, truncated or replaced
while training ran).

The DataLoader workers never raise for such a file (a worker's exception reaches the main process wrapped in the
worker's traceback): ``folder.ImageFiles`` returns the sample with a ``Stale`` record instead, ``collate_checked``
gathers those records per batch, and ``StaleFiles`` decides in the main process:

- without ``skip_bad``: ``BadDataError`` (a ValueError) naming the file and the reason, at the first such file;
- with ``skip_bad``: a training sample was already replaced by the worker with the next file of its class that
  decodes (at most ``SUBSTITUTE_TRIES`` tried), under the sample's own seed, so the batch keeps its shape and the
  order stays a pure function of (seed, epoch, position) and the files' contents; an evaluation sample is left out
  (evaluation has no fixed batch shape, and a duplicate would count twice). Each file is counted once, with the
  scan's bad entries, against the same 1% budget as the scan, and named once on stderr. Past the budget, or when no
  substitute decodes, ``BadDataError``.

Counts are per process: under data parallelism each rank sees, and counts, the files of its own shard.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .scan import BadDataError, ScanReport
from .walk import shown

SUBSTITUTE_TRIES = 16  # files of the same class tried in place of one that fails; more failing means a broken copy


@dataclass(frozen=True)
class Stale:
    """One sample whose file failed: the files that failed, in the order tried (path, reason), and the file read in
    its place (None when none was)."""

    failed: tuple[tuple[str, str], ...]
    used: str | None = None


def collate_checked(samples: Sequence[tuple[Tensor, int, Stale | None]]) -> tuple[Tensor, Tensor, list]:
    """``ImageFiles`` samples -> uint8 images (N, 3, S, S), int64 labels (N,), and [(row, Stale)] for the rows whose
    file failed."""
    x = torch.stack([s[0] for s in samples])
    y = torch.tensor([s[1] for s in samples], dtype=torch.int64)
    return x, y, [(row, s[2]) for row, s in enumerate(samples) if s[2] is not None]


class StaleFiles:
    """What one folder source found stale so far, and the decision for each batch (see the module docstring)."""

    def __init__(self, report: ScanReport, *, skip_bad: bool, max_bad_fraction: float):
        self.report, self.skip_bad, self.max_bad_fraction = report, skip_bad, max_bad_fraction
        self.found: dict[str, str] = {}  # path -> reason, in the order found

    def rows_to_drop(self, rows: Sequence[tuple[int, Stale]], training: bool) -> list[int]:
        """Record a batch's stale rows; return the rows to leave out (evaluation under ``skip_bad``); raise
        ``BadDataError`` when the batch cannot be used."""
        if not rows:
            return []
        path, reason = rows[0][1].failed[0]
        if not self.skip_bad:
            raise BadDataError(
                f"{shown(path)} cannot be read any more: {reason}. It decoded when the data was scanned before step "
                "1, so it changed since (deleted, truncated or replaced). Restore it, or pass --skip-bad to leave "
                f"such files out (at most {self.max_bad_fraction:.0%} of the files)", path=path, reason=reason)
        new = self._count(rows)
        if training:
            lost = next((s for _, s in rows if s.used is None), None)
            if lost is not None:
                first, why = lost.failed[0]
                raise BadDataError(
                    f"{shown(first)} cannot be read any more ({why}), and neither can the next "
                    f"{len(lost.failed) - 1} files of its class tried in its place: the copy of the data is broken, "
                    "fix it", path=first, reason=why)
        for row_path, row_reason, used in new:
            instead = (f"{shown(used)} (same class) takes its place" if training and used else
                       "left out of this evaluation" if not training else "")
            print(f"skipping {shown(row_path)}: {row_reason} (it changed after the scan); {instead}",
                  file=sys.stderr, flush=True)
        return [] if training else [row for row, _ in rows]

    def _count(self, rows: Sequence[tuple[int, Stale]]) -> list[tuple[str, str, str | None]]:
        """Add the rows' failed files to ``found``; raise past the budget; return the files new here."""
        new = []
        for _, stale in rows:
            for path, reason in stale.failed:
                if path not in self.found:
                    self.found[path] = reason
                    new.append((path, reason, stale.used))
        report = self.report
        total = len(report.bad) + len(self.found)
        if total / max(report.files, 1) > self.max_bad_fraction:
            listing = "\n".join(f"  {shown(p)}: {r}" for p, r in self.found.items())
            path, reason = next(iter(self.found.items()))
            raise BadDataError(
                f"{len(self.found)} files of {shown(report.root)} went bad after the scan:\n{listing}\nwith the "
                f"{len(report.bad)} bad files found by the scan, {total} of {report.files} "
                f"({total / report.files:.2%}) are bad, more than the {self.max_bad_fraction:.0%} --skip-bad leaves "
                "out: the copy of the data is broken, fix it", path=path, reason=reason)
        return new
