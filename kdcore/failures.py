"""A run or a check that stopped on an exception that is not a :class:`KdcoreError`: a plugin's
``ValueError`` from an input its author did not foresee, or a bug.

The command line reports it in one line that names the component and hook that raised it (the
outermost component frame of the traceback), the exception, and where its traceback went (the
run's ``log.txt``, which :func:`save_traceback` appends to); exit code 1, since the input may be
fine. ``KDCORE_TRACEBACK=1`` re-raises it instead, for whoever debugs the plugin. The Python API
(:func:`kdcore.run_recipe`) raises the exception itself.
"""

from __future__ import annotations

import functools
import os
import re
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kdcore.errors import PLUGIN_FAILURES, KdcoreError, console_gone, exception_text

#: the environment variable that makes the command line show the traceback itself
SHOW_TRACEBACK = "KDCORE_TRACEBACK"
_MAX_MESSAGE = 300
_SAVED = "kdcore_traceback_log"  # the attribute save_traceback sets on the exception
#: a collective's timeout, as gloo ("Timed out waiting 20000ms") and NCCL's watchdog ("ran
#: for 600010 milliseconds before timing out") say it
_TIMED_OUT = re.compile(r"timed out|timing out|timeout", re.IGNORECASE)
#: what autograd says when a graph's backward pass runs twice
_SECOND_BACKWARD = "Trying to backward through the graph a second time"
#: what torch's CPU allocator says when an allocation fails (a RuntimeError, unlike CUDA's)
_CPU_OUT_OF_MEMORY = "DefaultCPUAllocator: can't allocate memory"


F = TypeVar("F", bound=Callable[..., Any])


class RunFailed(KdcoreError):
    """A run or check stopped on an unexpected exception (exit code 1, not 2: the cause may
    be a plugin's bug rather than the input).

    Attributes:
        collective: the torch.distributed function that raised it (:func:`failed_collective`),
            else None: then the process most likely failed because another one stopped, and
            the launcher of ``--nproc`` says the others' lines first.
    """

    exit_code = 1

    def __init__(self, message: str, collective: str | None = None):
        super().__init__(message)
        self.collective = collective


def shows_traceback() -> bool:
    return os.environ.get(SHOW_TRACEBACK, "") not in ("", "0")


def raising_component(exc: BaseException) -> str | None:
    """``component 'NAME' (USE) in HOOK`` for the outermost component method in ``exc``'s
    traceback, or None when no component's code was running."""
    from kdcore.component import Component

    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if isinstance(owner, Component):
            return (f"component '{owner.name}' ({owner.spec.use}) in "
                    f"{frame.f_code.co_name}")
        tb = tb.tb_next
    return None


def failed_collective(exc: BaseException) -> str | None:
    """``torch.distributed's NAME``, the innermost public torch.distributed function in
    ``exc``'s traceback (a collective that failed: most often because another process of the
    run stopped, so the component that called it is not the cause), or None."""
    name = None
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if (str(tb.tb_frame.f_globals.get("__name__")).startswith("torch.distributed")
                and not code.co_name.startswith("_")):
            name = code.co_name
        tb = tb.tb_next
    return None if name is None else f"torch.distributed's {name}"


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device's memory ran out: CUDA's ``OutOfMemoryError``, the CPU
    allocator's RuntimeError, or Python's ``MemoryError``."""
    import torch

    return isinstance(exc, MemoryError | torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and _CPU_OUT_OF_MEMORY in exception_text(exc))


def failure(exc: BaseException, what: str) -> RunFailed:
    """The one-line error for ``exc``, which stopped ``what`` ("the run", "the set-up")."""
    collective = failed_collective(exc)
    where = ", ".join(w for w in (raising_component(exc), collective) if w) or None
    message = " ".join(exception_text(exc).split())
    timed_out = collective is not None and _TIMED_OUT.search(message) is not None
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "..."
    cause = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if out_of_memory(exc):  # the batch's size, not the code running when it ran out
        text = (f"{what} stopped: out of memory{' in ' + where if where else ''} ({cause}); "
                f"a smaller data.batch_size or model needs less, as does run.precision = "
                f'"bf16" on a GPU' + ("; --resume continues from the last checkpoint"
                                      if what == "the run" else ""))
    else:
        text = f"{what} stopped: {where + ' raised ' if where else ''}{cause}"
    if isinstance(exc, SystemExit):  # argparse's parse_args() calls it too
        text += "; plugin code must raise an exception, not call sys.exit"
    if message.startswith(_SECOND_BACKWARD) and where is None:  # the engine's own backward
        text += ("; a component's backward hook that runs the backward pass itself must "
                 "return True, or the engine runs it again")
    if timed_out:
        text += ("; the other processes took longer than run.distributed_timeout_s: raise it "
                 "if they were busy rather than hung")
    elif collective is not None:
        text += "; most likely another process of the run stopped first, and its line says why"
    log = getattr(exc, _SAVED, None)
    if log is not None:
        text += f"; the traceback is in {log}"
    else:
        text += f"; {SHOW_TRACEBACK}=1 shows the traceback"
    return RunFailed(text, collective)


def one_line_failures(what: str) -> Callable[[F], F]:
    """A command decorator: an unexpected exception becomes :func:`failure`'s error (unless
    ``KDCORE_TRACEBACK`` is set); user errors and click's own pass as they are."""
    import click

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (KdcoreError, click.ClickException, click.exceptions.Exit):
                raise
            except PLUGIN_FAILURES as exc:  # the commands themselves never call sys.exit
                if shows_traceback() or console_gone(exc):  # `| head` exited: said nowhere
                    raise
                raise failure(exc, what) from None

        return wrapper  # type: ignore[return-value]

    return decorate


def save_error_line(exc: BaseException, log: Path) -> None:
    """Append why a run stopped (a :class:`~kdcore.errors.KdcoreError`: a diverged loss, a
    refused set-up) to its ``log``, one line in the file sink's format, so that the run
    directory says it after the console has gone (a batch job's, say); the console has the
    command's own one line."""
    import datetime

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    message = " ".join(str(exc).split())
    try:
        with log.open("a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"{stamp} | ERROR    | the run stopped: {message}\n")
    except OSError:  # no log after all (a full disk): the console's line is the record
        pass


def save_traceback(exc: BaseException, log: Path) -> None:
    """Append ``exc`` with its traceback to ``log``, and note on ``exc`` that it is there."""
    try:
        with log.open("a", encoding="utf-8", errors="backslashreplace") as f:
            f.write("".join(traceback.format_exception(exc)))
        setattr(exc, _SAVED, log)
    except (OSError, AttributeError):  # no log after all: the one line says how to see it
        pass


__all__ = ["SHOW_TRACEBACK", "RunFailed", "failed_collective", "failure", "one_line_failures",
           "save_error_line",
           "raising_component", "save_traceback", "shows_traceback"]
