"""The history file as kdcore/history.py documents it, read back with h5py alone; the values
the writer stores, against numpy's own conversions; and the writer's and reader's edge cases
(names at the string table's width, a column that skips a row, stale temporary files, a journal
that cannot be undone), each with its whole message."""

from __future__ import annotations

import json
import math
import threading
import warnings

import h5py
import numpy as np
import pytest
import torch

import kdcore.history_layout as layout
from kdcore.errors import KdcoreError
from kdcore.history import History, HistoryWriter, RowCounter
from kdcore.history_journal import journal_path, locked

N, C = 12, 3
ZSTD, SHUFFLE, FLETCHER32 = 32015, 2, 3  # HDF5 filter ids


class Col:
    """A ledger column as the writer takes it."""

    def __init__(self, data, kind, producer="p", snapshot=True):
        self.data, self.kind, self.producer, self.snapshot = data, kind, producer, snapshot


def _create(path, class_names=("cat", "dog", "eel")):
    w = HistoryWriter(path)
    w.create(recipe_toml="[run]\n", versions={"kdcore": "1"}, num_classes=C,
             class_names=list(class_names),
             constants={"noisy_label": torch.arange(N) % C, "clean_mask": torch.ones(N).bool()},
             transition_matrix=torch.eye(C, dtype=torch.float64))
    return w


def _filters(ds):
    plist = ds.id.get_create_plist()
    return [plist.get_filter(i) for i in range(plist.get_nfilters())]


def test_the_file_holds_the_documented_layout(tmp_path):
    path = tmp_path / "history.h5"
    w = _create(path)
    g = torch.Generator().manual_seed(0)
    target = torch.softmax(torch.randn(N, C, generator=g), 1)
    w.append_epoch(stage="warm", epoch=0, metrics={"a": 1.0},
                   columns={"target": Col(target, "target", "lp")})
    w.append_epoch(stage="main", epoch=0, metrics={"a": 2.0, "b": 3.0},
                   columns={"target": Col(target * 1, "target", "lp"),
                            "select/s": Col(torch.rand(N, generator=g) > 0.5, "mask", "s")})
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "kdcore-history/2" and int(f.attrs["num_classes"]) == C
        assert json.loads(f.attrs["class_names"]) == ["cat", "dog", "eel"]
        assert json.loads(f.attrs["versions"]) == {"kdcore": "1"}
        for name in ("noisy_label", "clean_mask"):  # per-sample constants: Zstandard, level 1
            assert [(code, tuple(opts)) for code, _, opts, _ in _filters(f["data"][name])] == [
                (ZSTD, (1,)), (FLETCHER32, ())]
        assert f["data/transition_matrix"].dtype == np.float64
        # every chunk checksummed, so that damage on disk is an error, never another value
        for name in ("data/transition_matrix", "epochs/epoch", "epochs/stage", "metrics/a",
                     "producers/target", "strings"):
            assert [code for code, *_ in _filters(f[name])] == [FLETCHER32], name
        assert [code for code, *_ in _filters(f["ledger/target"])] == [SHUFFLE, ZSTD, FLETCHER32]
        for name in ("epochs/epoch", "epochs/stage", "producers/target", "producers/select/s"):
            ds = f[name]
            assert (ds.dtype, ds.shape, ds.maxshape, ds.chunks) == (
                np.int32, (2,), (None,), (256,)), name
        assert f["epochs/epoch"][:].tolist() == [0, 0]
        for name in ("a", "b"):
            ds = f["metrics"][name]
            assert (ds.dtype, ds.maxshape, ds.chunks) == (np.float64, (None,), (256,)), name
        assert np.isnan(f["metrics/b"][0]) and f["metrics/b"][1] == 3.0
        strings = f["strings"]
        assert (strings.dtype, strings.maxshape, strings.chunks) == (
            np.dtype("S255"), (None,), (64,))
        names = [s.decode() for s in strings[:]]
        assert names == ["", "warm", "lp", "main", "s"]
        assert [names[c] for c in f["epochs/stage"][:]] == ["warm", "main"]
        assert [names[c] for c in f["producers/select/s"][:]] == ["", "s"]
        for name, dtype, shape in (("target", np.float16, (N, C)), ("select/s", np.bool_, (N,))):
            ds = f["ledger"][name]
            assert (ds.dtype, ds.shape, ds.chunks) == (dtype, (2, *shape), (1, *shape)), name
            assert ds.attrs["kind"] == {"target": "target", "select/s": "mask"}[name]
            assert [(code, tuple(opts)[-1:] if code == ZSTD else ())
                    for code, _, opts, _ in _filters(ds)] == [(SHUFFLE, ()), (ZSTD, (1,)),
                                                        (FLETCHER32, ())]
        assert not f["ledger/select/s"][0].any()  # the fill value before the column existed


