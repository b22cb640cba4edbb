"""kdcore.testing: the tiny-recipe builders run, and the history comparison can fail."""

from __future__ import annotations

import random
from typing import Literal

import attrs
import pytest
import torch

import kdcore
from kdcore import History, PluginHost, load_recipe
from kdcore.recipe import recipe_from_dict
from kdcore.testing import (
    InterruptAt,
    Interrupted,
    accepted_compositions,
    assert_same_history,
    component,
    random_choices,
    random_composition,
    run_tiny,
    stage,
    teacher_stage,
    tiny_recipe,
    write_recipe,
)
from kdcore.validators import between, positive


def test_tiny_recipe_runs_and_round_trips_through_toml(tmp_path):
    recipe = tiny_recipe(teacher_stage(1), stage(
        "student", 1, ["student"], component("ce", weight=0.5),
        component("hinton_kd", "kd", params={"teacher": "teacher"}, weight=0.5)))
    loaded = load_recipe(write_recipe(recipe, tmp_path / "r.toml"))
    assert [(c.use, c.name) for c in loaded.stages[1].components] == [
        ("ce", None), ("hinton_kd", "kd")]
    summary = run_tiny(recipe, tmp_path / "a")
    assert set(summary) == {"teacher", "student"}
    with History(tmp_path / "a") as h:
        assert h.epochs() == [("teacher", 0), ("student", 0)]


def test_random_composition_draws_entries_of_the_given_names_for_the_stage_models():
    names = ["a", "b", "c", "d", "e", "f"]
    draws = [random_composition(random.Random(k), names, must=["mine"], train_subset=50)
             for k in range(60)]
    assert random_composition(random.Random(3), names) == random_composition(
        random.Random(3), names)  # seeded
    shapes = set()
    for recipe in draws:
        assert recipe_from_dict(recipe).data.train_subset == 50  # a recipe's shape
        assert set(recipe["models"]) == {"teacher", "student", "peer"}
        stages = recipe["stages"]
        assert stages[0] == teacher_stage(1) and stages[1]["name"] == "s"
        train = stages[1]["train"]
        assert train in (["student"], ["student", "peer"]) and stages[1]["epochs"] == 3
        comps = stages[1]["components"]
        uses = [c["use"] for c in comps]
        drawn = uses[:uses.index("mine")]
        assert 1 <= len(drawn) <= 4 and set(drawn) <= set(names)
        assert len(set(drawn)) == len(drawn)  # drawn without repeats
        assert uses[len(drawn) + 1:] in ([], ["ce"])
        assert [c["name"] for c in comps] == [f"{u}{i}" for i, u in enumerate(uses)]
        for c in comps:
            assert set(c.get("models", train)) <= set(train) and c.get("models") != []
        if len(stages) == 3:
            assert stages[2] == stage("t", 2, train, *comps)
        shapes.add((len(drawn), len(stages), len(train), "ce" in uses,
                    any("models" in c for c in comps)))
    # every choice is taken both ways in 60 draws
    assert {s[0] for s in shapes} == {1, 2, 3, 4}
    for i in range(1, 5):
        assert {s[i] for s in shapes} == ({2, 3} if i == 1 else {1, 2} if i == 2
                                          else {True, False})
    first = random_composition(random.Random(0), names, first=True, again=0, epochs=1,
                               trains=[["teacher"]])
    assert [s["name"] for s in first["stages"]] == ["s", "teacher"]
    assert first["stages"][0]["epochs"] == 1 and first["stages"][0]["train"] == ["teacher"]


@attrs.frozen
class ChoiceParams:
    mode: Literal["a", "b", "c"] = "a"
    maybe: Literal["x", "y"] | None = None
    flag: bool = False
    rate: float = 0.5
    name: str = "n"
    listed: tuple[Literal["p", "q"], ...] = ()
    aliased: bool = attrs.field(default=True, alias="alias_name")


