"""The cross-field rules of a recipe (kdcore/recipe/rules.py), each at its edge and with its
whole message and key."""

from __future__ import annotations

import pytest

from kdcore.errors import RecipeError
from kdcore.recipe import recipe_from_dict
from kdcore.testing import MODELS, component, stage, teacher_stage, tiny_recipe


def _assert_refused(*stages, **fields) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(tiny_recipe(*stages, **fields), "r.toml")
    assert info.value.file == "r.toml"
    return info.value


def _accepted(*stages, **fields):
    return recipe_from_dict(tiny_recipe(*stages, **fields))


def _student(*components, **fields):
    return stage("student", 1, ["student"], *components, component("ce"), **fields)


def test_a_recipe_needs_a_stage():
    err = _assert_refused()
    assert (err.key, err.detail) == ("stages", "a recipe needs at least one [[stages]] entry")


def test_stage_names_are_unique():
    _accepted(teacher_stage(1), _student())
    err = _assert_refused(teacher_stage(1), _student(), stage("teacher", 1, ["student"],
                                                              component("ce")))
    assert (err.key, err.detail) == ("stages[2].name", "duplicate stage name 'teacher'")


@pytest.mark.parametrize("field", ["train", "eval"])
def test_roles_in_train_and_eval_exist_once(field):
    err = _assert_refused(teacher_stage(1), stage("student", 1, ["student", "studnt"],
                                                  component("ce"), eval=["student"])
                          if field == "train" else _student(eval=["student", "studnt"]))
    assert (err.key, err.detail) == (
        f"stages[1].{field}", "unknown model role 'studnt' (did you mean 'student'?); "
                              "[models] defines: student, teacher")
    err = _assert_refused(teacher_stage(1), _student(eval=["student", "zebra"]))
    assert err.detail == "unknown model role 'zebra'; [models] defines: student, teacher"
    err = _assert_refused(teacher_stage(1), stage("student", 1, ["student", "student"],
                                                  component("ce"), eval=["student"])
                          if field == "train" else _student(eval=["student", "student"]))
    assert (err.key, err.detail) == (f"stages[1].{field}", "'student' is listed twice")


def test_keeping_the_best_epoch_needs_every_trained_model_validated():
    _accepted(stage("both", 1, ["teacher", "student"], component("ce"), keep="best_val",
                    eval=["student", "teacher"]))
    err = _assert_refused(stage("both", 1, ["teacher", "student"], component("ce"),
                                keep="best_val", eval=[]))
    assert (err.key, err.detail) == (
        "stages[0].keep", 'keep = "best_val" needs the validation accuracy of every model the '
                          "stage trains, but eval leaves out teacher, student; add it to eval, "
                          'or keep = "last"')


def test_component_labels_are_unique_among_the_enabled():
    _accepted(teacher_stage(1), _student(component("ce", enabled=False)))  # before the enabled
    _accepted(teacher_stage(1), stage("s", 1, ["student"], component("ce"),
                                      component("ce", enabled=False)))  # after it
    err = _assert_refused(teacher_stage(1), stage("s", 1, ["student"], component("ce"),
                                                  component("ce")))
    assert (err.key, err.detail) == (
        "stages[1].components[1].name",
        "two components labelled 'ce'; give one a different 'name'")


def test_a_components_models_exist_and_a_stage_without_training_names_them():
    err = _assert_refused(teacher_stage(1), _student(component("ce", "aux",
                                                               models=["techer"])))
    assert (err.key, err.detail) == ("stages[1].components[0].models",
                                     "unknown model role 'techer' (did you mean 'teacher'?)")
    _accepted(teacher_stage(1), _student(component("ce", "aux", models=["teacher"])))
    frozen = stage("look", 1, [], component("ce", models=["student"]))
    _accepted(teacher_stage(1), frozen)
    err = _assert_refused(teacher_stage(1), stage("look", 1, [], component("ce")))
    assert (err.key, err.detail) == (
        "stages[1].components[0].models",
        "the stage trains no model, so name the component's 'models'")
    _accepted(teacher_stage(1), stage("look", 1, [], component("ce", models=["student"]),
                                      component("ce", "off", enabled=False)))


