"""SMKD and DML as pure functions: certainty, schedules, per-sample losses.

Every loss returns one value per sample ``(B,)``; the engine reduces. The reading of the
specification (``methods/smkd.md`` §2.3, a reconstruction) is described in the plugin README;
in short, for a model with logits ``z`` (``p = softmax(z)``), current label targets ``q`` and
detached peers ``j`` with logits ``z_j`` (``p_j = softmax(z_j)``):

* certainty ``c_j = 1 - H(p_j)/log C`` (``entropy``) or ``max_c p_j`` (``max_prob``), in [0, 1];
* peer ``j``'s knowledge is selected where ``m_j = [c_j >= eta]``;
* ``eps_j`` is a constant or ``g(t) * c_j`` (ProSelfLC's trust, ``adaptive``);
* per peer, ``l_j = (1 - eps_j) CE(q, p) + eps_j D_j`` with ``D_j = T^2 D(p_j^T, p^T)`` where
  selected and, where not, ``D(u, p)`` (``fallback = "uniform"``, label smoothing) or no
  knowledge at all (``fallback = "none"``: ``eps_j = 0``, plain CE); ``D`` is the cross-entropy
  (``form = "target"``: at ``T = 1`` exactly ``CE((1 - eps) q + eps k_j, p)``) or the KL
  divergence (``form = "kl"``: the DML form);
* the loss is the mean of ``l_j`` over the peers (for two models, just ``l_j``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from kdcore.losses import kd_kl, normalized_entropy, soft_cross_entropy

Certainty = Literal["entropy", "max_prob"]
Fallback = Literal["uniform", "none"]
Form = Literal["target", "kl"]
EpsilonMode = Literal["constant", "adaptive"]
SelfCorrection = Literal["none", "proselflc"]


def certainty(probs: torch.Tensor, measure: Certainty = "entropy") -> torch.Tensor:
    """How certain each row of ``probs`` is, in [0, 1].

    ``entropy``: ``1 - H(p)/log C`` (ProSelfLC's example trust; 1 for a one-hot row, 0 for the
    uniform one). ``max_prob``: the largest probability (in ``[1/C, 1]``). Clamped to [0, 1], so
    that a threshold ``<= 0`` selects every sample and one ``> 1`` none, whatever the round-off.
    """
    if measure == "entropy":
        c = 1.0 - normalized_entropy(probs)
    elif measure == "max_prob":
        c = probs.max(dim=1).values
    else:
        raise ValueError(f"unknown certainty measure {measure!r}")
    return c.clamp(0.0, 1.0)


def global_trust(t: float, total: float, exp_base: float, transit: float) -> float:
    """ProSelfLC's global trust ``g(t) = 1 / (1 + exp(-B (t/Gamma - rho)))``.

    Args:
        t: the time (optimiser step or epoch) within the stage, from 0.
        total: ``Gamma``, the stage's total steps (or epochs); at least 1 is used.
        exp_base: ``B``.
        transit: ``rho``, the transit time ratio (where ``g = 1/2``).
    """
    x = exp_base * (t / max(total, 1) - transit)
    if x >= 0:  # a sigmoid that neither overflows nor loses precision
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def threshold_at(
    t: float,
    total: float,
    *,
    schedule: Literal["static", "progressive"],
    threshold: float,
    direction: Literal["relax", "tighten"] = "relax",
    exp_base: float = 10.0,
    transit: float = 0.5,
) -> float:
    """The certainty threshold ``eta(t)``.

    ``static``: ``eta = threshold``. ``progressive``: ``eta = 1 - g(t)`` (``relax``: strict
    early, every knowledge flows late) or ``eta = g(t)`` (``tighten``), with ``g`` from
    :func:`global_trust`.
    """
    if schedule == "static":
        return float(threshold)
    g = global_trust(t, total, exp_base, transit)
    return 1.0 - g if direction == "relax" else g


def selection_mask(peer_logits: torch.Tensor, threshold: float,
                   measure: Certainty = "entropy") -> torch.Tensor:
    """``[c(softmax(z_j)) >= eta]`` per sample: where a peer's knowledge is selected."""
    with torch.no_grad():
        return certainty(F.softmax(peer_logits.detach(), dim=1), measure) >= threshold


