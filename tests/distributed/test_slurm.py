"""scripts/slurm/train.sbatch read and run as Slurm would on one node: its directives, then the script itself with
stand-ins for srun (runs its command), scontrol (names this machine, records requeues) and torchrun (the module)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torchrun_helpers import free_port

import convcanon

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slurm" / "train.sbatch"
TRAIN = ["--model", "resnet20", "--data", "synthetic:1:8:4", "--batch-size", "32", "--no-progress", "--workers", "0",
         "--amp", "off", "--deterministic"]


def _directives() -> dict[str, str]:
    found = {}
    for line in SCRIPT.read_text().splitlines():
        if m := re.match(r"#SBATCH --([\w-]+)(?:=(\S+))?", line):
            found[m[1]] = m[2] or ""
    return found


def test_the_script_asks_slurm_for_one_torchrun_per_node_a_warning_signal_and_requeueing():
    d = _directives()
    assert d["ntasks-per-node"] == "1"  # torchrun starts the per-device workers itself
    assert re.fullmatch(r"B:USR1@\d+", d["signal"])  # to the batch script, which forwards SIGTERM to the run
    assert "requeue" in d
    text = SCRIPT.read_text()
    assert "--resume" in text and "scontrol requeue" in text and "--rdzv-backend c10d" in text
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def _stand_ins(bin_dir: Path, log: Path) -> None:
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(
        f'#!/bin/bash\nif [ "$1" = show ]; then echo 127.0.0.1; else echo "$@" >> {log}; fi\n')
    (bin_dir / "torchrun").write_text(f'#!/bin/bash\nexec {sys.executable} -m torch.distributed.run "$@"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)


def _env(tmp_path: Path, out: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PATH=f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}", SLURM_JOB_ID="4242", SLURM_NNODES="1",
               SLURM_JOB_NODELIST="node1", NPROC="2", PORT=str(free_port()), OUT=str(out), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(convcanon.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_the_script_trains_on_one_node_over_gloo(tmp_path):
    out, log = tmp_path / "run", tmp_path / "scontrol.log"
    _stand_ins(tmp_path / "bin", log)
    done = subprocess.run(["bash", str(SCRIPT), *TRAIN, "--epochs", "1"], env=_env(tmp_path, out),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    assert json.loads((out / "summary.json").read_text())["steps"] == 16  # 1024 images / (32 x 2 processes)
    assert not log.exists()  # nothing to requeue


@pytest.mark.slow
def test_a_warning_signal_checkpoints_requeues_and_the_requeued_job_resumes(tmp_path):
    out, log = tmp_path / "run", tmp_path / "scontrol.log"
    _stand_ins(tmp_path / "bin", log)
    env = _env(tmp_path, out)
    job = subprocess.Popen(["bash", str(SCRIPT), *TRAIN, "--epochs", "20", "--log-every", "1"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text()):
        assert job.poll() is None and time.time() < deadline, job.stdout.read()[-3000:]
        time.sleep(0.1)
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 sends before the time limit
    output = job.communicate(timeout=180)[0]
    assert "interrupted (SIGTERM) at step" in output, output[-3000:]
    assert log.read_text().split() == ["requeue", "4242"]
    assert not (out / "summary.json").exists()
    env["PORT"] = str(free_port())
    again = subprocess.run(["bash", str(SCRIPT), *TRAIN, "--epochs", "20"], env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 320
    assert len(json.loads((out / "run.json").read_text())["resumes"]) == 1
