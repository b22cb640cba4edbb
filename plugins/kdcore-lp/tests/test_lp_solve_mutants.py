"""The checks that the mutation run of docs/mutation.md (target ``kdcore-lp``, solve.py and
propagation.py) found missing: conjugate gradients against a NumPy transcription of scipy's
stopping rule, iterate by iterate; the seeds, the read-out and the forwarding of
``propagate_features`` against NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcore_lp import propagation
from kdcore_lp.graph import feature_graph
from kdcore_lp.propagation import class_balanced_seeds, propagate, propagate_features
from kdcore_lp.solve import conjugate_gradient, propagation_operator


def np_cg(a: np.ndarray, b: np.ndarray, tol: float, maxiter: int) -> np.ndarray:
    """Column-wise CG from 0: a column stops once ||r|| <= tol ||b|| (scipy's test)."""
    out = np.zeros_like(b)
    for c in range(b.shape[1]):
        x = np.zeros(len(b))
        r = b[:, c].copy()
        p = r.copy()
        rs = r @ r
        stop = tol * np.linalg.norm(b[:, c])
        for _ in range(maxiter):
            if np.sqrt(rs) <= stop:
                break
            ap = a @ p
            step = rs / (p @ ap)
            x = x + step * p
            r = r - step * ap
            rs_new = r @ r
            p = r + rs_new / rs * p
            rs = rs_new
        out[:, c] = x
    return out


def _graph(n: int = 60, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, 5, generator=gen)
    w = feature_graph(feats, k=6)
    return feats, w, w.to_dense().double().numpy()


@pytest.mark.parametrize(("tol", "maxiter"), [(1e-6, 3), (1e-6, 20), (1e-3, 50), (0.3, 50)])
def test_cg_iterates_match_numpy(tol, maxiter):
    _, w, dense = _graph()
    b = np.random.default_rng(1).random((60, 3))
    b[:, 2] *= 1e-3  # columns of different scales stop at different iterations
    a = np.eye(60) - 0.99 * dense
    got = conjugate_gradient(w, torch.tensor(b, dtype=torch.float32), alpha=0.99, tol=tol,
                             maxiter=maxiter)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), np_cg(a, b.astype(np.float32).astype(np.float64),
                                                  tol, maxiter), rtol=1e-7, atol=1e-12)


def test_cg_defaults_are_tol_1e_6_and_20_iterations():
    _, w, dense = _graph(120, seed=2)
    b = np.random.default_rng(3).random((120, 2))
    a = np.eye(120) - 0.999 * dense
    got = conjugate_gradient(w, torch.tensor(b), alpha=0.999)
    np.testing.assert_allclose(got.numpy(), np_cg(a, b, 1e-6, 20), rtol=1e-7, atol=1e-12)
    assert not np.allclose(got.numpy(), np_cg(a, b, 1e-6, 21), rtol=1e-9, atol=0)


def test_cg_of_a_zero_column_is_zero_and_tol_1_stops_at_the_start():
    _, w, _ = _graph()
    b = torch.zeros(60, 2, dtype=torch.float64)
    b[:, 1] = 1.0
    got = conjugate_gradient(w, b, alpha=0.5)
    assert not got[:, 0].any() and got[:, 1].abs().sum() > 0
    # ||r|| = ||b|| <= 1 * ||b|| before any iteration: scipy's rule returns the zero start
    assert not conjugate_gradient(w, b, alpha=0.5, tol=1.0).any()


def test_propagation_operator():
    _, w, dense = _graph()
    x = np.random.default_rng(4).random((60, 2))
    np.testing.assert_allclose(propagation_operator(w.double(), 0.7)(torch.tensor(x)).numpy(),
                               x - 0.7 * dense @ x, rtol=1e-12)


def np_seeds(labels, c, weights):
    y = np.zeros((len(labels), c))
    y[np.arange(len(labels)), labels] = weights
    total = y.sum(axis=0)
    return y / np.where(total > 0, total, 1.0)


def test_seeds_against_numpy_with_an_empty_class():
    labels = np.array([0, 2, 2, 0, 0, 2])  # class 1 has no seed, class 3 neither
    weights = np.array([0.5, 1.0, 2.0, 0.25, 0.25, 1.0])
    got = class_balanced_seeds(torch.tensor(labels, dtype=torch.int32), 4,
                               torch.tensor(weights, dtype=torch.float32))
    assert got.dtype == torch.float64 and got.shape == (6, 4)
    np.testing.assert_allclose(got.numpy(), np_seeds(labels, 4, weights), rtol=1e-7)
    plain = class_balanced_seeds(torch.tensor(labels), 4)
    np.testing.assert_allclose(plain.numpy(), np_seeds(labels, 4, np.ones(6)), rtol=1e-12)


