"""Recipes: typed reading, extends, overrides, and errors that say where and what."""

from __future__ import annotations

import copy
import datetime as dt
import math
import tomllib

import pytest

from kdcore.errors import RecipeError
from kdcore.recipe import (
    MAX_DEPTH,
    apply_override,
    check_plain,
    load_recipe,
    parse_override,
    recipe_from_dict,
)
from kdcore.recipe.schema import ModelConfig, OptimizerConfig, ScheduleConfig


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = """
[run]
name = "base"
[data]
dataset = "digits"
batch_size = 32
[models.student]
arch = "mlp"
[[stages]]
name = "s1"
epochs = 3
train = ["student"]
[[stages.components]]
use = "ce"
[[stages.components]]
use = "hinton_kd"
name = "kd"
params = { teacher = "student", temperature = 2.0 }
"""


def test_types_and_defaults(tmp_path):
    r = load_recipe(_write(tmp_path, "a.toml", BASE))
    assert r.run.name == "base" and r.run.seed == 0
    assert r.data.batch_size == 32 and r.data.val_fraction == 0.1
    assert r.models["student"].optimizer.lr == 0.05
    assert [c.label for c in r.stages[0].components] == ["ce", "kd"]


def test_extends_merges_tables_and_named_lists(tmp_path):
    _write(tmp_path, "base.toml", BASE)
    child = _write(tmp_path, "child.toml", """
extends = "base.toml"
[run]
name = "child"
[[stages]]
name = "s1"
epochs = 5
[[stages.components]]
use = "hinton_kd"
name = "kd"
params = { temperature = 8.0 }
[[stages.components]]
use = "all_samples"
""")
    r = load_recipe(child)
    assert r.run.name == "child"
    assert r.data.batch_size == 32  # inherited
    s = r.stages[0]
    assert s.epochs == 5 and s.train == ["student"]
    assert [c.label for c in s.components] == ["ce", "kd", "all_samples"]
    assert s.components[1].params == {"teacher": "student", "temperature": 8.0}


def test_overrides_by_name_and_index(tmp_path):
    p = _write(tmp_path, "a.toml", BASE)
    r = load_recipe(p, ["stages.s1.components.kd.weight=0.25", "stages.0.epochs=7",
                        "run.name=other", "data.noise.params.rate=0.2",
                        "stages.s1.components.ce.enabled=false"])
    assert r.stages[0].components[1].weight == 0.25
    assert r.stages[0].epochs == 7
    assert r.run.name == "other"
    assert r.data.noise.params == {"rate": 0.2}
    assert r.stages[0].components[0].enabled is False


def test_override_unknown_entry_suggests(tmp_path):
    p = _write(tmp_path, "a.toml", BASE)
    with pytest.raises(RecipeError, match=r"no entry named 'kdd'.*did you mean 'kd'"):
        load_recipe(p, ["stages.s1.components.kdd.weight=0"])


def test_override_without_equals(tmp_path):
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(_write(tmp_path, "a.toml", BASE), ["run.name"])


@pytest.mark.parametrize(
    ("edit", "key", "message"),
    [
        ('batch_size = 32', "data.batch_size", "expected an integer"),
        ('epochs = 3', "stages[0].epochs", "expected an integer"),
        ('name = "base"', "run.nmae", "did you mean 'name'"),
        ('arch = "mlp"', "models.student.arch", "expected a string"),
    ],
)
def test_type_errors_name_file_key_and_expectation(tmp_path, edit, key, message):
    bad = {
        'batch_size = 32': 'batch_size = "big"',
        'epochs = 3': "epochs = 2.5",
        'name = "base"': 'nmae = "base"',
        'arch = "mlp"': "arch = 3",
    }[edit]
    p = _write(tmp_path, "bad.toml", BASE.replace(edit, bad, 1))
    with pytest.raises(RecipeError) as info:
        load_recipe(p)
    text = str(info.value)
    assert str(p) in text and key in text and message in text


def test_validator_errors(tmp_path):
    p = _write(tmp_path, "bad.toml", BASE.replace("batch_size = 32", "batch_size = -1"))
    with pytest.raises(RecipeError, match=r"data\.batch_size: 'batch_size' must be in \[1, "):
        load_recipe(p)


def test_unknown_role_in_stage(tmp_path):
    p = _write(tmp_path, "bad.toml", BASE.replace('train = ["student"]', 'train = ["studnet"]'))
    with pytest.raises(RecipeError, match="unknown model role 'studnet'.*did you mean 'student'"):
        load_recipe(p)


