"""``kdcore ablate``'s own inputs (jobs, variant names, a grid file's variants) are checked
before any run starts: one line, exit 2, nothing written outside ``--out``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdcore.cli import main
from tests.cli_helpers import one_line_error

RECIPES = Path(__file__).parents[1] / "recipes"


def ablate(*args):
    return CliRunner().invoke(main, ["ablate", *map(str, args)], catch_exceptions=False)


@pytest.mark.parametrize("jobs", ["0", "-3"])
def test_jobs_below_one_is_refused(tmp_path, jobs):
    one_line_error(ablate(RECIPES / "ce.toml", "--jobs", jobs, "--out", tmp_path / "g"),
                   "--jobs")
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("name", ["..", ".", "a/b", "/abs", "x" * 201, "x\ny", "tab\there",
                                  "del\x7f"])
def test_a_variant_name_that_is_not_one_directory_is_refused(tmp_path, name):
    one_line_error(ablate(RECIPES / "ce.toml", "--variant", f"{name}:run.seed=0",
                          "--out", tmp_path / "g"), "not a directory name")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("variant,key", [
    ('name = "a"\nset = 5', "set"),
    ('name = "a"\nset = "run.seed=1"', "set"),
    ('name = "a"\nset = [1]', "set"),
    ("name = {a = 1}", "name"),
    ('name = "a"\nrecipe = 3', "recipe"),
])
def test_a_grid_variant_of_the_wrong_type_is_refused(tmp_path, variant, key):
    grid = tmp_path / "grid.toml"
    grid.write_text(f'recipe = "{RECIPES / "ce.toml"}"\n[[variant]]\n{variant}\n')
    one_line_error(ablate("--grid", grid, "--out", tmp_path / "g"), key)
    assert not (tmp_path / "g").exists()


def test_a_missing_recipe_and_a_seed_given_twice_are_refused_before_any_run(tmp_path):
    one_line_error(ablate(tmp_path / "none.toml", "--out", tmp_path / "g"), "no recipe file")
    one_line_error(ablate(RECIPES / "ce.toml", "--seeds", "0,1,0", "--out", tmp_path / "g"),
                   "seed 0 is given twice")
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("option,value", [("--slurm-time", "-5"), ("--slurm-cpus", "0"),
                                          ("--slurm-gpus", "-1"), ("--slurm-mem-gb", "nan"),
                                          ("--slurm-mem-gb", "0")])
def test_slurm_numbers_out_of_range_are_refused(tmp_path, option, value):
    line = one_line_error(ablate(RECIPES / "ce.toml", "--launcher", "slurm", option, value,
                                 "--out", tmp_path / "g"), option)
    assert value in line, line  # the value refused is named


def test_sbatch_without_the_rest_of_slurm_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from kdcore import launchers
    from kdcore.errors import KdcoreError

    monkeypatch.setattr(launchers.shutil, "which",
                        lambda name: "/usr/bin/sbatch" if name == "sbatch" else None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun for submitit to find
    make = launchers.slurm_executor()
    with pytest.raises(KdcoreError, match="^--launcher slurm: ") as info:
        make(tmp_path / "jobs")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("args,needle", [
    (["--set", "nosuch=1"], "nosuch"),
    (["--variant", "v:notakeyvalue"], "notakeyvalue"),
    (["--seeds", "-1"], "seed"),
    (["--seeds", "1_0"], "--seeds takes comma-separated integers or ranges (0-4), got '1_0'"),
    (["--seeds", "\u0663"], "--seeds takes comma-separated integers"),  # int(): 3
    (["--seeds", "0,,1"], "--seeds takes comma-separated integers"),
    (["--seeds", str(2**63)], "seed"),
])
def test_a_bad_override_or_seed_is_one_error_before_any_run(tmp_path, args, needle):
    one_line_error(ablate(RECIPES / "ce.toml", *args, "--out", tmp_path / "g"), needle)
    assert not (tmp_path / "g").exists()


def test_a_component_parameter_its_plugin_refuses_is_one_error_before_any_run(tmp_path):
    """Each run's plan is built before the first run starts: the components' own parameter
    checks run then, and the error names the grid's run."""
    result = ablate(RECIPES / "kd.toml", "--variant", "base:", "--variant",
                    "hot:stages.1.components.1.params.temperature=-1", "--out", tmp_path / "g")
    line = one_line_error(result, "temperature")
    assert line == (f"kdcore: error: variant 'hot' seed 0: {RECIPES / 'kd.toml'}: "
                    "stages[1].components[1].params.temperature: 'temperature' must be in "
                    "[0.001, 1000] (a softmax temperature), got -1.0")
    assert not (tmp_path / "g").exists()


