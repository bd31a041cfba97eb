"""Image folders built to break the scan and training: symlink loops, dangling links, unreadable entries, named
pipes, names that steer the terminal, class names with line breaks, one class, files that go bad after the scan.

Each case: the exit code, a message naming the entry (escaped) with no Python traceback, and nothing finished
changed (the data tree as it was; no final weights from a run that stopped).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from hostile_trees import (
    make_tree,
    no_traceback,
    run_cli,
    snapshot,
    train_args,
    unreadable_runner,
    write_bad,
    write_image,
)

from convcanon.cli import main
from convcanon.data import epoch_permutation, open_data, scan_folder
from convcanon.data.scan import BadDataError


def bad_rows(out: str) -> dict[str, str]:
    """The rows of `convcanon scan`'s bad-file table, by path."""
    return {line.split()[1]: line for line in out.splitlines() if line.startswith(("train ", "val "))}


def big_tree(root: Path) -> Path:
    """100 good files: one bad entry is within --skip-bad's 1%."""
    return make_tree(root, train_per_class=48, val_per_class=2)


# ---- the walk ----------------------------------------------------------------------------------------------------

def test_symlink_loops_dangling_links_and_pipes_are_listed_not_followed(tmp_path):
    root = make_tree(tmp_path / "pets")
    os.symlink("..", root / "train" / "cat" / "up")  # back to train/: followed, it never ends
    os.symlink("../..", root / "train" / "dog" / "top")  # back to the root, which holds train/ again
    os.symlink("self", root / "val" / "cat" / "self")  # a link to itself
    os.symlink("b", root / "val" / "dog" / "a")
    os.symlink("a", root / "val" / "dog" / "b")  # two links to each other
    os.symlink("nowhere.jpg", root / "train" / "cat" / "gone.jpg")  # dangling
    os.mkfifo(root / "train" / "dog" / "pipe.jpg")  # opening it would block forever
    before = snapshot(root)
    done = run_cli(["scan", str(root), "--workers", "0"], timeout=90)
    no_traceback(done.stdout + done.stderr)
    assert done.returncode == 1, done.stderr
    rows = bad_rows(done.stdout)
    expected = {
        "train/cat/up": f"symlink loop (leads back to {root / 'train'})",
        "train/dog/top": f"symlink loop (leads back to {root})",
        "val/cat/self": "symlink loop",
        "val/dog/a": "symlink loop",
        "val/dog/b": "symlink loop",
        "train/cat/gone.jpg": "dangling link (its target nowhere.jpg does not exist)",
        "train/dog/pipe.jpg": "not a regular file (a named pipe)",
    }
    assert set(rows) == {str(root / rel) for rel in expected}
    for rel, reason in expected.items():
        assert reason in rows[str(root / rel)]
    assert "7 bad files (22.58%)" in done.stdout  # 24 images + 7 bad entries
    assert snapshot(root) == before


def test_links_into_another_class_or_split_are_not_listed_twice(tmp_path):
    root = make_tree(tmp_path / "pets")
    os.symlink("../dog", root / "train" / "cat" / "dogs")  # the dog images would also be cats
    os.symlink("../../val/cat", root / "train" / "cat" / "leak")  # validation images in training
    report = scan_folder(root, progress=False, cache=False)
    reasons = {b.path: b.reason for b in report.bad}
    assert reasons == {
        str(root / "train" / "cat" / "dogs"): f"links to {root / 'train' / 'dog'}, a folder already listed",
        str(root / "train" / "cat" / "leak"): f"links to {root / 'val' / 'cat'}, a folder already listed",
    }
    assert (len(report.train), len(report.val)) == (18, 6)  # every image once, in its own class


