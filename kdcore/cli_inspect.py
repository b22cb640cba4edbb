"""What ``kdcore inspect`` prints and exports from a history: per-epoch metrics, ledger columns
as CSV, Dataset Cartography's training dynamics.

CSV files are exact and numeric: a value not measured (a metric of a model that did not train
that epoch, a ledger column no component wrote that epoch, a NaN) is an empty cell, and floats
are written in full (Python's shortest round-trip form), so pandas reads every value column as
numbers and ``float(cell)`` equals what h5py reads from the history. The printed table rounds
to 4 decimals and shows ``-`` for a missing value.
"""

from __future__ import annotations

import csv
import json
import sys
import tomllib
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click
import numpy as np

from kdcore.cli_files import output_dir, output_file
from kdcore.errors import KdcoreError
from kdcore.history_layout import RESUME_CHECKS
from kdcore.history_values import F16_MAX, NO_LABEL, target_labels

#: the per-sample constants every ``--column`` export carries, after the row's position
SAMPLE_COLUMNS = ("sample_id", "clean_label", "noisy_label")
ALL = "all"


def inspect_run(run_dir: Path, *, columns: Sequence[str], csv_path: Path | None,
                cartography: Path | None, role: str | None, patterns: Sequence[str]) -> None:
    """``kdcore inspect``: the metrics table (or its CSV), ledger columns, or cartography."""
    from kdcore.history import open_history

    if columns and cartography:
        raise KdcoreError("--column and --cartography are two exports: give one")
    if role is not None and not cartography:
        raise KdcoreError("--model chooses the model of --cartography; give --cartography too")
    if cartography:
        with open_history(run_dir) as hist:
            role, n = export_cartography(hist, cartography, role)
        click.echo(f"wrote {n} epoch files (the epochs model '{role}' trained) to "
                   f"{cartography}")
        return
    # read, then let the history go before writing: a slow reader of the output (a pager)
    # must not hold the file that a running training appends to
    with open_history(run_dir) as hist:
        table = read_columns(hist, columns) if columns else read_metrics(hist, patterns)
    if columns:
        write_columns(table, csv_path)
    else:
        print_metrics(table, csv_path)


def read_metrics(hist: Any, patterns: Sequence[str]
                 ) -> tuple[list[str], list[Any], dict[str, np.ndarray]]:
    """The metrics matching ``patterns`` (in the patterns' order), the epoch rows, the values."""
    import fnmatch

    names = [n for n in hist.metric_names() if any(fnmatch.fnmatch(n, p) for p in patterns)]
    if not names and hist.metric_names():
        raise KdcoreError(f"no metric matches {', '.join(repr(p) for p in patterns)}; the "
                          f"history has {', '.join(hist.metric_names())}")
    names.sort(key=lambda n: next(i for i, p in enumerate(patterns) if fnmatch.fnmatch(n, p)))
    return names, hist.epochs(), {n: hist.metric(n) for n in names}


