"""Resume of random compositions: is every run cut part-way and resumed bit for bit the
uninterrupted one?

``kill_resume.py`` and tests/test_resume_contract.py cut the shipped AML-KD recipe; this cuts
recipes that compose registered components at random, where a component's state that its
checkpoint leaves out shows (AWE's accumulated WeightNet gradients under ``zero_grad = false``
did, in session 44). Each recipe: a one-epoch teacher stage, then two stages of ``--epochs``
epochs, each training a random draw of models (teacher, student, peer) with 1-2 components
(``--stateful``: 1-2 of the components that keep their own state, networks, optimisers or
tables, and perhaps one other), their ``Literal`` and ``bool`` parameters drawn, a third of
them their numbers too, then ``ce``; ``keep``, model optimisers and schedules drawn too. Every
recipe ``kdcore check`` accepts is run whole, and again in the same process cut by
:class:`kdcore.testing.InterruptAt` at a random batch of a random epoch after the first of a
random stage, then resumed, and the two histories compared
(:func:`kdcore.testing.assert_same_history`). A run whose training diverges is counted apart.

Usage:  .venv/bin/python benchmarks/resume_compositions.py [--count 40] [--seed 0] [--stateful]
Prints each recipe that differs and one line of counts; about 0.5 s a recipe here.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from loguru import logger

import kdcore
from kdcore import PluginHost
from kdcore.component import Component
from kdcore.errors import KdcoreError, TrainingDiverged
from kdcore.recipe import recipe_from_dict
from kdcore.testing import (
    MODELS,
    PEER,
    InterruptAt,
    Interrupted,
    assert_same_history,
    check_tiny,
    component,
    random_choices,
    stage,
    teacher_stage,
    tiny_recipe,
)

TRAINS = (("student",), ("student", "peer"), ("teacher", "student"))


def draw(rng: random.Random, host: PluginHost, stateful: bool, epochs: int) -> dict:
    names = host.components.names()
    keeping = [n for n in names if host.components.get(n).state_dict is not Component.state_dict]
    stages = [teacher_stage(1)]
    for k in range(2):
        train = list(rng.choice(TRAINS))
        uses = (rng.sample(keeping, rng.randint(1, 2)) + rng.sample(names, rng.randint(0, 1))
                if stateful else rng.sample(names, rng.randint(1, 2)))
        comps = [component(u, params=random_choices(rng, host.components.get(u).Params,
                                                    numbers=rng.random() < 1 / 3))
                 for u in dict.fromkeys([*uses, "ce"])]
        stages.append(stage(f"s{k}", epochs, train, *comps,
                            keep=rng.choice(["last", "best_val", "best_val_all"])))
    models = {role: dict(spec) for role, spec in {**MODELS, "peer": PEER}.items()}
    role = rng.choice(list(models))
    if rng.random() < 0.3:
        models[role]["optimizer"] = {"name": rng.choice(["adam", "adamw"]), "lr": 0.01}
    if rng.random() < 0.3:
        models[role]["schedule"] = {"name": rng.choice(["cosine", "multistep"]),
                                    "milestones": [1]}
    return tiny_recipe(*stages, models=models, train_subset=200, seed=rng.randint(0, 9),
                       gold_per_class=rng.choice([0, 3]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--stateful", action="store_true")
    args = parser.parse_args()
    logger.remove()
    host, rng = PluginHost(), random.Random(args.seed)
    accepted = same = diverged = 0
    while accepted < args.count:
        data = draw(rng, host, args.stateful, args.epochs)
        try:
            check_tiny(data, host=host)
        except KdcoreError:
            continue
        accepted += 1
        recipe = recipe_from_dict(data)
        cut = (rng.randint(1, args.epochs - 1), rng.randint(0, 3), rng.choice(["s0", "s1"]))
        with tempfile.TemporaryDirectory() as tmp:
            whole, part = Path(tmp) / "whole", Path(tmp) / "cut"
            try:
                kdcore.run_recipe(recipe, out=str(whole), progress=False, host=host)
            except TrainingDiverged:
                diverged += 1
                continue
            try:
                kdcore.run_recipe(recipe, out=str(part), progress=False,
                                  host=PluginHost(extra=[InterruptAt(*cut)]))
            except Interrupted:
                pass
            kdcore.run_recipe(recipe, out=str(part), resume=True, progress=False, host=host)
            try:
                assert_same_history(whole, part)
                same += 1
            except AssertionError as exc:
                uses = [(s["name"], [(c["use"], c.get("params")) for c in s["components"]])
                        for s in data["stages"][1:]]
                print(f"recipe {accepted} cut at {cut} DIFFERS: {uses}: "
                      f"{' '.join(str(exc).split())[:300]}", flush=True)
    print(f"seed {args.seed}: {accepted} recipes accepted, {diverged} diverged, "
          f"{same} of {accepted - diverged} resumed bit for bit")


if __name__ == "__main__":
    main()
