"""A component output that breaks its contract after the component's own learned state diverged
is TrainingDiverged (the user's setting, exit 2), not RunFailed (a plugin's bug, exit 1)."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch

from kdcore import Component, TrainingDiverged
from kdcore.component import ComponentSpec, NoParams
from kdcore.diverged import broken_output, non_finite
from kdcore.failures import RunFailed
from kdcore.hookspecs import hookimpl
from kdcore.testing import component, run_tiny, stage, teacher_stage, tiny_recipe

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(("state", "path"), [
    ({"net": OrderedDict(w=torch.ones(2), b=torch.tensor([1.0, NAN]))}, "net.b"),
    ({"a": [torch.zeros(1), {"m": torch.tensor([-INF])}]}, "a.1.m"),
    ({"grads": [None, torch.tensor([INF], dtype=torch.float16)]}, "grads.1"),
    ([torch.tensor([1.0]), torch.tensor([NAN, NAN])], "1"),
    (torch.tensor(NAN), ""),
    ({"steps": torch.tensor([2**62]), "name": "nan", "x": NAN, "ok": torch.ones(3)}, None),
    ({"first": torch.tensor([NAN]), "second": torch.tensor([INF])}, "first"),
    ({}, None),
])
def test_non_finite_names_the_first_float_tensor_holding_nan_or_inf(state, path):
    assert non_finite(state) == path


class _Learned(Component):
    description = "a learned scale"

    def __init__(self, params, spec, state=None, raises=False):
        super().__init__(params, spec)
        self._state, self._raises = state, raises

    def state_dict(self):
        if self._raises:
            raise RuntimeError("no state")
        return self._state


def _comp(**kwargs):
    return _Learned(NoParams(), ComponentSpec("w1", "scaler", ("student",)), **kwargs)


def test_a_breach_after_the_state_diverged_is_training_diverged_else_run_failed():
    what = "weight returned NaN; a weight must lie in [0, inf)"
    diverged = broken_output(_comp(state={"net": {"w": torch.tensor([INF])}}), what)
    assert type(diverged) is TrainingDiverged and str(diverged) == (
        "component 'w1' (scaler) weight returned NaN; a weight must lie in [0, inf); its own "
        "learned state diverged ('net.w' is not finite in its state_dict): lower the learning "
        "rate or weight decay it trains with; the history and the last checkpoint hold every "
        "completed epoch")
    for comp in (_comp(state={"net": {"w": torch.ones(1)}}), _comp(state={}),
                 _comp(raises=True)):
        failed = broken_output(comp, what)
        assert type(failed) is RunFailed and str(failed) == f"component 'w1' (scaler) {what}"


class _Runaway(Component):
    """Weights the stage's terms by a learned scale that grows tenfold a step, to infinity."""

    description = "a runaway weight"

    def setup(self, ctx):
        self.scale = torch.tensor(1.0)

    def weight(self, ctx, batch):
        return self.scale.expand(len(batch)).clone()

    def after_step(self, ctx, batch):
        self.scale = self.scale * 1e12

    def state_dict(self):
        return {"scale": self.scale}

    def load_state_dict(self, state):
        self.scale = state["scale"]


class _RunawayPlugin:
    @hookimpl
    def kdcore_add_components(self):
        return {"runaway": _Runaway}


@pytest.mark.slow
def test_a_run_whose_component_diverged_stops_as_training_diverged(tmp_path):
    recipe = tiny_recipe(teacher_stage(1), stage("s", 2, ["student"], component("runaway"),
                                                 component("ce")))
    with pytest.raises(TrainingDiverged, match=r"^component 'runaway' \(runaway\) weight "
                                               r"returned values outside \[0, inf\) \(from "
                                               r".* to inf\); a weight must lie there; its own "
                                               r"learned state diverged \('scale' is not "
                                               r"finite in its state_dict\)"):
        run_tiny(recipe, tmp_path / "run", plugins=[_RunawayPlugin()])
