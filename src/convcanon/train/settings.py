"""Settings checked before any side effect: what a run's config can get wrong is found here, before the process group,
the run directory, the data or the model exist, and each error names the flag to change.

``check_settings(cfg)`` runs first in ``Run.execute`` (and in ``convcanon train`` before anything else). It creates,
opens and writes nothing; in order:

1. every numeric range and choice (``config.validate``);
2. the device, and the precision on it: ``--device cuda`` without CUDA, ``--amp fp16`` off CUDA (``bf16`` runs on every
   device, ``auto`` cannot be wrong); ``--small-map-gemm`` on a GPU; ``--decode gpu`` where the GPU decoder cannot
   run;
3. the data spec (``data.parse_data``): its form, its folder and the folder's kind, the shape of its batches; nothing
   is read, decoded or scanned; the augmentation against it (a mean and std per channel, ``--decode gpu`` only with
   the default recipe);
4. the model: its name, its options (names and types, then the constructor's own checks) and the input the data will
   feed it, by building it on the meta device (shapes only: no memory, no initialization); ``in_chans`` and
   ``num_classes`` come from the data, never from ``--model-option``;
5. ``--freeze``, and ``--init``'s source: the file exists, or torchvision knows the weights and they fit ``--model``
   (nothing is read or downloaded).

``build_model`` is how every user of the zoo (the run, the benchmarks) builds a model for its input.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import nn

from ..data import DataSpec, parse_data
from ..data.recipe import IMAGENET_RATIO, IMAGENET_SCALE, OPTION_KEYS
from ..registry import create_model, model_info, model_options
from .config import TrainConfig, flag_name, validate
from .distributed import resolve_device
from .engine import resolve_amp
from .finetune import check_freeze, check_init
from .small_maps import GPU_REFUSAL

# Model options that the data decides, and what to change instead.
_FROM_THE_DATA = {
    "in_chans": "the input channels come from --data ({spec} has {value})",
    "num_classes": "the number of classes comes from --data ({spec} has {value})",
}


def check_settings(cfg: TrainConfig, where: str = "config") -> DataSpec:
    """Check ``cfg`` as the module docstring lists, without any side effect; returns the parsed data spec. Raises
    ValueError (FileNotFoundError for a missing data folder) naming the flag at fault; ``where`` prefixes the range
    errors (e.g. "--config FILE")."""
    validate(cfg, where)
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if cfg.amp != "auto":  # auto resolves to what the device has: never an error
        resolve_amp(cfg.amp, device)
    if cfg.small_map_gemm and device.type != "cpu":
        raise ValueError(GPU_REFUSAL)
    data = parse_data(cfg.data, image_size=cfg.image_size, decode=cfg.decode, data_root=cfg.data_root)
    check_augmentation(cfg, data)
    smallest = min(s for s in (data.image_size, cfg.train_crop_size, cfg.val_crop_size) if s)
    check_model(cfg, dataclasses.replace(data, image_size=smallest))
    if cfg.init is not None:
        check_init(cfg.init, cfg.model)
    return data


def check_augmentation(cfg: TrainConfig, data: DataSpec) -> None:
    """What the augmentation settings can get wrong against the data: one mean and std per channel, the GPU decoder
    (torchvision's default recipe only)."""
    for key in ("mean", "std"):
        values = getattr(cfg, key)
        if values and len(values) != data.in_chans:
            raise ValueError(f"--{key} gives {len(values)} value(s) and --data {cfg.data} has {data.in_chans} "
                             f"channel(s): give one per channel")
    default = {"hflip": 0.5, "scale": list(IMAGENET_SCALE), "ratio": list(IMAGENET_RATIO), "interpolation": "bilinear",
               "aa": "none", "reprob": 0.0}  # the folder recipe the GPU decoder runs
    custom = [k for k in OPTION_KEYS if getattr(cfg, k) not in (None, [], default.get(k))]
    if cfg.decode == "gpu" and custom:
        raise ValueError(f"--decode gpu runs torchvision's default folder recipe only, and {flag_name(custom[0])} "
                         "changes it: use --decode cpu or auto")


def check_model(cfg: TrainConfig, data: DataSpec) -> None:
    """The model of ``cfg`` for ``data``'s batches, built on the meta device: every error the real build would raise."""
    for key, why in _FROM_THE_DATA.items():
        if key in cfg.model_options:
            have = data.in_chans if key == "in_chans" else data.num_classes
            raise ValueError(f"--model-option {key}={cfg.model_options[key]}: {why.format(spec=cfg.data, value=have)}; "
                             f"leave the option out")
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.model_options, num_classes=data.num_classes, in_chans=data.in_chans,
                            image_size=data.image_size, for_what=f"--data {cfg.data}")
    check_freeze(cfg.freeze, model)


def build_model(name: str, options: dict[str, Any], *, num_classes: int, in_chans: int, image_size: int,
                for_what: str = "the input") -> nn.Module:
    """Model ``name`` with ``options`` for inputs of ``in_chans`` channels, ``image_size`` pixels square and
    ``num_classes`` classes; ``in_chans`` goes into the options of models that take it, and the rest is checked:
    an unknown name (``--model``), a bad option (``--model-option``), a channel count the model cannot take, or a side
    smaller than it accepts, is a ValueError naming the flag to change (``for_what`` says where the input comes from,
    e.g. "--data digits")."""
    try:
        info = model_info(name)
    except ValueError as err:
        raise ValueError(f"--model: {err}") from None
    options = dict(options)
    if "in_chans" in model_options(name) and "in_chans" not in options:
        options["in_chans"] = in_chans
    elif options.get("in_chans", info.input_size[0]) != in_chans:
        raise ValueError(f"--model {name} takes {options.get('in_chans', info.input_size[0])}-channel input but "
                         f"{for_what} has {in_chans} channel(s)")
    try:
        model = create_model(name, num_classes=num_classes, **options)
    except ValueError as err:
        raise ValueError(f"--model-option: {err}") from None
    min_size = getattr(model, "min_size", 1)
    if image_size < min_size:
        raise ValueError(f"--model {name} needs inputs of at least {min_size}x{min_size} pixels; {for_what} gives "
                         f"{image_size}x{image_size}: pass --image-size {min_size} (or larger) or pick a small-image "
                         "model")
    return model


__all__ = ["build_model", "check_augmentation", "check_model", "check_settings"]
