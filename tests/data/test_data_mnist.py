"""The MNIST and Fashion-MNIST idx reader, on tiny folders in the real format: gzip'd as published or not, in
torchvision's ``MNIST/raw`` layout, into the same in-memory source as CIFAR."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from convcanon.data import InMemorySource, open_data, parse_data
from convcanon.data.mnist import FILES, read_idx


def idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_mnist(folder: Path, *, train: int = 8, test: int = 5, gz: bool = True) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, train, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": np.arange(test, dtype=np.uint8) % 10}
    for name, array in arrays.items():
        data = idx(array)
        (folder / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_the_pixels_and_labels_are_the_files(tmp_path, gz):
    arrays = fake_mnist(tmp_path / "m", gz=gz)
    source = open_data(f"mnist:{tmp_path / 'm'}")
    assert isinstance(source, InMemorySource)
    info = source.info
    assert (info.name, info.in_chans, info.image_size, info.num_classes, info.train_size, info.test_size) == (
        "mnist", 1, 28, 10, 8, 5)
    assert info.classes == tuple(str(d) for d in range(10)) and info.spec == f"mnist:{(tmp_path / 'm').absolute()}"
    x, y = next(source.test_batches(5))
    assert y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    mean, std = torch.tensor(info.mean), torch.tensor(info.std)
    pixels = (x * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)) * 255
    assert torch.allclose(pixels.squeeze(1), torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float(), atol=1e-3)
    assert info.augment == "pad 3 + random crop 28"  # translation only: a mirrored digit is no digit


def test_fashion_mnist_has_zalandos_names_and_flips(tmp_path):
    fake_mnist(tmp_path / "f")
    info = open_data(f"fashion-mnist:{tmp_path / 'f'}").info
    assert info.classes[0] == "T-shirt/top" and info.classes[9] == "Ankle boot"
    assert "flip" in info.augment


def test_torchvisions_root_is_found_and_resized_on_request(tmp_path):
    fake_mnist(tmp_path / "tv" / "FashionMNIST" / "raw")
    spec = parse_data(f"fashion-mnist:{tmp_path / 'tv'}", image_size=32)
    assert (spec.path, spec.in_chans, spec.image_size) == (tmp_path / "tv" / "FashionMNIST" / "raw", 1, 32)
    assert open_data(f"fashion-mnist:{tmp_path / 'tv'}", image_size=32).info.image_size == 32


def test_a_folder_without_the_files_names_what_is_missing(tmp_path):
    fake_mnist(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="missing t10k-labels-idx1-ubyte"):
        parse_data(f"mnist:{tmp_path / 'm'}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_data(f"mnist:{tmp_path / 'nowhere'}")
    with pytest.raises(ValueError, match="has 10 classes, but num_classes=5"):
        parse_data("mnist", num_classes=5)


def test_read_idx_gives_the_array(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx(array))
    assert np.array_equal(read_idx(tmp_path / "a", (None, 3, 4)), array)
    assert len(FILES) == 4
