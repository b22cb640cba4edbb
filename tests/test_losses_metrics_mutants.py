"""kdcore.losses and kdcore.metrics against NumPy transcriptions and hand-worked cases: the
checks that the mutation run of docs/mutation.md (target ``kdcore``) found missing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdcore.losses import kd_kl, one_hot, soft_cross_entropy
from kdcore.metrics import accuracy, balanced_accuracy, confusion, selection_quality


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_kd_kl(s: np.ndarray, t: np.ndarray, temp: float) -> np.ndarray:
    ls, lt = np_log_softmax(s / temp), np_log_softmax(t / temp)
    return temp**2 * (np.exp(lt) * (lt - ls)).sum(axis=1)


def _logits(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(5, 4)) * 3, rng.normal(size=(5, 4)) * 3


def test_kd_kl_default_temperature_is_4_per_sample():
    s, t = _logits(0)
    got = kd_kl(torch.tensor(s), torch.tensor(t))
    np.testing.assert_allclose(got.numpy(), np_kd_kl(s, t, 4.0), rtol=1e-12)
    got = kd_kl(torch.tensor(s), torch.tensor(t), 2.5)
    np.testing.assert_allclose(got.numpy(), np_kd_kl(s, t, 2.5), rtol=1e-12)


def test_soft_cross_entropy_takes_the_logits_dtype_and_needs_targets_or_labels():
    s, _ = _logits(1)
    q = np.random.default_rng(2).dirichlet(np.ones(4), size=5)
    # float32 targets with float64 logits: cast to the logits' dtype, not an error
    got = soft_cross_entropy(torch.tensor(s), torch.tensor(q, dtype=torch.float32))
    want = -(q.astype(np.float32).astype(np.float64) * np_log_softmax(s)).sum(axis=1)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    # float64 targets with float32 logits: a float32 loss (not promoted to float64)
    got = soft_cross_entropy(torch.tensor(s, dtype=torch.float32), torch.tensor(q))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), -(q * np_log_softmax(s)).sum(axis=1), rtol=1e-5)
    with pytest.raises(ValueError, match=r"^soft_cross_entropy needs targets or labels$"):
        soft_cross_entropy(torch.tensor(s), None)


def test_one_hot_rows_and_dtype():
    labels = torch.tensor([2, 0, 2], dtype=torch.int32)  # class 3 of 4 absent
    want = np.eye(4)[[2, 0, 2]]
    got = one_hot(labels, 4)
    assert got.dtype == torch.float32 and got.shape == (3, 4)
    np.testing.assert_array_equal(got.numpy(), want)
    got = one_hot(labels, 4, torch.float64)
    assert got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), want)


def test_accuracy_by_hand():
    assert accuracy(torch.tensor([1, 2, 3, 0]), torch.tensor([1, 0, 3, 0])) == 0.75
    assert accuracy(torch.tensor([4]), torch.tensor([4])) == 1.0
    assert accuracy(torch.tensor([4]), torch.tensor([3])) == 0.0
    empty = torch.tensor([], dtype=torch.long)
    assert math.isnan(accuracy(empty, empty))


def test_balanced_accuracy_counts_a_class_seen_once_and_is_nan_when_empty():
    # class 0: 1/2, class 1 (once): 1/1, class 2 (once): 1/1, class 3 absent
    labels, pred = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 1])
    assert balanced_accuracy(pred, labels, 4) == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    empty = torch.tensor([], dtype=torch.long)
    assert math.isnan(balanced_accuracy(empty, empty, 3))


def test_selection_quality_of_soft_scores_and_edges():
    """Each sample counts by its score: with "> 0 counts as selected", a soft selector's
    fraction was nearly always 1 and its precision ignored what the scores weighed."""
    scores = np.array([0.75, 0.0, 0.25, 1.0, 0.5])
    clean = np.array([True, True, False, False, True])
    want = {"fraction": scores.mean(), "precision": scores[clean].sum() / scores.sum(),
            "recall": scores[clean].sum() / clean.sum()}  # 0.25, 1.25 / 2.5, 1.25 / 3
    got = selection_quality(torch.tensor(scores, dtype=torch.float32), torch.tensor(clean))
    assert got == pytest.approx(want, rel=1e-12)
    assert selection_quality(torch.tensor([True]), torch.tensor([True])) == {
        "fraction": 1.0, "precision": 1.0, "recall": 1.0}
    none = selection_quality(torch.tensor([False, False]), torch.tensor([True, False]))
    assert none["fraction"] == 0.0 and math.isnan(none["precision"]) and none["recall"] == 0.0
    no_clean = selection_quality(torch.tensor([True, False]), torch.tensor([False, False]))
    assert no_clean["precision"] == 0.0 and math.isnan(no_clean["recall"])


def test_confusion_against_numpy():
    rng = np.random.default_rng(3)
    labels, pred = rng.integers(0, 4, 30), rng.integers(0, 4, 30)
    want = np.zeros((5, 5), dtype=np.int64)  # class 4 never occurs: its row and column are 0
    for y, p in zip(labels, pred):
        want[y, p] += 1
    got = confusion(torch.tensor(pred), torch.tensor(labels), 5)
    assert got.shape == (5, 5)
    np.testing.assert_array_equal(got.numpy(), want)
