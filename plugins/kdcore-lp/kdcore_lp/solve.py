"""Conjugate gradients for ``(I - alpha W) Z = Y``, all class columns at once.

Each column is an independent CG run (its own step sizes and stopping test), done together as
one sparse-times-dense product per iteration, on whatever device W lives on. Stopping follows
scipy's ``cg``: a column stops once ``||r|| <= tol * ||b||``, and at most ``maxiter`` iterations
run from a zero start.
"""

from __future__ import annotations

import torch


def propagation_operator(w: torch.Tensor, alpha: float):  # noqa: ANN201 - a closure
    """``x -> (I - alpha W) x`` for a sparse ``W``."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        return x - alpha * (w @ x)

    return apply


def conjugate_gradient(w: torch.Tensor, b: torch.Tensor, *, alpha: float, tol: float = 1e-6,
                       maxiter: int = 20) -> torch.Tensor:
    """Solve ``(I - alpha W) X = B`` column by column from ``X = 0``.

    Args:
        w: symmetric normalised affinity ``(N, N)`` (sparse), so the operator is SPD for
            ``0 <= alpha < 1``.
        b: right-hand sides ``(N, C)``.
        alpha: the propagation strength.
        tol: relative residual tolerance per column.
        maxiter: iteration cap (AML-KD and Iscen et al.: 20).
    """
    op = propagation_operator(w, alpha)
    b = b.to(torch.float64)
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(0)
    stop = tol * b.norm(dim=0)
    active = rs.sqrt() > stop
    for _ in range(maxiter):
        if not bool(active.any()):
            break
        ap = op(p)
        step = torch.where(active, rs / (p * ap).sum(0).clamp_min(1e-300),
                           torch.zeros_like(rs))
        x = x + step * p
        r = r - step * ap
        rs_new = (r * r).sum(0)
        beta = torch.where(active, rs_new / rs.clamp_min(1e-300), torch.zeros_like(rs))
        p = r + beta * p
        rs = torch.where(active, rs_new, rs)
        active = active & (rs_new.sqrt() > stop)
    return x
