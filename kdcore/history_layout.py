"""What a ``history.h5`` is, as both the writer and the rebuild need it: the format's constants,
the checks that a file is a history this version reads, opening one for reading (undoing first
an update a killed process left half done), the per-row datasets and the string table every
history has, and the crash-safe rename that puts a complete new file in place.

The layout itself is described in :mod:`kdcore.history`; how updates stay safe, in
:mod:`kdcore.history_writer`.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from kdcore.errors import KdcoreError, one_line
from kdcore.history_journal import disk, is_hot, journal_path, locked, recover
from kdcore.history_names import FILE_SIZE, INPUT_DIGEST, RESUME_CHECKS  # noqa: F401 (their home before)
from kdcore.history_values import CHECKSUMMED
from kdcore.recipe.schema import NAME_BYTES  # the string table's width

FORMAT = "kdcore-history/2"
READABLE = ("kdcore-history/1", FORMAT)  # format 1: string stages, JSON producer attributes
LOCK_TIMEOUT_S = 60.0
#: what "no history at PATH" adds when a run's own history has gone (HistoryWriter)
GONE = (" any more: it, or its folder, was removed while it was being written; start the run "
        "again with --overwrite")
ROW_CHUNKS = (256,)  # chunk of the one-value-per-row datasets


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


def open_readable(path: Path, timeout: float = LOCK_TIMEOUT_S, missing: str = "") -> h5py.File:
    """Open ``path`` for reading, first undoing an update a killed process left half done;
    ``missing``: what the error adds when there is no file.

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
        with locked(path, exclusive=False, timeout=timeout, missing=missing):
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


def new_codes(group: h5py.Group, name: str, codes: np.ndarray | int = 0) -> h5py.Dataset:
    """A per-row int32 code dataset (stage, producer); 0 is the empty name."""
    data = np.asarray(codes, dtype=np.int32) if np.ndim(codes) else None
    shape = (int(codes),) if data is None else data.shape
    return group.create_dataset(name, shape=shape, data=data, maxshape=(None,), dtype=np.int32,
                                chunks=ROW_CHUNKS, fillvalue=0, **CHECKSUMMED)


def string_table(f: h5py.File, names: list[str]) -> None:
    f.create_dataset("strings", data=np.array([n.encode() for n in names],
                                              dtype=f"S{NAME_BYTES}"),
                     maxshape=(None,), chunks=(64,), **CHECKSUMMED)


def replace_file(tmp: Path, path: Path) -> None:
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
