"""The run directory: where a run lives, how a new one is claimed, how a resumed one is found and checked."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..io import LOCK_NAME, RunLock, refused_write
from . import distributed
from .config import RESUME_OVERRIDABLE, TrainConfig, config_from_dict, load_yaml


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def default_run_dir(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = cfg.data.split(":")[0]
    return Path("runs") / f"{cfg.model}-{data}-{stamp}"


def claim_new_run_dir(path: Path, what: str = "convcanon train") -> RunLock:
    """Create ``path`` (or take an empty one) and lock it for this process, before anything else is written in it.

    Refused: a path that is a file, lies under a file, or is a dangling symlink; a directory another live process owns
    (named); a directory that already holds a run (continue it with --resume) or anything else. Locking comes before
    the emptiness check, so of two runs started on the same ``--out`` one wins and the other is told who.
    """
    if path.is_symlink() and not path.exists():
        raise ValueError(f"--out {path} is a symbolic link to nothing ({os.readlink(path)}): remove it or pick "
                         "another --out")
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path}: exists and is not a directory")
    try:
        with refused_write(path):
            path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"--out {path}: a part of this path is a file, not a directory; pick another --out") from None
    lock = RunLock(path).acquire(what)
    content = [p.name for p in path.iterdir() if p.name != LOCK_NAME]
    if content:
        lock.release()
        if (path / "config.yaml").exists():
            raise ValueError(f"--out {path} already holds a run: continue it with --resume {path}, or pick a new --out")
        raise ValueError(f"--out {path} is not empty: pick a new or empty directory")
    return lock


def resume_config(run_dir: str | Path, overrides: dict[str, Any], given: set[str]) -> TrainConfig:
    """The config of the run in ``run_dir``, with the keys a resume may change taken from ``overrides``."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise FileNotFoundError(f"--resume {run_dir}: no config.yaml there; is it a convcanon run directory?")
    saved = load_yaml(cfg_path)
    if "out" in given and overrides.get("out") and Path(overrides["out"]).resolve() != run_dir.resolve():
        raise ValueError(f"--resume {run_dir} --out {overrides['out']}: a resumed run continues in its own directory; "
                         "drop --out (to start a new run from these weights, use a new --out without --resume)")
    # --max-steps stops this invocation; it is not part of the run: a resume without it trains to the end.
    saved["max_steps"] = overrides.get("max_steps", 0) if "max_steps" in given else 0
    conflicts = []
    for key in sorted(given):
        if key in ("out", "max_steps"):
            continue
        if key in RESUME_OVERRIDABLE:
            saved[key] = overrides[key]
        elif overrides.get(key) != saved.get(key):
            conflicts.append(f"--{key.replace('_', '-')} {overrides.get(key)!r} (run has {saved.get(key)!r})")
    if conflicts:
        raise ValueError(
            f"--resume {run_dir}: these settings differ from the run being continued: {'; '.join(conflicts)}. "
            f"Only {', '.join(sorted(RESUME_OVERRIDABLE))} may change on resume."
        )
    saved["out"] = str(run_dir)
    return config_from_dict(saved, where=str(cfg_path))


def restarted_run(cfg: TrainConfig) -> Path | None:
    """Under ``torchrun --max-restarts N``, a restarted worker continues the run its first attempt began in ``--out``
    (torchrun starts the same command again; without this it would refuse the non-empty ``--out``)."""
    if distributed.restart_count() == 0 or not cfg.out:
        return None
    out = Path(cfg.out)
    return out if (out / "config.yaml").exists() else None


def run_facts(device: torch.device) -> dict[str, Any]:
    """What run.json records about the machine and the software, besides the plan."""
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "convcanon": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "git_commit": git_commit(), "argv": sys.argv, "threads": torch.get_num_threads(),
    }  # fmt: skip


__all__ = ["claim_new_run_dir", "default_run_dir", "git_commit", "restarted_run", "resume_config", "run_facts"]
