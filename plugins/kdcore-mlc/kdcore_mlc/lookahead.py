"""MLC's one-step look-ahead, its proxy meta-gradient, and the K-step accumulation.

Following microsoft/MLC ``mlc.py`` (``step_hmlc_K``):

1. ``g_tr = d L_tr / d w`` with ``create_graph`` (a function of the LCN parameters alpha);
2. the virtual point ``w' = w - eta * D(g_tr)``, where ``D`` is exactly what the main model's
   ``torch.optim.SGD`` would do with that gradient (momentum buffer, dampening, weight decay,
   Nesterov: :func:`kdcore.meta.virtual_sgd_step`);
3. ``g' = d L_G(w') / d w'`` on the meta (gold) batch, through a functional forward at ``w'``;
4. the proxy ``P(alpha) = - sum_i eta_i s_i <g_tr_i(alpha), stopgrad(g'_i)>``, where
   ``eta_i s_i = -d w'_i / d g_tr_i`` (a scalar per tensor, :func:`step_scales`). Its gradient
   is exactly the one-step chain rule ``d L_G(w'(alpha)) / d alpha`` (tests check this against
   autograd through the virtual step) without a second graph through ``w'``;
5. the discount of the K-step approximation (MLC's "(I - eta H)" with ``H = I``):
   ``gamma = <(1 - eta_i s_i) g'_i, g0_i> / ||g0||^2`` with ``g0 = d L_G(w) / d w``; with plain
   momentum and no dampening ``eta_i s_i = eta`` and this is the specification's
   ``(1 - eta) <g', g0> / ||g0||^2``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from kdcore import distributed
from kdcore.meta import functional_forward, named_trainable, virtual_sgd_step


def step_scales(params: Sequence[torch.Tensor], optimizer: torch.optim.SGD) -> list[float]:
    """``eta * s`` per tensor, where ``w' = w - eta * D(g)`` and ``dD/dg = s * I``.

    The SGD update direction is affine in the gradient: ``s = 1`` without momentum; with
    momentum ``mu`` the new buffer is ``mu * buf + (1 - dampening) * d`` (``s_buf = 1 -
    dampening``) or, on the first step, the gradient itself (``s_buf = 1``, as torch does);
    Nesterov then uses ``d + mu * new_buf`` (``s = 1 + mu * s_buf``), plain momentum the buffer
    (``s = s_buf``). Weight decay adds a constant and does not change ``s``.
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out: list[float] = []
    for p in params:
        group = group_of[id(p)]
        s = 1.0
        mu = float(group["momentum"])
        if mu:
            has_buffer = optimizer.state.get(p, {}).get("momentum_buffer") is not None
            s_buf = 1.0 - float(group["dampening"]) if has_buffer else 1.0
            s = 1.0 + mu * s_buf if group["nesterov"] else s_buf
        out.append(float(group["lr"]) * s)
    return out


MetaLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


@attrs.define(eq=False)
class LookAhead:
    """What one look-ahead produced.

    Attributes:
        names: the trainable parameters that ``loss`` depends on, by name (the others get no
            gradient, so the real SGD step leaves them alone, and so does the virtual one).
        grads: ``g_tr`` per name, detached: the gradient of the real step.
        virtual: ``w'`` per name, detached.
        meta_grads: ``d P / d alpha`` per meta parameter (None where it does not depend).
        meta_loss: ``L_G(w')``.
        gamma: the K-step discount (None when no clean gradient ``g0`` was given).
        scales: ``eta * s`` per name.
    """

    names: list[str]
    grads: list[torch.Tensor]
    virtual: dict[str, torch.Tensor]
    meta_grads: list[torch.Tensor | None]
    meta_loss: float
    gamma: float | None
    scales: list[float]


def clean_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   meta_loss: MetaLoss = _cross_entropy) -> dict[str, torch.Tensor | None]:
    """``g0 = d L_G(w) / d w`` at the current weights (only the K-step discount needs it)."""
    params = named_trainable(model)
    loss = meta_loss(model(x)[0], y)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return dict(zip(params, grads, strict=True))


