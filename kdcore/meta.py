"""Look-ahead helpers for meta-learning components (MLC, KDMLC, AMAL and their kin).

A meta-learning component takes over a model's backward pass (``Component.backward``), takes a
*virtual* optimiser step as a differentiable function of its own parameters, measures a loss on
clean data at that virtual point, and sends the gradient into its own parameters before the real
step. These helpers do the virtual step exactly as the real optimiser would, without touching the
model's weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call


def named_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters of ``model`` that require gradients, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def virtual_sgd_step(
    params: Mapping[str, torch.Tensor],
    grads: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    lr: float | None = None,
) -> dict[str, torch.Tensor]:
    """The parameters after one SGD step of ``optimizer`` with ``grads``, as new tensors.

    Mirrors ``torch.optim.SGD`` (momentum, dampening, weight decay, Nesterov) using the
    optimiser's current momentum buffers, so the virtual point equals what ``optimizer.step()``
    would produce with the same gradients. ``grads`` may carry a graph (``create_graph=True``);
    the result is then differentiable with respect to whatever produced them.

    Args:
        params: the model's trainable parameters by name (see :func:`named_trainable`).
        grads: one gradient per parameter, in the same order.
        optimizer: an ``SGD`` optimiser over (a superset of) those parameters.
        lr: override the learning rate (default: the parameter group's).
    """
    if not isinstance(optimizer, torch.optim.SGD):
        raise TypeError("virtual_sgd_step mirrors torch.optim.SGD only")
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out: dict[str, torch.Tensor] = {}
    for (name, p), g in zip(params.items(), grads, strict=True):
        group = group_of[id(p)]
        step_lr = group["lr"] if lr is None else lr
        d = g
        if group["weight_decay"]:
            d = d + group["weight_decay"] * p.detach()
        momentum = group["momentum"]
        if momentum:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is None:
                new_buf = d
            else:
                new_buf = momentum * buf + (1 - group["dampening"]) * d
            d = d + momentum * new_buf if group["nesterov"] else new_buf
        out[name] = p.detach() - step_lr * d
    return out


def functional_forward(model: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                       **kwargs: Any) -> Any:
    """Call ``model(x)`` with ``params`` in place of its parameters (buffers unchanged)."""
    return functional_call(model, dict(params), (x,), kwargs)