def test_the_reader_gives_back_names_metrics_and_its_path(tmp_path):
    w = _create(tmp_path / "history.h5")
    for e in range(2):
        w.append_epoch(stage="s", epoch=e, metrics={"x": float(e), "y": 10.0 + e}, columns={})
    with History(tmp_path) as h:
        assert h.path == tmp_path / "history.h5"
        assert h.class_names == ["cat", "dog", "eel"] and h.num_classes == C
        metrics = h.metrics()
        assert sorted(metrics) == ["x", "y"]
        np.testing.assert_array_equal(metrics["x"], [0.0, 1.0])
        np.testing.assert_array_equal(metrics["y"], [10.0, 11.0])
        assert h.data_names() == ["clean_mask", "noisy_label", "transition_matrix"]
    with pytest.raises(KdcoreError) as info:
        History(123)
    assert str(info.value) == "History takes a path (a string or a pathlib.Path), not int 123"


@pytest.mark.parametrize("as_numpy", [False, True])
def test_stored_values_are_numpys_conversions_of_the_column(tmp_path, as_numpy):
    """float16 columns round as numpy's (and torch's) cast does, not as HDF5's conversion,
    which turns 65519 into inf."""
    values = np.array([65519.0, 65520.0, 1e6, -1e6, 1e-8, 3e-5, np.nan, 0.1, -2.5, 7.0, 1.0,
                       0.0], np.float32)
    labels = np.array([0, 1, 2, -1, 5, 2**20, 3, 4, 1, 0, 2, 1], np.int64)
    w = _create(tmp_path / "history.h5")

    def col(a, kind):
        return Col(a if as_numpy else torch.from_numpy(a), kind)

    hard = (values > 0.5).astype(np.float32)  # a hard selection given as floats
    columns = {"v": col(values, "value"), "wt": col(values, "weight"),
               "t": col(values, "target"), "x": col(values.astype(np.float64) / 3, "exact"),
               "l": col(labels, "label"), "m": col(values, "mask"), "h": col(hard, "mask")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # out of range is inf, without a warning per epoch
        w.append_epoch(stage="s", epoch=0, metrics={}, columns=columns)
    with History(tmp_path) as h, np.errstate(over="ignore"):
        for name in ("v", "wt", "t", "m"):  # a mask of other values than 0 and 1 too
            stored = h.column(name, 0)
            assert stored.dtype == np.float16
            np.testing.assert_array_equal(stored, values.astype(np.float16))
        assert h.column("x", 0).dtype == np.float32
        np.testing.assert_array_equal(h.column("x", 0), (values.astype(np.float64) / 3)
                                      .astype(np.float32))
        np.testing.assert_array_equal(h.column("l", 0), labels.astype(np.int32))
        np.testing.assert_array_equal(h.column("h", 0), hard.astype(np.bool_))
        assert h.column("l", 0).dtype == np.int32 and h.column("h", 0).dtype == np.bool_


def test_a_mask_is_stored_as_bool_until_it_holds_soft_scores_then_as_float16(tmp_path):
    """Stored as bool, a selector's soft score of 0.3 read back as True: the history showed
    the sample fully selected where the loss had weighted it by 0.3. A column stored as bool
    is widened when the scores turn soft, its earlier rows kept; a later hard row is 0 and 1."""
    path = tmp_path / "history.h5"
    w = _create(path)
    hard = torch.arange(N) % 3 == 0
    soft = torch.linspace(0, 1, N)
    nan = torch.ones(N)
    nan[2] = math.nan  # not 0 or 1 either: a bool would read back True
    rows = [("float 0/1", hard.float()), ("bool", hard), ("soft", soft), ("bool", ~hard),
            ("nan", nan)]
    for epoch, (_, mask) in enumerate(rows):
        w.append_epoch(stage="s", epoch=epoch, metrics={}, columns={
            "select/s": Col(mask, "mask", "s"), "select/hard": Col(hard, "mask", "s")})
        with History(tmp_path) as h:
            assert h.column("select/s").dtype == (np.bool_ if epoch < 2 else np.float16)
    with History(tmp_path) as h:
        stored = h.column("select/s")
        assert h.column("select/hard").dtype == np.bool_  # never soft: bool all along
        np.testing.assert_array_equal(stored[[0, 1, 3]], np.stack(
            [hard.numpy(), hard.numpy(), ~hard.numpy()]).astype(np.float16))
        np.testing.assert_array_equal(stored[2], soft.numpy().astype(np.float16))
        np.testing.assert_array_equal(stored[4], nan.numpy().astype(np.float16))
        assert h.column_kind("select/s") == "mask" and h.producers("select/s") == ["s"] * 5
    with h5py.File(path, "r") as f:  # widened with the column's own layout and filters
        ds = f["ledger/select/s"]
        assert (ds.chunks, ds.maxshape) == ((1, N), (None, N))
        assert [code for code, *_ in _filters(ds)] == [SHUFFLE, ZSTD, FLETCHER32]
        assert np.isnan(ds.fillvalue)


@pytest.mark.parametrize("kind", ["value", "mask"])  # a mask of soft scores: float16 too
def test_a_column_that_skips_a_row_is_written_again_when_it_returns_untouched(tmp_path, kind):
    w = _create(tmp_path / "history.h5")
    t = torch.linspace(0, 1, N)
    w.append_epoch(stage="s", epoch=0, metrics={}, columns={"v": Col(t, kind)})
    w.append_epoch(stage="s", epoch=1, metrics={}, columns={"v": Col(t, kind,
                                                                      snapshot=False)})
    w.append_epoch(stage="s", epoch=2, metrics={}, columns={"v": Col(t, kind)})
    w.append_epoch(stage="s", epoch=3, metrics={}, columns={})
    w.append_epoch(stage="s", epoch=4, metrics={}, columns={"v": Col(t, kind)})
    with History(tmp_path) as h:
        rows = h.column("v")
        expected = t.numpy().astype(np.float16)
        for r in (0, 2, 4):
            np.testing.assert_array_equal(rows[r], expected)
        assert np.isnan(rows[1]).all() and np.isnan(rows[3]).all()
        assert h.producers("v") == ["p", "", "p", "", "p"]


def test_a_column_whose_kind_changes_keeps_its_dtype_and_numpys_rounding(tmp_path):
    """Written as float32 ("exact") into a float16 column: numpy's cast (65519 is 65504),
    not HDF5's conversion (inf)."""
    w = _create(tmp_path / "history.h5")
    w.append_epoch(stage="s", epoch=0, metrics={}, columns={"v": Col(torch.zeros(N), "value")})
    big = torch.full((N,), 65519.0)
    w.append_epoch(stage="s", epoch=1, metrics={}, columns={"v": Col(big, "exact")})
    with History(tmp_path) as h:
        assert h.column("v").dtype == np.float16
        np.testing.assert_array_equal(h.column("v", 1), np.full(N, 65504.0, np.float16))


def test_an_untouched_columns_chunk_is_copied_with_its_filter_mask(tmp_path):
    """A chunk stored with its filters skipped (HDF5 marks that in the chunk's filter mask)
    stays readable when the next row copies it."""
    path = tmp_path / "history.h5"
    w = _create(path)
    t = torch.arange(N, dtype=torch.float32)
    w.append_epoch(stage="s", epoch=0, metrics={}, columns={"v": Col(t, "value")})
    with h5py.File(path, "r+") as f:
        f["ledger/v"].id.write_direct_chunk((0, 0), t.numpy().astype(np.float16).tobytes(),
                                            filter_mask=0b111)  # shuffle, Zstd, checksum
    w.append_epoch(stage="s", epoch=1, metrics={}, columns={"v": Col(t, "value")})  # a copy
    with h5py.File(path, "r") as f:
        assert f["ledger/v"].id.read_direct_chunk((1, 0))[0] == 0b111
    with History(tmp_path) as h:
        np.testing.assert_array_equal(h.column("v", 1), t.numpy().astype(np.float16))


def test_names_fill_the_string_table_to_its_width_and_no_further(tmp_path):
    w = _create(tmp_path / "history.h5")
    widest = "é" * 127 + "a"  # 255 bytes in UTF-8
    w.append_epoch(stage=widest, epoch=0, metrics={}, columns={})
    too_wide = "é" * 128  # 256 bytes
    with pytest.raises(KdcoreError) as info:
        w.append_epoch(stage=too_wide, epoch=1, metrics={}, columns={})
    assert str(info.value) == (f"name '{'é' * 40}...' is longer than 255 bytes, the most the "
                               "history stores")
    with History(tmp_path) as h:
        assert h.epochs() == [(widest, 0)]


def test_create_replaces_a_stale_temporary_file_and_says_why_it_cannot(tmp_path):
    path = tmp_path / "history.h5"
    stale = tmp_path / "history.h5.create"
    stale.write_bytes(b"left by a create that was killed")
    _create(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.h5"]
    missing = tmp_path / "gone" / "history.h5"
    with pytest.raises(KdcoreError) as info:
        _create(missing)
    assert str(info.value) == f"cannot create {missing}: No such file or directory"


def test_a_create_stopped_half_way_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Ctrl-C while the history is made at a run's start."""
    def stopped(values):
        raise KeyboardInterrupt

    monkeypatch.setattr("kdcore.history_writer.host", stopped)
    with pytest.raises(KeyboardInterrupt):
        _create(tmp_path / "history.h5")
    assert list(tmp_path.iterdir()) == []


def test_add_data_compresses_arrays_and_stores_scalars(tmp_path):
    path = tmp_path / "history.h5"
    w = _create(path)
    w.add_data("scalar", torch.tensor(5))
    w.add_data("one", torch.tensor([7]))
    w.add_data("two", torch.tensor([1, 2]))
    with h5py.File(path, "r") as f:
        assert f["data/scalar"][()] == 5 and f["data/one"][:].tolist() == [7]
        assert _filters(f["data/scalar"]) == []  # a scalar has no chunk to checksum
        assert [code for code, *_ in _filters(f["data/one"])] == [FLETCHER32]
        assert [code for code, *_ in _filters(f["data/two"])] == [ZSTD, FLETCHER32]
        assert f["data/two"][:].tolist() == [1, 2]


def test_rollback_refuses_a_negative_row_count(tmp_path):
    w = _create(tmp_path / "history.h5")
    with pytest.raises(ValueError) as info:
        w.rollback(-1)
    assert str(info.value) == "rows must be >= 0, got -1"


def test_foreign_and_incomplete_files_are_refused_with_their_path(tmp_path):
    path = tmp_path / "history.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "kdcore-history/2"
        f.create_group("epochs").create_dataset("epoch", data=[0])
        f.create_dataset("epochs/stage", data=[0])
        f.create_group("metrics")
    with pytest.raises(KdcoreError) as info:
        History(path)
    assert str(info.value) == (f"{path}: the history is damaged (no ledger, data); start the "
                               "run again with --overwrite")
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "other"
    with pytest.raises(KdcoreError) as info:
        History(path)
    assert str(info.value) == (f"{path} is not a kdcore history (format kdcore-history/2 "
                               "expected, found 'other')")
    path.write_bytes(b"not HDF5 at all")
    with pytest.raises(KdcoreError) as info:
        History(path)
    assert str(info.value) == (f"{path} is damaged or not an HDF5 file (Unable to synchronously "
                               "open file (file signature not found)); start the run again with "
                               "--overwrite")


def test_a_journal_that_cannot_be_undone_is_retried_then_one_error(tmp_path, monkeypatch):
    path = tmp_path / "history.h5"
    _create(path)
    journal_path(path).write_bytes(b"")  # hot: an update died (or so it seems)
    tries = []

    def refuse(p):
        tries.append(p)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(layout, "recover", refuse)
    with pytest.raises(KdcoreError) as info:
        History(path)
    assert str(info.value) == (f"{path}: an interrupted write could not be undone; try again")
    assert tries == [path] * 3


def test_appending_to_a_format_1_file_says_to_resume(tmp_path):
    path = tmp_path / "history.h5"
    _create(path)
    with h5py.File(path, "r+") as f:
        f.attrs["format"] = "kdcore-history/1"
    w = HistoryWriter(path)
    with pytest.raises(KdcoreError) as info:
        w.append_epoch(stage="s", epoch=0, metrics={}, columns={})
    assert str(info.value) == (f"{path} has format 'kdcore-history/1'; only kdcore-history/2 "
                               "takes new rows (resuming the run converts it)")


def test_row_counter_counts_rows_as_the_writer_does():
    counter = RowCounter()
    assert counter.rows() == 0
    assert [counter.append_epoch(stage="s", epoch=e) for e in range(3)] == [0, 1, 2]
    assert counter.rows() == 3
    counter.rollback(1)
    assert counter.rows() == 1 and counter.append_epoch() == 1 and counter.rows() == 2
    counter.add_data("x", [1])
    assert counter.rows() == 2
    counter.create(recipe_toml="")
    assert counter.rows() == 0 and counter.append_epoch() == 0


def test_a_reader_waits_for_other_readers_before_undoing_a_journal(tmp_path):
    """Undoing a dead writer's update takes the file to itself: never while another process
    reads it."""
    path = tmp_path / "history.h5"
    _create(path)
    with locked(path, exclusive=False, timeout=1.0):  # another reader
        journal_path(path).write_bytes(b"")
        with pytest.raises(KdcoreError, match="is held open elsewhere"):
            layout.open_readable(path, timeout=0.2)
        assert journal_path(path).exists()
    with layout.open_readable(path, timeout=0.2) as f:  # alone now: undone, then read
        assert f.attrs["format"] == "kdcore-history/2"
    assert not journal_path(path).exists()


def test_the_writers_lock_timeout_also_bounds_counting_rows(tmp_path):
    path = tmp_path / "history.h5"
    w = _create(path)
    w.lock_timeout_s = 0.2
    taken, release = threading.Event(), threading.Event()

    def writer_elsewhere():  # holds the file for a second, far past the 0.2 s
        with locked(path, exclusive=True, timeout=1.0):
            taken.set()
            release.wait(1.0)

    thread = threading.Thread(target=writer_elsewhere)
    thread.start()
    try:
        assert taken.wait(10.0)
        with pytest.raises(KdcoreError, match="is held open elsewhere"):
            w.rows()  # had it waited the default minute, it would count the rows at 1 s
    finally:
        release.set()
        thread.join()
    assert w.rows() == 0


@pytest.mark.parametrize("as_numpy", [False, True])
def test_what_the_stored_copy_loses_of_a_column_is_said_once_per_column(tmp_path, warnings,
                                                                        as_numpy):
    """A value column past float16's range, or of whole numbers past 2048, is stored as float16
    all the same (its kind says so), and a label column of fractions as int32, but not
    silently: its reader would take inf, 2048 or 0 for what the plugin wrote."""
    w = _create(tmp_path / "history.h5")
    big = torch.full((N,), 1.0)
    big[1] = 70000.0
    big[5] = math.inf  # an inf of its own is kept, not counted
    unreal = torch.full((N,), -3.0)
    unreal[[2, 3]] = torch.tensor([math.nan, -math.inf])  # nothing lost: no warning
    ids = torch.arange(N) * 301  # up to 3,311: the odd ones past 2048 round
    even = torch.arange(N) * 300  # up to 3,300: float16 steps by 2 there, so exact
    small = torch.arange(N) * 186  # up to 2,046: every one exact
    near = torch.full((N,), 65504.0)  # float16's largest, exact
    rows = {"odd/big": Col(big, "value"), "odd/ids": Col(ids, "value"),
            "odd/small": Col(small, "value"), "odd/near": Col(near, "weight"),
            "odd/exact": Col(big, "exact"), "odd/label": Col(ids, "label"),
            "odd/even": Col(even, "value"), "odd/unreal": Col(unreal, "value"),
            "odd/cut": Col(torch.linspace(0, 2, N), "label"),  # 0, 0.18, ..., 2
            "odd/whole": Col(torch.arange(N).double(), "label")}
    if as_numpy:
        rows = {n: Col(c.data.numpy(), c.kind) for n, c in rows.items()}
    for epoch in range(2):
        w.append_epoch(stage="s", epoch=epoch, metrics={}, columns=rows)
    assert warnings == [
        "the history stores column 'odd/big' (value) as float16: finite values past ±65504 are "
        "stored as ±inf (1 of them; a column that needs them is declared kind 'exact', "
        "float32)",
        "the history stores column 'odd/ids' (value) as float16: 3 of its whole numbers past "
        "2048 are rounded (up to 3,311; a column of whole numbers is declared kind 'label', "
        "int32)",
        "the history stores column 'odd/cut' (label) as int32: 10 of its values are not whole "
        "numbers, cut to int32 (a column of fractions is declared kind 'value', float16, or "
        "'exact', float32)"]
    with History(tmp_path) as h:  # stored as numpy's float16 cast makes them
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(h.column("odd/big", epoch=1),
                                          big.numpy().astype(np.float16))
        np.testing.assert_array_equal(h.column("odd/ids", epoch=1),
                                      ids.numpy().astype(np.float16))
        assert h.column("odd/ids", epoch=1)[11] == 3312  # 3,311 rounded
        np.testing.assert_array_equal(h.column("odd/even", epoch=1), even.numpy())
        np.testing.assert_array_equal(h.column("odd/label", epoch=1), ids.numpy())
