"""Evaluating a saved model: find the weights and the settings they were trained with, then ``evaluate``.

The figures only: ``convcanon eval`` (``commands/eval.py``) prints them and draws the confusion matrix with
``analysis.plots``."""

from __future__ import annotations

from dataclasses import dataclass
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
            return ckpt.model_weights(best, state), state["config"], path
        found = ckpt.load_latest(path)
        if found is not None:
            return found[0]["model"], found[0]["config"], path
        if (path / "model.safetensors").exists():
            return _load(path / "model.safetensors")
        raise FileNotFoundError(f"--checkpoint {path}: no checkpoints/ or model.safetensors in this directory")
    if path.suffix == ".safetensors":
        cfg_path = path.parent / "config.yaml"
        if cfg_path.exists():
            return ckpt.load_safetensors(path), load_yaml(cfg_path), path.parent
        from .weights import read_weights

        weights = read_weights(path)  # a weights file on its own: its record says the model and the data
        if weights.assumed:
            raise FileNotFoundError(f"--checkpoint {path}: written by an older convcanon, it needs the run's "
                                    f"config.yaml beside it ({cfg_path})")
        rec = weights.record
        options = {k: v for k, v in rec["options"].items() if k != "in_chans"}
        return weights.state, {"model": rec["model"], "model_options": options, "data": rec["data"],
                               "image_size": rec["preprocessing"]["crop"]}, path.parent
    state = ckpt.load_checkpoint(path)
    weights = ckpt.model_weights(path, state)
    return weights, state["config"], path.parent.parent if path.parent.name == "checkpoints" else path.parent


@dataclass
class CheckpointEvaluation:
    """A saved model evaluated on a test split: the figures ``convcanon eval`` prints and plots."""

    model: str
    data: str  # the data spec evaluated on
    dataset: str  # its name: digits, cifar10, folder, ...
    amp: str  # the precision it ran in
    metrics: dict[str, Any]  # loss, top1, samples and, with more than five classes, top5
    classes: list[Any]
    confusion: torch.Tensor  # images per (true class, predicted class)
    out_dir: Path  # the run directory (or the weights' folder): where outputs such as the plot go by default

    def per_class(self) -> list[dict[str, Any]]:
        totals = self.confusion.sum(dim=1)
        return [
            {"class": name, "samples": int(totals[i]),
             "accuracy": round(100.0 * float(self.confusion[i, i]) / max(int(totals[i]), 1), 2)}
            for i, name in enumerate(self.classes)
        ]  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready values."""
        return {"model": self.model, "data": self.data, "amp": self.amp, **self.metrics, "per_class": self.per_class(),
                "confusion": self.confusion.tolist()}


def evaluate_checkpoint(path: Path, *, data: str | None = None, image_size: int | None = None,
                        batch_size: int = 256, device: str = "auto", amp: str | None = None,
                        data_root: str | None = None) -> CheckpointEvaluation:
    """Evaluate the weights at ``path`` (a run directory, a checkpoint or a run's safetensors file) with the model and
    data settings of their run. ``amp`` None: the run's own setting (``auto`` resolves on this device as training did),
    so that on the machine that trained, the figures are the ones training logged."""
    from ..data import open_data
    from ..data.recipe import AugmentOptions
    from .engine import resolve_engine

    weights, cfg, out_dir = _load(path)
    spec = data or cfg["data"]
    # The run's evaluation sizes and normalization; a data set of its own (``data``) keeps its own statistics.
    options = AugmentOptions.from_mapping({k: v for k, v in cfg.items() if data is None or k not in ("mean", "std")})
    source = open_data(spec, image_size=image_size or cfg.get("image_size"), workers=cfg.get("workers", 2),
                       decode=cfg.get("decode", "auto"), progress=False, augment=options,
                       cache=cfg.get("data_cache", "stream"), data_root=data_root or cfg.get("data_root"))
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
                            channels_last=cfg.get("channels_last"), compile=False,
                            small_map_gemm=cfg.get("small_map_gemm"),
                            input_shape=(info.in_chans, info.image_size, info.image_size))
    model = engine.prepare_model(model)
    result = evaluate(model, source, ctx, batch_size=batch_size, confusion=True, compute=engine.compute,
                      channels_last=engine.channels_last)
    matrix = result.pop("confusion")
    return CheckpointEvaluation(cfg["model"], spec, info.name, engine.amp, result, list(info.classes), matrix, out_dir)
