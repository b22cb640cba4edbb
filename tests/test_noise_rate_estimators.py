"""benchmarks/noise_rate_estimators.py: the Confident Learning estimate against cleanlab's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "noise_rate_estimators", ROOT / "benchmarks" / "noise_rate_estimators.py")
estimators = importlib.util.module_from_spec(spec)
spec.loader.exec_module(estimators)


@pytest.mark.parametrize("seed", range(4))
def test_confident_joint_rate_agrees_with_cleanlab(seed):
    count = pytest.importorskip("cleanlab.count")
    rng = np.random.default_rng(seed)
    n, c = 600, 4
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), labels] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ours = estimators.confident_joint_rate(probs, labels)
    theirs = 1.0 - np.trace(count.estimate_joint(labels, probs))
    # cleanlab rounds the calibrated joint to whole counts: one count per class at most
    assert ours == pytest.approx(theirs, abs=c / n)


def test_confident_joint_of_clean_confident_predictions_is_zero():
    labels = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[labels] * 0.9 + 0.1 / 3
    assert estimators.confident_joint_rate(probs, labels) == 0.0
    flipped = labels.copy()
    flipped[0] = 1  # one of six labels wrong, and the model says so
    assert estimators.confident_joint_rate(probs, flipped) == pytest.approx(1 / 6)


def test_temperature_minimises_the_nll():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (400,), generator=g)
    logits = torch.randn(400, 5, generator=g, dtype=torch.float64)
    logits[torch.arange(400), labels] += 1.0
    t = estimators.temperature(logits * 3.0, labels)  # over-confident by 3: t near 3
    nll = [float(torch.nn.functional.cross_entropy(logits * 3.0 / s, labels))
           for s in (t * 0.9, t, t * 1.1)]
    assert nll[1] <= nll[0] and nll[1] <= nll[2] and 1.5 < t < 6
