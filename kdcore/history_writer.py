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
``libver="latest"`` (or ``"v110"``) was measured and left out: it saves about 0.5 ms of an
11 ms append, but its superblock then carries "open for write" flags that a kill leaves set, and
such a file refuses to open at all, even read-only, until ``h5clear`` runs; the journal undoes
that, but a file copied away without its journal would be lost rather than merely stale.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import hdf5plugin
import numpy as np

from kdcore.errors import KdcoreError
from kdcore.history_journal import JournaledFile, disk, is_hot, journal_path, locked, recover

if TYPE_CHECKING:
    from kdcore.ledger import Column

FORMAT = "kdcore-history/2"
READABLE = ("kdcore-history/1", FORMAT)  # format 1: string stages, JSON producer attributes
NAME_BYTES = 255  # the longest stage or component name the string table holds (UTF-8)
LOCK_TIMEOUT_S = 60.0
_STORE_DTYPE = {"target": np.float16, "weight": np.float16, "value": np.float16,
                "exact": np.float32, "mask": np.bool_, "label": np.int32}
_FILL = {np.float16: np.nan, np.float32: np.nan, np.bool_: False, np.int32: -1}
_ROWS = (256,)  # chunk of the one-value-per-row datasets


def _compression() -> Mapping[str, Any]:
    # level 1: as small as level 3 on these columns (float16 rows), and faster
    return hdf5plugin.Zstd(clevel=1)


def _as_numpy(values: Any, dtype: Any) -> np.ndarray:
    """A column's values as ``dtype``; numpy arrays pass, tensors convert on torch's side
    (vectorised, on the GPU when the ledger is there) before the copy to the host."""
    if isinstance(values, np.ndarray):
        return values.astype(dtype, copy=False)
    import torch

    as_torch = {np.float16: torch.float16, np.float32: torch.float32, np.bool_: torch.bool,
                np.int32: torch.int32}[dtype]
    return values.detach().to(as_torch).cpu().numpy()


def _host(values: Any) -> np.ndarray:
    return values if isinstance(values, np.ndarray) else values.detach().cpu().numpy()


def one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())


def damaged(path: Path, cause: BaseException | str) -> KdcoreError:
    return KdcoreError(f"{path}: the history is damaged ({one_line(cause)}); start the run "
                       "again with --overwrite")


def leaf_names(group: h5py.Group) -> list[str]:
    names: list[str] = []
    group.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
    return names


def check_layout(file: h5py.File, path: Path) -> None:
    """Raise unless ``file`` is a kdcore history this version reads."""
    fmt = file.attrs.get("format")
    if fmt not in READABLE:
        raise KdcoreError(f"{path} is not a kdcore history (format {FORMAT} expected, "
                          f"found {fmt!r})")
    missing = [p for p in ("epochs/epoch", "epochs/stage", "metrics", "ledger", "data")
               if p not in file]
    if missing:
        raise damaged(path, f"no {', '.join(missing)}")


def open_readable(path: Path, timeout: float = LOCK_TIMEOUT_S) -> h5py.File:
    """Open ``path`` for reading, first undoing an update a killed process left half done.

    Raises:
        KdcoreError: missing, locked past ``timeout``, not HDF5, damaged, or not a history.
    """
    for _ in range(3):
        if is_hot(path):
            try:
                with locked(path, exclusive=True, timeout=timeout):
                    recover(path)
            except PermissionError:
                pass  # a read-only copy: read it as it is
        with locked(path, exclusive=False, timeout=timeout):
            # a writer holds the lock while its journal exists: hot now means it died
            if is_hot(path) and os.access(path, os.W_OK):
                continue
            try:
                file = h5py.File(path, "r")  # HDF5's own shared lock goes with ours
            except OSError as exc:
                raise KdcoreError(f"{path} is damaged or not an HDF5 file ({one_line(exc)}); "
                                  "start the run again with --overwrite") from None
            break
    else:
        raise KdcoreError(f"{path}: an interrupted write could not be undone; try again")
    try:
        check_layout(file, path)
    except BaseException:
        file.close()
        raise
    return file


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


