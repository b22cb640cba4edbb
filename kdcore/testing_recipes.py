"""Recipe data for tests: tiny recipes on the built-in digits (:func:`tiny_recipe` and its
builders), and recipes composing the registered components at random
(:func:`random_composition`, :func:`accepted_compositions`), with what ``kdcore check`` does
with them (:func:`check_tiny`). :mod:`kdcore.testing` exports every one of them.
"""

from __future__ import annotations

import copy
import random
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from kdcore.plugins import PluginHost
from kdcore.recipe import recipe_from_dict

MODELS: dict[str, dict[str, Any]] = {
    "teacher": {"arch": "mlp", "params": {"hidden": [32]}, "optimizer": {"lr": 0.1}},
    "student": {"arch": "mlp", "params": {"hidden": [16]}, "optimizer": {"lr": 0.1}},
}


def component(use: str, name: str | None = None, *, params: Mapping[str, Any] | None = None,
              **fields: Any) -> dict[str, Any]:
    """One ``[[stages.components]]`` entry (``models``, ``terms``, ``weight``, ``enabled`` as
    keywords)."""
    out: dict[str, Any] = {"use": use, **fields}
    if name is not None:
        out["name"] = name
    if params:
        out["params"] = dict(params)
    return out


def stage(name: str, epochs: int, train: Sequence[str], *components: Mapping[str, Any],
          **fields: Any) -> dict[str, Any]:
    """One ``[[stages]]`` entry (``keep``, ``eval`` as keywords)."""
    return {"name": name, "epochs": epochs, "train": list(train),
            "components": [dict(c) for c in components], **fields}


def teacher_stage(epochs: int = 2) -> dict[str, Any]:
    """The usual first stage: the teacher trained by CE on the noisy labels."""
    return stage("teacher", epochs, ["teacher"], component("ce"))


def tiny_recipe(*stages: Mapping[str, Any], models: Mapping[str, Mapping[str, Any]] | None = None,
                name: str = "tiny", seed: int = 0, train_subset: int = 300,
                batch_size: int = 64, gold_per_class: int = 0, noise_rate: float = 0.4,
                run: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None,
                ) -> dict[str, Any]:
    """Plain recipe data for a run of a few seconds on digits (see the module docstring).

    Args:
        stages: the stages, in order (:func:`stage`, :func:`teacher_stage`).
        models: the model roles (default :data:`MODELS`: ``teacher`` and ``student``).
        run, data: further ``[run]`` / ``[data]`` keys, over the defaults.
    """
    return {
        "run": {"name": name, "seed": seed, "device": "cpu", "checkpoint_interval_s": 0,
                **(run or {})},
        "data": {"dataset": "digits", "train_subset": train_subset, "batch_size": batch_size,
                 "gold_per_class": gold_per_class,
                 "noise": {"model": "symmetric", "params": {"rate": noise_rate}}, **(data or {})},
        "models": copy.deepcopy(dict(models or MODELS)),
        "stages": [dict(s) for s in stages],
    }


PEER: dict[str, Any] = {"arch": "mlp", "params": {"hidden": [24]}, "optimizer": {"lr": 0.1}}
"""The ``peer`` model of :func:`random_composition`'s recipes (a third feature size)."""


def random_composition(rng: random.Random, names: Sequence[str], *, must: Sequence[str] = (),
                       trains: Sequence[Sequence[str]] = (("student",), ("student", "peer")),
                       first: bool = False, epochs: int = 3, again: float = 0.4,
                       host: PluginHost | None = None, numbers: bool = False,
                       retrain: bool = False, **recipe: Any) -> dict[str, Any]:
    """Recipe data composing components at random, to test how they work together.

    Stage ``s`` trains one of ``trains`` (the models are :data:`MODELS` and :data:`PEER`) for
    ``epochs`` with 1 to 4 of ``names`` (registered component names: ``PluginHost().
    components.names()``), then ``must``, then, seven times in ten, ``ce``; each entry serves
    the stage's models or, one time in four, some of them. Stage ``s`` follows a one-epoch
    teacher stage, or comes first with ``first`` (so that a run's first batch calls its
    components); with probability ``again``, a stage ``t`` of 2 epochs repeats the entries
    (each starts from its state in ``s``; with ``retrain``, training another draw of
    ``trains``, so that one label serves other models there). With ``host``, each entry also
    sets each of its component's ``Literal`` and ``bool`` parameters, half of them, to a value
    drawn from its type (:func:`random_choices`), and with ``numbers`` a third of its numbers.
    ``recipe`` goes to :func:`tiny_recipe`.

    Many draws are recipes that ``kdcore check`` refuses (a peer method with one model, a
    selector of two models): :func:`accepted_compositions` keeps the ones it accepts.
    """
    uses = [*rng.sample(list(names), rng.randint(1, min(4, len(names)))), *must]
    if rng.random() < 0.7:
        uses.append("ce")
    train = list(rng.choice(trains))
    comps = []
    for i, use in enumerate(uses):
        fields = {}
        if rng.random() < 0.25:
            fields["models"] = rng.sample(train, rng.randint(1, len(train)))
        params = (random_choices(rng, host.components.get(use).Params, numbers=numbers)
                  if host else None)
        comps.append(component(use, f"{use}{i}", params=params, **fields))
    stages = [stage("s", epochs, train, *comps)]
    stages.insert(len(stages) if first else 0, teacher_stage(1))
    if rng.random() < again:
        later = list(rng.choice(trains)) if retrain else train
        stages.append(stage("t", 2, later, *(
            {k: v for k, v in c.items() if k != "models" or set(v) <= set(later)}
            for c in comps)))
    return tiny_recipe(*stages, models={**MODELS, "peer": PEER}, **recipe)


