"""Loggers: every epoch's metrics mirrored to TensorBoard, a CSV file, or a plugin's service.

A recipe chooses them by name, ``run.loggers = ["tensorboard", "csv"]``; the plan refuses a
name that no plugin registered (``kdcore check`` included). A logger is an observer: its
factory, registered through the ``kdcore_add_loggers`` hook (kdcore's own plugin registers
:data:`LOGGERS`), is called as the run process starts with the logger's directory,
``<run_dir>/logs/<name>/``, and the recipe, and returns an object whose ``@kdcore.hookimpl``
methods the engine calls after the plugins' observers, isolated like them: a logger that raises
is named in one warning and not called again, and the run goes on.

The step of every logged value is the epoch's **history row** (:func:`history_row`: the
epochs of the earlier stages plus the epoch), the row :class:`kdcore.History` reads it at, so
the logs of a multi-stage run line up with the history and with each other. The metrics are
those of ``kdcore_epoch_end``: everything the history row holds except ``time/epoch``, which
is measured after the observers run. A resumed run replays the epochs after its checkpoint;
both loggers drop what the interrupted process logged from that row on.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from kdcore.errors import PLUGIN_FAILURES, KdcoreError, exception_text, shown
from kdcore.hookspecs import hookimpl

if TYPE_CHECKING:
    from kdcore.context import RunContext
    from kdcore.recipe import Recipe

CSV_FIXED = ("row", "stage", "epoch")
"""The first columns of ``metrics.csv``; the metrics follow in the order they first appear."""


def history_row(ctx: RunContext, epoch: int) -> int:
    """The history row of ``epoch`` of the current stage: every logger's global step."""
    return sum(stage.epochs for stage in ctx.recipe.stages[:ctx.stage_index]) + epoch


class CsvLogger:
    """``metrics.csv``, one line per history row: ``row``, ``stage``, ``epoch``, then every
    metric seen so far, as Python writes the float (``repr``: it reads back exactly), an empty
    cell where a row lacks the metric. A metric that first appears in a later row adds a column:
    the file is then rewritten with the wider header (and so is it on resume)."""

    def __init__(self, log_dir: Path):
        self.path = log_dir / "metrics.csv"
        self.header: list[str] = list(CSV_FIXED)
        self.rows: list[dict[str, str]] | None = None  # None until the first epoch's end

    def _read(self) -> list[dict[str, str]]:
        """What an interrupted process of this run wrote."""
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as handle:
            reader = csv.DictReader(handle, restval="")
            self.header = list(reader.fieldnames or CSV_FIXED)
            return [{k: v or "" for k, v in line.items() if k is not None} for line in reader]

    @hookimpl
    def kdcore_epoch_end(self, ctx: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        row = history_row(ctx, epoch)
        rewrite = self.rows is None  # a new run replaces the file; a resumed one rewrites it
        if self.rows is None:
            self.rows = self._read() if ctx.resumed else []
        kept = [line for line in self.rows if int(line["row"]) < row]
        rewrite |= len(kept) < len(self.rows)
        cells = {"row": str(row), "stage": ctx.stage.name, "epoch": str(epoch)}
        for name, value in metrics.items():
            if name not in CSV_FIXED:
                cells[name] = repr(float(value))
        new = [name for name in cells if name not in self.header]
        self.header += new
        self.rows = [*kept, cells]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w" if rewrite or new else "a", newline="") as handle:
            writer = csv.DictWriter(handle, self.header, restval="")
            if rewrite or new:
                writer.writeheader()
                writer.writerows(self.rows)
            else:
                writer.writerow(cells)


class TensorBoardLogger:
    """Scalars in TensorBoard's event files, one tag per metric (``acc/val/student``); the
    values are TensorBoard's float32. A run that starts afresh deletes the event files of the
    run it replaces; a resumed one starts its file with a purge at its first row, which makes
    TensorBoard drop the interrupted process's values from that row on."""

    def __init__(self, log_dir: Path, writer_class: Callable[..., Any]):
        self.log_dir = log_dir
        self.writer_class = writer_class
        self.writer: Any = None

    @hookimpl
    def kdcore_epoch_end(self, ctx: RunContext, epoch: int, metrics: dict[str, float]) -> None:
        row = history_row(ctx, epoch)
        if self.writer is None:
            if not ctx.resumed:
                for old in self.log_dir.glob("events.out.tfevents.*"):
                    old.unlink()
            self.writer = self.writer_class(str(self.log_dir), purge_step=row)
        for name, value in metrics.items():
            self.writer.add_scalar(name, float(value), global_step=row)
        self.writer.flush()  # readable while the run goes on, and after a crash

    @hookimpl
    def kdcore_run_end(self, ctx: RunContext, summary: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def csv_logger(log_dir: Path, recipe: Recipe) -> CsvLogger:
    """The ``csv`` logger: ``<run_dir>/logs/csv/metrics.csv`` (:class:`CsvLogger`)."""
    return CsvLogger(log_dir)


def tensorboard_logger(log_dir: Path, recipe: Recipe) -> TensorBoardLogger:
    """The ``tensorboard`` logger: event files in ``<run_dir>/logs/tensorboard/``, through
    ``torch.utils.tensorboard`` (the ``tensorboard`` package: ``pip install kdcore[loggers]``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise KdcoreError(f"logger 'tensorboard' needs the tensorboard package ({exc}); "
                          f"install it with: pip install 'kdcore[loggers]'") from None
    return TensorBoardLogger(log_dir, SummaryWriter)


LOGGERS: Mapping[str, Callable[[Path, Recipe], object]] = {
    "csv": csv_logger,
    "tensorboard": tensorboard_logger,
}
"""kdcore's own loggers, registered by its builtin plugin."""


def start_loggers(host: Any, recipe: Recipe, run_dir: Path) -> list[tuple[str, Any]]:
    """The observers of ``recipe.run.loggers``, in order, as ``(name, observer)`` pairs for
    :class:`kdcore.plugins.ObserverBus` (``host`` is the run's ``PluginHost``).

    A factory that raises is named in one warning and the run goes on without that logger (an
    error under ``strict`` plugins); a :class:`KdcoreError` (a missing package) ends the run.
    """
    out: list[tuple[str, Any]] = []
    for name in recipe.run.loggers:
        factory = host.loggers.get(name)
        try:
            observer = factory(run_dir / "logs" / name, recipe)
        except KdcoreError:
            raise
        except PLUGIN_FAILURES as exc:  # third-party code: isolate it
            _skip(host, name, f"failed to start: {exception_text(exc, quoted=True)}")
            continue
        if not _observes(observer):  # None, or an object pluggy would register doing nothing
            _skip(host, name, f"gave {shown(observer)}, which implements no observer hook (a "
                              "@kdcore.hookimpl method named kdcore_*)")
            continue
        out.append((name, observer))
    return out


def _skip(host: Any, name: str, why: str) -> None:
    message = f"logger '{name}' ({host.loggers.provider(name)}) {why}"
    if host.strict:
        raise KdcoreError(message) from None
    logger.warning(f"{message}; the run goes on without it")


def _observes(observer: Any) -> bool:
    """Whether ``observer`` has a method marked ``@kdcore.hookimpl`` (pluggy's marker)."""
    return observer is not None and any(
        getattr(getattr(observer, attr, None), "kdcore_impl", None) is not None
        for attr in dir(observer) if attr.startswith("kdcore_"))


__all__ = ["CSV_FIXED", "LOGGERS", "CsvLogger", "TensorBoardLogger", "history_row",
           "start_loggers"]
