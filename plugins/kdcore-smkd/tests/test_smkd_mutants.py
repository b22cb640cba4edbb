"""Tests that kill the surviving mutants of ``benchmarks/mutants.py kdcore-smkd``: the formulas
against an independent NumPy transcription, the components' wiring of every parameter, the
stage clock, the in-turn bookkeeping and the better-peer choice."""

from __future__ import annotations

import math
from types import SimpleNamespace

import attrs
import numpy as np
import pytest
import torch

from kdcore.data.base import ArrayDataset
from kdcore.testing import harness
from kdcore_smkd import DML, SMKD
from kdcore_smkd.losses import global_trust, selection_mask, smkd_loss, threshold_at
from kdcore_smkd.mutual import MutualComponent

PEERS = ("peer_a", "peer_b")


def _softmax(z, t=1.0):
    e = np.exp(z / t - (z / t).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _certainty(p, measure):
    if measure == "max_prob":
        return p.max(axis=1)
    h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
    return np.clip(1.0 - h / math.log(p.shape[1]), 0.0, 1.0)


def _ce(target, p):
    return -(target * np.log(p)).sum(axis=1)


def np_smkd(z, peers, q, *, threshold, epsilon=0.5, epsilon_mode="constant", trust=1.0,
            fallback="uniform", form="target", temperature=1.0, certainty_measure="entropy",
            self_correction="none"):
    """The SMKD per-sample loss (losses.py docstring), in NumPy."""
    p = _softmax(z)
    n = z.shape[1]
    if self_correction == "proselflc":
        e_s = trust * _certainty(p, certainty_measure)
        q = (1 - e_s)[:, None] * q + e_s[:, None] * p
    t = temperature
    total = np.zeros(len(z))
    for zj in peers:
        pj = _softmax(zj)
        c = _certainty(pj, certainty_measure)
        eps = np.full(len(z), epsilon) if epsilon_mode == "constant" else trust * c
        pj_t, p_t = _softmax(zj, t), _softmax(z, t)
        d_sel = t * t * _ce(pj_t, p_t) - (t * t * _ce(pj_t, pj_t) if form == "kl" else 0.0)
        d_uni = _ce(np.full_like(p, 1 / n), p) - (math.log(n) if form == "kl" else 0.0)
        sel = c >= threshold
        if fallback == "uniform":
            d = np.where(sel, d_sel, d_uni)
        else:
            d = np.where(sel, d_sel, 0.0)
            eps = np.where(sel, eps, 0.0)
        total += (1 - eps) * _ce(q, p) + eps * d
    return total / len(peers)


def np_dml(z, peers, q, *, temperature=1.0, peer_reduction="sum"):
    t = temperature
    p_t = _softmax(z, t)
    kl = sum(t * t * (_ce(_softmax(zj, t), p_t) - _ce(_softmax(zj, t), _softmax(zj, t)))
             for zj in peers)
    if peer_reduction == "mean":
        kl = kl / len(peers)
    return _ce(q, _softmax(z)) + kl


def np_sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


class Linear(torch.nn.Module):
    def __init__(self, d, c, bn=False):
        super().__init__()
        self.fc = torch.nn.Linear(d, c)
        self.bn = torch.nn.BatchNorm1d(c) if bn else None

    def forward(self, x):
        z = self.fc(x)
        return (self.bn(z) if self.bn is not None else z), x


def _harness(cls, params, roles=PEERS, bn=False, train=None):
    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.randint(0, 4, (40,))
    models = {r: Linear(6, 4, bn) for r in roles}
    train = tuple(roles) if train is None else train
    return harness(cls, params, x=x, noisy_label=y, models=models, train=train, serves=roles,
                   name="m")


def _np(t):
    return t.detach().double().numpy()


# -- losses.py ---------------------------------------------------------------------------------


def test_global_trust_with_a_one_step_stage_and_threshold_defaults():
    # Gamma = 1 is used as it is (at least 1): t = 1 is the end of the stage
    assert global_trust(1, 1, 10.0, 0.5) == pytest.approx(np_sigmoid(10.0 * 0.5))
    assert global_trust(1, 0, 10.0, 0.5) == pytest.approx(np_sigmoid(10.0 * 0.5))
    # the documented defaults B = 10, rho = 0.5
    for t in (0, 20, 90):
        got = threshold_at(t, 100, schedule="progressive", threshold=0.3)
        assert got == pytest.approx(1.0 - np_sigmoid(10.0 * (t / 100 - 0.5)), rel=1e-12)


def test_selection_at_an_exact_tie_is_selected():
    """Certainty equal to the threshold selects (``>=``): two-class peers with equal logits
    have max_prob exactly 0.5."""
    zp = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert selection_mask(zp, 0.5, "max_prob").tolist() == [True, True, True]
    z = torch.tensor([[0.3, -0.2], [1.0, 0.5], [-1.0, 0.4]], dtype=torch.float64)
    q = torch.eye(2, dtype=torch.float64)[[0, 1, 1]]
    for fallback in ("uniform", "none"):
        got = smkd_loss(z, [zp], q, threshold=0.5, certainty_measure="max_prob",
                        fallback=fallback, epsilon=0.4)
        ref = np_smkd(_np(z), [_np(zp)], _np(q), threshold=0.5, certainty_measure="max_prob",
                      fallback=fallback, epsilon=0.4)
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10)


