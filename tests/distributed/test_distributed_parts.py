"""The parts of data parallelism that need no second process: the heartbeat, backend choice, the restart and
world-size rules of resume. (Sync batch norm's arithmetic: tests/parallel/test_sync_batchnorm.py.)"""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

from convcanon.train import distributed
from convcanon.train.config import TrainConfig, config_from_dict
from convcanon.train.run import train
from convcanon.train.rundir import restarted_run

QUIET = {"progress": False, "workers": 0}


# ------------------------------------------------------------------------------------------------------ heartbeat


NAMES = ["host pid 4141 local rank 0", "host pid 4242 local rank 1", "host pid 4343 local rank 2"]


def test_heartbeat_names_the_silent_rank_and_not_the_finished_one():
    store = dist.HashStore()
    stuck: list[str] = []
    watcher = distributed.Heartbeat(store, 0, NAMES, timeout=0.6, interval=0.1, on_stuck=stuck.append)
    # rank 1 beats once, then falls silent (a SIGSTOP); rank 2 beats once and says it is done.
    silent = distributed.Heartbeat(store, 1, NAMES, timeout=0.6, interval=0.1, on_stuck=lambda m: None)
    finished = distributed.Heartbeat(store, 2, NAMES, timeout=0.6, interval=0.1, on_stuck=lambda m: None)
    silent._beat()
    finished.start()
    t0 = time.monotonic()
    watcher.start()
    finished.stop()
    while not stuck and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    watcher.stop()
    assert len(stuck) == 1, stuck
    assert "rank 1 of 3 (host pid 4242 local rank 1) sent no heartbeat" in stuck[0]
    assert "rank 2" not in stuck[0]
    assert 0.6 <= time.monotonic() - t0 < 5


def test_heartbeat_ignores_the_keys_of_an_earlier_attempt():
    # A restarted job's rank 1 is a new process: the silent counter and the "done" of the old one are not its own.
    store = dist.HashStore()
    store.set("convcanon/heartbeat/done/host pid 9999 local rank 1", "1")
    stuck: list[str] = []
    names = [NAMES[0], "host pid 5252 local rank 1"]
    watcher = distributed.Heartbeat(store, 0, names, timeout=0.4, interval=0.1, on_stuck=stuck.append).start()
    t0 = time.monotonic()
    while not stuck and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    watcher.stop()
    assert stuck and "rank 1 of 2 (host pid 5252 local rank 1)" in stuck[0]


def test_heartbeat_stays_quiet_while_every_rank_beats():
    store = dist.HashStore()
    stuck: list[str] = []
    beats = [distributed.Heartbeat(store, r, NAMES[:2], timeout=0.4, interval=0.1, on_stuck=stuck.append)
             for r in range(2)]
    for b in beats:
        b.start()
    time.sleep(1.2)
    for b in beats:
        b.stop()
    assert stuck == []


def test_heartbeat_interval_is_a_fifth_of_the_timeout_within_bounds():
    assert distributed.heartbeat_interval(300) == 15.0
    assert distributed.heartbeat_interval(10) == 2.0
    assert distributed.heartbeat_interval(0.5) == 0.2


# ---------------------------------------------------------------------------------------------------- backend, config


def test_backend_is_gloo_on_cpu_nccl_on_cuda_and_nccl_needs_cuda():
    assert distributed.resolve_backend(None, torch.device("cpu")) == "gloo"
    assert distributed.resolve_backend(None, torch.device("cuda", 0)) == "nccl"
    assert distributed.resolve_backend("gloo", torch.device("cuda", 0)) == "gloo"
    with pytest.raises(ValueError, match="--dist-backend nccl needs CUDA"):
        distributed.resolve_backend("nccl", torch.device("cpu"))


def test_one_process_without_torchrun_env_is_a_world_of_one(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = distributed.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.distributed, ctx.backend, ctx.heartbeat) == (0, 1, False, None, None)
    with pytest.raises(ValueError, match="dist-timeout"):
        distributed.setup("cpu", timeout_s=0)


