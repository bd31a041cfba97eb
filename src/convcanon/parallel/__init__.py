"""Model parallelism: pipeline stages over processes (torch.distributed.pipelining) and AlexNet's two towers on two
devices; plus the data-parallel scaling benchmark. Data parallelism itself lives in ``convcanon.train``."""
