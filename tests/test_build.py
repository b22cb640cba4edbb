"""A role's optimiser and learning-rate schedule (kdcore.build): each optimiser steps as torch's
own built by hand with the recipe's settings; each schedule against a NumPy transcription of
docs/recipes.md and against torch's scheduler of the same name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcore.build import build_optimizer
from kdcore.recipe import ModelConfig, OptimizerConfig, ScheduleConfig


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _steps(model: torch.nn.Module, opt: torch.optim.Optimizer, n: int = 3) -> list[torch.Tensor]:
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    for _ in range(n):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(("cfg", "reference"), [
    (OptimizerConfig(name="sgd", lr=0.2, momentum=0.5, weight_decay=0.01, nesterov=True),
     lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.5, weight_decay=0.01, nesterov=True)),
    (OptimizerConfig(name="sgd", lr=0.3, momentum=0.0, weight_decay=0.0),
     lambda p: torch.optim.SGD(p, lr=0.3)),
    (OptimizerConfig(name="adam", lr=0.01, weight_decay=0.1),
     lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1)),
    (OptimizerConfig(name="adamw", lr=0.01, weight_decay=0.1),
     lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
])
def test_each_optimiser_steps_as_torchs_with_the_recipes_settings(cfg, reference):
    ours = _model()
    opt = build_optimizer(ours, cfg, "student")
    assert type(opt) is type(reference(_model().parameters()))
    theirs = _model()
    for a, b in zip(_steps(ours, opt), _steps(theirs, reference(theirs.parameters()))):
        assert torch.equal(a, b)


def test_the_optimiser_holds_every_parameter_even_those_frozen_now():
    """A role frozen in one stage and trained in a later one keeps one optimiser."""
    model = _model()
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(model, OptimizerConfig(), "student")
    assert [id(p) for g in opt.param_groups for p in g["params"]] == [
        id(p) for p in model.parameters()]
    before = model[0].weight.detach().clone()
    _steps(model, opt, 1)
    assert torch.equal(model[0].weight, before)  # no gradient, no step


def _numpy_lr(name: str, base: float, epoch: int, epochs: int, milestones=(), gamma=0.1):
    """docs/recipes.md's schedules, transcribed."""
    if name == "multistep":
        return base * gamma ** int(np.sum(np.asarray(milestones, dtype=np.int64) <= epoch))
    if name == "cosine":
        return base * (1 + np.cos(np.pi * epoch / max(epochs, 1))) / 2
    return base


@pytest.mark.parametrize("schedule", [
    ScheduleConfig(),
    ScheduleConfig(name="multistep", milestones=[3, 1, 3], gamma=0.5),  # unsorted, repeated
    ScheduleConfig(name="multistep", milestones=[0, 9], gamma=0.2),
    ScheduleConfig(name="cosine"),
])
def test_each_schedule_follows_its_formula_over_the_roles_epochs(schedule):
    cfg = ModelConfig(optimizer=OptimizerConfig(lr=0.4), schedule=schedule)
    epochs = 7
    got = [cfg.lr_at(e, epochs) for e in range(epochs)]
    want = [_numpy_lr(schedule.name, 0.4, e, epochs, schedule.milestones, schedule.gamma)
            for e in range(epochs)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("schedule", [
    ScheduleConfig(name="multistep", milestones=[3, 1, 3], gamma=0.5),
    ScheduleConfig(name="cosine"),
])
def test_each_schedule_is_torchs_scheduler_of_that_name_stepped_once_per_epoch(schedule):
    cfg = ModelConfig(optimizer=OptimizerConfig(lr=0.4), schedule=schedule)
    epochs = 6
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4)
    if schedule.name == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    else:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, schedule.milestones, schedule.gamma)
    for epoch in range(epochs):
        assert cfg.lr_at(epoch, epochs) == pytest.approx(opt.param_groups[0]["lr"],
                                                                 rel=1e-9)
        opt.step()
        sched.step()


def test_a_cosine_schedule_over_no_epochs_stays_at_the_base_rate():
    cfg = ModelConfig(optimizer=OptimizerConfig(lr=0.4), schedule=ScheduleConfig(name="cosine"))
    assert cfg.lr_at(0, 0) == 0.4


class _Paramless(torch.nn.Module):
    """(zero logits, zero features): a model with nothing to learn."""

    def __init__(self, spec):
        super().__init__()
        self.classes = spec.num_classes

    def forward(self, x):
        return torch.zeros(len(x), self.classes), torch.zeros(len(x), 3)


class _ParamlessPlugin:
    from kdcore import hookimpl

    @hookimpl
    def kdcore_add_models(self):
        return {"paramless": lambda spec: _Paramless(spec)}


