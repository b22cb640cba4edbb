"""How an epoch's training rows are cut into batches.

``data.batch_size`` rows at a time in the epoch's shuffled order, the last batch holding the
rest; a rest of one sample joins the batch before it. BatchNorm cannot normalise a batch of one
("Expected more than 1 value per channel when training"): a run with a BatchNorm model whose
training set was one more than a multiple of the batch size stopped at the end of its first
epoch, blaming the first loss component.
"""

from __future__ import annotations

import torch


def batches_per_epoch(n: int, batch_size: int) -> int:
    """How many batches :func:`epoch_batches` cuts ``n`` rows into (``ctx.steps_per_epoch``)."""
    count = -(-n // batch_size)
    return count - 1 if count > 1 and n % batch_size == 1 else count


def epoch_batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """``order`` (the epoch's rows, shuffled) cut into :func:`batches_per_epoch` batches."""
    count = batches_per_epoch(len(order), batch_size)
    return [order[i * batch_size:(i + 1) * batch_size if i < count - 1 else len(order)]
            for i in range(count)]


__all__ = ["batches_per_epoch", "epoch_batches"]
