"""Checkpoints a killed run can always resume from, and that load without running code.

Layout of a run directory::

    RUN/checkpoints/step-00001234.pt   full training state after optimizer step 1234 (the last ``keep_last`` kept)
    RUN/checkpoints/best.pt            the checkpoint with the best test accuracy so far
    RUN/model.safetensors              the final weights (``save_safetensors``)

A checkpoint is a dict ``{"format": "convcanon-checkpoint", "version": 1, "model", "optimizer", "scaler", "step",
"epoch", "batch_in_epoch", "rng", "classes", "config", "metrics", ...}`` written by ``torch.save`` and read by
``torch.load(weights_only=True)``: only tensors, numbers, strings, None, lists, tuples and dicts, so loading a file
never imports or calls anything named in it.

Every file is written atomically through ``convcanon.io`` (a temporary file, fsync, rename, fsync of the directory):
a kill at any instant leaves either the old file or the complete new one under the final name; a temporary file is
never taken for a checkpoint and is removed by the next save. Only one process (rank 0) may write a run's checkpoints
at a time.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from ..io import atomic_link_or_copy, atomic_write, atomic_write_bytes, remove_stale_temps

FORMAT = "convcanon-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("model", "optimizer", "step", "epoch", "batch_in_epoch", "rng", "classes", "config")
CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best.pt"


def model_weights(path: Path, state: Mapping[str, Any]) -> dict[str, Tensor]:
    """The model weights a checkpoint file stands for: ``best.pt``'s are those that scored the run's best evaluation,
    the model's or its weight average's (``metrics["best_weights"]``, --model-ema); any other checkpoint's are its
    model's."""
    if Path(path).name == BEST_NAME and state.get("metrics", {}).get("best_weights") == "ema" and "ema" in state:
        return state["ema"]["module"]
    return state["model"]

_STEP_RE = re.compile(r"^step-(\d+)\.pt$")
# The error torch.load(weights_only=True) raises when a pickle names a global it will not import (or an opcode it
# will not run); stable wording since torch 1.13.
_WEIGHTS_ONLY_REFUSAL = "Weights only load failed"
_REFUSAL_DETAIL_RE = re.compile(r"(Unsupported[^\n]*|Trying to[^\n]*)")


class CorruptCheckpointError(ValueError):
    """A checkpoint file that is truncated, damaged or not a ``torch.save`` archive at all."""


class CheckpointFallbackWarning(UserWarning):
    """``load_latest`` skipped a corrupt checkpoint and fell back to an older one."""


# ------------------------------------------------------------------------------------------------ checkpoint files

_SCALARS = (bool, int, float, str, type(None), torch.dtype, torch.Size)
_CONTAINERS = (dict, collections.OrderedDict, list, tuple)


def _check_loadable(obj: Any, where: str) -> None:
    """Raise if ``obj`` holds anything ``torch.load(weights_only=True)`` would refuse, naming where it is.

    Exact type checks on purpose: ``numpy.float64`` is a ``float`` subclass that pickles as a NumPy global and would
    make the checkpoint unloadable; catching it here, at save time, names the culprit instead of failing the resume.
    """
    kind = type(obj)
    if isinstance(obj, Tensor) or kind in _SCALARS:
        return
    if kind in (dict, collections.OrderedDict):
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise TypeError(f"checkpoint key {where}[{key!r}] is a {type(key).__name__}; use str or int keys")
            _check_loadable(value, f"{where}[{key!r}]")
        return
    if kind in (list, tuple):
        for i, value in enumerate(obj):
            _check_loadable(value, f"{where}[{i}]")
        return
    raise TypeError(
        f"checkpoint value {where} is a {kind.__module__}.{kind.__qualname__}; a checkpoint holds only tensors, "
        "numbers, strings, None, lists, tuples and dicts (so that torch.load(weights_only=True) reads it): convert it "
        "first, e.g. with float(...), int(...), str(...) or .tolist()"
    )


