"""Starting a run from weights the world already has: ``--init``, ``--freeze`` and ``--head-lr-mult``.

``--init SOURCE`` starts a new run (step 0, a new optimizer) from the weights of SOURCE:

- a convcanon run directory, ``model.safetensors`` or checkpoint: its record (``train.weights``) must describe the
  same model with the same options (a difference is named, with the ``--model-option`` that matches it);
- a torchvision state-dict file (``.pth``, as torchvision downloads it), read with ``weights_only=True`` so that a
  hostile file runs nothing, its keys mapped to ours (``models.torchvision_compat``);
- ``torchvision:NAME`` (``torchvision:ResNet50_Weights.IMAGENET1K_V2``): resolved through torchvision's weights API and
  downloaded once into torch hub's cache (``$TORCH_HOME/hub/checkpoints``); offline, the error names the URL and where
  to place the file by hand.

Every key must match the model except the class layer's: when the class count differs it is re-initialized and the
run says so ("fc: 1000 -> 10 classes, re-initialized"); any other missing, unexpected or differently shaped key is an
error naming the keys. ``--freeze backbone`` trains the head only, ``--freeze backbone:K`` the head and the last K
blocks of the body (the model's ``feature_blocks()``); frozen parameters get no gradient and no optimizer state (their
batch-norm statistics still follow the data). ``--head-lr-mult M`` gives the head M x the learning rate.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import resolve_options

TORCHVISION_PREFIX = "torchvision:"
_FREEZE = re.compile(r"none|backbone(:\d+)?")


@dataclass
class InitWeights:
    """Weights to start from, in convcanon's key space, and what they say about themselves."""

    state: dict[str, Tensor]
    source: str  # what --init said
    kind: str  # convcanon | torchvision file | torchvision weights
    mean: tuple[float, ...] | None = None  # the normalization they were trained with, where known
    std: tuple[float, ...] | None = None


def check_freeze(spec: str, model: nn.Module | None = None) -> None:
    """``--freeze``'s form, and with ``model`` (built on the meta device) that K is at most its body's blocks."""
    if not _FREEZE.fullmatch(spec):
        raise ValueError(f"--freeze must be none, backbone (train the head only) or backbone:K (the head and the last "
                         f"K blocks); got {spec!r}")
    if model is not None and ":" in spec:
        blocks = len(model.feature_blocks())
        if int(spec.split(":")[1]) > blocks:
            raise ValueError(f"--freeze {spec}: {model.name} has {blocks} body blocks; K must be at most {blocks}")


def check_init(source: str, model: str) -> None:
    """What can be checked of ``--init`` without reading weights or the network: the file exists, the torchvision
    weights name is known and belongs to ``model``'s torchvision twin."""
    if source.startswith(TORCHVISION_PREFIX):
        _torchvision_weights(source[len(TORCHVISION_PREFIX):], model)
    elif not Path(source).expanduser().exists():
        raise FileNotFoundError(f"--init {source}: no such file or directory (a convcanon run directory, weights "
                                "file or checkpoint, a torchvision .pth file, or torchvision:WEIGHTS_NAME)")


def _torchvision_weights(name: str, model: str) -> Any:
    import torchvision

    from ..models.torchvision_compat import torchvision_name

    try:
        weights = torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise ValueError(f"--init torchvision:{name}: torchvision has no weights of that name (e.g. "
                         "torchvision:ResNet50_Weights.IMAGENET1K_V2; torchvision.models.list_models() and "
                         "get_model_weights(NAME) list them)") from None
    twin = torchvision_name(model)
    builders = [b for b in torchvision.models.list_models() if torchvision.models.get_model_weights(b) is type(weights)]
    if twin is None or twin not in builders:
        raise ValueError(f"--init torchvision:{name} holds weights of torchvision's {' or '.join(builders)}; --model "
                         f"{model} has {'no torchvision twin' if twin is None else f'the twin {twin}'}")
    return weights


def read_init(source: str, model: str, options: dict[str, Any], *, num_classes: int, in_chans: int) -> InitWeights:
    """The weights ``--init source`` names, mapped to ``model``'s keys; raises ValueError/FileNotFoundError saying
    what does not fit."""
    if source.startswith(TORCHVISION_PREFIX):
        return _download_torchvision(source, model)
    path = Path(source).expanduser()
    if path.is_dir() or path.suffix == ".safetensors":
        return _from_convcanon(source, path, model, options, num_classes=num_classes, in_chans=in_chans)
    obj = _load_pickle_safely(path, source)
    if isinstance(obj, dict) and obj.get("format") == "convcanon-checkpoint":
        return _from_convcanon(source, path, model, options, num_classes=num_classes, in_chans=in_chans)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"--init {source}: not a state dict (a mapping of names to tensors) nor a convcanon "
                         "checkpoint")
    return InitWeights(_to_ours(obj, model, source), source, "torchvision file")


