"""Figures for a paper from finished runs: curves with a band over seeds, and distributions.

Curves run over the training epochs of one model (1-based, as the log prints them), so that
variants line up however many stages came before; each variant's line is the mean over its
seeds, its band one sample standard deviation, its legend entry the number of seeds; dashed
lines mark where a variant's stages change. Distributions come from the ledger at the last
epoch in which the reported model trained, pooled over seeds.

:func:`draw_figures` returns the figures as PNG bytes (:class:`Figure`), for files
(:func:`write_figures`) or for the self-contained HTML page (:mod:`kdcore.report_html`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kdcore.cli_files import output_dir, write_bytes
from kdcore.figures._common import Figure, RunResult, trained_rows
from kdcore.figures.classes import draw_test_class_accuracy
from kdcore.figures.curves import Curves, curve_series, describe, draw_curve, label_changes
from kdcore.figures.curves import curve_order as _curve_order
from kdcore.figures.ledger import (
    draw_class_accuracy,
    draw_distributions,
    draw_transition,
    pooled,
)


def draw_figures(runs: Sequence[RunResult], role: str | None = None) -> list[Figure]:
    """Every figure of ``runs``: the curves of :func:`curve_series`, then per variant the
    loss and weight distributions and the transition matrix, then per-class label accuracy
    and per-class test accuracy."""
    series = curve_series(runs, role)
    figures = [draw_curve(metric, series[metric]) for metric in sorted(series, key=_curve_order)]
    pools = pooled(runs, role)
    for variant, pool in pools.items():
        for prefix in ("loss/", "weight/"):
            fig = draw_distributions(variant, pool, prefix)
            if fig is not None:
                figures.append(fig)
        figures.append(draw_transition(variant, pool))
    for per_class in (draw_class_accuracy(pools), draw_test_class_accuracy(runs, role)):
        if per_class is not None:
            figures.append(per_class)
    return figures


def write_figures(figures: Sequence[Figure], out_dir: Path) -> list[Path]:
    """Each figure as ``out_dir/<name>.png``."""
    output_dir(out_dir)
    paths = []
    for fig in figures:
        path = out_dir / f"{fig.name}.png"
        write_bytes(path, fig.png)
        paths.append(path)
    return paths


__all__ = ["Curves", "Figure", "RunResult", "curve_series", "describe", "draw_curve",
           "draw_figures", "label_changes", "trained_rows", "write_figures"]
