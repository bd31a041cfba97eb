"""The model zoo: one module per family. Importing this package registers every model."""

from . import alexnet, googlenet, resnet, resnet_cifar, vgg  # noqa: F401