@pytest.mark.parametrize(("values", "message"), [
    ({"dist_backend": "tcp"}, "--dist-backend must be one of"),
    ({"dist_timeout": 0}, "--dist-timeout must be"),
    ({"pipeline_stages": 2, "batch_size": 10, "microbatches": 4}, "multiple of --microbatches"),
    ({"pipeline_stages": 2, "pipeline_split": [3]}, "one per stage"),
    ({"pipeline_stages": 2, "accum_steps": 2, "batch_size": 8}, "--accum-steps must be 1"),
])  # fmt: skip
def test_scaling_settings_are_checked(values, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(values)


# ---------------------------------------------------------------------------------------------------------- resume


def test_restarted_worker_continues_the_run_in_out(tmp_path, monkeypatch):
    cfg = TrainConfig(out=str(tmp_path / "run"))
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert restarted_run(cfg) is None
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert restarted_run(cfg) is None  # nothing started there yet: a fresh run
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model: resnet20\n")
    assert restarted_run(cfg) == tmp_path / "run"


def _run(tmp_path, name, **kw):
    cfg = TrainConfig(**{**QUIET, "out": str(tmp_path / name), **kw})
    train(cfg, out_stream=open(os.devnull, "w"))
    return tmp_path / name


COMMON = dict(model="resnet20", model_options={"batch_norm": False}, epochs=1, lr=0.05, warmup_epochs=0.0,
              schedule="constant", deterministic=True, amp="off")


class _Data:
    def __init__(self, train_size: int) -> None:
        self.train_size = train_size

    def num_train_batches(self, batch_size: int, world_size: int = 1) -> int:
        return self.train_size // (batch_size * world_size)


def _position(saved: dict, world: int, batch_in_epoch: int, **now) -> int:
    """Where a checkpoint of ``world`` processes at ``batch_in_epoch`` continues in one process with ``now``."""
    from convcanon.train.distributed import DistContext
    from convcanon.train.optim import make_plan
    from convcanon.train.strategy import SingleDevice

    state = {"config": {**COMMON, **saved}, "world_size": world, "batch_in_epoch": batch_in_epoch}
    cfg = TrainConfig(**{**COMMON, **now})
    data = _Data(1437)  # the digits' training split
    strategy = SingleDevice()
    strategy.ctx = DistContext(0, 1, 0, torch.device("cpu"), None)
    plan = make_plan(cfg, data.num_train_batches(cfg.batch_size))
    return strategy.resume_position(state, cfg, plan, data, lambda m: None)


def test_resume_position_between_world_sizes():
    # 2 processes x 8 = 16 images per micro-batch; at micro-batch 10 of the epoch, 160 images are done.
    assert _position({"batch_size": 8}, 2, 10, batch_size=16) == 10  # 1 process x 16: micro-batch 10 again
    assert _position({"batch_size": 8, "accum_steps": 2}, 2, 10, batch_size=16, accum_steps=2) == 10
    assert _position({"batch_size": 16}, 1, 10, batch_size=16) == 10  # unchanged: as saved
    with pytest.raises(ValueError, match=r"--batch-size 16 --accum-steps 1"):
        _position({"batch_size": 8}, 2, 10, batch_size=8)  # 1 x 8 would halve the global batch
    with pytest.raises(ValueError, match=r"global batch 16"):
        _position({"batch_size": 16}, 1, 10, batch_size=8, accum_steps=2)  # 90 steps an epoch instead of 89


def test_resume_refuses_another_global_batch(tmp_path):
    run = _run(tmp_path, "part", batch_size=16, max_steps=2, **COMMON)
    other = TrainConfig(**{**QUIET, **COMMON, "out": str(run), "batch_size": 8, "max_steps": 4})
    with pytest.raises(ValueError, match=r"global batch 16.*--batch-size 16 --accum-steps 1"):
        train(other, resume=run, out_stream=open(os.devnull, "w"))
