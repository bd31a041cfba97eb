"""``parse_data`` reads a ``--data`` value without opening anything, and agrees with what ``open_data`` opens."""

from __future__ import annotations

import pytest
from imagetree import write_image

import convcanon.data.folder
import convcanon.data.memory
import convcanon.data.scan
from convcanon.data import DataSpec, open_data, parse_data


def _no_opening(monkeypatch) -> None:
    """Any decode, scan or data load fails the test."""
    def fail(*a, **k):
        pytest.fail("the parse opened the data")

    monkeypatch.setattr(convcanon.data.scan, "_decode_all", fail)
    monkeypatch.setattr(convcanon.data.folder, "scan_folder", fail)
    monkeypatch.setattr(convcanon.data.memory, "_digits_arrays", fail)


def _tree(root):
    for split, n in (("train", 2), ("val", 1)):
        for cls in ("ant", "bee", "cat"):
            for i in range(n):
                write_image(root / split / cls / f"{i}.png", "rgb-png", seed=i)
    return root


def _cifar10(root):
    from test_data_cifar import fake_cifar10

    return fake_cifar10(root)


@pytest.mark.parametrize(
    ("spec", "kw", "shape"),
    [
        ("digits", {}, ("digits", 1, 8, 10)),
        ("digits", {"image_size": 16}, ("digits", 1, 16, 10)),
        ("synthetic", {}, ("synthetic", 3, 32, 10)),
        ("synthetic:1:12:5", {}, ("synthetic", 1, 12, 5)),
        ("synthetic:2", {"image_size": 20, "num_classes": 7}, ("synthetic", 2, 20, 7)),
    ],
)
def test_named_specs_parse_to_their_shape(spec, kw, shape, monkeypatch):
    _no_opening(monkeypatch)
    parsed = parse_data(spec, **kw)
    assert (parsed.kind, parsed.in_chans, parsed.image_size, parsed.num_classes) == shape


def test_folder_and_cifar_are_checked_by_listing_only(tmp_path, monkeypatch):
    tree, cifar = _tree(tmp_path / "tree"), _cifar10(tmp_path / "cifar-10-batches-py")
    _no_opening(monkeypatch)
    for spec in (str(tree), f"folder:{tree}"):
        assert parse_data(spec) == DataSpec(spec, "folder", tree, 3, 224, 3)
    assert parse_data(str(tree), image_size=64).image_size == 64
    assert parse_data(f"cifar10:{tmp_path}") == DataSpec(f"cifar10:{tmp_path}", "cifar10", cifar, 3, 32, 10)
    assert parse_data(str(cifar)).kind == "cifar10"


@pytest.mark.parametrize(
    ("make", "kw", "error", "match"),
    [
        (lambda p: "digts", {}, ValueError, "did you mean 'digits'"),
        (lambda p: str(p / "nowhere"), {}, FileNotFoundError, "does not exist"),
        (lambda p: f"folder:{p / 'nowhere'}", {}, FileNotFoundError, "does not exist"),
        (lambda p: f"cifar10:{p}", {}, FileNotFoundError, "missing data_batch_1"),
        (lambda p: (p / "f.txt").write_text("x") and str(p / "f.txt"), {}, ValueError, "is a file, not a folder"),
        (lambda p: (p / "t" / "train" / "a").mkdir(parents=True) or str(p / "t"), {}, ValueError, "no val/ folder"),
        (lambda p: "digits", {"num_classes": 4}, ValueError, "10 classes"),
        (lambda p: "synthetic:3:32", {"image_size": 20}, ValueError, "set it in one place"),
        (lambda p: "synthetic:0", {}, ValueError, "positive integers"),
        (lambda p: "digits", {"decode": "gpu"}, ValueError, "--decode gpu"),
        (lambda p: "digits", {"decode": "jpeg"}, ValueError, "decode must be one of"),
    ],
)
def test_bad_specs_are_named_without_opening(tmp_path, monkeypatch, make, kw, error, match):
    spec = make(tmp_path)
    _no_opening(monkeypatch)
    if kw.get("decode") == "gpu":  # without CUDA the decode check itself refuses; with it, the kind check does
        match = "--decode gpu"
    with pytest.raises(error, match=match):
        parse_data(spec, **kw)


def test_open_data_opens_what_the_parse_found(tmp_path):
    tree, cifar = _tree(tmp_path / "tree"), _cifar10(tmp_path / "cifar-10-batches-py")
    for spec, kw in (("digits", {}), ("digits", {"image_size": 12}), ("synthetic:1:12:5", {}),
                     (f"cifar10:{cifar}", {}), (str(tree), {"image_size": 16})):
        parsed = parse_data(spec, **kw)
        info = open_data(spec, progress=False, workers=0, **kw).info
        assert (info.name, info.in_chans, info.image_size, info.num_classes) == (
            parsed.kind, parsed.in_chans, parsed.image_size, parsed.num_classes), spec
