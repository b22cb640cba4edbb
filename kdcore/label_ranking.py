"""A run's label issues: the training samples whose given label the finished run believes
wrong, ranked (``kdcore label-issues``, ``kdcore.label_issues``; docs/history.md).

How a run's history is read (one model, over the epochs that trained it):

* **the model**: the one asked for, else ``student`` where the history holds its training
  logits, else the first role of the recipe's last stage whose logits it holds. Its epochs are
  the history's epoch rows of the stages whose ``train`` lists it and in which
  ``logits/<model>`` was written: E rows, in order.
* **the belief** about sample i at such a row t, a distribution over the classes: the refined
  target ``target[t, i]`` where a refiner relabelled the sample (the given label falls short
  of the target's largest value), else the model's softmax of its training logits
  ``logits/<model>[t, i]``. A refiner that only softens the given label (label smoothing, even
  to the uniform row of epsilon 1, a label propagation that agrees) leaves the model's own
  view in place.
* **flagged** at t: the belief's argmax is not the given label. A selection mask does not flag.
* **score**: the mean over the E rows of ``1 - belief_t[given label]``, from 0 (the run never
  doubted the label) to 1 (it never gave it any weight).
* **model doubt**: the mean over the E rows of ``1 - softmax(logits/<model>[t, i])[given]``:
  the model's own view, whatever the refined target says (equal to the score where no refiner
  relabelled the sample).
* **times flagged**: how many of the E rows flagged it; **since**: the epoch row (0-based, the
  history's numbering) where the sample's current unbroken streak of flagged rows began,
  counted over the model's E rows only.
* **a row without the sample's logits** (NaN: no term computed the model on its batch that
  epoch) is left out of its score, model doubt, flags and streak: the means are over the rows
  that hold it, and its state at the last row is that of the last row that did.
* **times excluded**: how many of the E rows a selection mask that counts for the model,
  written at that row (``select/<name>``, or ``select/<name>/<model>``; another model's masks
  do not count), left the sample out (one per row, however many masks did). Reported only: it
  neither flags nor ranks.
* **refined label**: the argmax of the target at the model's last row where it relabelled
  the sample, else the given label (also where no component wrote the target there); **given
  label**:
  ``/data/noisy_label``; **sample id**: ``/data/sample_id`` (the row in the training split).

The list holds the samples flagged at the model's last row, highest score first; ties in score
by the model doubt, highest first (a hard relabel scores exactly 1 at every row, so relabelled
samples tie), then by ledger row. Where the history has the true labels
(``/data/clean_label``: synthetic noise), a sample is truly mislabelled when its true label is
not the given one: precision at k is their share of the first k entries, recall the share of
all truly mislabelled samples the whole list holds.

The history is read one epoch row at a time (``N x C`` each), never all epochs at once.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from kdcore import api_args
from kdcore.cli_inspect import trained_rows
from kdcore.errors import KdcoreError
from kdcore.history import logits_kept_out, no_logits_of
from kdcore.history_values import F16_MAX

__all__ = ["LabelIssues", "find_label_issues", "label_issues", "softmax"]

_LOGITS = "logits/"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (``N x C``). The history keeps logits in float16, where a
    model that ran away wrote ±inf past 65504: such a logit counts as 65504 (inf - inf made
    the row NaN, and numpy warned on the command's output)."""
    z = np.clip(np.asarray(logits, dtype=np.float64), -F16_MAX, F16_MAX)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


