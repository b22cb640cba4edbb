"""Every registered component's numeric parameters at the edges of what a recipe can hold
(inf, 1e300, -1, 10**12, ...): ``kdcore check`` accepts the value or refuses it in one line; it
never stops on an exception a component's set-up did not mean (torch's "Invalid momentum
value", an allocation of terabytes). Found by a scratch sweep that set each parameter in turn
to such values and ran the recipe: AWE's own SGD took momentum -1 into torch and momentum >= 1
or an infinite learning rate into NaN weights; MLC's label-correction network, F&F's projection
head and LSH's projection were allocated whatever their size, the last one only when its stage
started, after the stages before it had trained; ALM-KD put lambda0 = 1e300 into a float32
tensor mid-run; F&F's crop_padding reached crop_flip's own limit at the first batch. Each
plugin's tests hold its own findings; this module, the sweep and the command line's line.
"""

from __future__ import annotations

import math
import random
import typing
from typing import Any

import attrs
import pytest
from click.testing import CliRunner

from kdcore.cli import main
from kdcore.errors import KdcoreError
from kdcore.plugins import PluginHost
from kdcore.testing import (
    check_tiny,
    component,
    random_composition,
    stage,
    teacher_stage,
    tiny_recipe,
    write_recipe,
)

FLOATS = (math.inf, -math.inf, 1e300, -1e300, 3.5e38, -1.0, 0.0)
INTS = (-1, 0, 10**12)
HOST = PluginHost()


def _base(name: str) -> dict[str, Any]:
    """A recipe that ``check`` accepts with ``name`` in its second stage (first entry)."""
    if name == "kdmlc_student":  # it reads MLC's corrected labels of the same batch
        return tiny_recipe(stage("s", 1, ["teacher", "student"],
                                 component("mlc", models=["teacher"]),
                                 component(name, models=["student"])),
                           gold_per_class=3, train_subset=120)
    rng = random.Random(name)
    for _ in range(300):
        recipe = random_composition(rng, [name], epochs=1, again=0.0, gold_per_class=3,
                                    train_subset=120)
        entries = recipe["stages"][1]["components"]
        entries.insert(0, entries.pop(next(i for i, c in enumerate(entries)
                                           if c["use"] == name)))
        try:
            check_tiny(recipe, host=HOST)
        except KdcoreError:
            continue
        return recipe
    raise AssertionError(f"no accepted recipe with {name}")


def _numeric_fields(params: type) -> list[tuple[str, tuple[Any, ...]]]:
    if not attrs.has(params):
        return []
    hints = typing.get_type_hints(params)
    out = []
    for field in attrs.fields(params):
        kinds = {hints[field.name], *typing.get_args(hints[field.name])}
        if float in kinds:
            out.append((field.alias or field.name, FLOATS))
        elif int in kinds and bool not in kinds:
            out.append((field.alias or field.name, INTS))
    return out


@pytest.mark.parametrize("name", HOST.components.names())
def test_check_accepts_or_refuses_every_edge_value_in_one_line(name: str) -> None:
    base = _base(name)
    entry = next(c for s in base["stages"] for c in s["components"] if c["use"] == name)
    for field, values in _numeric_fields(HOST.components.get(name).Params):
        for value in values:
            entry["params"] = {field: value}
            try:
                check_tiny(base, host=HOST)
            except KdcoreError as exc:
                assert str(exc) and "\n" not in str(exc), (field, value, str(exc))
            except Exception as exc:  # noqa: BLE001 - what the test is for
                pytest.fail(f"{name}.{field} = {value!r}: {type(exc).__name__}: {exc}")


def test_a_refused_edge_value_is_one_line_of_the_command_line(tmp_path):
    recipe = tiny_recipe(teacher_stage(1), stage("s", 1, ["student"],
                                                  component("awe", params={"momentum": -1.0}),
                                                  component("ce")))
    path = write_recipe(recipe, tmp_path / "edge.toml")
    result = CliRunner().invoke(main, ["check", str(path)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert result.output == (f"kdcore: error: {path}: stages[1].components[0].params.momentum: "
                             "'momentum' must be in [0, 1), got -1.0\n")