def _checkpoint_payload(state: Mapping[str, Any]) -> dict[str, Any]:
    if state.get("format", FORMAT) != FORMAT or state.get("version", VERSION) != VERSION:
        raise ValueError(f"state has format={state.get('format')!r} version={state.get('version')!r}; leave both out "
                         f"(save_checkpoint writes format={FORMAT!r} version={VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}; a convcanon checkpoint holds {list(REQUIRED_KEYS)}")
    for key in ("step", "epoch", "batch_in_epoch"):
        if type(state[key]) is not int or state[key] < 0:
            raise ValueError(f"checkpoint {key} must be a non-negative int, got {state[key]!r}")
    payload = {"format": FORMAT, "version": VERSION, "scaler": None, "metrics": {}, **state}
    _check_loadable(payload, "state")
    return payload


def checkpoint_path(run_dir: str | os.PathLike[str], step: int) -> Path:
    """Where the checkpoint after optimizer step ``step`` of the run in ``run_dir`` lives."""
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def save_checkpoint(run_dir: str | os.PathLike[str], state: Mapping[str, Any], *, keep_last: int = 3,
                    best: bool = False) -> Path:
    """Write ``state`` as ``run_dir/checkpoints/step-{step:08d}.pt`` atomically and return that path.

    Then removes step checkpoints beyond the newest ``keep_last`` (never the one just written, never ``best.pt``)
    and temporary files left by killed writes. ``best=True`` also points ``best.pt`` at this checkpoint (a hard link,
    or a copy where the file system has none), atomically. ``format``/``version`` are filled in; ``scaler`` defaults
    to None and ``metrics`` to ``{}``.
    """
    if type(keep_last) is not int or keep_last < 1:
        raise ValueError(f"keep_last must be an int >= 1, got {keep_last!r}")
    payload = _checkpoint_payload(state)
    directory = Path(run_dir) / CHECKPOINT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(directory)
    path = atomic_write(checkpoint_path(run_dir, payload["step"]), lambda f: torch.save(payload, f))
    if best:
        atomic_link_or_copy(path, path.with_name(BEST_NAME))  # the checkpoint is durable: a second name costs no copy
    for old in find_checkpoints(run_dir)[keep_last:]:
        if old != path:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
    return path


def find_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The step checkpoints of the run in ``run_dir``, newest (highest step) first; temporary files are not included."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found, key=lambda sp: sp[0], reverse=True)]


def _verify_zip(path: Path, f: IO[bytes]) -> None:
    """Check the archive's directory and every member's CRC-32: torch.load itself does not notice flipped bytes."""
    try:
        with zipfile.ZipFile(f) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size > 0:  # written with torch's CRC computation switched off
                    continue
                with archive.open(info) as member:  # raises BadZipFile on a CRC mismatch at the end of the member
                    while member.read(1 << 22):
                        pass
    except MemoryError:
        raise
    except Exception as e:  # BadZipFile, EOFError, zlib.error, NotImplementedError: damage shows up in many forms
        raise CorruptCheckpointError(f"{path} is truncated or corrupt: {e or type(e).__name__}") from e


