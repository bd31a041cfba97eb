"""convcanon: the canon of image classification and the engineering of training it at scale.

The Python API:

- ``create_model(name, num_classes=None, **options)``: a model of the zoo (a ``convcanon.models.CanonModel``; the
  contract every model keeps is documented in ``convcanon.models``). Options are checked before anything is built.
- ``list_models(pattern=None)``: the names, all or of one family (``"resnet_cifar"``) or matching an fnmatch pattern
  (``"resnet*"``).
- ``model_info(name)``: family, depth, default input size and class count, summary and option table, without building.
- ``model_options(name)``: the options a model accepts, by name (``Option``: type, default, valid values, help).
- ``resolve_options(name, num_classes=None, **options)``: every option's value, checked, nothing built.
"""

from . import models
from .models import CanonModel
from .registry import ModelInfo, Option, create_model, list_models, model_info, model_options, resolve_options

__version__ = "0.1.0"

__all__ = [
    "CanonModel", "ModelInfo", "Option", "create_model", "list_models", "model_info", "model_options", "models",
    "resolve_options", "__version__",
]  # fmt: skip
