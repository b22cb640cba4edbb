"""make_splits: disjoint, complete, stratified, class-balanced gold, seeded."""

from __future__ import annotations

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
