#!/usr/bin/env bash
# benchmarks/gpu_check.sh on a lent GPU machine (the `device` tool): its image's python3 holds
# torch, h5py, pluggy, attrs and click but not hdf5plugin or loguru, and it reaches no package
# registry. Here, once:
#   .venv/bin/python -m pip download hdf5plugin loguru --python-version 3.12 \
#     --only-binary=:all: --platform manylinux_2_28_x86_64 --no-deps -d .device/wheels
# (.device/ is in .git/info/exclude), then run with carry [".device"]:
#   bash benchmarks/gpu_device.sh        (its results land in $OUT/gpu-check)
set -uo pipefail
python3 -m pip install -q --no-index --find-links .device/wheels hdf5plugin loguru
python3 -m pip install -q --no-deps --no-build-isolation -e .
PYTHON=python3 KDCORE="$(dirname "$(command -v python3)")/kdcore" \
  bash benchmarks/gpu_check.sh "${OUT:-.}/gpu-check"
