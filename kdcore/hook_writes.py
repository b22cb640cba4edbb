"""An epoch's ledger writes of what the batch hooks return, and of what an abstention means.

A ``select`` or ``weight`` hook that returns None for a batch, or a mapping without one of the
models it serves, abstains: those samples count in full for the terms it acts on, as a mask or
weight of 1 would make them. Written as nothing, the batch's rows of its column kept what an
earlier epoch (or the column's creation, False) had put there, and the epoch's history row,
its ``select/<name>/fraction`` and ``label-issues``' exclusions showed them left out where they
had trained. So once a hook has written a column in an epoch, the rows of the batches in which
it abstained hold 1: at once for the batches after its first write, at the epoch's end for
those before. A hook that abstains the whole epoch writes nothing (the epoch row holds the
column's fill value: :meth:`kdcore.ledger.Ledger.unwritten`), and a column a component writes
itself while its hook returns None (``small_loss``'s record-only mask) is left as it wrote it.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from kdcore.context import ColumnKind
from kdcore.ledger import Ledger
from kdcore.step import Produced


class HookWrites:
    """Writes a batch's targets, masks and weights to ``ledger`` as they are produced, rows
    :attr:`index`, and the identity (1) in the rows of the batches whose hook abstained.

    Call :meth:`start` before an epoch's first batch and :meth:`settle` after its last.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.index: torch.Tensor | None = None  # the current batch's ledger rows
        self.start()

    def start(self) -> None:
        """Forget the last epoch's writes and abstentions."""
        self._written: set[str] = set()  # the columns a hook's returned values wrote
        self._pending: list[tuple[str, torch.Tensor, str]] = []

    def write(self, produced: Produced, kind: ColumnKind) -> None:
        """A value a hook returned for the current batch (``combine``'s ``record``)."""
        self.ledger.write(produced.column, self.index, produced.values,
                          producer=produced.producer, kind=kind)
        self._written.add(produced.column)

    def abstained(self, column: str, producer: str) -> None:
        """A hook that could have written ``column`` abstained on the current batch
        (``combine``'s ``abstain``)."""
        if column in self._written:
            self._identity(column, self.index, producer)
        else:  # decided at the epoch's end: the hook may never write this column
            self._pending.append((column, self.index, producer))

    def settle(self) -> None:
        """Write the identity in the abstained rows of the columns written since :meth:`start`
        that were abstained on before their first write."""
        pending, self._pending = self._pending, []
        rows: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)
        for column, index, producer in pending:
            if column in self._written:
                rows[column, producer].append(index)
        for (column, producer), parts in rows.items():
            self._identity(column, torch.cat(parts), producer)

    def _identity(self, column: str, index: torch.Tensor, producer: str) -> None:
        # the column exists (a hook wrote it this epoch), so its kind is kept; the ones are
        # made where the column lives, not copied there
        data = self.ledger[column]
        ones = torch.ones(len(index), dtype=data.dtype, device=data.device)
        self.ledger.write(column, index, ones, producer=producer)


__all__ = ["HookWrites"]
