"""Stratified, seeded train / validation / gold / test splits of one labelled set."""

from __future__ import annotations

import torch

from kdcore.errors import KdcoreError


def make_splits(
    labels: torch.Tensor,
    *,
    num_classes: int,
    generator: torch.Generator,
    val_fraction: float,
    gold_per_class: int,
    test_fraction: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Split the rows of a labelled set into disjoint train, validation, gold and test parts.

    Each class is split on its own, so every part keeps the class proportions: of a class with
    ``n`` samples, ``round(test_fraction * n)`` go to test, exactly ``gold_per_class`` to the
    class-balanced gold split (the small trusted set of meta-learning methods), then
    ``round(val_fraction * n)`` to validation, and the rest to training. Which samples go where
    is decided by one random permutation drawn from ``generator``.

    Args:
        labels: the true labels ``(N,)``.
        num_classes: C.
        generator: the source of randomness; the same state gives the same splits.
        val_fraction: share of each class held out for validation, in [0, 1).
        gold_per_class: how many samples of every class form the gold split (0: none).
        test_fraction: share of each class carved out as the test set, in [0, 1).

    Returns:
        Sorted ``int64`` row indices under ``"train"``, ``"val"``, ``"gold"`` and, when
        ``test_fraction > 0``, ``"test"``; together they cover every row exactly once.

    Raises:
        KdcoreError: a fraction is out of range, a label is outside ``0..C-1``, or a class is
            too small to give its share to every split and keep a training sample.
    """
    labels = labels.reshape(-1).to(torch.int64).cpu()
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise KdcoreError(f"{name} must be in [0, 1), not {value}")
    if val_fraction + test_fraction >= 1.0:
        raise KdcoreError(
            f"val_fraction + test_fraction is {val_fraction + test_fraction:g}; it must be below "
            "1 to leave training samples"
        )
    if gold_per_class < 0:
        raise KdcoreError(f"gold_per_class must be 0 or more, not {gold_per_class}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise KdcoreError(f"labels must lie in 0..{num_classes - 1}")

    counts = torch.bincount(labels, minlength=num_classes).tolist()
    _check_class_sizes(counts, val_fraction, gold_per_class, test_fraction)
    # One permutation for all classes keeps the draw count independent of the class sizes.
    order = torch.randperm(labels.numel(), generator=generator, device=generator.device).cpu()
    parts: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "gold": [], "test": []}
    for c in range(num_classes):
        rows = order[labels[order] == c]
        n = rows.numel()
        n_test = round(test_fraction * n)
        n_val = round(val_fraction * n)
        cuts = torch.tensor([n_test, gold_per_class, n_val]).cumsum(0).tolist()
        parts["test"].append(rows[: cuts[0]])
        parts["gold"].append(rows[cuts[0] : cuts[1]])
        parts["val"].append(rows[cuts[1] : cuts[2]])
        parts["train"].append(rows[cuts[2] :])
    out = {
        name: torch.sort(torch.cat(chunks)).values if chunks else torch.empty(0, dtype=torch.int64)
        for name, chunks in parts.items()
    }
    if test_fraction <= 0:
        del out["test"]
    return out


def _check_class_sizes(counts: list[int], val_fraction: float, gold_per_class: int,
                       test_fraction: float) -> None:
    """Refuse classes too small to give their share to every split and keep a training sample,
    naming the first, how many there are, and what would fit: on a long-tailed dataset the
    first class alone was named, one rerun per class."""
    # the most gold each class can give and keep one training sample (an empty class: none)
    spare = [n - round(test_fraction * n) - round(val_fraction * n) - 1 if n else 0
             for n in counts]
    short = [c for c, n in enumerate(counts) if (n or gold_per_class)
             and spare[c] < gold_per_class]
    if not short:
        return
    c, n = short[0], counts[short[0]]
    others = (f" ({len(short)} classes are too small: {', '.join(map(str, short[:8]))}"
              f"{', ...' if len(short) > 8 else ''})" if len(short) > 1 else "")
    fits = min(spare)
    if fits >= 0:
        advice = f"lower data.gold_per_class (at most {fits} fits every class) or the fractions"
    else:
        bare = spare.index(fits)
        advice = (f"lower data.val_fraction or data.test_fraction: even without gold samples, "
                  f"class {bare} ({counts[bare]} sample{'s' * (counts[bare] != 1)}) keeps none "
                  "for training")
    raise KdcoreError(
        f"class {c} has {n} sample{'s' * (n != 1)}: too few for {gold_per_class} gold, "
        f"{round(val_fraction * n)} validation and {round(test_fraction * n)} test samples "
        f"with at least one left for training{others}; {advice}")
