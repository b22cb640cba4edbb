"""The HDF5 history: layout, dtypes, compression, truncation and crash safety."""

from __future__ import annotations

import functools
import json
import re

import h5py
import numpy as np
import pytest
import torch

from kdcore.errors import KdcoreError
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


def test_setup_is_recorded_and_absent_reads_empty(tmp_path):
    from kdcore.engine import run_setup

    w = _writer(tmp_path)
    with History(tmp_path) as h:
        assert h.setup == {}  # created without one: as a file of an older kdcore reads
    setup = run_setup(torch.device("cpu"))
    assert setup["device"] == "cpu" and setup["processes"] == 1
    assert setup["threads"] == torch.get_num_threads() and setup["torch"] == torch.__version__
    w.create(recipe_toml="", versions={}, num_classes=2, class_names=["a", "b"],
             constants={}, transition_matrix=torch.eye(2), setup=setup)
    with History(tmp_path) as h:
        assert h.setup == setup
    with h5py.File(tmp_path / "history.h5", "a") as f:
        del f.attrs["setup"]
    with History(tmp_path) as h:
        assert h.setup == {}


def test_a_gpu_runs_setup_names_the_gpu_and_its_cuda_and_cudnn_versions(monkeypatch):
    from kdcore.engine import run_setup

    assert not {"cuda", "cudnn"} & set(run_setup(torch.device("cpu")))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"GPU of {device}")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    setup = run_setup(torch.device("cuda", 1))
    assert setup["device"] == "cuda:1 (GPU of cuda:1)"
    assert setup["cuda"] == "13.0" and setup["cudnn"] == 91002
    assert json.loads(json.dumps(setup)) == setup  # stored as JSON


def test_compressed_and_chunked_by_epoch(tmp_path):
    w = _writer(tmp_path)
    w.append_epoch(stage="s", epoch=0, metrics={}, columns=dict(_ledger().items()))
    with h5py.File(tmp_path / "history.h5") as f:
        ds = f["ledger/target"]
        assert ds.chunks == (1, 50, 4)
        assert "32015" in str(ds._filters)  # the Zstandard filter id
        # byte shuffle (2) first, then Zstandard, then the Fletcher-32 checksum (3)
        plist = ds.id.get_create_plist()
        assert [plist.get_filter(i)[0] for i in range(plist.get_nfilters())] == [2, 32015, 3]


def test_an_untouched_column_is_copied_chunk_for_chunk_and_any_change_is_written(
        tmp_path, monkeypatch):
    import kdcore.history_writer as hw

    w, led = _writer(tmp_path), _ledger()
    converted = []
    as_numpy = hw._as_numpy
    monkeypatch.setattr(hw, "_as_numpy", lambda v, d: converted.append(v) or as_numpy(v, d))
    columns = dict(led.items())
    target = led["target"]
    expected = [target.clone()]
    w.append_epoch(stage="s", epoch=0, metrics={}, columns=columns)
    w.append_epoch(stage="s", epoch=1, metrics={}, columns=columns)  # untouched: copied
    expected.append(target.clone())
    assert [v is target for v in converted] == [True, False]  # epoch 1 converted nothing
    target[0] = torch.tensor([0.1, 0.2, 0.3, 0.4])  # in place: the version moves
    w.append_epoch(stage="s", epoch=2, metrics={}, columns=columns)
    expected.append(target.clone())
    led.add("target", target.clone() * 0.5, producer="lp", kind="target")  # a new tensor
    w.append_epoch(stage="s", epoch=3, metrics={}, columns=dict(led.items()))
    expected.append(led["target"].clone())
    w.append_epoch(stage="s", epoch=4, metrics={}, columns=dict(led.items()))
    expected.append(led["target"].clone())
    assert sum(v is led["target"] for v in converted) == 1
    with History(tmp_path) as h:
        rows = h.column("target")
        for r, values in enumerate(expected):
            np.testing.assert_array_equal(rows[r], values.numpy().astype(np.float16))
        assert h.producers("target") == ["lp"] * 5
    with h5py.File(tmp_path / "history.h5") as f:
        dsid = f["ledger/target"].id
        assert dsid.read_direct_chunk((1, 0, 0)) == dsid.read_direct_chunk((0, 0, 0))


