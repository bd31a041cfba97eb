"""`convcanon scan DIR`: exit status 0 clean / 1 bad files / 2 wrong layout, the table, and --json."""

from __future__ import annotations

import json

import pytest
from imagetree import make_tree, write_bad, write_image

from convcanon.cli import main


def test_clean_tree_exits_0_with_a_summary(tree, capsys):
    assert main(["scan", str(tree), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "train images" in out and "clean: every one of the 24 files decodes" in out


def test_bad_files_exit_1_listed_by_path_and_reason(tree, capsys):
    write_bad(tree / "train" / "cat" / "cut.jpg", "truncated")
    write_bad(tree / "val" / "dog" / "notes.txt", "text")
    assert main(["scan", str(tree), "--workers", "0"]) == 1
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith(("train ", "val "))}
    assert "truncated" in lines[str(tree / "train" / "cat" / "cut.jpg")]
    assert "not an image" in lines[str(tree / "val" / "dog" / "notes.txt")]
    assert "2 bad files (7.69%)" in out  # 2 of 26, more than 1%: even --skip-bad stops
    assert main(["scan", str(tree), "--workers", "0", "--skip-bad"]) == 1


def test_json_output(tree, capsys):
    write_bad(tree / "train" / "dog" / "zero.png", "empty")
    assert main(["scan", str(tree), "--json", "--workers", "0"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["files"], report["train_images"], report["val_images"], report["bad"]) == (25, 18, 6, 1)
    assert report["class_names"] == ["cat", "dog"] and report["ok"] is False
    assert report["bad_files"] == [{"split": "train", "path": str(tree / "train" / "dog" / "zero.png"),
                                    "reason": "empty file (0 bytes)"}]


def test_skip_bad_exits_0_at_or_below_one_percent(tmp_path, capsys):
    root = make_tree(tmp_path / "big", train_per_class=48, val_per_class=2)  # 100 good files
    write_bad(root / "train" / "cat" / "bad.jpg", "garbage")  # 1 of 101
    assert main(["scan", str(root), "--workers", "0"]) == 1
    assert main(["scan", str(root), "--workers", "0", "--skip-bad"]) == 0
    assert "`train --skip-bad` would leave them out" in capsys.readouterr().out


def test_layout_problem_exits_2_with_the_fix(tmp_path, capsys):
    write_image(tmp_path / "flat" / "train" / "cat" / "a.png", "rgb-png")
    assert main(["scan", str(tmp_path / "flat")]) == 2
    assert "no val/ folder" in capsys.readouterr().err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["scan", "--help"])
    assert "examples:" in capsys.readouterr().out