def test_malformed_toml(tmp_path):
    p = _write(tmp_path, "bad.toml", "[run\nname=")
    with pytest.raises(RecipeError, match="malformed TOML"):
        load_recipe(p)


def test_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.toml")


def test_extends_cycle(tmp_path):
    _write(tmp_path, "a.toml", 'extends = "b.toml"\n')
    _write(tmp_path, "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.toml")


def test_resolved_recipe_round_trips(tmp_path):
    r = load_recipe(_write(tmp_path, "a.toml", BASE), ["stages.s1.components.kd.weight=0.3"])
    again = recipe_from_dict(tomllib.loads(r.to_toml()))
    assert again.to_dict() == r.to_dict()


@pytest.mark.parametrize("name", ["ce", "kd", "clean", "ls"])
def test_shipped_baseline_recipes_load(name):
    from pathlib import Path

    r = load_recipe(Path(__file__).parents[1] / "recipes" / f"{name}.toml")
    assert r.stages and r.data.dataset == "digits"


# -- ranges, consistency, plain-data checks, writing -------------------------------------------


def _with(key_path: str, value):
    """BASE as data, with one value set the way ``--set`` sets it."""
    data = tomllib.loads(BASE)
    apply_override(data, key_path.split("."), value)
    return data


@pytest.mark.parametrize(
    ("key_path", "value", "message"),
    [
        ("run.seed", -1, r"'seed' must be in \[0, 9223372036854775807\]"),
        ("run.seed", 2**63, "outside TOML's 64-bit range"),
        ("run.threads", 4097, r"'threads' must be in \[0, 4096\]"),
        ("run.threads", -1, r"'threads' must be in \[0, 4096\]"),
        ("run.checkpoint_interval_s", math.inf, "'checkpoint_interval_s' must be a finite"),
        ("run.checkpoint_interval_s", -1.0, "must be >= 0"),
        ("run.device", "meta", r"must be 'auto', 'cpu', 'cuda' or 'cuda:N'.*got 'meta'"),
        ("run.device", "mps", "got 'mps'"),
        ("run.device", "cuda:-1", "got 'cuda:-1'"),
        ("run.device", "CPU", "got 'CPU'"),
        ("run.name", "a\0b", "'name' contains a NUL byte"),
        ("run.output_dir", "runs\0", "'output_dir' contains a NUL byte"),
        ("models.student.checkpoint", "w\0.pt", "NUL byte"),
        ("models.student.optimizer.lr", 1e308, r"'lr' must be in \[0, 10\]"),
        ("models.student.optimizer.lr", -0.1, r"'lr' must be in \[0, 10\]"),
        ("models.student.optimizer.lr", math.inf, r"'lr' must be in \[0, 10\]"),
        ("models.student.optimizer.momentum", 1.0, r"'momentum' must be in \[0, 1\)"),
        ("models.student.optimizer.momentum", -1, r"'momentum' must be in \[0, 1\)"),
        ("models.student.optimizer.weight_decay", math.inf, "must be a finite number"),
        ("models.student.optimizer.weight_decay", -1e-4, "must be >= 0"),
        # torch's SGD step cannot put it in a float32 tensor: "value cannot be converted"
        ("models.student.optimizer.weight_decay", 1e300, "'weight_decay' must be a finite "
                                                         "float32 number"),
        ("models.student.schedule.gamma", 0.0, "'gamma' must be positive"),
        ("models.student.schedule.gamma", math.inf, "'gamma' must be a finite"),
        ("models.student.schedule.milestones", [3, -1], "'milestones\\[1\\]' must be >= 0"),
        ("data.batch_size", 0, r"'batch_size' must be in \[1, 1048576\]"),
        ("data.eval_batch_size", 2**20 + 1, r"'eval_batch_size' must be in \[1, 1048576\]"),
        ("data.val_fraction", 1.0, r"'val_fraction' must be in \[0, 1\)"),
        ("data.test_fraction", -0.5, r"'test_fraction' must be in \(0, 1\)"),
        ("data.test_fraction", 0.0, r"'test_fraction' must be in \(0, 1\)"),
        ("data.gold_per_class", -1, "must be >= 0"),
        ("data.train_subset", -5, "must be >= 0"),
        ("stages.s1.epochs", -1, "must be >= 0"),
        ("stages.s1.components.kd.weight", math.inf,
         r"'weight' must be a finite float32 number \(magnitude at most 3.4e38\), got inf"),
        ("stages.s1.components.kd.weight", -math.inf, "'weight' must be a finite float32 number"),
        # infinite in float32: every step's loss was, so the run stopped at its first step
        ("stages.s1.components.kd.weight", 1e39,
         r"'weight' must be a finite float32 number \(magnitude at most 3.4e38\), got 1e\+39"),
        ("stages.s1.components.kd.weight", -3.5e38, r"'weight' must be a finite float32 number"),
        ("stages.s1.components.kd.weight", math.nan, "NaN is not a value any recipe key"),
        ("data.noise.params.rate", math.nan, "NaN"),
    ],
)
def test_out_of_range_values_name_the_key_and_the_range(key_path, value, message):
    with pytest.raises(RecipeError, match=message) as err:
        recipe_from_dict(_with(key_path, value), source="r.toml")
    assert err.value.file == "r.toml"
    expected_key = key_path.replace("stages.s1.components.kd", "stages[0].components[1]")
    assert err.value.key.startswith(expected_key.replace("stages.s1", "stages[0]"))


