"""AWE's own optimiser takes the settings a model's optimiser takes, refused by ``kdcore check``
otherwise (momentum -1 reached torch's SGD in set-up; momentum >= 1, an infinite learning rate
or weight decay turned the WeightNet's weights to NaN mid-run, and a weight decay of 1e300
stopped its first step)."""

from __future__ import annotations

import math
import re

import pytest

from kdcore.errors import KdcoreError
from kdcore.testing import check_tiny, component, stage, teacher_stage, tiny_recipe


def _awe(**params: float) -> dict:
    return tiny_recipe(teacher_stage(1), stage("s", 1, ["student"],
                                                component("awe", params=params), component("ce")))


@pytest.mark.parametrize(("params", "needle"), [
    ({"momentum": -1.0}, "'momentum' must be in [0, 1), got -1.0"),
    ({"momentum": 1.0}, "'momentum' must be in [0, 1), got 1.0"),
    ({"lr": 10.5}, "'lr' must be in [0, 10] (a learning rate), got 10.5"),
    ({"lr": math.inf}, "'lr' must be in [0, 10] (a learning rate), got inf"),
    ({"weight_decay": math.inf}, "'weight_decay' must be a finite number, got inf"),
    ({"weight_decay": -1e-9}, "'weight_decay' must be >= 0, got -1e-09"),
    ({"weight_decay": 1e300}, "'weight_decay' must be a finite float32 number (magnitude at "
                              "most 3.4e38), got 1e+300"),
])
def test_an_optimiser_setting_a_model_could_not_have_is_refused(params, needle):
    with pytest.raises(KdcoreError, match=re.escape(f"params.{next(iter(params))}: {needle}")):
        check_tiny(_awe(**params))


def test_the_edges_a_model_takes_are_taken():
    check_tiny(_awe(momentum=0.0, lr=10.0, weight_decay=0.0))
    # a WeightNet that never steps (no learned loss weight) may hold any decay
    check_tiny(_awe(momentum=0.999, lr=0.0, weight_decay=3.4e38, loss_mode="cosine"))


def test_with_lr_0_the_weightnet_follows_a_student_that_must_be_trained_by_then():
    """Following an untrained student's learning rate stopped the run at the first step."""
    stages = (teacher_stage(1), stage("s", 1, ["teacher"], component("awe", params={
        "seed_mode": "none"}), component("ce")))
    with pytest.raises(KdcoreError, match=re.escape(
            "follows the learning rate of 'student', which no stage up to 's' trains")):
        check_tiny(tiny_recipe(*stages))
    stages[1]["components"][0]["params"]["lr"] = 0.05  # its own: nothing followed
    check_tiny(tiny_recipe(*stages))


def test_a_weightnet_the_students_rate_makes_diverge_is_refused_and_would_have_diverged():
    """At the student's rate (``lr = 0``), 5, a weight decay of 10 multiplies the WeightNet's
    weights by about -49 a step: ``check`` refuses it (it had trained until the WeightNet
    returned NaN weights and the run stopped), and trained as a run trains it (the test
    harness), the WeightNet does return NaN within two epochs (its weights near 1e13), where
    a decay just under the bound trains on."""
    import torch

    from kdcore.testing import MODELS, TinyNet, harness
    from kdcore_awe import AWE

    models = {**MODELS, "student": {**MODELS["student"], "optimizer": {"lr": 5.0}}}
    with pytest.raises(KdcoreError, match=re.escape("lr x weight_decay = 50 is past 3.8")):
        check_tiny(tiny_recipe(teacher_stage(1), stage("s", 2, ["student"], component(
            "awe", params={"weight_decay": 10.0}), component("ce")), models=models))
    gen = torch.Generator().manual_seed(0)
    x, labels = torch.randn(256, 8, generator=gen), torch.arange(256) % 4
    for decay, diverges in ((10.0, True), (0.7, False)):  # 5 x 0.7 = 3.5: under the bound
        h = harness(AWE, {"weight_decay": decay}, x=x, noisy_label=labels,
                    models={"student": TinyNet(8, 4)}, optimizer={"lr": 5.0, "momentum": 0.9},
                    beside=[{"use": "ce"}], batch_size=16, epochs=2).setup()
        try:
            h.fit()
            broke = False
        except KdcoreError as exc:  # the step's check of the weights the WeightNet returned
            assert "component 'awe' (awe) weight returned NaN" in str(exc)
            broke = True
        assert broke == diverges


def test_a_weightnet_rate_and_decay_that_diverge_for_certain_are_refused():
    """Its own SGD at ``lr x weight_decay`` past ``2 (1 + momentum)`` grows the WeightNet's
    weights every step whatever the data (kdcore.validators.decay_bound)."""
    def check(params):
        check_tiny(tiny_recipe(teacher_stage(1), stage("s", 1, ["student"], component(
            "awe", params=params), component("ce"))))

    check({"lr": 1.0, "weight_decay": 2.9, "momentum": 0.45})  # 2.9 = 2 x 1.45: the bound
    with pytest.raises(KdcoreError, match=re.escape(
            "stages[1].components[0].params: lr x weight_decay = 3 is past 2.9 (the "
            "WeightNet's SGD with momentum 0.45): weight decay alone then grows the weights at "
            "every step, so training at this rate diverges; lower one of them")):
        check({"lr": 1.0, "weight_decay": 3.0, "momentum": 0.45})
    # no learned loss weight: the WeightNet never steps, so nothing of it can diverge
    for mode in ("cosine", "margin", "loss_posterior", "loss_rank", "none"):
        check({"lr": 1.0, "weight_decay": 3.0, "momentum": 0.45, "loss_mode": mode})


@pytest.mark.parametrize(("student", "refused"), [
    # lr 0: the student's rate, 0.125 x 24 = 3 = 2 (1 + 0.5), the bound
    ({"optimizer": {"lr": 0.125}}, None),
    ({"optimizer": {"lr": 0.125},  # a milestone past the stage's end: the next stage's rate
      "schedule": {"name": "multistep", "milestones": [2], "gamma": 1.25}}, None),
    ({"optimizer": {"lr": 0.125},  # raised within the stage (its 2 epochs after 1 teacher's)
      "schedule": {"name": "multistep", "milestones": [1], "gamma": 1.25}}, "3.75"),
    ({"optimizer": {"lr": 0.25}}, "6"),
])
def test_a_weightnet_that_follows_the_students_rate_is_held_to_its_bound_at_that_rate(
        student, refused):
    """``lr = 0``: the WeightNet steps at the student's rate, the highest that the student's
    schedule reaches by the end of the component's stage (the plugin's kdcore_configure)."""
    from kdcore.testing import MODELS

    models = {**MODELS, "student": {**MODELS["student"], **student}}
    recipe = tiny_recipe(teacher_stage(1), stage("s", 2, ["student"], component(
        "awe", params={"lr": 0.0, "momentum": 0.5, "weight_decay": 24.0}), component("ce")),
        stage("t", 2, ["student"], component("ce")), models=models)
    if refused is None:
        check_tiny(recipe)
        return
    with pytest.raises(KdcoreError, match=re.escape(
            f"stages[1].components[0] ('awe', use = \"awe\"): lr x weight_decay = {refused} is "
            "past 3 (the WeightNet's SGD with momentum 0.5 at the learning rate of 'student', "
            "which lr = 0 follows): weight decay alone then grows the weights at every step")):
        check_tiny(recipe)
    recipe["stages"][1]["components"][0]["enabled"] = False  # left out: nothing to check
    check_tiny(recipe)
