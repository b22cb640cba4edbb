"""An independent NumPy reference of ALM-KD / AMAL, written the way the released code is.

It materialises every last-layer gradient ``g = [delta; vec(delta h^T)]`` (``C + C d`` numbers
per sample and term) exactly as durgas16/AMAL does (``repeat_interleave`` of the logit gradient
times the tiled features), and updates the lambdas with the two scripts' literal formulas:

* AMAL (KD/LearnMultiLambdaMeta.py): ``lam_k <- clip(lam_k - 1500 * dL_val/dlam_k)`` with
  ``dL_val/dlam_k = -eta <g_k, u_val>``, all terms from the same look-ahead point;
* ALM-KD (getLambda/LearnLambdaMeta.py): ``lam <- clip(lam + 2000 eta <g_KD - g_CE,
  0.75 u_val + 0.25 u_chunk>)``.

Used by ``make_golden.py`` (the fixture) and by the tests (recomputation); shares no code with
the plugin.
"""

from __future__ import annotations

import numpy as np


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(z))


def mixed_loss(z, q, teachers, w, temperature):
    """Per sample ``w_0 CE(z, q) + sum_m w_m T^2 KL(p_t^T || p_s^T)``."""
    t = temperature
    out = w[:, 0] * -(q * log_softmax(z)).sum(axis=1)
    for m, tl in enumerate(teachers, 1):
        log_pt, log_ps = log_softmax(tl / t), log_softmax(z / t)
        out = out + w[:, m] * t * t * (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1)
    return out


def _vectors(l0: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``[l0; repeat_interleave(l0, d) * tile(h, C)]`` per row: the materialised g."""
    c, d = l0.shape[1], h.shape[1]
    l1 = np.repeat(l0, d, axis=1) * np.tile(h, (1, c))
    return np.concatenate([l0, l1], axis=1)


def sample_grads(z, h, q, teachers, temperature, batch):
    """Materialised g for CE and each teacher's KD, batch-mean reduced (``1/batch``)."""
    t = temperature
    sl = _vectors((softmax(z) - q) / batch, h)
    kd = [_vectors(t * (softmax(z / t) - softmax(tl / t)) / batch, h) for tl in teachers]
    return sl, kd


def up_grads(comb, z, h, y, eta):
    """The gradient of mean CE at the look-ahead logits, as a (C + C d) vector (summed rows)."""
    c = z.shape[1]
    out = z - eta * comb[:c][None, :] - eta * h @ comb[c:].reshape(c, -1).T
    l0 = (softmax(out) - y) / z.shape[0]
    return _vectors(l0, h).sum(axis=0)


def _chunks(order, batch, fit):
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    if len(batches) > 1 and len(batches[-1]) == 1:  # a lone last sample joins the one before
        batches = batches[:-2] + [np.concatenate(batches[-2:])]
    for i in range(0, len(batches), fit):
        yield batches[i:i + fit]


def _stack(group, z, h, q, teachers, temperature):
    parts = [sample_grads(z[b], h[b], q[b], [t[b] for t in teachers], temperature, len(b))
             for b in group]
    sl = np.concatenate([p[0] for p in parts])
    kd = [np.concatenate([p[1][m] for p in parts]) for m in range(len(teachers))]
    return sl, kd


def amal_update(lam, z, h, q, teachers, zv, hv, yv, *, order, batch, fit, val_batches, eta,
                temperature, reps=5, step=1500.0, high=2.0 - 1e-7):
    lam = lam.astype(np.float64).copy()
    for c, group in enumerate(_chunks(order, batch, fit)):
        ind = np.concatenate(group)
        sl, kd = _stack(group, z, h, q, teachers, temperature)
        vb = val_batches[c % len(val_batches)]
        for _ in range(reps):
            comb = lam[ind, 0:1] * sl
            for m in range(len(teachers)):
                comb = comb + lam[ind, m + 1:m + 2] * kd[m]
            u = up_grads(comb.sum(axis=0), zv[vb], hv[vb], yv[vb], eta)
            grads = [-eta * sl @ u] + [-eta * kd[m] @ u for m in range(len(teachers))]
            for k, g in enumerate(grads):
                lam[ind, k] = lam[ind, k] - step * g
            lam = np.clip(lam, 1e-7, high)
    return lam


def almkd_update(lam, z, h, q, teacher, zv, hv, yv, *, order, batch, fit, eta, temperature,
                 reps=10, coef=2000.0):
    lam = lam.astype(np.float64).copy()
    for group in _chunks(order, batch, fit):
        ind = np.concatenate(group)
        sl, (kd,) = _stack(group, z, h, q, [teacher], temperature)
        for _ in range(reps):
            comb = ((1 - lam[ind])[:, None] * sl + lam[ind][:, None] * kd).sum(axis=0)
            u_val = up_grads(comb, zv, hv, yv, eta)
            u_chunk = up_grads(comb, z[ind], h[ind], q[ind], eta)
            alpha = (kd - sl) @ (0.75 * u_val + 0.25 * u_chunk)
            lam[ind] = lam[ind] + coef * eta * alpha
            lam = np.clip(lam, 1e-7, 1 - 1e-7)
    return lam
