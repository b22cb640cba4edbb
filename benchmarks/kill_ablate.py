"""SIGKILL of a real ``kdcore ablate --jobs 2`` at a random moment, then the same ablate again:
does every grid finish, each run bit for bit a direct run of its recipe and seed?

``kill_resume.py`` kills ``kdcore run``; this kills the grid, whose runs die with it
(docs/recipes.md) in whatever state they were: not started, at their very start (before their
first checkpoint), mid-run or finished. Each grid: two recipes drawn by
``kdcore.testing.accepted_compositions`` (random components over random models after a teacher
stage, their choices and a third of their numbers drawn, 3 epochs a stage) x seeds 0 and 1,
``--jobs 2``, killed after a delay drawn from ``--delay`` seconds (a grid that ends first counts
as such); ``kdcore ablate`` again must end with exit 0, and every run's history must equal
``OMP_NUM_THREADS=1 kdcore run`` of its recipe and seed (a ``--jobs N`` run has one torch
thread).

Usage:  .venv/bin/python benchmarks/kill_ablate.py [--grids 8] [--delay 3 14] [--seed 0]
Prints one line per grid and a count; a grid whose rerun fails, or a run that differs, is named.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdcore.testing import accepted_compositions, assert_same_history, write_recipe

KDCORE = str(Path(sys.executable).parent / "kdcore")
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def differing_runs(recipes: list[str], grid: Path, work: Path) -> list[str]:
    """The runs of ``grid`` that differ from a direct run of their recipe and seed."""
    differ = []
    for recipe in recipes:
        name = Path(recipe).stem
        for seed in (0, 1):
            direct = work / f"direct-{grid.name}-{name}-{seed}"
            subprocess.run([KDCORE, "run", recipe, "--set", f"run.seed={seed}", "--out",
                            str(direct), "--quiet"], capture_output=True, text=True,
                           env=ONE_THREAD).check_returncode()
            try:
                assert_same_history(grid / name / f"seed{seed}", direct)
            except AssertionError as exc:
                differ.append(f"{name} seed {seed}: {str(exc)[:200]}")
    return differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, default=8)
    parser.add_argument("--delay", type=float, nargs=2, default=(3.0, 14.0))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    drawn = accepted_compositions(random.Random(args.seed), 2 * args.grids, choices=True,
                                  numbers=True, epochs=3, train_subset=200, gold_per_class=3)
    good = 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for g in range(args.grids):
            recipes = [str(write_recipe(drawn[2 * g + i], work / f"grid{g}-r{i}.toml"))
                       for i in range(2)]
            grid = work / f"grid{g}"
            cmd = [KDCORE, "ablate", *recipes, "--seeds", "0-1", "--out", str(grid), "-j", "2"]
            wait = rng.uniform(*args.delay)
            child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                child.wait(timeout=wait)
                how = "ended before the kill"
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
                child.wait()
                how = "killed"
            time.sleep(1.0)  # its runs see their grid gone and die
            again = subprocess.run(cmd, capture_output=True, text=True)
            if again.returncode:
                print(f"grid {g} ({how} at {wait:.1f} s): ablate again exit "
                      f"{again.returncode}: {again.stdout.strip()[-400:]}", flush=True)
                continue
            differ = differing_runs(recipes, grid, work)
            good += not differ
            resumed = again.stdout.count(": resuming")
            print(f"grid {g} ({how} at {wait:.1f} s): ablate again resumed {resumed}, "
                  f"{again.stdout.strip().splitlines()[-1].split(': ', 1)[-1]}; "
                  + ("every run equals its direct run" if not differ else
                     f"DIFFER: {'; '.join(differ)}"), flush=True)
        print(f"{good} of {args.grids} grids ended with every run equal to its direct run")


if __name__ == "__main__":
    main()