def test_a_run_already_in_the_grid_made_with_another_recipe_is_refused(tmp_path):
    """Before, a finished run was skipped whatever recipe made it, so the report showed its
    numbers under the new configuration."""
    small = ["--set", "data.train_subset=100", "--set", "stages.student.epochs=1"]
    assert ablate(RECIPES / "ce.toml", *small, "--seeds", "0", "--out", tmp_path / "g"
                  ).exit_code == 0
    summary = (tmp_path / "g" / "ce" / "seed0" / "summary.json").read_text()
    again = ablate(RECIPES / "ce.toml", *small, "--set", "data.noise.params.rate=0.0",
                   "--seeds", "0", "--out", tmp_path / "g")
    one_line_error(again, f"variant 'ce' seed 0: {tmp_path / 'g' / 'ce' / 'seed0'} holds a "
                          "finished run of another recipe (it differs at "
                          "data.noise.params.rate); remove")
    assert (tmp_path / "g" / "ce" / "seed0" / "summary.json").read_text() == summary
    # the same recipe again: the finished run is skipped
    same = ablate(RECIPES / "ce.toml", *small, "--seeds", "0", "--out", tmp_path / "g")
    assert same.exit_code == 0 and "1 of 1 runs already finished: skipped" in same.output


def test_a_grid_without_seeds_is_refused(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(f'seeds = []\n[[variant]]\nname = "ce"\nrecipe = "{RECIPES / "ce.toml"}"\n')
    result = CliRunner().invoke(main, ["ablate", "--grid", str(grid), "--out",
                                       str(tmp_path / "out")])
    assert result.exit_code == 2  # it ran nothing and exited 0
    assert one_line_error(result) == "kdcore: error: no seeds to run: give at least one"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, overrides", [
    ('v:run.name="a;b";data.train_subset=100', ['run.name="a;b"', "data.train_subset=100"]),
    ("v:run.name='x;y'", ["run.name='x;y'"]),
    ('v:run.name="q\\";z";run.seed=1', ['run.name="q\\";z"', "run.seed=1"]),
    ("v:a=1;;b=2;", ["a=1", "b=2"]),
    ("v:", []),
])
def test_a_variant_splits_its_overrides_at_semicolons_outside_strings(text, overrides):
    """A ';' inside a quoted value split the override: 'override 'b"' is not of the form'."""
    from kdcore.grid import parse_variant

    assert parse_variant(text, "r.toml").set == overrides


def test_a_grid_into_a_runs_own_folder_is_refused(tmp_path, tiny_runs):
    from tests.cli_helpers import digest

    run = tmp_path / "run"
    shutil.copytree(tiny_runs / "finished", run)
    before = digest(run)
    line = one_line_error(ablate(RECIPES / "ce.toml", "--seeds", "0", "--out", run))
    assert line == (f"kdcore: error: {run} holds a run (history.h5, summary.json, "
                    "checkpoint.pt); a grid's runs go in a folder of their own")
    assert digest(run) == before
    # a grid's own recipe kept in its folder is no run
    grid = tmp_path / "grid"
    grid.mkdir()
    (grid / "recipe.toml").write_text(f'extends = "{RECIPES / "ce.toml"}"\n')
    result = ablate(grid / "recipe.toml", "--seeds", "0", "--out", grid, "--set",
                    "data.train_subset=100", "--set", "stages.0.epochs=1")
    assert result.exit_code == 0, result.output
    assert (grid / "recipe" / "seed0" / "summary.json").is_file()


def test_a_range_of_seeds_runs_each(tmp_path):
    result = ablate(RECIPES / "ce.toml", "--seeds", "1-2,5", "--out", tmp_path / "g",
                    "--dry-run")
    assert result.exit_code == 0, result.output
    planned = [line.split(":")[0] for line in result.output.splitlines() if "would start" in line]
    assert planned == ["ce seed 1", "ce seed 2", "ce seed 5"]


def test_the_variants_of_several_recipes_are_named_by_recipe(tmp_path):
    """``--help``: "Run recipes x variants x seeds". Each recipe's variant of one name went in
    the same folder, so two recipes with any --variant were refused ("two variants named
    'T'", of a variant given once); now they are RECIPE-NAME, one recipe's keep their names."""
    rate = "data.noise.params.rate"
    result = ablate(RECIPES / "ce.toml", RECIPES / "kd.toml", "--variant", f"low:{rate}=0.2",
                    "--variant", "base:", "--out", tmp_path / "g", "--dry-run")
    assert result.exit_code == 0, result.output
    planned = [line.split(":")[0] for line in result.output.splitlines() if "would start" in line]
    assert planned == ["ce-low seed 0", "ce-base seed 0", "kd-low seed 0", "kd-base seed 0"]
    result = ablate(RECIPES / "ce.toml", "--variant", f"low:{rate}=0.2", "--out", tmp_path / "g",
                    "--dry-run")
    assert "low seed 0: would start" in result.output.splitlines()[0]
    # two recipes of one name, from two folders, still need names of their own: both named
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(RECIPES / "base-digits.toml", other)
    shutil.copy(RECIPES / "ce.toml", other)
    line = one_line_error(ablate(RECIPES / "ce.toml", other / "ce.toml", "--out",
                                 tmp_path / "g"))
    assert line == (f"kdcore: error: two variants named 'ce' (of {RECIPES / 'ce.toml'} and "
                    f"{other / 'ce.toml'}); each needs a name of its own, the folder its runs go "
                    "in")