def _load_pickle_safely(path: Path, source: str) -> Any:
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"--init {source}: refusing to unpickle it: it would import or call code, or is not a "
                         f"torch file (nothing was executed): {str(err).splitlines()[0][:200]}") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"--init {source}: cannot be read as a torch file: {err}") from None


def _to_ours(state: dict[str, Tensor], model: str, source: str) -> dict[str, Tensor]:
    from ..models.torchvision_compat import from_torchvision, torchvision_name

    if torchvision_name(model) is None:
        raise ValueError(f"--init {source}: a torchvision state dict, but --model {model} has no torchvision twin "
                         "(`convcanon models` marks the ones that do)")
    return from_torchvision(model, state)


def _download_torchvision(source: str, model: str) -> InitWeights:
    from urllib.error import URLError

    weights = _torchvision_weights(source[len(TORCHVISION_PREFIX):], model)
    url = weights.url
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True,
                                                   weights_only=True)
    except (URLError, OSError, RuntimeError) as err:
        raise ValueError(f"--init {source}: could not fetch {url} ({err}); offline, download it elsewhere and place it "
                         f"as {cache / Path(url).name}") from None
    transform = weights.transforms()
    return InitWeights(_to_ours(state, model, source), source, "torchvision weights",
                       tuple(transform.mean), tuple(transform.std))


def _from_convcanon(source: str, path: Path, model: str, options: dict[str, Any], *, num_classes: int,
                    in_chans: int) -> InitWeights:
    from .weights import read_weights

    weights = read_weights(path)
    record = weights.record
    if record["model"] != model:
        raise ValueError(f"--init {source} holds {record['model']} weights; pass --model {record['model']}")
    ours = resolve_options(model, num_classes=record["num_classes"],
                           **({**options, "in_chans": in_chans} if "in_chans" in record["options"] else options))
    differ = {k: v for k, v in record["options"].items() if k != "in_chans" and ours.get(k) != v}
    if differ:
        flags = " ".join(f"--model-option {k}={str(v).lower() if isinstance(v, bool) else v}"
                         for k, v in differ.items())
        raise ValueError(f"--init {source} was trained with other model options; pass {flags}")
    prep = record.get("preprocessing") or {}
    return InitWeights(weights.state, source, "convcanon", tuple(prep.get("mean", ())) or None,
                       tuple(prep.get("std", ())) or None)


def apply_init(model: nn.Module, init: InitWeights, say: Callable[[str], None]) -> dict[str, Any]:
    """Copy ``init`` into ``model``: every key must match except the class layer's, re-initialized (and said) when
    the class count differs. Returns what was done, for run.json."""
    own = model.state_dict()
    head = model.pretrained_cfg["classifier"]
    state = dict(init.state)
    reset = [k for k in own if k.startswith(head + ".") and k in state and state[k].shape != own[k].shape]
    if reset:
        was = int(state[f"{head}.weight"].shape[0]) if f"{head}.weight" in state else "?"
        say(f"{head}: {was} -> {model.num_classes} classes, re-initialized")
        for k in reset:
            del state[k]
    missing = [k for k in own if k not in state and k not in reset]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
              if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{what}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}" for what, keys in (
            ("missing", missing), ("unexpected", unexpected), ("other shapes", shapes)) if keys]
        raise ValueError(f"--init {init.source} does not fit --model {model.name}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=False)
    say(f"init: {len(state)} tensors from {init.source} ({init.kind})")
    return {"source": init.source, "kind": init.kind, "tensors": len(state), "reinitialized": reset,
            "mean": list(init.mean) if init.mean else None, "std": list(init.std) if init.std else None}


def freeze(model: nn.Module, spec: str, head_lr_mult: float, say: Callable[[str], None]) -> None:
    """``--freeze`` and ``--head-lr-mult`` on ``model`` (see the module docstring). The head's parameters carry
    ``lr_scale`` (read by ``optim.param_groups``)."""
    body = model.feature_blocks()
    body_ids = {id(p) for _, block in body for p in block.parameters()}
    head = [p for p in model.parameters() if id(p) not in body_ids]
    for p in head:
        p.lr_scale = head_lr_mult  # type: ignore[attr-defined]
    if head_lr_mult != 1.0:
        say(f"head: {sum(p.numel() for p in head):,} parameters at --lr x {head_lr_mult:g}")
    if spec == "none":
        return
    keep = int(spec.split(":")[1]) if ":" in spec else 0
    frozen = body[: len(body) - keep] if keep else body
    for _, block in frozen:
        for p in block.parameters():
            p.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"frozen: {len(frozen)} of {len(body)} body blocks ({frozen[0][0]} ... {frozen[-1][0]}); training "
        f"{trained:,} of {total:,} parameters")


__all__ = ["InitWeights", "TORCHVISION_PREFIX", "apply_init", "check_freeze", "check_init", "freeze", "read_init"]
