"""Wall-clock, memory and scaling estimator for training the canon, checked against published runs.

``estimate(model, data=..., epochs=..., device=..., devices=...)`` predicts time per epoch, total wall-clock, images/s,
scaling efficiency and memory per device from the model's measured work (:mod:`.workload`), the device's datasheet
(:mod:`.catalog`) and a handful of named, calibrated constants (:mod:`.costmodel`, whose docstring lists which run
calibrated which constant). :mod:`.validation` holds the published runs and the canon's cost table;
:mod:`.measure` times this machine for ``--measure``.
"""

from .catalog import DATASETS, DEVICES, DataSet, Device, get_dataset, get_device
from .costmodel import Estimate, MemoryPlan, estimate, memory_plan
from .inputs import TrainData, plan_input, train_data
from .measure import Measurement, measure_local
from .validation import PUBLISHED_RUNS, calibrate, canon_cost_table, validation_table
from .workload import Workload, measure_workload

__all__ = [
    "DATASETS", "DEVICES", "DataSet", "Device", "Estimate", "Measurement", "MemoryPlan", "PUBLISHED_RUNS",
    "TrainData", "Workload", "calibrate", "canon_cost_table", "estimate", "get_dataset", "get_device", "measure_local",
    "measure_workload", "memory_plan", "plan_input", "train_data", "validation_table",
]  # fmt: skip
