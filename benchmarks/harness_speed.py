"""How long a component's test takes through the harness, against a tiny run of it.

For a few components, each in a stage as a recipe places it (alone, or before a ``ce``): the
time to build the harness over 270 digits and start its stage (``harness`` + ``setup``), one
``step`` of 64 rows (what a unit test of a hook does), ``fit`` of the stage's 2 epochs, and a
``kdcore.testing.run_tiny`` of a recipe with that stage after a one-epoch teacher stage (a
whole run: data, set-up, evaluation, history, checkpoints). The sides are interleaved, each
repeated, one torch thread.

Usage:  .venv/bin/python benchmarks/harness_speed.py [--repeats 5]
Prints one line per component: the median of each time and its spread (min-max), in ms.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdcore import PluginHost
from kdcore.hookspecs import hookimpl
from kdcore.testing import MODELS, component, harness, run_tiny, stage, teacher_stage, tiny_recipe

# component, the models its stage trains, the components after it
PLACED = [("ce", ["student"], []), ("small_loss", ["student"], ["ce"]),
          ("awe", ["student"], ["ce"]), ("teacher_lp", ["student"], ["ce"]),
          ("smkd", ["student", "peer"], [])]


class Start:
    """The run's data and models as its last stage starts (the harness's inputs)."""

    @hookimpl
    def kdcore_epoch_start(self, ctx, epoch):  # type: ignore[no-untyped-def]
        if epoch == 0 and ctx.stage.name == "s":
            self.data = ctx.data
            self.models = {r: copy.deepcopy(m) for r, m in ctx.models.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    host = PluginHost()
    for use, train, beside in PLACED:
        models = {**MODELS, "peer": {"arch": "mlp", "params": {"hidden": [24]},
                                     "optimizer": {"lr": 0.1}}}
        recipe = tiny_recipe(teacher_stage(1), stage("s", 2, train, component(use),
                                                      *map(component, beside)), models=models)
        start = Start()
        with tempfile.TemporaryDirectory() as tmp:
            run_tiny(recipe, Path(tmp) / "warm", plugins=[start])  # the inputs, and warm-up
        times: dict[str, list[float]] = {"setup": [], "step": [], "fit": [], "run": []}
        for r in range(args.repeats):
            t0 = time.perf_counter()
            h = harness(host.components.get(use), x=start.data.train.x,
                        noisy_label=start.data.train_noisy, clean_label=start.data.train.y,
                        models=copy.deepcopy(start.models), train=train, batch_size=64,
                        epochs=2, optimizer={"lr": 0.1},
                        beside=[{"use": b} for b in beside]).setup()
            t1 = time.perf_counter()
            h.epoch_start(0)
            t2 = time.perf_counter()
            h.step(h.batch(range(64)))
            t3 = time.perf_counter()
            h.fit()
            t4 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                run_tiny(recipe, Path(tmp) / f"run{r}")
            t5 = time.perf_counter()
            for key, took in (("setup", t1 - t0), ("step", t3 - t2), ("fit", t4 - t3),
                              ("run", t5 - t4)):
                times[key].append(took * 1000)
        line = "; ".join(f"{k} {statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})"
                         for k, v in times.items())
        print(f"{use}{''.join(f' + {b}' for b in beside)} [{', '.join(train)}]: {line} ms")


if __name__ == "__main__":
    main()