@attrs.frozen(eq=False)
class LabelIssues:
    """The ranked list :func:`find_label_issues` returns; every array is in list order.

    Attributes:
        model: the model role whose epochs were read.
        rows: the history's epoch rows that trained it (0-based), in order.
        epochs: ``(stage, epoch within the stage)`` of every history row (0-based).
        num_samples: the training samples in the history.
        index: each listed sample's ledger row (its index in the history's arrays).
        sample_id: its row in the dataset's training split.
        given: the given (noisy) label.
        refined: the target's argmax at the model's last row where it relabelled the sample,
            else the given label.
        score: the mean of ``1 - belief[given]`` over the model's rows.
        model_doubt: the mean of ``1 - softmax(logits)[given]`` over the model's rows (the
            tie-break after the score).
        times_flagged: the number of the model's rows that flagged the sample.
        times_excluded: the number of the model's rows at which a selection mask that counts
            for it left the sample out.
        since: the epoch row where its current unbroken flagged streak began (0-based).
        clean: the true label, None where the history has no true labels.
        num_mislabelled: the truly mislabelled samples of the whole run (None: unknown).
        class_names: the dataset's name of each class, by label (empty: none recorded).
    """

    model: str
    rows: np.ndarray
    epochs: list[tuple[str, int]]
    num_samples: int
    index: np.ndarray
    sample_id: np.ndarray
    given: np.ndarray
    refined: np.ndarray
    score: np.ndarray
    model_doubt: np.ndarray
    times_flagged: np.ndarray
    times_excluded: np.ndarray
    since: np.ndarray
    clean: np.ndarray | None
    num_mislabelled: int | None
    class_names: list[str] = attrs.field(factory=list)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def truly_mislabelled(self) -> np.ndarray | None:
        """Per listed sample, whether its true label differs from the given one (None:
        unknown)."""
        return None if self.clean is None else self.clean != self.given

    def precision_at(self, k: int) -> float | None:
        """The share of truly mislabelled samples among the first ``k`` of the list; None
        where the true labels are unknown or the list is shorter than ``k``.

        Raises:
            KdcoreError: ``k`` is not a positive integer.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
            raise KdcoreError(f"precision at k takes a positive integer k, got {k!r}")
        truly = self.truly_mislabelled
        if truly is None or k > len(self):
            return None
        return float(truly[:k].mean())

    @property
    def recall(self) -> float | None:
        """The share of the run's truly mislabelled samples that the list holds; None where
        the true labels are unknown or no sample is mislabelled."""
        truly = self.truly_mislabelled
        if truly is None or not self.num_mislabelled:
            return None
        return float(truly.sum() / self.num_mislabelled)

    def since_epoch(self) -> list[tuple[str, int]]:
        """``(stage, epoch within the stage)`` of :attr:`since`, 0-based, per listed sample."""
        return [self.epochs[r] for r in self.since.tolist()]

    def table(self) -> dict[str, Any]:
        """The list as columns (what :meth:`frame` and ``--csv`` hold): ``rank`` (1..),
        ``ledger_row``, ``sample_id``, ``given_label``, ``refined_label``, ``clean_label`` and
        ``truly_mislabelled`` (None where unknown), ``score``, ``model_doubt``,
        ``times_flagged``, ``times_excluded``, ``since_row``, ``since_stage``, ``since_epoch``
        (0-based)."""
        since = self.since_epoch()
        truly = self.truly_mislabelled
        return {
            "rank": np.arange(1, len(self) + 1),
            "ledger_row": self.index,
            "sample_id": self.sample_id,
            "given_label": self.given,
            "refined_label": self.refined,
            "clean_label": self.clean,
            "truly_mislabelled": None if truly is None else truly.astype(np.int64),
            "score": self.score,
            "model_doubt": self.model_doubt,
            "times_flagged": self.times_flagged,
            "times_excluded": self.times_excluded,
            "since_row": self.since,
            "since_stage": np.array([s for s, _ in since], dtype=object),
            "since_epoch": np.array([e for _, e in since], dtype=np.int64),
        }

    def frame(self) -> Any:
        """The list as a pandas DataFrame, one row per sample (:meth:`table`'s columns; the
        unknown ones left out).

        Raises:
            KdcoreError: pandas is not installed (``pip install 'kdcore[analysis]'``).
        """
        from kdcore.frames import pandas_module

        pd = pandas_module()
        return pd.DataFrame({k: v for k, v in self.table().items() if v is not None})


def _model(hist: Any, model: str | None) -> str:
    """The model to read (see the module's text)."""
    roles = [c.removeprefix(_LOGITS) for c in hist.column_names() if c.startswith(_LOGITS)]
    if model is not None:
        if model not in roles:
            raise no_logits_of(hist, model)
        return model
    if "student" in roles:
        return "student"
    try:
        stages = tomllib.loads(hist.recipe).get("stages", [])
    except tomllib.TOMLDecodeError as exc:
        raise KdcoreError(f"{hist.path}: cannot read the run's recipe ({exc})") from None
    for stage in reversed(stages):
        for role in stage.get("train", []):
            if role in roles:
                return str(role)
    raise KdcoreError(f"{hist.path} holds no training logits of a model its stages train"
                      f"{logits_kept_out(hist)}")



def _masks(columns: list[str], model: str) -> list[str]:
    """The selection masks that count for ``model``: shared ones and its own."""
    out = []
    for name in columns:
        parts = name.split("/")
        if parts[0] == "select" and (len(parts) == 2 or parts[2:] == [model]):
            out.append(name)
    return out


def _read(hist: Any, model: str | None) -> LabelIssues:
    role = _model(hist, model)
    logits = _LOGITS + role
    written = hist.producers(logits)
    rows = [r for r in trained_rows(hist, role) if written[r]]
    if not rows:
        raise KdcoreError(f"model '{role}' trained in no recorded epoch of {hist.path}")
    given = hist.data("noisy_label").astype(np.int64)
    n = given.shape[0]
    at = np.arange(n)
    columns = hist.column_names()
    targets = hist.producers("target") if "target" in columns else None
    masks = {m: hist.producers(m) for m in _masks(columns, role)}
    doubt, own_doubt = np.zeros(n), np.zeros(n)
    count, excluded = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    seen = np.zeros(n, dtype=np.int64)  # the rows that hold the sample's logits
    start = np.full(n, -1, dtype=np.int64)  # the current flagged streak's first row, -1: none
    flagged = np.zeros(n, dtype=bool)
    target = None
    for r in rows:  # one epoch row at a time: N x C each
        z = hist.column(logits, r)
        has = ~np.isnan(z).any(axis=1)  # NaN: nothing computed the model on its batch
        belief = softmax(z)
        own_doubt += np.where(has, 1.0 - belief[at, given], 0.0)  # before any relabel
        target = hist.column("target", r).astype(np.float64) if targets and targets[r] else None
        if target is not None:  # relabelled: the given label short of the target's largest
            relabelled = target[at, given] < target.max(1)
            belief[relabelled] = target[relabelled]
        now = belief.argmax(1) != given
        left_out = np.zeros(n, dtype=bool)
        for name, producers in masks.items():
            if producers[r]:
                left_out |= ~hist.column(name, r).astype(bool)
        doubt += np.where(has, 1.0 - belief[at, given], 0.0)
        count += now & has
        seen += has
        excluded += left_out
        flagged = np.where(has, now, flagged)
        start = np.where(has, np.where(now, np.where(start >= 0, start, r), -1), start)
    refined = given if target is None else np.where(relabelled, target.argmax(1), given)
    with np.errstate(invalid="ignore"):  # a sample no row holds: NaN
        score, model_doubt = doubt / seen, own_doubt / seen
    listed = np.flatnonzero(flagged)
    # score descending, then model doubt descending, then ledger row (lexsort: last key first)
    listed = listed[np.lexsort((listed, -model_doubt[listed], -score[listed]))]
    data = hist.data_names()
    sample_id = hist.data("sample_id") if "sample_id" in data else at
    clean = hist.data("clean_label").astype(np.int64) if "clean_label" in data else None
    return LabelIssues(
        model=role, rows=np.asarray(rows, dtype=np.int64), epochs=list(hist.epochs()),
        num_samples=n, index=listed, sample_id=np.asarray(sample_id)[listed],
        given=given[listed], refined=np.asarray(refined)[listed], score=score[listed],
        model_doubt=model_doubt[listed], times_flagged=count[listed],
        times_excluded=excluded[listed], since=start[listed],
        clean=None if clean is None else clean[listed],
        num_mislabelled=None if clean is None else int((clean != given).sum()),
        class_names=list(getattr(hist, "class_names", [])))


def find_label_issues(run: str | Path | Any, model: str | None = None) -> LabelIssues:
    """The samples whose given label the run believes wrong, ranked (see the module's text).

    Args:
        run: a run directory, its ``history.h5``, or an open :class:`~kdcore.history.History`.
        model: the model role to read (default: ``student`` where the run has it, else the
            model of the recipe's last stage).

    Raises:
        KdcoreError: a run or model of the wrong type, no readable history, no training
            logits of ``model``, or a model that trained in no recorded epoch.
    """
    from kdcore.errors import KdcoreError
    from kdcore.history import History

    if model is not None and not isinstance(model, str):
        raise KdcoreError(f"model takes a model role such as 'student', not "
                          f"{type(model).__name__} {model!r}")
    if not isinstance(run, str | os.PathLike) and hasattr(run, "column_names"):
        return _read(run, model)  # an open History, or one that reads like it
    with History(api_args.path(run, "run")) as hist:
        return _read(hist, model)


#: ``kdcore.label_issues``: the public name of :func:`find_label_issues`
label_issues = find_label_issues
