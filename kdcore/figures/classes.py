"""Per-class test accuracy of the reported model, from the confusion matrices each stage
records (``/data/test_confusion/<stage>/<role>``): where pair-flip or human noise hurts, it
hurts some classes, and a mean accuracy hides which."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kdcore.figures import _common
from kdcore.figures._common import Figure, RunResult

PREFIX = "test_confusion/"


def per_class_test_accuracy(runs: Sequence[RunResult], role: str | None
                            ) -> tuple[dict[str, np.ndarray], list[str], set[str]]:
    """Per variant, the mean over its seeds of each class's test accuracy (recall), with the
    weights kept by the last stage that trained the reported model (``role``, else each run's
    last summarised model); the class names; the models shown. Runs without the matrix
    (written before kdcore recorded it) are left out."""
    from kdcore.history import History

    per_run: dict[str, list[np.ndarray]] = {}
    classes: list[str] = []
    shown: set[str] = set()
    for run in runs:
        models = [role] if role else list(run.summary)
        if not models:
            continue
        with History(run.path) as h:
            names = {n for n in h.data_names() if n.startswith(PREFIX)}
            stages = list(dict.fromkeys(stage for stage, _ in h.epochs()))
            last = [s for s in stages if f"{PREFIX}{s}/{models[-1]}" in names]
            if not last:
                continue
            m = h.data(f"{PREFIX}{last[-1]}/{models[-1]}").astype(np.float64)
            classes = h.class_names or [str(i) for i in range(h.num_classes)]
            shown.add(models[-1])
        with np.errstate(invalid="ignore"):  # a class the test split lacks: 0 / 0, NaN
            per_run.setdefault(run.variant, []).append(np.diag(m) / m.sum(1))
    return {v: np.nanmean(np.stack(rs), axis=0) if len(rs) > 1 else rs[0]
            for v, rs in per_run.items()}, classes, shown


def draw_test_class_accuracy(runs: Sequence[RunResult], role: str | None) -> Figure | None:
    """Bars per class, one per variant (:func:`per_class_test_accuracy`); None without data."""
    accuracy, classes, shown = per_class_test_accuracy(runs, role)
    if not accuracy:
        return None
    plt = _common.pyplot()
    c = len(classes)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.55 * c * (len(accuracy) + 1) / 2), 3.6))
    width = 0.8 / len(accuracy)
    for k, (variant, values) in enumerate(accuracy.items()):
        ax.bar(np.arange(c) + (k - (len(accuracy) - 1) / 2) * width, 100 * values, width,
               label=variant)
    who = f"the {shown.pop()}" if len(shown) == 1 else "each variant's reported model"
    title = f"Per-class test accuracy of {who}"
    _common.finish_class_bars(fig, ax, classes, "test accuracy (%)", title)
    caption = (f"{title}, with the weights kept by the last stage that trained it (its "
               "best-validation or last epoch, as the recipe keeps), mean over seeds.")
    return Figure("class_test_acc", title, caption, _common.png(fig))
