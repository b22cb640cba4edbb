"""The teacher-LP component end to end against a NumPy transcription of AML-KD's stage-1 LP:
its default seeds (the noisy label where the selection kept a sample, the student's prediction
elsewhere; never the refined targets of an earlier LP), the seed weights of a ledger column,
and the recipe's ``k`` and ``alpha``, each of which changes the labels and confidences.
(Issue #15's mutants 4-7: ``benchmarks/why_mutants.py``.)"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from kdcore.losses import one_hot
from kdcore.testing import harness
from kdcore_lp import TeacherLP

N, D, C = 60, 5, 3
K, ALPHA = 5, 0.7  # neither the default (20, 0.99)


class Connector(nn.Module):
    """Features = the inputs; logits = a fixed linear map of them."""

    def __init__(self, head: np.ndarray):
        super().__init__()
        self.head = torch.from_numpy(head.astype(np.float32))
        self.feature_dim = head.shape[1]

    def forward(self, x):
        return x @ self.head.T, x


def _data():
    rng = np.random.default_rng(11)
    centres = 2.0 * np.eye(C, D)
    clean = np.repeat(np.arange(C), N // C)
    x = (centres[clean] + 0.8 * rng.standard_normal((N, D))).astype(np.float32)
    noisy = np.where(rng.random(N) < 0.35, rng.integers(0, C, N), clean)
    refined = np.where(rng.random(N) < 0.5, (noisy + 1) % C, noisy)  # an earlier LP's labels
    selected = rng.random(N) < 0.5
    weights = rng.uniform(0.05, 1.0, N)
    student_head = rng.standard_normal((C, D))
    return x, clean, noisy, refined, selected, weights, student_head


def _reference(x, seeds, weights):
    """kNN (cosine, self excluded) of the features, ``A_ij = max(s_ij, 0)^3``,
    ``W = D^-1/2 (A + A^T) D^-1/2``, seeds ``w_i [seed_i = c]`` normalised per class, the
    exact ``(I - alpha W)^-1 Y``, clamped at 0; argmax and max softmax per row."""
    f = x.astype(np.float64)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    s = f @ f.T
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    # no near-tie at the k-th neighbour, so float32 and float64 searches agree
    gap = np.take_along_axis(s, order[:, K - 1:K + 1], 1)
    assert (gap[:, 0] - gap[:, 1] > 1e-5).all()
    a = np.zeros((N, N))
    for i in range(N):
        a[i, order[i, :K]] = np.maximum(s[i, order[i, :K]], 0.0) ** 3.0
    w = a + a.T
    deg = w.sum(1)
    deg[deg == 0] = 1.0
    w = w / np.sqrt(deg)[:, None] / np.sqrt(deg)[None, :]
    y = np.zeros((N, C))
    y[np.arange(N), seeds] = weights
    y = y / y.sum(0)
    z = np.maximum(np.linalg.solve(np.eye(N) - ALPHA * w, y), 0.0)
    top2 = np.sort(z, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0] > 1e-9).all()  # no tie in the read-out
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    return p.argmax(1), p.max(1)


def test_teacher_lp_seeds_weights_k_and_alpha_match_a_numpy_transcription():
    x, clean, noisy, refined, selected, weights, student_head = _data()
    models = {"teacher": Connector(np.eye(C, D)), "student": Connector(student_head)}
    params = {"keep_selected": "select/small_loss", "seed_weights": "awe/seed_weight",
              "k": K, "alpha": ALPHA, "cg_tol": 1e-13, "cg_iters": 300}
    h = harness(TeacherLP, params, x=torch.from_numpy(x), noisy_label=torch.from_numpy(noisy),
                clean_label=torch.from_numpy(clean), num_classes=C, models=models,
                name="teacher_lp")
    led = h.run.ledger
    # an earlier LP refined the targets: they differ from the noisy labels
    led.add("base_target", one_hot(torch.from_numpy(refined), C), producer="initial_lp",
            kind="target", snapshot=False)
    led.add("select/small_loss", torch.from_numpy(selected), producer="small_loss", kind="mask")
    led.add("awe/seed_weight", torch.from_numpy(weights).float(), producer="awe",
            kind="weight")
    h.setup()
    h.epoch_start(0)

    prediction = (x.astype(np.float64) @ student_head.T).argmax(1)
    seeds = np.where(selected, noisy, prediction)
    assert (seeds != np.where(selected, refined, prediction)).sum() > 5
    labels, conf = _reference(x, seeds, weights.astype(np.float32).astype(np.float64))
    assert np.array_equal(led["lp/teacher_lp/label"].numpy(), labels)
    np.testing.assert_allclose(led["lp/teacher_lp/confidence"].double().numpy(), conf,
                               rtol=0, atol=1e-6)
    refined_labels = np.where(selected, noisy, labels)
    assert np.array_equal(led["base_target"].argmax(1).numpy(), refined_labels)
    assert np.array_equal(led["lp/teacher_lp/refined"].numpy(), refined_labels)

