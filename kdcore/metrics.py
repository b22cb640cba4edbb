"""Metrics computed every epoch: accuracy, class-balanced accuracy, selection quality, ROC AUC."""

from __future__ import annotations

import torch


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``pred == labels``; NaN for an empty set."""
    if labels.numel() == 0:
        return float("nan")
    return float((pred == labels).double().mean())


def balanced_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean per-class recall over the classes present in ``labels``.

    Under class imbalance plain accuracy rewards predicting the large classes; F&F argue for
    this measure (see the F&F plugin's docs).
    """
    labels = labels.long()
    counts = torch.bincount(labels, minlength=num_classes).double()
    hits = torch.bincount(labels[pred == labels], minlength=num_classes).double()
    present = counts > 0
    if not bool(present.any()):
        return float("nan")
    return float((hits[present] / counts[present]).mean())


def selection_quality(selected: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """How well a selection picks the samples whose observed label is right.

    Args:
        selected: ``(N,)`` bool, or soft scores in [0, 1]: each sample counts by its score (a
            score of 0.25 is a quarter of a selected sample, as it weighs a quarter in the
            loss), so that a soft selector's fraction is the share of the data's weight it
            keeps rather than the share of nonzero scores, which is nearly always 1.
        clean: ``(N,)`` bool, True where the noisy label equals the true label.

    Returns:
        ``fraction`` selected, ``precision`` (share of selected that are clean) and ``recall``
        (share of clean that are selected); for a bool mask, counts of samples.
    """
    sel = selected.double()
    n_sel = float(sel.sum())
    n_clean = int(clean.sum())
    both = float(sel[clean.bool()].sum())
    return {
        "fraction": n_sel / max(sel.numel(), 1),
        "precision": both / n_sel if n_sel else float("nan"),
        "recall": both / n_clean if n_clean else float("nan"),
    }


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """The ROC AUC of ``scores`` for telling ``positive`` samples from the others: the chance
    that a random positive scores above a random negative, ties counting one half (the
    Mann-Whitney U statistic over ``n_pos * n_neg``). Non-finite scores are left out; NaN when
    either class is empty.

    Args:
        scores: ``(N,)`` floats (a weighting component's weights).
        positive: ``(N,)`` bool (whether the sample's training label is right).
    """
    keep = torch.isfinite(scores)
    scores, positive = scores[keep].double(), positive[keep].bool()
    n_pos = int(positive.sum())
    n_neg = int(positive.numel()) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # average ranks (1-based) so that tied scores share their ranks
    values, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    last = torch.cumsum(counts, 0).double()
    mean_rank = last - (counts.double() - 1) / 2
    rank_sum = float(mean_rank[inverse][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def confusion(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C, C)`` counts, rows the true class."""
    idx = labels.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)
