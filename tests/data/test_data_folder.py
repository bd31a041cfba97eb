"""ImageFolder trees: every awkward image mode loads as 3xSxS, bad files are found before training, the order rules
hold for DataLoader-fed data too."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from imagetree import GOOD_KINDS, make_tree, write_bad, write_image

from convcanon.data import load_rgb, open_data, scan_folder


def open_tree(root, **kw):
    return open_data(str(root), image_size=kw.pop("image_size", 16), workers=kw.pop("workers", 0), progress=False,
                     **kw)


def epoch(source, batch_size, **kw):
    return list(source.train_batches(kw.pop("epoch", 0), batch_size, seed=kw.pop("seed", 5), **kw))


# ---- decoding ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", GOOD_KINDS)
def test_every_mode_loads_as_rgb(tmp_path, kind):
    img = load_rgb(write_image(tmp_path / f"x.{'jpg' if kind in ('rgb-jpg', 'L', 'CMYK') else 'png'}", kind))
    assert img.mode == "RGB" and img.size == ((14, 20) if kind == "exif-rotated" else (20, 14))


def test_exif_orientation_is_applied(tmp_path):
    path = write_image(tmp_path / "rotated.jpg", "exif-rotated", size=(20, 14))
    assert load_rgb(path).size == (14, 20)  # orientation 6: stored landscape, shown portrait


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    grey = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert np.asarray(load_rgb(tmp_path / "g16.png"))[0, :, 0].tolist() == [0, 128, 255]


# ---- the folder source -------------------------------------------------------------------------------------------

def test_folder_batches_are_normalized_rgb(tree):
    source = open_tree(tree)
    info = source.info
    assert (info.name, info.classes, info.in_chans, info.image_size) == ("folder", ("cat", "dog"), 3, 16)
    assert (info.train_size, info.test_size, info.skipped) == (18, 6, 0)
    batches = epoch(source, 4)
    assert len(batches) == 4  # 18 // 4: the incomplete last batch is dropped
    for x, y in batches:
        assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and x.is_contiguous()
        assert y.dtype == torch.int64
    assert open_data(str(tree), progress=False, workers=0).info.image_size == 224  # the ImageNet default


def test_folder_order_sharding_resume_and_rng(tree):
    source = open_tree(tree)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    one = epoch(source, 4)
    assert torch.equal(torch.get_rng_state(), before)  # the transforms ran under fork_rng
    two = [epoch(source, 2, rank=r, world_size=2) for r in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(one, *two, strict=True):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    tail = epoch(source, 4, start=2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(one[2:], tail, strict=True))
    assert not torch.equal(one[0][0], epoch(source, 4, epoch=1)[0][0])


def test_worker_count_does_not_change_the_pixels(tree):
    serial = open_tree(tree, workers=0)
    parallel = open_tree(tree, workers=2)
    for (a, ya), (b, yb) in zip(epoch(serial, 4), epoch(parallel, 4), strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_folder_test_batches_cover_val_once(tree):
    source = open_tree(tree)
    whole = torch.cat([x for x, _ in source.test_batches(4)])
    shards = [torch.cat([x for x, _ in source.test_batches(4, rank=r, world_size=4)]) for r in range(4)]
    assert [len(s) for s in shards] == [1, 2, 1, 2] and torch.equal(torch.cat(shards), whole)
    again = torch.cat([x for x, _ in source.test_batches(3)])
    assert torch.equal(again, whole)  # no augmentation in evaluation


# ---- the scan ----------------------------------------------------------------------------------------------------

BAD = {"truncated": "train/cat/cut.jpg", "garbage": "train/dog/noise.jpg", "empty": "val/cat/zero.png",
       "text": "train/dog/notes.txt"}
REASON = {"truncated": "truncated", "garbage": "corrupt", "empty": "empty file", "text": "not an image"}


def test_scan_reports_each_bad_file_with_path_and_reason(tree):
    for kind, rel in BAD.items():
        write_bad(tree / rel, kind)
    write_bad(tree / "train" / "cat" / ".cache" / "junk.jpg", "garbage")  # hidden folder: ignored
    write_bad(tree / "train" / "dog" / ".DS_Store", "garbage")  # hidden file: ignored
    (tree / "train" / "README.txt").write_text("stray")  # in no class folder: listed as ignored
    report = scan_folder(tree, progress=False)
    found = {b.path: b.reason for b in report.bad}
    assert set(found) == {str(tree / rel) for rel in BAD.values()}
    for kind, rel in BAD.items():
        assert found[str(tree / rel)].startswith(REASON[kind]), found[str(tree / rel)]
    assert report.ignored == (str(tree / "train" / "README.txt"),)
    assert (len(report.train), len(report.val), report.files) == (18, 6, 28)
    with pytest.raises(ValueError, match="4 bad files of 28") as err:
        open_tree(tree)
    for rel in BAD.values():
        assert str(tree / rel) in str(err.value)
    assert "--skip-bad" in str(err.value)


def test_empty_class_folder_is_named(tree):
    (tree / "val" / "bird").mkdir()
    (tree / "train" / "bird").mkdir()
    write_image(tree / "train" / "bird" / "a.png", "rgb-png")
    (tree / "val" / "bird" / ".hidden.png").write_bytes(b"")  # hidden files do not count
    with pytest.raises(ValueError, match=r"empty class folder.*val/bird"):
        scan_folder(tree, progress=False)


def test_class_sets_that_differ_list_both_differences(tree):
    write_image(tree / "train" / "bird" / "a.png", "rgb-png")
    write_image(tree / "val" / "fish" / "a.png", "rgb-png")
    with pytest.raises(ValueError, match="only in train/: bird; only in val/: fish"):
        scan_folder(tree, progress=False)


def test_layout_errors_name_the_expected_layout(tmp_path):
    write_image(tmp_path / "flat" / "cat" / "a.png", "rgb-png")
    with pytest.raises(ValueError, match=r"no train/ or val/ folder.*train/CLASS/IMAGE"):
        open_tree(tmp_path / "flat")
    with pytest.raises(FileNotFoundError):
        scan_folder(tmp_path / "missing", progress=False)


def test_num_classes_must_match_the_folders(tree):
    with pytest.raises(ValueError, match="has 2 classes"):
        open_tree(tree, num_classes=3)


def test_skip_bad_leaves_out_the_exact_count_up_to_one_percent(tmp_path, capsys):
    root = make_tree(tmp_path / "big", train_per_class=45, val_per_class=4)  # 98 good files
    write_bad(root / "train" / "cat" / "bad0.jpg", "truncated")  # 1 of 99: 1.01% ... over
    with pytest.raises(ValueError, match="at most 1%"):
        open_tree(root, skip_bad=True)
    write_image(root / "train" / "dog" / "extra0.png", "rgb-png", seed=99)
    write_image(root / "train" / "dog" / "extra1.png", "rgb-png", seed=98)  # 1 of 101: below 1%
    source = open_tree(root, skip_bad=True)
    assert (source.info.skipped, source.info.train_size) == (1, 92)
    assert "skipping 1 bad files of 101" in capsys.readouterr().err
    write_bad(root / "val" / "dog" / "bad1.jpg", "empty")  # 2 of 102: above 1% again
    with pytest.raises(ValueError, match="2 bad files of 102"):
        open_tree(root, skip_bad=True)


def test_scan_result_is_cached_until_a_file_changes(tree):
    first = scan_folder(tree, progress=False)
    assert scan_folder(tree, progress=False) is first
    write_image(tree / "train" / "cat" / "new.png", "rgb-png")
    second = scan_folder(tree, progress=False)
    assert second is not first and len(second.train) == len(first.train) + 1


def test_parallel_scan_finds_the_same(tree, monkeypatch):
    from convcanon.data import scan

    write_bad(tree / "train" / "cat" / "cut.jpg", "truncated")
    serial = scan_folder(tree, progress=False, cache=False)
    monkeypatch.setattr(scan, "_PARALLEL_MIN_FILES", 1)
    parallel = scan_folder(tree, progress=False, workers=2, cache=False)
    assert parallel == serial and len(parallel.bad) == 1


def test_flat_val_folder_says_how_to_fix_it(tree):
    import shutil

    shutil.rmtree(tree / "val")
    write_image(tree / "val" / "ILSVRC2012_val_00000001.JPEG", "rgb-jpg")  # how ImageNet's val archive extracts
    with pytest.raises(ValueError, match=r"val/ holds 1 files but no class folder: sort them into val/CLASS/"):
        scan_folder(tree, progress=False)


def test_a_report_sent_to_another_rank_opens_the_same_data(tree):
    import pickle

    from convcanon.data import folder_from_report

    write_bad(tree / "train" / "cat" / "cut.jpg", "truncated")
    report = scan_folder(tree, progress=False)
    received = pickle.loads(pickle.dumps(report))  # what torch.distributed.broadcast_object_list does
    with pytest.raises(ValueError, match="1 bad files of 25"):
        folder_from_report(received, image_size=16, workers=0)
    here = folder_from_report(report, image_size=16, workers=0, skip_bad=True, max_bad_fraction=0.05)
    there = folder_from_report(received, image_size=16, workers=0, skip_bad=True, max_bad_fraction=0.05)
    assert here.info == there.info and here.info.skipped == 1
    for (a, _), (b, _) in zip(epoch(here, 4), epoch(there, 4), strict=True):
        assert torch.equal(a, b)
