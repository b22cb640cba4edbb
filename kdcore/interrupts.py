"""Interrupts (Ctrl-C, and the SIGTERM that ``kdcore run`` turns into one) raised where
stopping is safe.

Python raises a signal's exception at whichever line the main thread is running. Inside a
callback that C code made, that is harmful: HDF5 writing the history through its Python file
object (:class:`kdcore.history_journal.JournaledFile`) loses the exception, fails the write
with a ``SystemError``, or leaves h5py's driver broken so that the process segfaults later
(``benchmarks/signal_trials.py``). :func:`held` keeps such a block whole and
delivers a signal that arrived inside it when it ends. An exception raised in a weak-reference
callback or a ``__del__`` is dropped by Python itself; :func:`stop_on_signal` (SIGTERM) and
:func:`interrupt_on_ctrl_c` (SIGINT) record their signal too, and :func:`check` (the training
loop calls it every batch) raises it again there.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from kdcore.errors import Stopped

_HELD = (signal.SIGINT, signal.SIGTERM)

requested: int | None = None
"""The signal :func:`stop_on_signal` turned into :class:`Stopped`, while its process stops."""


def stop_on_signal(signum: int, frame: object) -> None:
    """A signal handler: raise :class:`Stopped`, once; a repeat while the process stops (a
    group's signal and its forward from ``kdcore ablate --jobs N``) must not cut the stop
    short, and SIGKILL still ends it at once."""
    global requested
    if requested is not None:
        return
    requested = signum
    raise Stopped(signum)


interrupted = False
"""Whether :func:`interrupt_on_ctrl_c` has raised, while its process stops."""


def interrupt_on_ctrl_c(signum: int, frame: object) -> None:
    """SIGINT's handler: Python's own (a ``KeyboardInterrupt`` every time, so that a second
    Ctrl-C still cuts a stop short), remembered in case Python drops the exception."""
    global interrupted
    interrupted = True
    raise KeyboardInterrupt


def check() -> None:
    """Raise :class:`Stopped` (or ``KeyboardInterrupt``, for Ctrl-C) if a stop was asked for
    and its exception got lost."""
    if requested is not None:
        raise Stopped(requested)
    if interrupted:
        raise KeyboardInterrupt


def reset() -> None:
    """Forget a stop asked for (its handler is being uninstalled)."""
    global requested, interrupted
    requested, interrupted = None, False


@contextmanager
def held() -> Iterator[None]:
    """Run the block to its end: SIGINT and SIGTERM arriving inside it are delivered (their
    Python handlers called) when it ends. Off the main thread, where no handler runs, and for
    a signal without a Python handler (the system's default kills the process, which the
    history's journal survives), the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def hold(signum: int, frame: object) -> None:
        arrived.append(signum)

    saved = {s: h for s in _HELD if callable(h := signal.getsignal(s))}
    for s in saved:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(arrived):  # each signal once, in the order it came
            saved[s](s, None)


__all__ = ["check", "held", "interrupt_on_ctrl_c", "interrupted", "requested", "reset",
           "stop_on_signal"]
