"""Random compositions trained by ``kdcore run`` and through the component test harness: do the
models end bit for bit equal?

Each recipe is drawn by ``kdcore.testing.accepted_compositions`` (1 to 4 random components,
then often ``ce``, over the student or student and peer, after a one-epoch teacher stage; with
``--choices`` their ``Literal`` and ``bool`` parameters drawn, with ``--numbers`` a third of
their numbers too). The run's stage ``s`` is then trained again through
``kdcore.testing.harness``: its first component under test, the others ``beside``, over the
run's own data, initial weights, optimiser states, batch order and random state, each
component seeded as the run seeds it (``component_seed``). The weights of every model the stage
trains are compared at the stage's end. A recipe whose run stops (a setting that diverges) is
counted apart.

Usage:  .venv/bin/python benchmarks/harness_fidelity.py [--count 40] [--seed 0] [--choices]
        [--numbers]
Prints one line per recipe and a count; a recipe whose weights differ is named.
"""

from __future__ import annotations

import argparse
import copy
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdcore import KdcoreError, PluginHost
from kdcore.hookspecs import hookimpl
from kdcore.testing import accepted_compositions, component_seed, harness, run_tiny


class StageCapture:
    """What stage ``s`` of a run starts from and ends with."""

    @hookimpl
    def kdcore_run_start(self, ctx: Any) -> None:
        self.data = ctx.data

    @hookimpl
    def kdcore_epoch_start(self, ctx: Any, epoch: int) -> None:
        if epoch == 0 and ctx.stage.name == "s":
            self.rng = torch.get_rng_state()
            self.start = {r: copy.deepcopy(m) for r, m in ctx.models.items()}
            self.optimizers = {r: copy.deepcopy(o.state_dict()) for r, o in ctx.optimizers.items()}

    @hookimpl
    def kdcore_stage_end(self, ctx: Any, stage: Any) -> None:
        if stage.name == "s":
            self.end = {r: copy.deepcopy(m.state_dict()) for r, m in ctx.models.items()}


def largest_difference(recipe: dict[str, Any], seen: StageCapture, host: PluginHost) -> float:
    """Train stage ``s`` of ``recipe`` through the harness as the run did; the largest absolute
    difference of any weight of its trained models from the run's."""
    s = recipe["stages"][1]
    first, *rest = s["components"]
    seed, data = recipe["run"]["seed"], seen.data
    h = harness(host.components.get(first["use"]), first.get("params"), x=data.train.x,
                noisy_label=data.train_noisy, clean_label=data.train.y, models=seen.start,
                train=s["train"], serves=first.get("models"), name=first["name"],
                batch_size=recipe["data"]["batch_size"], epochs=s["epochs"],
                optimizer=recipe["models"]["student"]["optimizer"],
                seed=component_seed(seed, 1, first["name"]),
                beside=[{**e, "seed": component_seed(seed, 1, e["name"])} for e in rest])
    h.run.data = data  # its validation and gold splits too
    h.setup()
    for role, state in seen.optimizers.items():
        if role in h.run.optimizers:
            h.run.optimizers[role].load_state_dict(state)
    order = torch.Generator().manual_seed(seed + 2)  # the loop's batch order
    torch.randperm(len(data.train), generator=order)  # the teacher stage's epoch
    torch.set_rng_state(seen.rng)
    h.fit(order)
    return max(float((h.run.models[r].state_dict()[k].double() - v.double()).abs().max())
               for r in s["train"] for k, v in seen.end[r].items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--choices", action="store_true")
    parser.add_argument("--numbers", action="store_true")
    args = parser.parse_args()
    host = PluginHost()
    recipes = accepted_compositions(random.Random(args.seed), args.count, host=host,
                                    choices=args.choices or args.numbers, numbers=args.numbers,
                                    again=0.0)
    # every model a composition may train takes the same optimiser settings (the harness's)
    assert all(recipe["models"]["student"]["optimizer"] == recipe["models"]["peer"]["optimizer"]
               for recipe in recipes)
    same = stopped = 0
    for i, recipe in enumerate(recipes):
        uses = [e["use"] for e in recipe["stages"][1]["components"]]
        seen = StageCapture()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                run_tiny(recipe, Path(tmp) / "run", plugins=[seen])
        except KdcoreError as exc:
            stopped += 1
            print(f"{i}: {uses}: the run stopped: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        diff = largest_difference(recipe, seen, host)
        same += diff == 0
        print(f"{i}: {uses} train={recipe['stages'][1]['train']}: "
              f"{'equal' if diff == 0 else f'DIFFERS by {diff:.3g}'}")
    print(f"{same} of {len(recipes) - stopped} runs equal bit for bit through the harness "
          f"({stopped} stopped)")


if __name__ == "__main__":
    main()
