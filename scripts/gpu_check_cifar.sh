#!/usr/bin/env bash
# GPU check of the papers' CIFAR-10 protocol (issue 16), a sibling of gpu_check.sh: one net of He et al.'s Table 6
# protocol (ResNet-20, batch 128, the paper's schedule shape over STEPS steps) through the experiment's own unit,
# timed against the estimator's prediction for the same steps, then `report --tiny --data cifar10:DIR` on the GPU
# (sections, plots). Under 5 minutes in all (BUDGET_S); each step has its own limit.
#
#   bash scripts/gpu_check_cifar.sh               # from the repository root; results also go to $OUT/gpu_check_cifar
#   DEVICE=cpu STEPS=20 PER_BATCH=200 bash scripts/gpu_check_cifar.sh   # the plumbing on a CPU (numbers mean nothing)
#
# The accelerator machine has no network: the data is a CIFAR-10 python-format folder of random images written here
# (50,000 + 10,000 images in the real file layout), so the step times are real and the errors are chance level.
set -euo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
RESULTS="${OUT:-$PWD/gpu_check_out}/gpu_check_cifar"
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check_cifar.log"
: >"$LOG"
START=$(date +%s)
BUDGET_S=${BUDGET_S:-290}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-3000}  # ResNet-20 at batch 128: ~10 s of steps on an H100 (estimator); eager (compiled from 20k)
PER_BATCH=${PER_BATCH:-10000}  # images per CIFAR file (10,000: the real size)
FAILED=0

say() { echo "== $* (t=$(( $(date +%s) - START )) s)" | tee -a "$LOG"; }

step() {
    local name=$1 limit=$2
    shift 2
    local left=$(( BUDGET_S - ($(date +%s) - START) ))
    if (( left < 20 )); then
        say "SKIPPED $name: the budget is spent"
        FAILED=$((FAILED + 1))
        return 0
    fi
    if (( limit > left )); then
        limit=$left
    fi
    say "$name (limit ${limit} s)"
    local rc=0
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG" || rc=$?
    if (( rc != 0 )); then
        say "FAILED $name: exit status $rc$( (( rc == 124 || rc == 130 )) && echo ' (time limit)')"
        FAILED=$((FAILED + 1))
    else
        say "ok $name"
    fi
}

DATA="$(mktemp -d "${TMPDIR:-/tmp}/convcanon_cifar.XXXXXX")/cifar-10-batches-py"
trap 'rm -rf "$(dirname "$DATA")"' EXIT
step "write a CIFAR-10 folder of random images" 60 "$PY" - "$DATA" "$PER_BATCH" <<'EOF'
import pickle, sys
from pathlib import Path

import numpy as np

root, n, rng = Path(sys.argv[1]), int(sys.argv[2]), np.random.default_rng(0)
root.mkdir(parents=True)
for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
    (root / name).write_bytes(pickle.dumps(batch, protocol=2))
(root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}, protocol=2))
print(f"wrote {6 * n:,} random images under {root}")
EOF

# 1. One net of the protocol: the unit he_table6 runs (fast path on the GPU), against the estimator.
step "resnet20, ${STEPS} steps of the Table 6 protocol" 150 "$PY" - "$DATA" "$DEVICE" "$STEPS" "$RESULTS" <<'EOF'
import json, sys, time
from pathlib import Path

import torch

from convcanon.analysis.experiments import he_table6
from convcanon.analysis.report import catalog_device
from convcanon.estimate import estimate

data, device, steps, results = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
if device == "cuda":
    assert torch.cuda.is_available(), "no CUDA device visible: run with DEVICE=cpu for the plumbing only"
    print(torch.cuda.get_device_name(), f"torch {torch.__version__}")
t0 = time.perf_counter()
out = he_table6.train_one("resnet20", f"cifar10:{data}", seed=0, steps=steps, batch_size=128, lr=0.1,
                          weight_decay=1e-4, momentum=0.9, warmup_steps=0, warmup_lr=0.01,
                          eval_every=max(1, steps // 4), window=50, device=device)
wall = time.perf_counter() - t0
dev = catalog_device(device)
predicted = estimate("resnet20", data="cifar10", epochs=steps * 128 / 50_000, device=dev, batch_size=128)
row = {"device": dev, "steps": steps, "wall_s": round(wall, 1), "train_s": out["seconds"],
       "predicted_s": round(predicted.total_s, 1), "ms_per_step": round(1000 * out["seconds"] / steps, 2),
       "predicted_ms_per_step": round(1000 * predicted.step_s, 2), "final_test_error": out["final_test_error"],
       "diverged": out["diverged"]}
print(json.dumps(row))
(results / "resnet20_slice.json").write_text(json.dumps(row, indent=1))
# A full Table 6 row is 64k steps: the measured step time says what this GPU needs for one seed of ResNet-20.
print(f"one ResNet-20 row of Table 6 (64k steps) at this step time: {64_000 * row['ms_per_step'] / 60_000:.0f} min")
assert not out["diverged"], "the run diverged"
EOF

# 2. The tiny report on this device: Table 6, Fig. 1 and the ideas at 32x32, their sections and plots (scaling's torchrun
#    pairs run on the CPU and take minutes: left to the test suite).
step "report --tiny --data cifar10" 120 "$PY" -m convcanon report --tiny --data "cifar10:$DATA" --device "$DEVICE" \
    --only he-table6,alexnet-fig1,ideas --out "$RESULTS/tiny_report" --no-progress

say "done: $FAILED step(s) failed; log and results in $RESULTS"
exit "$FAILED"
