"""The student connector: present exactly when feature sizes differ (or forced), trained, seeded."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import kdcore
from kdcore.models.zoo import mlp
from kdcore_lsh import ConnectedModel, attach_connector


class Watch:
    """Records the student at the start of the student stage and at the end of the run."""

    def __init__(self):
        self.start = {}
        self.end = {}

    @kdcore.hookimpl
    def kdcore_stage_start(self, run, stage):
        if stage.name != "student":
            return
        model = run.models["student"]
        in_optimiser = {id(p) for g in run.optimizers["student"].param_groups
                        for p in g["params"]}
        self.start = {
            "model": model,
            "params": {k: v.detach().clone() for k, v in model.named_parameters()},
            "in_optimiser": {k for k, v in model.named_parameters() if id(v) in in_optimiser},
            "forward": model(run.data.inputs(run.data.train, torch.arange(4))),
        }

    @kdcore.hookimpl
    def kdcore_run_end(self, run, summary):
        self.end = {k: v.detach().clone() for k, v in run.models["student"].named_parameters()}


@pytest.mark.parametrize(("use", "hidden", "force", "expected"), [
    ("lshl2_s", 16, False, True),    # 16 != 32: connector
    ("lshl2_s", 32, False, False),   # same size: none
    ("l2", 32, True, True),          # forced
    ("lsh", 8, False, True),
])
def test_connector_appears_exactly_when_sizes_differ(run_lsh, comp, use, hidden, force, expected):
    watch = Watch()
    params = {"teacher": "teacher", "force_connector": force}
    run_lsh(comp("ce", params={}), comp(use, params=params), student_hidden=hidden,
            plugins=[watch])
    model = watch.start["model"]
    assert isinstance(model, ConnectedModel) is expected
    assert model.feature_dim == 32  # the teacher's D, with or without a connector
    logits, features = watch.start["forward"]
    assert features.shape == (4, 32) and logits.shape == (4, 10)
    if expected:
        assert model.connector.in_features == hidden and model.connector.out_features == 32
        assert model.body_feature_dim == hidden
        # the old classifier is gone, not left as dead parameters
        assert not any(k.startswith("body.classifier") for k in watch.start["params"])
        # every parameter, connector included, is in the optimiser and moved with training
        assert watch.start["in_optimiser"] == set(watch.start["params"])
        for name in ("connector.weight", "connector.bias", "classifier.weight"):
            assert not torch.equal(watch.start["params"][name], watch.end[name]), name
    else:
        assert not any("connector" in k for k in watch.start["params"])


def _fake_run(seed: int, hidden: int):
    spec = kdcore.ModelSpec((64,), 10)
    return SimpleNamespace(models={"student": mlp(spec, hidden=(hidden,))},
                           recipe=SimpleNamespace(run=SimpleNamespace(seed=seed)))


def test_connector_is_idempotent_seeded_and_leaves_the_global_rng_alone():
    a, b = _fake_run(0, 16), _fake_run(0, 16)
    state = torch.random.get_rng_state()
    assert attach_connector(a, "student", 32)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not attach_connector(a, "student", 32)  # a second component on the same student
    assert attach_connector(b, "student", 32)
    sa, sb = a.models["student"].state_dict(), b.models["student"].state_dict()
    for key in ("connector.weight", "classifier.weight"):
        assert torch.equal(sa[key], sb[key])
    assert not torch.equal(sa["connector.weight"],
                           _seeded_connector(seed=1)["connector.weight"])
    with pytest.raises(kdcore.RecipeError, match="already has a connector to 32"):
        attach_connector(a, "student", 64)


def _seeded_connector(seed: int) -> dict[str, torch.Tensor]:
    run = _fake_run(seed, 16)
    attach_connector(run, "student", 32)
    return run.models["student"].state_dict()


def test_teacher_cannot_mimic_itself(run_lsh, comp):
    with pytest.raises(kdcore.RecipeError, match="mimic itself"):
        run_lsh(comp("lshl2", models=["student", "teacher"]))