def print_metrics(table: tuple[list[str], list[Any], dict[str, np.ndarray]],
                  csv_path: Path | None) -> None:
    """The metrics table on screen (rounded), or as CSV (exact)."""
    names, epochs, values = table
    header = ["row", "stage", "epoch", *names]
    if csv_path:
        with output_file(csv_path, newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows([i, st, e, *(_exact(values[n][i]) for n in names)]
                             for i, (st, e) in enumerate(epochs))
        click.echo(f"wrote {len(epochs)} rows to {csv_path}")
        return
    # on screen epochs count from 1, as the run's log does; the CSV keeps the history's 0-based
    rows = [[str(i), st, str(e + 1), *(_rounded(values[n][i]) for n in names)]
            for i, (st, e) in enumerate(epochs)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    click.echo("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    if not rows:
        from kdcore.history import NO_EPOCH_YET

        click.echo(f"({NO_EPOCH_YET})")
    for r in rows:
        click.echo("  ".join(v.rjust(w) for v, w in zip(r, widths)))


def _rounded(value: float) -> str:
    return "-" if value != value else f"{value:.4f}"


def _exact(value: Any) -> Any:
    """A CSV cell: an int, a float in full (``str(float)`` round-trips), '' for NaN."""
    if isinstance(value, np.generic) and value.dtype.kind in "biu":
        return int(value)
    value = float(value)
    return "" if value != value else value


def _per_sample_data(hist: Any, n: int) -> list[str]:
    """The ``/data`` arrays that export as CSV: a value or a vector per ledger row."""
    out = []
    for name in hist.data_names():
        arr = hist.data(name)
        if (1 <= arr.ndim <= 2 and arr.shape[0] == n and name not in SAMPLE_COLUMNS
                and name not in RESUME_CHECKS):
            out.append(name)
    return out


def _resolve_columns(hist: Any, names: Sequence[str]) -> list[str]:
    """``names`` as given, ``all`` expanded to every ledger column and per-sample constant."""
    ledger, data = hist.column_names(), hist.data_names()
    out: list[str] = []
    for name in names:
        if name == ALL:
            n = hist.data("noisy_label").shape[0]
            out += [*ledger, *_per_sample_data(hist, n)]
        elif name in ledger:
            out.append(name)
        elif name in data:
            shape, n = hist.data(name).shape, hist.data("noisy_label").shape[0]
            if not shape or shape[0] != n:  # the transition matrix, a scalar: not per sample
                raise KdcoreError(f"'{name}' is not per sample (shape {shape}, the run has "
                                  f"{n} samples); --column exports per-sample data only")
            out.append(name)
        else:
            from kdcore.errors import did_you_mean
            from kdcore.history import column_kept_out

            raise KdcoreError(f"no column '{name}'{column_kept_out(hist, name)}"
                              f"{did_you_mean(name, [*ledger, *data])}; "
                              f"columns: {', '.join(ledger)} (or 'all')")
    return list(dict.fromkeys(out))


def _cells(hist: Any, name: str, rows: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CSV header -> (values ``(rows, N)``, missing ``(rows, N)``) for one column.

    A ledger column is missing where no component produced it that epoch (the history's fill
    value) or where it is NaN; a ``/data`` constant repeats on every epoch row. A column with a
    class axis exports its argmax and the value there: ``<name>/label`` and
    ``<name>/confidence`` for targets (probabilities; the label missing where the largest value
    is not alone, as in a uniform row), ``<name>/argmax`` and ``<name>/max`` otherwise (logits,
    per-class values).
    """
    if name in hist.column_names():
        values = hist.column(name)
        absent = np.array([not p for p in hist.producers(name)])
        kind = hist.column_kind(name)
    else:
        values = np.broadcast_to(hist.data(name)[None], (rows, *hist.data(name).shape))
        absent = np.zeros(rows, dtype=bool)
        kind = "data"
    nan = np.isnan(values) if values.dtype.kind == "f" else np.zeros(values.shape, bool)
    if values.ndim == 3:
        nan = nan.any(-1)  # a row holding NaN is missing whole, whatever its argmax
        arg = values.argmax(-1)
        top = np.take_along_axis(values, arg[..., None], -1)[..., 0]
        missing = nan | absent[:, None]
        if kind == "target":  # a row whose largest value is not alone names no label
            tied = target_labels(values) == NO_LABEL
            return {f"{name}/label": (arg, missing | tied), f"{name}/confidence": (top, missing)}
        return {f"{name}/argmax": (arg, missing), f"{name}/max": (top, missing)}
    if values.ndim != 2:
        raise KdcoreError(f"column '{name}' has shape {values.shape[1:]} per epoch; only "
                          "per-sample values and per-class vectors export as CSV")
    return {name: (values, nan | absent[:, None])}


ColumnTable = tuple[list[Any], dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]
"""The epoch rows, the per-sample base columns, and each CSV column's (values, missing)."""


def read_columns(hist: Any, names: Sequence[str]) -> ColumnTable:
    """What :func:`write_columns` writes, read from ``hist``: the epoch rows, the per-sample
    base columns, and the cells of the columns asked for (a base column asked for again is
    not repeated)."""
    columns = _resolve_columns(hist, names)
    epochs = hist.epochs()
    if not any(c in hist.column_names() for c in columns):
        epochs = [("data", 0)]
    base = {k: hist.data(k) for k in SAMPLE_COLUMNS if k in hist.data_names()}
    cells: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in columns:
        if name not in base:
            cells.update(_cells(hist, name, len(epochs)))
    return epochs, base, cells


def write_columns(table: ColumnTable, csv_path: Path | None) -> None:
    """Ledger columns (and ``/data`` constants) as one CSV row per epoch row and sample.

    Header: ``row`` (epoch row in the history), ``stage``, ``epoch`` (within the stage),
    ``ledger_row`` (the sample's index on the ledger's axis), ``sample_id`` (its row in the
    loader's training split), ``clean_label``, ``noisy_label``, then the columns asked for.
    Only ``/data`` columns: one block, stage ``data``.
    """
    epochs, base, cells = table
    rows = len(epochs)
    n = (next(iter(cells.values()))[0].shape[1] if cells
         else len(next(iter(base.values()))))
    with output_file(csv_path, newline="") if csv_path else nullcontext(sys.stdout) as out:
        writer = csv.writer(out)
        writer.writerow(["row", "stage", "epoch", "ledger_row", *base, *cells])
        ids = [[_exact(v[j]) for v in base.values()] for j in range(n)]
        for i, (st, e) in enumerate(epochs):
            # one epoch row at a time: .tolist() gives Python ints and floats (exact values)
            epoch_cells = [(v[i].tolist(), m[i]) for v, m in cells.values()]
            for j in range(n):
                writer.writerow([i, st, e, j, *ids[j],
                                 *("" if m[j] else int(v[j]) if isinstance(v[j], bool) else v[j]
                                   for v, m in epoch_cells)])
    if csv_path:
        click.echo(f"wrote {len(cells)} column(s) ({rows} epochs x {n} samples) to {csv_path}")


def trained_rows(hist: Any, role: str) -> list[int]:
    """The history's epoch rows in which model ``role`` trained: the rows of the stages whose
    ``train`` lists it (the resolved recipe the history holds)."""
    try:
        stages = tomllib.loads(hist.recipe).get("stages", [])
    except (tomllib.TOMLDecodeError, KeyError) as exc:
        raise KdcoreError(f"{hist.path}: cannot read the run's recipe ({exc})") from None
    training = {s.get("name") for s in stages if role in s.get("train", ())}
    return [i for i, (st, _) in enumerate(hist.epochs()) if st in training]


def export_cartography(hist: Any, out_dir: Path, role: str | None) -> tuple[str, int]:
    """One ``dynamics_epoch_E.jsonl`` per epoch in which the model trained, the format of
    allenai/cartography; returns the model role and the number of files.

    Files are numbered 0.. over the epochs the model trained (the stages whose ``train`` lists
    it, as the run's recipe says); a frozen model's epochs (its logits unchanged) are left out,
    since they would skew variability and confidence. Each line is ``{"guid": sample id,
    "logits_epoch_E": [...], "gold": noisy label}``: the sample's row in the loader's training
    split, the training logits the model produced for it during that epoch (as stored; ±inf,
    a float16 overflow, as ±65504, since JSON has no infinity), and its noisy label. A sample
    whose logits the epoch did not record (nothing computed the model on its batch: NaN in
    the history) has no line in that epoch's file.
    """
    candidates = [c for c in hist.column_names() if c.startswith("logits/")]
    if role is not None:
        from kdcore.history import no_logits_of

        if f"logits/{role}" not in candidates:
            raise no_logits_of(hist, role)
        candidates = [f"logits/{role}"]
    if not candidates:
        from kdcore.history import logits_kept_out

        raise KdcoreError("the history holds no training logits" + logits_kept_out(hist))
    name = candidates[0]
    role = name.removeprefix("logits/")
    producers = hist.producers(name)
    rows = [i for i in trained_rows(hist, role) if producers[i]]
    if not rows:
        raise KdcoreError(f"model '{role}' trained in no recorded epoch of this run")
    gold = hist.data("noisy_label")
    guid = hist.data("sample_id") if "sample_id" in hist.data_names() else np.arange(len(gold))
    output_dir(out_dir)
    for k, e in enumerate(rows):
        logits = hist.column(name, e).astype(np.float64)
        has = ~np.isnan(logits).any(axis=1)
        # JSON has no inf: a float16 logit past 65504 counts as 65504, as in label-issues
        logits = np.clip(logits, -F16_MAX, F16_MAX).tolist()
        with output_file(out_dir / f"dynamics_epoch_{k}.jsonl") as fh:
            for i in np.flatnonzero(has).tolist():
                fh.write(json.dumps({"guid": int(guid[i]), f"logits_epoch_{k}": logits[i],
                                     "gold": int(gold[i])}) + "\n")
    # an earlier export's later epochs: cartography reads every epoch file in the folder
    for stale in out_dir.glob("dynamics_epoch_*.jsonl"):
        number = stale.name.removeprefix("dynamics_epoch_").removesuffix(".jsonl")
        if not (number.isdecimal() and int(number) < len(rows)):
            try:
                stale.unlink()
            except OSError as exc:
                raise KdcoreError(f"cannot remove {stale}, an earlier export's epoch file "
                                  f"that would mix with this one: {exc.strerror or exc}"
                                  ) from None
    return role, len(rows)
