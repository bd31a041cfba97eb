"""A run directory under attack: concurrent runs, interrupts, hostile checkpoints, resumes that should change nothing,
bad --out paths, full and read-only disks. Each case asserts the exit code, a message without a traceback, and that
no finished file changed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import convcanon
from convcanon.cli import main
from convcanon.io import LOCK_NAME, RunLock
from convcanon.train import checkpoint as ckpt

FAST = ["--model", "resnet20", "--epochs", "1", "--batch-size", "64", "--no-progress", "--workers", "0",
        "--deterministic", "--amp", "off", "--seed", "1"]


def _train(out: Path, *extra: str) -> int:
    return main(["train", *FAST, "--out", str(out), *extra])


def _files(run: Path) -> dict[str, str]:
    """Every file of a run (the lock aside) and its content hash."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(convcanon.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch run (22 steps), checkpointed every 5 steps."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert _train(out, "--checkpoint-every", "5", "--keep-checkpoints", "10") == 0
    return out


def _copy(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


# ------------------------------------------------------------------------------------------------ one owner per run


def test_a_second_run_on_a_locked_directory_is_refused_naming_the_owner(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out).acquire("another convcanon train"):
        assert _train(out) == 2
    err = capsys.readouterr().err
    assert f"{out} is in use by pid {os.getpid()}" in err and "another convcanon train" in err
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # nothing written


def test_resuming_a_live_run_and_an_eval_that_writes_into_it_are_refused(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path / "run")
    before = _files(run)
    with RunLock(run).acquire("convcanon train"):
        assert main(["train", "--resume", str(run)]) == 2
        assert "is in use by pid" in capsys.readouterr().err
        assert main(["eval", "--checkpoint", str(run)]) == 2
        out = capsys.readouterr()
        assert "top-1" in out.out and "is in use by pid" in out.err  # the figures first, then the refusal
        assert main(["eval", "--checkpoint", str(run), "--plot", "none"]) == 0  # writes nothing: allowed
    assert _files(run) == before


def test_a_lock_left_by_a_dead_process_does_not_block(finished, tmp_path):
    # flock dies with its owner: a lock file with an owner's words in it but no lock held is free.
    run = _copy(finished, tmp_path / "run")
    (run / LOCK_NAME).write_text("pid 999999 on elsewhere (convcanon train, since yesterday)")
    (run / "summary.json").unlink()
    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "summary.json").exists()


def test_two_processes_started_on_the_same_out_one_trains_and_one_is_refused(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "convcanon", "train", *FAST, "--out", str(out)]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read() + p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    refused = next(text for rc, text in results if rc == 2)
    _no_traceback(refused)
    assert "is in use by pid" in refused or "already holds a run" in refused
    assert json.loads((out / "summary.json").read_text())["steps"] == 22


# ----------------------------------------------------------------------------------------------------- interrupts


