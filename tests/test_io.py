"""Atomic file writes: the old file or the whole new one, never a part; durable; no temporary file left behind."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from convcanon import io


def _listing(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_text_and_json_leave_the_old_file_when_serialization_fails(tmp_path):
    path = tmp_path / "run" / "config.json"  # parent directories are created
    io.atomic_write_json(path, {"lr": 0.1, "milestones": [1, 2]})
    assert path.read_text() == '{\n  "lr": 0.1,\n  "milestones": [\n    1,\n    2\n  ]\n}\n'
    with pytest.raises(TypeError):
        io.atomic_write_json(path, {"bad": {1, 2}})
    assert json.loads(path.read_text()) == {"lr": 0.1, "milestones": [1, 2]}
    io.atomic_write_text(tmp_path / "run" / "notes.txt", "résumé\n")
    assert (tmp_path / "run" / "notes.txt").read_text(encoding="utf-8") == "résumé\n"
    assert _listing(tmp_path / "run") == ["config.json", "notes.txt"]


def test_json_takes_indent_and_a_default_for_other_types(tmp_path):
    path = tmp_path / "unit.json"
    io.atomic_write_json(path, {"shape": (1, 2), "path": tmp_path}, indent=None, default=str)
    assert path.read_text() == f'{{"shape": [1, 2], "path": "{tmp_path}"}}\n'


def test_a_writer_that_fails_midway_leaves_the_old_file_and_no_temp(tmp_path):
    path = io.atomic_write_bytes(tmp_path / "data.bin", b"old")

    def half_then_fail(f):
        f.write(b"new but incomp")
        raise OSError(28, "No space left on device")

    # A refused write becomes a WriteError naming the file and the free space.
    with pytest.raises(io.WriteError, match=r"cannot write .*data.bin: the disk is full \([\d,.]+ MiB free\)"):
        io.atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert _listing(tmp_path) == ["data.bin"]


@pytest.mark.parametrize(("code", "words"), [(30, "read-only"), (13, "permission denied"), (122, "quota")])
def test_every_refusal_names_the_file_and_the_reason(tmp_path, code, words):
    def refuse(f):
        raise OSError(code, "refused")

    with pytest.raises(io.WriteError, match=words):
        io.atomic_write(tmp_path / "x.bin", refuse)
    assert _listing(tmp_path) == []


def test_torch_saves_full_disk_error_is_recognized_and_other_errors_pass_through(tmp_path):
    def zip_writer_full(f):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 2048000 vs 2047888")

    with pytest.raises(io.WriteError, match="the disk is full"):
        io.atomic_write(tmp_path / "c.pt", zip_writer_full)

    def bug(f):
        raise RuntimeError("a bug, not the disk")

    with pytest.raises(RuntimeError, match="a bug"):
        io.atomic_write(tmp_path / "c.pt", bug)


def test_the_run_lock_has_one_owner_at_a_time_and_names_it(tmp_path):
    first = io.RunLock(tmp_path).acquire("the first")
    with pytest.raises(io.RunLockedError, match=rf"in use by pid {os.getpid()} on .* \(the first, since"):
        io.RunLock(tmp_path).acquire("the second")
    first.release()
    with io.RunLock(tmp_path).acquire("the second") as second:
        assert second.held
    assert not second.held


def test_a_failed_rename_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = io.atomic_write_text(tmp_path / "a.txt", "old")

    def crash(*args):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        io.atomic_write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and _listing(tmp_path) == ["a.txt"]


@pytest.mark.skipif(os.name == "nt", reason="directories are not fsync'ed on Windows")
def test_the_file_is_synced_before_the_rename_and_the_directory_after_it(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    io.atomic_write_text(tmp_path / "a.txt", "x")
    assert events == ["fsync file", "rename", "fsync dir"]


@pytest.mark.parametrize("links", [True, False], ids=["hard-link", "no-hard-links"])
def test_link_or_copy_replaces_the_target_with_the_source(tmp_path, monkeypatch, links):
    source = io.atomic_write_bytes(tmp_path / "step-2.pt", b"two")
    target = io.atomic_write_bytes(tmp_path / "best.pt", b"one")
    if not links:
        def no_link(*args):
            raise OSError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    io.atomic_link_or_copy(source, target)
    assert target.read_bytes() == b"two"
    assert os.path.samefile(source, target) is links  # a second name where possible, a copy elsewhere
    source.unlink()  # the target does not depend on the source's name
    assert target.read_bytes() == b"two"
    assert _listing(tmp_path) == ["best.pt"]


@pytest.mark.skipif(os.name == "nt", reason="process liveness is not checked on Windows: every temp is kept")
def test_stale_temps_of_dead_writers_and_of_this_process_go_a_live_writers_stays(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)  # exited: no process has this id until the system reuses it
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = [f".a.pt.tmp-{dead_pid}", f".b.pt.tmp-{os.getpid()}", f".c.pt.tmp-{live.pid}",
                 "a.pt", ".hidden", "d.pt.tmp-1", ".e.pt.tmp-x"]  # the last three are no temp files of ours
        for name in names:
            (tmp_path / name).write_bytes(b"")
        io.remove_stale_temps(tmp_path)
        assert _listing(tmp_path) == sorted([f".c.pt.tmp-{live.pid}", "a.pt", ".hidden", "d.pt.tmp-1", ".e.pt.tmp-x"])
    finally:
        live.kill()
        live.wait()