def test_random_choices_draws_half_of_the_literal_and_bool_parameters_from_their_types():
    draws = [random_choices(random.Random(k), ChoiceParams) for k in range(400)]
    keys = {"mode": {"a", "b", "c"}, "maybe": {"x", "y"}, "flag": {True, False},
            "alias_name": {True, False}}
    for key, values in keys.items():
        seen = [d[key] for d in draws if key in d]
        assert set(seen) == values  # every value of the type, and only those
        assert 160 < len(seen) < 240  # about half of the draws set it
    assert set().union(*draws) == set(keys)  # numbers, text, tuples keep their defaults
    assert random_choices(random.Random(0), dict) == {}  # not an attrs class
    for recipe_draw in draws:
        ChoiceParams(**recipe_draw)  # each a valid set of parameters


@attrs.frozen
class NumberParams:
    scale: float = 1.0
    rate: float = attrs.field(default=0.1, validator=between(0.0, 1.0, include_high=False))
    epochs: int = attrs.field(default=1, validator=positive)
    maybe: float | None = None
    flag: bool = False
    mode: Literal["a", "b"] = "a"


def test_random_choices_with_numbers_draws_a_third_of_them_within_their_validators():
    from kdcore.testing import COUNTS, NUMBERS

    draws = [random_choices(random.Random(k), NumberParams, numbers=True) for k in range(600)]
    allowed = {"scale": set(NUMBERS), "maybe": set(NUMBERS),
               "rate": {v for v in NUMBERS if 0 <= v < 1}, "epochs": {v for v in COUNTS if v > 0}}
    for key, values in allowed.items():
        seen = [d[key] for d in draws if key in d]
        assert set(seen) == values, key  # every value its validators take, and only those
        share = len(values) / len(NUMBERS if isinstance(next(iter(values)), float) else COUNTS)
        assert abs(len(seen) / 600 - share / 3) < 0.06, key  # a third of the draws, if taken
    assert all(isinstance(d["epochs"], int) and not isinstance(d["epochs"], bool)
               for d in draws if "epochs" in d)
    for recipe_draw in draws:
        NumberParams(**recipe_draw)
    # without numbers: the choices alone, drawn as before (the same stream of the generator)
    for k in range(50):
        a, b = random.Random(k), random.Random(k)
        assert random_choices(a, NumberParams) == random_choices(b, NumberParams, numbers=False)
        assert a.random() == b.random()
        assert set(random_choices(random.Random(k), ChoiceParams, numbers=True)) <= {
            "mode", "maybe", "flag", "alias_name", "rate"}


def test_random_composition_with_a_host_gives_each_entry_its_random_choices():
    host = PluginHost()
    names = ["small_loss", "dml", "awe"]
    recipe = random_composition(random.Random(5), names, host=host, again=1.0)
    comps = recipe["stages"][1]["components"]
    again = random.Random(5)
    plain = random_composition(again, names)  # the same draw without parameters
    assert [c["use"] for c in comps] == [c["use"] for c in plain["stages"][1]["components"]]
    assert any(c.get("params") for c in comps)
    for c in comps:
        fields = attrs.fields(host.components.get(c["use"]).Params)
        assert set(c.get("params", {})) <= {f.alias or f.name for f in fields}
    assert recipe["stages"][2]["components"] == comps  # the repeated stage: the same entries