def _new_codes(group: h5py.Group, name: str, codes: np.ndarray | int = 0) -> h5py.Dataset:
    """A per-row int32 code dataset (stage, producer); 0 is the empty name."""
    data = np.asarray(codes, dtype=np.int32) if np.ndim(codes) else None
    shape = (int(codes),) if data is None else data.shape
    return group.create_dataset(name, shape=shape, data=data, maxshape=(None,), dtype=np.int32,
                                chunks=_ROWS, fillvalue=0)


def _string_table(f: h5py.File, names: list[str]) -> None:
    f.create_dataset("strings", data=np.array([n.encode() for n in names],
                                              dtype=f"S{NAME_BYTES}"),
                     maxshape=(None,), chunks=(64,))


class HistoryWriter:
    """Appends epochs to ``history.h5``; every update is all or nothing, whatever kills it.

    Args:
        path: the file; created by :meth:`create`, appended to by :meth:`append_epoch`.
    """

    lock_timeout_s = LOCK_TIMEOUT_S  # how long an update waits for readers to close the file

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._index: _Index | None = None

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
    ) -> None:
        """Write the run's constants; an existing file is replaced (atomically)."""
        self._index = None
        tmp = self.path.with_name(self.path.name + ".create")
        with h5py.File(tmp, "w", locking=False) as f:
            f.attrs["format"] = FORMAT
            f.attrs["recipe"] = recipe_toml
            f.attrs["versions"] = json.dumps(dict(versions))
            f.attrs["num_classes"] = num_classes
            f.attrs["class_names"] = json.dumps(list(class_names))
            data = f.create_group("data")
            for name, values in constants.items():
                data.create_dataset(name, data=_host(values), **_compression())
            data.create_dataset("transition_matrix", data=_host(transition_matrix))
            ep = f.create_group("epochs")
            _new_codes(ep, "stage")
            ep.create_dataset("epoch", shape=(0,), maxshape=(None,), dtype=np.int32,
                              chunks=_ROWS)
            for group in ("metrics", "ledger", "producers"):
                f.create_group(group)
            _string_table(f, [""])
        _replace(tmp, self.path)

    # -- updating ------------------------------------------------------------------------------

    @contextmanager
    def _update(self) -> Iterator[tuple[h5py.File, _Index]]:
        """The file open for one journaled update, committed when the block completes."""
        with locked(self.path, exclusive=True, timeout=self.lock_timeout_s) as fd:
            if recover(self.path):
                self._index = None  # another process's update died and was undone
            journaled = JournaledFile(fd, self.path)
            try:
                try:
                    f = h5py.File(journaled, "r+")
                except OSError as exc:
                    raise damaged(self.path, exc) from None
                with f:
                    if self._index is None:
                        self._index = _Index(f, self.path)
                    yield f, self._index
            except BaseException as exc:
                # the file goes back to its last commit now, and what we cached may be ahead
                self._index = None
                journaled.abandon()
                # HDF5's errors (KeyError: an object the layout has is missing)
                if isinstance(exc, (OSError, RuntimeError, KeyError)):
                    raise KdcoreError(f"{self.path}: writing the history failed "
                                      f"({one_line(exc)}); the file is as before this write; "
                                      "if it is damaged, start the run again with --overwrite"
                                      ) from None
                raise
            journaled.commit()

    def add_data(self, name: str, values: Any) -> None:
        """Write (or replace) ``/data/<name>``: an array stored once, not per epoch."""
        arr = _host(values)
        with self._update() as (f, _):
            group = f["data"]
            if name in group:
                del group[name]
            group.create_dataset(name, data=arr, **(_compression() if arr.size > 1 else {}))

    def rows(self) -> int:
        """How many epochs the file holds."""
        with open_readable(self.path, self.lock_timeout_s) as f:
            return int(f["epochs/epoch"].shape[0])

    def append_epoch(
        self,
        *,
        stage: str,
        epoch: int,
        metrics: Mapping[str, float],
        columns: Mapping[str, Column],
    ) -> int:
        """Append one epoch row: its metrics and a snapshot of the ledger columns.

        ``columns`` maps names to :class:`~kdcore.ledger.Column` (or anything with its
        ``data``, ``producer``, ``kind`` and ``snapshot``; ``data`` a tensor or numpy array).

        Returns:
            the row number written; once this returns the row is committed.
        """
        # convert before taking the file: the lock is held only for the write itself
        snapshots = [(name, c.producer, c.kind, _as_numpy(c.data, _STORE_DTYPE[c.kind]))
                     for name, c in columns.items() if c.snapshot]
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
                    dsid = mgroup.create_dataset(
                        name, shape=(row,), maxshape=(None,), dtype=np.float64, chunks=_ROWS,
                        fillvalue=np.nan).id
                    index.metrics.add(name)
                _append_value(dsid, row, np.float64(value))
            for name in index.metrics.difference(metrics):
                _append_value(_open(mgroup, name), row, np.float64(np.nan))
            lgroup, pgroup = f["ledger"], f["producers"]
            written = set()
            for name, producer, kind, arr in snapshots:
                if name in index.ledger:
                    ds = lgroup[name]
                else:
                    dtype = _STORE_DTYPE[kind]
                    ds = lgroup.create_dataset(
                        name, shape=(row, *arr.shape), maxshape=(None, *arr.shape), dtype=dtype,
                        chunks=(1, *arr.shape), fillvalue=_FILL[dtype], **_compression(),
                    )
                    ds.attrs["kind"] = kind
                    _new_codes(pgroup, name, row)
                    index.ledger.add(name)
                ds.resize((row + 1, *ds.shape[1:]))
                ds[row] = arr
                _append_value(_open(pgroup, name), row, np.int32(index.code(f, producer)))
                written.add(name)
            for name in index.ledger.difference(written):
                # a column of an earlier stage: keep rows aligned (fill value, no producer)
                ds = lgroup[name]
                ds.resize((row + 1, *ds.shape[1:]))
                _append_value(_open(pgroup, name), row, np.int32(0))
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
        tmp = self.path.with_name(self.path.name + ".rebuild")
        try:
            with locked(self.path, exclusive=True, timeout=self.lock_timeout_s):
                recover(self.path)
                try:
                    src = h5py.File(self.path, "r", locking=False)
                except OSError as exc:
                    raise damaged(self.path, exc) from None
                with src, h5py.File(tmp, "w", locking=False) as dst:
                    _Rebuild(src, dst, self.path).copy(rows)
                _replace(tmp, self.path)
        except OSError as exc:  # writing the copy failed (a full disk): the file is untouched
            raise KdcoreError(f"{self.path}: could not rebuild the history "
                              f"({one_line(exc)})") from None
        finally:
            tmp.unlink(missing_ok=True)

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


