"""An endless, reshuffled stream of gold-batch indices (MLC's ``gold_loader`` that cycles)."""

from __future__ import annotations

from typing import Any

import torch


class GoldCycler:
    """Batches of row indices of the gold split, one random permutation per pass.

    Each pass over the ``size`` gold rows follows a permutation drawn from the generator given
    to :meth:`next`; a batch that crosses the end of a pass takes the rest of it and the start
    of a new one, so every gold row is used once per pass.

    Args:
        size: the number of gold rows.
        batch_size: rows per batch.
    """

    def __init__(self, size: int, batch_size: int):
        if size < 1:
            raise ValueError("the gold split is empty")
        if batch_size < 1:
            raise ValueError(f"gold batch size must be positive, got {batch_size}")
        self.size = size
        self.batch_size = batch_size
        self.perm: torch.Tensor | None = None
        self.pos = 0
        self.passes = 0

    def next(self, generator: torch.Generator) -> torch.Tensor:
        """The next batch: ``batch_size`` int64 row indices (on the CPU)."""
        parts: list[torch.Tensor] = []
        need = self.batch_size
        while need:
            if self.perm is None or self.pos >= self.size:
                self.perm = torch.randperm(self.size, generator=generator)
                self.pos = 0
                self.passes += 1
            take = min(need, self.size - self.pos)
            parts.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            need -= take
        return torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"perm": None if self.perm is None else self.perm.clone(), "pos": self.pos,
                "passes": self.passes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        perm = state["perm"]
        self.perm = None if perm is None else torch.as_tensor(perm).long().cpu()
        self.pos = int(state["pos"])
        self.passes = int(state["passes"])
