"""Short runs on digits: both recipes, exact resume, the student's late labels, user errors."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

import kdcore
from kdcore import PluginHost, RecipeError
from kdcore.config import structure
from kdcore.meta import functional_forward
from kdcore.plan import build_plan
from kdcore.recipe import recipe_from_dict
from kdcore.testing import (
    InterruptAt,
    Interrupted,
    assert_same_history,
    component,
    run_tiny,
    stage,
    tiny_recipe,
)
from kdcore_mlc import kdcore_configure
from kdcore_mlc.kdmlc import KDMLCStudentParams
from kdcore_mlc.losses import kdmlc_student_loss
from kdcore_mlc.mlc import MLC

RECIPES = Path(__file__).resolve().parents[3] / "recipes"

# both models keep the default lr (0.05)
MODELS = {"teacher": {"arch": "mlp", "params": {"hidden": [32]}},
          "student": {"arch": "mlp", "params": {"hidden": [16]}}}


def _tiny(*stages: dict, student: dict | None = None) -> dict:
    """400 digits with a gold split, one thread, a checkpoint every epoch (the resume tests
    kill mid-stage); ``student`` replaces the student model."""
    models = {**MODELS, "student": student} if student else MODELS
    return tiny_recipe(*stages, models=models, name="kdmlc-tiny", train_subset=400,
                       gold_per_class=10, batch_size=64, run={"threads": 1})


def _kdmlc(*extra: dict, epochs: int = 2, mlc: dict | None = None,
           student: dict | None = None) -> dict:
    """One stage: MLC on the teacher, KD-MLC on the student (params ``mlc``, ``student``),
    then the ``extra`` components."""
    return _tiny(stage(
        "kdmlc", epochs, ["teacher", "student"],
        component("mlc", models=["teacher"], params=mlc),
        component("kdmlc_student", models=["student"], params=student),
        *extra,
    ))


def _run(recipe, tmp_path, name="run", extra=(), **kw):
    host = kdcore.PluginHost(extra=list(extra))
    return kdcore.run_recipe(recipe, out=str(tmp_path / name), host=host, **kw)


def _plan(recipe: dict):
    """The run's plan of ``recipe`` (its checks, no data loaded, nothing trained)."""
    return build_plan(recipe_from_dict(recipe), PluginHost())


@pytest.mark.slow
@pytest.mark.parametrize(("file", "roles"), [("mlc.toml", ["student"]),
                                             ("kdmlc.toml", ["teacher", "student"])])
