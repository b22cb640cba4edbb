"""The student connector: present exactly when feature sizes differ (or forced), added in place,
trained, seeded."""

from __future__ import annotations

import copy
import types
from types import SimpleNamespace

import pytest
import torch

import kdcore
from kdcore.testing import TinyNet
from kdcore_lsh import ConnectedModel, attach_connector


class Watch:
    """Records the student at the start of the student stage and at the end of the run."""

    def __init__(self):
        self.start = {}
        self.end = {}

    @kdcore.hookimpl
    def kdcore_stage_start(self, ctx, stage):
        if stage.name != "student":
            return
        model = ctx.models["student"]
        in_optimiser = {id(p) for g in ctx.optimizers["student"].param_groups
                        for p in g["params"]}
        self.start = {
            "model": model,
            "params": {k: v.detach().clone() for k, v in model.named_parameters()},
            "in_optimiser": {k for k, v in model.named_parameters() if id(v) in in_optimiser},
            "forward": model(ctx.data.inputs(ctx.data.train, torch.arange(4))),
        }

    @kdcore.hookimpl
    def kdcore_run_end(self, ctx, summary):
        self.end = {k: v.detach().clone() for k, v in ctx.models["student"].named_parameters()}


@pytest.mark.slow
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
        # the old classifier is replaced, not left as dead parameters
        assert watch.start["params"]["classifier.weight"].shape == (10, 32)
        # every parameter, connector included, is in the optimiser and moved with training
        assert watch.start["in_optimiser"] == set(watch.start["params"])
        for name in ("connector.weight", "connector.bias", "classifier.weight"):
            assert not torch.equal(watch.start["params"][name], watch.end[name]), name
    else:
        assert not any("connector" in k for k in watch.start["params"])


class Net(TinyNet):
    """A one-hidden-layer MLP with batch norm (a buffer the connector must leave alone), a
    class of its own: the connector names the class it derives from it."""

    def __init__(self, hidden: int):
        super().__init__(64, 10, hidden, batch_norm=True)


def _fake_ctx(seed: int, hidden: int):
    """What attach_connector reads of a context: a read-only ``models`` and the seed."""
    models = {"student": Net(hidden)}
    return SimpleNamespace(models=types.MappingProxyType(models),
                           recipe=SimpleNamespace(run=SimpleNamespace(seed=seed)))


def test_connector_is_idempotent_seeded_and_leaves_the_global_rng_alone():
    a, b = _fake_ctx(0, 16), _fake_ctx(0, 16)
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
    ctx = _fake_ctx(seed, 16)
    attach_connector(ctx, "student", 32)
    return ctx.models["student"].state_dict()


def test_connector_is_added_in_place_and_keeps_the_model_contract():
    ctx = _fake_ctx(0, 16)
    model = ctx.models["student"]
    trunk = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("trunk.")}
    x = torch.randn(5, 64)
    model.eval()
    before = model.forward_features(x)
    assert attach_connector(ctx, "student", 32)
    assert ctx.models["student"] is model  # the same object: the mapping is read-only
    assert isinstance(model, ConnectedModel) and isinstance(model, Net)
    assert type(model).__name__ == "ConnectedNet"
    assert model.feature_dim == 32 and model.body_feature_dim == 16
    # the trunk keeps its parameter names and values; the connector and classifier are new
    state = model.state_dict()
    assert set(state) == {*trunk, "connector.weight", "connector.bias", "classifier.weight",
                          "classifier.bias"}
    for key, value in trunk.items():
        assert torch.equal(state[key], value)
    logits, features = model(x)
    torch.testing.assert_close(features, model.connector(before))
    torch.testing.assert_close(logits, model.classifier(features))
    assert logits.shape == (5, 10) and features.shape == (5, 32)
    # a copy (meta-learners, best-weight keepers) is a connected model too
    twin = copy.deepcopy(model)
    assert type(twin) is type(model)
    torch.testing.assert_close(twin(x)[1], features)
    # another student of the same architecture shares the connected class
    other = _fake_ctx(0, 16)
    attach_connector(other, "student", 32)
    assert type(other.models["student"]) is type(model)


def test_forced_connector_when_sizes_agree():
    ctx = _fake_ctx(0, 32)
    assert not attach_connector(ctx, "student", 32)
    assert not isinstance(ctx.models["student"], ConnectedModel)
    assert attach_connector(ctx, "student", 32, force=True)
    assert ctx.models["student"].connector.in_features == 32
