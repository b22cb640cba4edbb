"""What every ``kdcore`` command shares: one-line user errors, stopping on SIGTERM as on
Ctrl-C, the plugin host, logging, the ``--help`` examples and the recipe options (``--set``,
``--plugin``, ``--strict-plugins``).

Kept apart from :mod:`kdcore.cli` so that a command defined in a module of its own
(:mod:`kdcore.cli_noise`) uses them without importing the command group.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import click

from kdcore import interrupts
from kdcore.errors import KdcoreError, Stopped, printable
from kdcore.torchrun import report_worker_error

F = TypeVar("F", bound=Callable[..., Any])
EXIT_USER_ERROR = 2


def user_errors(fn: F | None = None, *, on_interrupt: str = "") -> Any:
    """Turn :class:`KdcoreError` into one line and exit code 2, and an interrupt (Ctrl-C, or
    the SIGTERM of :func:`stop_on_signals`) into one line and 128 + the signal's number.

    Used bare (``@user_errors``) or with ``on_interrupt``, what the interrupt's line adds: how
    to continue what the command was doing (``kdcore run``: "resume with --resume")."""
    if fn is None:
        return functools.partial(user_errors, on_interrupt=on_interrupt)
    hint = f"; {on_interrupt}" if on_interrupt else ""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KdcoreError as exc:
            code = getattr(exc, "exit_code", EXIT_USER_ERROR)  # 1: failures.RunFailed
            # else the launcher says it, once; after the others' if a collective failed
            if not report_worker_error(str(exc), code,
                                       consequence=getattr(exc, "collective", None) is not None):
                click.echo(f"kdcore: error: {printable(str(exc))}", err=True)
            sys.exit(code)
        except KeyboardInterrupt as exc:
            code, what = ((128 + exc.signum, f"stopped by {exc}") if isinstance(exc, Stopped)
                          else (130, "interrupted"))
            # a worker stopped by a signal was most likely stopped by the launcher, because
            # another worker failed
            if not report_worker_error(what + hint, code, consequence=True):
                click.echo(f"kdcore: {what}{hint}", err=True)
            sys.exit(code)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Stopped` in the main thread instead of killing the
    process on the spot, once (:func:`kdcore.interrupts.stop_on_signal`), and Ctrl-C raises
    ``KeyboardInterrupt`` as Python's own handler does (:func:`kdcore.interrupts.
    interrupt_on_ctrl_c`); both are remembered, so that one whose exception Python drops still
    stops a run at its next batch. A handler someone else installed (an embedding program, a
    job scheduler's library, a notebook's kernel) is left as it is, and so is everything off
    the main thread, where Python cannot install one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = {}
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        ours[signal.SIGTERM] = interrupts.stop_on_signal
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        ours[signal.SIGINT] = interrupts.interrupt_on_ctrl_c
    previous = {signum: signal.signal(signum, handler) for signum, handler in ours.items()}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        interrupts.reset()


def plugin_host(plugins: Sequence[str], strict: bool) -> Any:
    """The installed plugins and ``--plugin`` ones (``--strict-plugins``: a failure is an
    error); loading is quiet but for one warning per skipped plugin."""
    from kdcore.plugins import PluginHost, import_object

    configure_logging(quiet=True)  # a plugin skipped while loading is one warning line
    return PluginHost(strict=strict, extra=[import_object(p) for p in plugins])


MAX_SEEDS = 100_000
"""The most seeds ``--seeds`` may name: a range past it is a typo, not a grid."""

# ASCII digits only (int() would read "1_0" as 10, and other scripts' digits), and few enough
# that int() takes them (past 4,300 it refuses)
_SEEDS_ITEM = re.compile(r"\s*(-?[0-9]{1,30})\s*(?:-\s*([0-9]{1,30})\s*)?")


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: comma-separated integers and inclusive ranges (``0-4``), in the order
    given; a seed named twice is the grid's to refuse."""
    seeds: list[int] = []
    for item in text.split(","):
        match = _SEEDS_ITEM.fullmatch(item)
        if match is None:
            raise KdcoreError(f"--seeds takes comma-separated integers or ranges (0-4), got "
                              f"'{printable(text)}'")
        first = int(match[1])
        last = first if match[2] is None else int(match[2])
        if last < first:
            raise KdcoreError(f"--seeds: the range {first}-{last} runs backwards; write "
                              f"{last}-{first}")
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise KdcoreError(f"--seeds names more than {MAX_SEEDS:,} seeds ('{printable(text)}')")
        seeds.extend(range(first, last + 1))
    return seeds


def configure_logging(quiet: bool) -> None:
    """Log to stderr: warnings only when ``quiet``, else from INFO on; errors only in a
    distributed run's processes other than rank 0, whose lines would repeat rank 0's (a
    warning about the data, once per process). A process started without stderr (``2>&-``:
    Python's ``sys.stderr`` is None) logs only to its run's log.txt."""
    from loguru import logger

    logger.remove()
    if sys.stderr is not None:
        level = "ERROR" if _another_rank() else "WARNING" if quiet else "INFO"
        logger.add(sys.stderr, level=level, format="<green>{time:HH:mm:ss}</green> {message}")


def _another_rank() -> bool:
    """Whether torchrun started this process as one of several, other than rank 0 (read
    from its environment: importing torch.distributed here would slow every command)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) > 0
    except ValueError:
        return False


def examples(*lines: str) -> str:
    """A ``--help`` epilog of runnable command lines, kept as written (click's \\b)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
    help="Override a recipe value (repeatable); list entries by index or name, e.g. "
         "stages.student.components.kd.weight=0.5",
)
plugin_option = click.option(
    "--plugin", "plugins", multiple=True, metavar="MODULE[:OBJ]",
    help="Also load this plugin module or object, importable from here (repeatable; "
         "besides the installed plugins), e.g. my_pkg.plugin or my_module:MyPlugin.",
)
strict_option = click.option(
    "--strict-plugins", is_flag=True, help="A plugin that fails to load is an error.")