def test_numpy_columns_and_another_kind_are_always_converted(tmp_path):
    from kdcore.history_writer import _Index

    w = _writer(tmp_path)
    column = type("C", (), {"data": np.ones(50, np.float32), "producer": "p", "kind": "value",
                            "snapshot": True})()
    for epoch in range(2):
        w.append_epoch(stage="s", epoch=epoch, metrics={}, columns={"loss/p": column})
    index = w._index
    assert isinstance(index, _Index) and not index.unchanged("loss/p", column.data, "value")
    t = torch.ones(3)
    index.written["x"] = (t, t._version, "value", 4)
    assert index.unchanged("x", t, "value") and index.unchanged("x", t, "value", 4)
    assert not index.unchanged("x", t, "weight") and not index.unchanged("x", t, "value", 3)
    assert not index.unchanged("x", torch.ones(3), "value")


def test_mirror_copies_only_when_source_or_copy_changed():
    led = Ledger(4)
    led.add("base_target", torch.eye(4), producer="data", kind="target")
    led.mirror("target", "base_target", kind="target")
    first = led["target"]
    assert torch.equal(first, torch.eye(4)) and first is not led["base_target"]
    led.mirror("target", "base_target", kind="target")
    assert led["target"] is first  # nothing changed: the same tensor
    led["base_target"][0, 0] = 0.5
    led.mirror("target", "base_target", kind="target")
    assert led["target"] is not first and led["target"][0, 0] == 0.5
    second = led["target"]
    second[1, 1] = 0.25  # the copy changed: copied afresh
    led.mirror("target", "base_target", kind="target")
    assert led["target"][1, 1] == 1.0
    led.add("base_target", torch.eye(4) * 2, producer="lp", kind="target")  # a new source
    led.mirror("target", "base_target", kind="target")
    assert led["target"][0, 0] == 2.0 and led.producer("target") == "lp"
    third = led["target"]
    led.mirror("target", "base_target", kind="value")  # another kind: copied again
    assert led["target"] is not third and led.column("target").kind == "value"


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


# -- rollback, damage and the format -------------------------------------------------------

N, C = 50, 4


def _row(r: int) -> dict:
    """Row ``r`` of a history whose shape changes as it goes: a second stage from row 2, a
    metric and a column that appear at row 3, a column that stops after row 3."""
    stage, epoch, metrics, columns = _row_parts(r)
    return {"stage": stage, "epoch": epoch, "metrics": dict(metrics), "columns": dict(columns)}


@functools.cache
def _row_parts(r: int) -> tuple:
    led = _ledger(seed=r)
    if r >= 3:
        led.add("weight/awe", torch.rand(N, generator=torch.Generator().manual_seed(r)),
                producer=f"awe{r % 2}", kind="weight")
    columns = dict(led.items())
    if r > 3:
        del columns["select/small_loss"]
    metrics = {"train/loss": float(r) / 3, **({"late": -float(r)} if r >= 3 else {})}
    return "a" if r < 2 else "stage-b", r % 2, metrics, columns


def _append(w: HistoryWriter, rows: range) -> None:
    for r in rows:
        assert w.append_epoch(**_row(r)) == r


