"""Writing ``history.h5`` so that no kill can cost more than the epoch row being written.

The layout is described in :mod:`kdcore.history`. How the writer keeps it safe:

* :meth:`HistoryWriter.create` builds the file under a temporary name and renames it into place,
  so a file at the path is always a complete one.
* Every later update (:meth:`~HistoryWriter.append_epoch`, :meth:`~HistoryWriter.add_data`)
  goes through a rollback journal (:mod:`kdcore.history_journal`): the original bytes of every
  page HDF5 overwrites are saved to ``history.h5-journal`` first, and deleting the journal
  commits the update. Whoever opens the file next (writer or reader) and finds a journal puts
  the saved pages back, which restores the last committed file byte for byte, wherever in
  HDF5's writes or its closing metadata flush the process died.
* :meth:`HistoryWriter.rollback` (on resume) rebuilds the file: it copies the first ``rows``
  epoch rows of every dataset into ``history.h5.rebuild`` (same types, chunking, filters and
  attributes; the ledger's compressed chunks are copied as they are, after decoding each once
  to check it), fsyncs it and renames it over the original. Reading the old file never needs
  it to be appendable, files of format 1 come out as format 2, and committed rows that cannot
  be read are a :class:`~kdcore.errors.KdcoreError` that says to start again with
  ``--overwrite``.
* Nothing in the file grows in place per epoch beyond the datasets' own rows: the stage of each
  row and the producer of each ledger snapshot are int32 codes into ``/strings``, a table of
  fixed-length names that gains a row only when a name is new. (Format 1 rewrote a JSON list
  attribute per column and a variable-length string per row every epoch, both in HDF5's global
  heap: the source of "Expected global heap object size does not match" after a kill.)

The file keeps HDF5's default (oldest) format bounds, so HDF5 1.8 and later read it.
``libver="latest"`` saves about 0.5 ms of an 11 ms append, but its superblock then carries
"open for write" flags that a kill leaves set, and such a file refuses to open, even read-only,
until ``h5clear`` runs: a file copied away without its journal would be lost.

The format's constants, its checks and opening a file for reading are in
:mod:`kdcore.history_layout`; the rebuild, in :mod:`kdcore.history_rebuild`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
from loguru import logger

from kdcore import interrupts
from kdcore.errors import KdcoreError, os_reason
from kdcore.history_forecast import DiskForecast
from kdcore.history_journal import JournaledFile, locked, recover, shielded_new_file
from kdcore.history_layout import (
    FORMAT,
    GONE,
    LOCK_TIMEOUT_S,
    NAME_BYTES,
    READABLE,
    ROW_CHUNKS,
    check_layout,
    damaged,
    leaf_names,
    new_codes,
    one_line,
    open_readable,
    replace_file,
    string_table,
)
from kdcore.history_names import check_new_column, check_new_metric
from kdcore.history_rebuild import rebuild
from kdcore.history_values import (
    CHECKSUMMED,
    FILL,
    compression,
    host,
    storage_loss,
    store_dtype,
    version,
    widened,
)
from kdcore.history_values import as_numpy as _as_numpy  # a seam tests patch

if TYPE_CHECKING:
    from kdcore.ledger import Column

# what ``from kdcore.history_writer import ...`` has always offered
__all__ = ["FORMAT", "LOCK_TIMEOUT_S", "NAME_BYTES", "READABLE", "HistoryWriter", "check_layout",
           "damaged", "leaf_names", "one_line", "open_readable"]

class _Index:
    """What the writer would otherwise look up in the file every epoch: the metric and ledger
    dataset names (a walk of the groups costs more than the epoch's metrics themselves) and the
    string table's codes."""

    def __init__(self, f: h5py.File, path: Path):
        fmt = f.attrs.get("format")
        if fmt != FORMAT:
            raise KdcoreError(f"{path} has format {fmt!r}; only {FORMAT} takes new rows "
                              "(resuming the run converts it)")
        self.metrics = set(leaf_names(f["metrics"]))
        self.ledger = set(leaf_names(f["ledger"]))
        self.codes = {s.decode(): i for i, s in enumerate(f["strings"][:])}
        # column -> (its data, that tensor's version, kind, row) as this process last wrote it
        self.written: dict[str, tuple[Any, int, str, int]] = {}

    def unchanged(self, name: str, data: Any, kind: str, row: int | None = None) -> bool:
        """Whether ``data`` is the very tensor, untouched since (its version counter has not
        moved), that went into column ``name`` at ``row`` (default: at any row)."""
        last = self.written.get(name)
        return (last is not None and last[0] is data and last[2] == kind
                and last[1] == version(data) >= 0 and (row is None or last[3] == row))

    def code(self, f: h5py.File, name: str) -> int:
        code = self.codes.get(name)
        if code is None:
            raw = name.encode()
            if len(raw) > NAME_BYTES:
                raise KdcoreError(f"name '{name[:40]}...' is longer than {NAME_BYTES} bytes, "
                                  "the most the history stores")
            table = f["strings"]
            code = table.shape[0]
            table.resize((code + 1,))
            table[code] = raw
            self.codes[name] = code
        return code


class HistoryWriter:
    """Appends epochs to ``history.h5``; every update is all or nothing, whatever kills it.

    Args:
        path: the file; created by :meth:`create`, appended to by :meth:`append_epoch`.
    """

    lock_timeout_s = LOCK_TIMEOUT_S  # how long an update waits for readers before it says so
    #: past lock_timeout_s, an update warns once and waits on rather than fail: a notebook's
    #: h5py.File left open on a live run's history must not stop the run
    wait_for_readers = True
    reader_wait_s = math.inf  # after the warning (distributed.reader_wait_s); then gave_up
    gave_up = "close it and try again"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._index: _Index | None = None
        self._forecast = DiskForecast(self.path)
        self._lossy: set[str] = set()  # columns warned of what their stored copy lost

    # -- creating ------------------------------------------------------------------------------

    def create(
        self,
        *,
        recipe_toml: str,
        versions: Mapping[str, str],
        num_classes: int,
        class_names: list[str],
        constants: Mapping[str, Any],
        transition_matrix: Any,
        setup: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the run's constants; an existing file is replaced (atomically). ``setup``
        (JSON data: the device, the processes, torch's version) becomes the ``setup``
        attribute."""
        self._index = None
        tmp = self.path.with_name(self.path.name + ".create")
        try:
            self._create(tmp, recipe_toml, versions, num_classes, class_names, constants,
                         transition_matrix, setup or {})
        except BaseException as exc:  # the disk, or Ctrl-C: no half file left behind
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise KdcoreError(f"cannot create {self.path}: {os_reason(exc)}") from None
            raise
        replace_file(tmp, self.path)

    @staticmethod
    def _create(tmp: Path, recipe_toml: str, versions: Mapping[str, str], num_classes: int,
                class_names: list[str], constants: Mapping[str, Any], transition_matrix: Any,
                setup: Mapping[str, Any]) -> None:
        with shielded_new_file(tmp) as fileobj, h5py.File(fileobj, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["recipe"] = recipe_toml
            f.attrs["versions"] = json.dumps(dict(versions))
            f.attrs["setup"] = json.dumps(dict(setup))
            f.attrs["num_classes"] = num_classes
            f.attrs["class_names"] = json.dumps(list(class_names))
            data = f.create_group("data")
            for name, values in constants.items():
                data.create_dataset(name, data=host(values), **compression(), **CHECKSUMMED)
            data.create_dataset("transition_matrix", data=host(transition_matrix),
                                **CHECKSUMMED)
            ep = f.create_group("epochs")
            new_codes(ep, "stage")
            ep.create_dataset("epoch", shape=(0,), maxshape=(None,), dtype=np.int32,
                              chunks=ROW_CHUNKS, **CHECKSUMMED)
            for group in ("metrics", "ledger", "producers"):
                f.create_group(group)
            string_table(f, [""])

    # -- updating ------------------------------------------------------------------------------

    @contextmanager
    def _update(self) -> Iterator[tuple[h5py.File, _Index]]:
        """The file open for one journaled update, committed when the block completes; an
        interrupt arriving meanwhile is raised after (HDF5 calls back into Python here)."""
        # held only once the lock is taken: waiting for a reader stays interruptible
        waiting = self._held_open if self.wait_for_readers else None
        with locked(self.path, exclusive=True, timeout=self.lock_timeout_s, on_held=waiting,
                    then_wait=self.reader_wait_s, gave_up=self.gave_up,
                    missing=GONE) as fd, interrupts.held():
            if recover(self.path):
                self._index = None  # another process's update died and was undone
            try:
                journaled = JournaledFile(fd, self.path)
            except OSError as exc:
                raise KdcoreError(f"{self.path}: writing the history failed ({os_reason(exc)}); "
                                  "the file is as before this write") from None
            try:
                try:
                    f = h5py.File(journaled, "r+")
                except OSError as exc:
                    raise damaged(self.path, exc) from None
                with f:
                    if self._index is None:
                        self._index = _Index(f, self.path)
                    yield f, self._index
                if journaled.failure is not None:  # HDF5 never saw it (JournaledFile.write)
                    raise journaled.failure
            except BaseException as exc:
                # the file goes back to its last commit now, and what we cached may be ahead
                self._index = None
                journaled.abandon()
                # HDF5's errors (KeyError: an object the layout has is missing)
                if isinstance(exc, (OSError, RuntimeError, KeyError)):
                    cause = journaled.failure or exc  # the disk's error, not HDF5's echo of it
                    raise KdcoreError(f"{self.path}: writing the history failed "
                                      f"({os_reason(cause)}); the file is as before this write; "
                                      "if it is damaged, start the run again with --overwrite"
                                      ) from None
                raise
            journaled.commit()

    def _held_open(self) -> None:
        logger.warning(f"{self.path} is held open elsewhere (an h5py.File, or a History in a "
                       f"with block); the run waits until it is closed to write its history")

    def add_data(self, name: str, values: Any) -> None:
        """Write (or replace) ``/data/<name>``: an array stored once, not per epoch."""
        arr = host(values)
        with self._update() as (f, _):
            group = f["data"]
            if name in group:
                del group[name]
            group.create_dataset(name, data=arr, **(compression() if arr.size > 1 else {}),
                                 **(CHECKSUMMED if arr.ndim else {}))  # a scalar has no chunks

    def rows(self) -> int:
        """How many epochs the file holds."""
        with open_readable(self.path, self.lock_timeout_s, missing=GONE) as f:
            return int(f["epochs/epoch"].shape[0])

    def append_epoch(
        self,
        *,
        stage: str,
        epoch: int,
        metrics: Mapping[str, float],
        columns: Mapping[str, Column],
        rows_total: int | None = None,
    ) -> int:
        """Append one epoch row: its metrics and a snapshot of the ledger columns.

        ``columns`` maps names to :class:`~kdcore.ledger.Column` (or anything with its
        ``data``, ``producer``, ``kind`` and ``snapshot``; ``data`` a tensor or numpy array).
        With ``rows_total``, the rows the file holds when the run ends, the first row of each
        stage warns if the rest would not fit on the disk at its size
        (:mod:`kdcore.history_forecast`).

        Returns:
            the row number written; once this returns the row is committed.
        """
        # convert before taking the file (the lock is held only for the write itself), but not
        # a column that is the tensor written last epoch, untouched: its row is a copy
        index = self._index
        snapshots = [(name, c, None if index is not None and index.unchanged(name, c.data, c.kind)
                      else _as_numpy(c.data, store_dtype(c.kind, c.data)))
                     for name, c in columns.items() if c.snapshot]
        for name, column, arr in snapshots:
            lost = None if arr is None or name in self._lossy else storage_loss(column.data, arr)
            if lost:
                self._lossy.add(name)  # said once a run
                logger.warning(f"the history stores column '{name}' ({column.kind}) as "
                               f"{arr.dtype}: {lost}")
        if rows_total is not None:
            self._forecast.before(stage)
        with self._update() as (f, index):
            row = int(f["epochs/epoch"].shape[0])
            _append_value(_open(f, "epochs/epoch"), row, np.int32(epoch))
            _append_value(_open(f, "epochs/stage"), row, np.int32(index.code(f, stage)))
            # datasets opened through the low-level API: the high-level lookup of ~50 names
            # per epoch costs more than their writes
            mgroup = f["metrics"]
            for name, value in metrics.items():
                if name in index.metrics:
                    dsid = _open(mgroup, name)
                else:
                    check_new_metric(name, index.metrics)
                    dsid = mgroup.create_dataset(
                        name, shape=(row,), maxshape=(None,), dtype=np.float64, chunks=ROW_CHUNKS,
                        fillvalue=np.nan, **CHECKSUMMED).id
                    index.metrics.add(name)
                _append_value(dsid, row, np.float64(value))
            for name in index.metrics.difference(metrics):
                _append_value(_open(mgroup, name), row, np.float64(np.nan))
            lgroup, pgroup = f["ledger"], f["producers"]
            written = set()
            for name, column, arr in snapshots:
                kind = column.kind
                if arr is None and not index.unchanged(name, column.data, kind, row - 1):
                    arr = _as_numpy(column.data, store_dtype(kind, column.data))
                if name in index.ledger:
                    ds = lgroup[name]
                    if arr is not None and arr.dtype != ds.dtype:  # a mask turned soft, or back
                        if ds.dtype == np.bool_:
                            ds = widened(lgroup, name, arr.dtype.type)
                        arr = arr.astype(ds.dtype)
                else:
                    assert arr is not None  # a new column was not written before
                    check_new_column(name, index.ledger)
                    dtype = arr.dtype.type
                    ds = lgroup.create_dataset(
                        name, shape=(row, *arr.shape), maxshape=(None, *arr.shape), dtype=dtype,
                        chunks=(1, *arr.shape), fillvalue=FILL[dtype], **compression(),
                        **CHECKSUMMED,
                        # bytes grouped by significance first: float16 logits' high bytes
                        # compress, so Zstd has less to do (8% smaller, a little faster)
                        shuffle=True,
                    )
                    ds.attrs["kind"] = kind
                    new_codes(pgroup, name, row)
                    index.ledger.add(name)
                ds.resize((row + 1, *ds.shape[1:]))
                if arr is None:  # last row's compressed chunk, as it is: no conversion, no Zstd
                    origin = (row - 1,) + (0,) * (ds.ndim - 1)
                    mask, chunk = ds.id.read_direct_chunk(origin)
                    ds.id.write_direct_chunk((row,) + origin[1:], chunk, mask)
                else:
                    ds[row] = arr
                index.written[name] = (column.data, version(column.data), kind, row)
                _append_value(_open(pgroup, name), row, np.int32(index.code(f, column.producer)))
                written.add(name)
            for name in index.ledger.difference(written):
                # a column of an earlier stage: keep rows aligned (fill value, no producer)
                ds = lgroup[name]
                ds.resize((row + 1, *ds.shape[1:]))
                _append_value(_open(pgroup, name), row, np.int32(0))
        if rows_total is not None:
            self._forecast.after(row, rows_total)
        return row

    # -- resuming ------------------------------------------------------------------------------

    def rollback(self, rows: int) -> None:
        """Make the file hold exactly its first ``rows`` epoch rows, readable and appendable.

        For ``--resume``: ``rows`` is what the checkpoint recorded. Whatever a kill during an
        earlier :meth:`create`, :meth:`append_epoch`, :meth:`add_data` or :meth:`rollback`
        left, the result holds those rows of every epoch, metric and ledger dataset (with
        their producers), ``/data`` as last committed, and the root attributes. Datasets
        first written after row ``rows`` stay, holding only their fill value in those rows,
        as in a run that never stopped.

        Raises:
            KdcoreError: the file is missing, or its first ``rows`` rows cannot be read (one
                line; starting again with ``--overwrite`` is the way out).
        """
        if rows < 0:
            raise ValueError(f"rows must be >= 0, got {rows}")
        if not self.path.is_file():
            raise KdcoreError(f"no history at {self.path}; start the run again with --overwrite")
        self._index = None
        rebuild(self.path, rows, self.lock_timeout_s)

    truncate = rollback  # the name the engine used before rollback existed


_ONE = h5py.h5s.create_simple((1,))


def _open(group: h5py.Group, name: str) -> h5py.h5d.DatasetID:
    return h5py.h5d.open(group.id, name.encode())


def _append_value(dsid: h5py.h5d.DatasetID, row: int, value: np.generic) -> None:
    """``ds.resize((row + 1,)); ds[row] = value`` through h5py's low-level calls: a run writes
    every metric every epoch, and the high-level path costs twice as much."""
    dsid.set_extent((row + 1,))
    space = dsid.get_space()
    space.select_hyperslab((row,), (1,))
    dsid.write(_ONE, space, np.array([value]))