def test_fractions_must_leave_training_samples():
    _accepted(teacher_stage(1), data={"val_fraction": 0.5, "test_fraction": 0.49})
    err = _assert_refused(teacher_stage(1), data={"val_fraction": 0.5, "test_fraction": 0.5})
    assert (err.key, err.detail) == (
        "data.val_fraction",
        "val_fraction + test_fraction is 1; it must be below 1 to leave training samples")
    err = _assert_refused(teacher_stage(1), data={"val_fraction": 0.8})
    assert err.detail == ("val_fraction + test_fraction is 1 (data.test_fraction defaults to "
                          "0.2); it must be below 1 to leave training samples")


def _schedule(name="multistep", gamma=10.0, milestones=(1,), lr=1.0):
    student = {**MODELS["student"], "optimizer": {"lr": lr},
               "schedule": {"name": name, "gamma": gamma, "milestones": list(milestones)}}
    return {**MODELS, "student": student}


def test_a_growing_schedule_may_reach_the_largest_learning_rate_not_pass_it():
    _accepted(teacher_stage(1), models=_schedule(gamma=10.0, milestones=[1], lr=1.0))  # 10
    err = _assert_refused(teacher_stage(1), models=_schedule(gamma=10.0, milestones=[1, 2],
                                                             lr=1.0))
    assert (err.key, err.detail) == ("models.student.schedule.gamma",
                                     "gamma 10 over 2 milestones takes the learning rate 1 "
                                     "above 10")
    err = _assert_refused(teacher_stage(1), models=_schedule(gamma=1.5, milestones=[1] * 10,
                                                             lr=1.0))  # 1.5 ** 10 = 57.7
    assert err.key == "models.student.schedule.gamma"
    # what does not grow, or starts at 0, or is another schedule, is not checked
    _accepted(teacher_stage(1), models=_schedule(gamma=1.0, milestones=[1] * 50))
    _accepted(teacher_stage(1), models=_schedule(gamma=10.0, milestones=[1] * 50, lr=0.0))
    _accepted(teacher_stage(1), models=_schedule(name="cosine", gamma=10.0,
                                                 milestones=[1] * 50))


def test_a_name_longer_than_the_history_holds_is_cut_at_40_characters_in_the_message():
    err = _assert_refused(stage("é" * 128, 1, ["teacher"], component("ce")))
    assert (err.key, err.detail) == (
        "stages[0].name", f"the name '{'é' * 40}...' is 256 bytes long; the history stores "
                          "names of at most 255")
    _accepted(stage("é" * 127 + "a", 1, ["teacher"], component("ce")))


@pytest.mark.parametrize("name", [".", "..", "a/b", "/", "tab\there", "new\nline", "\x7f"])
def test_a_name_that_cannot_be_one_part_of_a_history_path_is_refused(name):
    """'.' as a component's name made HDF5 refuse its first column once a whole stage had
    trained ("name already exists"); 'a/b' reads as component 'a' of model 'b'."""
    detail = (f"the name {name!r} cannot be one part of the history's paths and column names; "
              "give a name that is not empty, '.' or '..', without '/' or control characters")
    err = _assert_refused(stage(name, 1, ["teacher"], component("ce")))
    assert (err.key, err.detail) == ("stages[0].name", detail)
    err = _assert_refused(stage("s", 1, ["teacher"], component("ce", name)))
    assert (err.key, err.detail) == ("stages[0].components[0].name", detail)
    models = {name if role == "teacher" else role: m for role, m in MODELS.items()}
    err = _assert_refused(stage("s", 1, [name], component("ce")), models=models)
    assert (err.key, err.detail) == (f"models.{name}", detail)


@pytest.mark.parametrize("name", ["a.b", "..x", "a b", "é", "x\\y", "-"])
def test_names_that_are_one_path_part_are_accepted(name):
    models = {name if role == "teacher" else role: m for role, m in MODELS.items()}
    recipe = _accepted(stage(name, 1, [name], component("ce", name)), models=models)
    assert recipe.stages[0].name == name and recipe.stages[0].components[0].label == name
    assert name in recipe.models


def test_a_recipe_whose_every_model_is_disabled_says_none_are_defined():
    models = {role: {**m, "enabled": False} for role, m in MODELS.items()}
    err = _assert_refused(teacher_stage(1), models=models)
    assert (err.key, err.detail) == ("stages[0].train",
                                     "unknown model role 'teacher'; [models] defines: none")
