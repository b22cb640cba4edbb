"""Figures of the ledger at the reported model's last trained epoch, pooled over seeds:
per-sample loss and weight distributions, label transitions, per-class label accuracy."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from kdcore.figures import _common
from kdcore.figures._common import Figure, RunResult, trained_rows
from kdcore.history_values import NO_LABEL, target_labels


def pooled(runs: Sequence[RunResult], role: str | None) -> dict[str, dict[str, Any]]:
    """Per variant, pooled over seeds at each run's last trained epoch: clean and given
    labels, the trained-on label, per-sample losses and weights, transition counts."""
    from kdcore.history import History

    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        models = [role] if role else list(run.summary)
        if not models:
            continue
        with History(run.path) as h:
            trained = np.flatnonzero(trained_rows(h, models[-1]))
            row = int(trained[-1]) if trained.size else None
            if row is None or not {"clean_label", "noisy_label"} <= set(h.data_names()):
                continue
            pool = out.setdefault(run.variant, {"clean": [], "noisy": [], "target": [],
                                                "columns": defaultdict(list),
                                                "transitions": []})
            c = h.num_classes
            clean, noisy = h.data("clean_label"), h.data("noisy_label")
            target = target_labels(h.column("target", row))  # NO_LABEL: a uniform row
            pool["classes"] = h.class_names or [str(i) for i in range(c)]
            pool["clean"].append(clean)
            pool["noisy"].append(noisy)
            pool["target"].append(target)
            m = np.zeros((c, c))
            labelled = target != NO_LABEL
            np.add.at(m, (clean[labelled], target[labelled]), 1)
            pool["transitions"].append(m / np.maximum(m.sum(1, keepdims=True), 1))
            for name in h.column_names():
                if name.startswith(("loss/", "weight/")):
                    values = h.column(name, row)
                    if values.ndim == 1 and np.isfinite(values).any():
                        pool["columns"][name].append(values)
    for pool in out.values():
        for key in ("clean", "noisy", "target"):
            pool[key] = np.concatenate(pool[key])
    return out


def draw_distributions(variant: str, pool: dict[str, Any], prefix: str) -> Figure | None:
    """Per-sample losses (``prefix = "loss/"``; split by given label right or wrong) or
    weights (``"weight/"``; split by training label right or wrong), as density histograms."""
    names = [n for n, v in pool["columns"].items()
             if n.startswith(prefix) and len(v) and sum(map(len, v)) == len(pool["clean"])]
    if not names:
        return None
    plt = _common.pyplot()
    names = names[:4]
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.0), squeeze=False)
    right = (pool["noisy"] if prefix == "loss/" else pool["target"]) == pool["clean"]
    which = "given" if prefix == "loss/" else "training"
    for ax, name in zip(axes[0], names):
        values = np.concatenate(pool["columns"][name])
        finite = np.isfinite(values)
        bins = np.histogram_bin_edges(values[finite], bins=40)
        for mask, label, color in ((right, f"{which} label right", "tab:blue"),
                                   (~right, f"{which} label wrong", "tab:red")):
            sel = values[mask & finite]
            if sel.size:
                ax.hist(sel, bins=bins, density=True, alpha=0.55, color=color,
                        label=f"{label} ({sel.size})")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("per-sample loss" if prefix == "loss/" else "weight")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    kind = "losses" if prefix == "loss/" else "weights"
    title = f"Per-sample {kind} at the last epoch, {variant}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return Figure(f"{prefix.rstrip('/')}_hist_{variant}", title,
                  f"{title}, pooled over seeds; samples split by whether their {which} label "
                  "is the true one.", _common.png(fig))


def draw_transition(variant: str, pool: dict[str, Any]) -> Figure:
    """The true class -> trained-on label matrix at the last epoch, with its cell values."""
    plt = _common.pyplot()
    matrix = np.mean(pool["transitions"], axis=0)
    c = len(matrix)
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    if c <= 12:
        for i in range(c):
            for j in range(c):
                v = matrix[i, j]
                ax.text(j, i, f"{v:.2f}".lstrip("0") if v < 1 else "1", ha="center",
                        va="center", fontsize=6, color="white" if v < 0.6 else "black")
    names = pool["classes"]
    if c <= 20:
        ax.set_xticks(np.arange(c), names, rotation=90 if max(map(len, names)) > 2 else 0,
                      fontsize=7)
        ax.set_yticks(np.arange(c), names, fontsize=7)
    ax.set_xlabel("label trained on (last epoch)")
    ax.set_ylabel("true class")
    title = f"Label transitions, {variant}"
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return Figure(f"transition_{variant}", title,
                  f"{title}: the fraction of each true class trained on each label at the "
                  "last epoch, mean over seeds.", _common.png(fig))


def draw_class_accuracy(pools: dict[str, dict[str, Any]]) -> Figure | None:
    """Per class, the accuracy of the given labels and of each variant's training labels."""
    if not pools:
        return None
    plt = _common.pyplot()
    first = next(iter(pools.values()))
    classes = first["classes"]
    c = len(classes)
    # the given labels of each set of variants that share them (a clean ceiling's differ
    # from a noisy run's): one bar for all where they agree
    given: list[tuple[list[str], dict[str, Any]]] = []
    for v, p in pools.items():
        same = next((g for g in given if np.array_equal(g[1]["noisy"], p["noisy"])
                     and np.array_equal(g[1]["clean"], p["clean"])), None)
        if same is None:
            given.append(([v], p))
        else:
            same[0].append(v)
    bars: dict[str, np.ndarray] = {}
    reference: dict[str, np.ndarray] = {}
    for names, p in given:
        label = "given labels" if len(given) == 1 else f"given labels ({', '.join(names)})"
        bars[label], reference[label] = p["noisy"] == p["clean"], p["clean"]
    bars.update({v: p["target"] == p["clean"] for v, p in pools.items()})
    reference.update({v: p["clean"] for v, p in pools.items()})
    fig, ax = plt.subplots(figsize=(max(6.4, 0.55 * c * (len(bars) + 1) / 2), 3.6))
    width = 0.8 / len(bars)
    for k, (name, right) in enumerate(bars.items()):
        per_class = np.array([right[reference[name] == i].mean() if (reference[name] == i).any()
                              else np.nan for i in range(c)])
        ax.bar(np.arange(c) + (k - (len(bars) - 1) / 2) * width, 100 * per_class, width,
               label=name, hatch="//" if k < len(given) else None)
    title = "Per-class accuracy of the labels trained on (last epoch)"
    _common.finish_class_bars(fig, ax, classes, "correct labels (%)", title)
    caption = (f"{title}, pooled over seeds; hatched: the given (noisy) labels, one bar per "
               "set of variants that share them.")
    return Figure("class_label_acc", title, caption, _common.png(fig))
