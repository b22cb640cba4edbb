#!/usr/bin/env bash
# The prepared check for a machine with a GPU (kdcore's CI has none): run it there in one call,
#   bash benchmarks/gpu_check.sh [OUT]            (default OUT: gpu-check)
# and record what it measured. In under 9 minutes it writes, under OUT:
#   env.txt         torch, CUDA and the GPUs seen
#   tests.txt       the tests that need CUDA (fp16, precision, no device sync per step, the
#                   records of a GPU run), run on it
#   kd-run/         a KD recipe trained on the GPU in bf16, its frozen teacher's outputs
#                   stored (models.teacher.cache_outputs; summary.json, history.h5 with the
#                   GPU's name in its setup attribute, log)
#   recipes.txt     every shipped recipe trained one epoch per stage on the device, twice
#                   with run.deterministic and once without (are the histories equal?)
#                   (benchmarks/gpu_recipes.py: does each method run there, end to end?)
#   throughput.txt  engine against the plain loop (benchmarks/engine_costs.py) on the GPU,
#                   on generated Fashion-MNIST-shaped data (the machine has no network)
#   throughput-mlp.txt  the same for the MLP, where the engine's per-batch work weighs most
#   ddp.txt         the engine against a bare DistributedDataParallel loop, ResNet-20, 2 GPUs
#                   (benchmarks/ddp_throughput.py; 2 gloo processes on the CPU without a GPU;
#                   skipped on a machine with one GPU)
#   suite.txt       the test suite's unit tests (-m "not slow") on the GPU machine, in parallel
#                   where pytest-xdist is installed (GPU mode only: CI runs them on the CPU)
# Without a GPU it runs the same steps on the CPU, smaller (its CPU fallback, also what the
# test suite exercises); GPU_CHECK_DRY_RUN=1 prints the steps without running them.
set -uo pipefail

OUT=${1:-gpu-check}
PY=${PYTHON:-.venv/bin/python}
KDCORE=${KDCORE:-.venv/bin/kdcore}
DRY=${GPU_CHECK_DRY_RUN:-0}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  MODE=gpu DEVICE=cuda GPUS=$(nvidia-smi -L | wc -l)
  EPOCHS=3 REPEATS=3 SUBSET=0 BUDGET=150 RECIPES='*'
else
  MODE=cpu DEVICE=cpu GPUS=0
  EPOCHS=1 REPEATS=1 SUBSET=5000 BUDGET=120 RECIPES='amlkd'
fi
echo "gpu_check: mode $MODE, device $DEVICE, $GPUS GPU(s), output $OUT"

step() {  # step NAME SECONDS COMMAND...: run under a time limit, output to OUT/NAME.txt
  local name=$1 limit=$2
  shift 2
  echo "gpu_check: step $name (at most ${limit}s): $*"
  if [ "$DRY" = 1 ]; then return 0; fi
  local t0=$SECONDS
  # SIGINT first: pytest and kdcore then print what they have (a test summary, the run's end)
  timeout -s INT -k 20 "$limit" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  echo "gpu_check: step $name ended with $rc after $((SECONDS - t0))s" | tee -a "$OUT/$name.txt"
}

[ "$DRY" = 1 ] || mkdir -p "$OUT"

step env 60 "$PY" -c "
import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    print(i, torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory)
"

step tests 180 "$PY" -m pytest -q -p no:cacheprovider tests/test_precision.py tests/test_device.py \
  tests/test_cuda.py

step kd-run "$BUDGET" "$KDCORE" run recipes/kd.toml --out "$OUT/kd-run" --overwrite -q \
  --set "run.device=\"$DEVICE\"" --set 'run.precision="bf16"' \
  --set models.teacher.cache_outputs=true

step recipes 170 "$PY" benchmarks/gpu_recipes.py --device "$DEVICE" --budget-s 120 \
  --only "$RECIPES" --repeat --results "$OUT/recipes"

# engine_costs.py reads Fashion-MNIST through its loader: point it at generated IDX files
FMNIST="$OUT/fmnist"
step fmnist-data 60 "$PY" -c "
from pathlib import Path
from kdcore.testing import write_fashion_mnist
write_fashion_mnist(Path('$FMNIST'), n_train=60000, n_test=10000)
"
KDCORE_FASHION_MNIST="$FMNIST" step throughput 240 "$PY" benchmarks/engine_costs.py \
  --arch cnn --device "$DEVICE" --epochs "$EPOCHS" --repeats "$REPEATS" --subset "$SUBSET" \
  --results "$OUT"
KDCORE_FASHION_MNIST="$FMNIST" step throughput-mlp 150 "$PY" benchmarks/engine_costs.py \
  --arch mlp --device "$DEVICE" --epochs "$EPOCHS" --repeats "$REPEATS" --subset "$SUBSET" \
  --results "$OUT"

if [ "$GPUS" -ge 2 ]; then
  step ddp 200 "$PY" benchmarks/ddp_throughput.py --nproc 2 --device cuda --train 20000 \
    --epochs 3 --repeats 2 --results "$OUT"
elif [ "$MODE" = cpu ]; then  # two gloo processes: the same code path, small
  step ddp 200 "$PY" benchmarks/ddp_throughput.py --nproc 2 --device cpu --train 1280 \
    --epochs 2 --repeats 1 --results "$OUT"
fi
if [ "$MODE" = gpu ]; then
  # -vv: pyproject's -q would cancel one -v, and each test's line names a failure as it
  # happens (under xdist the summary comes only at the end)
  workers=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 14" || echo "")
  per_test=$("$PY" -c "import pytest_timeout" 2>/dev/null && echo "--timeout 60" || echo "")
  step suite 280 "$PY" -m pytest -p no:cacheprovider -vv -rfE --tb=short -m "not slow" \
    --durations 25 \
    $workers $per_test
fi
echo "gpu_check: done; results in $OUT"
