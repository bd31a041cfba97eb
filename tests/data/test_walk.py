"""The folder walk's helpers: how names from a tree are printed, which class names are refused, and the walk's
order and loop detection on a small tree."""

from __future__ import annotations

import os

import pytest

from convcanon.data.walk import Walker, shown, unsafe_chars


@pytest.mark.parametrize(("name", "printed"), [
    ("cat/img0.jpg", "cat/img0.jpg"),
    ("chat noir/été 猫.png", "chat noir/été 猫.png"),  # printable Unicode as it is
    ("a\nb", "a\\nb"),
    ("erase\x1b[2K\rline", "erase\\x1b[2K\\rline"),
    ("tab\tdel\x7f", "tab\\tdel\\x7f"),
    ("csi\x9b", "csi\\x9b"),
    ("rlo\u202egpj.exe", "rlo\\u202egpj.exe"),
    ("back\\slash\n", "back\\\\slash\\n"),  # escaped names stay unambiguous
    (os.fsdecode(b"latin1-\xe9"), "latin1-\\xe9"),  # a byte that is not UTF-8
])
def test_shown_escapes_what_could_steer_a_terminal(name, printed):
    assert shown(name) == printed
    assert shown(name).isprintable()


def test_unsafe_chars_are_line_breaks_controls_and_bidi_not_unicode_text():
    assert unsafe_chars("golden retriever") == unsafe_chars("猫 犬") == unsafe_chars("café") == ""
    assert unsafe_chars("a\nb") == "\\n"
    assert unsafe_chars("x\x1b[31m\x1b") == "\\x1b"
    assert unsafe_chars("line\u2028sep") == "\\u2028"
    assert unsafe_chars("rtl\u202e") == "\\u202e"
    assert unsafe_chars(os.fsdecode(b"\xff")) == "\\xff"


def test_the_walk_is_top_down_sorted_like_os_walk_and_enters_each_folder_once(tmp_path):
    for rel in ("b.png", "a/z.png", "a/y/x.png", "c/w.png", ".hidden/v.png", "a/.u.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    os.symlink("../a", tmp_path / "c" / "again")
    os.symlink("..", tmp_path / "a" / "y" / "up")
    walker = Walker()
    walker.enter(str(tmp_path), os.stat(tmp_path))
    listing = walker.list(str(tmp_path))
    expected = []
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        expected += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    assert [p for p, _, _ in listing.files] == expected  # os.walk without links: the order training has used
    assert dict(listing.problems) == {
        str(tmp_path / "a" / "y" / "up"): f"symlink loop (leads back to {tmp_path / 'a'})",
        str(tmp_path / "c" / "again"): f"links to {tmp_path / 'a'}, a folder already listed",
    }
