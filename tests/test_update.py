"""kdcore.update.update_models: a batch's backward pass and optimiser steps, by the rules the
training loop and the harness's ``train`` share (a gradient scaler, a loss without gradient
beside one that has one)."""

from __future__ import annotations

import pytest
import torch
from loguru import logger

from kdcore import Component
from kdcore.testing import TinyNet, harness
from kdcore.update import update_models

X = torch.arange(24.0).reshape(6, 4) / 10
Y = torch.tensor([0, 1, 2, 1, 0, 2])


class _Both(Component):
    """CE for the student; for the peer, CE or (``detach``) a loss without gradient."""

    description = "two models"

    def transfer(self, ctx, batch):
        out = {}
        for role in ("student", "peer"):
            logits = batch.out(role).logits
            out[role] = torch.nn.functional.cross_entropy(
                logits.detach() if role == "peer" and ctx.recipe.run.name == "detach" else logits,
                batch.noisy_label, reduction="none")
        return out


class _Scaler:
    """A gradient scaler's three calls, noted: the loss scaled by 4, the step, the update."""

    def __init__(self):
        self.calls: list[str] = []

    def scale(self, loss):
        self.calls.append("scale")
        return 4 * loss

    def step(self, optimizer):
        self.calls.append("step")
        optimizer.step()

    def update(self):
        self.calls.append("update")


def _two(name="run"):
    import attrs

    torch.manual_seed(0)
    models = {"student": TinyNet(4, 3), "peer": TinyNet(4, 3)}
    h = harness(_Both, x=X, noisy_label=Y, models=models, train=("student", "peer"),
                serves=("student", "peer"), optimizer={"lr": 0.5, "momentum": 0,
                                                       "weight_decay": 0})
    h.run.recipe = attrs.evolve(h.run.recipe, run=attrs.evolve(h.run.recipe.run, name=name))
    return h.setup()


def test_a_scaler_scales_the_summed_loss_steps_each_optimiser_and_updates_once():
    h = _two()
    start = {r: [p.detach().clone() for p in m.parameters()] for r, m in h.run.models.items()}
    batch = h.batch([0, 2, 5])
    result = h.step(batch)
    scaler = _Scaler()
    both = ["student", "peer"]
    update_models(h.run, result, batch, trained=both, train=both, takers=[],
                  context=lambda _: h.ctx, scaler=scaler, warned=set())
    assert scaler.calls == ["scale", "step", "step", "update"]
    for role, model in h.run.models.items():
        ref = TinyNet(4, 3)
        with torch.no_grad():
            for q, p0 in zip(ref.parameters(), start[role], strict=True):
                q.copy_(p0)
        torch.nn.functional.cross_entropy(ref(X[[0, 2, 5]])[0], Y[[0, 2, 5]]).backward()
        for p, p0, q in zip(model.parameters(), start[role], ref.parameters(), strict=True):
            # the scaled gradient (4x), stepped at the rate: no unscaling in this stand-in
            torch.testing.assert_close(p, p0 - 0.5 * 4 * q.grad, rtol=1e-6, atol=1e-7)
        assert h.ctx.model_version(role) == 1
    assert not h.run.stepped


def test_a_model_without_gradient_beside_one_with_is_said_once_and_not_moved():
    h = _two("detach")
    peer = [p.detach().clone() for p in h.run.models["peer"].parameters()]
    said: list[str] = []
    sink = logger.add(lambda m: said.append(m.record["message"]), level="WARNING")
    try:
        for rows in ([0, 1], [2, 3], [4, 5]):
            h.train(h.batch(rows))
    finally:
        logger.remove(sink)
    assert said == ["model 'peer' got a loss without gradient (its terms: _both; each was "
                    "computed from detached tensors): it learns nothing from such a batch "
                    "(said once)"]
    for p, p0 in zip(h.run.models["peer"].parameters(), peer, strict=True):
        assert torch.equal(p, p0)  # stepped (counted) without a gradient: unchanged
    assert h.ctx.model_version("peer") == 3


@pytest.mark.parametrize("warned", [set(), {"peer"}])
def test_the_warned_set_is_the_callers(warned):
    h = _two("detach")
    batch = h.batch([0, 1])
    both = ["student", "peer"]
    update_models(h.run, h.step(batch), batch, trained=both, train=both, takers=[],
                  context=lambda _: h.ctx, scaler=None, warned=warned)
    assert warned == {"peer"}
