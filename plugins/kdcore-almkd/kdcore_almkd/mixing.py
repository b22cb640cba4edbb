"""The mathematics of ALM-KD / AMAL, as plain tensor functions (no run, no ledger).

Notation (``docs``: the plugin's README and ``methods/almkd.md`` section 4): a chunk of ``n``
training samples with eval-mode student logits ``z`` ``(n, C)`` and penultimate features ``h``
``(n, d)``; ``K = M + 1`` loss terms per sample, term 0 the label cross-entropy and term ``m``
the KD term of teacher ``m``; a per-sample weight table ``w`` ``(n, K)``.

The last-layer gradient of term ``k`` of sample ``i`` is ``g_ik = [delta_ik; vec(delta_ik h_i^T)]``
with ``delta_ik`` the gradient of the (batch-mean reduced) term with respect to the logits. It is
never materialised: every inner product with a last-layer direction ``U = (U_b, U_W)`` is computed
as ``<g_ik, U> = delta_ik . (U_b + U_W h_i)``, so memory stays ``O(n K C)``, not ``O(n K C d)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import attrs
import torch

from kdcore.batching import epoch_batches
from kdcore.losses import kd_kl, soft_cross_entropy

Mixing = Literal["free", "convex"]


# -- the weight table ----------------------------------------------------------------------------


def num_parameters(mixing: Mixing, num_teachers: int) -> int:
    """Free parameters per sample: ``M + 1`` (AMAL) or 1 (ALM-KD's convex lambda)."""
    return num_teachers + 1 if mixing == "free" else 1


def effective_weights(lam: torch.Tensor, mixing: Mixing, num_teachers: int) -> torch.Tensor:
    """The per-term weights ``(n, M + 1)`` that multiply ``[CE, KD_1, ..., KD_M]``.

    ``free`` (AMAL): the table itself. ``convex`` (ALM-KD): ``lam`` is ``(n, 1)`` and the weights
    are ``[1 - lam, lam / M, ..., lam / M]`` (for one teacher ``(1 - lam) CE + lam KD``).
    """
    if mixing == "free":
        return lam
    kd = (lam / num_teachers).expand(-1, num_teachers)
    return torch.cat([1.0 - lam, kd], dim=1)


def chain_to_parameters(dw: torch.Tensor, mixing: Mixing) -> torch.Tensor:
    """Map a derivative with respect to the weights ``(n, K)`` to one w.r.t. the parameters."""
    if mixing == "free":
        return dw
    num_teachers = dw.shape[1] - 1
    return (dw[:, 1:].sum(dim=1, keepdim=True) / num_teachers) - dw[:, :1]


# -- losses and their logit gradients ------------------------------------------------------------


def term_losses(logits: torch.Tensor, targets: torch.Tensor,
                teacher_logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """Per-sample losses ``(B, M + 1)``: soft CE on ``targets``, then ``T^2 KL`` per teacher."""
    terms = [soft_cross_entropy(logits, targets)]
    terms += [kd_kl(logits, t, temperature) for t in teacher_logits]
    return torch.stack(terms, dim=1)


def mixed_loss(logits: torch.Tensor, targets: torch.Tensor, teacher_logits: Sequence[torch.Tensor],
               weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """The student's per-sample loss ``sum_k w_ik l_ik`` ``(B,)`` (spec 4.2, before the mean)."""
    return (weights * term_losses(logits, targets, teacher_logits, temperature)).sum(dim=1)


def logit_gradients(logits: torch.Tensor, targets: torch.Tensor,
                    teacher_logits: Sequence[torch.Tensor], temperature: float,
                    scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """``delta_ik = d l_ik / d z_i`` ``(n, M + 1, C)``, times ``scale`` (``1/|B|`` per sample).

    CE: ``softmax(z) * sum(q) - q`` (``softmax(z) - q`` for a distribution ``q``); KD of teacher
    ``m``: ``T (softmax(z / T) - softmax(t_m / T))``, the gradient of ``T^2 KL``.
    """
    p = torch.softmax(logits, dim=1)
    grads = [p * targets.sum(dim=1, keepdim=True) - targets]
    if teacher_logits:
        t = temperature
        p_t = torch.softmax(logits / t, dim=1)
        grads += [t * (p_t - torch.softmax(tl / t, dim=1)) for tl in teacher_logits]
    delta = torch.stack(grads, dim=1)
    if isinstance(scale, torch.Tensor):
        scale = scale.reshape(-1, 1, 1)
    return delta * scale


def last_layer_inner(delta: torch.Tensor, features: torch.Tensor, u_b: torch.Tensor,
                     u_w: torch.Tensor) -> torch.Tensor:
    """``<g_ik, U>`` ``(n, K)``, ``g_ik = [delta_ik; vec(delta_ik h_i^T)]``, ``U = (u_b, u_w)``.

    Closed form ``delta_ik . (u_b + u_w h_i)``; ``u_w`` is ``(C, d)`` like ``classifier.weight``.
    """
    a = u_b + features @ u_w.T  # (n, C)
    return (delta * a.unsqueeze(1)).sum(dim=-1)


# -- the look-ahead -----------------------------------------------------------------------------


def _mean_ce_and_grad(logits: torch.Tensor, targets: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch-mean soft CE and its gradient with respect to the logits (one softmax)."""
    log_p = torch.log_softmax(logits, dim=1)
    n = logits.shape[0]
    loss = -(targets * log_p).sum() / n
    grad = (log_p.exp() * targets.sum(dim=1, keepdim=True) - targets) / n
    return loss, grad


def lookahead_gradient(
    weights: torch.Tensor,
    delta: torch.Tensor,
    features: torch.Tensor,
    val_logits: torch.Tensor,
    val_features: torch.Tensor,
    val_targets: torch.Tensor,
    lr: float,
    *,
    val_weight: float = 1.0,
    chunk_logits: torch.Tensor | None = None,
    chunk_targets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``dJ/dw`` ``(n, K)`` and ``J`` for one chunk, in closed form.

    The virtual last-layer step is ``(b, W) -> (b, W) - lr * Delta`` with
    ``Delta = sum_i sum_k w_ik g_ik`` (a sum over the chunk; each ``g`` carries its batch's
    ``1/|B|``), so look-ahead logits are ``z' = z - lr (Delta_b + h Delta_W^T)``.
    ``J = a * meanCE(z'_val, y_val) + (1 - a) * meanCE(z'_chunk, q_chunk)`` with
    ``a = val_weight`` (AMAL: ``a = 1``; ALM-KD: 0.75). With ``U`` the gradient of ``J`` with
    respect to the virtual ``(b, W)``, ``dJ/dw_ik = -lr <g_ik, U>``.

    Args:
        weights: the chunk's per-term weights ``(n, K)``.
        delta: their logit gradients ``(n, K, C)`` (see :func:`logit_gradients`).
        features: the chunk's features ``(n, d)``.
        val_logits, val_features: the validation batch at the current student ``(v, C)``,
            ``(v, d)``.
        val_targets: its (clean) labels as distributions ``(v, C)``.
        lr: the student's learning rate ``eta``.
        val_weight: ``a`` above.
        chunk_logits, chunk_targets: the chunk's logits ``(n, C)`` and training targets,
            needed when ``val_weight < 1``.
    """
    d_mix = (weights.unsqueeze(-1) * delta).sum(dim=1)  # (n, C): sum_k w_ik delta_ik
    delta_b = d_mix.sum(dim=0)                         # (C,)
    delta_w = d_mix.T @ features                       # (C, d)

    def ahead(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return z - lr * (delta_b + h @ delta_w.T)

    loss_val, g_val = _mean_ce_and_grad(ahead(val_logits, val_features), val_targets)
    u_b = val_weight * g_val.sum(dim=0)
    u_w = val_weight * (g_val.T @ val_features)
    objective = val_weight * loss_val
    if val_weight < 1.0:
        if chunk_logits is None or chunk_targets is None:
            raise ValueError("val_weight < 1 needs the chunk's logits and targets")
        loss_chunk, g_chunk = _mean_ce_and_grad(ahead(chunk_logits, features), chunk_targets)
        rest = 1.0 - val_weight
        u_b = u_b + rest * g_chunk.sum(dim=0)
        u_w = u_w + rest * (g_chunk.T @ features)
        objective = objective + rest * loss_chunk
    return -lr * last_layer_inner(delta, features, u_b, u_w), objective


# -- one update pass over the training set ------------------------------------------------------


REFERENCE_BATCH_SIZE = 128  # the released code's training batch, to which its step sizes belong


def effective_step(step: float, batch_size: int,
                   reference_batch_size: int = REFERENCE_BATCH_SIZE) -> float:
    """The step of an update pass at ``batch_size``: ``step * batch_size / reference_batch_size``.

    Each ``g_ik`` carries its batch's ``1/|B|``, so ``dJ/dlambda_ik`` scales as ``1/|B|`` while
    ``Delta`` (a sum of ``grad_fit`` batch means) does not. The preset steps (1500, 2000) were
    tuned at ``|B| = 128``; scaling the step with ``|B|`` keeps each sample's lambda change what
    it is there (exactly so when a larger batch repeats a smaller one's samples).
    """
    if batch_size <= 0 or reference_batch_size <= 0:
        raise ValueError(f"batch sizes must be positive, got {batch_size!r} and "
                         f"{reference_batch_size!r}")
    return step * batch_size / reference_batch_size


@attrs.frozen
class UpdateConfig:
    """The knobs of one lambda-update pass (resolved from a preset and overrides).

    Attributes:
        mixing: ``free`` (AMAL, ``M + 1`` weights) or ``convex`` (ALM-KD, one lambda).
        temperature: T of the KD terms.
        lr: the student's learning rate ``eta`` for the virtual step.
        step: the multiplier of ``dJ/dlambda`` in the update ``lambda - step * dJ/dlambda``,
            used as given (the component passes :func:`effective_step` of its preset's step).
        repetitions: update steps per chunk, each at the current lambdas.
        bounds: the clip interval ``(low, high)``.
        val_weight: weight of the validation loss in the meta objective (rest: chunk loss).
        batch_size: the training batch size ``|B|`` of the ``1/|B|`` per-sample factor.
        grad_fit: batches per chunk.
    """

    mixing: Mixing
    temperature: float
    lr: float
    step: float
    repetitions: int
    bounds: tuple[float, float]
    val_weight: float
    batch_size: int
    grad_fit: int


@attrs.define
class UpdateStats:
    """What an update pass measured: the meta objective before and after, averaged over chunks."""

    chunks: int = 0
    objective_first: float = 0.0
    objective_last: float = 0.0


def chunks_of(order: torch.Tensor, batch_size: int, grad_fit: int
              ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split a visiting order into chunks of ``grad_fit`` batches.

    The batches are cut as the engine cuts an epoch (:func:`kdcore.batching.epoch_batches`), so
    each sample's ``1/|B|`` is the one its training batch gives it: the last batch holds the
    rest, and a rest of one sample joins the batch before it.

    Returns:
        ``(rows, scale)`` per chunk: the sample indices and each one's ``1/|B|``.
    """
    batches = epoch_batches(order, batch_size)
    out = []
    for start in range(0, len(batches), grad_fit):
        group = batches[start:start + grad_fit]
        rows = torch.cat(group)
        scale = torch.cat([torch.full((len(b),), 1.0 / len(b), dtype=torch.float64)
                           for b in group])
        out.append((rows, scale))
    return out


def update_lambdas(
    lam: torch.Tensor,
    cfg: UpdateConfig,
    *,
    logits: torch.Tensor,
    features: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: Sequence[torch.Tensor],
    val_logits: torch.Tensor,
    val_features: torch.Tensor,
    val_targets: torch.Tensor,
    order: torch.Tensor,
    val_batches: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, UpdateStats]:
    """One pass of the chunked, clipped lambda update (spec 4.3) over the samples in ``order``.

    Args:
        lam: the parameter table ``(N, P)``; a new tensor is returned.
        cfg: the pass's settings.
        logits, features, targets: the whole training set, rows = sample index.
        teacher_logits: one ``(N, C)`` tensor per teacher.
        val_logits, val_features, val_targets: the whole meta (validation) split.
        order: the visiting order (a permutation of the rows to update).
        val_batches: index batches into the meta split; chunk ``c`` uses
            ``val_batches[c % len(val_batches)]`` (one batch holding every row: the whole set).
    """
    lam = lam.clone()
    low, high = cfg.bounds
    num_teachers = len(teacher_logits)
    stats = UpdateStats()
    for c, (rows, scale) in enumerate(chunks_of(order, cfg.batch_size, cfg.grad_fit)):
        rows = rows.to(lam.device)
        z, h, q = logits[rows], features[rows], targets[rows]
        delta = logit_gradients(z, q, [t[rows] for t in teacher_logits], cfg.temperature,
                                scale.to(device=z.device, dtype=z.dtype))
        vb = val_batches[c % len(val_batches)].to(val_logits.device)
        zv, hv, qv = val_logits[vb], val_features[vb], val_targets[vb]
        for r in range(cfg.repetitions):
            w = effective_weights(lam[rows], cfg.mixing, num_teachers)
            dw, objective = lookahead_gradient(
                w, delta, h, zv, hv, qv, cfg.lr, val_weight=cfg.val_weight,
                chunk_logits=z, chunk_targets=q)
            dlam = chain_to_parameters(dw, cfg.mixing)
            lam[rows] = (lam[rows] - cfg.step * dlam).clamp(low, high)
            if r == 0:
                stats.objective_first += float(objective)
            if r == cfg.repetitions - 1:
                stats.objective_last += float(objective)
        stats.chunks += 1
    if stats.chunks:
        stats.objective_first /= stats.chunks
        stats.objective_last /= stats.chunks
    return lam, stats


__all__ = [
    "REFERENCE_BATCH_SIZE",
    "UpdateConfig",
    "UpdateStats",
    "chain_to_parameters",
    "chunks_of",
    "effective_step",
    "effective_weights",
    "last_layer_inner",
    "logit_gradients",
    "lookahead_gradient",
    "mixed_loss",
    "num_parameters",
    "term_losses",
    "update_lambdas",
]
