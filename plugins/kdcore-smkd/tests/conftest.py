"""Shared helpers of the SMKD plugin's tests: quiet logs and tiny digits recipes."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

import kdcore
from kdcore import PluginHost
from kdcore.plan import build_plan
from kdcore.recipe import recipe_from_dict
from kdcore.testing import component as recipe_component
from kdcore.testing import one_thread, quiet_logs, run_tiny, stage, tiny_recipe  # noqa: F401 (autouse fixtures)

# Two peers on a few hundred digits, one thread: a run takes about a second.
PEER_OPTIMIZER = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
PEERS = {
    "peer_a": {"arch": "mlp", "params": {"hidden": [16]}, "optimizer": PEER_OPTIMIZER},
    "peer_b": {"arch": "mlp", "params": {"hidden": [32, 32]}, "optimizer": PEER_OPTIMIZER},
}


def make_component(use: str, params: Mapping[str, Any] | None = None,
                   **fields: Any) -> dict[str, Any]:
    """One ``[[stages.components]]`` entry; ``fields`` are its other keys (name, weight...)."""
    return recipe_component(use, params=params, **fields)


def peers_recipe(*components: Mapping[str, Any], epochs: int = 1, subset: int = 300,
                 batch: int = 64, seed: int = 0, train: Sequence[str] = ("peer_a", "peer_b"),
                 extra_models: Mapping[str, Any] | None = None,
                 later: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The two-peer recipe data with ``components`` in its stage ``mutual`` (and ``later``,
    with ``ce``, in a second stage where given)."""
    stages = [stage("mutual", epochs, train, *components)]
    if later:
        stages.append(stage("later", 1, train, *later, make_component("ce")))
    return tiny_recipe(
        *stages,
        models={**PEERS, **(extra_models or {})}, name="peers", seed=seed, train_subset=subset,
        batch_size=batch, run={"threads": 1},
    )


def plan_peers(*components: Mapping[str, Any], plugins: tuple = (), **options: Any):
    """Check the two-peer recipe as a run would, without training: its :func:`build_plan`."""
    return build_plan(recipe_from_dict(peers_recipe(*components, **options)),
                      PluginHost(extra=list(plugins)))


def run_peers_in(tmp_path: Path, *components: Mapping[str, Any], epochs: int = 1,
                 subset: int = 300, batch: int = 64, seed: int = 0, observers: tuple = (),
                 name: str = "run", train: Sequence[str] = ("peer_a", "peer_b"),
                 extra_models: Mapping[str, Any] | None = None,
                 overrides: tuple[str, ...] = ()) -> kdcore.History:
    """Run the two-peer recipe (checkpointed every epoch: the resume tests kill mid-stage)
    with ``components`` in its one stage; returns the open history."""
    recipe = peers_recipe(*components, epochs=epochs, subset=subset, batch=batch, seed=seed,
                          train=train, extra_models=extra_models)
    run_tiny(recipe, tmp_path / name, plugins=observers, overrides=overrides)
    return kdcore.History(tmp_path / name)


@pytest.fixture
def component():
    """``component(use, params, **fields)``: one ``[[stages.components]]`` entry."""
    return make_component


@pytest.fixture
def run_peers(tmp_path: Path):
    """``run_peers(*components, **options)``: run the two-peer recipe in ``tmp_path``."""
    return functools.partial(run_peers_in, tmp_path)


@pytest.fixture
def plan():
    """``plan(*components, plugins=(), **options)``: the two-peer recipe's plan (no training)."""
    return plan_peers
