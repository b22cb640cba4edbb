"""kdcore.testing: the tiny-recipe builders run, and the history comparison can fail."""

from __future__ import annotations

import pytest

from kdcore import History, load_recipe
from kdcore.testing import (
    InterruptAt,
    Interrupted,
    assert_same_history,
    component,
    run_tiny,
    stage,
    teacher_stage,
    tiny_recipe,
    write_recipe,
)


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
