"""Rebuilding ``history.h5`` from its first rows: what :meth:`HistoryWriter.rollback
<kdcore.history_writer.HistoryWriter.rollback>` does on resume.

:func:`rebuild` copies the first ``rows`` epoch rows of every dataset into
``history.h5.rebuild`` (same types, chunking, filters and attributes; the ledger's compressed
chunks are copied as they are, after decoding each once to check it), fsyncs it and renames it
over the original. Reading the old file never needs it to be appendable, files of format 1 come
out as format 2, and committed rows that cannot be read are a
:class:`~kdcore.errors.KdcoreError` that says to start again with ``--overwrite``.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the Zstandard filter: the ledger's chunks are decoded)
import numpy as np

from kdcore.errors import KdcoreError
from kdcore.history_journal import locked, recover, shielded_new_file
from kdcore.history_layout import (
    FORMAT,
    check_layout,
    damaged,
    leaf_names,
    new_codes,
    one_line,
    replace_file,
    string_table,
)


def rebuild(path: Path, rows: int, timeout: float) -> None:
    """Replace the history at ``path`` by a format-2 copy of its first ``rows`` epoch rows,
    under the file's exclusive lock (waiting up to ``timeout``), first undoing an update a
    killed process left half done.

    Raises:
        KdcoreError: ``path`` cannot be read, holds fewer than ``rows`` readable rows, or the
            copy could not be written (the file is then untouched).
    """
    tmp = path.with_name(path.name + ".rebuild")
    try:
        with locked(path, exclusive=True, timeout=timeout):
            recover(path)
            try:
                src = h5py.File(path, "r", locking=False)
            except OSError as exc:
                raise damaged(path, exc) from None
            with src, shielded_new_file(tmp) as fileobj, h5py.File(fileobj, "w") as dst:
                _Rebuild(src, dst, path).copy(rows)
            replace_file(tmp, path)
    except OSError as exc:  # writing the copy failed (a full disk): the file is untouched
        raise KdcoreError(f"{path}: could not rebuild the history "
                          f"({one_line(exc)})") from None
    finally:
        tmp.unlink(missing_ok=True)


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
        new_codes(epochs, "stage", self.encode(stages))
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
            new_codes(producers, name, self.encode(made_by))
        string_table(dst, self.names)

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