@pytest.mark.parametrize(
    ("key_path", "value"),
    [
        ("run.seed", 2**63 - 1), ("run.threads", 4096), ("run.device", "cuda:3"),
        ("run.device", "cpu"), ("run.checkpoint_interval_s", 0),
        ("models.student.optimizer.lr", 10), ("models.student.optimizer.lr", 0.0),
        ("models.student.optimizer.momentum", 0.0), ("data.batch_size", 2**20),
        ("stages.s1.components.kd.weight", -0.5), ("data.val_fraction", 0.0),
    ],
)
def test_values_at_the_bounds_are_accepted(key_path, value):
    assert _read(recipe_from_dict(_with(key_path, value)), key_path) == value


def _read(recipe, key_path: str):
    """The typed recipe's value at a ``--set`` key path (mappings by key, lists by name)."""
    node = recipe
    for part in key_path.split("."):
        if isinstance(node, dict):
            node = node[part]
        elif isinstance(node, (list, tuple)):
            (node,) = [item for item in node if getattr(item, "name", None) == part
                       or getattr(item, "label", None) == part]
        else:
            node = getattr(node, part)
    return node


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        ({"data.val_fraction": 0.5, "data.test_fraction": 0.5}, "data.val_fraction",
         "val_fraction \\+ test_fraction is 1; it must be below 1"),
        ({"data.val_fraction": 0.8}, "data.val_fraction", "defaults to 0.2"),
        ({"models.student.schedule": {"name": "multistep", "milestones": [1, 2, 3], "gamma": 10.0}},
         "models.student.schedule.gamma", "takes the learning rate 0.05 above 10"),
        ({"models.student.schedule": {"name": "multistep", "milestones": [1] * 40,
                                      "gamma": 1e300}},
         "models.student.schedule.gamma", "above 10"),
        # the decay bound at the rate a schedule raises to (base: 0.05 x 70 = 3.5 < 3.8 = 2 x
        # 1.9); s1's 3 epochs reach the milestone at epoch 2 (0.1 x 70 = 7), so the run diverges
        ({"models.student.optimizer.weight_decay": 70.0,
          "models.student.schedule": {"name": "multistep", "milestones": [2], "gamma": 2.0}},
         "models.student.schedule.gamma", ": gamma 2 raises the learning rate to 0.1 by epoch 2, "
         "where lr x weight_decay = 7 is past 3.8 \\(SGD with momentum 0.9\\)"),
        ({"models.student.optimizer": {"name": "adamw", "lr": 0.5, "weight_decay": 3.0},
          "models.student.schedule": {"name": "multistep", "milestones": [9, 0, 1],
                                      "gamma": 1.2}},
         "models.student.schedule.gamma", "rate to 0.72 by epoch 1, where lr x weight_decay = "
                                          "2.16 is past 2 \\(AdamW\\)"),
        ({"models.student.optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.5,
                                       "nesterov": True, "weight_decay": 2.5},
          "models.student.schedule": {"name": "multistep", "milestones": [1], "gamma": 1.3}},
         "models.student.schedule.gamma", "past 1.5 \\(Nesterov SGD with momentum 0.5\\)"),
        ({"models.student.optimizer.momentum": 0.0, "models.student.optimizer.nesterov": True},
         "models.student.optimizer.nesterov", "needs momentum > 0"),
        # a role trained twice would take two optimiser steps a batch
        ({"stages.s1.train": ["student", "student"]}, "stages[0].train",
         "'student' is listed twice"),
        ({"stages.s1.eval": ["student", "student"]}, "stages[0].eval", "listed twice"),
        # best_val of a model the stage never validates: nothing to restore
        ({"stages.s1.eval": [], "stages.s1.keep": "best_val"}, "stages[0].keep",
         'keep = "best_val" needs the validation accuracy of every model the stage trains, '
         "but eval leaves out student"),
        ({"stages.s1.eval": [], "stages.s1.keep": "best_val_all"}, "stages[0].keep",
         "eval leaves out student"),
        # names the history's string table cannot hold (UTF-8 bytes, not characters)
        ({"stages.s1.name": "s" * 256}, "stages[0].name", "is 256 bytes long; the history "
                                                          "stores names of at most 255"),
        ({"stages.s1.name": "\u00e9" * 128}, "stages[0].name", "is 256 bytes long"),
        ({"stages.s1.components.kd.name": "k" * 300}, "stages[0].components[1].name",
         "300 bytes"),
        ({"models": {"m" * 256: {"arch": "mlp"}}, "stages.s1.train": ["m" * 256]},
         "models." + "m" * 256, "256 bytes"),
    ],
)
def test_cross_field_rules(changes, key, message):
    data = tomllib.loads(BASE)
    for key_path, value in changes.items():
        apply_override(data, key_path.split("."), value)
    with pytest.raises(RecipeError, match=message) as err:
        recipe_from_dict(data)
    assert err.value.key == key


