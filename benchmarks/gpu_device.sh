#!/usr/bin/env bash
# benchmarks/gpu_check.sh on a lent GPU machine (the `device` tool): its image's python3 holds
# torch, h5py, pluggy, attrs, click, pytest, hypothesis and pytest-xdist but not hdf5plugin,
# loguru or submitit, and it reaches no package registry. Here, once:
#   .venv/bin/python -m pip download hdf5plugin loguru submitit --python-version 3.12 \
#     --only-binary=:all: --platform manylinux_2_28_x86_64 --no-deps -d .device/wheels
# (.device/ is in .git/info/exclude), then run with carry [".device"]:
#   bash benchmarks/gpu_device.sh        (about 9 minutes: give the call timeout_s 590)
# The tool returns at most 8 files: the results come back as $OUT/gpu-check.tgz (the generated
# data left out) beside the recipes' and the suite's outputs.
set -uo pipefail
python3 -m pip install -q --no-index --find-links .device/wheels hdf5plugin loguru submitit
python3 -m pip install -q --no-deps --no-build-isolation -e . \
  $(for plugin in plugins/*/; do printf -- '-e %s ' "$plugin"; done)
RESULTS=/tmp/gpu-check
# a time limit of its own, so that the archive below is written even when a step runs long
PYTHON=python3 KDCORE="$(dirname "$(command -v python3)")/kdcore" timeout "${GPU_CHECK_LIMIT_S:-560}" \
  bash benchmarks/gpu_check.sh "$RESULTS"
tar czf "${OUT:-.}/gpu-check.tgz" --exclude fmnist -C "$(dirname "$RESULTS")" gpu-check
for name in env tests recipes suite throughput throughput-mlp; do
  cp "$RESULTS/$name.txt" "${OUT:-.}/" 2>/dev/null
done
