"""The model zoo: one module per family (alexnet, vgg, googlenet, resnet, resnet_cifar); importing it registers every
model. Every model is a :class:`CanonModel` (``base.py``), and the rest of the package (and timm, torchvision's
feature extraction, fx, TorchScript, torch.export, ONNX) uses it only through this contract:

Attributes
    ``name``, ``in_chans``, ``num_classes`` (0: no classifier, ``model(x)`` is then the head's features);
    ``num_features``: channels of ``forward_features``' output, the width of the globally pooled features;
    ``head_hidden_size``: width of ``forward_head(x, pre_logits=True)`` (the FC tower's hidden width with
    ``head="fc"``, else ``num_features``); ``min_size``: the smallest input side the network runs on, computed from
    its layers' output-size formulas; ``has_aux``: True when auxiliary classifiers branch off the chain in training
    (GoogLeNet with ``aux_heads=True``); ``feature_info``: the stages (``num_chs``, ``reduction``, ``module``);
    ``pretrained_cfg`` / ``default_cfg``: timm's data config (nominal input size, interpolation, crop, mean and std,
    first conv, classifier).

Forward
    ``forward(x)`` -> logits, in training and eval alike, after a shape check (an opaque ``torch.fx.wrap`` call,
    skipped by TorchScript). ``forward_features(x)`` -> ``(N, num_features, h, w)``; ``forward_head(x,
    pre_logits=False)``; ``forward_with_aux(x)`` -> ``layers.ModelOutput(logits, aux)``, where ``aux`` holds the
    auxiliary logits in training mode when ``has_aux`` (else ``()``): what a training loop calls to train them.
    ``forward_intermediates(x, indices=None, ...)``: the stage outputs of ``feature_info``, timm's semantics.

Structure
    ``blocks()`` -> ``[(name, module), ...]``: the model as an ordered chain whose composition equals ``forward(x)``
    (without the input check), holding the model's own modules: the stem (or the first conv group), each residual
    block (``layer1.0``, ``stage2.1``), conv group (``features.3``) or Inception module, then the head, split so that
    each Linear of an FC tower starts a block. Pipeline parallelism splits it (refusing ``has_aux`` models, whose aux
    heads branch off it in training); ``feature_blocks()`` is its body, the part before the head.
    ``set_grad_checkpointing(enable=True)``: recompute each feature block in backward (``layers.checkpoint_seq``),
    with the plain model's gradients and batch-norm statistics. ``get_classifier()``, ``reset_classifier(n)`` (0:
    identity), ``group_matcher(coarse=False)`` (stem / blocks / head, for timm's layer-wise decay).
"""

from . import alexnet, googlenet, resnet, resnet_cifar, vgg
from .alexnet import AlexNet
from .base import CanonModel
from .googlenet import GoogLeNet
from .resnet import ResNet
from .resnet_cifar import ResNetCifar
from .vgg import VGG

__all__ = ["AlexNet", "CanonModel", "GoogLeNet", "ResNet", "ResNetCifar", "VGG",
           "alexnet", "googlenet", "resnet", "resnet_cifar", "vgg"]  # fmt: skip
