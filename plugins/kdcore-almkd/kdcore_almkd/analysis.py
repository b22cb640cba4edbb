"""Does lambda on truly noisy samples move toward the KD term? Read it from a run's history.

For every epoch row that holds the weight table ``weight/<name>`` ``(N, M + 1)`` (columns
``[CE, KD_1, ..., KD_M]``), compare its mean on the truly noisy samples (``clean_mask`` false in
the history's ``/data``) with its mean on the clean ones: the CE weight, the summed KD weight
and the KD share ``sum_m w_m / sum_k w_k`` (for ALM-KD's convex mix the share is lambda itself).

Usage::

    python -m kdcore_almkd.analysis RUN_DIR [--column weight/almkd]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np

from kdcore.history import History


@attrs.frozen
class EpochRow:
    """Means of one epoch's weight table over the clean and the noisy samples."""

    stage: str
    epoch: int
    ce_clean: float
    ce_noisy: float
    kd_clean: float
    kd_noisy: float
    share_clean: float
    share_noisy: float

    @property
    def share_gap(self) -> float:
        """KD share on noisy minus on clean samples: positive when noise leans on the teachers."""
        return self.share_noisy - self.share_clean


def weight_columns(history: History) -> list[str]:
    """Ledger columns that hold a per-sample weight table ``(epochs, N, K)`` with ``K >= 2``."""
    out = []
    for name in history.column_names():
        if not name.startswith("weight/"):
            continue
        if len(history) == 0:
            continue
        row = history.column(name, 0)  # one epoch row (N, ...)
        if row.ndim == 2 and row.shape[1] >= 2:
            out.append(name)
    return out


def kd_share(weights: np.ndarray) -> np.ndarray:
    """``sum_m w_m / sum_k w_k`` over the last axis of ``(..., K)`` weights."""
    w = weights.astype(np.float64)
    return w[..., 1:].sum(axis=-1) / np.maximum(w.sum(axis=-1), 1e-12)


def _mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].mean()) if mask.any() else float("nan")


def lambda_by_noise(history: History, column: str | None = None) -> list[EpochRow]:
    """Per epoch row holding ``column``: its means over truly noisy against clean samples.

    Args:
        history: an open run history.
        column: the weight table (default: the only ``weight/*`` table in the history).
    """
    if column is None:
        found = weight_columns(history)
        if len(found) != 1:
            raise ValueError(f"name the weight table with column=...; found {found or 'none'}")
        column = found[0]
    clean = history.data("clean_mask").astype(bool)
    noisy = ~clean
    table = history.column(column)
    rows = []
    for (stage, epoch), w in zip(history.epochs(), table):
        w = w.astype(np.float64)
        if np.isnan(w).all():  # an epoch of an earlier stage, before the table existed
            continue
        kd = w[:, 1:].sum(axis=1)
        share = kd_share(w)
        rows.append(EpochRow(
            stage=stage, epoch=epoch,
            ce_clean=_mean(w[:, 0], clean), ce_noisy=_mean(w[:, 0], noisy),
            kd_clean=_mean(kd, clean), kd_noisy=_mean(kd, noisy),
            share_clean=_mean(share, clean), share_noisy=_mean(share, noisy)))
    return rows


def format_rows(rows: Sequence[EpochRow]) -> str:
    """A plain-text table, one line per epoch."""
    head = (f"{'stage':<12} {'epoch':>5} {'ce clean':>9} {'ce noisy':>9} {'kd clean':>9} "
            f"{'kd noisy':>9} {'share clean':>11} {'share noisy':>11} {'gap':>7}")
    lines = [head]
    for r in rows:
        lines.append(f"{r.stage:<12} {r.epoch:>5} {r.ce_clean:>9.4f} {r.ce_noisy:>9.4f} "
                     f"{r.kd_clean:>9.4f} {r.kd_noisy:>9.4f} {r.share_clean:>11.4f} "
                     f"{r.share_noisy:>11.4f} {r.share_gap:>+7.4f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kdcore_almkd.analysis",
        description="Mean lambda (KD share) on truly noisy vs clean samples, per epoch.")
    parser.add_argument("run_dir", type=Path, help="a run directory (or its history.h5)")
    parser.add_argument("--column", default=None,
                        help="the weight table, e.g. weight/almkd (default: the only one)")
    args = parser.parse_args(argv)
    path = args.run_dir
    if not (path / "history.h5" if path.is_dir() else path).is_file():
        print(f"error: no history.h5 in {path}", file=sys.stderr)
        return 2
    with History(path) as history:
        try:
            rows = lambda_by_noise(history, args.column)
        except (ValueError, KeyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
