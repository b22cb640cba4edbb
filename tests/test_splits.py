"""make_splits: disjoint, complete, stratified, class-balanced gold, seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcore.data.splits import make_splits
from kdcore.errors import KdcoreError

COUNTS = (50, 30, 20, 41)


def _labels() -> torch.Tensor:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(COUNTS)])
    return labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(3))]


def _split(seed: int = 0, **overrides) -> dict[str, torch.Tensor]:
    params = {"val_fraction": 0.2, "gold_per_class": 3, "test_fraction": 0.1}
    params.update(overrides)
    return make_splits(
        _labels(), num_classes=4, generator=torch.Generator().manual_seed(seed), **params
    )


def test_parts_are_disjoint_sorted_and_cover_every_row() -> None:
    parts = _split()
    assert set(parts) == {"train", "val", "gold", "test"}
    everything = torch.cat(list(parts.values()))
    assert torch.equal(torch.sort(everything).values, torch.arange(sum(COUNTS)))
    for index in parts.values():
        assert index.dtype == torch.int64
        assert torch.equal(index, torch.sort(index).values)


def test_gold_is_exactly_balanced_and_the_rest_stratified() -> None:
    labels = _labels()
    parts = _split()
    assert torch.equal(torch.bincount(labels[parts["gold"]], minlength=4), torch.full((4,), 3))
    val_counts = torch.bincount(labels[parts["val"]], minlength=4).tolist()
    test_counts = torch.bincount(labels[parts["test"]], minlength=4).tolist()
    assert val_counts == [round(0.2 * n) for n in COUNTS]
    assert test_counts == [round(0.1 * n) for n in COUNTS]
    train_counts = torch.bincount(labels[parts["train"]], minlength=4).tolist()
    assert train_counts == [n - 3 - v - t for n, v, t in zip(COUNTS, val_counts, test_counts)]


def test_no_test_part_without_test_fraction() -> None:
    parts = _split(test_fraction=0.0, gold_per_class=0)
    assert set(parts) == {"train", "val", "gold"}
    assert parts["gold"].numel() == 0
    assert parts["train"].numel() + parts["val"].numel() == sum(COUNTS)


def test_deterministic_given_the_generator() -> None:
    first, second, other = _split(seed=11), _split(seed=11), _split(seed=12)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["val"], other["val"])


def test_class_too_small_for_gold() -> None:
    with pytest.raises(KdcoreError, match="class 2 has 20 samples"):
        _split(gold_per_class=17)


def _numpy_spare(counts, val_fraction, test_fraction):
    """The gold each class can give and keep one training sample: n - round(t n) - round(v n)
    - 1 (NumPy rounds halves to even, as Python's round does); an empty class none."""
    n = np.asarray(counts)
    spare = n - np.round(test_fraction * n) - np.round(val_fraction * n) - 1
    return np.where(n > 0, spare, 0).astype(int)


@pytest.mark.parametrize(("counts", "val", "test", "gold"), [
    ([1, 40, 1, 3, 30, 2, 1, 1, 1, 1, 1, 1, 50], 0.1, 0.2, 10),  # a long tail: many too small
    ([5, 40, 2], 0.1, 0.2, 2),  # class 2 alone
    ([3, 40, 30], 0.3, 0.5, 0),  # no gold: the fractions take all of class 0 (1 + 2 = 3)
    ([0, 40, 30], 0.1, 0.2, 1),  # an empty class gives no gold
    ([1, 1, 40], 0.1, 0.2, 1),  # two
    ([1] * 8 + [40], 0.1, 0.2, 1),  # eight, every one listed
    ([1] * 9 + [40], 0.1, 0.2, 1),  # nine: the first eight listed
    ([2, 40], 0.3, 0.5, 0),  # no gold: class 0's two samples go to test and validation
])
def test_every_class_too_small_is_counted_and_what_fits_is_said(counts, val, test, gold):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    spare = _numpy_spare(counts, val, test)
    short = [c for c, n in enumerate(counts) if (n or gold) and spare[c] < gold]
    with pytest.raises(KdcoreError) as caught:
        make_splits(labels, num_classes=len(counts), generator=torch.Generator(),
                    val_fraction=val, test_fraction=test, gold_per_class=gold)
    said = str(caught.value)
    first = short[0]
    assert said.startswith(f"class {first} has {counts[first]} sample")
    if len(short) > 1:
        listed = ", ".join(map(str, short[:8])) + (", ..." if len(short) > 8 else "")
        assert f"({len(short)} classes are too small: {listed})" in said
    else:
        assert "classes are too small" not in said
    if spare.min() >= 0:
        assert said.endswith(f"lower data.gold_per_class (at most {spare.min()} fits every "
                             "class) or the fractions")
        # and that many does fit every class
        make_splits(labels, num_classes=len(counts), generator=torch.Generator(),
                    val_fraction=val, test_fraction=test, gold_per_class=int(spare.min()))
    else:
        bare = int(np.argmin(spare))
        assert said.endswith(f"even without gold samples, class {bare} ({counts[bare]} "
                             f"sample{'s' * (counts[bare] != 1)}) keeps none for training")


def test_one_sample_is_said_in_the_singular() -> None:
    with pytest.raises(KdcoreError, match="^class 0 has 1 sample: too few for 1 gold"):
        make_splits(torch.tensor([0, 1, 1, 1]), num_classes=2, generator=torch.Generator(),
                    val_fraction=0.0, gold_per_class=1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"val_fraction": 1.0}, "val_fraction must be in"),
        ({"test_fraction": -0.1}, "test_fraction must be in"),
        ({"val_fraction": 0.6, "test_fraction": 0.4}, "must be below 1"),
        ({"gold_per_class": -1}, "gold_per_class must be 0 or more"),
    ],
)
def test_bad_arguments(overrides: dict, message: str) -> None:
    with pytest.raises(KdcoreError, match=message):
        _split(**overrides)


def test_labels_out_of_range() -> None:
    with pytest.raises(KdcoreError, match="labels must lie in 0..2"):
        make_splits(
            torch.tensor([0, 1, 3]),
            num_classes=3,
            generator=torch.Generator(),
            val_fraction=0.0,
            gold_per_class=0,
        )
