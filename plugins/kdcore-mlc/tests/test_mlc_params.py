"""MLC's label-correction network is counted before it is built, and one too large for memory
is refused by ``kdcore check`` (``hidden = 10**12`` stopped set-up on a failed allocation);
its meta learning rate lies in a model's range."""

from __future__ import annotations

import re

import pytest

import kdcore_mlc.mlc as mlc_module
from kdcore.errors import KdcoreError
from kdcore.testing import check_tiny, component, stage, teacher_stage, tiny_recipe
from kdcore_mlc.lcn import LabelCorrectionNet


def _mlc(**params) -> dict:
    return tiny_recipe(teacher_stage(1), stage("s", 1, ["student"],
                                                component("mlc", params=params)),
                       gold_per_class=3)


@pytest.mark.parametrize(("feature_dim", "classes", "cls_dim", "hidden", "skip"), [
    (32, 10, 4, 8, False), (5, 3, 1, 1, True), (64, 100, 128, 128, False)])
def test_the_network_is_counted_as_built(feature_dim, classes, cls_dim, hidden, skip):
    net = LabelCorrectionNet(feature_dim, classes, cls_dim, hidden, skip)
    built = sum(p.numel() for p in net.parameters())
    assert LabelCorrectionNet.parameter_count(feature_dim, classes, cls_dim, hidden, skip) == built


def test_set_up_checks_the_networks_bytes(monkeypatch):
    seen = []
    monkeypatch.setattr(mlc_module, "check_fits", lambda what, n, *a, **k: seen.append((what, n)))
    check_tiny(_mlc(cls_dim=4, hidden=8, skip=True))
    net = LabelCorrectionNet(16, 10, 4, 8, True)  # the tiny student's 16 features, 10 digits
    assert seen == [("component 'mlc': its label-correction network (its parameters alone)",
                     4 * sum(p.numel() for p in net.parameters()))]


@pytest.mark.parametrize("params", [{"hidden": 10**12}, {"cls_dim": 10**12}])
def test_a_network_that_cannot_fit_is_refused_before_it_is_built(params):
    with pytest.raises(KdcoreError, match=re.escape(
            "component 'mlc': its label-correction network (its parameters alone) needs ")
            ) as err:
        check_tiny(_mlc(**params))
    assert str(err.value).endswith(" (lower its hidden or cls_dim)")


def test_a_meta_learning_rate_above_a_models_is_refused():
    with pytest.raises(KdcoreError, match=re.escape(
            "'meta_lr' must be in [0, 10] (a learning rate), got 11.0")):
        check_tiny(_mlc(meta_lr=11.0))
    check_tiny(_mlc(meta_lr=10.0))


def test_mlc_declares_the_backward_pass_it_takes_over():
    from kdcore import PluginHost
    from kdcore.plan import build_plan
    from kdcore.recipe import recipe_from_dict

    plan = build_plan(recipe_from_dict(_mlc()), PluginHost())
    assert plan.stages[1].components[0].backward_roles() == ("student",)


def test_compiled_models_are_refused_by_check():
    """Its look-ahead takes gradients of the model's gradients; compiled, the run stopped at
    its first step ("torch.compile with aot_autograd does not currently support double
    backward"), after check had accepted it."""
    data = _mlc()
    check_tiny(data)
    data["run"] = {**data.get("run", {}), "compile": True}
    with pytest.raises(KdcoreError) as info:
        check_tiny(data)
    assert info.value.key == "run.compile"
    assert info.value.detail == (
        "component 'mlc' (mlc) cannot work on compiled models: its look-ahead takes gradients "
        "of the model's gradients (create_graph), and torch.compile's backward has no double "
        "backward; set run.compile = false")
