"""A tensor's version counter, read where there may be none: the ledger and the history writer
both tell "the same tensor, untouched since" by it."""

from __future__ import annotations

from typing import Any


def version(data: Any) -> int:
    """A tensor's version counter (in-place changes move it); -1 where there is none (numpy
    arrays, inference-mode tensors), which no later call matches."""
    try:
        return int(data._version)
    except (AttributeError, RuntimeError):
        return -1


__all__ = ["version"]
