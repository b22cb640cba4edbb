"""AML-KD's transfer components: one shared mix per batch, the roles they declare."""

from __future__ import annotations

import pytest
import torch

from kdcore import PluginHost, RecipeError
from kdcore.plan import build_plan
from kdcore.recipe import recipe_from_dict
from kdcore.testing import TinyNet as Net
from kdcore.testing import component, harness, stage, teacher_stage, tiny_recipe
from kdcore_amlkd.losses import MIXUP, MixupCE, MixupKD, RelationalKD, gram_mse, mixup_batch


def _harness(cls, params=None, name=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, generator=g)
    y = torch.randint(0, 4, (32,), generator=g)
    torch.manual_seed(0)
    return harness(cls, params, x=x, noisy_label=y, num_classes=4,
                   models={"student": Net(), "teacher": Net()}, name=name)


def test_mixup_terms_share_one_mix_and_one_forward_per_batch():
    kd = _harness(MixupKD, name="mixup_kd")
    ce = _harness(MixupCE, name="mixup_ce").component
    batch = kd.batch(torch.arange(8))
    kd_loss = kd.component.transfer(kd.ctx, batch)["student"]
    mix = batch.store.require(MIXUP, "mix")
    assert mixup_batch(kd.ctx, batch, 4.0) is mix  # drawn once per batch
    assert sorted(mix.perm.tolist()) == list(range(8)) and 0 <= mix.lam <= 1
    torch.testing.assert_close(mix.x, mix.lam * batch.x + (1 - mix.lam) * batch.x[mix.perm])
    student = batch.store.require(MIXUP, "out/student")
    ce_loss = ce.transfer(kd.ctx, batch)["student"]
    assert batch.store.require(MIXUP, "out/student") is student  # no second forward
    z = student.logits / 4.0
    y = batch.targets
    expected = -(mix.lam * (y * z.log_softmax(1)).sum(1)
                 + (1 - mix.lam) * (y[mix.perm] * z.log_softmax(1)).sum(1))
    torch.testing.assert_close(ce_loss, expected)
    assert kd_loss.shape == (8,) and kd_loss.requires_grad
    # a new batch draws a new mix
    assert kd.batch(torch.arange(8)).store.get(MIXUP, "mix") is None


def test_relational_kd_detach_option():
    h = _harness(RelationalKD, {"detach_student": True}, name="relational_kd")
    batch = h.batch(torch.arange(8))
    out = h.component.transfer(h.ctx, batch)["student"]
    expected = gram_mse(batch.out("student").features, batch.out("teacher").features)
    assert out.item() == pytest.approx(expected.item()) and not out.requires_grad
    # declared, so that a stage with nothing else to learn from is refused before training
    assert h.component.gradient_free_roles() == ("student",)
    assert _harness(RelationalKD).component.gradient_free_roles() == ()


def test_roles_declared():
    assert _harness(MixupCE, {"teacher": "nope"}).component.roles() == ()
    assert _harness(MixupKD).component.roles() == ("teacher",)
    assert _harness(RelationalKD).component.roles() == ("teacher",)


def _plan(*components):
    recipe = tiny_recipe(teacher_stage(1), stage("s", 1, ["student"], component("ce"),
                                                 *components))
    return build_plan(recipe_from_dict(recipe), PluginHost())


def test_plan_refuses_a_teacher_role_that_does_not_exist():
    _plan(component("mixup_ce"), component("mixup_kd", weight=0.9), component("relational_kd"))
    _plan(component("mixup_ce", params={"teacher": "nope"}))  # mixup_ce uses no teacher
    with pytest.raises(RecipeError, match="'mixup_kd'.*model role 'nope'"):
        _plan(component("mixup_ce"), component("mixup_kd", params={"teacher": "nope"}))
    with pytest.raises(RecipeError, match="'relational_kd'.*model role 'teachr'.*did you mean"):
        _plan(component("relational_kd", params={"teacher": "teachr"}))
