"""The plots: matplotlib set-up shared by the evidence report's plots (the Agg backend, no display needed; one style;
one save), and the confusion matrix of ``convcanon eval``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "figure.dpi": 100, "savefig.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.titlesize": 11,
        "axes.labelsize": 10, "legend.fontsize": 8, "xtick.labelsize": 9, "ytick.labelsize": 9,
    })  # fmt: skip
    return plt


def savefig(fig, path: Path, **options) -> None:
    """``fig.savefig`` through ``convcanon.io``: atomic, and a refused write names the path."""
    from ..io import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", **options))


def save(fig, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    savefig(fig, Path(out_dir) / name)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return name


# A colour per family/variant so the same thing has the same colour in every plot.
PLAIN = "tab:red"
RESIDUAL = "tab:blue"
DEPTH_STYLES = {20: "-", 32: "--", 44: "-.", 56: ":", 110: (0, (5, 1, 1, 1))}


def plain_log_ticks(ax, axis: str = "y") -> None:
    """Log-scale tick labels as plain numbers (0.5, 2, 10) instead of powers of ten: errors in % read better so."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(fmt)
    target.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))


def plot_confusion(matrix: torch.Tensor, classes: Sequence[Any], path: Path, title: str) -> None:
    """The confusion matrix of ``convcanon eval`` (rows: true class, columns: predicted) as a PNG at ``path``: class
    names on the axes up to 40 classes, counts in the cells up to 20. Without the report's style (``pyplot``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    size = min(4 + 0.35 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(matrix.numpy(), cmap="Blues")
    fig.colorbar(im, ax=ax, label="images")
    if n <= 40:
        ax.set_xticks(range(n), [str(c) for c in classes], rotation=90 if n > 10 else 0)
        ax.set_yticks(range(n), [str(c) for c in classes])
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8,
                                color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    try:
        savefig(fig, path, dpi=120)
    finally:
        plt.close(fig)