def _refusal_detail(message: str) -> str:
    m = _REFUSAL_DETAIL_RE.search(message)
    return f" ({m.group(1).strip()})" if m else ""


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a convcanon checkpoint onto the CPU without unpickling code.

    Raises ``ValueError`` for a file that is not a convcanon checkpoint (another dict, another format version, or a
    pickle that would import or call something: refused, nothing executed), ``CorruptCheckpointError`` (a
    ``ValueError``) for a truncated or damaged one, and ``FileNotFoundError`` for a missing one.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head.startswith(b"PK"):
            _verify_zip(path, f)
            f.seek(0)
        elif not head.startswith(b"\x80"):  # neither a zip archive (torch.save) nor a pickle (legacy torch.save)
            what = "empty" if not head else f"not a torch.save archive (it starts with {head!r})"
            raise CorruptCheckpointError(f"{path} is {what}: truncated or corrupt, or not a checkpoint")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's notes on pickle protocols would only confuse the error
                obj = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if _WEIGHTS_ONLY_REFUSAL in str(e):
                raise ValueError(f"refusing to unpickle {path}{_refusal_detail(str(e))}: it would import or call "
                                 "code (not a convcanon checkpoint; nothing was executed)") from None
            raise CorruptCheckpointError(f"{path} is truncated or corrupt: {e}") from e
        except MemoryError:
            raise
        except Exception as e:  # torch reports damage as RuntimeError, OSError, EOFError, KeyError, ... by version
            raise CorruptCheckpointError(f"{path} is truncated or corrupt: {type(e).__name__}: {e}") from e
    expected = f"expected a dict with format={FORMAT!r} and version={VERSION}"
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a convcanon checkpoint: {expected}, got a {type(obj).__name__}")
    if obj.get("format") != FORMAT:
        keys = sorted(map(str, obj))[:8]
        raise ValueError(f"{path} is not a convcanon checkpoint: {expected}, got a dict with keys {keys}")
    if obj.get("version") != VERSION:
        raise ValueError(f"{path} is a convcanon checkpoint of format version {obj.get('version')!r}; this convcanon "
                         f"reads version {VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise ValueError(f"{path} is an incomplete convcanon checkpoint: it lacks {missing}")
    for key in ("step", "epoch", "batch_in_epoch"):
        if type(obj[key]) is not int or obj[key] < 0:
            raise ValueError(f"{path} is not a valid convcanon checkpoint: its {key} is {obj[key]!r}, not a "
                             "non-negative integer")
    for key, kind in (("model", dict), ("config", dict), ("classes", list)):
        if not isinstance(obj[key], kind):
            raise ValueError(f"{path} is not a valid convcanon checkpoint: its {key} is a {type(obj[key]).__name__}, "
                             f"not a {kind.__name__}")
    return obj


def load_latest(run_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], Path] | None:
    """The newest valid checkpoint of the run in ``run_dir`` and its path, or None when it has none.

    A corrupt or truncated checkpoint is skipped with a ``CheckpointFallbackWarning`` naming it and the reason, and the
    next older one is tried. A file that is not a convcanon checkpoint at all (foreign, newer format, or an unsafe
    pickle) is an error, not skipped: it does not belong in a run directory. ``CorruptCheckpointError`` when every
    checkpoint is corrupt.
    """
    paths = find_checkpoints(run_dir)
    problems = []
    for path in paths:
        try:
            return load_checkpoint(path), path
        except CorruptCheckpointError as e:
            problems.append(str(e))
            warnings.warn(f"skipping checkpoint {path}: {e}; falling back to the next older one",
                          CheckpointFallbackWarning, stacklevel=2)
    if problems:
        raise CorruptCheckpointError(f"no valid checkpoint in {Path(run_dir) / CHECKPOINT_DIR}: " + "; ".join(problems))
    return None


# ------------------------------------------------------------------------------------------------------ safetensors


def _safetensors_ready(model_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous tensors, no storage shared between names (safetensors refuses aliasing, e.g. tied weights)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model_state.items():
        if type(name) is not str or not isinstance(tensor, Tensor):
            raise TypeError(f"safetensors holds str -> Tensor; {name!r} maps to a {type(tensor).__name__}")
        t = tensor.detach().cpu()
        ptr = t.untyped_storage().data_ptr()
        if ptr and ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t.contiguous()
    return out


def save_safetensors(model_state: Mapping[str, Tensor], path: str | os.PathLike[str],
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write weights as a safetensors file atomically; ``metadata`` is str -> str (e.g. model name, classes as JSON)."""
    metadata = dict(metadata or {})
    bad = [k for k, v in metadata.items() if type(k) is not str or type(v) is not str]
    if bad:
        raise TypeError(f"safetensors metadata must map str to str; encode {bad} as strings (e.g. json.dumps)")
    return atomic_write_bytes(path, safetensors_bytes(_safetensors_ready(model_state), metadata=metadata or None))


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a safetensors file onto the CPU. ``CorruptCheckpointError`` when it is damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError (and others) for damaged headers and sizes
        raise CorruptCheckpointError(f"{path} is not a valid safetensors file: {e}") from e


def safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The str -> str metadata stored in a safetensors file's header."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise CorruptCheckpointError(f"{path} is not a valid safetensors file: {e}") from e


__all__ = [
    "BEST_NAME", "CHECKPOINT_DIR", "FORMAT", "REQUIRED_KEYS", "VERSION", "CheckpointFallbackWarning",
    "CorruptCheckpointError", "checkpoint_path", "find_checkpoints", "load_checkpoint", "load_latest",
    "load_safetensors", "safetensors_metadata", "save_checkpoint", "save_safetensors",
]
