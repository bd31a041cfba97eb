"""Class probabilities for image files, with the model's own preprocessing (``model.pretrained_cfg``).

``image_files(inputs)`` expands files and folders (walked cycle-safe, ``data.walk``) into image files, listing what
cannot be read; ``predict(model, files)`` decodes each file as training's scan does (``data.scan.decode_checked``),
batches them, and yields one :class:`Prediction` per file, in order: the top-k classes with their probabilities, or
the reason the file could not be used. A bad file never stops the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.images import IMAGE_EXTENSIONS
from ..data.preprocess import eval_transform
from ..data.scan import decode_checked
from ..data.walk import Walker, shown


@dataclass
class Prediction:
    """One file's result: ``top_k`` as (class name, class index, probability), or ``error``."""

    path: str
    top_k: list[tuple[str, int, float]] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "top_k": [{"class": c, "index": i, "probability": round(p, 6)}
                                             for c, i, p in self.top_k]}


def image_files(inputs: Sequence[str | os.PathLike[str]]) -> tuple[list[str], list[tuple[str, str]]]:
    """(image files, (path, why) for what cannot be used): each input is a file (used whatever its extension) or a
    folder (its image files, by extension, recursively). Raises FileNotFoundError for an input that does not exist."""
    files: list[str] = []
    problems: list[tuple[str, str]] = []
    walker = Walker()
    for item in map(str, inputs):
        if not os.path.exists(item):
            raise FileNotFoundError(f"{shown(item)}: no such file or directory")
        if not os.path.isdir(item):
            files.append(item)
            continue
        walker.enter(item, os.stat(item))
        listing = walker.list(item)
        files += [p for p, _, _ in listing.files if Path(p).suffix.lower() in IMAGE_EXTENSIONS]
        problems += listing.problems
    return files, problems


def predict(model: nn.Module, files: Sequence[str], *, top_k: int = 5, batch_size: int = 64,
            device: torch.device | str = "cpu", progress: Callable[[int], None] | None = None
            ) -> Iterator[Prediction]:
    """The top ``top_k`` classes of each file, in order, batched by ``batch_size`` on ``device``; ``progress(n)`` is
    called after each batch with the files done in it."""
    cfg = model.pretrained_cfg
    transform = eval_transform(cfg)
    names = list(cfg.get("label_names") or [str(i) for i in range(model.num_classes)])
    k = min(top_k, model.num_classes)
    model = model.to(device).eval()
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        ready: list[tuple[int, Tensor]] = []
        results = [Prediction(path) for path in chunk]
        for i, path in enumerate(chunk):
            image, why = decode_checked(path)
            if image is None:
                results[i].error = why
                continue
            ready.append((i, transform(image)))
        if ready:
            with torch.no_grad():
                probs = model(torch.stack([x for _, x in ready]).to(device)).float().softmax(dim=1)
            top = probs.topk(k, dim=1)
            for (i, _), p, idx in zip(ready, top.values.tolist(), top.indices.tolist(), strict=True):
                results[i].top_k = [(names[c], c, prob) for c, prob in zip(idx, p, strict=True)]
        yield from results
        if progress is not None:
            progress(len(chunk))


__all__ = ["Prediction", "image_files", "predict"]