PARAMLESS = _ParamlessPlugin()


def test_a_trained_model_without_parameters_is_refused_as_its_stage_is_set_up(tmp_path):
    """torch's "optimizer got an empty parameter list" was a traceback (exit 1); as a fixed
    teacher such a model is accepted."""
    from click.testing import CliRunner

    from kdcore.cli import main
    from kdcore.errors import RecipeError
    from kdcore.testing import component, stage, tiny_recipe, write_recipe

    with pytest.raises(RecipeError) as err:
        build_optimizer(_Paramless(type("Spec", (), {"num_classes": 3})), OptimizerConfig(),
                        "peer")
    assert str(err.value) == (
        "models.peer.arch: model 'peer' has no parameters, so a stage that trains it has "
        "nothing to learn; take it out of the stage's train list (it can still serve as a "
        "fixed teacher)")
    data = tiny_recipe(stage("student", 1, ["student"], component("hinton_kd",
                                                                  models=["student"])))
    data["models"]["teacher"]["arch"] = "paramless"
    data["models"]["teacher"]["params"] = {}
    check = ["check", "--plugin", "tests.test_build:PARAMLESS"]
    fixed = write_recipe(data, tmp_path / "fixed.toml")
    assert CliRunner().invoke(main, [*check, str(fixed)]).exit_code == 0
    data["stages"][0]["train"] = ["student", "teacher"]
    data["stages"][0]["components"].append(component("ce", models=["teacher"]))
    trained = write_recipe(data, tmp_path / "trained.toml")
    result = CliRunner().invoke(main, [*check, str(trained)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"kdcore: error: {trained}: models.teacher.arch: model "
                                     "'teacher' has no parameters, so a stage that trains it "
                                     "has nothing to learn; take it out of the stage's train "
                                     "list (it can still serve as a fixed teacher)")


def test_a_stages_rates_count_the_roles_epochs_of_earlier_stages_only():
    """Stage 2 of 3 (teacher, student, student): the student's epoch 1 there is its epoch 3 of
    5 (two in stage 1), and the teacher, which stage 2 does not train, keeps its rate."""
    from kdcore.build import set_stage_lr
    from kdcore.recipe import recipe_from_dict
    from kdcore.testing import component, stage, teacher_stage, tiny_recipe

    recipe = recipe_from_dict(tiny_recipe(
        teacher_stage(4), stage("s1", 2, ["student"], component("ce")),
        stage("s2", 3, ["student"], component("ce")),
        models={"teacher": {"arch": "mlp"},
                "student": {"arch": "mlp", "optimizer": {"lr": 0.8},
                            "schedule": {"name": "multistep", "milestones": [3, 4],
                                         "gamma": 0.5}}}))
    opts = {r: torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=9.0)
            for r in ("teacher", "student")}
    expected = {0: 0.8, 1: 0.4, 2: 0.2}  # student epochs 2, 3, 4: milestones at 3 and 4
    for epoch, lr in expected.items():
        set_stage_lr(opts, recipe, 2, epoch)
        assert opts["student"].param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12)
        assert opts["teacher"].param_groups[0]["lr"] == 9.0
    set_stage_lr(opts, recipe, 1, 1)  # student epoch 1 of 5: before any milestone
    assert opts["student"].param_groups[0]["lr"] == 0.8


def test_a_cosine_schedule_spans_every_epoch_of_the_role_over_its_stages():
    """The cosine's period is the role's epochs over all its stages (5 here), not the stage's:
    lr at the student's epoch 3 is 0.8 * (1 + cos(3 pi / 5)) / 2."""
    import math

    from kdcore.build import set_stage_lr
    from kdcore.recipe import recipe_from_dict
    from kdcore.testing import component, stage, teacher_stage, tiny_recipe

    recipe = recipe_from_dict(tiny_recipe(
        teacher_stage(4), stage("s1", 2, ["student"], component("ce")),
        stage("s2", 3, ["student"], component("ce")),
        models={"teacher": {"arch": "mlp"},
                "student": {"arch": "mlp", "optimizer": {"lr": 0.8},
                            "schedule": {"name": "cosine"}}}))
    opts = {"student": torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=9.0)}
    set_stage_lr(opts, recipe, 2, 1)
    assert opts["student"].param_groups[0]["lr"] == pytest.approx(
        0.8 * (1 + math.cos(3 * math.pi / 5)) / 2, rel=1e-12)


# -- parameters an architecture builds frozen ---------------------------------------------------


