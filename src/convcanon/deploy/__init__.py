"""Using a trained model: ``predict`` (class probabilities for image files) and ``export`` (ONNX, ExportedProgram,
TorchScript, each reloaded and checked against PyTorch). Both start from ``train.weights.load_model``, so a model
gets the preprocessing it was trained with."""

from .predict import Prediction, image_files, predict

__all__ = ["Prediction", "image_files", "predict"]
