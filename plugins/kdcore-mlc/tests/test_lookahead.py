"""The look-ahead: virtual step = real SGD step; proxy meta-gradient = exact chain rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcore.meta import functional_forward, named_trainable, virtual_sgd_step
from kdcore.testing import TinyNet
from kdcore_mlc.gold import GoldCycler
from kdcore_mlc.lcn import LabelCorrectionNet
from kdcore_mlc.lookahead import MetaAccumulator, clean_gradient, lookahead, step_scales
from kdcore_mlc.losses import mlc_training_loss

C = 3


def Tiny() -> TinyNet:  # noqa: N802 (a model class in all but name)
    """6 inputs -> 5 tanh features -> 3 classes."""
    return TinyNet(6, C, 5, activation="tanh")


def _setup(dtype, *, momentum=0.9, nesterov=False, dampening=0.0, weight_decay=5e-4, warm=2,
           skip=False, seed=0):
    torch.manual_seed(seed)
    model = Tiny().to(dtype)
    lcn = LabelCorrectionNet(5, C, cls_dim=4, hidden=7, skip=skip).to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=momentum, dampening=dampening,
                          nesterov=nesterov, weight_decay=weight_decay)
    for _ in range(warm):  # fill the momentum buffers with something non-trivial
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
    opt.zero_grad(set_to_none=True)
    x_s = torch.randn(8, 6, dtype=dtype)
    noisy = torch.randint(0, C, (8,))
    x_g = torch.randn(5, 6, dtype=dtype)
    y_g = torch.randint(0, C, (5,))
    x_c = torch.randn(4, 6, dtype=dtype)
    y_c = torch.randint(0, C, (4,))
    return model, lcn, opt, (x_s, noisy, x_g, y_g, x_c, y_c)


def _train_loss(model, lcn, x_s, noisy, x_c, y_c, mix):
    logits, features = model(x_s)
    corrected, _ = lcn.correct(features.detach(), noisy)
    clean_logits = model(x_c)[0] if mix else None
    return mlc_training_loss(logits, corrected, clean_logits, y_c if mix else None)


def _exact_meta_gradient(model, lcn, opt, batch, mix):
    """Autograd through the virtual step: d L_G(w'(alpha)) / d alpha, no proxy."""
    x_s, noisy, x_g, y_g, x_c, y_c = batch
    params = named_trainable(model)
    loss = _train_loss(model, lcn, x_s, noisy, x_c, y_c, mix)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    w_prime = virtual_sgd_step(params, grads, opt)  # differentiable in alpha through grads
    meta = F.cross_entropy(functional_forward(model, w_prime, x_g)[0], y_g)
    return torch.autograd.grad(meta, list(lcn.parameters()))


@pytest.mark.parametrize(
    ("momentum", "nesterov", "dampening", "warm"),
    [(0.9, False, 0.0, 2), (0.9, True, 0.0, 2), (0.9, False, 0.0, 0), (0.9, True, 0.0, 0),
     (0.9, False, 0.3, 2), (0.0, False, 0.0, 0)],
)
@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("mix", [True, False])
def test_proxy_meta_gradient_equals_exact_chain_rule(momentum, nesterov, dampening, warm, skip,
                                                     mix):
    model, lcn, opt, batch = _setup(torch.float64, momentum=momentum, nesterov=nesterov,
                                    dampening=dampening, warm=warm, skip=skip)
    x_s, noisy, x_g, y_g, x_c, y_c = batch
    exact = _exact_meta_gradient(model, lcn, opt, batch, mix)
    loss = _train_loss(model, lcn, x_s, noisy, x_c, y_c, mix)
    proxy = lookahead(model, loss, opt, x_g, y_g, list(lcn.parameters())).meta_grads
    assert any(float(e.abs().max()) > 1e-8 for e in exact)  # a real, non-zero test
    for e, p in zip(exact, proxy, strict=True):
        torch.testing.assert_close(p, e, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("warm", [0, 2])
def test_virtual_step_equals_real_sgd_step(nesterov, warm):
    model, lcn, opt, batch = _setup(torch.float32, momentum=0.9, nesterov=nesterov,
                                    weight_decay=5e-4, warm=warm)
    x_s, noisy, x_g, y_g, x_c, y_c = batch
    loss = _train_loss(model, lcn, x_s, noisy, x_c, y_c, True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = lookahead(model, loss, opt, x_g, y_g, list(lcn.parameters()))
    for n, p in model.named_parameters():  # the look-ahead changes nothing
        assert torch.equal(p, before[n])
    grads = dict(zip(step.names, step.grads, strict=True))
    for n, p in model.named_parameters():
        p.grad = grads[n].clone()
    opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), step.virtual[n], rtol=1e-6, atol=1e-7)
        assert not torch.equal(p.detach(), before[n])


def test_step_scales_follow_the_optimiser():
    p = nn.Parameter(torch.zeros(2))
    for kw, fresh, warm in [
        (dict(momentum=0.0), 1.0, 1.0),
        (dict(momentum=0.9), 1.0, 1.0),
        (dict(momentum=0.9, dampening=0.25), 1.0, 0.75),
        (dict(momentum=0.9, nesterov=True), 1.9, 1.9),
    ]:
        opt = torch.optim.SGD([p], lr=0.1, **kw)
        assert step_scales([p], opt) == pytest.approx([0.1 * fresh])
        p.grad = torch.ones(2)
        opt.step()
        assert step_scales([p], opt) == pytest.approx([0.1 * warm])


def test_discount_is_mlc_gamma():
    """gamma = <(1 - eta s) g', g0> / |g0|^2, i.e. (1 - eta) <g', g0> / |g0|^2 here."""
    model, lcn, opt, batch = _setup(torch.float64, momentum=0.9, warm=2)
    x_s, noisy, x_g, y_g, x_c, y_c = batch
    g0 = clean_gradient(model, x_g, y_g)
    loss = _train_loss(model, lcn, x_s, noisy, x_c, y_c, True)
    step = lookahead(model, loss, opt, x_g, y_g, list(lcn.parameters()), g0=g0)
    # g' recomputed independently at w'
    leaves = {n: w.clone().requires_grad_(True) for n, w in step.virtual.items()}
    meta = F.cross_entropy(functional_forward(model, leaves, x_g)[0], y_g)
    g_prime = torch.autograd.grad(meta, list(leaves.values()))
    flat_gp = torch.cat([g.flatten() for g in g_prime])
    flat_g0 = torch.cat([g0[n].flatten() for n in step.names])
    eta = opt.param_groups[0]["lr"]
    expected = (1 - eta) * float(flat_gp @ flat_g0) / float(flat_g0 @ flat_g0)
    assert step.gamma == pytest.approx(expected, rel=1e-10)


def test_meta_accumulator_discounts_and_steps_every_k():
    acc = MetaAccumulator(3)
    g = [torch.tensor([1.0]), torch.tensor([2.0])]
    assert not acc.add(g, gamma=0.5)          # A1 = G1
    assert not acc.add(g, gamma=0.5)          # A2 = G2 + 0.5 A1
    assert acc.add(g, gamma=0.5)              # A3 = G3 + 0.5 A2: step
    torch.testing.assert_close(acc.value[0], torch.tensor([1.0 + 0.5 * (1.0 + 0.5)]))
    torch.testing.assert_close(acc.value[1], torch.tensor([2.0 * 1.75]))
    acc.reset()
    assert not acc.add(g, gamma=9.0)          # fresh after the reset: A4 = G4
    torch.testing.assert_close(acc.value[0], torch.tensor([1.0]))
    state = acc.state_dict()
    other = MetaAccumulator(3)
    other.load_state_dict(state, torch.device("cpu"))
    assert other.count == 4 and torch.equal(other.value[0], acc.value[0])
    one = MetaAccumulator(1)
    assert all(one.add(g, gamma=3.0) for _ in range(3))


def test_gold_cycler_uses_every_row_once_per_pass_and_resumes():
    cyc = GoldCycler(10, 4)
    gen = torch.Generator().manual_seed(0)
    drawn = torch.cat([cyc.next(gen) for _ in range(5)])  # 20 rows = two passes
    assert sorted(drawn[:10].tolist()) == list(range(10))
    assert sorted(drawn[10:].tolist()) == list(range(10))
    state, gen_state = cyc.state_dict(), gen.get_state()
    ahead = [cyc.next(gen) for _ in range(3)]
    again = GoldCycler(10, 4)
    again.load_state_dict(state)
    gen.set_state(gen_state)
    for a in ahead:
        assert torch.equal(again.next(gen), a)
