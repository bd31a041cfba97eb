"""convcanon: the canon of image classification and the engineering of training it at scale.

The Python API:

- ``create_model(name, num_classes=None, **options)``: a model of the zoo (a ``convcanon.models.CanonModel``; the
  contract every model keeps is documented in ``convcanon.models``). Options are checked before anything is built.
- ``list_models(pattern=None)``: the names, all or of one family (``"resnet_cifar"``) or matching an fnmatch pattern
  (``"resnet*"``).
- ``model_info(name)``: family, depth, default input size and class count, summary and option table, without building.
- ``model_options(name)``: the options a model accepts, by name (``Option``: type, default, valid values, help).
- ``resolve_options(name, num_classes=None, **options)``: every option's value, checked, nothing built.
- ``load_model(path)``: a trained model from its weights file, checkpoint or run directory, rebuilt with every option
  it was trained with, in eval mode; its preprocessing in ``model.pretrained_cfg`` (``convcanon.train.weights``).
"""

from pathlib import Path

import torch
from torch import nn

from . import models
from .models import CanonModel
from .registry import ModelInfo, Option, create_model, list_models, model_info, model_options, resolve_options
from .version import __version__


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """The model whose weights are at ``path`` (a ``.safetensors`` file, a checkpoint or a run directory), rebuilt from
    the weights' record, in eval mode on ``device``; see ``convcanon.train.weights.load_model``."""
    from .train.weights import load_model as load

    return load(path, device=device)


__all__ = [
    "CanonModel", "ModelInfo", "Option", "create_model", "list_models", "load_model", "model_info", "model_options",
    "models", "resolve_options", "__version__",
]  # fmt: skip
