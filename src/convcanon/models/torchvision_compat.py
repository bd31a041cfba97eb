"""Load torchvision weights into convcanon models.

Each family module that has torchvision twins defines ``TORCHVISION_NAMES`` (our name -> torchvision builder name)
and ``from_torchvision(state_dict) -> state_dict`` (renames keys where our module names differ). Nothing is
downloaded: the caller brings the state dict (for example ``torchvision.models.resnet50(weights=...).state_dict()``
loaded from a local file).
"""

from __future__ import annotations

from torch import Tensor, nn

from . import alexnet, googlenet, resnet, vgg

_FAMILIES = (alexnet, vgg, googlenet, resnet)


def torchvision_name(name: str) -> str | None:
    """The torchvision builder that has the same architecture as our model ``name``, or None."""
    for family in _FAMILIES:
        if name in family.TORCHVISION_NAMES:
            return str(family.TORCHVISION_NAMES[name])
    return None


def load_torchvision_state_dict(model: nn.Module, name: str, state_dict: dict[str, Tensor]) -> nn.Module:
    """Copy a torchvision state dict into ``model`` (built by ``create_model(name, ...)``); strict key match."""
    for family in _FAMILIES:
        if name in family.TORCHVISION_NAMES:
            model.load_state_dict(family.from_torchvision(dict(state_dict)), strict=True)
            return model
    raise ValueError(f"model {name!r} has no torchvision twin; models with one: {', '.join(_twins())}")


def _twins() -> list[str]:
    return sorted(n for family in _FAMILIES for n in family.TORCHVISION_NAMES)
