"""Self-describing weights: what a run's ``model.safetensors`` and every checkpoint record, and ``load_model``.

The record (``weights_record``) holds everything needed to rebuild the exact function the weights were trained as:
the model's name, every resolved model option (defaults included, so that a later change of a default cannot change
the function), ``num_classes``, ``in_chans``, the class names, the input size and the evaluation preprocessing of the
training data (resize, center crop, interpolation, mean and std on the 0..1 scale), the data spec, and the convcanon
and torch versions. ``model.safetensors`` stores it as str -> str metadata (JSON for the structured values);
checkpoints hold it under ``"weights"``.

``load_model(path)`` rebuilds the model from a weights file, a checkpoint or a run directory, in eval mode, with the
record's preprocessing in ``model.pretrained_cfg`` (timm's data config: ``input_size``, ``interpolation``,
``crop_pct``, ``mean``, ``std``, and ``label_names``) and the whole record in ``model.weights_record``;
``convcanon.data.preprocess.eval_transform(model.pretrained_cfg)`` is the matching image transform. A file from an
older convcanon, without the options, is read only with an :class:`IncompleteWeightsWarning` that says what was
assumed: never silently.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import create_model, model_info, model_options, resolve_options
from ..version import __version__
from . import checkpoint as ckpt

RECORD_FORMAT = "convcanon.weights/1"
_JSON_KEYS = ("options", "classes", "preprocessing", "num_classes", "in_chans")


class IncompleteWeightsWarning(UserWarning):
    """A weights file from an older convcanon: some of what rebuilds the exact function was assumed, not read."""


def weights_record(model: str, options: dict[str, Any], *, num_classes: int, in_chans: int,
                   classes: list[str] | tuple[str, ...], preprocessing: dict[str, Any], data: str = ""
                   ) -> dict[str, Any]:
    """The record of weights of ``model`` trained with ``options`` on data of ``num_classes`` classes named
    ``classes``, ``in_chans`` channels and ``preprocessing`` (``DataInfo.preprocessing()``)."""
    given = dict(options)
    if "in_chans" in model_options(model):
        given.setdefault("in_chans", in_chans)
    resolved = resolve_options(model, num_classes=num_classes, **given)
    resolved.pop("num_classes")
    return {
        "format": RECORD_FORMAT, "model": model, "options": resolved, "num_classes": num_classes,
        "in_chans": in_chans, "classes": list(classes), "preprocessing": dict(preprocessing), "data": data,
        "convcanon": __version__, "torch": str(torch.__version__),
    }  # fmt: skip


def as_metadata(record: dict[str, Any]) -> dict[str, str]:
    """The record as safetensors metadata (str -> str; structured values as JSON)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in record.items()}


@dataclass
class Weights:
    """Weights read from a file, with their record; ``assumed`` lists what an older file did not say."""

    state: dict[str, Tensor]
    record: dict[str, Any]
    path: Path
    assumed: list[str]


