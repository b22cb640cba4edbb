"""Regenerate fixtures/golden.json from an independent NumPy implementation of the formulas.

Run by hand only when a loss is meant to change: ``python make_golden.py``. The tests compare
both the plugin's torch code and this NumPy code against the stored values.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LOGITS_S = [[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 4.0, 1.0], [0.0, 0.0, 5.0]]
CORRECTED = [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.0, 0.0, 1.0], [0.25, 0.25, 0.5]]
CLEAN_LOGITS = [[1.5, 0.5, -0.5], [-1.0, 2.0, 0.0]]
CLEAN_LABELS = [0, 2]
TEACHER = [[1.0, 0.0, -1.0], [3.0, -2.0, 0.0], [0.0, 2.5, 2.0], [-1.0, 0.5, 1.5]]
RAW = [[1.0, 2.0, 0.0, -1.0], [0.5, -0.5, 1.5, 2.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, -2.0, -3.0]]
NOISY = [1, 2, 0, 0]
TINY = 1e-12


def log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def softmax(z):
    return np.exp(log_softmax(z))


def sce(z, q):
    return -(np.asarray(q, dtype=np.float64) * log_softmax(z)).sum(axis=1)


def mlc_training_loss(z, y, zc=None, yc=None):
    loss = sce(z, y).mean()
    if zc is None:
        return float(loss)
    ce = float(-log_softmax(zc)[np.arange(len(yc)), yc].mean())
    n_s, n_c = len(z), len(yc)
    return float((n_s * loss + n_c * ce) / (n_s + n_c))


def kd(zs, zt, t):
    p_t = softmax(np.asarray(zt) / t)
    return t * t * (p_t * (np.log(p_t) - log_softmax(np.asarray(zs) / t))).sum(axis=1)


def kdmlc(zs, y, zt, beta, t):
    teacher = np.log(np.maximum(np.asarray(y, dtype=np.float64), TINY)) if zt is None else zt
    return (1 - beta) * sce(zs, y) + beta * kd(zs, teacher, t)


def corrected_label(raw, noisy, c, skip):
    raw = np.asarray(raw, dtype=np.float64)
    if not skip:
        return softmax(raw[:, :c])
    a = 1 / (1 + np.exp(-raw[:, c:c + 1]))
    onehot = np.eye(c)[noisy]
    return (1 - a) * softmax(raw[:, :c]) + a * onehot


def compute() -> dict[str, list[float] | float]:
    return {
        "mlc_training_loss_mix": mlc_training_loss(LOGITS_S, CORRECTED, CLEAN_LOGITS,
                                                   CLEAN_LABELS),
        "mlc_training_loss_plain": mlc_training_loss(LOGITS_S, CORRECTED),
        "kdmlc_teacher_beta0.5_T4": kdmlc(LOGITS_S, CORRECTED, TEACHER, 0.5, 4.0).tolist(),
        "kdmlc_lcn_beta0.3_T2": kdmlc(LOGITS_S, CORRECTED, None, 0.3, 2.0).tolist(),
        "kdmlc_beta0": kdmlc(LOGITS_S, CORRECTED, TEACHER, 0.0, 4.0).tolist(),
        "corrected_skip": corrected_label(RAW, NOISY, 3, True).flatten().tolist(),
        "corrected_plain": corrected_label([r[:3] for r in RAW], NOISY, 3, False)
        .flatten().tolist(),
    }


INPUTS = {"logits_s": LOGITS_S, "corrected": CORRECTED, "clean_logits": CLEAN_LOGITS,
          "clean_labels": CLEAN_LABELS, "teacher": TEACHER, "raw": RAW, "noisy": NOISY}

if __name__ == "__main__":
    path = Path(__file__).parent / "fixtures" / "golden.json"
    path.write_text(json.dumps({"inputs": INPUTS, "values": compute()}, indent=1) + "\n")
