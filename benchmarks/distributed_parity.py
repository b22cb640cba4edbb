"""Every shipped digits recipe in 2 gloo processes against 1 process at the same global batch.

Each recipe runs shortened (240 training images, 2 epochs per stage; F&F's self-supervised
stage 1) once with ``kdcore run`` and once with ``kdcore run --nproc 2``; the two histories
must agree as tests/test_distributed.py requires (``kdcore.testing.assert_close_history``:
discrete columns equal, float columns within 1e-3 + 2e-3 x their value (float16 storage),
metrics within 1e-4). The largest difference of each float column and metric is recorded.

With ``--compositions N`` it runs N recipes drawn by ``kdcore.testing.random_composition``
instead (registered components composed at random after a teacher stage, 2 epochs a stage,
the draws that ``kdcore check`` accepts and that may run in 2 processes; ``--seed`` picks them):
whether the components keep their parity together as they do in their own recipes. With
``--choices`` each entry also draws its ``Literal`` and ``bool`` parameters
(``kdcore.testing.random_choices``), and with ``--numbers`` a third of its numbers too. With
``--retrain`` a second stage repeats the entries under the same labels and trains another draw
of models (``random_composition(retrain=True)``; the teacher among them), with their parameter
choices drawn: a model trained in one stage and taught otherwise in the next.

Usage:  .venv/bin/python benchmarks/distributed_parity.py [RECIPE ...]
        .venv/bin/python benchmarks/distributed_parity.py --compositions 15 [--seed 7] [--choices
            [--numbers]] [--retrain]
Writes benchmarks/results/distributed_parity.json (or distributed_parity_compositions.json,
distributed_parity_compositions_choices.json, distributed_parity_compositions_numbers.json,
distributed_parity_compositions_retrain.json).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdcore.recipe.resolve import load_raw
from kdcore.testing import accepted_compositions, assert_close_history, write_recipe

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RECIPES = ["kd", "amlkd", "kdmlc", "almkd", "amal", "lsh", "smkd", "dml", "ff", "ls", "ce"]
FLOAT_ATOL, FLOAT_RTOL, METRIC_ATOL = 1e-3, 2e-3, 1e-4


def overrides(name: str) -> list[str]:
    stages = [s["name"] for s in load_raw(ROOT / "recipes" / f"{name}.toml")["stages"]]
    short = [f"stages.{s}.epochs={1 if s == 'ssl' else 2}" for s in stages]
    return ["data.train_subset=240", 'run.device="cpu"', *short]


def kdcore_run(recipe: Path, out: Path, sets: list[str], extra: list[str]) -> None:
    args = [a for o in sets for a in ("--set", o)]
    proc = subprocess.run([sys.executable, "-m", "kdcore", "run", str(recipe), *args, "--out",
                           str(out), "-q", *extra], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])


def compare(name: str, recipe: Path, sets: list[str], work: Path) -> dict:
    """Run ``recipe`` in 1 and in 2 processes; whether the histories agree, and by how much."""
    t0 = time.time()
    kdcore_run(recipe, work / f"{name}-1", sets, [])
    kdcore_run(recipe, work / f"{name}-2", sets, ["--nproc", "2"])
    try:
        differ = assert_close_history(work / f"{name}-1" / "history.h5",
                                      work / f"{name}-2" / "history.h5",
                                      float_atol=FLOAT_ATOL, float_rtol=FLOAT_RTOL,
                                      metric_atol=METRIC_ATOL)
        result = {"agree": True, "largest_differences": differ}
    except AssertionError as exc:
        result = {"agree": False, "why": str(exc)[:500]}
    worst = max(result.get("largest_differences", {}).values(), default=0.0)
    print(f"{name}: {'agree' if result['agree'] else 'DIFFER'} (largest float difference "
          f"{worst:.2g}; {time.time() - t0:.0f}s)", flush=True)
    return result


def compositions(count: int, seed: int, work: Path, choices: bool, numbers: bool = False,
                 retrain: bool = False) -> dict[str, Path]:
    """``count`` drawn recipes that ``kdcore check`` accepts in 2 processes, under ``work``."""
    out: dict[str, Path] = {}
    again = ({"retrain": True, "again": 1.0, "trains": [
        ["student"], ["student", "peer"], ["teacher", "student"], ["peer"]]} if retrain else {})
    for recipe in accepted_compositions(random.Random(seed), count,
                                        choices=choices or numbers or retrain, numbers=numbers,
                                        processes=2, epochs=2, train_subset=240,
                                        gold_per_class=3, **again):
        uses = "+".join(c["use"] for c in recipe["stages"][1]["components"])
        trains = "+then+".join("+".join(st["train"]) for st in recipe["stages"][1:])
        name = f"{len(out)}-{uses}-on-{trains}"
        out[name] = write_recipe(recipe, work / f"{name}.toml")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="*", default=RECIPES)
    parser.add_argument("--compositions", type=int, default=0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--choices", action="store_true")
    parser.add_argument("--numbers", action="store_true")
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="parity-"))
    if args.compositions:
        recipes = compositions(args.compositions, args.seed, work, args.choices, args.numbers,
                               args.retrain)
        sets = {name: [] for name in recipes}
        target = ("distributed_parity_compositions_retrain.json" if args.retrain else
                  "distributed_parity_compositions_numbers.json" if args.numbers else
                  "distributed_parity_compositions_choices.json" if args.choices else
                  "distributed_parity_compositions.json")
    else:
        recipes = {n: ROOT / "recipes" / f"{n}.toml" for n in args.recipes}
        sets = {n: overrides(n) for n in args.recipes}
        target = "distributed_parity.json"
    results = {name: compare(name, path, sets[name], work) for name, path in recipes.items()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"overrides": sets, "float_atol": FLOAT_ATOL, "float_rtol": FLOAT_RTOL,
              "metric_atol": METRIC_ATOL, "results": results}
    if args.compositions:
        record["seed"] = args.seed
        record["recipes"] = {n: p.read_text(encoding="utf-8") for n, p in recipes.items()}
    (RESULTS / target).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
