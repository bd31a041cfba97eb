"""Parallel training pieces: pipeline stages over processes (torch.distributed.pipelining), AlexNet's two towers on two
devices, sync batch norm for data parallelism, and the data-parallel scaling benchmark. The process group itself
(torchrun's environment, the heartbeat) lives in ``convcanon.train.distributed``."""
