"""kdcore.metrics and the ledger metrics of every epoch, against independent transcriptions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdcore.evaluation import ledger_metrics
from kdcore.ledger import Ledger
from kdcore.metrics import balanced_accuracy, roc_auc, selection_quality


def pairwise_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Every (positive, negative) pair: 1 when the positive scores higher, 1/2 on a tie."""
    pos, neg = scores[positive], scores[~positive]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_matches_the_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    # few distinct values on some seeds, so that ties occur
    scores = rng.integers(0, 4, n).astype(float) if seed % 2 else rng.random(n)
    positive = rng.random(n) < 0.4
    positive[0], positive[1] = True, False
    got = roc_auc(torch.tensor(scores, dtype=torch.float32), torch.tensor(positive))
    assert got == pytest.approx(pairwise_auc(scores.astype(np.float32), positive), abs=1e-12)


def test_roc_auc_agrees_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    scores = rng.normal(size=500).round(1)
    positive = rng.random(500) < scores.clip(-2, 2) / 4 + 0.5
    got = roc_auc(torch.tensor(scores), torch.tensor(positive))
    assert got == pytest.approx(metrics.roc_auc_score(positive, scores), abs=1e-12)


def test_roc_auc_edges():
    assert roc_auc(torch.tensor([0.9, 0.1]), torch.tensor([True, False])) == 1.0
    assert roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([True, False])) == 0.0
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([True, False])) == 0.5
    assert math.isnan(roc_auc(torch.tensor([0.5, 0.2]), torch.tensor([True, True])))
    # non-finite weights are left out, not ranked
    got = roc_auc(torch.tensor([0.9, float("nan"), 0.1, float("inf")]),
                  torch.tensor([True, False, False, False]))
    assert got == 1.0


def test_selection_quality_and_balanced_accuracy():
    sel = torch.tensor([True, True, False, False, True])
    clean = torch.tensor([True, False, True, False, True])
    q = selection_quality(sel, clean)
    assert q == {"fraction": 3 / 5, "precision": 2 / 3, "recall": 2 / 3}
    pred, labels = torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 0, 1, 2, 2, 1])
    # class 0: 1/2, class 1: 1/2, class 2: 2/2
    assert balanced_accuracy(pred, labels, 4) == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_ledger_metrics_report_each_weightings_auc():
    n = 8
    clean_label = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    noisy = torch.tensor([0, 1, 0, 0, 2, 2, 1, 1])
    ledger = Ledger(n)
    ledger.add("clean_label", clean_label, producer="data", kind="label")
    ledger.add("clean_mask", noisy == clean_label, producer="data", kind="mask")
    refined = noisy.clone()
    refined[2] = 2  # one label fixed by refinement
    ledger.add("target", torch.nn.functional.one_hot(refined, 3).float(), producer="lp",
               kind="target")
    weights = torch.tensor([0.9, 0.8, 0.3, 0.7, 0.2, 0.6, 0.1, 0.5])
    ledger.add("weight/awe", weights, producer="awe", kind="weight")
    ledger.add("select/sl", weights > 0.4, producer="sl", kind="mask")
    out = ledger_metrics(ledger)
    right = (refined == clean_label).numpy()
    assert out["label/acc"] == right.mean()
    assert out["weight/awe/auc"] == pytest.approx(pairwise_auc(weights.numpy(), right))
    assert out["select/sl/precision"] == pytest.approx(
        (noisy == clean_label)[weights > 0.4].double().mean().item())
    assert "select/sl/auc" not in out and not any(k.startswith("target/") for k in out)


def test_a_target_row_whose_largest_value_is_not_alone_names_no_label():
    """argmax named the first of the tied classes: label smoothing with epsilon 1 (a uniform
    row) scored the share of class 0 as label/acc, and a weighting's AUC counted those
    samples' training labels right. Neither is right now, nor is a tie that holds the true
    class; the stored rows read the same (kdcore.history_values.target_labels)."""
    from kdcore.history_values import NO_LABEL, target_labels

    clean_label = torch.tensor([0, 0, 1, 0, 1, 2])
    target = torch.tensor([[1.0, 0.0, 0.0],  # right
                           [1 / 3, 1 / 3, 1 / 3],  # uniform: no label (argmax: 0, the truth)
                           [0.0, 0.5, 0.5],  # the true class 1 tied with 2: no label
                           [0.2, 0.7, 0.1],  # wrong
                           [0.1, 0.8, 0.1],  # right
                           [0.5, 0.25, 0.25]])  # wrong
    ledger = Ledger(6)
    ledger.add("clean_label", clean_label, producer="data", kind="label")
    ledger.add("clean_mask", torch.ones(6, dtype=torch.bool), producer="data", kind="mask")
    ledger.add("target", target, producer="lp", kind="target")
    weights = torch.tensor([0.9, 0.95, 0.85, 0.2, 0.8, 0.1])
    ledger.add("weight/w", weights, producer="w", kind="weight")
    out = ledger_metrics(ledger)
    right = np.array([True, False, False, False, True, False])
    assert out["label/acc"] == right.mean()
    assert out["weight/w/auc"] == pytest.approx(pairwise_auc(weights.numpy(), right))
    labels = target_labels(target.numpy().astype(np.float16))
    assert labels.tolist() == [0, NO_LABEL, NO_LABEL, 1, 1, 0]
    assert target_labels(target.numpy()[None]).tolist() == [labels.tolist()]  # any leading axes
