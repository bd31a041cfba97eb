"""What a run shows while it trains: the per-epoch evaluation lines, the weight average's words on the last line, and
the progress bar (or, without a terminal or with --no-progress, only the lines)."""

from __future__ import annotations

import sys
from typing import Any

from .optim import Plan


def eval_line(epoch: int, epochs: int, step: int, result: dict[str, Any], what: str = "") -> str:
    top5 = f", top-5 {result['top5']:.2f}%" if "top5" in result else ""
    return (f"epoch {epoch}/{epochs} (step {step}): {what}test loss {result['loss']:.4f}, top-1 {result['top1']:.2f}%"
            f"{top5} on {result['samples']} images")


def ema_words(ema: dict[str, Any], weights: str) -> str:
    if not ema:
        return ""
    chosen = "kept: better" if weights == "ema" else "not kept: not better"
    return f", EMA {ema['top1']:.2f}% ({chosen})"


class Lines:
    """Progress without a bar (not a terminal, or --no-progress): only the per-epoch lines, through ``say``."""

    def __init__(self, say) -> None:
        self.write = say

    def update(self, n: int) -> None: ...
    def set_postfix(self, **kw: Any) -> None: ...
    def close(self) -> None: ...


def progress_for(enabled: bool, plan: Plan, initial: int, say):
    if not enabled or not sys.stderr.isatty():
        return Lines(say)
    from tqdm.auto import tqdm

    return tqdm(total=plan.total_steps, initial=initial, unit="step", dynamic_ncols=True, leave=False)


__all__ = ["Lines", "ema_words", "eval_line", "progress_for"]