def test_a_trained_role_keeps_the_parameters_its_architecture_froze_frozen():
    from kdcore.build import architecture_frozen, set_trainable

    model = _model()
    model[0].weight.requires_grad_(False)
    fixed = architecture_frozen(model)
    assert fixed == {"0.weight"}
    set_trainable(model, False, fixed)
    assert not any(p.requires_grad for p in model.parameters())
    set_trainable(model, True, fixed)  # a later stage trains the role: its freeze stands
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        n for n, _ in model.named_parameters() if n != "0.weight"]
    set_trainable(model, True)  # nothing fixed: every parameter
    assert all(p.requires_grad for p in model.parameters())


class _FrozenTrunk(torch.nn.Module):
    """An architecture that keeps its trunk fixed and trains its head (``frozen = "all"``:
    the head too)."""

    def __init__(self, spec, frozen: str = "trunk"):
        super().__init__()
        self.trunk = torch.nn.Linear(spec.input_shape[0], 8)
        self.classifier = torch.nn.Linear(8, spec.num_classes)
        for p in (self.parameters() if frozen == "all" else self.trunk.parameters()):
            p.requires_grad_(False)

    def forward(self, x):
        features = torch.relu(self.trunk(x))
        return self.classifier(features), features


class _FrozenArchitectures:
    from kdcore import hookimpl

    @hookimpl
    def kdcore_add_models(self):
        def frozen_trunk(spec, *, frozen: str = "trunk"):
            return _FrozenTrunk(spec, frozen)

        return {"frozen_trunk": frozen_trunk}


FROZEN = _FrozenArchitectures()


def test_a_run_trains_the_head_of_an_architecture_that_freezes_its_trunk(tmp_path):
    """Every stage start set every parameter of a trained role trainable: the trunk the
    architecture froze was trained all the same, silently."""
    from kdcore.engine import run_recipe
    from kdcore.models.base import ModelSpec
    from kdcore.plugins import PluginHost
    from kdcore.recipe import recipe_from_dict
    from kdcore.runstate import role_seed
    from kdcore.testing import component, stage, tiny_recipe

    data = tiny_recipe(stage("warm", 1, ["student"], component("ce")),
                       stage("s", 2, ["student"], component("ce")), train_subset=60,
                       models={"student": {"arch": "frozen_trunk"}})
    host = PluginHost(extra=[_FrozenArchitectures()], entry_points=False)
    run_recipe(recipe_from_dict(data), out=str(tmp_path / "r"), host=host, progress=False)
    trained = torch.load(tmp_path / "r" / "models" / "student.pt", weights_only=True)
    torch.manual_seed(role_seed(0, "student"))
    initial = _FrozenTrunk(ModelSpec((64,), 10))
    assert torch.equal(trained["trunk.weight"], initial.trunk.weight)
    assert torch.equal(trained["trunk.bias"], initial.trunk.bias)
    assert not torch.equal(trained["classifier.weight"], initial.classifier.weight)


def test_a_trained_role_built_with_every_parameter_frozen_is_refused_by_check(tmp_path):
    from kdcore.errors import RecipeError
    from kdcore.plugins import PluginHost
    from kdcore.testing import check_tiny, component, stage, tiny_recipe

    host = PluginHost(extra=[_FrozenArchitectures()], entry_points=False)
    frozen = {"arch": "frozen_trunk", "params": {"frozen": "all"}}
    with pytest.raises(RecipeError) as info:
        check_tiny(tiny_recipe(stage("s", 1, ["student"], component("ce")),
                               models={"student": frozen}), host=host)
    assert (info.value.key, info.value.detail) == (
        "models.student.arch", "model 'student' is built with every parameter frozen "
        "(requires_grad = False), so a stage that trains it has nothing to learn; take it out "
        "of the stage's train list (it can still serve as a fixed teacher), or build some of "
        "its parameters trainable")
    # through the CLI: the recipe's file and key, one line
    from click.testing import CliRunner

    from kdcore.cli import main
    from kdcore.testing import write_recipe

    path = write_recipe(tiny_recipe(stage("s", 1, ["student"], component("ce")),
                                    models={"student": frozen}), tmp_path / "frozen.toml")
    result = CliRunner().invoke(main, ["check", "--plugin", "tests.test_build:FROZEN", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith(
        f"kdcore: error: {path}: models.student.arch: model 'student' is built with every "
        "parameter frozen"), result.output
    # as a fixed teacher it serves
    check_tiny(tiny_recipe(stage("s", 1, ["student"], component("ce"),
                                 component("hinton_kd", params={"teacher": "teacher"})),
                           models={"teacher": frozen, "student": {"arch": "mlp"}}), host=host)
