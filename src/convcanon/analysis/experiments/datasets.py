"""Which data an experiment runs on: the ``--data`` of ``convcanon report`` and ``convcanon experiment``.

Each experiment module declares ``DATA``, the kinds of data it supports and the input side it trains at
(``{"digits": 8}`` for the experiments built on the embedded 8x8 digits, the default; ``{"cifar10": 32, ...}`` for the
paper protocols). The report runs the experiments that support the data it is given.

The cache must not depend on where the data sits (a report is assembled from units run on several machines, each with
its own copy of CIFAR-10), so a unit's key holds the data's *identity* (:func:`data_identity`: its kind and a
fingerprint of its files' sizes and first bytes), never its path.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

DEFAULT_DATA = "digits"
DIGITS_ONLY: dict[str, int] = {"digits": 8}
NAMES = {"digits": "the embedded 8x8 handwritten digits of scikit-learn", "cifar10": "CIFAR-10",
         "cifar100": "CIFAR-100", "mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "folder": "an ImageFolder tree",
         "synthetic": "synthetic random images"}
FINGERPRINT_BYTES = 1 << 16  # the first 64 KiB of each file, with every file's size: cheap, and tells sets apart


def supported(mod: Any) -> dict[str, int]:
    """The data kinds an experiment module supports, with the input side it trains at."""
    return dict(getattr(mod, "DATA", DIGITS_ONLY))


def parse(spec: str):
    """``spec`` read by the data layer (no file opened)."""
    from ...data.spec import parse_data

    return parse_data(spec)


def data_kind(spec: str) -> str:
    return parse(spec).kind


def check_supported(mod: Any, spec: str) -> str:
    """The kind of ``spec``, or a ValueError saying which data the experiment runs on."""
    kind = data_kind(spec)
    kinds = supported(mod)
    if kind not in kinds:
        forms = ", ".join(k if k == "digits" else f"{k}:PATH" for k in kinds)
        raise ValueError(f"experiment {mod.NAME} runs on {forms}, not on --data {spec} ({kind})")
    return kind


@lru_cache(maxsize=16)
def data_identity(spec: str) -> str:
    """What identifies the data in a cache key: the kind, and for data on disk a hash of its files' names, sizes and
    first bytes (never the path, so that caches from several machines can be merged). A standard set named without a
    path is downloaded first (once, into the data root)."""
    from ...data.spec import fetch_data

    parsed = parse(spec)
    fetch_data(parsed)
    if parsed.path is None:
        return parsed.spec
    root = Path(parsed.path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if parsed.kind == "folder" else [
        p for p in sorted(root.iterdir()) if p.is_file()]
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(root)}:{p.stat().st_size}\n".encode())
        if parsed.kind != "folder":  # CIFAR: a handful of files; a folder tree: names and sizes suffice
            with open(p, "rb") as f:
                h.update(f.read(FINGERPRINT_BYTES))
    return f"{parsed.kind}#{h.hexdigest()[:12]}"


def default_out(mode: str, spec: str) -> str:
    """The commands' default output directory: evidence/<mode> for digits, evidence/<mode>-<kind> otherwise (so that
    the digits and CIFAR versions of one experiment do not take turns in one results.json)."""
    kind = data_kind(spec)
    return f"evidence/{mode}" if kind == "digits" else f"evidence/{mode}-{kind}"


def keyed(params: Any) -> Any:
    """``params`` as hashed into a cache key: every ``data`` spec, at any depth, replaced by the data's identity (its
    kind and content, not its path; "digits" stays "digits", so the digits keys are what they always were)."""
    if isinstance(params, dict):
        return {k: data_identity(v) if k == "data" and isinstance(v, str) else keyed(v) for k, v in params.items()}
    if isinstance(params, list):
        return [keyed(v) for v in params]
    return params


def describe(spec: str) -> str:
    """The data and its source, for the report's header."""
    parsed = parse(spec)
    name = NAMES.get(parsed.kind, parsed.kind)
    where = f" from `{parsed.path}`" if parsed.path is not None else ""
    return f"{name}{where} ({parsed.in_chans}x{parsed.image_size}x{parsed.image_size}, {parsed.num_classes} classes)"
