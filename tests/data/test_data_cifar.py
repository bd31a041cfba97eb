"""The CIFAR python-format reader, on tiny fake folders with the real key layout."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from convcanon.data import open_data

NAMES10 = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def batch(n: int, seed: int, label_key: bytes, classes: int, extra: dict | None = None) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": f"batch {seed}".encode(),
        label_key: rng.integers(0, classes, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
        **(extra or {}),
    }


def dump(obj, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the protocol of the files on the CIFAR site


def fake_cifar10(root: Path, per_batch: int = 4, n_test: int = 5) -> Path:
    root.mkdir(parents=True)
    for i in range(1, 6):
        dump(batch(per_batch, i, b"labels", 10), root / f"data_batch_{i}")
    dump(batch(n_test, 0, b"labels", 10), root / "test_batch")
    dump({b"label_names": NAMES10, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, root / "batches.meta")
    return root


def fake_cifar100(root: Path) -> Path:
    root.mkdir(parents=True)
    coarse = {b"coarse_labels": [0] * 6}
    dump(batch(6, 1, b"fine_labels", 100, coarse), root / "train")
    dump(batch(3, 2, b"fine_labels", 100, {b"coarse_labels": [0] * 3}), root / "test")
    names = [f"class{i}".encode() for i in range(100)]
    dump({b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20}, root / "meta")
    return root


def test_cifar10_reads_images_labels_and_names(tmp_path):
    root = fake_cifar10(tmp_path / "cifar-10-batches-py")
    source = open_data(f"cifar10:{root}")
    info = source.info
    assert (info.name, info.train_size, info.test_size, info.in_chans, info.image_size) == ("cifar10", 20, 5, 3, 32)
    assert info.classes[0] == "airplane" and info.num_classes == 10
    assert info.augment == "pad 4 + random crop 32 + horizontal flip"  # the ResNet paper's CIFAR recipe
    written = batch(5, 0, b"labels", 10)
    x, y = next(source.test_batches(5))
    assert y.tolist() == written[b"labels"]
    # b"data" rows are the red plane, then green, then blue, each 32x32 row-major.
    raw = torch.from_numpy(written[b"data"]).view(5, 3, 32, 32).double() / 255
    mean = torch.tensor(info.mean, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float64).view(3, 1, 1)
    torch.testing.assert_close(x.double(), (raw - mean) / std, rtol=0, atol=1e-5)  # float32 normalization
    train_labels = torch.cat([y for _, y in source.train_batches(0, 4, seed=0)])
    assert sorted(train_labels.tolist()) == sorted(sum((batch(4, i, b"labels", 10)[b"labels"] for i in range(1, 6)),
                                                       []))


def test_cifar10_found_by_plain_path_and_parent_folder(tmp_path):
    root = fake_cifar10(tmp_path / "cifar-10-batches-py")
    assert open_data(str(root)).info.name == "cifar10"
    assert open_data(f"cifar10:{tmp_path}").info.source == str(root)  # the archive's folder inside PATH


def test_cifar100_reads_fine_labels(tmp_path):
    root = fake_cifar100(tmp_path / "cifar-100-python")
    source = open_data(f"cifar100:{root}")
    assert (source.info.num_classes, source.info.train_size, source.info.test_size) == (100, 6, 3)
    assert open_data(str(root)).info.name == "cifar100"
    _, y = next(source.test_batches(3))
    assert y.tolist() == batch(3, 2, b"fine_labels", 100)[b"fine_labels"]


def test_missing_files_are_listed(tmp_path):
    root = fake_cifar10(tmp_path / "c10")
    (root / "data_batch_3").unlink()
    (root / "batches.meta").unlink()
    with pytest.raises(FileNotFoundError, match="missing data_batch_3, batches.meta") as err:
        open_data(f"cifar10:{root}")
    assert "data_batch_1, data_batch_2" in str(err.value)  # the full expected list


def test_labels_outside_num_classes_are_an_error(tmp_path):
    root = fake_cifar10(tmp_path / "c10")
    bad = batch(4, 2, b"labels", 10)
    bad[b"labels"][1] = 12
    dump(bad, root / "data_batch_2")
    with pytest.raises(ValueError, match=r"labels outside 0\.\.9 \(e\.g\. 12\)"):
        open_data(f"cifar10:{root}")
    with pytest.raises(ValueError, match="num_classes=5"):
        open_data(f"cifar10:{fake_cifar10(tmp_path / 'ok')}", num_classes=5)


class _Payload:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path):
    root = fake_cifar10(tmp_path / "c10")
    marker = tmp_path / "pwned"
    evil = batch(4, 1, b"labels", 10)
    evil[b"batch_label"] = _Payload(str(marker))
    dump(evil, root / "data_batch_1")
    with pytest.raises(ValueError, match="refused without running it"):
        open_data(f"cifar10:{root}")
    assert not marker.exists()


def test_truncated_pickle_is_a_clear_error(tmp_path):
    root = fake_cifar10(tmp_path / "c10")
    data = (root / "test_batch").read_bytes()
    (root / "test_batch").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="test_batch is not a readable CIFAR"):
        open_data(f"cifar10:{root}")