def _replace(tmp: Path, path: Path) -> None:
    """Rename the complete ``tmp`` over ``path`` so that it survives a crash of the machine."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        disk.fsync(fd)
    finally:
        os.close(fd)
    # a journal of the file being replaced must not be applied to its successor
    journal = journal_path(path)
    if journal.exists():
        disk.unlink(journal)
    disk.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        disk.fsync(fd)
    finally:
        os.close(fd)


class _Rebuild:
    """Copy the first rows of a (format 1 or 2) history into a new format-2 file."""

    def __init__(self, src: h5py.File, dst: h5py.File, path: Path):
        self.src, self.dst, self.path = src, dst, path
        self.names = [""]
        self.codes = {"": 0}
        self.table: list[str] | None = None  # the old file's string table, once read

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Errors while reading the old file mean it is damaged."""
        try:
            yield
        except KdcoreError:
            raise
        except Exception as exc:
            raise damaged(self.path, exc) from None

    def encode(self, names: list[str]) -> np.ndarray:
        for n in names:
            if n not in self.codes:
                self.codes[n] = len(self.names)
                self.names.append(n)
        return np.array([self.codes[n] for n in names], dtype=np.int32)

    def copy(self, rows: int) -> None:
        src, dst = self.src, self.dst
        with self.reading():
            check_layout(src, self.path)
            held = int(src["epochs/epoch"].shape[0])
            metric_names = leaf_names(src["metrics"])
            ledger_names = leaf_names(src["ledger"])
        if held < rows:
            raise damaged(self.path, f"it holds {held} epoch rows, the checkpoint {rows}")
        with self.reading():
            stages = self.decoded("epochs/stage", rows)
            for name in src.attrs:
                _copy_attr(src, dst, name)
            # /data is not per epoch: as last committed (H5Ocopy keeps layout and filters)
            src.copy(src["data"], dst, name="data")
        dst.attrs["format"] = FORMAT
        epochs = dst.create_group("epochs")
        _new_codes(epochs, "stage", self.encode(stages))
        self.rows("epochs/epoch", epochs, "epoch", rows)
        metrics = dst.create_group("metrics")
        for name in metric_names:
            self.rows(f"metrics/{name}", metrics, name, rows)
        ledger, producers = dst.create_group("ledger"), dst.create_group("producers")
        for name in ledger_names:
            with self.reading():
                attrs = src["ledger"][name].attrs
                if "producers" in attrs:  # format 1: a JSON list
                    made_by = json.loads(attrs["producers"])[:rows]
                    made_by += [""] * (rows - len(made_by))
                else:
                    made_by = self.decoded(f"producers/{name}", rows)
            self.rows(f"ledger/{name}", ledger, name, rows)
            _new_codes(producers, name, self.encode(made_by))
        _string_table(dst, self.names)

    def decoded(self, where: str, rows: int) -> list[str]:
        """The first ``rows`` names of a per-row name dataset: codes (format 2) or strings."""
        ds = self.src[where]
        if ds.shape[0] < rows:
            raise damaged(self.path, f"{where} holds {ds.shape[0]} of {rows} rows")
        values = ds[:rows]
        if ds.dtype.kind not in "iu":
            return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
        if self.table is None:
            self.table = [s.decode() for s in self.src["strings"][:]]
        return [self.table[c] for c in values]

    def rows(self, where: str, group: h5py.Group, name: str, rows: int) -> None:
        """Copy the first ``rows`` rows of the old file's ``where`` into a dataset made like it
        (type, chunks, filters, fill value, attributes) at ``group/name``."""
        with self.reading():
            src = self.src[where]
            if src.shape[0] < rows:
                raise damaged(self.path, f"{where} holds {src.shape[0]} of {rows} rows")
            parent, base = posixpath.split(name)
            space = h5py.h5s.create_simple(
                (rows, *src.shape[1:]),
                tuple(h5py.h5s.UNLIMITED if m is None else m for m in src.maxshape))
            dcpl, dtype = src.id.get_create_plist(), src.id.get_type()
            attrs = [a for a in src.attrs if a != "producers"]
        into = group.require_group(parent) if parent else group
        dst = h5py.Dataset(h5py.h5d.create(into.id, base.encode(), dtype, space, dcpl=dcpl))
        with self.reading():
            for attr in attrs:
                _copy_attr(src, dst, attr)
        if src.chunks is not None and src.chunks == (1, *src.shape[1:]):
            # one chunk per row (the ledger): copy the compressed bytes as they are, after
            # decoding them once so that a bad chunk is found now rather than by a reader
            zero = (0,) * (src.ndim - 1)
            for i in range(rows):
                with self.reading():
                    if src.id.get_chunk_info_by_coord((i, *zero)).byte_offset is None:
                        continue  # never written: the fill value
                    src[i]
                    mask, chunk = src.id.read_direct_chunk((i, *zero))
                dst.id.write_direct_chunk((i, *zero), chunk, mask)
        elif rows:
            with self.reading():
                values = src[:rows]
            dst[:rows] = values


def _copy_attr(src: h5py.HLObject, dst: h5py.HLObject, name: str) -> None:
    dst.attrs.create(name, src.attrs[name], dtype=src.attrs.get_id(name).dtype)