def test_cross_field_rules_accept_what_is_sound():
    data = tomllib.loads(BASE)
    apply_override(data, ["models", "student", "schedule"],
                   {"name": "multistep", "milestones": [5], "gamma": 2.0})
    apply_override(data, ["models", "student", "optimizer"],
                   {"name": "adam", "momentum": 0.0, "nesterov": True})  # SGD-only settings
    apply_override(data, ["data", "val_fraction"], 0.7)
    apply_override(data, ["stages", "s1", "eval"], [])
    apply_override(data, ["stages", "s1", "keep"], "last")  # no validation needed
    apply_override(data, ["stages", "s1", "name"], "\u00e9" * 127 + "x")  # 255 bytes: the most
    recipe = recipe_from_dict(data)
    assert recipe.models["student"].schedule.gamma == 2.0
    assert recipe.models["student"].optimizer.nesterov and recipe.data.val_fraction == 0.7


@pytest.mark.parametrize("schedule", [
    {"name": "multistep", "milestones": [3, 1, 3, 5], "gamma": 2.0},  # repeated; 5 past the end
    {"name": "multistep", "milestones": [0, 4], "gamma": 1.5},  # 4: the last epoch's own
    {"name": "multistep", "milestones": [1, 2], "gamma": 0.5},  # falling: the base rate
    {"name": "multistep", "milestones": [2, 0], "gamma": 0.5},  # below the base from epoch 0
    {"name": "multistep", "milestones": [1], "gamma": 1.0},
    {"name": "cosine", "milestones": [0, 1], "gamma": 3.0},  # gamma is multistep's alone
    {"name": "constant", "milestones": [2], "gamma": 3.0},
])
def test_the_highest_rate_of_a_roles_epochs(schedule):
    """``ModelConfig.highest_lr(epochs)`` against the largest of the ``epochs`` rates a NumPy
    transcription of the schedule gives (epoch ``e`` at ``base * gamma ** #(m <= e)``)."""
    import numpy as np

    model = ModelConfig(optimizer=OptimizerConfig(lr=0.25), schedule=ScheduleConfig(**schedule))
    for epochs in (1, 4, 5, 9):
        rates = [0.25] * epochs
        if schedule["name"] == "multistep":
            marks = np.asarray(schedule["milestones"])
            rates = [0.25 * schedule["gamma"] ** int((marks <= e).sum()) for e in range(epochs)]
        elif schedule["name"] == "cosine":
            rates = [0.25 * 0.5 * (1 + np.cos(np.pi * e / epochs)) for e in range(epochs)]
        assert model.highest_lr(epochs) == pytest.approx(max(rates), rel=1e-12), epochs