def test_accepted_compositions_keeps_the_draws_check_accepts_in_the_processes_asked():
    from kdcore import KdcoreError
    from kdcore.engine import dry_setup
    from kdcore.plan import check_distributed

    host = PluginHost()
    kept = accepted_compositions(random.Random(3), 4, host=host, choices=True, again=0,
                                 train_subset=120, gold_per_class=3)
    assert len(kept) == 4
    for recipe in kept:
        dry_setup(recipe_from_dict(recipe), host)  # accepted
    # the same generator gives the same draws; those refused in between are skipped
    rng, refused = random.Random(3), 0
    names = host.components.names()
    while True:
        draw = random_composition(rng, names, host=host, again=0, train_subset=120,
                                  gold_per_class=3)
        try:
            dry_setup(recipe_from_dict(draw), host)
            break
        except KdcoreError:
            refused += 1
    assert draw == kept[0] and refused > 0
    # in two processes, a component that cannot run there is never kept
    for recipe in accepted_compositions(random.Random(3), 4, host=host, processes=2,
                                        train_subset=120, gold_per_class=3):
        check_distributed(dry_setup(recipe_from_dict(recipe), host), 2)
    tried = random.Random(0)
    with pytest.raises(ValueError, match=r"^0 of 100 draws were accepted, not 1$"):
        accepted_compositions(tried, 1, host=host, trains=[["nobody"]])
    again = random.Random(0)
    for _ in range(100):  # a hundred draws, no more
        random_composition(again, names, trains=[["nobody"]])
    assert tried.random() == again.random()
    # by default: the installed plugins, no parameter choices, one process
    (plain,) = accepted_compositions(random.Random(1), 1, train_subset=120, gold_per_class=3)
    assert not any("params" in c for st in plain["stages"] for c in st["components"])

    class Local(kdcore.Component):
        distributed = "it cannot"

        def transfer(self, ctx, batch):
            return torch.zeros(len(batch))

    class Plugin:
        @kdcore.hookimpl
        def kdcore_add_components(self):
            return {"local": Local}

    local = PluginHost(extra=[Plugin()])
    assert accepted_compositions(random.Random(2), 2, host=local, must=["local"],
                                 train_subset=120, gold_per_class=3)
    with pytest.raises(ValueError):
        accepted_compositions(random.Random(2), 1, host=local, must=["local"], processes=2,
                              train_subset=120, gold_per_class=3)


def test_assert_same_history_tells_runs_apart(tmp_path):
    recipe = tiny_recipe(teacher_stage(1))
    run_tiny(recipe, tmp_path / "a")
    run_tiny(recipe, tmp_path / "b")
    assert_same_history(tmp_path / "a", tmp_path / "b")  # same seed: the same run
    run_tiny(recipe, tmp_path / "c", overrides=["run.seed=1"])
    with pytest.raises(AssertionError):
        assert_same_history(tmp_path / "a", tmp_path / "c")


def test_interrupt_at_stops_after_the_given_batch(tmp_path):
    recipe = tiny_recipe(teacher_stage(2), stage("student", 2, ["student"], component("ce")))
    with pytest.raises(Interrupted, match="stage 'student' epoch 1 batch 2"):
        run_tiny(recipe, tmp_path / "cut", plugins=[InterruptAt(1, 2, "student")])
    with History(tmp_path / "cut") as h:  # every completed epoch, none of the interrupted one
        assert h.epochs() == [("teacher", 0), ("teacher", 1), ("student", 0)]


def test_run_tiny_resumes_an_interrupted_run_to_the_same_history_quietly(tmp_path, capsys):
    recipe = tiny_recipe(teacher_stage(2))
    run_tiny(recipe, tmp_path / "whole")
    with pytest.raises(Interrupted):
        run_tiny(recipe, tmp_path / "cut", plugins=[InterruptAt(1, 1, "teacher")])
    run_tiny(recipe, tmp_path / "cut", resume=True)
    assert_same_history(tmp_path / "whole", tmp_path / "cut")
    assert "it/s" not in capsys.readouterr().err  # no progress bar in a test's output


def test_random_composition_draws_numbers_only_when_asked():
    host = PluginHost()
    names = host.components.names()

    def numeric_params(recipes):
        out = set()
        for recipe in recipes:
            for c in recipe["stages"][1]["components"]:
                for key, value in c.get("params", {}).items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        out.add((c["use"], key))
        return out

    plain = [random_composition(random.Random(k), names, host=host) for k in range(40)]
    assert numeric_params(plain) == set()
    drawn = [random_composition(random.Random(k), names, host=host, numbers=True)
             for k in range(40)]
    assert len(numeric_params(drawn)) >= 10
