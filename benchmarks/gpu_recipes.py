"""Every shipped recipe trained briefly on one device: does each method run there, end to end?

The test suite runs on the CPU (kdcore's CI has no GPU), so a plugin that builds a tensor on the
CPU beside a model on the GPU, or reads a CUDA tensor into NumPy, fails only on a GPU. This runs
each recipe under recipes/ (bases skipped) on ``--device``, each stage cut to ``--epochs``
epochs, in one process, and records per recipe: finished or the one line that stopped it, its
seconds, and each trained role's test accuracy at its best-validation epoch (meaningless as an
accuracy: a few epochs on generated data; it shows the numbers are finite and in range).

Data: the built-in digits as shipped; Fashion-MNIST and CIFAR-10 recipes on generated files in
their release layouts (kdcore.testing; the lent GPU machine reaches no network). CIFAR-100 and
CIFAR-N recipes are listed as skipped: their networks and components are the CIFAR-10 recipes',
and their generated files (50,000 rows for CIFAR-N) are the test suite's, not kdcore.testing's.

With ``--repeat`` each recipe runs twice with ``run.deterministic = true`` and once without,
and the record says whether the first two histories are equal bit for bit
(``deterministic_repeats``: what the setting promises, on any device) and whether the third
equals them (``deterministic_is_default``: on the CPU it must, since its kernels are
deterministic anyway; on a GPU it need not).

Usage:  python benchmarks/gpu_recipes.py --device cuda --results DIR [--epochs 1]
            [--budget-s 200] [--only 'amlkd*'] [--repeat]
Writes DIR/gpu_recipes.json and prints one line per recipe; runs no new recipe after
``--budget-s`` seconds (those left are listed as not run). Exit 1 when a run failed.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import tempfile
import time
import traceback
from pathlib import Path

from loguru import logger

import kdcore
from kdcore import testing
from kdcore.errors import exception_text

RECIPES = Path(__file__).parents[1] / "recipes"
SKIPPED = {"cifar100": "CIFAR-100: no generated files in kdcore.testing",
           "cifar_n": "CIFAR-N: no generated label files in kdcore.testing"}
ORDER = ("digits", "cifar10", "fashion_mnist")  # built-in data first, then the conv nets


def shipped(only: str) -> list[Path]:
    return sorted(p for p in RECIPES.glob("*.toml")
                  if not p.stem.startswith("base-") and fnmatch.fnmatch(p.stem, only))


def overrides_for(recipe: kdcore.Recipe, device: str, epochs: int, data: dict[str, str]
                  ) -> list[str]:
    sets = [f"run.device={device!r}", "run.checkpoint_interval_s=1000"]
    sets += [f"stages.{i}.epochs={min(stage.epochs, epochs)}"
             for i, stage in enumerate(recipe.stages)]
    if recipe.data.dataset == "cifar10":
        sets.append(f"data.params.root={data['cifar10']!r}")
    return sets


def skip_reason(recipe: kdcore.Recipe) -> str | None:
    if recipe.data.noise.model == "cifar_n":
        return SKIPPED["cifar_n"]
    return SKIPPED.get(recipe.data.dataset)


def run_one(path: Path, device: str, epochs: int, data: dict[str, str], out: Path,
            results: Path, repeat: bool = False) -> dict:
    recipe = kdcore.load_recipe(path)
    reason = skip_reason(recipe)
    if reason:
        return {"status": "skipped", "why": reason}
    sets = overrides_for(recipe, device, epochs, data)
    # --repeat: twice with run.deterministic, then once with torch's default kernels
    runs = ({"a": [*sets, "run.deterministic=true"], "b": [*sets, "run.deterministic=true"],
             "default": [*sets, "run.deterministic=false"]} if repeat else {"a": sets})
    started = time.perf_counter()
    try:
        for name, run_sets in runs.items():
            summary = kdcore.run_recipe(kdcore.load_recipe(path, run_sets), progress=False,
                                        out=str(out / path.stem / name), overrides=run_sets)
            if name == "a":
                first = summary
    except Exception as exc:  # noqa: BLE001 -- recorded, and the next recipe runs
        (results / f"{path.stem}.traceback.txt").write_text(traceback.format_exc())
        return {"status": "failed", "why": exception_text(exc).splitlines()[0][:300],
                "seconds": round(time.perf_counter() - started, 1)}
    record = {"status": "ok", "seconds": round(time.perf_counter() - started, 1),
              "test_acc_at_best_val": {role: round(float(result["test_acc_at_best_val"]), 4)
                                       for role, result in first.items()}}
    if repeat:
        record["deterministic_repeats"] = same_history(out / path.stem / "a",
                                                       out / path.stem / "b")
        record["deterministic_is_default"] = same_history(out / path.stem / "a",
                                                          out / path.stem / "default")
    return record


def same_history(a: Path, b: Path) -> bool | str:
    """True when the two runs' histories are equal bit for bit, else the first difference."""
    try:
        testing.assert_same_history(a, b)
    except AssertionError as exc:
        return str(exc).splitlines()[0][:200]
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=1, help="at most this many per stage")
    parser.add_argument("--budget-s", type=float, default=200.0)
    parser.add_argument("--only", default="*", help="a glob over recipe names")
    parser.add_argument("--repeat", action="store_true",
                        help="run each twice with run.deterministic and once without, and "
                             "compare their histories bit for bit")
    parser.add_argument("--results", type=Path, required=True)
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    logger.remove()  # one line per recipe here; each run's log.txt keeps its own
    scratch = Path(tempfile.mkdtemp(prefix="gpu_recipes-"))
    # Fashion-MNIST's own sizes: ff-fmnist's subsets draw up to 3,000 images of a class
    testing.write_fashion_mnist(scratch / "fmnist", n_train=60000, n_test=10000)
    os.environ["KDCORE_FASHION_MNIST"] = str(scratch / "fmnist")
    data = {"cifar10": str(testing.write_cifar10(scratch / "cifar", n_train=2000, n_test=500))}

    paths = shipped(args.only)
    paths.sort(key=lambda p: next((i for i, name in enumerate(ORDER)
                                   if kdcore.load_recipe(p).data.dataset == name), len(ORDER)))
    results: dict[str, dict] = {}
    started = time.perf_counter()
    for path in paths:
        if time.perf_counter() - started > args.budget_s and not skip_reason(
                kdcore.load_recipe(path)):
            results[path.stem] = {"status": "not run", "why": f"past --budget-s {args.budget_s}"}
        else:
            results[path.stem] = run_one(path, args.device, args.epochs, data, scratch / "runs",
                                         args.results, args.repeat)
        print(f"{path.stem}: {json.dumps(results[path.stem])}", flush=True)
    counts = {s: sum(r["status"] == s for r in results.values())
              for s in ("ok", "failed", "skipped", "not run")}
    print("gpu_recipes:", ", ".join(f"{n} {s}" for s, n in counts.items()),
          f"in {time.perf_counter() - started:.0f} s on {args.device}")
    if args.repeat:
        for key in ("deterministic_repeats", "deterministic_is_default"):
            done = [r[key] for r in results.values() if key in r]
            print(f"{key}: {sum(v is True for v in done)} of {len(done)} bit for bit")
    record = {"device": args.device, "epochs_per_stage": args.epochs, "repeat": args.repeat,
              "torch": __import__("torch").__version__, "counts": counts, "recipes": results}
    if args.device.startswith("cuda"):
        import torch
        record["gpu"] = torch.cuda.get_device_name(0)
    (args.results / "gpu_recipes.json").write_text(json.dumps(record, indent=1) + "\n")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