def test_skip_bad_leaves_out_a_loop_and_a_dangling_link_within_one_percent(tmp_path, capsys):
    root = big_tree(tmp_path / "big")
    os.symlink("..", root / "train" / "cat" / "up")
    assert main(["scan", str(root), "--workers", "0"]) == 1
    assert main(["scan", str(root), "--workers", "0", "--skip-bad"]) == 0  # 1 of 101
    os.symlink("missing.png", root / "val" / "dog" / "gone.png")
    assert main(["scan", str(root), "--workers", "0", "--skip-bad"]) == 1  # 2 of 102: above 1%
    assert "2 bad files (1.96%): more than 1%" in capsys.readouterr().out


@pytest.mark.slow
def test_train_skip_bad_leaves_out_a_symlink_loop(tmp_path, capsys):
    root = big_tree(tmp_path / "big")
    os.symlink("..", root / "train" / "cat" / "up")
    before = snapshot(root)
    assert main(train_args(str(root), tmp_path / "run", "--workers", "0", "--skip-bad", steps=1)) == 0
    err = capsys.readouterr().err
    assert f"skipping 1 bad files of 101 (0.99%) in {root}" in err
    no_traceback(err)
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert snapshot(root) == before


def test_unreadable_files_and_folders_are_named_as_such(tmp_path):
    prefix = unreadable_runner(tmp_path)
    root = make_tree(tmp_path / "pets")
    write_image(root / "train" / "dog" / "more" / "x.png", "rgb-png")
    locked = [root / "train" / "cat" / "img0.jpg", root / "train" / "dog" / "more", root / "val" / "dog"]
    before = snapshot(root)
    for path in locked:
        path.chmod(0)
    try:
        done = run_cli(["scan", str(root), "--workers", "0"], prefix=prefix, timeout=90)
    finally:
        for path in locked:
            path.chmod(0o755)
    no_traceback(done.stdout + done.stderr)
    assert done.returncode == 1, done.stderr
    rows = bad_rows(done.stdout)
    assert "permission denied" in rows[str(locked[0])]
    for folder in locked[1:]:
        assert "permission denied: the folder cannot be listed" in rows[str(folder)]
    assert "empty" not in done.stdout + done.stderr  # an unreadable class folder is not an empty one
    assert snapshot(root) == before


# ---- names -------------------------------------------------------------------------------------------------------

HOSTILE_NAMES = {
    "evil\x1b[2K\rclean: all good.png": "evil\\x1b[2K\\rclean: all good.png",
    "two\nlines.jpg": "two\\nlines.jpg",
    "bell\x07\x9b31m.jpg": "bell\\x07\\x9b31m.jpg",
    "invoice\u202egnp.exe": "invoice\\u202egnp.exe",
}


def _raw_bytes_name(folder: Path) -> Path:
    """A file whose name is not UTF-8 (Python lists it with a surrogate escape)."""
    path = os.path.join(os.fsencode(folder), b"latin1-\xe9t\xe9.jpg")
    with open(path, "wb") as f:
        f.write(b"not an image")
    return folder / os.fsdecode(b"latin1-\xe9t\xe9.jpg")


def test_file_names_are_printed_escaped_and_exact_in_json(tmp_path, capsys):
    root = make_tree(tmp_path / "pets")
    for name in HOSTILE_NAMES:
        write_bad(root / "train" / "cat" / name, "garbage")
    raw = _raw_bytes_name(root / "val" / "dog")
    before = snapshot(root)
    assert main(["scan", str(root), "--workers", "0"]) == 1
    out = capsys.readouterr().out
    for char in "\x1b\r\x07\x9b\u202e":
        assert char not in out
    lines = out.splitlines()
    for escaped in HOSTILE_NAMES.values():
        assert sum(str(root / "train" / "cat") + "/" + escaped in line for line in lines) == 1
    assert f"{root / 'val' / 'dog'}/latin1-\\xe9t\\xe9.jpg" in out
    assert len(bad_rows(out)) == 5  # one line per bad file: no name makes two

    assert main(["scan", str(root), "--workers", "0", "--json"]) == 1
    listed = {b["path"] for b in json.loads(capsys.readouterr().out)["bad_files"]}
    assert listed == {str(root / "train" / "cat" / n) for n in HOSTILE_NAMES} | {str(raw)}

    assert main(train_args(str(root), tmp_path / "run", "--workers", "0")) == 2
    err = capsys.readouterr().err
    assert "5 bad files of 29" in err and "\x1b" not in err and "\u202e" not in err
    assert "two\\nlines.jpg" in err
    no_traceback(err)
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert snapshot(root) == before


