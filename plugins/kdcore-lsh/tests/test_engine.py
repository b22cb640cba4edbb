"""The components inside the engine and alone: the selective mask, composition with a
refiner, the hash state built at the stage start, the plan's role check, and exact resume."""

from __future__ import annotations

import pytest
import torch

import kdcore
from kdcore import PluginHost, RecipeError
from kdcore.plan import build_plan
from kdcore.recipe import recipe_from_dict
from kdcore.testing import (
    InterruptAt,
    Interrupted,
    TinyNet,
    assert_same_history,
    harness,
    stage,
    teacher_stage,
    tiny_recipe,
)
from kdcore_lsh import functional as lshf
from kdcore_lsh.mimic import L2Mimic, LSHL2Mimic, LSHMimic, SelectiveLSHL2Mimic


class ShiftRefiner(kdcore.Component):
    """A test refiner of another "package": moves every third sample's target to the next class."""

    def refine(self, ctx, batch, targets):
        shifted = targets.roll(1, dims=1)
        pick = (batch.index % 3 == 0).unsqueeze(1)
        return torch.where(pick, shifted, targets)


class RefinerPlugin:
    @kdcore.hookimpl
    def kdcore_add_components(self):
        return {"test_shift": ShiftRefiner}


class MaskCheck:
    """After every student batch: the mask, and how the engine reduced the loss with it."""

    def __init__(self, name: str, against: str, ce_weight: float, weight: float):
        self.name, self.against = name, against
        self.ce_weight, self.weight = ce_weight, weight
        self.batches = 0
        self.differs_from_noisy = 0

    @kdcore.hookimpl
    def kdcore_batch_end(self, ctx, batch, losses):
        if ctx.stage.name != "student":
            return
        ledger, index = ctx.ledger, batch.index
        mask = ledger[f"select/{self.name}"][index]
        teacher = batch.out("teacher").logits.argmax(1)
        label = batch.targets.argmax(1) if self.against == "targets" else batch.noisy_label
        assert mask.dtype == torch.bool
        assert torch.equal(mask, teacher == label)
        self.differs_from_noisy += int((mask != (teacher == batch.noisy_label)).sum())
        # CE averages over the whole batch; only the mimicking term is masked
        ce = batch.records["loss/ce"].double()
        feat = batch.records[f"loss/{self.name}"].double()
        m = mask.double()
        expected = self.ce_weight * ce.mean() + self.weight * (m * feat).sum() / m.sum()
        assert float(losses["student"].detach()) == pytest.approx(float(expected), rel=1e-5)
        self.batches += 1


@pytest.mark.slow
@pytest.mark.parametrize("against", ["targets", "noisy"])
def test_selective_mask_is_the_teacher_correct_samples_after_refinement(run_lsh, comp, against):
    check = MaskCheck("feat", against, ce_weight=0.5, weight=3.0)
    # the refiner comes after the transfer in the recipe: refinements still run first
    components = (comp("ce", weight=0.5, params={}),
                  comp("lshl2_s", name="feat", weight=3.0,
                       params={"teacher": "teacher", "correct_against": against}),
                  comp("test_shift", params={}))
    run_lsh(*components, epochs=2, plugins=[RefinerPlugin(), check])
    assert check.batches == 10  # 240 training samples in batches of 64, two epochs
    # the shifted targets changed the verdict for some samples: it was read after refinement
    assert (check.differs_from_noisy > 0) is (against == "targets")


# -- one component alone (kdcore.testing.harness) ------------------------------------------------


def Net(d_in: int, hidden: int, classes: int) -> TinyNet:  # noqa: N802 (a model class in all but name)
    """A one-hidden-layer ReLU MLP: ``(logits, features)``."""
    return TinyNet(d_in, classes, hidden)


