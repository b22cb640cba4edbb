"""The HDF5 history of a run: what every sample's label became, epoch by epoch.

Layout of ``history.h5`` (one file per run), format ``kdcore-history/2``:

* root attributes: ``format``, ``recipe`` (resolved TOML), ``versions`` (JSON: kdcore and every
  plugin), ``setup`` (JSON: device, processes, threads, torch and Python versions; absent in
  files written before it), ``num_classes``, ``class_names`` (JSON);
* ``/data``: ``noisy_label``, ``clean_label``, ``clean_mask`` (noisy == clean), ``sample_id``
  (row in the loader's training split), ``transition_matrix`` (the realised clean-to-noisy
  matrix, rows the true class), and any per-sample constants a plugin adds;
* ``/epochs``: one row per completed epoch, ``stage`` (int32 code into ``/strings``) and
  ``epoch`` (within the stage);
* ``/metrics/<name>``: one float per epoch row (NaN where a metric was not measured);
* ``/ledger/<column>``: the ledger snapshot, shape ``(epochs, N, ...)``; targets float16,
  masks bool (float16 once a selector's scores are soft, neither 0 nor 1), weights and values
  float16, labels int32; attribute ``kind``;
* ``/producers/<column>``: per epoch row, the code of the component that produced the
  snapshot (0, the empty name, where the column was not written);
* ``/strings``: the names the codes stand for, fixed-length UTF-8 (``S255``), row 0 empty.

Every epoch axis is chunked (one epoch per chunk for the ledger) and the ledger and ``/data``
are compressed with Zstandard (hdf5plugin, level 1). Format 1 (``kdcore-history/1``) kept
``stage`` as variable-length strings and each column's producers as a JSON list attribute; it
still reads, and resuming a run converts it.

How writes stay safe when a process is killed is :mod:`kdcore.history_writer`'s subject: an
update is all or nothing, and a reader that finds one a killed process left half done undoes it
before reading.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from kdcore import api_args
from kdcore.errors import NotInHistory, did_you_mean
from kdcore.history_writer import (
    FORMAT,
    HistoryWriter,
    damaged,
    leaf_names,
    open_readable,
)

__all__ = ["FORMAT", "NO_EPOCH_YET", "History", "HistoryWriter", "RowCounter",
           "column_kept_out", "logits_kept_out", "open_history"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _reads(method: _F) -> _F:
    """The file held for the call (one consistent view of it); HDF5 errors while reading mean
    a damaged file: one line, not a traceback."""

    @functools.wraps(method)
    def read(self: History, *args: Any, **kwargs: Any) -> Any:
        with self:
            try:
                return method(self, *args, **kwargs)
            except (OSError, RuntimeError) as exc:
                raise damaged(self.path, exc) from None

    return read  # type: ignore[return-value]


class History:
    """Read a run's ``history.h5`` (``import kdcore.history`` registers the HDF5 filters).

    The file is held (and a live run's next history write waits) only while a method runs,
    or for the whole of a ``with History(...) as h:`` block, which reads one consistent state
    of it. A ``History`` kept open in a notebook between calls holds nothing: each call sees
    the rows the run has written so far.

    Args:
        path: the file, or a run directory that holds ``history.h5``.

    Raises:
        KdcoreError: no such file, or not a readable kdcore history (damaged, truncated, not
            HDF5, or another program's file); checked when the ``History`` is made.
    """

    def __init__(self, path: str | Path):
        path = api_args.path(path, "History")
        if path.is_dir():
            path = path / "history.h5"
        self.path = path
        self._file: h5py.File | None = None
        self._holds = 0  # the with-blocks and method calls now holding the file
        self._names: list[str] | None = None
        with self:  # opened once now: a missing, damaged or foreign file fails here
            pass

    def close(self) -> None:
        """Let go of the file now, inside a ``with`` block too."""
        if self._file is not None:
            self._file.close()
        self._file, self._holds = None, 0

    def __enter__(self) -> History:
        if self._holds == 0:
            self._file = open_readable(self.path)
            self._names = None  # the writer may have added names since the last hold
        self._holds += 1
        return self

    def __exit__(self, *exc: object) -> None:
        if self._holds > 1:
            self._holds -= 1
        else:
            self.close()

    @property
    @_reads
    def recipe(self) -> str:
        return str(self._file.attrs["recipe"])

    @property
    @_reads
    def versions(self) -> dict[str, str]:
        return json.loads(self._file.attrs["versions"])

    @property
    @_reads
    def setup(self) -> dict[str, Any]:
        """Where the run was started: ``device`` (with the GPU's name), ``processes``,
        ``threads``, ``torch`` and ``python`` versions, and ``code``, a digest of the sources
        of kdcore and of each plugin distribution the recipe uses (:mod:`kdcore.provenance`);
        empty (or without ``code``) for a history written before kdcore recorded them."""
        text = self._file.attrs.get("setup")
        return dict(json.loads(str(text))) if text is not None else {}

    @property
    @_reads
    def num_classes(self) -> int:
        return int(self._file.attrs["num_classes"])

    @property
    @_reads
    def class_names(self) -> list[str]:
        return list(json.loads(str(self._file.attrs.get("class_names", "[]"))))

    @property
    @_reads
    def format(self) -> str:
        return str(self._file.attrs["format"])

    @_reads
    def __len__(self) -> int:
        return int(self._file["epochs/epoch"].shape[0])

    def _strings(self) -> list[str]:
        if self._names is None:
            self._names = [s.decode() for s in self._file["strings"][:]]
        return self._names

    @_reads
    def epochs(self) -> list[tuple[str, int]]:
        """``(stage, epoch within stage)`` per row."""
        stage = self._file["epochs/stage"][:]
        if stage.dtype.kind in "iu":
            names = self._strings()
            stages = [names[c] for c in stage]
        else:  # format 1
            stages = [s.decode() if isinstance(s, bytes) else s for s in stage]
        return list(zip(stages, (int(e) for e in self._file["epochs/epoch"][:])))

    @_reads
    def metric_names(self) -> list[str]:
        return sorted(leaf_names(self._file["metrics"]))

    @_reads
    def metric(self, name: str) -> np.ndarray:
        return self._entry("metrics", name, "metric")[:]

    @_reads
    def metrics(self) -> dict[str, np.ndarray]:
        return {n: self.metric(n) for n in self.metric_names()}

    def _entry(self, group: str, name: str, what: str) -> h5py.Dataset:
        """``/<group>/<name>``, or :class:`~kdcore.errors.NotInHistory` naming what is there."""
        api_args.name(name, what)
        try:
            entry = self._file[group][name]
        except (KeyError, ValueError):  # ValueError: a name h5py cannot take ("", a NUL)
            entry = None
        if not isinstance(entry, h5py.Dataset):
            names = sorted(leaf_names(self._file[group]))
            listed = ", ".join(names[:10]) + (f" and {len(names) - 10} more"
                                              if len(names) > 10 else "")
            why = column_kept_out(self, name) if group == "ledger" else ""
            raise NotInHistory(f"{self.path} holds no {what} {name!r}{why}"
                               f"{did_you_mean(str(name), names)}; {what}s: {listed or 'none'}")
        return entry

    @_reads
    def column_names(self) -> list[str]:
        return sorted(leaf_names(self._file["ledger"]))

    @_reads
    def column(self, name: str, epoch: int | None = None) -> np.ndarray:
        """A ledger column over epochs ``(E, N, ...)``, or one epoch row ``(N, ...)``."""
        ds = self._entry("ledger", name, "column")
        return ds[:] if epoch is None else ds[api_args.epoch_row(epoch, len(ds))]

    @_reads
    def producers(self, name: str) -> list[str]:
        """The component that produced each epoch row of column ``name`` ("" where none)."""
        attrs = self._entry("ledger", name, "column").attrs
        if "producers" in attrs:  # format 1
            return json.loads(attrs["producers"])
        names = self._strings()
        return [names[c] for c in self._file["producers"][name][:]]

    @_reads
    def column_kind(self, name: str) -> str:
        """How column ``name`` is stored (``target``, ``mask``, ``weight``, ``value``, ...)."""
        return str(self._entry("ledger", name, "column").attrs.get("kind", ""))

    @_reads
    def data(self, name: str) -> np.ndarray:
        """A per-sample constant from ``/data`` (``noisy_label``, ``clean_label``, ...)."""
        return self._entry("data", name, "data array")[:]

    @_reads
    def data_names(self) -> list[str]:
        """Every array in ``/data`` (nested names as ``a/b``)."""
        return sorted(leaf_names(self._file["data"]))


def open_history(path: str | Path) -> History:
    """Open a history for reading; a missing, damaged or foreign file is a
    :class:`~kdcore.errors.KdcoreError` (one line)."""
    return History(path)


class RowCounter:
    """The history as ranks other than 0 keep it in a distributed run: only its length."""

    def __init__(self) -> None:
        self._rows = 0

    def create(self, **_: Any) -> None:
        self._rows = 0

    def rollback(self, rows: int) -> None:
        self._rows = rows

    def rows(self) -> int:
        return self._rows

    def append_epoch(self, **_: Any) -> int:
        self._rows += 1
        return self._rows - 1

    def add_data(self, name: str, values: Any) -> None:
        pass


NO_EPOCH_YET = "no epoch yet: the run is in its first epoch, or was stopped there"
"""What a history of no rows says of itself (``kdcore inspect``, the logits' readers)."""


def logits_kept_out(hist: Any) -> str:
    """Why a history holds no training logits: ``" (the run's run.history_skip 'logits/*'
    kept them out)"`` when its recipe says so, else ``" (it holds no epoch yet: ...)"`` when it
    has no rows, else ``""``."""
    skip, models = _skipped(hist)
    kept_out = [p for p in skip
                if any(fnmatch.fnmatchcase(f"logits/{role}", p) for role in models)]
    if kept_out:
        return f" (the run's run.history_skip '{kept_out[0]}' kept them out)"
    return _no_epoch(hist)


def _no_epoch(hist: Any) -> str:
    """``" (it holds no epoch yet: ...)"`` for a history of no rows, else ``""``."""
    return "" if hist.epochs() else f" (it holds {NO_EPOCH_YET})"


def no_logits_of(hist: Any, role: str) -> NotInHistory:
    """The error for a model ``role`` whose training logits ``hist`` lacks: the models it has
    logits of, a near miss, and why they may be missing."""
    roles = [c.removeprefix("logits/") for c in hist.column_names() if c.startswith("logits/")]
    why = column_kept_out(hist, f"logits/{role}") or _untrained(hist, role) or _no_epoch(hist)
    return NotInHistory(f"no training logits of model '{role}' in {hist.path}"
                        f"{did_you_mean(role, roles)}; models: {', '.join(roles) or 'none'}{why}")


def _untrained(hist: Any, role: str) -> str:
    """``" (no stage of the run trains it)"`` where the run's recipe says so, else ``""``."""
    stages = _recipe(hist).get("stages")
    if not isinstance(stages, list):
        return ""
    trains = any(isinstance(s, dict) and s.get("epochs") != 0 and isinstance(s.get("train"), list)
                 and role in s["train"] for s in stages)
    return "" if trains else " (no stage of the run trains it)"


def column_kept_out(hist: Any, name: str) -> str:
    """Why a history holds no column ``name``, when its recipe says: ``" (the run's
    run.history_skip 'loss/*' kept it out)"``, else ``""``."""
    kept_out = [p for p in _skipped(hist)[0] if fnmatch.fnmatchcase(name, p)]
    return f" (the run's run.history_skip '{kept_out[0]}' kept it out)" if kept_out else ""


def _skipped(hist: Any) -> tuple[list[str], dict[str, Any]]:
    """The recipe's ``run.history_skip`` patterns and its models, as far as they read."""
    recipe = _recipe(hist)
    run, models = recipe.get("run"), recipe.get("models")
    skip = run.get("history_skip") if isinstance(run, dict) else None
    return ([p for p in skip if isinstance(p, str)] if isinstance(skip, list) else [],
            models if isinstance(models, dict) else {})


def _recipe(hist: Any) -> dict[str, Any]:
    """The run's recipe as TOML tables, or none where it does not read (a reason given from
    it is a hint, never an error of its own)."""
    try:
        return tomllib.loads(hist.recipe)
    except tomllib.TOMLDecodeError:
        return {}
