"""Model registry: ``@register_model`` on a builder, ``create_model(name, **options)`` to build it.

Each family declares its options once, as a table of :class:`Option` (name, type, default, valid values, help; the
models of a family take that table, some without an option or with another default). ``create_model`` checks names,
types, choices and ranges against it before anything is built, so a typo in ``--model-option`` is an error that names
the valid options instead of a crash deep inside a constructor; ``None`` overrides are dropped (as in timm) so that CLI
defaults never clobber a model's own defaults. The registry knows the models only through what registers itself:
importing ``convcanon`` imports the zoo, whose modules run ``@register_model``.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

from torch import nn

M = TypeVar("M", bound=nn.Module)

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class Option:
    """One option of a model: its name, type (bool, int, float or str), default, valid values and meaning.

    ``choices`` lists the valid values of a choice; ``low`` (inclusive) and ``high`` (exclusive) bound a number. A
    default of None means "the model decides" (AlexNet's ``lrn``: on for the paper's layouts unless batch norm is on).
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None

    def check(self, value: object, model: str) -> None:
        """Raise a ValueError naming the valid values when ``value`` is not one of them."""
        where = f"option {self.name!r} of model {model!r}"
        if self.choices:
            if value not in self.choices or type(value) is not type(self.choices[0]):
                raise ValueError(f"{where} must be one of {', '.join(map(str, self.choices))}; got {value!r}")
            return
        if not _is_a(value, self.type):
            raise ValueError(f"{where} must be {_TYPE_NAMES[self.type]}; got {value!r}")
        number = float(value) if isinstance(value, (int, float)) else None
        if number is not None and (self.low is not None and number < self.low or self.high is not None
                                   and number >= self.high):
            raise ValueError(f"{where} must be {self.valid()}; got {value!r}")

    def valid(self) -> str:
        """The valid values in words: ``relu, tanh, sigmoid``, ``true or false``, ``0 <= x < 1``..."""
        if self.choices:
            return ", ".join(map(str, self.choices))
        if self.low is not None or self.high is not None:
            low = f"{self.low:g} <= " if self.low is not None else ""
            high = f" < {self.high:g}" if self.high is not None else ""
            return f"{_TYPE_NAMES[self.type]} {low}x{high}"
        return _TYPE_NAMES[self.type]


def _is_a(value: object, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def without(table: tuple[Option, ...], *names: str) -> tuple[Option, ...]:
    """A family's option table less some options (``plain18`` has no ``residual``)."""
    return tuple(o for o in table if o.name not in names)


def with_defaults(table: tuple[Option, ...], **defaults: object) -> tuple[Option, ...]:
    """A family's option table with other defaults (``googlenet_bn``'s head dropout is 0.2)."""
    unknown = set(defaults) - {o.name for o in table}
    if unknown:
        raise ValueError(f"no such options to give defaults: {sorted(unknown)}")
    return tuple(replace(o, default=defaults[o.name]) if o.name in defaults else o for o in table)


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model without building it.

    ``options`` is the model's option table (every keyword ``create_model`` accepts besides ``num_classes``);
    ``summary`` is the first line of its builder's docstring.
    """

    name: str
    family: str  # alexnet, vgg, googlenet, resnet, resnet_cifar
    depth: int  # weighted layers along the main path, as the paper counts them
    input_size: tuple[int, int, int]  # default (channels, height, width)
    default_num_classes: int
    builder: Callable[..., nn.Module] = field(repr=False, compare=False)
    summary: str = ""
    options: tuple[Option, ...] = ()


_MODELS: dict[str, ModelInfo] = {}


def register_model(
    *,
    family: str,
    depth: int,
    input_size: tuple[int, int, int],
    options: tuple[Option, ...],
    num_classes: int = 1000,
) -> Callable[[Callable[..., M]], Callable[..., M]]:
    """Register a builder under its function name, with its option table. The builder's first docstring line is its
    summary. The decorated builder validates like ``create_model``: ``resnet20(activation="gelu")`` names the valid
    activations."""

    def wrap(builder: Callable[..., M]) -> Callable[..., M]:
        name = builder.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        summary = (builder.__doc__ or "").strip().splitlines()[0] if builder.__doc__ else ""
        _MODELS[name] = ModelInfo(name, family, depth, input_size, num_classes, builder, summary, options)

        @functools.wraps(builder)
        def build(num_classes: int | None = None, **kwargs: Any) -> M:
            return cast(M, create_model(name, num_classes=num_classes, **kwargs))

        return build

    return wrap


def _families() -> list[str]:
    return sorted({info.family for info in _MODELS.values()})


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the registered models, sorted: all of them, one family (``"resnet_cifar"``), or those matching an
    fnmatch pattern (``"resnet*"``, ``"*_cifar"``). A name that is neither a family, a pattern nor a model is an
    error that lists the families."""
    names = sorted(_MODELS)
    if pattern is None:
        return names
    if pattern in _families():
        return [n for n in names if _MODELS[n].family == pattern]
    if any(c in pattern for c in "*?["):
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    if pattern in _MODELS:
        return [pattern]
    raise ValueError(f"unknown model family {pattern!r}; families: {', '.join(_families())} (or a pattern such as "
                     "'resnet*')")  # fmt: skip


def _unknown(name: str) -> ValueError:
    close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.4)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return ValueError(f"unknown model {name!r}{hint}. `convcanon models` lists all {len(_MODELS)} models.")


def model_info(name: str) -> ModelInfo:
    """Family, depth, default input size and class count, summary and option table of ``name`` (nothing is built)."""
    if name not in _MODELS:
        raise _unknown(name)
    return _MODELS[name]


def model_options(name: str) -> dict[str, Option]:
    """The options ``name`` accepts besides ``num_classes``, by name: type, default, valid values and help."""
    return {o.name: o for o in model_info(name).options}


def resolve_options(name: str, num_classes: int | None = None, **options: object) -> dict[str, Any]:
    """Check ``options`` of model ``name`` and return every option's value (given or default), ``num_classes``
    included. Raises ValueError for an unknown model or option, a wrong type, a value out of the choices or range.
    ``None`` values are dropped (the model's default applies). Nothing is built."""
    info = model_info(name)
    if num_classes is None:
        num_classes = info.default_num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an integer >= 1 (or 0: no classifier), got {num_classes!r}")
    accepted = model_options(name)
    given = {k: v for k, v in options.items() if v is not None}
    for key, value in given.items():
        if key not in accepted:
            close = difflib.get_close_matches(key, list(accepted), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            valid = ", ".join(sorted(accepted)) or "none"
            raise ValueError(f"model {name!r} has no option {key!r}{hint}; valid options: {valid}")
        accepted[key].check(value, name)
    return {"num_classes": num_classes, **{k: o.default for k, o in accepted.items()}, **given}


def create_model(name: str, num_classes: int | None = None, **options: object) -> nn.Module:
    """Build a registered model (a ``convcanon.models.CanonModel``).

    >>> model = create_model("resnet20", num_classes=10, activation="tanh")

    ``num_classes`` defaults to the model's own (1000, or 10 for the small-image models); 0 builds it without a
    classifier (timm's convention: ``model(x)`` is then the pooled features). Raises ValueError for an unknown name
    (listing the closest ones), an unknown option, an option of the wrong type or out of its valid values, before
    anything is built; the message names the valid choices.
    """
    return model_info(name).builder(**resolve_options(name, num_classes, **options))
