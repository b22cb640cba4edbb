"""An epoch's per-sample records (each term's loss, each trained model's logits), kept per batch
and written to the ledger once, at the epoch end: two indexed writes per batch cost more than
the rest of the engine's per-batch bookkeeping.

A loss given as a :class:`~kdcore.terms.PerSampleLoss` is kept as its detached inputs and
evaluated ``group`` batches at a time in one call, so that its record costs no op per batch and
the inputs held stay bounded.
"""

from __future__ import annotations

import math
from typing import cast

import torch

from kdcore.errors import KdcoreError
from kdcore.ledger import Ledger
from kdcore.terms import PerSampleLoss, evaluate_rows


class _Column:
    __slots__ = ("producer", "index", "values", "settled")

    def __init__(self, producer: str):
        self.producer = producer
        self.index: list[torch.Tensor] = []
        self.values: list[torch.Tensor | PerSampleLoss] = []
        self.settled = 0  # values[:settled] are tensors

    def settle(self, column: str) -> None:
        """Evaluate what is pending into one tensor (and its rows into one index)."""
        if self.settled == len(self.values):
            return
        self.values[self.settled:] = [_evaluate(column, self.producer, self.values[self.settled:])]
        index = self.index[self.settled:]
        self.index[self.settled:] = [torch.cat(index) if len(index) > 1 else index[0]]
        self.settled = len(self.values)


class EpochRecords:
    """The per-sample records of an epoch's batches, by ledger column.

    Args:
        group: how many batches' :class:`~kdcore.terms.PerSampleLoss` records are evaluated
            together.
    """

    def __init__(self, group: int = 32):
        self.group = group
        self._columns: dict[str, _Column] = {}

    def add(self, column: str, producer: str, index: torch.Tensor,
            values: torch.Tensor | PerSampleLoss) -> None:
        """Keep one batch's record of ``column`` (rows ``index``)."""
        entry = self._columns.get(column)
        if entry is None:
            entry = self._columns[column] = _Column(producer)
        entry.index.append(index)
        entry.values.append(values)
        if len(entry.values) - entry.settled >= self.group:
            entry.settle(column)

    def evaluate(self, column: str, producer: str, values: torch.Tensor | PerSampleLoss
                 ) -> torch.Tensor:
        """One batch's record as values (a loss given as a function evaluated now)."""
        if isinstance(values, torch.Tensor):
            return values
        return _evaluate(column, producer, [values])

    def write(self, ledger: Ledger) -> None:
        """Write every column to ``ledger`` (kind ``value``) and start afresh. The rows of a
        column that no batch recorded this epoch (a term that abstained on their batches, a
        model nothing computed there) become NaN: they had kept an earlier epoch's values, or
        the 0 a new column starts with, which the history showed as this epoch's loss."""
        columns, self._columns = self._columns, {}
        for column, entry in columns.items():
            entry.settle(column)  # every value is a tensor now
            values = torch.cat(cast(list[torch.Tensor], entry.values))
            index = torch.cat(entry.index)
            if len(index) < ledger.size and values.is_floating_point():
                data = ledger.ensure(column, values, producer=entry.producer, kind="value")
                if data.is_floating_point():
                    data.fill_(math.nan)
            ledger.write(column, index, values, producer=entry.producer, kind="value")


def _evaluate(column: str, producer: str, parts: list[torch.Tensor | PerSampleLoss]
              ) -> torch.Tensor:
    try:
        return evaluate_rows(parts)
    except ValueError as exc:
        raise KdcoreError(f"component '{producer}', column '{column}': {exc}") from None


__all__ = ["EpochRecords"]