def read_weights(path: str | Path) -> Weights:
    """The weights and record at ``path``: a ``.safetensors`` file, a convcanon checkpoint, or a run directory (its
    ``model.safetensors`` when the run finished, else its best or newest checkpoint). Raises FileNotFoundError or
    ValueError naming the path."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        return read_weights(_in_run_dir(path))
    if path.suffix == ".safetensors":
        return _from_safetensors(path)
    return _from_checkpoint(path, ckpt.load_checkpoint(path))


def _in_run_dir(run: Path) -> Path:
    for candidate in (run / "model.safetensors", run / "checkpoints" / "best.pt"):
        if candidate.is_file():
            return candidate
    found = ckpt.find_checkpoints(run)
    if found:
        return found[-1]
    raise FileNotFoundError(f"{run}: no model.safetensors or checkpoints/ in this directory (is it a run directory?)")


def _from_safetensors(path: Path) -> Weights:
    meta = ckpt.safetensors_metadata(path)
    state = ckpt.load_safetensors(path)
    if meta.get("format") == RECORD_FORMAT:
        record = {k: json.loads(v) if k in _JSON_KEYS else v for k, v in meta.items()}
        return Weights(state, record, path, [])
    if "model" not in meta:
        raise ValueError(f"{path} has no convcanon metadata (no model name): not written by convcanon; load its "
                         "state dict with safetensors and build the model with convcanon.create_model")
    config = path.parent / "config.yaml"
    options: dict[str, Any] = {}
    assumed = ["preprocessing (the model's nominal input)"]
    if config.is_file():
        from .config import load_yaml

        options = dict(load_yaml(config).get("model_options") or {})
        assumed.insert(0, f"the model options from {config}")
    else:
        assumed.insert(0, "the model's default options")
    classes = json.loads(meta["classes"]) if meta.get("classes", "").startswith("[") else []
    return Weights(state, _old_record(meta["model"], options, state, classes), path, assumed)


def _from_checkpoint(path: Path, payload: dict[str, Any]) -> Weights:
    if isinstance(payload.get("weights"), dict):  # best.pt: the weights that scored the best evaluation
        return Weights(ckpt.model_weights(path, payload), payload["weights"], path, [])
    config = payload["config"]
    record = _old_record(config["model"], dict(config.get("model_options") or {}), payload["model"],
                         list(payload["classes"]))
    return Weights(payload["model"], record, path, ["preprocessing (the model's nominal input)"])


def _old_record(model: str, options: dict[str, Any], state: dict[str, Tensor], classes: list[str]
                ) -> dict[str, Any]:
    """The record of a file written before records existed: what the state dict and the file say, defaults else."""
    info = model_info(model)
    first = next((t for k, t in state.items() if k.endswith("weight") and t.dim() == 4), None)
    in_chans = int(first.shape[1]) if first is not None else info.input_size[0]
    num_classes = len(classes) or info.default_num_classes
    side = info.input_size[1]
    with torch.device("meta"):
        nominal = create_model(model, num_classes=num_classes, **_with_chans(model, options, in_chans)).pretrained_cfg
    crop_pct = nominal.get("crop_pct", 1.0)
    preprocessing = {"input_size": [in_chans, side, side], "resize": round(side / crop_pct), "crop": side,
                     "interpolation": nominal["interpolation"], "mean": list(nominal["mean"]),
                     "std": list(nominal["std"])}
    return weights_record(model, options, num_classes=num_classes, in_chans=in_chans, classes=classes,
                          preprocessing=preprocessing)


def _with_chans(model: str, options: dict[str, Any], in_chans: int) -> dict[str, Any]:
    return {**options, "in_chans": in_chans} if "in_chans" in model_options(model) else dict(options)


def build_from_record(record: dict[str, Any]) -> nn.Module:
    """The model a record describes, freshly initialized, with the record's preprocessing in ``pretrained_cfg``."""
    model = create_model(record["model"], num_classes=record["num_classes"], **record["options"])
    prep = record["preprocessing"]
    model.pretrained_cfg = {
        **model.pretrained_cfg, "input_size": tuple(prep["input_size"]), "interpolation": prep["interpolation"],
        "crop_pct": prep["crop"] / prep["resize"], "crop_mode": "center", "mean": tuple(prep["mean"]),
        "std": tuple(prep["std"]), "label_names": list(record["classes"]),
    }  # fmt: skip
    model.weights_record = record
    return model


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """The model whose weights are at ``path`` (a ``.safetensors`` file, a checkpoint or a run directory), rebuilt
    from the weights' record with every option it was trained with, in eval mode on ``device``. Its preprocessing is
    ``model.pretrained_cfg`` and the record ``model.weights_record``. An older file without a record loads with an
    :class:`IncompleteWeightsWarning` naming what was assumed."""
    weights = read_weights(path)
    if weights.assumed:
        warnings.warn(f"{weights.path} was written by an older convcanon and does not record everything that rebuilds "
                      f"its function: assumed {', and '.join(weights.assumed)}; if it was trained otherwise, its "
                      "outputs will differ", IncompleteWeightsWarning, stacklevel=2)
    model = build_from_record(weights.record)
    try:
        model.load_state_dict(weights.state)
    except RuntimeError as err:
        raise ValueError(f"{weights.path}: the weights do not fit the model their record describes "
                         f"({weights.record['model']}): {str(err).strip().splitlines()[0][:300]}") from None
    return model.to(device).eval()


__all__ = ["IncompleteWeightsWarning", "RECORD_FORMAT", "Weights", "as_metadata", "build_from_record", "load_model",
           "read_weights", "weights_record"]