def accepted_compositions(rng: random.Random, count: int, *, host: PluginHost | None = None,
                          choices: bool = False, processes: int = 1, **draw: Any
                          ) -> list[dict[str, Any]]:
    """The first ``count`` draws of :func:`random_composition` (over every component ``host``
    registers; ``draw`` are its keywords, with ``choices`` its random parameter choices, and
    ``numbers=True`` among ``draw`` its numbers too) that
    ``kdcore check`` accepts, in ``processes`` processes: the set-up a run does before its
    first batch, nothing trained (:func:`kdcore.engine.dry_setup`).

    Raises:
        ValueError: not one draw in a hundred was accepted.
    """
    from kdcore.errors import KdcoreError

    host = host or PluginHost()
    names = host.components.names()
    out: list[dict[str, Any]] = []
    for _ in range(100 * count):
        if len(out) == count:
            break
        recipe = random_composition(rng, names, host=host if choices else None, **draw)
        try:
            check_tiny(recipe, host=host, processes=processes)
        except KdcoreError:
            continue
        out.append(recipe)
    if len(out) < count:
        raise ValueError(f"{len(out)} of {100 * count} draws were accepted, not {count}")
    return out


def check_tiny(data: Mapping[str, Any], *, host: PluginHost | None = None,
               processes: int = 1) -> None:
    """What ``kdcore check`` does with recipe ``data`` (for ``processes`` processes): the plan
    and the run's set-up up to its first batch, nothing trained.

    Raises:
        KdcoreError: ``check``'s refusal (its message is the line ``check`` prints).
    """
    from kdcore.engine import dry_setup
    from kdcore.plan import check_distributed

    check_distributed(dry_setup(recipe_from_dict(data), host or PluginHost()), processes)


NUMBERS: tuple[float, ...] = (0.0, 1e-3, 0.05, 0.5, 0.9, 1.0, 2.0, 10.0)
"""What :func:`random_choices` draws a ``float`` parameter from (the ones its validators take):
the ends of rates and fractions, small and large scales."""

COUNTS: tuple[int, ...] = (0, 1, 2, 3, 7, 50)
"""What :func:`random_choices` draws an ``int`` parameter from: none, one, a few, more epochs
than a tiny run has."""


def random_choices(rng: random.Random, params: type, *, numbers: bool = False
                   ) -> dict[str, Any]:
    """Recipe parameters for the attrs class ``params`` (a component's ``Params``): each field
    typed ``Literal[...]`` (or an optional one) or ``bool``, with probability one half, set to
    a value drawn from its type; the others left to their defaults.

    With ``numbers``, each ``float`` and ``int`` field too, with probability one third, to a
    value of :data:`NUMBERS` or :data:`COUNTS` that its validators take (tried with the other
    fields at their defaults: a check across fields may still refuse the whole, as ``kdcore
    check`` then does). Without it, the draws are those of the choices alone.
    """
    if not attrs.has(params):
        return {}
    hints = typing.get_type_hints(params)
    out: dict[str, Any] = {}
    for field in attrs.fields(params):
        kind = hints.get(field.name)
        name = field.alias or field.name
        options: list[Any] = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(options) == 1 and typing.get_origin(options[0]) is typing.Literal:
            kind = options[0]  # Literal[...] | None
        if kind is bool:
            options = [True, False]
        elif typing.get_origin(kind) is typing.Literal:
            options = list(typing.get_args(kind))
        elif numbers and float in {kind, *options}:
            _draw_number(rng, params, name, NUMBERS, out)
            continue
        elif numbers and int in {kind, *options}:
            _draw_number(rng, params, name, COUNTS, out)
            continue
        else:
            continue
        if rng.random() < 0.5:
            out[name] = rng.choice(options)
    return out


def _draw_number(rng: random.Random, params: type, name: str, values: Sequence[Any],
                 out: dict[str, Any]) -> None:
    if rng.random() < 1 / 3:
        value = rng.choice(values)
        try:
            params(**{name: value})
        except (ValueError, TypeError):  # outside the field's range: left at its default
            return
        out[name] = value


def write_recipe(data: Mapping[str, Any], path: Path) -> Path:
    """Validate recipe data and write it as a TOML file (for tests of files and the CLI)."""
    path.write_text(recipe_from_dict(data).to_toml())
    return path


__all__ = ["COUNTS", "MODELS", "NUMBERS", "PEER", "accepted_compositions", "check_tiny",
           "component", "random_choices", "random_composition", "stage", "teacher_stage",
           "tiny_recipe", "write_recipe"]
