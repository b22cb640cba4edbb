"""AML-KD's loss components against plain NumPy transcriptions: the survivors of
``benchmarks/mutants.py kdcore-amlkd``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcore.testing import TinyNet as Net
from kdcore.testing import harness
from kdcore_amlkd.losses import (
    MIXUP,
    MixupCE,
    MixupKD,
    MixupParams,
    RelationalKD,
    RelationalParams,
    gram_mse,
    mixup_batch,
)


def _harness(cls, params=None, name=None, seed=0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, generator=g)
    y = torch.randint(0, 4, (32,), generator=g)
    torch.manual_seed(0)
    return harness(cls, params, x=x, noisy_label=y, num_classes=4, seed=seed,
                   models={"student": Net(), "teacher": Net()}, name=name)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _forward_np(net: Net, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.maximum(x @ _np(net.trunk[0].weight).T + _np(net.trunk[0].bias), 0)
    return f @ _np(net.classifier.weight).T + _np(net.classifier.bias), f


def test_documented_defaults():
    p = MixupParams()
    assert (p.beta, p.temperature, p.teacher) == (4.0, 4.0, "teacher")
    r = RelationalParams()
    assert (r.teacher, r.detach_student) == ("teacher", False)
    assert MIXUP == "kdcore_amlkd.mixup"


@pytest.mark.parametrize("beta", [0.5, 4.0])
def test_mix_draws_lam_from_beta_and_perm_from_the_component_generator(beta):
    h = _harness(MixupCE, {"beta": beta}, name="mixup_ce", seed=7)
    batch = h.batch(torch.arange(16))
    torch.manual_seed(11)
    mix = mixup_batch(h.ctx, batch, beta)
    torch.manual_seed(11)
    lam = float(torch.distributions.Beta(beta, beta).sample())
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(7))
    assert mix.lam == lam
    assert mix.perm.tolist() == perm.tolist()
    x = _np(batch.x)
    np.testing.assert_allclose(_np(mix.x), lam * x + (1 - lam) * x[perm.numpy()],
                               rtol=1e-6, atol=1e-6)
    assert batch.store.get(MIXUP, "mix") is mix


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_mixup_ce_is_lam_weighted_ce_of_tempered_mixed_logits(temperature):
    h = _harness(MixupCE, {"temperature": temperature, "beta": 0.7}, name="mixup_ce")
    batch = h.batch(torch.arange(12))
    loss = h.component.transfer(h.ctx, batch)["student"]
    mix = batch.store.require(MIXUP, "mix")
    z, _ = _forward_np(h.run.models["student"], _np(mix.x))
    logp = _log_softmax(z / temperature)
    y = np.eye(4)[h.run.ledger["noisy_label"][:12].numpy()]
    perm = mix.perm.numpy()
    expected = -(mix.lam * (y * logp).sum(1) + (1 - mix.lam) * (y[perm] * logp).sum(1))
    assert loss.shape == (12,) and loss.requires_grad
    np.testing.assert_allclose(_np(loss), expected, rtol=1e-5, atol=1e-6)
    assert batch.store.get(MIXUP, "out/student") is not None


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_mixup_kd_is_t2_kl_of_teacher_to_student_on_the_mix(temperature):
    h = _harness(MixupKD, {"temperature": temperature}, name="mixup_kd")
    batch = h.batch(torch.arange(10))
    loss = h.component.transfer(h.ctx, batch)["student"]
    mix = batch.store.require(MIXUP, "mix")
    zs, _ = _forward_np(h.run.models["student"], _np(mix.x))
    zt, _ = _forward_np(h.run.models["teacher"], _np(mix.x))
    ls, lt = _log_softmax(zs / temperature), _log_softmax(zt / temperature)
    expected = temperature ** 2 * (np.exp(lt) * (lt - ls)).sum(1)
    np.testing.assert_allclose(_np(loss), expected, rtol=1e-5, atol=1e-6)
    assert batch.store.get(MIXUP, "out/teacher") is not None
    # the teacher is frozen: the gradient reaches only the student
    loss.sum().backward()
    assert all(p.grad is None for p in h.run.models["teacher"].parameters())
    assert all(p.grad is not None for p in h.run.models["student"].parameters())


def _gram_np(f: np.ndarray) -> np.ndarray:
    n = f / np.linalg.norm(f, axis=1, keepdims=True)
    return n @ n.T


def test_gram_mse_is_the_mean_squared_gram_difference():
    g = torch.Generator().manual_seed(4)
    fs = torch.randn(5, 3, generator=g, dtype=torch.float64) * 3
    ft = torch.randn(5, 7, generator=g, dtype=torch.float64)
    expected = ((_gram_np(fs.numpy()) - _gram_np(ft.numpy())) ** 2).mean()
    assert gram_mse(fs, ft).item() == pytest.approx(expected, rel=1e-12)


def test_relational_kd_trains_the_student_by_default():
    h = _harness(RelationalKD, name="relational_kd")
    batch = h.batch(torch.arange(8))
    out = h.component.transfer(h.ctx, batch)["student"]
    _, fs = _forward_np(h.run.models["student"], _np(batch.x))
    _, ft = _forward_np(h.run.models["teacher"], _np(batch.x))
    expected = ((_gram_np(fs) - _gram_np(ft)) ** 2).mean()
    assert out.item() == pytest.approx(expected, rel=1e-5)
    assert out.requires_grad
    out.backward()
    assert all(p.grad is None for p in h.run.models["teacher"].parameters())