@pytest.mark.parametrize(
    ("optimizer", "schedule"),
    [
        # the milestone falls at the role's last epoch or later: the raised rate never trains
        ({"weight_decay": 70.0}, {"name": "multistep", "milestones": [3, 7], "gamma": 2.0}),
        # at the bound itself: 0.25 x 2 x 2 x 3 = 3 = 2 (1 + 0.5)
        ({"lr": 0.25, "momentum": 0.5, "weight_decay": 3.0},
         {"name": "multistep", "milestones": [0, 2], "gamma": 2.0}),
        # Adam's decay has no such bound; a falling rate never passes the base rate's
        ({"name": "adam", "weight_decay": 1e4}, {"name": "multistep", "milestones": [1],
                                                  "gamma": 2.0}),
        ({"weight_decay": 70.0}, {"name": "multistep", "milestones": [1], "gamma": 0.5}),
        ({"weight_decay": 70.0}, {"name": "cosine"}),
    ],
)
def test_a_raised_rate_is_held_to_the_decay_bound_only_while_it_trains(optimizer, schedule):
    data = tomllib.loads(BASE)
    apply_override(data, ["models", "student", "optimizer"], optimizer)
    apply_override(data, ["models", "student", "schedule"], schedule)
    recipe = recipe_from_dict(data)
    assert recipe.models["student"].schedule.name == schedule["name"]


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        ({"run": {"name\0": "x"}}, "run.name\0", "NUL byte"),
        ({"run": {"name": "caf\udce9"}}, "run.name", "not valid UTF-8"),
        ({"data": {"params": {"n": 2**64}}}, "data.params.n", "outside TOML's 64-bit range"),
        ({"data": {"params": {"n": -(2**63) - 1}}}, "data.params.n", "64-bit"),
        ({"stages": [{"x": [[math.nan]]}]}, "stages[0].x[0][0]", "NaN"),
    ],
)
def test_plain_data_refuses_what_no_key_accepts(data, key, message):
    with pytest.raises(RecipeError, match=message) as err:
        check_plain(data)
    assert err.value.key == key


def test_plain_data_depth_is_bounded_without_recursing():
    deep: dict = {}
    node = deep
    for _ in range(5000):  # far past Python's recursion limit
        node["a"] = {}
        node = node["a"]
    with pytest.raises(RecipeError, match=f"nested more than {MAX_DEPTH}"):
        check_plain({"data": {"params": deep}})
    shallow = {"a": [[[1]]]}
    check_plain(shallow)


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("a.b=1", ["a", "b"], 1),
        ("a=hello world", ["a"], "hello world"),  # not TOML: taken as text
        ("a=1\nb = 2", ["a"], "1\nb = 2"),  # two TOML values: taken as text, not half of it
        ("a=[1, 2]", ["a"], [1, 2]),
    ],
)
def test_override_values(text, path, value):
    assert parse_override(text) == (path, value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("run..name=x", "the key path has an empty part"),
        ("stages.\u0661.epochs=3", "no entry named '\u0661'"),  # an Arabic-Indic digit
        ("stages.5.epochs=3", "index 5 out of range"),
        ("run.name.first=x", "cannot set a key inside run.name = 'base', which is not a table"),
        ("data.batch_size=" + "[" * 2000 + "]" * 2000, "nests arrays or tables too deeply"),
    ],
)
def test_bad_overrides_are_recipe_errors_naming_the_file(tmp_path, override, message):
    p = _write(tmp_path, "a.toml", BASE)
    with pytest.raises(RecipeError, match=message) as err:
        load_recipe(p, [override])
    assert err.value.file == str(p)


def test_resolved_recipe_round_trips_awkward_text():
    data = tomllib.loads(BASE)
    data["run"]["name"] = 'tab\there "quoted" back\\slash\r\x01\x7f\u00e9\U0001f600'
    data["data"]["params"] = {"é": 1, "with space": "x", "": [], "when": dt.date(2024, 1, 2),
                              "at": dt.datetime(2024, 1, 2, 3, 4, 5, 600)}
    data["stages"][0]["components"][1]["params"]["temperature"] = math.inf
    r = recipe_from_dict(data)
    again = recipe_from_dict(tomllib.loads(r.to_toml()))
    assert again.to_dict() == r.to_dict()