def _start(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "convcanon", "train", *FAST, "--epochs", "3", "--out", str(out), *extra]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_training(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stop_signal_checkpoints_says_how_to_resume_and_exits_128_plus_n(tmp_path, signum, code):
    out = tmp_path / "run"
    proc = _start(out, "--log-every", "1")
    _wait_for_training(proc, out)
    proc.send_signal(signum)
    rc = proc.wait(timeout=120)
    stderr = proc.stderr.read()
    assert rc == code, stderr
    _no_traceback(stderr)
    step = int(stderr.split("at step ")[1].split(";")[0])
    assert f"resume with: convcanon train --resume {out}" in stderr
    state, _ = ckpt.load_latest(out)
    assert state["step"] == step and not (out / "model.safetensors").exists()
    assert main(["train", "--resume", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 66


def test_a_second_sigint_stops_at_once_and_the_newest_checkpoint_stays_valid(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, "--log-every", "1", "--checkpoint-every", "2")
    _wait_for_training(proc, out)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=120)
    assert rc != 0
    found = ckpt.load_latest(out)  # whatever was newest is complete: checkpoints are atomic
    assert found is None or isinstance(found[0]["step"], int)


# --------------------------------------------------------------------------------- resumes that must change nothing


def test_resuming_a_finished_run_says_so_and_changes_nothing(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path / "run")
    before = _files(run)
    assert main(["train", "--resume", str(run)]) == 0
    assert "is finished (22 steps" in capsys.readouterr().out
    assert _files(run) == before


def test_a_run_killed_before_its_summary_finishes_with_its_final_metrics(finished, tmp_path):
    run = _copy(finished, tmp_path / "run")
    for name in ("summary.json", "model.safetensors"):
        (run / name).unlink()
    (run / ".model.safetensors.tmp-999999").write_bytes(b"half a file")  # what the kill left
    assert main(["train", "--resume", str(run)]) == 0
    again, first = json.loads((run / "summary.json").read_text()), json.loads((finished / "summary.json").read_text())
    assert again["final"] == first["final"] and again["steps"] == first["steps"] == 22
    assert not list(run.glob(".*.tmp-*"))
    a, b = ckpt.load_safetensors(run / "model.safetensors"), ckpt.load_safetensors(finished / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)
    record = json.loads((run / "run.json").read_text())
    assert record["argv"] == json.loads((finished / "run.json").read_text())["argv"] and len(record["resumes"]) == 1


def test_max_steps_stops_one_invocation_and_a_resume_trains_to_the_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--max-steps", "5") == 0
    assert "stopped at step 5 (--max-steps 5)" in capsys.readouterr().out
    assert main(["train", "--resume", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 22


def test_resume_with_another_out_is_refused(finished, tmp_path, capsys):
    assert main(["train", "--resume", str(finished), "--out", str(tmp_path / "elsewhere")]) == 2
    assert "continues in its own directory" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()


# -------------------------------------------------------------------------------------------- hostile checkpoints


def test_a_checkpoint_of_another_model_is_named(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path / "run")
    (run / "summary.json").unlink()
    state, _ = ckpt.load_latest(run)
    other = convcanon.create_model("resnet32", num_classes=10, in_chans=1).state_dict()
    ckpt.save_checkpoint(run, {**state, "step": 99, "model": other})
    before = _files(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "step-00000099.pt does not fit this run (resnet20)" in err
    assert _files(run) == before


def test_a_checkpoint_whose_step_is_a_string_is_named(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path / "run")
    state, _ = ckpt.load_latest(run)
    bad = ckpt.checkpoint_path(run, 99)
    torch.save({**state, "step": "99"}, bad)
    assert main(["train", "--resume", str(run)]) == 2
    assert "its step is '99', not a non-negative integer" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------- bad --out paths


def test_out_under_a_file_or_on_a_dangling_link_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert _train(tmp_path / "file" / "run") == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    assert _train(tmp_path / "link") == 2
    assert "symbolic link to nothing" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------------------------------- full and read-only disks


@contextlib.contextmanager
def _tmpfs(where: Path, size: str):
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True, capture_output=True)


def test_a_full_disk_names_the_file_keeps_the_checkpoints_and_the_run_resumes(tmp_path):
    with _tmpfs(tmp_path / "disk", "6m") as disk:  # one checkpoint (3.4 MB: model, momentum, average) fits
        out = disk / "run"
        cmd = [sys.executable, "-m", "convcanon", "train", *FAST, "--checkpoint-every", "4", "--keep-checkpoints",
               "10", "--out", str(out)]
        done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 74, done.stdout + done.stderr
        _no_traceback(done.stderr)
        assert "the disk is full" in done.stderr and "MiB free" in done.stderr
        state, _ = ckpt.load_latest(out)  # every checkpoint written before is intact
        _remount(disk, "size=64m")
        assert main(["train", "--resume", str(out)]) == 0
        assert json.loads((out / "summary.json").read_text())["steps"] == 22 > state["step"]


def test_a_read_only_out_is_refused_and_eval_still_prints_its_figures(finished, tmp_path, capsys):
    with _tmpfs(tmp_path / "disk", "48m") as disk:
        run = _copy(finished, disk / "run")
        _remount(disk, "ro")
        assert _train(disk / "new") == 74
        assert "read-only" in capsys.readouterr().err
        assert main(["eval", "--checkpoint", str(run)]) == 74
        out = capsys.readouterr()
        assert "top-1" in out.out and "read-only" in out.err
        assert main(["eval", "--checkpoint", str(run), "--plot", "none"]) == 0
