"""convcanon: the canon of image classification and the engineering of training it at scale."""

from .registry import create_model, list_models, model_info

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "model_info", "__version__"]
