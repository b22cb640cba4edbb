"""What every figure module shares: the run and figure types, matplotlib, the PNG bytes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Protocol

import attrs
import numpy as np

from kdcore.errors import KdcoreError


class RunResult(Protocol):
    """A finished run as :func:`kdcore.report.find_runs` gives it."""

    path: Path
    variant: str
    summary: dict[str, Any]


@attrs.frozen
class Figure:
    """One figure: its file stem, its title and caption, and the PNG itself."""

    name: str
    title: str
    caption: str
    png: bytes


def trained_rows(history: Any, role: str) -> np.ndarray:
    """A mask over the history's epoch rows: the rows of stages that train ``role``
    (:func:`kdcore.cli_inspect.trained_rows`, as a boolean array)."""
    from kdcore.cli_inspect import trained_rows as rows_of

    mask = np.zeros(len(history.epochs()), dtype=bool)
    mask[rows_of(history, role)] = True
    return mask


def pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise KdcoreError("figures need matplotlib: pip install 'kdcore[report]'") from exc
    return plt


def png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    return buf.getvalue()


def finish_class_bars(fig: Any, ax: Any, classes: list[str], ylabel: str, title: str) -> None:
    """The per-class bar charts' axes: class names under their bars (slanted when long), the
    axis label, the title, the legend and the grid."""
    long = max(map(len, classes)) > 3
    ax.set_xticks(np.arange(len(classes)), classes, rotation=45 if long else 0,
                  ha="right" if long else "center", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
