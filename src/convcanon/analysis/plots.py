"""matplotlib set-up shared by the evidence report's plots: the Agg backend (no display needed), one style, one save."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "figure.dpi": 100, "savefig.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "axes.titlesize": 11,
        "axes.labelsize": 10, "legend.fontsize": 8, "xtick.labelsize": 9, "ytick.labelsize": 9,
    })  # fmt: skip
    return plt


def save(fig, out_dir: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(Path(out_dir) / name)
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
