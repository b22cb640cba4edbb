"""Warnings about the training split's classes, given once the run's data are built: classes it
lacks, and classes its noisy labels teach as another. Neither stops a run (a study may mean
it), but each makes its test accuracy say something other than what a reader assumes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from loguru import logger

#: classes named in a warning before "and N more"
SHOWN = 3


def warn_if_classes_missing(dataset: str, counts: torch.Tensor, test_labels: torch.Tensor,
                            class_names: Sequence[str]) -> None:
    """Warn of the classes without a training sample (``counts``: training samples per
    class, by true label): a split made from sorted arrays (the first N rows for training), a
    list file that leaves a class out, a class of one sample carved into the test split. No
    model learns such a class, and each of its test samples counts as an error."""
    missing = (counts == 0).nonzero().flatten()
    if not len(missing):
        return
    in_test = int(torch.isin(test_labels.cpu(), missing).sum())
    names = [f"'{class_names[c]}'" for c in missing[:SHOWN].tolist()]
    them = "them" if len(missing) > 1 else "it"
    tested = ("" if not in_test else
              f"; the test split's 1 sample of {them} counts as an error" if in_test == 1 else
              f"; the test split's {in_test} samples of {them} count as errors")
    logger.warning(
        f"dataset '{dataset}': the training split holds no sample of class {', '.join(names)}"
        f"{_more(len(missing))} ({len(missing)} of {len(counts)} classes), so no model learns "
        f"{them}{tested}")


#: a class this small may be labelled mostly wrong by chance at a moderate rate: not warned of
MOSTLY_MISLABELLED_MIN = 20


def warn_if_mostly_mislabelled(transition: torch.Tensor, counts: torch.Tensor,
                               class_names: Sequence[str], model: str) -> None:
    """Warn of the classes whose training samples carry one other class's label more often than
    their own (pair-flip noise above 0.5, symmetric noise past (C-1)/C): labels alone then teach
    that class as the other, and no method can tell from them alone that they should not."""
    found = []
    for c in range(len(transition)):
        if int(counts[c]) < MOSTLY_MISLABELLED_MIN:
            continue
        others = transition[c].clone()
        others[c] = -1.0
        j = int(others.argmax())
        if others[j] > transition[c, c]:
            found.append(f"'{class_names[c]}' mostly '{class_names[j]}' "
                         f"({float(others[j]):.0%}, its own {float(transition[c, c]):.0%})")
    if found:
        logger.warning(
            f"data.noise ({model}): in the training labels, class {', '.join(found[:SHOWN])}"
            f"{_more(len(found))}: "
            f"learning from these labels alone teaches each as the other class (clean "
            f"samples, data.gold_per_class, are the way round it)")


def _more(count: int) -> str:
    """What follows the :data:`SHOWN` classes named of ``count``."""
    extra = count - SHOWN
    return f", and {extra} more class{'es' if extra > 1 else ''}" if extra > 0 else ""