def np_readout(z, clamp):
    if clamp:
        z = np.maximum(z, 0.0)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    prob = e / e.sum(axis=1, keepdims=True)
    return prob.argmax(axis=1), prob.max(axis=1), z


def _signed_graph(n: int = 40):
    """A symmetric operator with negative entries and spectral radius 0.9999: negative scores,
    and at alpha 0.99 a system that 20 CG iterations do not solve to 1e-6."""
    rng = np.random.default_rng(5)
    m = rng.normal(size=(n, n))
    m = m + m.T
    dense = 0.9999 * m / np.abs(np.linalg.eigvalsh(m)).max()
    return torch.tensor(dense).to_sparse(), dense


@pytest.mark.parametrize(("tol", "maxiter"), [(1e-2, 30), (1e-12, 5)])
@pytest.mark.parametrize("clamp", [True, False])
def test_propagate_reads_out_the_numpy_solution(clamp, tol, maxiter):
    w, dense = _signed_graph()
    labels = np.arange(40) % 3
    weights = np.linspace(0.5, 1.5, 40)
    y = np_seeds(labels, 3, weights)
    got = propagate(w, torch.tensor(labels), 3, torch.tensor(weights), alpha=0.9, clamp=clamp,
                    tol=tol, maxiter=maxiter)
    z_np = np_cg(np.eye(40) - 0.9 * dense, y, tol, maxiter)
    want_labels, want_conf, want_z = np_readout(z_np, clamp)
    assert got.scores.dtype == torch.float32 and got.confidence.dtype == torch.float32
    np.testing.assert_allclose(got.scores.numpy(), want_z, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(got.confidence.numpy(), want_conf, rtol=1e-6)
    assert got.labels.tolist() == want_labels.tolist()
    assert (z_np < 0).any()  # the clamp has something to do


def test_propagate_defaults_are_alpha_0_99_clamp_tol_1e_6_20_iterations():
    w, dense = _signed_graph()
    labels = np.arange(40) % 3
    y = np_seeds(labels, 3, np.ones(40))
    z = np_cg(np.eye(40) - 0.99 * dense, y, 1e-6, 20)
    assert (z < 0).any()
    assert not np.allclose(z, np_cg(np.eye(40) - 0.99 * dense, y, 1e-6, 21), rtol=1e-5)
    got = propagate(w, torch.tensor(labels), 3)
    np.testing.assert_allclose(got.scores.numpy(), np.maximum(z, 0.0), rtol=1e-5, atol=1e-9)


def test_propagate_features_forwards_every_setting_and_its_defaults(monkeypatch):
    calls = []

    def graph(features, **kwargs):
        calls.append(("graph", kwargs))
        return "W"

    def solve(w, seed_labels, num_classes, weights, **kwargs):
        calls.append(("propagate", (w, seed_labels, num_classes, weights), kwargs))
        return "out"

    monkeypatch.setattr(propagation, "feature_graph", graph)
    monkeypatch.setattr(propagation, "propagate", solve)
    labels, weights = torch.arange(6) % 3, torch.ones(6)
    settings = dict(k=5, gamma=2.0, normalize=False, alpha=0.8, clamp=False, tol=1e-4,
                    maxiter=4, chunk=7, backend="faiss_ivf", nprobe=3)
    assert propagate_features("F", labels, 3, weights, **settings) == "out"
    assert propagate_features("F", labels, 3) == "out"
    assert calls == [
        ("graph", dict(k=5, gamma=2.0, normalize=False, chunk=7, backend="faiss_ivf", nprobe=3)),
        ("propagate", ("W", labels, 3, weights),
         dict(alpha=0.8, clamp=False, tol=1e-4, maxiter=4)),
        ("graph", dict(k=20, gamma=3.0, normalize=True, chunk=0, backend="exact", nprobe=16)),
        ("propagate", ("W", labels, 3, None), dict(alpha=0.99, clamp=True, tol=1e-6, maxiter=20)),
    ]


def test_propagate_features_is_the_graph_then_propagate():
    feats, _, _ = _graph()
    labels = torch.arange(60) % 3
    weights = torch.linspace(0.5, 1.5, 60)
    got = propagate_features(feats, labels, 3, weights, k=5, gamma=2.0, alpha=0.8, maxiter=4)
    want = propagate(feature_graph(feats, k=5, gamma=2.0), labels, 3, weights, alpha=0.8,
                     maxiter=4)
    assert torch.equal(got.scores, want.scores) and torch.equal(got.labels, want.labels)
