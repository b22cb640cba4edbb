"""The HDF5 history of a run: what every sample's label became, epoch by epoch.

Layout of ``history.h5`` (one file per run):

* root attributes: ``format``, ``recipe`` (resolved TOML), ``versions`` (JSON: kdcore and every
  plugin), ``num_classes``, ``class_names`` (JSON);
* ``/data``: ``noisy_label``, ``clean_label``, ``clean_mask`` (noisy == clean), ``sample_id``
  (row in the loader's training split), ``transition_matrix`` (the realised clean-to-noisy
  matrix, rows the true class), and any per-sample constants a plugin adds;
* ``/epochs``: one row per completed epoch, ``stage`` and ``epoch`` (within the stage);
* ``/metrics/<name>``: one float per epoch row (NaN where a metric was not measured);
* ``/ledger/<column>``: the ledger snapshot, shape ``(epochs, N, ...)``; targets float16,
  masks bool, weights and values float16, labels int32. Each dataset's ``producers`` attribute
  is a JSON list naming the component that produced it at each epoch.

Every epoch axis is chunked one epoch per chunk and compressed with Zstandard (hdf5plugin,
level 1).
The writer opens the file only to append an epoch and closes it again, so a process killed
mid-epoch leaves a file whose completed epochs are all readable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import torch

from kdcore.ledger import Column

FORMAT = "kdcore-history/1"
_STORE_DTYPE = {"target": np.float16, "weight": np.float16, "value": np.float16,
                "exact": np.float32, "mask": np.bool_, "label": np.int32}
_TORCH_DTYPE = {np.float16: torch.float16, np.float32: torch.float32, np.bool_: torch.bool,
                np.int32: torch.int32}
_FILL = {np.float16: np.nan, np.float32: np.nan, np.bool_: False, np.int32: -1}


def _compression() -> Mapping[str, Any]:
    # level 1: as small as level 3 on these columns (float16 rows), and faster
    return hdf5plugin.Zstd(clevel=1)


def _as_numpy(t: torch.Tensor, dtype: Any) -> np.ndarray:
    # convert on torch's side (vectorised, on the GPU when the ledger is there), then copy
    return t.detach().to(_TORCH_DTYPE[dtype]).cpu().numpy()


class HistoryWriter:
    """Appends epochs to ``history.h5``.

    Args:
        path: the file; created by :meth:`create`, appended to by :meth:`append_epoch`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        # the metric and ledger dataset names in the file, read once (a walk of the file's
        # groups every epoch costs more than the epoch's metrics themselves)
        self._names: dict[str, set[str]] | None = None

    def _known(self, f: h5py.File) -> dict[str, set[str]]:
        if self._names is None:
            self._names = {g: set(_leaf_names(f[g])) for g in ("metrics", "ledger")}
        return self._names

    def create(
        self,
        *,
        recipe_toml: str,
        versions: Mapping[str, str],
        num_classes: int,
        class_names: list[str],
        constants: Mapping[str, torch.Tensor],
        transition_matrix: torch.Tensor,
    ) -> None:
        """Write the run's constants; an existing file is replaced."""
        self._names = None
        with h5py.File(self.path, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["recipe"] = recipe_toml
            f.attrs["versions"] = json.dumps(dict(versions))
            f.attrs["num_classes"] = num_classes
            f.attrs["class_names"] = json.dumps(list(class_names))
            data = f.create_group("data")
            for name, values in constants.items():
                arr = values.detach().cpu().numpy()
                data.create_dataset(name, data=arr, **_compression())
            data.create_dataset("transition_matrix", data=transition_matrix.cpu().numpy())
            ep = f.create_group("epochs")
            ep.create_dataset("stage", shape=(0,), maxshape=(None,),
                              dtype=h5py.string_dtype(), chunks=(256,))
            ep.create_dataset("epoch", shape=(0,), maxshape=(None,), dtype=np.int32,
                              chunks=(256,))
            f.create_group("metrics")
            f.create_group("ledger")

    def add_data(self, name: str, values: torch.Tensor) -> None:
        """Write (or replace) ``/data/<name>``: an array stored once, not per epoch."""
        arr = values.detach().cpu().numpy()
        with h5py.File(self.path, "a") as f:
            group = f["data"]
            if name in group:
                del group[name]
            group.create_dataset(name, data=arr, **(_compression() if arr.size > 1 else {}))

    def rows(self) -> int:
        """How many epochs the file holds."""
        with h5py.File(self.path, "r") as f:
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

        Returns:
            the row number written.
        """
        with h5py.File(self.path, "a") as f:
            row = int(f["epochs/epoch"].shape[0])
            for name, value in (("stage", stage), ("epoch", epoch)):
                ds = f["epochs"][name]
                ds.resize((row + 1,))
                ds[row] = value
            known = self._known(f)
            mgroup = f["metrics"]
            for name, value in metrics.items():
                if name in known["metrics"]:
                    ds = mgroup[name]
                else:
                    ds = mgroup.create_dataset(name, shape=(row,), maxshape=(None,),
                                               dtype=np.float64, chunks=(256,), fillvalue=np.nan)
                    known["metrics"].add(name)
                _append_scalar(ds, row, float(value))
            for name in known["metrics"].difference(metrics):
                _append_scalar(mgroup[name], row, np.nan)
            lgroup = f["ledger"]
            written = set()
            for name, column in columns.items():
                if not column.snapshot:
                    continue
                dtype = _STORE_DTYPE[column.kind]
                arr = _as_numpy(column.data, dtype)
                ds = lgroup.get(name)
                if ds is None:
                    ds = lgroup.create_dataset(
                        name, shape=(row, *arr.shape), maxshape=(None, *arr.shape), dtype=dtype,
                        chunks=(1, *arr.shape), fillvalue=_FILL[dtype], **_compression(),
                    )
                    ds.attrs["producers"] = json.dumps([""] * row)
                    ds.attrs["kind"] = column.kind
                    known["ledger"].add(name)
                ds.resize((row + 1, *ds.shape[1:]))
                ds[row] = arr
                producers = json.loads(ds.attrs["producers"])
                ds.attrs["producers"] = json.dumps([*producers[:row], column.producer])
                written.add(name)
            for name in known["ledger"].difference(written):
                # a column of an earlier stage: keep rows aligned
                ds = lgroup[name]
                ds.resize((row + 1, *ds.shape[1:]))
                producers = json.loads(ds.attrs["producers"])
                ds.attrs["producers"] = json.dumps([*producers[:row], ""])
        return row  # closing the file flushed it: the epoch is on disk

    def truncate(self, rows: int) -> None:
        """Drop epoch rows past ``rows`` (on resume, rows written after the checkpoint)."""
        with h5py.File(self.path, "a") as f:
            for group in ("epochs", "metrics", "ledger"):
                for name in _leaf_names(f[group]):
                    ds = f[group][name]
                    if ds.shape[0] > rows:
                        ds.resize((rows, *ds.shape[1:]))
                    if "producers" in ds.attrs:
                        ds.attrs["producers"] = json.dumps(json.loads(ds.attrs["producers"])[:rows])


_ONE = h5py.h5s.create_simple((1,))


def _append_scalar(ds: h5py.Dataset, row: int, value: float) -> None:
    """``ds.resize((row + 1,)); ds[row] = value`` through h5py's low-level calls: a run writes
    every metric every epoch, and the high-level path costs twice as much."""
    ds.id.set_extent((row + 1,))
    space = ds.id.get_space()
    space.select_hyperslab((row,), (1,))
    ds.id.write(_ONE, space, np.array([value], dtype=np.float64))


def _leaf_names(group: h5py.Group) -> list[str]:
    names: list[str] = []
    group.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
    return names


class History:
    """Read a run's ``history.h5`` (``import kdcore.history`` registers the HDF5 filters).

    Args:
        path: the file, or a run directory that holds ``history.h5``.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_dir():
            path = path / "history.h5"
        self.path = path
        self._file = h5py.File(path, "r")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def recipe(self) -> str:
        return str(self._file.attrs["recipe"])

    @property
    def versions(self) -> dict[str, str]:
        return json.loads(self._file.attrs["versions"])

    @property
    def num_classes(self) -> int:
        return int(self._file.attrs["num_classes"])

    def __len__(self) -> int:
        return int(self._file["epochs/epoch"].shape[0])

    def epochs(self) -> list[tuple[str, int]]:
        """``(stage, epoch within stage)`` per row."""
        stages = [s.decode() if isinstance(s, bytes) else s for s in self._file["epochs/stage"][:]]
        return list(zip(stages, (int(e) for e in self._file["epochs/epoch"][:])))

    def metric_names(self) -> list[str]:
        return sorted(_leaf_names(self._file["metrics"]))

    def metric(self, name: str) -> np.ndarray:
        return self._file["metrics"][name][:]

    def metrics(self) -> dict[str, np.ndarray]:
        return {n: self.metric(n) for n in self.metric_names()}

    def column_names(self) -> list[str]:
        return sorted(_leaf_names(self._file["ledger"]))

    def column(self, name: str, epoch: int | None = None) -> np.ndarray:
        """A ledger column over epochs ``(E, N, ...)``, or one epoch row ``(N, ...)``."""
        ds = self._file["ledger"][name]
        return ds[:] if epoch is None else ds[epoch]

    def producers(self, name: str) -> list[str]:
        return json.loads(self._file["ledger"][name].attrs["producers"])

    def data(self, name: str) -> np.ndarray:
        """A per-sample constant from ``/data`` (``noisy_label``, ``clean_label``, ...)."""
        return self._file["data"][name][:]

    def data_names(self) -> list[str]:
        """Every array in ``/data`` (nested names as ``a/b``)."""
        return sorted(_leaf_names(self._file["data"]))


def open_history(path: str | Path) -> History:
    """Open a history for reading; a missing or foreign file is a :class:`KdcoreError`."""
    from kdcore.errors import KdcoreError

    path = Path(path)
    file = path / "history.h5" if path.is_dir() else path
    if not file.is_file():
        raise KdcoreError(f"no history at {file}")
    try:
        hist = History(file)
    except OSError as exc:
        raise KdcoreError(f"{file} is not a readable HDF5 history: {exc}") from None
    if hist._file.attrs.get("format") != FORMAT:
        hist.close()
        raise KdcoreError(f"{file} is not a kdcore history (format {FORMAT} expected)")
    return hist