def test_adaptive_epsilon_default_trust_and_self_correction_measure():
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(16, 5, generator=gen, dtype=torch.float64) * 2
    zp = torch.randn(16, 5, generator=gen, dtype=torch.float64) * 2
    q = torch.eye(5, dtype=torch.float64)[torch.randint(0, 5, (16,), generator=gen)]
    got = smkd_loss(z, [zp], q, threshold=0.0, epsilon_mode="adaptive")  # trust 1
    ref = np_smkd(_np(z), [_np(zp)], _np(q), threshold=0.0, epsilon_mode="adaptive", trust=1.0)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10)
    kw = {"threshold": 0.3, "trust": 0.7, "self_correction": "proselflc",
          "certainty_measure": "max_prob"}
    got = smkd_loss(z, [zp], q, **kw)
    np.testing.assert_allclose(got.detach().numpy(), np_smkd(_np(z), [_np(zp)], _np(q), **kw),
                               rtol=1e-10)


# -- the components' parameters reach the loss -------------------------------------------------


@pytest.mark.parametrize("time_unit", ["step", "epoch"])
def test_smkd_passes_every_parameter_to_its_loss(time_unit):
    params = {"schedule": "progressive", "direction": "tighten", "exp_base": 6.0,
              "transit": 0.3, "time_unit": time_unit, "certainty": "max_prob",
              "epsilon_mode": "adaptive", "fallback": "none", "form": "kl",
              "temperature": 3.0, "self_correction": "proselflc", "epsilon": 0.2}
    h = _harness(SMKD, params).setup()
    h.run.stage = attrs.evolve(h.run.stage, epochs=4)
    h.run.epoch, h.run.stage_step, h.run.steps_per_epoch = 2, 5, 3
    t, total = (5, 12) if time_unit == "step" else (2, 4)
    g = np_sigmoid(6.0 * (t / total - 0.3))
    batch = h.batch([1, 4, 9, 16, 25, 36])
    losses = h.component.transfer(h.ctx, batch)
    z = {r: _np(batch.out(r).logits) for r in PEERS}
    q = _np(batch.targets)
    for role, other in (PEERS, PEERS[::-1]):
        ref = np_smkd(z[role], [z[other]], q, threshold=g, epsilon=0.2, epsilon_mode="adaptive",
                      trust=g, fallback="none", form="kl", temperature=3.0,
                      certainty_measure="max_prob", self_correction="proselflc")
        np.testing.assert_allclose(_np(losses[role]), ref, rtol=1e-5)
    assert h.metrics["select/m/threshold"] == pytest.approx(g)
    assert h.metrics["select/m/trust"] == pytest.approx(g)


def test_dml_passes_temperature_and_peer_reduction():
    roles = ("peer_a", "peer_b", "peer_c")
    h = _harness(DML, {"temperature": 2.5, "peer_reduction": "mean"}, roles=roles).setup()
    batch = h.batch([0, 3, 5, 7])
    losses = h.component.transfer(h.ctx, batch)
    z = {r: _np(batch.out(r).logits) for r in roles}
    for role in roles:
        ref = np_dml(z[role], [z[r] for r in roles if r != role], _np(batch.targets),
                     temperature=2.5, peer_reduction="mean")
        np.testing.assert_allclose(_np(losses[role]), ref, rtol=1e-5)
    assert h.component.selected(batch.out("peer_a").logits, None).dtype == torch.bool


def test_duplicate_peers_are_refused_by_the_component():
    with pytest.raises(ValueError, match="two or more distinct peer models"):
        _harness(DML, {}, roles=("peer_a", "peer_a", "peer_b"))


# -- the stage clock -------------------------------------------------------------------------


