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
    ({"weight_decay": 1e300}, "'weight_decay' must be a float32 number (magnitude at most "
                              "3.4e38, or inf), got 1e+300"),
])
def test_an_optimiser_setting_a_model_could_not_have_is_refused(params, needle):
    with pytest.raises(KdcoreError, match=re.escape(f"params.{next(iter(params))}: {needle}")):
        check_tiny(_awe(**params))


def test_the_edges_a_model_takes_are_taken():
    check_tiny(_awe(momentum=0.0, lr=10.0, weight_decay=0.0))
    check_tiny(_awe(momentum=0.999, lr=0.0, weight_decay=3.4e38))


def test_with_lr_0_the_weightnet_follows_a_student_that_must_be_trained_by_then():
    """Following an untrained student's learning rate stopped the run at the first step."""
    stages = (teacher_stage(1), stage("s", 1, ["teacher"], component("awe", params={
        "seed_mode": "none"}), component("ce")))
    with pytest.raises(KdcoreError, match=re.escape(
            "follows the learning rate of 'student', which no stage up to 's' trains")):
        check_tiny(tiny_recipe(*stages))
    stages[1]["components"][0]["params"]["lr"] = 0.05  # its own: nothing followed
    check_tiny(tiny_recipe(*stages))


@pytest.mark.slow
def test_a_weightnet_that_diverges_stops_the_run_as_training_diverged(tmp_path):
    """At the student's rate (``lr = 0``), 5, a weight decay of 10 multiplies the WeightNet's
    weights by about -49 a step (its parameters cannot know that rate, so ``check`` cannot
    refuse it): they overflow, its weights turn NaN, and the run says the WeightNet diverged
    (exit 2, the setting's fault), where it had blamed AWE as a failed plugin (exit 1)."""
    from kdcore import TrainingDiverged
    from kdcore.testing import MODELS, run_tiny

    models = {**MODELS, "student": {**MODELS["student"], "optimizer": {"lr": 5.0}}}
    recipe = tiny_recipe(teacher_stage(1), stage("s", 2, ["student"], component(
        "awe", params={"weight_decay": 10.0}), component("ce")), models=models)
    with pytest.raises(TrainingDiverged, match=r"^component 'awe' \(awe\) weight returned NaN; "
                                               r"a weight must lie in \[0, inf\); its own "
                                               r"learned state diverged \('net\.net\.0\.weight' "):
        run_tiny(recipe, tmp_path / "run")


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
    check({"lr": 0.0, "weight_decay": 100.0})  # at the student's rate: not its to know
