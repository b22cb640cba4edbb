"""Label propagation: class-balanced seeds spread over a feature graph, read out per sample."""

from __future__ import annotations

import attrs
import torch

from kdcore_lp.graph import Backend, feature_graph
from kdcore_lp.solve import conjugate_gradient


@attrs.frozen
class Propagated:
    """The result of one propagation.

    Attributes:
        labels: ``argmax`` of the read-out ``(N,)``.
        confidence: ``max`` of the row softmax of the scores ``(N,)``; only its ranking means
            something (the raw scores are tiny, so the softmax is nearly uniform).
        scores: the propagated scores ``Z`` ``(N, C)`` (after the optional clamp).
    """

    labels: torch.Tensor
    confidence: torch.Tensor
    scores: torch.Tensor


def class_balanced_seeds(seed_labels: torch.Tensor, num_classes: int,
                         weights: torch.Tensor | None = None) -> torch.Tensor:
    """``Y_ic = w_i [seed_i = c]``, each column normalised to sum 1 (an empty class stays 0).

    Only the relative weights within a class matter: a global rescaling of ``weights`` leaves the
    seeds unchanged.
    """
    n = seed_labels.shape[0]
    y = torch.zeros(n, num_classes, dtype=torch.float64, device=seed_labels.device)
    w = torch.ones(n, dtype=torch.float64, device=seed_labels.device) if weights is None \
        else weights.to(device=seed_labels.device, dtype=torch.float64)
    y[torch.arange(n, device=seed_labels.device), seed_labels.long()] = w
    total = y.sum(0)
    return y / torch.where(total > 0, total, torch.ones_like(total))


def propagate(
    w: torch.Tensor,
    seed_labels: torch.Tensor,
    num_classes: int,
    weights: torch.Tensor | None = None,
    *,
    alpha: float = 0.99,
    clamp: bool = True,
    tol: float = 1e-6,
    maxiter: int = 20,
) -> Propagated:
    """Propagate seeds over the normalised affinity ``w`` and read out labels.

    Solves ``(I - alpha W) Z = Y`` per class by conjugate gradients (approximating
    ``(I - alpha W)^-1 Y``), clamps negatives if asked, and reads ``argmax`` and
    ``max softmax`` per row.
    """
    y = class_balanced_seeds(seed_labels, num_classes, weights)
    z = conjugate_gradient(w, y, alpha=alpha, tol=tol, maxiter=maxiter)
    if clamp:
        z = z.clamp_min(0.0)
    prob = torch.softmax(z, dim=1)
    conf, labels = prob.max(dim=1)
    return Propagated(labels=labels, confidence=conf.float(), scores=z.float())


def propagate_features(
    features: torch.Tensor,
    seed_labels: torch.Tensor,
    num_classes: int,
    weights: torch.Tensor | None = None,
    *,
    k: int = 20,
    gamma: float = 3.0,
    normalize: bool = True,
    alpha: float = 0.99,
    clamp: bool = True,
    tol: float = 1e-6,
    maxiter: int = 20,
    chunk: int = 0,
    backend: Backend = "exact",
    nprobe: int = 16,
) -> Propagated:
    """Build the kNN graph of ``features`` and :func:`propagate` over it."""
    w = feature_graph(features, k=k, gamma=gamma, normalize=normalize, chunk=chunk,
                      backend=backend, nprobe=nprobe)
    return propagate(w, seed_labels, num_classes, weights, alpha=alpha, clamp=clamp, tol=tol,
                     maxiter=maxiter)