def test_stage_time():
    stage = SimpleNamespace(epochs=4)
    ctx = SimpleNamespace(stage=stage, epoch=2, stage_step=7, steps_per_epoch=1)
    assert MutualComponent.stage_time(ctx) == (7, 4)  # Gamma = 4 x 1
    assert MutualComponent.stage_time(ctx, "epoch") == (2, 4)
    ctx.steps_per_epoch = 0  # at least one step per epoch
    assert MutualComponent.stage_time(ctx, "step") == (7, 4)
    none = SimpleNamespace(stage=None, epoch=0, stage_step=3, steps_per_epoch=5)
    assert MutualComponent.stage_time(none) == (3, 5)  # one epoch without a stage
    assert MutualComponent.stage_time(none, "epoch") == (0, 1)


# -- in-turn bookkeeping ----------------------------------------------------------------------


def test_in_turn_values_steps_and_buffers():
    roles = ("peer_a", "peer_b", "peer_c")
    # mean over the peers: a peer list that wrongly held the model itself would change it
    h = _harness(DML, {"order": "in_turn", "peer_reduction": "mean"}, roles=roles,
                 bn=True).setup()
    h2 = _harness(DML, {"peer_reduction": "mean"}, roles=roles, bn=True).setup()
    for r in roles:
        h.run.optimizers[r] = torch.optim.SGD(h.run.models[r].parameters(), lr=0.1)
    batch, batch2 = h.batch([0, 2, 4, 6, 8]), h2.batch([0, 2, 4, 6, 8])
    losses = h.component.transfer(h.ctx, batch)
    simultaneous = h2.component.transfer(h2.ctx, batch2)
    for r in roles:  # the reported value: before any peer stepped
        torch.testing.assert_close(losses[r], simultaneous[r])
    stats = {r: [b.clone() for b in h.run.models[r].buffers()] for r in roles}
    for r in roles:
        assert h.component.backward(h.ctx, batch, r, losses[r].mean())
    turn = batch.store.require("m", "in_turn")
    assert turn.finished and turn.stepped == ["peer_a", "peer_b"]
    assert h.run.stepped == {"peer_a", "peer_b"}
    for r in roles:  # the recomputation leaves BN statistics as the batch's forward set them
        for b, saved in zip(h.run.models[r].buffers(), stats[r]):
            assert torch.equal(b, saved)
    assert h.run.models["peer_c"].fc.weight.grad is not None  # the engine steps the last


# -- the better peer --------------------------------------------------------------------------


def test_better_peer_is_the_first_of_the_best_with_both_accuracies():
    roles = ("peer_a", "peer_b", "peer_c")
    comp = _harness(DML, {}, roles=roles).setup().component
    h = _harness(DML, {}, roles=roles)
    metrics = {"val/peer_a/acc": 0.8, "test/peer_a/acc": 0.1, "val/peer_b/acc": 0.8,
               "test/peer_b/acc": 0.2, "val/peer_c/acc": 0.9}  # peer_c: no test accuracy
    comp.on_epoch_end(h.ctx, metrics)
    assert metrics["better/m/test_acc"] == 0.1 and metrics["better/m/peer"] == 0.0
    metrics = {"val/peer_a/acc": 0.5, "test/peer_a/acc": 0.1, "val/peer_b/acc": 0.8,
               "test/peer_b/acc": 0.2, "test/peer_c/acc": 0.9}  # peer_c: no val accuracy
    comp.on_epoch_end(h.ctx, metrics)
    assert metrics["better/m/test_acc"] == 0.2 and metrics["better/m/peer"] == 1.0


@pytest.mark.parametrize("with_val", [True, False])
def test_ensemble_accuracy_of_the_peers(with_val):
    h = _harness(DML, {}).setup()
    gen = torch.Generator().manual_seed(5)
    xv = torch.randn(30 if with_val else 0, 6, generator=gen)
    xt = torch.randn(25, 6, generator=gen)
    yv = torch.randint(0, 4, (len(xv),), generator=gen)
    yt = torch.randint(0, 4, (25,), generator=gen)
    h.run.data = attrs.evolve(h.run.data, val=ArrayDataset(xv, yv, 4), val_noisy=yv,
                              test=ArrayDataset(xt, yt, 4))
    metrics: dict[str, float] = {}
    h.component.on_epoch_end(h.ctx, metrics)
    for split, x, y in (("val", xv, yv), ("test", xt, yt)):
        if not len(y):
            assert f"ensemble/m/{split}_acc" not in metrics
            continue
        with torch.no_grad():
            probs = sum(_softmax(_np(h.run.models[r].eval()(x)[0])) for r in PEERS)
        expected = float((probs.argmax(axis=1) == y.numpy()).mean())
        assert 0 < expected < 1
        assert metrics[f"ensemble/m/{split}_acc"] == pytest.approx(expected)
