"""Benchmarks, each timing the engine's own training step (``train.step.TrainStep``) against a baseline measured in
the same run: throughput (``convcanon bench``: ``perf.bench``, with ``perf.timing``, ``perf.memory``,
``perf.report``), data-parallel scaling (``perf.scaling``) and folder-data decoding (``perf.decode``). Benchmarks are
not tests: they print figures and ratios; BENCHMARKS.md records them with the command and machine."""
