"""MNIST-format (idx) files built to slip through: a wrong magic number or element type, another image shape, a file
cut short or with bytes after its data, labels outside 0..9, images and labels that do not pair up, a gzip file that
is not one, and a header declaring terabytes.

Each case: exit code 2 from `convcanon train`, a message naming the file with no Python traceback, the data files
unchanged, and no run written.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hostile_trees import no_traceback, snapshot

from convcanon.cli import main

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"


def header(kind: int, shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, kind, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)


def idx(array: np.ndarray) -> bytes:
    return header(0x08, array.shape) + array.astype(np.uint8).tobytes()


def mnist(root: Path, **damaged: bytes) -> Path:
    """A folder of the four gzip'd idx files (4 images each); ``damaged`` maps a file name (``.`` as ``_``) to the raw
    (not yet gzip'd) bytes it gets instead."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        files = {f"{split}-images-idx3-ubyte.gz": idx(rng.integers(0, 256, (4, 28, 28))),
                 f"{split}-labels-idx1-ubyte.gz": idx(np.array([0, 1, 2, 9]))}
        for name, data in files.items():
            (root / name).write_bytes(gzip.compress(damaged.get(name.replace(".", "_").replace("-", "_"), data)))
    return root


def refused(tmp_path: Path, capsys, root: Path, *expected: str) -> str:
    before = snapshot(root)
    out = tmp_path / "run"
    code = main(["train", "--data", f"mnist:{root}", "--out", str(out), "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    no_traceback(err)
    assert err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    assert snapshot(root) == before
    assert not (out / "config.yaml").exists() and not (out / "model.safetensors").exists()
    return err


def key(name: str) -> str:
    return name.replace(".", "_").replace("-", "_")


IMAGES = np.zeros((4, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize(("file", "data", "says"), [
    (TRAIN_IMAGES, b"\x01\x02" + idx(IMAGES)[2:], "is not an idx file"),
    (TRAIN_IMAGES, header(0x0D, (4, 28, 28)) + np.zeros((4, 28, 28), ">f4").tobytes(),
     "an idx file of type 0x0d with 3 dimensions; expected unsigned bytes (0x08) with 3 dimension(s)"),
    (TRAIN_IMAGES, idx(np.zeros((4, 32, 32))), "holds an array of shape 4 x 32 x 32; expected N x 28 x 28"),
    (TRAIN_IMAGES, idx(IMAGES)[:1000], "is cut short: its header declares 3,136 values, the file holds 984"),
    (TRAIN_IMAGES, idx(IMAGES)[:10], "is cut short inside its header"),
    (TRAIN_IMAGES, idx(IMAGES) + b"\0", "holds more bytes than the 3,136 values its header declares"),
    (TRAIN_LABELS, idx(np.array([0, 1, 12, 10])), "2 labels outside 0..9 (e.g. 12)"),
    (TRAIN_LABELS, idx(np.array([0, 1, 2])), "holds 4 images but"),
    (TRAIN_IMAGES, idx(np.zeros((0, 28, 28))), "holds no images"),
    (TRAIN_IMAGES, header(0x08, (4_000_000_000, 28, 28)), "needs 3,136.0 GB of memory"),
])  # fmt: skip
def test_a_damaged_idx_file_is_refused_with_its_name(tmp_path, capsys, file, data, says):
    root = mnist(tmp_path / "mnist", **{key(file): data})
    refused(tmp_path, capsys, root, str(root / file), says)


def test_a_gz_file_that_is_not_gzip_is_refused(tmp_path, capsys):
    root = mnist(tmp_path / "mnist")
    (root / TRAIN_LABELS).write_bytes(b"this is not gzip data at all")
    refused(tmp_path, capsys, root, str(root / TRAIN_LABELS), "is not a readable gzip file", "download it again")


def test_a_gzip_stream_cut_short_is_refused(tmp_path, capsys):
    root = mnist(tmp_path / "mnist")
    whole = (root / TRAIN_IMAGES).read_bytes()
    (root / TRAIN_IMAGES).write_bytes(whole[: len(whole) // 2])
    refused(tmp_path, capsys, root, str(root / TRAIN_IMAGES))