def smkd_loss(
    logits: torch.Tensor,
    peer_logits: Sequence[torch.Tensor],
    targets: torch.Tensor,
    *,
    threshold: float,
    epsilon: float = 0.5,
    epsilon_mode: EpsilonMode = "constant",
    trust: float = 1.0,
    fallback: Fallback = "uniform",
    form: Form = "target",
    temperature: float = 1.0,
    certainty_measure: Certainty = "entropy",
    self_correction: SelfCorrection = "none",
) -> torch.Tensor:
    """Selective mutual KD: the per-sample loss of one model given its (detached) peers.

    Args:
        logits: ``(B, C)`` of the model being trained (with its graph).
        peer_logits: one ``(B, C)`` per peer; detached here (a peer is a constant target).
        targets: ``(B, C)`` label targets ``q`` (one-hot noisy labels, or refined ones).
        threshold: ``eta`` on certainty; ``> 1`` selects nothing, ``<= 0`` everything.
        epsilon: the constant mixing weight (``epsilon_mode = "constant"``).
        epsilon_mode: ``constant`` or ``adaptive`` (``eps_j = trust * c_j``, ProSelfLC).
        trust: ``g(t)``, used by the adaptive epsilon and by the self-correction.
        fallback: the knowledge of unselected samples: ``uniform`` or ``none``.
        form: ``target`` (cross-entropy to the mixed target) or ``kl`` (DML's KL form); they
            differ by ``eps_j * T^2 * H(k_j)``, a constant of the trained model.
        temperature: ``T`` on the peer knowledge (selected samples), with the ``T^2`` factor;
            the uniform fallback and the label term stay at ``T = 1``.
        certainty_measure: ``entropy`` or ``max_prob`` (see :func:`certainty`).
        self_correction: ``proselflc`` replaces ``q`` by ProSelfLC's
            ``(1 - g c_self) q + g c_self p`` (``p`` not detached, as the reference loss).
    """
    if not peer_logits:
        raise ValueError("smkd_loss needs at least one peer")
    num_classes = logits.shape[1]
    log_p = F.log_softmax(logits, dim=1)
    q = targets.detach()
    if self_correction == "proselflc":
        p = log_p.exp()
        eps_self = trust * certainty(p.detach(), certainty_measure)
        q = (1.0 - eps_self)[:, None] * q + eps_self[:, None] * p
    label_term = soft_cross_entropy(logits, q)
    uniform_term = -log_p.mean(dim=1)  # CE(u, p)
    if form == "kl":
        uniform_term = uniform_term - math.log(num_classes)  # KL(u || p)
    t = float(temperature)
    total = torch.zeros_like(label_term)
    for z_j in peer_logits:
        z_j = z_j.detach()
        p_j = F.softmax(z_j, dim=1)
        c_j = certainty(p_j, certainty_measure)
        selected = c_j >= threshold
        if form == "kl":
            peer_term = kd_kl(logits, z_j, t)
        else:
            peer_term = (t * t) * soft_cross_entropy(logits / t, F.softmax(z_j / t, dim=1))
        eps = torch.full_like(c_j, epsilon) if epsilon_mode == "constant" else trust * c_j
        if fallback == "uniform":
            knowledge = torch.where(selected, peer_term, uniform_term)
        else:
            knowledge = torch.where(selected, peer_term, torch.zeros_like(peer_term))
            eps = torch.where(selected, eps, torch.zeros_like(eps))
        total = total + (1.0 - eps) * label_term + eps * knowledge
    return total / len(peer_logits)


def dml_loss(
    logits: torch.Tensor,
    peer_logits: Sequence[torch.Tensor],
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    peer_reduction: Literal["sum", "mean"] = "sum",
) -> torch.Tensor:
    """Deep mutual learning: ``CE(q, p) + R_j T^2 KL(p_j^T || p^T)`` per sample.

    ``R`` is the sum over peers (the official code) or their mean (the paper's Eq. 9,
    ``1/(K-1)``); the two agree for two models. Peers are detached.
    """
    if not peer_logits:
        raise ValueError("dml_loss needs at least one peer")
    kl = sum(kd_kl(logits, z_j.detach(), temperature) for z_j in peer_logits)
    if peer_reduction == "mean":
        kl = kl / len(peer_logits)
    return soft_cross_entropy(logits, targets.detach()) + kl


__all__ = [
    "certainty",
    "dml_loss",
    "global_trust",
    "selection_mask",
    "smkd_loss",
    "threshold_at",
]