@pytest.mark.parametrize("name", ["bad\nclass", "red\x1b[31m", "rtl\u202eclass"])
def test_a_class_folder_name_with_a_control_character_is_refused(tmp_path, capsys, name):
    root = make_tree(tmp_path / "pets", classes=("cat", "dog", name))
    shown = name.encode("unicode_escape").decode()
    before = snapshot(root)
    assert main(["scan", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{root / 'train'}/{shown}" in err and "rename the folder" in err
    assert name not in err
    assert main(train_args(str(root), tmp_path / "run", "--workers", "0")) == 2
    err = capsys.readouterr().err
    assert "rename the folder" in err
    no_traceback(err)
    assert not (tmp_path / "run" / "config.yaml").exists() and not (tmp_path / "run" / "model.safetensors").exists()
    assert snapshot(root) == before


def test_a_single_class_is_refused_before_training(tmp_path, capsys):
    root = make_tree(tmp_path / "one", classes=("cat",))
    assert main(["scan", str(root)]) == 2
    assert "holds a single class (cat); a classifier needs at least two" in capsys.readouterr().err
    assert main(train_args(str(root), tmp_path / "run", "--workers", "0")) == 2
    err = capsys.readouterr().err
    assert "single class" in err
    no_traceback(err)
    assert not (tmp_path / "run" / "model.safetensors").exists()


# ---- files that go bad after the scan ----------------------------------------------------------------------------

def first_used_file(root: Path, seed: int = 0) -> Path:
    """The training file of the first sample of epoch 0 (what a one-step run reads first)."""
    report = scan_folder(root, progress=False, cache=False)
    return Path(report.train[int(epoch_permutation(len(report.train), seed=seed, epoch=0)[0])][0])


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def damage_after_scan(monkeypatch):
    """``damage_after_scan(path, how)``: the next scan of folder data is followed by ``how(path)``."""
    from convcanon.data import folder

    def arm(path: Path, how) -> None:
        real = folder.scan_folder

        def scan_then_damage(*args, **kwargs):
            report = real(*args, **kwargs)
            how(path)
            return report

        monkeypatch.setattr(folder, "scan_folder", scan_then_damage)

    return arm


def test_a_file_truncated_after_the_scan_stops_the_run_naming_it(tmp_path, capfd, damage_after_scan):
    root = make_tree(tmp_path / "pets")
    victim = first_used_file(root)
    damage_after_scan(victim, truncate)
    assert main(train_args(str(root), tmp_path / "run", "--workers", "2")) == 2
    out, err = capfd.readouterr()
    no_traceback(out + err)  # nor from a DataLoader worker
    assert f"{victim} cannot be read any more: " in err and "--skip-bad" in err
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.slow
def test_skip_bad_replaces_a_file_deleted_after_the_scan(tmp_path, capfd, damage_after_scan):
    root = big_tree(tmp_path / "big")
    victim = first_used_file(root)
    damage_after_scan(victim, Path.unlink)
    assert main(train_args(str(root), tmp_path / "run", "--workers", "0", "--skip-bad")) == 0
    out, err = capfd.readouterr()
    no_traceback(out + err)
    assert f"skipping {victim}: missing (deleted or moved) (it changed after the scan);" in err
    assert "(same class) takes its place" in err
    assert (tmp_path / "run" / "model.safetensors").is_file()


def _epoch(source, **kw):
    return list(source.train_batches(0, 4, seed=3, **kw))


def test_the_replacement_keeps_the_batch_shape_and_is_deterministic(tmp_path):
    root = big_tree(tmp_path / "big")
    sources = [open_data(str(root), image_size=16, workers=w, progress=False, skip_bad=True) for w in (0, 2)]
    clean = _epoch(sources[0])
    victim = Path(sources[0].report.train[int(epoch_permutation(96, seed=3, epoch=0)[1])][0])
    victim.unlink()
    serial, parallel = _epoch(sources[0]), _epoch(sources[1])
    assert [x.shape for x, _ in serial] == [x.shape for x, _ in clean]
    for (a, ya), (b, yb), (_, yc) in zip(serial, parallel, clean, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb) and torch.equal(ya, yc)  # same class, same order
    assert not torch.equal(serial[0][0][1], clean[0][0][1]) and torch.equal(serial[0][0][0], clean[0][0][0])
    assert torch.equal(torch.cat([x for x, _ in _epoch(sources[0])]), torch.cat([x for x, _ in serial]))


def test_evaluation_leaves_out_a_file_deleted_after_the_scan_under_skip_bad(tmp_path, capsys):
    root = big_tree(tmp_path / "big")
    strict = open_data(str(root), image_size=16, workers=0, progress=False)
    lenient = open_data(str(root), image_size=16, workers=0, progress=False, skip_bad=True)
    victim = Path(strict.report.val[1][0])
    victim.unlink()
    with pytest.raises(BadDataError, match="cannot be read any more") as err:
        list(strict.test_batches(3))
    assert err.value.path == str(victim) and isinstance(err.value, ValueError)
    assert sum(len(y) for _, y in lenient.test_batches(3)) == 3  # 4 val images, one gone: left out, not repeated
    assert "left out of this evaluation" in capsys.readouterr().err


def test_more_stale_files_than_the_budget_stop_the_run(tmp_path):
    root = big_tree(tmp_path / "big")
    source = open_data(str(root), image_size=16, workers=0, progress=False, skip_bad=True)
    for path, _ in source.report.train[:4]:
        truncate(Path(path))
    with pytest.raises(BadDataError, match=r"(?s)went bad after the scan:.*more than the 1% --skip-bad leaves out"):
        _epoch(source)


def test_the_gpu_path_reports_a_deleted_file_through_the_cpu_path(tmp_path):
    from convcanon.data.folder import _Batches

    root = big_tree(tmp_path / "big")
    source = open_data(str(root), image_size=16, workers=0, progress=False, skip_bad=True, decode="cpu")
    files = source._train
    jpeg = next(i for i, p in enumerate(files.paths) if p.endswith(".jpg"))
    Path(files.paths[jpeg]).unlink()
    rows = [jpeg, *[i for i in range(len(files)) if i != jpeg][:3]]
    (x, y), = list(source._gpu_batches(files, _Batches([rows], (3, 0), files.gpu_refused), torch.device("cpu")))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [files.labels[i] for i in rows]
    assert set(source._stale.found) == {files.paths[jpeg]}


@pytest.mark.slow
def test_a_file_truncated_after_the_scan_prints_no_traceback_in_a_real_process(tmp_path):
    root = make_tree(tmp_path / "pets")
    victim = first_used_file(root)
    args = train_args(str(root), tmp_path / "run", "--workers", "2")
    script = (
        "import sys\nfrom pathlib import Path\nfrom convcanon.data import folder\nreal = folder.scan_folder\n"
        "def scan_then_truncate(*a, **k):\n    report = real(*a, **k)\n"
        f"    p = Path({str(victim)!r}); d = p.read_bytes(); p.write_bytes(d[: len(d) // 2])\n    return report\n"
        "folder.scan_folder = scan_then_truncate\nfrom convcanon.cli import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    import subprocess

    from hostile_trees import SRC

    env = dict(os.environ, PYTHONPATH=SRC)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    no_traceback(done.stdout + done.stderr)
    assert done.returncode == 2
    assert f"convcanon train: error: {victim} cannot be read any more: " in done.stderr
    assert not (tmp_path / "run" / "model.safetensors").exists()
