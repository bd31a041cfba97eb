#!/usr/bin/env bash
# GPU check for a session that has an accelerator (issue 5): the CUDA tests, then the GPU benchmarks that
# BENCHMARKS.md records. Under 8 minutes in all; each step has its own time limit, and a step that fails or runs out
# of time is reported and the next one still runs. The exit status is the number of failed steps.
#
#   bash scripts/gpu_check.sh                 # from the repository root; results also go to $OUT (or ./gpu_check_out)
#
# Needs only what the accelerator machine has (torch >= 2.4 with CUDA, torchvision, pytest, pyyaml, safetensors,
# tensorboard, tqdm, scikit-learn); nothing is installed: the package runs from src/ through PYTHONPATH.
set -euo pipefail

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
RESULTS="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
: >"$LOG"
START=$(date +%s)
BUDGET_S=${BUDGET_S:-470}  # stop starting steps after this (the step limits below add up to it): under 8 minutes
FAILED=0

say() { echo "== $* (t=$(( $(date +%s) - START )) s)" | tee -a "$LOG"; }

# step NAME LIMIT_S COMMAND...: run with a time limit (never past the budget), log everything, keep going on failure
step() {
    local name=$1 limit=$2
    shift 2
    local left=$(( BUDGET_S - ($(date +%s) - START) ))
    if (( left < 20 )); then
        say "SKIPPED $name: the 8-minute budget is spent"
        FAILED=$((FAILED + 1))
        return 0
    fi
    if (( limit > left )); then
        limit=$left
    fi
    say "$name (limit ${limit} s): $*"
    local rc=0
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG" || rc=$?
    if (( rc != 0 )); then
        say "FAILED $name: exit status $rc$( (( rc == 124 || rc == 130 )) && echo ' (time limit)')"
        FAILED=$((FAILED + 1))
    else
        say "ok $name"
    fi
}

say "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true; } 2>&1 | tee -a "$LOG"
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import os, platform, torch, torchvision
print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, {os.cpu_count()} CPUs")
assert torch.cuda.is_available(), "no CUDA device visible: nothing to check here"
print(torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability(),
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF
git rev-parse HEAD 2>/dev/null | sed 's/^/commit /' | tee -a "$LOG" || true

# 1. The CUDA tests (bf16 autocast, determinism, engine resolution and the benchmark on the real GPU).
step "pytest -m cuda" 120 "$PY" -m pytest -m cuda -q -p no:cacheprovider tests

# 2. ResNet-50, 224x224, batch 256, bf16, fast path vs torchvision's naive fp32 loop (targets: >= 3,000 images/s and
#    >= 2.5x the baseline). Compiling the training and inference graphs takes 1-2 minutes of this.
step "bench resnet50" 210 "$PY" -m convcanon bench --model resnet50 --batch-size 256 --image-size 224 --amp bf16 \
    --baseline --windows 5 --window-seconds 2 --warmup 3 --save "$RESULTS/bench_resnet50_b256.json"

# 3. ResNet-20 on 32x32 at batch 512: as fast as the GPU allows (images/s and utilization).
step "bench resnet20" 60 "$PY" -m convcanon bench --model resnet20 --batch-size 512 --image-size 32 \
    --baseline --windows 5 --window-seconds 1 --warmup 3 --no-inference --save "$RESULTS/bench_resnet20_b512.json"

# 4. The in-memory data path on the GPU keeps up (target: end-to-end >= 90% of synthetic), on the embedded digits.
step "bench digits end-to-end" 35 "$PY" -m convcanon bench --model resnet20 --batch-size 256 --data digits \
    --windows 5 --window-seconds 1 --warmup 3 --no-inference --no-peak --no-memory \
    --save "$RESULTS/bench_digits_e2e.json"

# 5. Folder data (issue 5, item 4): decode throughput per worker, of the loader and of GPU JPEG decoding (nvJPEG), and
#    the automatic choice between them, on a tree of 256 photo-like 256x256 JPEGs written here (a few seconds).
FOLDER="$(mktemp -d "${TMPDIR:-/tmp}/convcanon_jpegs.XXXXXX")"
if "$PY" - "$FOLDER" <<'EOF' 2>&1 | tee -a "$LOG"; then
import sys
from pathlib import Path

import numpy as np
from PIL import Image

root, rng = Path(sys.argv[1]), np.random.default_rng(0)
for split, per_class in (("train", 112), ("val", 16)):
    for cls in ("a", "b"):
        for i in range(per_class):
            # Smooth colour fields plus grain: file sizes and decode costs like photos, unlike pure noise.
            low = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((256, 256), Image.BICUBIC)
            pixels = np.asarray(low).astype(np.int16) + rng.integers(-12, 13, (256, 256, 3))
            path = root / split / cls / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
print(f"wrote 256 JPEGs under {root}")
EOF
    step "bench folder decode" 45 "$PY" -m convcanon bench --model resnet18 --batch-size 64 --data "folder:$FOLDER" \
        --device cuda --workers 4 --no-compile --windows 3 --window-seconds 1 --warmup 2 --no-inference --no-peak \
        --no-memory --save "$RESULTS/bench_folder_decode.json"
else
    say "FAILED writing the JPEG tree for the folder decode check"
    FAILED=$((FAILED + 1))
fi
rm -rf "$FOLDER"

say "done: $FAILED step(s) failed; log and JSON results in $RESULTS"
exit "$FAILED"
