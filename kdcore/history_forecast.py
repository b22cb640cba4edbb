"""Whether the rest of a run's history fits on its disk, said when a stage writes its first row.

A run that records per-sample columns every epoch (the logits of every model, say) can need
more disk than is free where its history goes. It would stop when the disk fills, hours in
(one line; the history keeps every completed epoch and ``--resume`` continues once there is
room). The first row a stage appends shows what a row of that stage costs, compressed as it is
stored; times the rows still to come it is a forecast, checked against the free space once per
stage and said at most once a run, as a warning: the size of later rows, and of whatever else
writes to that disk meanwhile, is not known.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from loguru import logger

from kdcore.errors import byte_size


class DiskForecast:
    """Watches one history file's growth (:meth:`before` and :meth:`after` each appended row).

    Args:
        path: the history file.
    """

    def __init__(self, path: Path):
        self.path = path
        self.warned = False
        self._stage: str | None = None  # the stage whose first row was measured last
        self._size: int | None = None  # the file's size before the row being written

    def before(self, stage: str) -> None:
        """A row of ``stage`` is about to be appended: the first of its stage is measured."""
        self._size = None
        if self.warned or stage == self._stage:
            return
        self._stage = stage
        self._size = _size(self.path)

    def after(self, row: int, rows_total: int) -> None:
        """Row ``row`` was appended, of a run that ends with ``rows_total`` rows: warn if, at
        this row's size, the rest needs more than the free space of the history's disk."""
        if self._size is None:
            return
        grew, self._size = _size(self.path) - self._size, None
        left = rows_total - row - 1
        if grew <= 0 or left <= 0:
            return
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:  # a file system that does not say: nothing to forecast against
            return
        if grew * left > free:
            self.warned = True
            logger.warning(
                f"the history grew by {byte_size(grew)} with stage '{self._stage}''s first row: "
                f"the run's {left} rows still to come need about {byte_size(grew * left)}, and "
                f"{byte_size(free)} are free on the disk of {self.path}; the run will stop when "
                "it is full (--resume continues once there is room); run.history_skip keeps "
                "columns out of the history")


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


__all__ = ["DiskForecast"]
