"""The models' training state reckoned before they are built (kdcore.footprint): a recipe whose
models fit one by one but cannot train together is refused by ``check``, where the run had been
killed by the kernel's out-of-memory killer (exit 137, no message)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from kdcore.cli import main
from kdcore.errors import RecipeError
from kdcore.footprint import TRAINING_SHARE, check_training_fits, local_processes, weight_copies
from kdcore.recipe import recipe_from_dict
from kdcore.testing import component, stage, tiny_recipe, write_recipe


def _recipe(*stages, student=None, teacher=None):
    data = tiny_recipe(*stages)
    data["models"]["student"].update(student or {})
    data["models"]["teacher"].update(teacher or {})
    return recipe_from_dict(data)


CE = component("ce")


@pytest.mark.parametrize(("optimizer", "keeps", "copies"), [
    ({"name": "sgd", "momentum": 0.9}, ["last"], [1, 1, 1, 0]),
    ({"name": "sgd", "momentum": 0.0}, ["last"], [1, 1, 0, 0]),  # no momentum buffer
    ({"name": "adam", "momentum": 0.0}, ["last"], [1, 1, 2, 0]),  # two moments
    ({"name": "adamw", "momentum": 0.0}, ["best_val"], [1, 1, 2, 1]),
    # a best_val stage's kept weights go at its end; best_val_all's stay to the run's end
    ({"name": "sgd"}, ["best_val", "best_val", "last"], [1, 1, 1, 1]),
    ({"name": "sgd"}, ["best_val_all", "best_val_all", "best_val"], [1, 1, 1, 2]),
    ({"name": "sgd"}, ["best_val_all", "last"], [1, 1, 1, 1]),
])
def test_what_a_trained_role_holds(optimizer, keeps, copies):
    stages = [stage(f"s{i}", 1, ["student"], CE, keep=keep) for i, keep in enumerate(keeps)]
    recipe = _recipe(*stages, student={"optimizer": {"lr": 0.1, **optimizer}})
    assert list(weight_copies(recipe, "student").values()) == copies
    assert list(weight_copies(recipe, "student")) == ["weights", "gradients",
                                                      "optimiser state", "kept best weights"]
    # the teacher no stage trains: its weights only, whatever its optimiser
    assert weight_copies(recipe, "teacher") == {"weights": 1}


def test_the_processes_that_share_the_memory(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert local_processes(torch.device("cpu")) == 1
    for value, expected in (("3", 3), ("0", 1), ("x", 1)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", value)
        assert local_processes(torch.device("cpu")) == expected
        assert local_processes(torch.device("cuda", 1)) == 1  # a GPU is its process's own


def _free(monkeypatch, n):
    monkeypatch.setattr("kdcore.device.free_memory", lambda device: n)


def test_the_run_plans_for_its_share_of_the_free_memory(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    recipe = _recipe(stage("s", 1, ["student"], CE, keep="best_val"))  # student: 4 copies
    sizes = {"teacher": 1_000, "student": 5_000}  # 1,000 + 4 x 5,000 = 21,000 bytes
    assert TRAINING_SHARE == 0.8
    _free(monkeypatch, 26_250)  # 0.8 x 26,250 = 21,000: just enough
    check_training_fits(recipe, sizes, torch.device("cpu"))
    _free(monkeypatch, None)  # unknown: nothing refused
    check_training_fits(recipe, sizes, torch.device("cpu"))
    check_training_fits(recipe, {}, torch.device("cpu"))
    _free(monkeypatch, 26_249)
    with pytest.raises(RecipeError) as info:
        check_training_fits(recipe, sizes, torch.device("cpu"))
    assert info.value.key == "models.student.params"
    assert info.value.detail == (
        "the models' training state needs 20.5 KiB; 25.6 KiB are free on cpu, and a run plans "
        "for at most 80% of it: model 'student' holds 4 x 4.9 KiB (1 weights, 1 gradients, 1 "
        "optimiser state, 1 kept best weights); a smaller model, an optimiser with less state "
        "or keep = \"last\" takes less")
    # the largest share is named, not the largest model: 4 x 1,000 > 1 x 3,000
    _free(monkeypatch, 100)
    with pytest.raises(RecipeError) as info:
        check_training_fits(recipe, {"teacher": 3_000, "student": 1_000}, torch.device("cpu"))
    assert info.value.key == "models.student.params"
    with pytest.raises(RecipeError) as info:
        check_training_fits(recipe, {"teacher": 5_000, "student": 1_000}, torch.device("cpu"))
    assert info.value.key == "models.teacher.params"
    assert "model 'teacher' holds 1 x 4.9 KiB (1 weights);" in info.value.detail


def test_processes_on_one_machine_each_hold_their_own(monkeypatch):
    recipe = _recipe(stage("s", 1, ["student"], CE))  # student: 3 copies, keep last
    # 0.8 x 30,000 = 24,000 on either, each asked of its own device's memory
    monkeypatch.setattr("kdcore.device.free_memory",
                        lambda device: {"cpu": 30_000, "cuda": 30_000}[device.type])
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    check_training_fits(recipe, {"student": 4_000}, torch.device("cpu"))  # 2 x 12,000
    check_training_fits(recipe, {"student": 8_000}, torch.device("cuda"))  # its own GPU
    # 2 x 3 x 4,001 = 24,006 bytes
    with pytest.raises(RecipeError, match=r"^models\.student\.params: the models' training state "
                                          r"needs 23\.4 KiB \(2 processes on this machine, each "
                                          r"its own\); "):
        check_training_fits(recipe, {"student": 4_001}, torch.device("cpu"))


def test_models_that_fit_one_by_one_but_not_together_are_refused_by_check(tmp_path,
                                                                         monkeypatch):
    """Through the command line: each model's parameters alone fit in half the free memory,
    their training state together does not; the run had been killed mid-set-up."""
    data = tiny_recipe(stage("t", 1, ["teacher"], CE), stage("s", 1, ["student"], CE))
    # 64 inputs, 10 classes, float32: 4 x (64 x 1000 + 1000 + 1000 x 10 + 10) = 300,040 bytes
    data["models"]["teacher"]["params"] = {"hidden": [1000]}
    data["models"]["student"]["params"] = {"hidden": [900]}  # 4 x 67,510 = 270,040 bytes
    recipe = write_recipe(data, tmp_path / "r.toml")
    # each fits alone in half the free memory (300,040 < 0.5 x 2,137,800); both train with
    # SGD's momentum, keep last: 3 x (300,040 + 270,040) = 1,710,240 bytes
    _free(monkeypatch, 2_137_800)  # 0.8 x 2,137,800 = 1,710,240: just enough
    result = CliRunner().invoke(main, ["check", str(recipe)])
    assert result.exit_code == 0, result.output
    _free(monkeypatch, 2_137_799)
    result = CliRunner().invoke(main, ["check", str(recipe)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        f"kdcore: error: {recipe}: models.teacher.params: the models' training state needs "
        "1.6 MiB; 2.0 MiB are free on cpu, and a run plans for at most 80% of it: model "
        "'teacher' holds 3 x 293.0 KiB (1 weights, 1 gradients, 1 optimiser state); a smaller "
        "model, an optimiser with less state or keep = \"last\" takes less")
