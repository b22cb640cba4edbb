"""Recipes: typed reading, extends, overrides, and errors that say where and what."""

from __future__ import annotations

import tomllib

import pytest

from kdcore.errors import RecipeError
from kdcore.recipe import load_recipe, recipe_from_dict


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
    with pytest.raises(RecipeError, match=r"data\.batch_size.*positive"):
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
