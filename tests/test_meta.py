"""kdcore.meta, the look-ahead of the meta-learning plugins: the virtual SGD step equals the
step ``torch.optim.SGD`` takes with the same gradients, in every setting of the optimiser, and a
NumPy transcription of the update rule; the result carries the gradients' graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kdcore.meta import functional_forward, named_trainable, virtual_sgd_step
from kdcore.testing import TinyNet

SETTINGS = [
    {"momentum": 0.0, "weight_decay": 0.0},
    {"momentum": 0.0, "weight_decay": 5e-3},
    {"momentum": 0.9, "weight_decay": 0.0},
    {"momentum": 0.9, "weight_decay": 5e-3, "dampening": 0.3},
    {"momentum": 0.5, "weight_decay": 1e-2, "nesterov": True},
]


def _model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(6, 3, 5).double()


def _grads(model: nn.Module, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in model.parameters()]


@pytest.mark.parametrize("warm", [0, 2])
@pytest.mark.parametrize("settings", SETTINGS)
def test_the_virtual_step_is_the_real_one(settings, warm):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, **settings)
    for k in range(warm):  # momentum buffers from earlier real steps (none when warm is 0)
        for p, g in zip(model.parameters(), _grads(model, k)):
            p.grad = g
        opt.step()
    grads = _grads(model, 99)
    virtual = virtual_sgd_step(named_trainable(model), grads, opt)
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    opt.step()
    real = dict(model.named_parameters())
    assert list(virtual) == list(real)
    for name, value in virtual.items():
        torch.testing.assert_close(value, real[name].detach(), rtol=1e-12, atol=1e-12)


def test_against_a_numpy_transcription_with_a_learning_rate_override():
    lr, mu, wd, damp = 0.05, 0.8, 1e-2, 0.25
    model = _model(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=mu, weight_decay=wd,
                          dampening=damp)
    for p, g in zip(model.parameters(), _grads(model, 0)):
        p.grad = g
    opt.step()  # one real step: the buffers hold wd-adjusted first gradients
    params = named_trainable(model)
    grads = _grads(model, 7)
    virtual = virtual_sgd_step(params, grads, opt, lr=lr)
    for (name, p), g in zip(params.items(), grads):
        w = p.detach().numpy()
        buf = opt.state[p]["momentum_buffer"].numpy()
        d = g.numpy() + wd * w
        expected = w - lr * (mu * buf + (1 - damp) * d)
        np.testing.assert_allclose(virtual[name].numpy(), expected, rtol=1e-12, atol=1e-14)
    # the model itself is untouched
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name])


def test_each_parameter_takes_its_own_groups_settings():
    model = _model(2)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.SGD([{"params": weights, "lr": 0.1, "weight_decay": 0.1},
                           {"params": biases, "lr": 0.7, "momentum": 0.5}], lr=0.2)
    grads = _grads(model, 3)
    virtual = virtual_sgd_step(named_trainable(model), grads, opt)
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    opt.step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(virtual[name], p.detach(), rtol=1e-12, atol=1e-12)


def test_frozen_parameters_are_left_out():
    model = _model()
    first = next(model.parameters())
    first.requires_grad_(False)
    names = [n for n, p in model.named_parameters()]
    assert list(named_trainable(model)) == names[1:]


def test_the_step_carries_the_gradients_graph_and_the_forward_uses_it():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    params = named_trainable(model)
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    grads = [scale * torch.ones_like(p) for p in params.values()]
    virtual = virtual_sgd_step(params, grads, opt)
    x = torch.randn(4, 6, dtype=torch.float64)
    logits, _ = functional_forward(model, virtual, x)
    # the same forward with the virtual weights loaded into a copy of the model
    copy = _model()
    with torch.no_grad():
        for name, p in copy.named_parameters():
            p.copy_(virtual[name])
    torch.testing.assert_close(logits, copy(x)[0])
    (d_scale,) = torch.autograd.grad(logits.sum(), scale)
    # d/d scale of sum(logits(w - 0.5 * scale * 1)): finite differences agree
    eps = 1e-6

    def total(s: float) -> float:
        moved = {n: p.detach() - 0.5 * s * torch.ones_like(p) for n, p in params.items()}
        return float(functional_forward(model, moved, x)[0].sum())

    numeric = (total(2.0 + eps) - total(2.0 - eps)) / (2 * eps)
    assert float(d_scale) == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_only_sgd_is_mirrored_and_gradients_must_match_the_parameters():
    model = _model()
    params = named_trainable(model)
    with pytest.raises(TypeError) as err:
        virtual_sgd_step(params, _grads(model, 0), torch.optim.Adam(model.parameters()))
    assert str(err.value) == "virtual_sgd_step mirrors torch.optim.SGD only"
    with pytest.raises(ValueError):
        virtual_sgd_step(params, _grads(model, 0)[:-1],
                         torch.optim.SGD(model.parameters(), lr=0.1))


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return scale * self.linear(x)


def test_the_functional_forward_passes_keyword_arguments_on():
    model = _Scaled()
    params = {n: torch.zeros_like(p) + 0.5 for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.ones(1, 3)
    out = functional_forward(model, params, x, scale=3.0)
    torch.testing.assert_close(out, torch.full((1, 2), 3.0 * (3 * 0.5 + 0.5)))
    for name, p in model.named_parameters():  # the model keeps its own weights
        assert torch.equal(p, before[name])
