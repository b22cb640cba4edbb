"""A run's history as pandas frames: ``kdcore.load_history`` (docs/api.md), the Python twin of
``kdcore inspect``. pandas is imported when a frame is made (``kdcore[analysis]``); running
does not need it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np

from kdcore import api_args
from kdcore.errors import KdcoreError, NotInHistory
from kdcore.history_values import NO_LABEL, target_labels
from kdcore.recipe import Recipe, recipe_from_dict

__all__ = ["HistoryFrames", "load_history", "pandas_module"]


def pandas_module() -> Any:
    try:
        import pandas
    except ImportError:
        raise KdcoreError("reading a history as frames needs pandas: install kdcore[analysis] "
                          "(pip install 'kdcore[analysis]')") from None
    return pandas


@attrs.frozen
class HistoryFrames:
    """A run's ``history.h5`` as pandas frames (:func:`load_history`). No file stays open:
    :meth:`column` and :meth:`data` read the file when called.

    Attributes:
        path: the ``history.h5`` file.
        metrics: one row per epoch row (index ``row``): ``stage``, ``epoch`` (within the
            stage) and every metric (NaN where not measured).
        recipe_toml: the resolved recipe the run was started with, as TOML.
        num_classes: the number of classes.
        class_names: the class names, in label order.
        columns: the ledger columns' names.
        data_names: the per-sample constants' names (``noisy_label``, ``clean_mask``, ...).
    """

    path: Path
    metrics: Any
    recipe_toml: str
    num_classes: int
    class_names: list[str]
    columns: list[str]
    data_names: list[str]

    @property
    def recipe(self) -> Recipe:
        """The resolved recipe the run was started with."""
        import tomllib

        return recipe_from_dict(tomllib.loads(self.recipe_toml), source=str(self.path))

    def _open(self) -> Any:
        from kdcore.history import History

        return History(self.path)

    def data(self, name: str) -> Any:
        """A per-sample constant of ``/data`` as stored (numpy; row ``i`` is sample ``i``)."""
        if name not in self.data_names:
            raise NotInHistory(f"no data '{name}' in {self.path}; data: "
                              f"{', '.join(self.data_names)}")
        with self._open() as h:
            return h.data(name)

    def column(self, name: str, *, epoch: int | None = None, full: bool = False) -> Any:
        """A ledger column in long form: one row per (epoch row, sample), as ``kdcore inspect
        --column`` exports it.

        Columns ``row`` (the epoch row), ``stage``, ``epoch``, ``ledger_row`` (the sample's
        index, as in :meth:`data`), ``sample_id`` (its row in the dataset's training split),
        ``clean_label``, ``noisy_label``, then ``value`` for a per-sample column; for an
        ``N x C`` column ``label`` and ``confidence`` (a target's argmax, missing where its
        largest value is not alone, and max) or ``argmax``
        and ``max`` (logits and other per-class values), or with ``full`` one column per class,
        ``class_0`` ... Float values keep their stored dtype, float16 read as float32 (the
        same); masks are ``boolean`` and labels and argmaxes ``Int64`` (nullable): an epoch row
        in which no component wrote the column is missing (NaN, ``pd.NA``), not its fill.

        Args:
            epoch: one epoch row (negative counts from the end); default every row.
        """
        pd = pandas_module()
        if name not in self.columns:
            from kdcore.history import column_kept_out

            with self._open() as h:
                why = column_kept_out(h, name) if isinstance(name, str) else ""
            raise NotInHistory(f"no column '{name}' in {self.path}{why}; columns: "
                              f"{', '.join(self.columns) or '(none)'}")
        full = api_args.flag(full, "full")
        rows = np.arange(len(self.metrics))
        if epoch is not None:
            rows = rows[[api_args.epoch_row(epoch, len(rows))]]
        with self._open() as h:
            values = h.column(name) if epoch is None else h.column(name, int(rows[0]))[None]
            kind = h.column_kind(name)
            unwritten = np.array([not p for p in h.producers(name)], dtype=bool)[rows]
            per_sample = {k: h.data(k) for k in ("sample_id", "clean_label", "noisy_label")
                          if k in self.data_names}
        if values.ndim > 3:
            raise KdcoreError(f"column '{name}' has shape {values.shape[1:]} per epoch; read "
                              f"it with kdcore.History(...).column('{name}')")
        n = values.shape[1]
        frame = {
            "row": np.repeat(rows, n),
            "stage": np.repeat(self.metrics["stage"].to_numpy()[rows], n),
            "epoch": np.repeat(self.metrics["epoch"].to_numpy()[rows], n),
            "ledger_row": np.tile(np.arange(n), len(rows)),
            **{k: np.tile(v, len(rows)) for k, v in per_sample.items()},
        }
        if values.dtype == np.float16:  # exact in float32; pandas cannot display float16
            values = values.astype(np.float32)
        # missing where no component wrote the column that epoch (as inspect's empty cells)
        missing = np.repeat(unwritten, n)
        if values.ndim == 2:
            frame["value"] = _missing_as_na(pd, values.reshape(-1), missing)
        elif full:
            flat = values.reshape(-1, values.shape[2])
            frame |= {f"class_{k}": _missing_as_na(pd, flat[:, k], missing)
                      for k in range(flat.shape[1])}
        else:
            names = ("label", "confidence") if kind == "target" else ("argmax", "max")
            if values.dtype.kind == "f":  # a NaN row has no argmax
                missing = missing | np.isnan(values).any(-1).reshape(-1)
            # a target whose largest value is not alone (a uniform row) names no label
            unlabelled = (target_labels(values).reshape(-1) == NO_LABEL if kind == "target"
                          else False)
            frame[names[0]] = _missing_as_na(pd, values.argmax(-1).reshape(-1),
                                             missing | unlabelled)
            frame[names[1]] = _missing_as_na(pd, values.max(-1).reshape(-1), missing)
        return pd.DataFrame(frame)


def _missing_as_na(pd: Any, values: np.ndarray, missing: np.ndarray) -> Any:
    """Values with ``missing`` entries not a value: NaN in a float column; a nullable
    ``boolean`` or ``Int64`` column (``pd.NA``) for masks and labels, whose fill value (False,
    -1) would read as a value."""
    if values.dtype.kind == "f":
        return np.where(missing, np.nan, values).astype(values.dtype)
    if values.dtype.kind == "b":
        return pd.arrays.BooleanArray(values, missing.copy())
    return pd.arrays.IntegerArray(values.astype(np.int64), missing.copy())


def load_history(run_dir: str | Path) -> HistoryFrames:
    """A run's ``history.h5`` (``run_dir`` or the file itself) as pandas frames.

    Raises:
        KdcoreError: pandas is not installed, or no readable history at ``run_dir``.
    """
    run_dir = api_args.path(run_dir, "run_dir")
    pd = pandas_module()
    from kdcore.history import History

    with History(run_dir) as h:
        epochs = h.epochs()
        metrics = pd.DataFrame({"stage": [s for s, _ in epochs],
                                "epoch": [e for _, e in epochs],
                                **h.metrics()})
        metrics.index.name = "row"
        class_names = h.class_names
        return HistoryFrames(path=h.path, metrics=metrics, recipe_toml=h.recipe,
                             num_classes=h.num_classes, class_names=class_names,
                             columns=h.column_names(), data_names=h.data_names())
