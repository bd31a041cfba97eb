"""Evaluating a saved model: find the weights and the settings they were trained with, then ``evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..registry import create_model, model_options
from . import checkpoint as ckpt
from . import distributed
from .config import load_yaml
from .evaluate import evaluate


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """(model state, run config, where to put outputs) from a run dir, a checkpoint or a safetensors file."""
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {path}: no such file or directory")
    if path.is_dir():
        best = path / "checkpoints" / "best.pt"
        if best.exists():
            state = ckpt.load_checkpoint(best)
            return state["model"], state["config"], path
        found = ckpt.load_latest(path)
        if found is not None:
            return found[0]["model"], found[0]["config"], path
        if (path / "model.safetensors").exists():
            return _load(path / "model.safetensors")
        raise FileNotFoundError(f"--checkpoint {path}: no checkpoints/ or model.safetensors in this directory")
    if path.suffix == ".safetensors":
        cfg_path = path.parent / "config.yaml"
        if not cfg_path.exists():
            raise FileNotFoundError(f"--checkpoint {path}: needs the run's config.yaml beside it ({cfg_path})")
        return ckpt.load_safetensors(path), load_yaml(cfg_path), path.parent
    state = ckpt.load_checkpoint(path)
    return state["model"], state["config"], path.parent.parent if path.parent.name == "checkpoints" else path.parent


def evaluate_checkpoint(path: Path, *, data: str | None = None, image_size: int | None = None,
                        batch_size: int = 256, device: str = "auto", plot: Path | None = None,
                        amp: str | None = None) -> dict[str, Any]:
    """``amp`` None: the run's own setting (``auto`` resolves on this device as training did), so that on the machine
    that trained, the figures are the ones training logged."""
    from ..data import open_data
    from .engine import resolve_engine

    weights, cfg, out_dir = _load(path)
    spec = data or cfg["data"]
    source = open_data(spec, image_size=image_size or cfg.get("image_size"), workers=cfg.get("workers", 2),
                       decode=cfg.get("decode", "auto"), progress=False)
    info = source.info
    options = dict(cfg.get("model_options") or {})
    if "in_chans" in model_options(cfg["model"]):
        options.setdefault("in_chans", info.in_chans)
    model = create_model(cfg["model"], num_classes=info.num_classes, **options)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"--checkpoint {path}: weights do not fit {cfg['model']} with {info.num_classes} classes "
                         f"on {spec}: {str(err).splitlines()[0]}") from None
    ctx = distributed.DistContext(0, 1, 0, distributed.resolve_device(device), None)
    engine = resolve_engine(device=ctx.device, model=model, amp=amp or cfg.get("amp", "auto"),
                            channels_last=cfg.get("channels_last"), compile=False)
    model = engine.prepare_model(model)
    result = evaluate(model, source, ctx, batch_size=batch_size, confusion=True, autocast=engine.autocast,
                      channels_last=engine.channels_last)
    matrix = result.pop("confusion")
    totals = matrix.sum(dim=1)
    per_class = [
        {"class": name, "samples": int(totals[i]),
         "accuracy": round(100.0 * float(matrix[i, i]) / max(int(totals[i]), 1), 2)}
        for i, name in enumerate(info.classes)
    ]  # fmt: skip
    plot = plot or out_dir / "confusion.png"
    plot_confusion(matrix, info.classes, plot, title=f"{cfg['model']} on {info.name}: top-1 {result['top1']:.2f}%")
    return {"model": cfg["model"], "data": spec, "amp": engine.amp, **result, "per_class": per_class,
            "confusion": matrix.tolist(), "plot": str(plot)}


def plot_confusion(matrix: torch.Tensor, classes, path: Path, title: str) -> None:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
