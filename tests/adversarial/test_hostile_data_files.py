"""Data files built to slip through: CIFAR batches with NaN, out-of-range or fractional pixels, string or
out-of-range labels, one class, class names with line breaks; synthetic data too large for this machine.

Each case: exit code 2 from `convcanon train`, a message naming the file (and the key or the count) with no Python
traceback, the data files unchanged, and no run written.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from hostile_trees import no_traceback, snapshot

from convcanon.cli import main
from convcanon.data import make_synthetic, open_data

NAMES = [f"class{i}".encode() for i in range(10)]


def dump(obj, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the protocol of the files on the CIFAR site


def cifar10(root: Path, *, data=None, labels=None, names=NAMES, damaged: str = "data_batch_2") -> Path:
    """A CIFAR-10 python-format folder of 4 images per file; ``damaged`` gets ``data`` and ``labels`` instead."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        if name == damaged:
            batch = {b"data": batch[b"data"] if data is None else data,
                     b"labels": batch[b"labels"] if labels is None else labels}
        dump(batch, root / name)
    dump({b"label_names": names}, root / "batches.meta")
    return root


def refused(tmp_path: Path, capsys, root: Path, *expected: str) -> str:
    """Train on ``root``: exit 2, every ``expected`` text in the one-line error, no traceback, nothing changed."""
    before = snapshot(root)
    out = tmp_path / "run"
    code = main(["train", "--data", f"cifar10:{root}", "--out", str(out), "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    no_traceback(err)
    for text in expected:
        assert text in err, err
    assert snapshot(root) == before
    assert not (out / "config.yaml").exists() and not (out / "model.safetensors").exists()
    return err


def floats(value: float, count: int) -> np.ndarray:
    data = np.random.default_rng(1).integers(0, 256, (4, 3072)).astype(np.float32)
    data.flat[:count] = value
    return data


def test_nan_pixels_are_refused_with_the_file_and_the_count(tmp_path, capsys):
    root = cifar10(tmp_path / "c10", data=floats(np.nan, 7))
    refused(tmp_path, capsys, root, str(root / "data_batch_2"), "7 NaN pixel values of 12,288")


@pytest.mark.parametrize(("value", "count", "says"), [(300.0, 5, "5 pixel values outside 0..255"),
                                                      (-1.0, 2, "2 pixel values outside 0..255"),
                                                      (np.inf, 1, "1 pixel values outside 0..255"),
                                                      (0.5, 3, "3 pixel values that are not whole numbers")])
def test_float_pixels_a_cast_would_change_are_refused(tmp_path, capsys, value, count, says):
    root = cifar10(tmp_path / "c10", data=floats(value, count))
    refused(tmp_path, capsys, root, str(root / "data_batch_2"), says)


def test_whole_float_pixels_in_range_are_read(tmp_path):
    root = cifar10(tmp_path / "c10", data=floats(255.0, 10))
    assert open_data(f"cifar10:{root}").info.train_size == 20


def test_string_labels_name_the_file_and_the_key(tmp_path, capsys):
    root = cifar10(tmp_path / "c10", labels=["cat", "dog", "cat", "dog"])
    err = refused(tmp_path, capsys, root, str(root / "data_batch_2"), "the labels under b'labels' must be integers")
    assert "invalid literal" not in err and "'cat'" in err


def test_labels_outside_the_classes_name_the_file(tmp_path, capsys):
    root = cifar10(tmp_path / "c10", labels=[0, 1, 10, -1], damaged="test_batch")
    refused(tmp_path, capsys, root, str(root / "test_batch"), "2 labels outside 0..9 (e.g. 10)",
            "the meta file names 10 classes")


def test_pixel_data_that_is_not_numbers_names_the_file(tmp_path, capsys):
    root = cifar10(tmp_path / "c10", data=np.array([["x"] * 3072] * 4))
    refused(tmp_path, capsys, root, str(root / "data_batch_2"), "b'data' holds <U1 values")


def test_a_single_class_is_refused(tmp_path, capsys):
    root = cifar10(tmp_path / "c10", names=[b"only"], labels=[0, 0, 0, 0])
    refused(tmp_path, capsys, root, str(root / "batches.meta"), "names 1 class(es); a classifier needs at least two")


def test_a_class_name_with_a_line_break_is_refused(tmp_path, capsys):
    root = cifar10(tmp_path / "c10", names=[b"cat", b"dog\nbird", *NAMES[2:]])
    err = refused(tmp_path, capsys, root, str(root / "batches.meta"), "dog\\nbird", "line break")
    assert "dog\nbird" not in err


# ---- synthetic ---------------------------------------------------------------------------------------------------

def test_synthetic_data_too_large_for_this_machine_is_refused_before_allocating(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "synthetic:3:100000:4", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    no_traceback(err)
    assert "synthetic:3:100000:4 (1,024 + 256 images of 3x100000x100000 bytes) needs 38,400.0 GB of memory" in err
    assert "in-memory data may take at most 50% of it" in err and "synthetic:C:S:K" in err
    assert not (out / "config.yaml").exists() and not (out / "model.safetensors").exists()


def test_the_memory_limit_is_the_smaller_of_the_machine_and_its_container(monkeypatch, tmp_path):
    from convcanon.data import memory

    machine = memory.memory_limit()
    assert machine is not None and machine > 0
    (tmp_path / "memory.max").write_text("1000000\n")
    (tmp_path / "unlimited").write_text("max\n")
    monkeypatch.setattr(memory, "_CGROUP_LIMITS", (str(tmp_path / "unlimited"), str(tmp_path / "memory.max")))
    assert memory.memory_limit() == min(machine, 1_000_000)


def test_in_memory_data_above_half_the_memory_limit_is_refused(monkeypatch):
    from convcanon.data import memory

    monkeypatch.setattr(memory, "memory_limit", lambda: 8 * 10**9)
    make_synthetic(in_chans=3, image_size=32, size=1024)  # 3.9 MB: fine
    with pytest.raises(ValueError, match=r"needs 5\.0 GB of memory; this machine has 8\.0 GB.*at most 50% of it "
                                         r"\(4\.0 GB\)"):
        make_synthetic(in_chans=1, image_size=1000, size=4000)
    with pytest.raises(ValueError, match=r"the digits resized to 100000x100000 needs"):
        open_data("digits", image_size=100_000)


def test_synthetic_data_with_one_class_is_refused():
    with pytest.raises(ValueError, match="at least 2 classes"):
        open_data("synthetic:3:8:1")
