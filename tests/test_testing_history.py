"""``kdcore.testing``'s history comparisons on histories the test writes (no training): every
difference they exist to catch fails them, and what they leave out on purpose does not.
The resume and distributed tests rest on them; a comparison that passed everything would make
those tests pass vacuously."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore.history_writer import HistoryWriter
from kdcore.ledger import Column
from kdcore.testing import assert_close_history, assert_same_history

N, C = 6, 3


def _columns(shift: float = 0.0, mask_flip: int | None = None) -> dict[str, Column]:
    weights = torch.linspace(0.5, 1.5, N) + shift
    mask = torch.tensor([True, False, True, True, False, True])
    if mask_flip is not None:
        mask[mask_flip] = ~mask[mask_flip]
    return {"weight/w": Column(weights, "w", "weight"),
            "select/s": Column(mask, "s", "mask"),
            "label": Column(torch.arange(N, dtype=torch.int32) % C, "lp", "label")}


def _history(path: Path, *, epochs=(("a", 0), ("a", 1)), metrics=None, columns=None,
             data=None, drop_column: str | None = None) -> Path:
    path.mkdir(parents=True)
    w = HistoryWriter(path / "history.h5")
    w.create(recipe_toml="", versions={"kdcore": "0"}, num_classes=C,
             class_names=["x", "y", "z"], constants={}, transition_matrix=torch.eye(C))
    for k, (stage, epoch) in enumerate(epochs):
        row_metrics = {"test/s/acc": 0.5 + k / 10, "time/epoch": 1.0}
        row_metrics.update((metrics or {}).get(k, {}))
        cols = (columns or {}).get(k) or _columns()
        if drop_column:
            cols = {n: c for n, c in cols.items() if n != drop_column}
        w.append_epoch(stage=stage, epoch=epoch, metrics=row_metrics, columns=cols)
    for name, array in (data or {"test_confusion/a/s": np.eye(C)}).items():
        w.add_data(name, torch.as_tensor(array))
    return path


@pytest.fixture
def base(tmp_path):
    return _history(tmp_path / "base")


def test_the_same_history_is_the_same_and_the_time_metrics_do_not_count(base, tmp_path):
    other = _history(tmp_path / "other", metrics={1: {"time/epoch": 99.0}})
    assert_same_history(base, other)
    assert assert_close_history(base, other, float_atol=0, float_rtol=0, metric_atol=0) == {}


@pytest.mark.parametrize("change", [
    {"epochs": (("a", 0), ("b", 0))},  # another stage
    {"epochs": (("a", 0),)},  # a row short
    {"metrics": {1: {"test/s/acc": 0.6 + 1e-6}}},  # one metric's last bit, close to
    {"metrics": {0: {"train/s/loss": 1.0}, 1: {"train/s/loss": 1.0}}},  # a metric more
    {"columns": {1: _columns(shift=0.01)}},  # a float column's values
    {"columns": {1: _columns(mask_flip=2)}},  # one sample's mask
    {"drop_column": "label"},  # a column fewer
    {"data": {"test_confusion/a/s": 2 * np.eye(C)}},  # a /data array's values
    {"data": {"test_confusion/a/s": np.eye(C), "other": np.eye(C)}},  # a /data array more
])
def test_every_difference_fails_the_bit_for_bit_comparison(base, tmp_path, change):
    other = _history(tmp_path / "other", **change)
    with pytest.raises(AssertionError):
        assert_same_history(base, other)
    with pytest.raises(AssertionError):
        assert_same_history(other, base)


def test_columns_compares_only_the_columns_named(base, tmp_path):
    other = _history(tmp_path / "other", columns={1: _columns(shift=0.01)}, drop_column="label")
    assert_same_history(base, other, columns=["select/s"])
    with pytest.raises(AssertionError, match="weight/w"):
        assert_same_history(base, other, columns=["select/s", "weight/w"])


def test_close_histories_report_each_largest_difference(base, tmp_path):
    other = _history(tmp_path / "other", columns={1: _columns(shift=0.01)},
                     metrics={1: {"test/s/acc": 0.6 + 0.002}})
    differ = assert_close_history(base, other, float_atol=0.02, float_rtol=0, metric_atol=0.003)
    assert set(differ) == {"weight/w", "test/s/acc"}
    weights = torch.linspace(0.5, 1.5, N)
    expected = np.abs(weights.half().double().numpy()
                      - (weights + 0.01).half().double().numpy()).max()
    assert differ["weight/w"] == pytest.approx(expected, abs=0)  # float16 as stored
    assert differ["test/s/acc"] == pytest.approx(0.002, rel=1e-6)


@pytest.mark.parametrize("tolerances", [
    {"float_atol": 0.001, "float_rtol": 0, "metric_atol": 1},  # a float column beyond atol
    {"float_atol": 0, "float_rtol": 0.001, "metric_atol": 1},  # ... and beyond rtol
    {"float_atol": 1, "float_rtol": 0, "metric_atol": 0.001},  # a metric beyond its atol
])
def test_close_histories_fail_beyond_each_tolerance(base, tmp_path, tolerances):
    other = _history(tmp_path / "other", columns={1: _columns(shift=0.01)},
                     metrics={1: {"test/s/acc": 0.6 + 0.002}})
    with pytest.raises(AssertionError):
        assert_close_history(base, other, **tolerances)


def test_close_histories_compare_masks_and_labels_exactly(base, tmp_path):
    for change in ({"columns": {1: _columns(mask_flip=0)}}, {"drop_column": "label"},
                   {"epochs": (("a", 0), ("a", 2))}):
        other = _history(tmp_path / f"other{len(list(tmp_path.iterdir()))}", **change)
        with pytest.raises(AssertionError):  # the loosest tolerances do not excuse them
            assert_close_history(base, other, float_atol=10, float_rtol=10, metric_atol=10)


def test_close_histories_with_a_metric_more_fail(base, tmp_path):
    other = _history(tmp_path / "other", metrics={1: {"extra/m": 1.0}, 0: {"extra/m": 1.0}})
    with pytest.raises(AssertionError):
        assert_close_history(base, other, float_atol=10, float_rtol=10, metric_atol=10)


@pytest.mark.parametrize("change, name", [
    ({"metrics": {1: {"test/s/acc": 0.7}}}, "test/s/acc"),
    ({"columns": {1: _columns(shift=0.01)}}, "weight/w"),
    ({"data": {"test_confusion/a/s": 2 * np.eye(C)}}, "test_confusion/a/s"),
])
def test_a_failed_comparison_names_what_differs(base, tmp_path, change, name):
    other = _history(tmp_path / "other", **change)
    with pytest.raises(AssertionError, match=name):
        assert_same_history(base, other)


@pytest.mark.parametrize("change, name", [
    ({"metrics": {1: {"test/s/acc": 0.7}}}, "test/s/acc"),
    ({"columns": {1: _columns(shift=0.5)}}, "weight/w"),
    ({"columns": {1: _columns(mask_flip=1)}}, "select/s"),
])
def test_a_failed_close_comparison_names_what_differs(base, tmp_path, change, name):
    other = _history(tmp_path / "other", **change)
    with pytest.raises(AssertionError, match=name):
        assert_close_history(base, other, float_atol=0.1, float_rtol=0, metric_atol=0.01)


def test_close_histories_pass_within_the_relative_tolerance_alone(base, tmp_path):
    other = _history(tmp_path / "other", columns={1: _columns(shift=0.01)})
    differ = assert_close_history(base, other, float_atol=0, float_rtol=0.05, metric_atol=0)
    assert set(differ) == {"weight/w"}


def test_close_metrics_have_no_relative_tolerance(base, tmp_path):
    # a difference far below float64's relative 1e-7 still exceeds metric_atol = 0
    other = _history(tmp_path / "other", metrics={1: {"test/s/acc": 0.6 + 1e-12}})
    with pytest.raises(AssertionError, match="test/s/acc"):
        assert_close_history(base, other, float_atol=0, float_rtol=0, metric_atol=0)


def test_close_histories_compare_the_metrics_after_the_time_ones(base, tmp_path):
    # "val/..." sorts after "time/epoch": the time metrics are skipped, not the end of the list
    extra = {k: {"val/s/acc": 0.5} for k in (0, 1)}
    far = {0: {"val/s/acc": 0.5}, 1: {"val/s/acc": 0.9}}
    a = _history(tmp_path / "a", metrics=extra)
    b = _history(tmp_path / "b", metrics=far)
    with pytest.raises(AssertionError, match="val/s/acc"):
        assert_close_history(a, b, float_atol=0, float_rtol=0, metric_atol=0.1)


def test_a_column_and_a_metric_of_nan_in_both_compare_quietly(tmp_path):
    import warnings

    nan = {k: {"weight/w": Column(torch.full((N,), float("nan")), "w", "weight")}
           for k in (0, 1)}
    metrics = {k: {"val/s/acc": float("nan")} for k in (0, 1)}  # never measured
    a = _history(tmp_path / "a", columns=nan, metrics=metrics)
    b = _history(tmp_path / "b", columns=nan, metrics=metrics)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "All-NaN slice" would be one
        assert assert_close_history(a, b, float_atol=0, float_rtol=0, metric_atol=0) == {}


@pytest.mark.parametrize("change, words", [
    ({"metrics": {0: {"train/s/loss": 1.0}, 1: {"train/s/loss": 1.0}}},
     "metrics differ: only in the first [], only in the second ['train/s/loss']"),
    ({"drop_column": "label"}, "ledger columns differ: only in the first ['label'], only in "
                               "the second []"),
    ({"data": {"test_confusion/a/s": np.eye(C), "other": np.eye(C)}},
     "/data arrays differ: only in the first [], only in the second ['other']"),
])
def test_names_on_one_side_only_are_named(base, tmp_path, change, words):
    other = _history(tmp_path / "other", **change)
    with pytest.raises(AssertionError) as same:
        assert_same_history(base, other)
    assert words in str(same.value)
    if "/data" not in words:  # the close comparison leaves /data out
        with pytest.raises(AssertionError) as close:
            assert_close_history(base, other, float_atol=1, float_rtol=1, metric_atol=1)
        assert words in str(close.value)
