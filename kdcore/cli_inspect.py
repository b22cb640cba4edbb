"""What ``kdcore inspect`` prints and exports from a history: per-epoch metrics, one ledger
column as CSV, Dataset Cartography's training dynamics."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from kdcore.errors import KdcoreError


def print_metrics(hist: Any, patterns: Sequence[str], csv_path: Path | None) -> None:
    import fnmatch

    names = [n for n in hist.metric_names() if any(fnmatch.fnmatch(n, p) for p in patterns)]
    names.sort(key=lambda n: next(i for i, p in enumerate(patterns) if fnmatch.fnmatch(n, p)))
    epochs = hist.epochs()
    values = {n: hist.metric(n) for n in names}
    header = ["row", "stage", "epoch", *names]
    rows = [[str(i), st, str(e), *(_fmt(values[n][i]) for n in names)]
            for i, (st, e) in enumerate(epochs)]
    if csv_path:
        with csv_path.open("w", newline="") as fh:
            csv.writer(fh).writerows([header, *rows])
        click.echo(f"wrote {len(rows)} rows to {csv_path}")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    click.echo("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        click.echo("  ".join(v.rjust(w) for v, w in zip(r, widths)))


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:.4f}"


def export_column(hist: Any, name: str, csv_path: Path | None) -> None:
    if name not in hist.column_names() and name not in hist.data_names():
        from kdcore.errors import did_you_mean

        raise KdcoreError(f"no column '{name}'{did_you_mean(name, hist.column_names())}; "
                          f"columns: {', '.join(hist.column_names())}")
    if name in hist.data_names():
        values = hist.data(name)[None]
        epochs = [("data", 0)]
    else:
        values = hist.column(name)
        epochs = hist.epochs()
    if values.ndim == 3:  # soft targets: export the argmax label and its probability
        labels, conf = values.argmax(-1), values.max(-1)
        cols = {"label": labels, "confidence": conf}
    else:
        cols = {"value": values}
    out = csv_path.open("w", newline="") if csv_path else sys.stdout
    try:
        writer = csv.writer(out)
        writer.writerow(["row", "stage", "epoch", "sample", *cols])
        for i, (st, e) in enumerate(epochs):
            for j in range(values.shape[1]):
                writer.writerow([i, st, e, j, *(_cell(c[i, j]) for c in cols.values())])
    finally:
        if csv_path:
            out.close()
    if csv_path:
        click.echo(f"wrote column '{name}' ({len(epochs)} epochs x {values.shape[1]} samples) "
                   f"to {csv_path}")


def _cell(v: Any) -> Any:
    return int(v) if v.dtype.kind in "biu" else float(v)


def export_cartography(hist: Any, out_dir: Path, role: str | None) -> int:
    """One ``dynamics_epoch_E.jsonl`` per epoch, the format of allenai/cartography.

    Each line is ``{"guid": sample, "logits_epoch_E": [...], "gold": noisy label}``, the training
    logits the model produced for that sample during epoch E.
    """
    candidates = [c for c in hist.column_names() if c.startswith("logits/")]
    if role is not None:
        candidates = [c for c in candidates if c == f"logits/{role}"]
    if not candidates:
        raise KdcoreError("the history holds no training logits"
                          + (f" of model '{role}'" if role else ""))
    name = candidates[0]
    logits = hist.column(name)
    producers = hist.producers(name)
    gold = hist.data("noisy_label")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for e in range(logits.shape[0]):
        if not producers[e]:
            continue
        with (out_dir / f"dynamics_epoch_{written}.jsonl").open("w") as fh:
            for i in range(logits.shape[1]):
                fh.write(json.dumps({"guid": i, f"logits_epoch_{written}":
                                     [round(float(v), 4) for v in logits[e, i]],
                                     "gold": int(gold[i])}) + "\n")
        written += 1
    return written