def test_recipe_runs_on_digits(file, roles, tmp_path):
    stage = "student" if file == "mlc.toml" else "kdmlc"
    recipe = kdcore.load_recipe(RECIPES / file, [f"stages.{stage}.epochs=2", "run.threads=1",
                                                 "run.device=cpu"])
    summary = _run(recipe, tmp_path)
    assert sorted(summary) == sorted(roles)
    with kdcore.History(tmp_path / "run") as h:
        assert h.producers("target") == ["mlc", "mlc"]
        target = h.column("target", 1).astype(np.float64)
        np.testing.assert_allclose(target.sum(1), 1.0, atol=5e-3)  # soft labels (float16)
        iters = -(-len(target) // recipe.data.batch_size)
        assert list(h.metric("mlc/mlc/meta_steps")) == [iters, 2 * iters]  # K = 1
        assert np.isfinite(h.metric("mlc/mlc/meta_loss")).all()
        for role in roles:
            assert np.isfinite(h.metric(f"train/{role}/loss")).all()


@pytest.mark.slow
def test_resume_mid_epoch_is_exact(tmp_path):
    """LCN, its AMSGrad state, a half-filled K-step sum and the gold stream all resume."""
    recipe = _kdmlc(epochs=3, mlc={"gradient_steps": 2, "skip": True, "meta_lr": 1e-2},
                    student={"clean_half": True, "soft_target": "lcn"})
    straight = run_tiny(recipe, tmp_path / "straight")
    with pytest.raises(Interrupted):  # mid second epoch, after the first epoch's checkpoint
        run_tiny(recipe, tmp_path / "killed", plugins=[InterruptAt(1, 2)])
    with kdcore.History(tmp_path / "killed") as h:
        assert h.epochs() == [("kdmlc", 0)]
    resumed = run_tiny(recipe, tmp_path / "killed", resume=True)
    assert resumed == straight
    assert_same_history(tmp_path / "killed", tmp_path / "straight")


PROBES: list[dict[str, object]] = []


class StudentGradProbe(kdcore.Component):
    """Checks, after each step, which corrected labels the student's gradient came from."""

    mlcs: ClassVar[list[MLC]] = []  # the test's ``mlc_instances``: MLC set up for this run

    def transfer(self, ctx, batch):  # before any backward: snapshot the student's weights
        model = ctx.models["student"]
        batch.store.put(self.name, "weights",
                        {n: p.detach().clone() for n, p in model.named_parameters()})
        return None

    def after_step(self, ctx, batch):
        mlc = self.mlcs[-1]
        kd = KDMLCStudentParams()  # the recipe keeps the student's beta and temperature
        model = ctx.models["student"]
        with torch.no_grad():  # the LCN after this iteration's meta step, recomputed here
            post = mlc.lcn.correct(mlc.features(batch), batch.noisy_label)[0]
        pre = mlc.corrected(batch)
        leaves = {n: w.clone().requires_grad_(True)
                  for n, w in batch.store.require(self.name, "weights").items()}
        logits = functional_forward(model, leaves, batch.x)[0]
        teacher = batch.out("teacher").logits.detach()
        expect = {}
        for which, labels in (("pre", pre), ("post", post)):
            loss = kdmlc_student_loss(logits, labels, teacher, kd.beta, kd.temperature).mean()
            expect[which] = torch.autograd.grad(loss, list(leaves.values()), retain_graph=True)
        actual = [p.grad.clone() for p in model.parameters()]
        PROBES.append({"actual": actual, **expect})


class ProbePlugin:
    @kdcore.hookimpl
    def kdcore_add_components(self):
        return {"student_grad_probe": StudentGradProbe}


@pytest.mark.slow
@pytest.mark.parametrize("after", [True, False])
def test_student_learns_from_labels_after_the_meta_step(after, tmp_path, mlc_instances,
                                                        monkeypatch):
    monkeypatch.setattr(StudentGradProbe, "mlcs", mlc_instances)
    recipe = _kdmlc(component("student_grad_probe", models=["student"]), epochs=1,
                    mlc={"meta_lr": 1e-2}, student={"labels_after_meta_step": after})
    PROBES.clear()
    run_tiny(recipe, tmp_path / "run", plugins=[ProbePlugin()])
    assert len(PROBES) == 7  # ceil(400 / 64) steps
    used, other = ("post", "pre") if after else ("pre", "post")
    for probe in PROBES:
        for got, want in zip(probe["actual"], probe[used], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
        # the two label sets give visibly different gradients: the check can tell them apart
        assert any(not torch.allclose(a, b, rtol=1e-4, atol=1e-7)
                   for a, b in zip(probe[used], probe[other], strict=True))


def _override(recipe: dict, stage: int, label: str, **fields) -> dict:
    """``recipe`` with fields of component ``label`` of stage ``stage`` replaced."""
    for comp in recipe["stages"][stage]["components"]:
        if comp.get("name", comp["use"]) == label:
            comp.update(fields)
    return recipe


def test_recipe_errors_are_clear():
    """Each mistake is refused by the plan, before any data is loaded."""
    no_gold = _kdmlc()
    no_gold["data"]["gold_per_class"] = 0
    adam = _kdmlc()
    adam["models"]["teacher"]["optimizer"] = {"name": "adam"}
    cases = [
        (no_gold, "data.gold_per_class"),
        (adam, "mirrors SGD"),
        (_override(_kdmlc(), 0, "mlc", enabled=False), "needs an 'mlc' component"),
        (_kdmlc(student={"betta": 0.3}), "did you mean 'beta'"),
        (_kdmlc(mlc={"method": "hmlc_K"}, student={"clean_half": True}), "clean_half needs"),
        (_kdmlc(student={"corrector": "mlc2"}), "an mlc component labelled 'mlc2'"),
        (_override(_kdmlc(), 0, "kdmlc_student", models=["teacher"]),
         "the main model of 'mlc'"),
        (_override(_override(_kdmlc(), 0, "kdmlc_student", enabled=False), 0, "mlc",
                   models=["teacher", "student"]),
         r"components\[0\]\.params: component 'mlc' serves \['teacher', 'student'\]: MLC "
         r"corrects the labels of one main model; set its models to that role \(a student "
         r"distilled from it takes kdmlc_student\)$"),
        (_kdmlc(student={"teacher": "student"}), "would distil 'student' from itself"),
    ]
    for recipe, match in cases:
        with pytest.raises(RecipeError, match=match):
            _plan(recipe)
    _plan(_kdmlc(student={"corrector": "mlc"}))  # named outright: fine


def test_a_carried_network_built_with_other_settings_is_refused_by_check():
    """The same label in the next stage with another ``hidden`` (or ``skip``) stopped the run
    at the stage boundary, after the first stage had trained."""
    def two_stages(second: dict) -> kdcore.Recipe:
        return recipe_from_dict(_tiny(stage("a", 1, ["student"], component("mlc")),
                                      stage("b", 1, ["student"], component("mlc", params=second))))

    with pytest.raises(RecipeError, match="component 'mlc' continues the state of an earlier "
                                          "'mlc' .* does not fit this stage's"):
        kdcore.dry_setup(two_stages({"hidden": 16}), PluginHost())
    kdcore.dry_setup(two_stages({"meta_lr": 1e-3}), PluginHost())  # a setting it can continue


def test_plan_refuses_a_student_whose_teacher_role_does_not_exist():
    """``teacher`` is a ``Role``: the plan checks it names a model of the recipe."""
    with pytest.raises(RecipeError, match="'teachr'"):
        _plan(_kdmlc(student={"teacher": "teachr"}))
    # with soft_target = "lcn" the teacher network is never run, so the role is not needed
    recipe = _kdmlc(student={"soft_target": "lcn", "teacher": "teachr"})
    plan = _plan(recipe)
    student = next(c for c in plan.stages[0].components if c.name == "kdmlc_student")
    assert student.roles() == ()
    kd = next(c for c in _plan(_kdmlc()).stages[0].components if c.name == "kdmlc_student")
    assert kd.roles() == ("teacher",)


@pytest.mark.parametrize("file", ["mlc-fmnist.toml", "kdmlc-fmnist.toml"])
@pytest.mark.parametrize("noise", ["symmetric", "pair_flip"])
def test_fashion_mnist_recipes_resolve(file, noise):
    recipe = kdcore.load_recipe(RECIPES / file, [f"data.noise.model={noise}"])
    assert recipe.data.dataset == "fashion_mnist" and recipe.data.params == {"flatten": True}
    assert recipe.data.gold_per_class == 100
    assert recipe.data.noise.model == noise and recipe.data.noise.params == {"rate": 0.4}
    assert [s.epochs for s in recipe.stages] == [20]
    assert kdcore_configure(recipe=recipe) is None
    host = kdcore.PluginHost()
    for comp in recipe.stages[0].components:
        structure(host.components.get(comp.use).Params, comp.params)
    host.noise_models.get(noise)


VIRTUAL: list[int] = []


class VirtualEqualsReal(kdcore.Component):
    """After the optimiser stepped, the model must sit exactly at MLC's virtual point w'."""

    def after_step(self, ctx, batch):
        virtual = batch.store.require("mlc", "virtual")
        for name, param in ctx.models["student"].named_parameters():
            torch.testing.assert_close(param.detach(), virtual[name], rtol=1e-5, atol=1e-7)
        VIRTUAL.append(len(virtual))


class VirtualPlugin:
    @kdcore.hookimpl
    def kdcore_add_components(self):
        return {"virtual_equals_real": VirtualEqualsReal}


@pytest.mark.slow
def test_alternative_reading_mlc_on_the_student_with_a_kd_term(tmp_path):
    """Spec 3.2's other reading: MLC on the student, whose loss also has a KD term.

    MLC's look-ahead takes the student's whole loss (both terms), and its virtual point is
    where the engine's real SGD step (cosine schedule, Nesterov momentum, weight decay) lands.
    """
    student = {**MODELS["student"], "optimizer": {"nesterov": True},
               "schedule": {"name": "cosine"}}
    recipe = _tiny(stage("teacher", 1, ["teacher"], component("ce")),
                   stage("student", 2, ["student"], component("mlc"),
                         component("hinton_kd", params={"teacher": "teacher"}),
                         component("virtual_equals_real")),
                   student=student)
    VIRTUAL.clear()
    summary = run_tiny(recipe, tmp_path / "run", plugins=[VirtualPlugin()])
    assert sorted(summary) == ["student", "teacher"]
    assert len(VIRTUAL) == 14 and set(VIRTUAL) == {4}  # 2 epochs x 7 steps, 4 tensors


def _carry(first: str) -> dict:
    """MLC on ``first`` for an epoch, then the same label on the student."""
    return _tiny(stage("one", 1, [first], component("mlc", models=[first])),
                 stage("two", 1, ["student"],
                       component("mlc", models=["student"], params={"meta_lr": 1e-3})))


@pytest.mark.slow
def test_a_later_stage_continues_the_lcn_or_says_why_not(tmp_path):
    run_tiny(_carry("student"), tmp_path / "carried")
    with kdcore.History(tmp_path / "carried") as h:
        assert list(h.metric("mlc/mlc/meta_steps")) == [7, 14]  # the same LCN, continued
    with pytest.raises(kdcore.RecipeError, match="give it another name"):
        run_tiny(_carry("teacher"), tmp_path / "mismatch")
