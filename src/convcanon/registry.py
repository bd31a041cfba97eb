"""Model registry: ``@register_model`` on a builder, ``create_model(name, **options)`` to build it.

Builders declare their options as keyword-only arguments with type annotations; ``create_model`` checks names and
types against that signature before anything is built, so a typo in ``--model-option`` is an error that names the
valid options instead of a crash deep inside a constructor. ``None`` overrides are dropped (as in timm) so that CLI
defaults never clobber a model's own defaults.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model without building it."""

    name: str
    family: str  # alexnet, vgg, googlenet, resnet, resnet_cifar ...
    depth: int  # weighted layers along the main path, as the paper counts them
    input_size: tuple[int, int, int]  # default (channels, height, width)
    default_num_classes: int
    builder: Callable[..., nn.Module] = field(repr=False, compare=False)
    summary: str = ""


_MODELS: dict[str, ModelInfo] = {}


def register_model(
    *, family: str, depth: int, input_size: tuple[int, int, int], num_classes: int = 1000
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under its function name. The builder's first-line docstring is its summary."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = builder.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        summary = (builder.__doc__ or "").strip().splitlines()[0] if builder.__doc__ else ""
        _MODELS[name] = ModelInfo(name, family, depth, tuple(input_size), num_classes, builder, summary)
        return builder

    return wrap


def _ensure_loaded() -> None:
    # Importing the models package runs every family's @register_model.
    from . import models  # noqa: F401


def list_models(family: str | None = None) -> list[str]:
    """Names of every registered model (optionally one family), sorted."""
    _ensure_loaded()
    return sorted(n for n, info in _MODELS.items() if family is None or info.family == family)


def _unknown(name: str) -> ValueError:
    close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.4)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return ValueError(f"unknown model {name!r}{hint}. `convcanon models` lists all {len(_MODELS)} models.")


def model_info(name: str) -> ModelInfo:
    _ensure_loaded()
    if name not in _MODELS:
        raise _unknown(name)
    return _MODELS[name]


def model_options(name: str) -> dict[str, inspect.Parameter]:
    """The options a model's builder accepts (keyword-only parameters other than num_classes)."""
    sig = inspect.signature(model_info(name).builder)
    return {p.name: p for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY and p.name != "num_classes"}


def _type_ok(value: object, annotation: object) -> bool:
    if annotation is inspect.Parameter.empty or annotation is typing.Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def create_model(name: str, num_classes: int | None = None, **options: object) -> nn.Module:
    """Build a registered model.

    >>> model = create_model("resnet20", num_classes=10, activation="tanh")

    Raises ValueError for an unknown name (listing the closest ones), ``num_classes < 1``, an unknown option or an
    option of the wrong type; the message names the valid choices.
    """
    info = model_info(name)
    options = {k: v for k, v in options.items() if v is not None}
    if num_classes is None:
        num_classes = info.default_num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    accepted = model_options(name)
    hints = typing.get_type_hints(info.builder)
    for key, value in options.items():
        if key not in accepted:
            valid = ", ".join(sorted(accepted)) or "none"
            raise ValueError(f"model {name!r} has no option {key!r}; valid options: {valid}")
        expected = hints.get(key, inspect.Parameter.empty)
        if not _type_ok(value, expected):
            shown = getattr(expected, "__name__", None) or str(expected).replace("typing.", "")
            raise ValueError(f"option {key!r} of model {name!r} must be {shown}, got {value!r}")
    return info.builder(num_classes=num_classes, **options)
