"""The mini-batch a component's hooks see: its rows, targets, the models' outputs and a
per-batch store."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from kdcore.context import BatchStore, ModelOutput


class Batch:
    """One training mini-batch, as every component hook sees it.

    Attributes:
        index: the stable training-sample index of each row ``(B,)``: the ledger row.
        x: the (augmented) inputs on the run's device.
        noisy_label: the observed, possibly wrong, label ``(B,)``.
        targets: the current soft targets ``(B, C)``; refinement hooks replace them in turn.
        hard_targets: the class indices ``(B,)`` of which ``targets`` are exactly the one-hot
            vectors, when the engine knows that (no refinement yet, epoch-level targets still
            the one-hot labels), else None: a loss may then take the cheaper hard-label kernel
            (:func:`kdcore.losses.soft_cross_entropy`'s ``labels``) with the same values.
        step: the global optimiser step counter of the run.
        num_classes: C.
        store: values components leave for later components of this batch, keyed by producer
            (:class:`~kdcore.context.BatchStore`).
        records: the per-sample values the engine records for this batch, by ledger column
            (``loss/<term>``, ``logits/<role>``), detached; observers read them in
            ``kdcore_batch_end`` (the ledger itself receives them once, at the epoch end).
    """

    def __init__(
        self,
        index: torch.Tensor,
        x: torch.Tensor,
        noisy_label: torch.Tensor,
        *,
        forward: Callable[[str, torch.Tensor], ModelOutput],
        num_classes: int,
        step: int = 0,
        targets: torch.Tensor | None = None,
        hard_targets: torch.Tensor | None = None,
        targets_from: torch.Tensor | None = None,
        stored: Mapping[str, Callable[[], ModelOutput]] | None = None,
    ):
        self.index = index
        self.x = x
        self.noisy_label = noisy_label
        self.num_classes = num_classes
        self.step = step
        self._forward = forward
        # with targets_from (an (N, C) column), the rows are read on first use: a batch whose
        # loss takes the hard labels never gathers them
        self._targets = targets
        self._targets_from = targets_from
        self._targets_version = -1 if targets is None else targets._version
        self._hard_targets = hard_targets
        self._store: BatchStore | None = None
        self.records: dict[str, torch.Tensor] = {}
        self._outputs: dict[str, ModelOutput] = {}
        # roles whose outputs on the training set are stored (models.<role>.cache_outputs)
        self._stored = stored

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def store(self) -> BatchStore:
        # made on first use: most batches of most recipes never leave a value
        if self._store is None:
            self._store = BatchStore()
        return self._store

    @property
    def targets(self) -> torch.Tensor:
        if self._targets is None:
            if self._targets_from is None:
                raise ValueError("this batch was built without targets")
            self._targets = self._targets_from[self.index]
            self._targets_version = self._targets._version
        return self._targets

    @targets.setter
    def targets(self, value: torch.Tensor) -> None:
        self._targets = value
        self._hard_targets = None

    @property
    def hard_targets(self) -> torch.Tensor | None:
        # an in-place edit of the targets (their version counter moves) voids the hard labels
        if self._hard_targets is None or (self._targets is not None and
                                          self._targets._version != self._targets_version):
            return None
        return self._hard_targets

    def out(self, role: str) -> ModelOutput:
        """Logits and features of model ``role`` on ``batch.x``, computed once per batch.

        A model that the stage trains runs in train mode with gradients; a frozen one runs in
        eval mode without them, or its rows are read from its stored outputs on the training
        set (``models.<role>.cache_outputs``).
        """
        cached = self._outputs.get(role)
        if cached is None:
            full = self._stored.get(role) if self._stored is not None else None
            if full is None:
                cached = self._outputs[role] = self._forward(role, self.x)
            else:
                out = full()
                rows = self.index.to(out.logits.device)
                cached = self._outputs[role] = ModelOutput(out.logits[rows], out.features[rows])
        return cached

    def computed(self, role: str) -> ModelOutput | None:
        """The cached output of ``role`` if some component asked for it, else None."""
        return self._outputs.get(role)

    def forward(self, role: str, x: torch.Tensor) -> ModelOutput:
        """Run model ``role`` on other inputs (a mixed or second view); not cached."""
        return self._forward(role, x)


__all__ = ["Batch"]
