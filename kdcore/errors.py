"""Exceptions that carry a user-facing message.

Anything derived from :class:`KdcoreError` is the user's to fix (a bad recipe, a missing file);
the CLI prints its message on one line and exits with code 2, never a traceback.
"""

from __future__ import annotations

import difflib
import os
import signal
import sys
from collections.abc import Iterable
from typing import Any


class KdcoreError(Exception):
    """A mistake in the input (recipe, files, command line) that the user can fix."""


class RecipeError(KdcoreError):
    """A recipe value is missing, misspelt or of the wrong type.

    Args:
        message: what is wrong and what was expected.
        file: the recipe file the value came from, if known.
        key: the dotted key path, e.g. ``stages[1].components[0].params.k``.
    """

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.file = file
        self.key = key
        self.detail = message
        where = ": ".join(part for part in (file, key) if part)
        super().__init__(f"{where}: {message}" if where else message)

    def at(self, *, file: str | None = None, key: str | None = None) -> RecipeError:
        """Return a copy that names ``file``/``key`` where this error does not yet."""
        return RecipeError(self.detail, file=self.file or file, key=self.key or key)


class NotInHistory(KdcoreError, KeyError):
    """A metric, ledger column or ``/data`` array a history does not hold: a ``KeyError``
    for code that looks names up, one line for the command line."""

    def __str__(self) -> str:  # KeyError's own would print the message in quotes
        return str(self.args[0]) if self.args else ""


class TrainingDiverged(KdcoreError):
    """A loss term became NaN or infinite; the message names the term and its component."""


class Stopped(KeyboardInterrupt):
    """A signal that asks the process to end (SIGTERM: ``kill``, a scheduler's pre-emption),
    raised where the run was, so that it stops as Ctrl-C stops it: the last checkpoint
    complete, one line, and an exit code of 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


PLUGIN_FAILURES: tuple[type[BaseException], ...] = (Exception, SystemExit, GeneratorExit)
"""What third-party code raises when it fails, as opposed to being stopped: any ``Exception``,
and the two other exceptions code raises by itself, ``SystemExit`` (a ``sys.exit`` in a plugin,
or argparse reading kdcore's own command line when a plugin module is imported) and
``GeneratorExit``. Caught where plugin code is called, they are that plugin's failure, never
kdcore's exit (``SystemExit(0)`` would end an unfinished run with status 0); only
``KeyboardInterrupt`` (Ctrl-C, and :class:`Stopped`) stops kdcore itself."""


LONG_INTEGER = (f"an integer of more than {sys.get_int_max_str_digits():,} digits, past what "
                "Python reads")
"""What int() refuses to read (``ValueError: Exceeds the limit ...``), in a user's words."""


def long_integer(exc: BaseException) -> bool:
    """Whether ``exc`` is int()'s refusal of a decimal too long to read (json and tomllib let
    it through as a plain ``ValueError``, whose advice is ``sys.set_int_max_str_digits()``)."""
    return isinstance(exc, ValueError) and "integer string conversion" in str(exc)


def shown(value: Any) -> str:
    """``type repr`` of a refused value, cut at 60 characters."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def missing_path(path: str | os.PathLike[str]) -> str:
    """A path that was not found, as a message shows it: as given, and when relative, with the
    directory it was looked for from. A recipe's paths are read from the working directory,
    but its ``extends`` from the recipe's own folder: the message says which was meant."""
    text = os.fspath(path)
    if os.path.isabs(text):
        return text
    try:
        return f"{text} (relative to the working directory {os.getcwd()})"
    except OSError:  # the working directory itself was removed
        return text


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ``" (did you mean 'x'?)"`` suffix for a misspelt ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def os_reason(exc: BaseException) -> str:
    """The system's words for a failed file operation ("No space left on device"), not the
    page of context a library (HDF5) wraps around them; else :func:`one_line`."""
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return one_line(exc)


def console_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is the broken pipe of a console whose reader has gone
    (``kdcore inspect RUN | head``): stdout's or stderr's pipe with its reading end closed.
    A broken pipe of anything else (a plugin's own subprocess) is a failure like any other."""
    import select
    import sys

    if not isinstance(exc, BrokenPipeError) or not hasattr(select, "poll"):
        return False
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):  # closed, or no file behind it
            continue
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        if any(events & select.POLLERR for _, events in poll.poll(0)):
            return True
    return False


def printable(text: str) -> str:
    """``text`` with every character a terminal would not show as itself (line breaks, escape
    sequences and other controls, U+2028, a lone surrogate from a non-UTF-8 argument) written
    as its Python escape: a message quoting what a user typed stays one visible line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def byte_size(n: int) -> str:
    """``n`` bytes in binary units, one decimal: ``"22.8 GiB"``."""
    for unit, size in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20),
                       ("KiB", 2**10)):
        if n >= size:
            # a size from a typo (hidden = 10**12) reads as "3.6e+09 PiB", not 22 digits
            return f"{n / size:.1f} {unit}" if n < 10**4 * size else f"{n / size:.2g} {unit}"
    return f"{n} bytes"


def exception_text(exc: BaseException, *, quoted: bool = False) -> str:
    """``str(exc)``, or ``repr(exc)`` if ``quoted``; where the exception cannot say itself (a
    plugin's ``__str__`` that raises, reading an attribute its ``__init__`` never set), what
    it raised instead: a message about a failure must not fail in turn."""
    try:
        return repr(exc) if quoted else str(exc)
    except Exception as inner:  # noqa: BLE001 - whatever the plugin's method raises
        said = f"<its message raised {type(inner).__name__}>"
        return f"{type(exc).__name__}({said})" if quoted else said


def one_line(exc: BaseException | str) -> str:
    """The first non-blank line of an error's message, white space folded (its type name if
    the message is empty): what a one-line user error quotes of a library's exception."""
    text = exception_text(exc) if isinstance(exc, BaseException) else exc
    for line in text.splitlines():
        if line.strip():
            return " ".join(line.split())
    return type(exc).__name__ if isinstance(exc, BaseException) else ""


def weights_only_reason(exc: BaseException) -> str:
    """What is wrong with a file ``torch.load(weights_only=True)`` refused: torch's message
    spans many lines and suggests ``weights_only=False``; its "WeightsUnpickler error:" part
    is the reason (or the first line, for other failures)."""
    _, marker, reason = str(exc).partition("WeightsUnpickler error:")
    if marker and reason.strip():
        return one_line(reason).split(". ")[0]
    # newer torch: a first paragraph of advice ("Weights only load failed. ... Re-running
    # with weights_only set to False will likely succeed"), then the reason on its own
    paragraphs = [p for p in str(exc).split("\n\n") if p.strip()]
    if len(paragraphs) > 1 and paragraphs[0].startswith("Weights only load failed"):
        return one_line(paragraphs[1]).split(". ")[0]
    # a damaged zip archive: torch adds a paragraph of guesses after miniz's reason
    return one_line(exc).partition(" This is an internal miniz error")[0]
