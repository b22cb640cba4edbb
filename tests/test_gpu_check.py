"""benchmarks/gpu_check.sh: valid bash, and without a GPU it plans its CPU fallback (the GPU run
itself happens on a lent machine; its figures go to docs/benchmarks.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.parametrize("script", [SCRIPT, SCRIPT.with_name("gpu_device.sh")])
def test_the_script_parses(script):
    parsed = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert parsed.returncode == 0 and not parsed.stderr, parsed.stderr


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine plans GPU steps")
def test_without_a_gpu_it_plans_every_step_on_the_cpu(tmp_path):
    out = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True,
                         text=True, check=True, cwd=SCRIPT.parents[1],
                         env={**os.environ, "GPU_CHECK_DRY_RUN": "1"}).stdout
    assert "mode cpu, device cpu, 0 GPU(s)" in out
    steps = [line.split()[2] for line in out.splitlines() if line.startswith("gpu_check: step")]
    assert steps == ["env", "tests", "kd-run", "recipes", "fmnist-data", "throughput",
                     "throughput-mlp", "ddp"]
    assert "ddp_throughput.py --nproc 2 --device cpu" in out  # two gloo processes
    assert '--set run.device="cpu"' in out and "--device cpu" in out
    assert "gpu_recipes.py --device cpu --budget-s 120 --only amlkd --repeat" in out  # small
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
