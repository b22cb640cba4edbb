"""The HDF5 history: layout, dtypes, compression, truncation and crash safety."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from kdcore.history import History, HistoryWriter, open_history
from kdcore.ledger import Ledger


def _writer(tmp_path, n=50, c=4):
    w = HistoryWriter(tmp_path / "history.h5")
    labels = torch.arange(n) % c
    w.create(recipe_toml='[run]\nname = "x"\n', versions={"kdcore": "0"}, num_classes=c,
             class_names=[str(i) for i in range(c)],
             constants={"noisy_label": labels.int(), "clean_label": labels.int()},
             transition_matrix=torch.eye(c, dtype=torch.float64))
    return w


def _ledger(n=50, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    led = Ledger(n)
    led.add("target", torch.softmax(torch.randn(n, c, generator=g), 1), producer="lp",
            kind="target")
    led.add("select/small_loss", torch.rand(n, generator=g) > 0.5, producer="small_loss",
            kind="mask")
    return led


def test_layout_dtypes_and_producers(tmp_path):
    w = _writer(tmp_path)
    led = _ledger()
    w.append_epoch(stage="s", epoch=0, metrics={"test/student/acc": 0.5},
                   columns=dict(led.items()))
    with History(tmp_path) as h:
        assert len(h) == 1 and h.epochs() == [("s", 0)]
        assert h.column("target").dtype == np.float16
        assert h.column("target").shape == (1, 50, 4)
        assert h.column("select/small_loss").dtype == np.bool_
        assert h.producers("target") == ["lp"]
        np.testing.assert_allclose(h.column("target", 0), led["target"].numpy(), atol=1e-3)
        assert h.metric("test/student/acc")[0] == 0.5
        assert "recipe" in h._file.attrs and json.loads(h._file.attrs["versions"])


def test_compressed_and_chunked_by_epoch(tmp_path):
    w = _writer(tmp_path)
    w.append_epoch(stage="s", epoch=0, metrics={}, columns=dict(_ledger().items()))
    with h5py.File(tmp_path / "history.h5") as f:
        ds = f["ledger/target"]
        assert ds.chunks == (1, 50, 4)
        assert "32015" in str(ds._filters)  # the Zstandard filter id


def test_columns_appearing_later_and_metrics_missing_are_aligned(tmp_path):
    w = _writer(tmp_path)
    led = _ledger()
    w.append_epoch(stage="a", epoch=0, metrics={"m1": 1.0}, columns=dict(led.items()))
    led.add("weight/awe", torch.full((50,), 0.5), producer="awe", kind="weight")
    w.append_epoch(stage="b", epoch=0, metrics={"m2": 2.0}, columns=dict(led.items()))
    with History(tmp_path) as h:
        assert h.column("weight/awe").shape == (2, 50)
        assert np.isnan(h.column("weight/awe", 0)).all()
        assert h.producers("weight/awe") == ["", "awe"]
        assert np.isnan(h.metric("m1")[1]) and np.isnan(h.metric("m2")[0])


def test_truncate_drops_rows_after_a_checkpoint(tmp_path):
    w = _writer(tmp_path)
    for e in range(3):
        w.append_epoch(stage="s", epoch=e, metrics={"m": float(e)},
                       columns=dict(_ledger(seed=e).items()))
    w.truncate(1)
    assert w.rows() == 1
    with History(tmp_path) as h:
        assert h.metric("m").tolist() == [0.0]
        assert h.producers("target") == ["lp"]


def test_readable_when_a_writer_dies_between_epochs(tmp_path):
    """The writer holds the file open only inside append_epoch, so earlier rows survive."""
    w = _writer(tmp_path)
    w.append_epoch(stage="s", epoch=0, metrics={"m": 1.0}, columns=dict(_ledger().items()))
    f = h5py.File(tmp_path / "history.h5", "r")  # a reader alongside is fine too
    f.close()
    with History(tmp_path) as h:
        assert len(h) == 1


def test_open_history_rejects_foreign_files(tmp_path):
    from kdcore.errors import KdcoreError

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(KdcoreError, match="not a kdcore history"):
        open_history(tmp_path / "other.h5")
    with pytest.raises(KdcoreError, match="no history"):
        open_history(tmp_path / "missing")
