"""Curves over a model's training epochs: a line per variant (the mean over its seeds), a band
of one sample standard deviation, the seed count in the legend and stage changes marked."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

from kdcore.figures import _common
from kdcore.figures._common import Figure, RunResult, trained_rows
from kdcore.history_values import target_labels

STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@attrs.define
class Curves:
    """One metric's curves: per variant one array per seed, and each variant's stage names
    along the x axis (from its first seed)."""

    runs: dict[str, list[np.ndarray]] = attrs.Factory(lambda: defaultdict(list))
    stages: dict[str, list[str]] = attrs.Factory(dict)
    model: str = ""


def describe(metric: str) -> tuple[str, str, bool]:
    """A metric's title and axis name in words, and whether it is a fraction shown in %."""
    parts = metric.split("/")
    if parts[0] in ("test", "val", "train") and len(parts) == 3:
        split, role, what = parts
        if split == "train":
            term = "total" if what == "loss" else f"'{what}' term"
            return f"Training loss of the {role} ({term})", "mean loss per sample", False
        kind = {"acc": "accuracy", "bacc": "balanced accuracy",
                "acc_clean": "accuracy on clean labels"}.get(what, what)
        if split == "test":
            return f"Test {kind} of the {role}", f"test {kind} (%)", True
        if what == "acc":
            return (f"Validation accuracy of the {role} on noisy labels (model selection)",
                    "noisy-validation accuracy (%)", True)
        return f"Validation {kind} of the {role}", f"validation {kind} (%)", True
    if metric == "label/acc":
        return "Accuracy of the labels trained on", "correct training labels (%)", True
    if metric == "label/fixed":
        return ("Mislabelled samples whose training label is right (fixed)",
                "fixed, % of mislabelled samples", True)
    if metric == "label/broken":
        return ("Correctly labelled samples whose training label is wrong (broken)",
                "broken, % of correctly labelled samples", True)
    if parts[0] == "select" and parts[-1] in ("precision", "recall", "fraction"):
        name = "/".join(parts[1:-1])
        what = {"precision": ("Precision", "clean among selected (%)"),
                "recall": ("Recall", "selected among clean (%)"),
                "fraction": ("Fraction selected", "selected samples (%)")}[parts[-1]]
        return f"{what[0]} of the selection '{name}'", what[1], True
    return metric, metric, False


def _is_curve(metric: str, role: str) -> bool:
    return (metric in (f"val/{role}/acc", f"train/{role}/loss", "label/acc")
            or (metric.startswith("select/") and metric.endswith(("/precision", "/recall"))))


