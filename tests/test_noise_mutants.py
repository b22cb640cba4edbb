"""The noise models' documented algorithms, draw by draw, and their edges (written after a
mutation run, ``benchmarks/mutants.py kdcore-noise``, left these untested).

A fixed seed must give the same noisy labels in every kdcore version, as papers and shared noise
files rely on; each model is therefore compared with an independent transcription of its
docstring: the same generator calls in the same order, the arithmetic in NumPy.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest
import torch

from kdcore.data.base import NoiseContext
from kdcore.data.noise import (
    instance_dependent,
    pair_flip,
    realised_transition,
    symmetric,
    transition_matrix,
)
from kdcore.data.splits import make_splits
from kdcore.errors import KdcoreError


def _ctx(labels, num_classes: int, seed: int = 0, x: torch.Tensor | None = None) -> NoiseContext:
    return NoiseContext(torch.as_tensor(labels), num_classes,
                        torch.Generator().manual_seed(seed), x=x)


LABELS = np.arange(60) % 5


@pytest.mark.parametrize("include_true", [False, True])
def test_symmetric_follows_its_documented_draws(include_true):
    noisy = symmetric(_ctx(LABELS, 5, seed=3), rate=0.4, include_true=include_true).numpy()
    gen = torch.Generator().manual_seed(3)
    chosen = torch.randperm(60, generator=gen)[:24].numpy()
    want = LABELS.copy()
    if include_true:
        want[chosen] = torch.randint(0, 5, (24,), generator=gen).numpy()
    else:  # an offset in 1..C-1, added modulo C
        want[chosen] = (LABELS[chosen] + torch.randint(1, 5, (24,), generator=gen).numpy()) % 5
    np.testing.assert_array_equal(noisy, want)


def test_pair_flip_random_follows_its_documented_draws():
    noisy = pair_flip(_ctx(LABELS, 5, seed=4), rate=0.5, mapping="random").numpy()
    gen = torch.Generator().manual_seed(4)
    partner = (np.arange(5) + torch.randint(1, 5, (5,), generator=gen).numpy()) % 5
    chosen = torch.randperm(60, generator=gen)[:30].numpy()
    want = LABELS.copy()
    want[chosen] = partner[LABELS[chosen]]
    np.testing.assert_array_equal(noisy, want)


@pytest.mark.parametrize(("rate", "std", "uint8"), [(0.3, 0.2, False), (0.8, 0.3, True),
                                                     (0.4, 0.0, False)])
def test_instance_dependent_follows_its_documented_draws(rate, std, uint8):
    """3,000 images of 12 bytes: enough draws near a boundary that scaling by 1/256 instead
    of 1/255 moves some."""
    normal = NormalDist()  # the standard library's CDF and its inverse (AS241)
    gen = torch.Generator().manual_seed(11)
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 0, 1, 0] * 300)  # class 3 of 5 rare, 4 absent
    n, c, shape = 3000, 5, (3, 2, 2)
    x = (torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8) if uint8
         else torch.randn(n, *shape, generator=gen))
    # int32 labels: the model works on int64 copies
    ctx = _ctx(labels.astype(np.int32), 5, seed=5, x=x)
    noisy = instance_dependent(ctx, rate=rate, std=std).numpy()

    ref = torch.Generator().manual_seed(5)
    if std == 0:
        q = np.full(n, rate)
    else:  # a normal truncated to [0, 1] by inverting its CDF
        a, b = normal.cdf((0 - rate) / std), normal.cdf((1 - rate) / std)
        u = torch.rand(n, generator=ref, dtype=torch.float64).numpy()
        z = np.array([normal.inv_cdf(a + v * (b - a)) for v in u])
        q = np.clip(rate + std * z, 0, 1)
    w = torch.randn(c, 12, c, generator=ref).numpy()
    flat = x.reshape(n, -1).numpy().astype(np.float64)
    if uint8:
        flat = flat / 255.0
    scores = np.stack([flat[i] @ w[labels[i]] for i in range(n)])
    scores[np.arange(n), labels] = -np.inf
    probs = np.exp(scores - scores.max(1, keepdims=True))
    probs = probs / probs.sum(1, keepdims=True) * q[:, None]
    probs[np.arange(n), labels] = 1 - q
    want = torch.multinomial(torch.from_numpy(probs), 1, generator=ref).squeeze(1).numpy()
    np.testing.assert_array_equal(noisy, want)


@pytest.mark.parametrize("model", [symmetric, pair_flip, instance_dependent])
def test_two_classes_are_enough_and_one_is_not(model):
    x = torch.randn(20, 3)
    noisy = model(_ctx(np.arange(20) % 2, 2, x=x), rate=1.0)
    if model is not instance_dependent:  # every label flipped to the other class
        assert noisy.tolist() == [1 - k for k in np.arange(20) % 2]
    with pytest.raises(KdcoreError, match=rf"^{model.__name__} noise needs at least 2 classes$"):
        model(_ctx(np.zeros(4, dtype=np.int64), 1, x=x[:4]), rate=0.5)


@pytest.mark.parametrize(("model", "key", "value"), [
    (pair_flip, "rate", 1.5), (instance_dependent, "rate", -0.5),
    (instance_dependent, "std", -1.0)])
def test_direct_calls_check_their_ranges(model, key, value):
    params = {"rate": 0.2, key: value}
    where = model.__name__
    with pytest.raises(KdcoreError, match=rf"^{where} noise: '{key}' must be "):
        model(_ctx(np.arange(10) % 2, 2, x=torch.randn(10, 2)), **params)


def test_labels_outside_the_classes_are_refused_at_either_end():
    for labels in ([0, 1, 2], [0, -1, 1]):
        with pytest.raises(KdcoreError, match=r"^labels must lie in 0\.\.1 for noise to be "
                           r"applied$"):
            symmetric(_ctx(labels, 2), rate=0.5)


def test_instance_dependent_input_messages():
    with pytest.raises(KdcoreError, match=r"NoiseContext\.x is None: a streaming dataset"):
        instance_dependent(_ctx([0, 1], 2), rate=0.2)
    with pytest.raises(KdcoreError, match=r"^instance_dependent noise: 3 inputs for 2 labels"):
        instance_dependent(_ctx([0, 1], 2, x=torch.randn(3, 5)), rate=0.2)


def test_transition_matrix_follows_its_documented_draws():
    table = [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]
    labels = np.arange(90) % 3
    noisy = transition_matrix(_ctx(labels, 3, seed=2), matrix=table)
    rows = torch.tensor(table, dtype=torch.float64)[torch.from_numpy(labels)]
    want = torch.multinomial(rows, 1, generator=torch.Generator().manual_seed(2)).squeeze(1)
    assert torch.equal(noisy, want)
    with pytest.raises(KdcoreError, match=r"^transition_matrix noise: 'matrix': row 0 sums to "
                       r"1\.1, not 1$"):
        transition_matrix(_ctx(labels, 3), matrix=[[0.5, 0.6], [0.0, 1.0]])


def test_one_label_through_a_transition_matrix():
    assert transition_matrix(_ctx([0], 2), matrix=[[0.0, 1.0], [1.0, 0.0]]).tolist() == [1]


def test_realised_transition_with_the_last_class_absent_and_one_sample_classes():
    table = realised_transition(torch.tensor([0, 1, 1]), torch.tensor([2, 1, 0]), 4)
    assert table.tolist() == [[0, 0, 1, 0], [0.5, 0.5, 0, 0], [0] * 4, [0] * 4]
    with pytest.raises(KdcoreError, match="^3 clean labels but 2 noisy labels$"):
        realised_transition(torch.tensor([0, 1, 1]), torch.tensor([2, 1]), 4)


# -- splits ---------------------------------------------------------------------------------------


def test_splits_leave_exactly_one_training_sample():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    parts = make_splits(labels, num_classes=2, generator=torch.Generator().manual_seed(0),
                        val_fraction=0.34, gold_per_class=1)
    assert [len(parts[k]) for k in ("train", "val", "gold")] == [2, 2, 2]


def test_gold_from_an_empty_class_is_refused():
    with pytest.raises(KdcoreError, match="^class 2 has 0 samples: too few for 1 gold"):
        make_splits(torch.tensor([0, 0, 0, 1, 1, 1]), num_classes=3,
                    generator=torch.Generator(), val_fraction=0.0, gold_per_class=1)


def test_an_empty_label_set_splits_into_empty_parts():
    parts = make_splits(torch.empty(0, dtype=torch.int64), num_classes=0,
                        generator=torch.Generator(), val_fraction=0.1, gold_per_class=0)
    assert {k: (v.dtype, v.shape) for k, v in parts.items()} == {
        k: (torch.int64, (0,)) for k in ("train", "val", "gold")}


def test_split_messages():
    with pytest.raises(KdcoreError, match=r"^class 1 has 2 samples: too few for 2 gold, 0 "
                       r"validation and 0 test samples with at least one left for training; "
                       r"lower data.gold_per_class \(at most 1 fits every class\) or the "
                       r"fractions$"):
        make_splits(torch.tensor([0, 0, 0, 1, 1]), num_classes=2, generator=torch.Generator(),
                    val_fraction=0.0, gold_per_class=2)
    with pytest.raises(KdcoreError, match=r"^val_fraction \+ test_fraction is 1\.1; it must be "
                       r"below 1 to leave training samples$"):
        make_splits(torch.tensor([0, 1]), num_classes=2, generator=torch.Generator(),
                    val_fraction=0.6, test_fraction=0.5, gold_per_class=0)


def test_truncated_normal_is_computed_in_double_precision():
    from kdcore.data.noise import _truncated_normal

    normal = NormalDist()
    gen = torch.Generator().manual_seed(8)
    got = _truncated_normal(50, mean=0.3, std=0.2, low=0.0, high=1.0, gen=gen)
    u = torch.rand(50, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    a, b = normal.cdf(-0.3 / 0.2), normal.cdf(0.7 / 0.2)
    want = [0.3 + 0.2 * normal.inv_cdf(a + float(v) * (b - a)) for v in u]
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=0)