def test_every_name_imported_from_the_package_is_there():
    import kdcore.recipe as package

    used = {"AugmentConfig", "ComponentConfig", "DataConfig", "ModelConfig", "NoiseConfig",
            "OptimizerConfig", "Recipe", "RunConfig", "ScheduleConfig", "StageConfig",
            "load_recipe", "read_toml", "recipe_from_dict", "load_raw", "merge", "dumps_toml",
            "parse_override", "apply_override", "check_consistency"}
    assert used <= set(package.__all__)
    assert all(hasattr(package, name) for name in package.__all__)


def test_replace_marker_takes_a_table_whole_instead_of_merging(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text('[data.noise]\nmodel = "symmetric"\n'
                    'params = { rate = 0.4, include_true = true }\n'
                    '[models.student]\narch = "mlp"\nparams = { hidden = [32] }\n'
                    '[[stages]]\nname = "s"\nepochs = 1\ntrain = ["student"]\n'
                    '[[stages.components]]\nuse = "ce"\n')
    child = tmp_path / "child.toml"
    child.write_text('extends = "base.toml"\n'
                     '[data.noise]\nmodel = "pair_flip"\n'
                     'params = { __replace__ = true, rate = 0.2 }\n'
                     '[models.student]\nparams = { hidden = [8] }\n')
    recipe = load_recipe(child)
    assert recipe.data.noise.params == {"rate": 0.2}  # include_true is gone
    assert recipe.models["student"].params == {"hidden": [8]}  # without the marker: merged
    merged = tmp_path / "merged.toml"
    merged.write_text(child.read_text().replace("__replace__ = true, ", ""))
    assert load_recipe(merged).data.noise.params == {"rate": 0.2, "include_true": True}
    bad = tmp_path / "bad.toml"
    bad.write_text(child.read_text().replace("__replace__ = true", "__replace__ = 1"))
    with pytest.raises(RecipeError, match=r"data\.noise\.params\.__replace__.*expected true"):
        load_recipe(bad)
    # an override replaces a table whole anyway: the marker, written as a recipe writes it, is
    # taken and changes nothing (it was refused as an unknown parameter)
    for text in ("{ __replace__ = true, rate = 0.3 }", "{ rate = 0.3 }"):
        over = load_recipe(base, [f"data.noise.params={text}"])
        assert over.data.noise.params == {"rate": 0.3}
    assert load_recipe(base, ["stages.s.components.0={ use = 'ce', params = { __replace__ = "
                              "true } }"]).stages[0].components[0].params == {}
    with pytest.raises(RecipeError, match=r"data\.noise\.params\.__replace__.*expected true"):
        load_recipe(base, ["data.noise.params={ __replace__ = false, rate = 0.3 }"])


@pytest.mark.parametrize("key", ["extends", "source"])
def test_extends_and_source_cannot_be_overridden(tmp_path, key):
    """Before, `--set extends=...` was kept as a plain key and dropped: the run used the
    original base, whatever file was named (even one that does not exist)."""
    path = _write(tmp_path, "r.toml", BASE)
    with pytest.raises(RecipeError, match=f"{key} cannot be set with an override") as err:
        load_recipe(path, [f'{key}="other.toml"'])
    assert err.value.key == key


def test_source_in_a_recipe_file_is_refused(tmp_path):
    path = _write(tmp_path, "r.toml", 'source = "elsewhere.toml"\n' + BASE)
    with pytest.raises(RecipeError, match="'source' is not a recipe key"):
        load_recipe(path)


TWO_PHASES = BASE.replace('name = "s1"', 'name = "1"') + """
[[stages]]
name = "2"
epochs = 4
train = ["student"]
[[stages.components]]
use = "ce"
"""


def test_an_index_that_is_another_entrys_name_is_refused(tmp_path):
    """Before, `stages.1.epochs` on stages named "1" and "2" changed the one named "2"."""
    path = _write(tmp_path, "r.toml", TWO_PHASES)
    with pytest.raises(RecipeError, match="'1' is both an index and the name of entry 0"):
        load_recipe(path, ["stages.1.epochs=7"])
    # an index out of range, or one whose entry has that very name, is not ambiguous
    assert [s.epochs for s in load_recipe(path, ["stages.2.epochs=7"]).stages] == [3, 7]
    assert [s.epochs for s in load_recipe(path, ["stages.0.epochs=7"]).stages] == [7, 4]
    same = _write(tmp_path, "same.toml", TWO_PHASES.replace('name = "1"', 'name = "0"'))
    assert [s.epochs for s in load_recipe(same, ["stages.0.epochs=7"]).stages] == [7, 4]


def test_a_recipe_path_that_is_no_regular_file_or_too_large_is_refused(tmp_path):
    import os

    fifo = tmp_path / "r.fifo"
    os.mkfifo(fifo)  # opening it would block until a writer came
    with pytest.raises(RecipeError, match="recipe path is not a regular file"):
        load_recipe(fifo)
    with pytest.raises(RecipeError, match="recipe path is not a regular file"):
        load_recipe("/dev/zero")  # reading it would never end
    big = _write(tmp_path, "big.toml", "# " + "x" * (1 << 20) + "\n" + BASE)
    with pytest.raises(RecipeError, match="larger than 1 MiB"):
        load_recipe(big)
    with pytest.raises(RecipeError, match="recipe path is a directory"):
        load_recipe(tmp_path)


def test_nesterov_without_momentum_is_one_whole_line():
    data = tomllib.loads(BASE)
    apply_override(data, ["models", "student", "optimizer"],
                   {"momentum": 0.0, "nesterov": True})
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(data)
    assert str(err.value).endswith(
        "'nesterov' needs momentum > 0 (SGD's Nesterov step is defined on the momentum buffer)")


def test_the_resolved_recipe_names_neither_its_source_nor_what_it_extended(tmp_path):
    # the saved recipe.toml is complete: read again, it must not extend its base a second time
    import attrs

    base = _write(tmp_path, "base.toml", BASE)
    child = _write(tmp_path, "child.toml", f'extends = "{base.name}"\n[run]\nname = "child"\n')
    recipe = attrs.evolve(load_recipe(child), extends=base.name)
    assert recipe.source == str(child)
    saved = recipe.to_dict()
    assert "extends" not in saved and "source" not in saved and saved["run"]["name"] == "child"
    again = _write(tmp_path, "again.toml", recipe.to_toml())
    assert "extends" not in again.read_text()
    assert load_recipe(again).to_dict() == saved


def test_the_schemas_defaults_are_the_documented_ones():
    # docs/recipes.md and the schema's docstrings state these; a changed default changes
    # every recipe that leaves the key out (keys whose default is None are not written)
    from kdcore.recipe import Recipe

    defaults = Recipe().to_dict()
    assert defaults["run"] == {
        "name": "run", "seed": 0, "device": "auto", "output_dir": "runs", "threads": 0,
        "checkpoint_interval_s": 30.0, "precision": "fp32", "deterministic": False,
        "compile": False, "loggers": [],
        "history_skip": []}
    assert Recipe().run.channels_last is None and Recipe().data.test_fraction is None
    data = defaults["data"]
    assert {k: v for k, v in data.items() if k != "noise"} == {
        "dataset": "digits", "params": {}, "val_fraction": 0.1, "gold_per_class": 0,
        "train_subset": 0, "batch_size": 64, "eval_batch_size": 1024, "augment": [],
        "workers": 0}
    assert data["noise"] == {"model": "none", "params": {}, "apply_to_val": True}
    one = recipe_from_dict({"models": {"m": {}}, "stages": [
        {"name": "s", "epochs": 1, "train": ["m"], "components": [{"use": "ce"}]}]}).to_dict()
    assert one["models"]["m"] == {
        "arch": "mlp", "params": {},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                      "nesterov": False},
        "schedule": {"name": "constant", "milestones": [], "gamma": 0.1},
        "cache_outputs": False, "enabled": True}
    assert one["stages"] == [{"name": "s", "epochs": 1, "train": ["m"], "keep": "last",
                              "components": [{"use": "ce", "terms": [], "weight": 1.0,
                                              "enabled": True, "params": {}}]}]


def test_a_saved_recipe_is_read_as_this_version_resolves_it_or_as_saved():
    """A run's saved recipe gains the keys added since, at their defaults; one that no longer
    resolves is returned as saved, so that a comparison names what changed."""
    from kdcore.recipe import resolved_now

    now = recipe_from_dict({"models": {"m": {}}, "stages": [
        {"name": "s", "epochs": 1, "train": ["m"], "components": [{"use": "ce"}]}]}).to_dict()
    saved = copy.deepcopy(now)
    del saved["run"]["history_skip"], saved["models"]["m"]["cache_outputs"]
    assert resolved_now(saved) == now
    broken = {"run": {"seed": "zero"}, "stages": []}
    again = resolved_now(broken)
    assert again == broken and again is not broken
