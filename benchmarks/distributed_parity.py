"""Every shipped digits recipe in 2 gloo processes against 1 process at the same global batch.

Each recipe runs shortened (240 training images, 2 epochs per stage; F&F's self-supervised
stage 1) once with ``kdcore run`` and once with ``kdcore run --nproc 2``; the two histories
must agree as tests/test_distributed.py requires (``kdcore.testing.assert_close_history``:
discrete columns equal, float columns within 1e-3 + 2e-3 x their value (float16 storage),
metrics within 1e-4). The largest difference of each float column and metric is recorded.

Usage:  .venv/bin/python benchmarks/distributed_parity.py [RECIPE ...]
Writes benchmarks/results/distributed_parity.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdcore.recipe.resolve import load_raw
from kdcore.testing import assert_close_history

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RECIPES = ["kd", "amlkd", "kdmlc", "almkd", "amal", "lsh", "smkd", "dml", "ff", "ls", "ce"]
FLOAT_ATOL, FLOAT_RTOL, METRIC_ATOL = 1e-3, 2e-3, 1e-4


def overrides(name: str) -> list[str]:
    stages = [s["name"] for s in load_raw(ROOT / "recipes" / f"{name}.toml")["stages"]]
    short = [f"stages.{s}.epochs={1 if s == 'ssl' else 2}" for s in stages]
    return ["data.train_subset=240", 'run.device="cpu"', *short]


def kdcore_run(name: str, out: Path, extra: list[str]) -> None:
    sets = [a for o in overrides(name) for a in ("--set", o)]
    proc = subprocess.run([sys.executable, "-m", "kdcore", "run", str(ROOT / "recipes" /
                                                                     f"{name}.toml"),
                           *sets, "--out", str(out), "-q", *extra],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])


def main() -> None:
    names = sys.argv[1:] or RECIPES
    work = Path(tempfile.mkdtemp(prefix="parity-"))
    results = {}
    for name in names:
        t0 = time.time()
        kdcore_run(name, work / f"{name}-1", [])
        kdcore_run(name, work / f"{name}-2", ["--nproc", "2"])
        try:
            differ = assert_close_history(work / f"{name}-1" / "history.h5",
                                          work / f"{name}-2" / "history.h5",
                                          float_atol=FLOAT_ATOL, float_rtol=FLOAT_RTOL,
                                          metric_atol=METRIC_ATOL)
            results[name] = {"agree": True, "largest_differences": differ}
        except AssertionError as exc:
            results[name] = {"agree": False, "why": str(exc)[:500]}
        worst = max(results[name].get("largest_differences", {}).values(), default=0.0)
        print(f"{name}: {'agree' if results[name]['agree'] else 'DIFFER'} (largest float "
              f"difference {worst:.2g}; {time.time() - t0:.0f}s)", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"overrides": {n: overrides(n) for n in names}, "float_atol": FLOAT_ATOL,
              "float_rtol": FLOAT_RTOL, "metric_atol": METRIC_ATOL, "results": results}
    (RESULTS / "distributed_parity.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