def label_changes(history: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row in ``rows``: the fraction of mislabelled samples whose training label (the
    refined target's largest value, where it is alone: :func:`target_labels`) is right, and of
    correctly labelled ones whose is wrong."""
    clean, noisy = history.data("clean_label"), history.data("noisy_label")
    wrong = noisy != clean
    fixed, broken = [], []
    for row in np.flatnonzero(rows):
        right = target_labels(history.column("target", int(row))) == clean
        fixed.append(right[wrong].mean() if wrong.any() else np.nan)
        broken.append((~right[~wrong]).mean() if (~wrong).any() else np.nan)
    return np.asarray(fixed, dtype=float), np.asarray(broken, dtype=float)


def curve_series(runs: Sequence[RunResult], role: str | None = None) -> dict[str, Curves]:
    """Every curve :func:`draw_figures` draws: ``test/<role>/acc`` for every role of the run
    (or ``role``), over the epochs that train that role; the reported model's (``role``, or the
    model of the run's last stage) noisy-validation accuracy, training loss, label accuracy,
    labels fixed and broken, and selection precision and recall, over the epochs that train it.
    """
    from kdcore.history import History

    series: dict[str, Curves] = defaultdict(Curves)

    def add(metric: str, variant: str, values: np.ndarray, stages: list[str],
            model: str) -> None:
        curves = series[metric]
        curves.runs[variant].append(values)
        curves.stages.setdefault(variant, stages)
        curves.model = model

    for run in runs:
        models = [role] if role else list(run.summary)
        if not models:
            continue
        with History(run.path) as h:
            names, epochs = h.metric_names(), h.epochs()
            for model in models:
                rows = trained_rows(h, model)
                stages = [s for (s, _), keep in zip(epochs, rows) if keep]
                if f"test/{model}/acc" in names:
                    add(f"test/{model}/acc", run.variant, h.metric(f"test/{model}/acc")[rows],
                        stages, model)
            reported = models[-1]
            rows = trained_rows(h, reported)
            stages = [s for (s, _), keep in zip(epochs, rows) if keep]
            for metric in names:
                if _is_curve(metric, reported):
                    add(metric, run.variant, h.metric(metric)[rows], stages, reported)
            if "target" in h.column_names() and {"clean_label", "noisy_label"} <= set(
                    h.data_names()):
                fixed, broken = label_changes(h, rows)
                add("label/fixed", run.variant, fixed, stages, reported)
                add("label/broken", run.variant, broken, stages, reported)
    return series


def _boundaries(stages: list[str]) -> list[tuple[float, str]]:
    """Where each stage starts along 1-based epochs: (x half an epoch before its first
    epoch, its name); the first stage starts at 0.5."""
    return [(i + 0.5, stages[i]) for i in range(len(stages))
            if i == 0 or stages[i] != stages[i - 1]]


# the order of curves in a report: what the model reaches first, then how it got there
_ORDER = ("test/", "val/", "train/", "label/acc", "label/fixed", "label/broken", "select/")


def curve_order(metric: str) -> tuple[int, str]:
    return next((i for i, p in enumerate(_ORDER) if metric.startswith(p)), len(_ORDER)), metric


def draw_curve(metric: str, curves: Curves) -> Figure:
    from matplotlib.ticker import MaxNLocator

    plt = _common.pyplot()
    title, ylabel, percent = describe(metric)
    scale = 100.0 if percent else 1.0
    fig, ax = plt.subplots(figsize=(7.6, 3.8))
    drawn: dict[float, str] = {}
    longest = 1
    for k, (variant, per_seed) in enumerate(curves.runs.items()):
        length = min(len(c) for c in per_seed)
        stack = scale * np.stack([c[:length] for c in per_seed])
        with warnings.catch_warnings():  # an epoch no seed measured stays a gap
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(stack, axis=0)
            # the sample standard deviation, as the tables report it (one seed: no band)
            std = np.nanstd(stack, axis=0, ddof=1) if len(per_seed) > 1 else None
        x = np.arange(1, length + 1)
        longest = max(longest, length)
        line, = ax.plot(x, mean, STYLES[k % len(STYLES)], marker=MARKERS[k % len(MARKERS)],
                        markevery=max(1, length // 8), markersize=4, linewidth=1.4,
                        label=f"{variant} (n={len(per_seed)})", zorder=3 + k)
        if std is not None:
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.18,
                            linewidth=0, zorder=2)
        for at, stage in _boundaries(curves.stages.get(variant, [])[:length]):
            drawn.setdefault(at, stage)
    for at, stage in drawn.items():
        if at > 0.5:
            ax.axvline(at, color="0.55", linestyle=(0, (4, 3)), linewidth=0.8, zorder=1)
        ax.annotate(stage, (at, 1.0), xycoords=("data", "axes fraction"), fontsize=7,
                    color="0.35", rotation=90, ha="right", va="top", xytext=(-2, -2),
                    textcoords="offset points")
    ax.set_xlim(0.5, longest + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"training epoch of the {curves.model or 'reported model'}")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    # beside the axes, where it hides no curve however many variants there are
    ax.legend(fontsize=7, title="mean ± std over seeds", title_fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return Figure(metric.replace("/", "_"), title,
                  f"{title}: mean over seeds (line) ± one standard deviation (band); dashed "
                  "lines mark stage changes.", _common.png(fig))
