"""A transfer term given as a row-wise loss function and its inputs, not as its values.

A ``transfer`` hook may return its per-sample loss as values ``(B,)``; then the engine reduces
them with a mean (one op forward, one autograd node backward) and records them. Returned as a
:class:`PerSampleLoss`, the same term costs what a hand-written loop pays: where no mask or
weight applies to it, the engine takes the term's fused mean (for the built-in cross-entropy,
``F.nll_loss``'s own reduction over the log-probabilities), and the per-sample values for the
``loss/<name>`` column are computed from the inputs a few dozen batches at a time, in one call
without gradients, off the backward pass.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import cast

import torch

RowsFn = Callable[..., torch.Tensor]
_VERSION = operator.attrgetter("_version")


class PerSampleLoss:
    """A per-sample loss as ``rows(*inputs)``, evaluated when and how the engine needs it.

    Args:
        rows: ``rows(*inputs) -> (B,)``, the loss of each row; row ``i`` of the result depends
            only on row ``i`` of each input, so the engine may evaluate the rows of several
            batches in one call. Pass a module-level function: batches whose ``rows`` are the
            same function are evaluated together.
        *inputs: tensors whose first dimension is the batch's; they must not be changed in
            place after the hook returns (the engine reads them again for the record).
        mean: ``mean(*inputs) -> ()``, a fused kernel for ``rows(*inputs).mean()`` whose
            gradients are those of that mean (``F.cross_entropy``'s ``"mean"`` reduction is
            one: its gradients equal the mean of its ``"none"`` values' bit for bit); None:
            ``rows(*inputs).mean()``.
    """

    __slots__ = ("rows", "inputs", "mean_fn", "_versions")

    def __init__(self, rows: RowsFn, *inputs: torch.Tensor, mean: RowsFn | None = None):
        if not inputs:
            raise ValueError("a PerSampleLoss needs at least one input tensor")
        self.rows = rows
        self.inputs = inputs
        self.mean_fn = mean
        self._versions: tuple[int, ...] | None = None

    def values(self) -> torch.Tensor:
        """The per-sample losses ``(B,)``, with the graph of the inputs."""
        return self.rows(*self.inputs)

    def mean(self) -> torch.Tensor:
        """The batch mean of :meth:`values`, with its graph."""
        if self.mean_fn is None:
            return self.rows(*self.inputs).mean()
        return self.mean_fn(*self.inputs)

    def kept(self) -> PerSampleLoss:
        """The same loss, kept for the record until it is evaluated (at most a few dozen
        batches later): the inputs that carry a graph are detached, so that the graph (and
        whatever a component's own backward pass kept alive in it) is not held with them, and
        their versions are noted, so that an input changed in place before then is caught.
        This loss itself keeps its graph."""
        inputs = tuple([t.detach() if t.requires_grad else t for t in self.inputs])
        out = object.__new__(PerSampleLoss)  # once per batch: no argument checks to repeat
        out.rows, out.inputs, out.mean_fn = self.rows, inputs, None  # the record takes no mean
        out._versions = tuple(map(_VERSION, inputs))
        return out

    def changed(self) -> bool:
        """Whether an input was changed in place since :meth:`kept`."""
        return self._versions is not None and self._versions != tuple(
            map(_VERSION, self.inputs))

    def joins(self, other: PerSampleLoss) -> bool:
        """Whether ``other``'s rows may be evaluated in one call with these: the same function
        on inputs of the same dtypes (inputs that do not concatenate are evaluated apart)."""
        return other.rows == self.rows and len(other.inputs) == len(self.inputs) and all(
            a.dtype == b.dtype for a, b in zip(self.inputs, other.inputs))


def evaluate_rows(parts: list[torch.Tensor | PerSampleLoss]) -> torch.Tensor:
    """The per-sample values of ``parts`` (values, or kept losses), without gradients,
    concatenated in order;
    consecutive losses that :meth:`~PerSampleLoss.joins` are evaluated in one call.

    Raises:
        ValueError: an input was changed in place after its hook returned, or ``rows`` gave
            a result of the wrong shape.
    """
    out: list[torch.Tensor] = []
    i, n = 0, len(parts)
    while i < n:
        part = parts[i]
        if not isinstance(part, PerSampleLoss):
            out.append(part)
            i += 1
            continue
        j = i + 1
        while j < n:
            other = parts[j]
            if not isinstance(other, PerSampleLoss) or not part.joins(other):
                break
            j += 1
        out.append(_evaluate(cast(list[PerSampleLoss], parts[i:j])))
        i = j
    if not out:
        return torch.empty(0)
    return torch.cat(out) if len(out) > 1 else out[0]


def _evaluate(group: list[PerSampleLoss]) -> torch.Tensor:
    if any(p.changed() for p in group):
        raise ValueError("an input of a PerSampleLoss was changed in place after the "
                         "transfer hook returned it; return a copy")
    rows = sum(int(p.inputs[0].shape[0]) for p in group)
    with torch.no_grad():
        try:
            inputs = [torch.cat(ts) if len(ts) > 1 else ts[0]
                      for ts in zip(*(p.inputs for p in group))]
        except RuntimeError:  # other trailing shapes or devices: one call per batch
            values = torch.cat([p.rows(*p.inputs) for p in group])
        else:
            values = group[0].rows(*inputs)
    if tuple(values.shape) != (rows,):
        raise ValueError(f"PerSampleLoss rows gave shape {tuple(values.shape)} for {rows} "
                         "rows; it must give one value per row")
    return values


__all__ = ["PerSampleLoss", "evaluate_rows"]