def lookahead(
    model: nn.Module,
    loss: torch.Tensor,
    optimizer: torch.optim.SGD,
    gold_x: torch.Tensor,
    gold_y: torch.Tensor,
    meta_params: Sequence[torch.Tensor],
    *,
    g0: dict[str, torch.Tensor | None] | None = None,
    meta_loss: MetaLoss = _cross_entropy,
) -> LookAhead:
    """One MLC look-ahead: virtual SGD step, meta loss at ``w'``, proxy meta-gradient.

    Args:
        model: the main model (a :class:`kdcore.KDModel`: ``model(x) -> (logits, features)``).
        loss: the main model's training loss, with its graph to ``model``'s parameters and to
            ``meta_params`` (through the corrected labels).
        optimizer: the main model's real ``torch.optim.SGD`` (its momentum buffers and
            parameter groups are read, never changed).
        gold_x, gold_y: the meta-evaluation batch G.
        meta_params: alpha, the LCN's parameters.
        g0: the clean gradient at ``w`` (:func:`clean_gradient`), for the K-step discount.
        meta_loss: the loss on G (cross-entropy).

    Returns:
        a :class:`LookAhead`; ``model`` and ``optimizer`` are unchanged.
    """
    params = named_trainable(model)
    all_names = list(params)
    grads = torch.autograd.grad(loss, [params[n] for n in all_names], create_graph=True,
                                allow_unused=True)
    names = [n for n, g in zip(all_names, grads, strict=True) if g is not None]
    # in a distributed run each rank holds its rows' share: the mean is the whole gradient
    g_tr = distributed.mean_across_ranks([g for g in grads if g is not None])
    used = {n: params[n] for n in names}
    with torch.no_grad():
        virtual = virtual_sgd_step(used, [g.detach() for g in g_tr], optimizer)
    leaves = {n: w.detach().requires_grad_(True) for n, w in virtual.items()}
    loss_g = meta_loss(functional_forward(model, leaves, gold_x)[0], gold_y)
    g_prime = torch.autograd.grad(loss_g, list(leaves.values()), allow_unused=True)
    g_prime = [torch.zeros_like(w) if g is None else g for w, g in zip(leaves.values(), g_prime,
                                                                          strict=True)]
    scales = step_scales(list(used.values()), optimizer)
    proxy = torch.zeros((), dtype=loss.dtype, device=loss.device)
    for scale, g, gp in zip(scales, g_tr, g_prime, strict=True):
        proxy = proxy - scale * (g * gp).sum()
    meta_params = list(meta_params)
    if proxy.requires_grad:
        meta_grads = list(torch.autograd.grad(proxy, meta_params, allow_unused=True))
    else:  # the loss does not depend on alpha (no corrected label in it)
        meta_grads = [None] * len(meta_params)
    gamma = None
    if g0 is not None:
        num = torch.zeros((), dtype=loss.dtype, device=loss.device)
        den = torch.zeros((), dtype=loss.dtype, device=loss.device)
        for name, scale, gp in zip(names, scales, g_prime, strict=True):
            g0_i = g0.get(name)
            if g0_i is None:
                continue
            num = num + ((1.0 - scale) * gp * g0_i).sum()
            den = den + (g0_i * g0_i).sum()
        gamma = float(num / den) if float(den) > 0 else 0.0
    return LookAhead(
        names=names, grads=[g.detach() for g in g_tr],
        virtual={n: w.detach() for n, w in virtual.items()},
        meta_grads=meta_grads, meta_loss=float(loss_g.detach()), gamma=gamma, scales=scales,
    )


class MetaAccumulator:
    """MLC's K-step accumulation: ``A_t = G_t + gamma_t A_(t-1)``, a meta step every K.

    ``add`` returns True on the iterations ``t`` with ``(t + 1) % K == 0``; the caller then
    steps the meta optimiser with :attr:`value` and calls :meth:`reset` (as the reference
    resets ``dw_prev`` to 0). With K = 1 the previous value is always zero, so gamma is unused.
    """

    def __init__(self, steps: int):
        if steps < 1:
            raise ValueError(f"K must be at least 1, got {steps}")
        self.steps = steps
        self.count = 0
        self.value: list[torch.Tensor | None] | None = None

    def add(self, grads: Sequence[torch.Tensor | None], gamma: float | None) -> bool:
        if self.value is None:
            self.value = [None if g is None else g.detach().clone() for g in grads]
        else:
            factor = 0.0 if gamma is None else gamma
            merged: list[torch.Tensor | None] = []
            for g, prev in zip(grads, self.value, strict=True):
                if g is None:
                    # the reference skips parameters without a gradient: their sum is not touched
                    merged.append(prev)
                elif prev is None:
                    merged.append(g.detach().clone())
                else:
                    merged.append(g.detach() + factor * prev)
            self.value = merged
        self.count += 1
        return self.count % self.steps == 0

    def reset(self) -> None:
        self.value = None

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count,
                "value": None if self.value is None else [
                    None if v is None else v.detach().cpu() for v in self.value]}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.count = int(state["count"])
        value = state["value"]
        self.value = None if value is None else [
            None if v is None else torch.as_tensor(v).to(device) for v in value]