def mimic_harness(cls, params=None, *, n: int = 50, student_hidden: int = 32,
                  train=("student",)):
    """``cls`` serving a student beside a 32-feature teacher, over ``n`` random inputs;
    ``adapt_models`` already ran (as the engine runs it before anything else)."""
    torch.manual_seed(0)
    x, y = torch.randn(n, 12), torch.randint(0, 5, (n,))
    models = {"teacher": Net(12, 32, 5), "student": Net(12, student_hidden, 5)}
    h = harness(cls, params, x=x, noisy_label=y, models=models, train=train,
                serves=("student",), name="feat")
    h.component.adapt_models(h.ctx)
    return h


def test_median_bias_splits_the_training_features_and_sigma_is_the_teacher_fc_std():
    h = mimic_harness(LSHL2Mimic).setup()
    mimic, teacher = h.component, h.ctx.models["teacher"]
    assert mimic.projection.shape == (32 * 32, 32)  # N = 32 D by default
    assert mimic.sigma == pytest.approx(float(teacher.classifier.weight.detach().std()))
    features = h.ctx.features("teacher").features
    bits = lshf.hash_bits(features, mimic.projection, mimic.bias)
    assert bits.sum(dim=0).tolist() == [50 // 2] * (32 * 32)
    h.epoch_start(0)
    assert h.metrics == {"lsh/feat/sigma": mimic.sigma, "lsh/feat/num_hashes": 32.0 * 32}
    # drawn once per stage, frozen: a later epoch keeps W and b
    projection, bias = mimic.projection.clone(), mimic.bias.clone()
    h.epoch_start(1)
    assert torch.equal(mimic.projection, projection) and torch.equal(mimic.bias, bias)


def test_given_sigma_hashes_and_zero_bias():
    params = {"num_hashes": 100, "sigma": 0.5, "bias": "zero"}
    mimic = mimic_harness(LSHMimic, params).setup().component
    assert mimic.projection.shape == (100, 32) and mimic.sigma == 0.5
    assert not mimic.bias.any()


def test_projection_comes_from_the_components_own_generator():
    a = mimic_harness(LSHMimic, {"num_hashes": 16}).setup().component
    h = mimic_harness(LSHMimic, {"num_hashes": 16})
    state = torch.random.get_rng_state()
    h.setup()
    assert torch.equal(torch.random.get_rng_state(), state)  # torch's global stream unused
    assert torch.equal(h.component.projection, a.projection)
    other = torch.Generator().manual_seed(1)
    torch.testing.assert_close(h.component.projection,
                               lshf.draw_projection(16, 32, h.component.sigma,
                                                    torch.Generator().manual_seed(0)))
    assert not torch.equal(h.component.projection,
                           lshf.draw_projection(16, 32, h.component.sigma, other))


def test_bias_update_epoch_follows_a_training_teacher():
    h = mimic_harness(LSHMimic, {"num_hashes": 16, "bias_update": "epoch"},
                      train=("student", "teacher")).setup()
    mimic = h.component
    h.epoch_start(0)
    bias = mimic.bias.clone()
    with torch.no_grad():
        h.ctx.models["teacher"].trunk[0].weight.mul_(2.0)
    h.run.bump("teacher")
    h.epoch_start(1)
    assert not torch.equal(mimic.bias, bias)
    torch.testing.assert_close(mimic.bias, mimic.compute_bias(h.ctx))


def test_l2_draws_no_projection_and_its_loss_is_the_feature_mse():
    h = mimic_harness(L2Mimic).setup()
    assert h.component.projection is None and h.component.state_dict() == {}
    batch = h.batch([1, 4, 9])
    loss = h.component.transfer(h.ctx, batch)["student"]
    f_s, f_t = batch.out("student").features, batch.out("teacher").features
    torch.testing.assert_close(loss, ((f_s - f_t) ** 2).mean(1))
    assert loss.requires_grad


def test_state_carries_into_the_next_stage_of_the_same_component():
    first = mimic_harness(LSHL2Mimic, {"num_hashes": 64}).setup().component
    h = mimic_harness(LSHL2Mimic, {"num_hashes": 64, "sigma": 3.0})
    h.component.setup(h.ctx)
    h.component.load_state_dict(first.state_dict())  # the engine's carry_state
    h.component.on_stage_start(h.ctx)
    assert torch.equal(h.component.projection, first.projection)
    assert torch.equal(h.component.bias, first.bias)
    assert h.component.sigma == first.sigma


@pytest.mark.parametrize("against", ["targets", "noisy"])
def test_selective_mask_compares_the_teacher_with_the_chosen_label(against):
    h = mimic_harness(SelectiveLSHL2Mimic, {"num_hashes": 16, "correct_against": against})
    h.setup()
    batch = h.batch(torch.arange(50))
    refined = batch.targets.roll(1, dims=1)
    batch.targets = refined  # as after a refiner
    mask = h.component.select(h.ctx, batch)
    teacher = batch.out("teacher").logits.argmax(1)
    label = refined.argmax(1) if against == "targets" else batch.noisy_label
    assert mask.dtype == torch.bool and torch.equal(mask, teacher == label)


# -- the plan ------------------------------------------------------------------------------------


def lsh_plan(*components, models=None):
    """The plan of a teacher stage then a student stage with ``components``."""
    data = tiny_recipe(teacher_stage(1), stage("student", 1, ["student"], *components),
                       models=models)
    return build_plan(recipe_from_dict(data), PluginHost())


def test_plan_checks_the_teacher_role(comp):
    plan = lsh_plan(comp("ce", params={}), comp("lshl2_s", name="feat"))
    mimic = plan.stages[1].components[1]
    assert mimic.roles() == ("teacher",) and mimic.reads() == ()
    assert mimic.written_columns() == ("select/feat", "select/feat/student")
    with pytest.raises(RecipeError, match="model role 'techer'"):
        lsh_plan(comp("l2", params={"teacher": "techer"}))
    # a teacher that [models] defines but disables is no model of the run
    models = {**tiny_recipe()["models"], "ghost": {"arch": "mlp", "enabled": False}}
    with pytest.raises(RecipeError, match="model role 'ghost'"):
        lsh_plan(comp("lsh", params={"teacher": "ghost"}), models=models)


def test_bad_parameters_are_rejected(comp):
    with pytest.raises(RecipeError, match=r"params\.bias"):
        lsh_plan(comp("lsh", params={"bias": "mode"}))
    with pytest.raises(RecipeError, match="num_hashes"):
        lsh_plan(comp("lsh", params={"num_hashes": 0}))
    with pytest.raises(RecipeError, match="did you mean 'correct_against'"):
        lsh_plan(comp("lshl2_s", params={"correct_agains": "noisy"}))
    # past float32: every projection was infinite at the stage's first step
    for sigma in (3.5e38, 1e300):
        with pytest.raises(RecipeError, match=r"params\.sigma: 'sigma' must be a finite float32 "
                                              r"number \(magnitude at most 3\.4e38\), got"):
            lsh_plan(comp("lshl2", params={"sigma": sigma}))
    lsh_plan(comp("lshl2", params={"sigma": 3e38}))  # a float32 number: the run says the rest


def test_teacher_cannot_mimic_itself(comp):
    with pytest.raises(RecipeError, match="would distil .teacher. from itself"):
        lsh_plan(comp("lshl2", models=["student", "teacher"]))


# -- resume --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_mid_stage_is_exact(run_lsh, comp, tmp_path):
    components = (comp("ce", params={}), comp(
        "lshl2_s", name="feat", weight=2.0,
        params={"teacher": "teacher", "num_hashes": 64, "bias_update": "epoch"}))
    straight = run_lsh(*components, epochs=3, out=tmp_path / "straight")
    with pytest.raises(Interrupted):
        run_lsh(*components, epochs=3, out=tmp_path / "cut",
                plugins=[InterruptAt(1, 1, "student")])
    resumed = run_lsh(*components, epochs=3, out=tmp_path / "cut", resume=True)
    assert resumed == straight
    assert_same_history(tmp_path / "cut", tmp_path / "straight")