def _assert_rows(path, rows: int, row=_row, data=("clean_label", "noisy_label")) -> None:
    """The file holds exactly rows 0..rows-1 of ``row`` (:func:`_row`), value for value."""
    expected = [row(r) for r in range(rows)]
    with History(path) as h:
        assert len(h) == rows
        assert h.epochs() == [(e["stage"], e["epoch"]) for e in expected]
        for name in h.metric_names():
            want = [e["metrics"].get(name, np.nan) for e in expected]
            np.testing.assert_array_equal(h.metric(name), np.array(want), err_msg=name)
        for name in h.column_names():
            got, producers = h.column(name), h.producers(name)
            assert got.shape[0] == len(producers) == rows
            for r, e in enumerate(expected):
                col = e["columns"].get(name)
                if col is None:
                    assert producers[r] == ""
                    continue
                want = np.asarray(col.data).astype(got.dtype)
                np.testing.assert_array_equal(got[r], want, err_msg=f"{name} row {r}")
                assert producers[r] == col.producer
        assert h.data_names() == sorted([*data, "transition_matrix"])
        n = h.data("noisy_label").shape[0]
        np.testing.assert_array_equal(h.data("noisy_label"), np.arange(n) % h.num_classes)
        assert h.format == "kdcore-history/2"


def test_rollback_keeps_exactly_the_first_rows_and_appends_after(tmp_path):
    w = _writer(tmp_path)
    _append(w, range(6))
    _assert_rows(tmp_path, 6)
    w.rollback(4)
    _assert_rows(tmp_path, 4)
    w.rollback(1)  # below the rows where the second stage, "late" and weight/awe began
    _assert_rows(tmp_path, 1)
    assert w.rows() == 1
    _append(w, range(1, 6))
    _assert_rows(tmp_path, 6)
    w.truncate(0)  # the engine's old name for it
    _assert_rows(tmp_path, 0)
    _append(w, range(2))
    _assert_rows(tmp_path, 2)


def test_rollback_keeps_chunking_filters_and_attributes(tmp_path):
    w = _writer(tmp_path)
    _append(w, range(4))
    with h5py.File(tmp_path / "history.h5") as f:
        before = {n: (f[n].dtype, f[n].chunks, f[n].maxshape, f[n].compression_opts,
                      dict(f[n].attrs)) for n in ("ledger/target", "metrics/train/loss")}
        root = dict(f.attrs)
    w.rollback(2)
    with h5py.File(tmp_path / "history.h5") as f:
        for n, (dtype, chunks, maxshape, opts, attrs) in before.items():
            assert (f[n].dtype, f[n].chunks, f[n].maxshape) == (dtype, chunks, maxshape)
            assert f[n].compression_opts == opts and dict(f[n].attrs) == attrs
        assert "32015" in str(f["ledger/target"]._filters)
        assert dict(f.attrs) == root


def test_per_epoch_names_are_fixed_size_codes(tmp_path):
    """Nothing per epoch goes through HDF5's global heap (variable-length data), whose
    half-written state a kill used to leave behind."""
    w = _writer(tmp_path)
    _append(w, range(5))
    with h5py.File(tmp_path / "history.h5") as f:
        per_epoch = [f"epochs/{n}" for n in f["epochs"]] + [
            f"{g}/{n}" for g in ("metrics", "ledger", "producers")
            for n in _leaves(f[g])]
        for name in per_epoch:
            assert f[name].dtype.kind in "biuf", name
            assert all(not h5py.check_vlen_dtype(f[name].attrs.get_id(a).dtype)
                       and h5py.check_string_dtype(f[name].attrs.get_id(a).dtype) is None
                       or a == "kind" for a in f[name].attrs), name
        assert f["strings"].dtype == np.dtype("S255")
        assert [s.decode() for s in f["strings"][:]] == ["", "a", "lp", "small_loss",
                                                         "stage-b", "awe1", "awe0"]


def _leaves(group):
    names = []
    group.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def test_an_update_that_fails_leaves_the_file_as_it_was(tmp_path):
    w = _writer(tmp_path)
    _append(w, range(2))
    before = (tmp_path / "history.h5").read_bytes()
    bad = _row(2)
    bad["metrics"] = {"train/loss": 1.0, "broken": "not a number"}  # fails after some writes
    with pytest.raises(ValueError):
        w.append_epoch(**bad)
    assert (tmp_path / "history.h5").read_bytes() == before
    assert not (tmp_path / "history.h5-journal").exists()
    _append(w, range(2, 4))
    _assert_rows(tmp_path, 4)


def test_add_data_replaces_and_survives_rollback(tmp_path):
    w = _writer(tmp_path)
    _append(w, range(2))
    w.add_data("ff/status", torch.arange(N))
    w.add_data("ff/status", torch.arange(N) * 2)
    w.rollback(1)
    with History(tmp_path) as h:
        np.testing.assert_array_equal(h.data("ff/status"), np.arange(N) * 2)
        assert len(h) == 1


def _assert_one_line_error(call, *words):
    from kdcore.errors import KdcoreError

    with pytest.raises(KdcoreError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    for word in words:
        assert word in message, message
    return message


def test_damaged_committed_rows_are_one_error_naming_overwrite(tmp_path):
    w = _writer(tmp_path)
    _append(w, range(3))
    _assert_one_line_error(lambda: w.rollback(4), "damaged", "--overwrite", "holds 3 epoch rows")
    # scribble over the compressed chunk of row 1 of the targets
    with h5py.File(tmp_path / "history.h5") as f:
        info = f["ledger/target"].id.get_chunk_info_by_coord((1, 0, 0))
    with open(tmp_path / "history.h5", "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    scribbled = (tmp_path / "history.h5").read_bytes()
    _assert_one_line_error(lambda: w.rollback(3), "damaged", "--overwrite")
    assert (tmp_path / "history.h5").read_bytes() == scribbled  # a failed rollback changes nothing
    assert not (tmp_path / "history.h5.rebuild").exists()
    w.rollback(1)  # rows before the damage are still there to keep
    _assert_rows(tmp_path, 1)


def test_a_truncated_or_garbage_file_is_one_error_for_every_entry_point(tmp_path):
    w = _writer(tmp_path)
    _append(w, range(3))
    whole = (tmp_path / "history.h5").read_bytes()
    rng = np.random.default_rng(0)
    for content in (whole[: len(whole) // 2], whole[:100], b"",
                    rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
                    b"\x89HDF\r\n\x1a\n" + bytes(len(whole) - 8)):
        (tmp_path / "history.h5").write_bytes(content)
        _assert_one_line_error(lambda: open_history(tmp_path), "history.h5")
        _assert_one_line_error(lambda: History(tmp_path / "history.h5"), "history.h5")
        _assert_one_line_error(w.rows, "history.h5")
        _assert_one_line_error(lambda: w.append_epoch(**_row(3)), "history.h5")
        _assert_one_line_error(lambda: w.add_data("x", torch.zeros(3)), "history.h5")
        _assert_one_line_error(lambda: w.rollback(1), "damaged", "--overwrite")
    (tmp_path / "history.h5").unlink()
    _assert_one_line_error(lambda: w.rollback(0), "no history")


def _format_1(path, rows: int) -> None:
    """A history as kdcore-history/1 wrote it: variable-length stage strings and a JSON list
    of producers in an attribute per ledger column."""
    with h5py.File(path, "w") as f:
        f.attrs.update(format="kdcore-history/1", recipe="[run]", versions="{}", num_classes=C,
                       class_names=json.dumps([str(i) for i in range(C)]))
        f.create_dataset("data/noisy_label", data=np.arange(N) % C)
        f.create_dataset("data/clean_label", data=np.arange(N) % C)
        f.create_dataset("data/transition_matrix", data=np.eye(C))
        f.create_dataset("epochs/stage", data=[_row(r)["stage"] for r in range(rows)],
                         dtype=h5py.string_dtype(), maxshape=(None,), chunks=(256,))
        f.create_dataset("epochs/epoch", data=[_row(r)["epoch"] for r in range(rows)],
                         dtype=np.int32, maxshape=(None,), chunks=(256,))
        f.create_dataset("metrics/train/loss", data=[_row(r)["metrics"]["train/loss"]
                                                     for r in range(rows)],
                         maxshape=(None,), chunks=(256,))
        t = f.create_dataset("ledger/target", data=np.stack(
            [_row(r)["columns"]["target"].data.numpy().astype(np.float16) for r in range(rows)]),
            maxshape=(None, N, C), chunks=(1, N, C))
        t.attrs["producers"] = json.dumps(["lp"] * rows)
        t.attrs["kind"] = "target"


def test_format_1_reads_and_resuming_converts_it(tmp_path):
    path = tmp_path / "history.h5"
    _format_1(path, 3)
    with History(path) as h:
        assert h.format == "kdcore-history/1"
        assert h.epochs() == [("a", 0), ("a", 1), ("stage-b", 0)]
        assert h.producers("target") == ["lp"] * 3
    w = HistoryWriter(path)
    _assert_one_line_error(lambda: w.append_epoch(**_row(3)), "kdcore-history/1", "resuming")
    w.rollback(2)
    with History(path) as h:
        assert h.format == "kdcore-history/2"
        assert h.epochs() == [("a", 0), ("a", 1)] and h.producers("target") == ["lp"] * 2
        np.testing.assert_array_equal(h.column("target", 1),
                                      _row(1)["columns"]["target"].data.numpy()
                                      .astype(np.float16))
    _append(w, range(2, 4))
    with History(path) as h:
        assert h.producers("target") == ["lp"] * 4
        assert h.producers("weight/awe") == ["", "", "", "awe1"]


def test_a_writer_told_not_to_wait_for_readers_stops_with_one_error(tmp_path):
    w = _writer(tmp_path)
    _append(w, range(1))
    w.lock_timeout_s, w.wait_for_readers = 0.2, False
    with History(tmp_path):
        _assert_one_line_error(lambda: w.append_epoch(**_row(1)), "held open", "close it")
    _append(w, range(1, 2))
    _assert_rows(tmp_path, 2)


def test_a_run_waits_for_a_reader_however_long_it_holds_the_file_and_says_so_once(
        tmp_path, monkeypatch):
    """A notebook's h5py.File left open on a live run's history stopped the run after a
    minute ("held open elsewhere", exit 2); the run now warns once and writes when it is
    closed."""
    import threading
    import time

    from loguru import logger

    w = _writer(tmp_path)
    _append(w, range(1))
    w.lock_timeout_s = 0.2
    warnings: list[str] = []
    sink = logger.add(warnings.append, level="WARNING", format="{message}")
    wrote = threading.Event()
    try:
        with h5py.File(tmp_path / "history.h5", "r"):  # HDF5's own shared lock
            def append() -> None:
                w.append_epoch(**_row(1))
                wrote.set()

            writer = threading.Thread(target=append)
            writer.start()
            deadline = time.monotonic() + 30.0
            while not warnings and time.monotonic() < deadline:
                time.sleep(0.02)
            assert warnings and not wrote.is_set()  # it said why it waits, and waits on
        assert wrote.wait(30.0)
        writer.join()
    finally:
        logger.remove(sink)
    assert [m.strip() for m in warnings] == [
        f"{tmp_path / 'history.h5'} is held open elsewhere (an h5py.File, or a History in a "
        "with block); the run waits until it is closed to write its history"]
    _assert_rows(tmp_path, 2)


def test_a_writer_others_wait_on_gives_up_before_they_do_and_says_what_to_do(tmp_path):
    """Rank 0 of a distributed run: its other processes wait in a collective that fails at
    the process group's timeout, so its wait for a reader is bounded
    (``distributed.reader_waits``) and ends with its own message; the file as it was."""
    from loguru import logger

    w = _writer(tmp_path)
    _append(w, range(1))
    w.lock_timeout_s, w.reader_wait_s = 0.1, 0.2
    w.gave_up = "the run's other processes stop at the process group's timeout: --resume"
    warnings: list[str] = []
    sink = logger.add(warnings.append, level="WARNING", format="{message}")
    try:
        with h5py.File(tmp_path / "history.h5", "r"), pytest.raises(KdcoreError) as err:
            w.append_epoch(**_row(1))
    finally:
        logger.remove(sink)
    assert len(warnings) == 1 and "the run waits until it is closed" in warnings[0]
    assert str(err.value) == (
        f"{tmp_path / 'history.h5'} is held open elsewhere (a reader such as an open History "
        "or h5py.File, or a second run in this directory); the run's other processes stop at "
        "the process group's timeout: --resume")
    _assert_rows(tmp_path, 1)
    w.append_epoch(**_row(1))  # closed: the next write goes through
    _assert_rows(tmp_path, 2)


def test_a_history_kept_between_calls_holds_nothing_and_sees_new_rows(tmp_path):
    """``h = History(run)`` in a notebook, outside a with block: the writer never waits for it,
    and each call reads the rows written so far."""
    w = _writer(tmp_path)
    _append(w, range(1))
    w.wait_for_readers = False  # a held file would be an error, not a wait
    w.lock_timeout_s = 0.2
    h = History(tmp_path)
    assert len(h) == 1 and h.epochs() == [("a", 0)]
    _append(w, range(1, 3))
    assert len(h) == 3 and h.metric("train/loss").shape == (3,)
    with h:  # a block holds one view of the file, and the writer off
        _assert_one_line_error(lambda: w.append_epoch(**_row(3)), "held open")
        with h:  # nested: still held after the inner block
            assert len(h) == 3
        _assert_one_line_error(lambda: w.append_epoch(**_row(3)), "held open")
    _append(w, range(3, 4))
    assert len(h) == 4
    h.close()
    assert len(h) == 4  # close() lets go of the file; a later call reads it again


def test_a_name_the_history_does_not_hold_is_a_key_error_naming_what_it_holds(tiny_runs):
    """A typo in a notebook (``h.metric("test/student/ac")``) raised h5py's "Unable to
    synchronously open object"; it names the file, the closest name and the names held."""
    from kdcore.errors import KdcoreError, NotInHistory

    path = tiny_runs / "finished" / "history.h5"
    with History(tiny_runs / "finished") as h:
        cases = [
            (h.metric, "test/student/ac", f"{path} holds no metric 'test/student/ac' (did you "
             "mean 'test/student/acc'?); metrics: "),
            (h.column, "logits/studnet", f"{path} holds no column 'logits/studnet' (did you "
             "mean 'logits/student'?); columns: " + ", ".join(h.column_names())),
            (h.column_kind, "", f"{path} holds no column ''; columns: "),
            (h.producers, "zzz", f"{path} holds no column 'zzz'; columns: "),
            (h.data, "noisy", f"{path} holds no data array 'noisy' (did you mean "
             "'noisy_label'?); data arrays: "),
        ]
        for method, name, message in cases:
            with pytest.raises(NotInHistory) as err:
                method(name)
            assert isinstance(err.value, KeyError) and isinstance(err.value, KdcoreError)
            assert str(err.value).startswith(message), str(err.value)
        metrics = h.metric_names()
        assert len(metrics) > 10
        with pytest.raises(KeyError) as err:
            h.metric("nothing")
        assert str(err.value).endswith(", ".join(metrics[:10]) +
                                       f" and {len(metrics) - 10} more")


@pytest.mark.parametrize("count", [0, 10, 11])
def test_the_names_a_missing_name_lists_are_the_first_ten_and_a_count(tmp_path, count):
    from kdcore.errors import NotInHistory

    w = _writer(tmp_path)
    w.append_epoch(stage="s", epoch=0, metrics={f"m{i:02d}": 0.5 for i in range(count)},
                   columns={})
    names = [f"m{i:02d}" for i in range(count)]
    listed = (", ".join(names[:10]) + (" and 1 more" if count == 11 else "")) or "none"
    with History(tmp_path) as h, pytest.raises(NotInHistory) as err:
        h.metric("zzz")
    assert str(err.value) == f"{tmp_path / 'history.h5'} holds no metric 'zzz'; metrics: {listed}"
    with History(tmp_path) as h, pytest.raises(NotInHistory) as err:
        h.column("zzz")
    assert str(err.value).endswith("holds no column 'zzz'; columns: none")
    assert str(NotInHistory()) == ""  # (KeyError's own str would be "''")


@pytest.mark.parametrize(("first", "later"), [("select/s", "select/s/a"),
                                               ("select/s/a", "select/s"), ("a/b", "a/b/c/d")])
def test_a_column_in_the_place_of_an_earlier_rows_folder_is_one_line_and_writes_nothing(
        tmp_path, first, later):
    """A selector that returned one mask for every model in one stage and one per model in
    the next, under one label: h5py said 'Incompatible object (Dataset) already exists'."""
    from kdcore.failures import RunFailed

    def cols(*names):
        return {n: type("C", (), {"data": np.ones(50, np.bool_), "producer": "sel",
                                  "kind": "mask", "snapshot": True})() for n in names}

    w = _writer(tmp_path)
    w.append_epoch(stage="s", epoch=0, metrics={"ok": 1.0}, columns=cols(first, "ok/col"))
    message = (f"ledger columns '{first}' and '{later}' cannot both be kept: the history keeps "
               "a name with '/' as a folder of columns (give the component that writes one of "
               "them another label); the file is as before this row")
    with pytest.raises(RunFailed) as err:
        w.append_epoch(stage="s", epoch=1, metrics={"ok": 2.0}, columns=cols("ok/col", later))
    assert str(err.value) == message
    # two new ones of one row clash alike
    (tmp_path / "fresh").mkdir()
    fresh = _writer(tmp_path / "fresh")
    with pytest.raises(RunFailed, match="cannot both be kept"):
        fresh.append_epoch(stage="s", epoch=0, metrics={}, columns=cols(first, later))
    with History(tmp_path) as h:
        assert h.column_names() == sorted([first, "ok/col"]) and len(h.metric("ok")) == 1
    assert w.append_epoch(stage="s", epoch=1, metrics={"ok": 3.0}, columns=cols(first)) == 1


@pytest.mark.parametrize(("first", "later"), [("m/x", "m"), ("m", "m/x"), ("a/b", "a/b/c")])
def test_a_metric_in_the_place_of_an_earlier_rows_folder_is_one_line_and_writes_nothing(
        tmp_path, first, later):
    """h5py said 'name already exists' or 'Incompatible object (Dataset) already exists'; an
    epoch checks its own names only, so a name of an earlier row reached the write."""
    from kdcore.failures import RunFailed

    w = _writer(tmp_path)
    w.append_epoch(stage="s", epoch=0, metrics={first: 1.0, "ok": 1.0}, columns={})
    message = (f"metrics '{first}' and '{later}' cannot both be kept: the history keeps a name "
               "with '/' as a folder of metrics; the file is as before this row")
    with pytest.raises(RunFailed) as err:
        w.append_epoch(stage="s", epoch=1, metrics={"ok": 2.0, later: 1.0}, columns={})
    assert str(err.value) == message
    again = HistoryWriter(tmp_path / "history.h5")  # as a resumed run finds the file
    with pytest.raises(RunFailed, match="^" + re.escape(message) + "$"):
        again.append_epoch(stage="s", epoch=1, metrics={later: 1.0}, columns={})
    with History(tmp_path) as h:
        assert len(h.metric("ok")) == 1 and h.metric(first).tolist() == [1.0]
        assert later not in h.metric_names()
    assert again.append_epoch(stage="s", epoch=1, metrics={"ok": 3.0}, columns={}) == 1
