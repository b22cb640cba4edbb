"""What the reading commands (``inspect``, ``report``, ``label-issues``) write and read.

Their outputs (CSV, Markdown, figures, pages) never land on one of a run's own files (a slip of
tab completion must not turn ``history.h5`` into a CSV), are written whole through a temporary
file, and a path the system refuses is one line. A run's files that cannot be read as what they
should be (a damaged history or summary) are one line too, naming the error, never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from kdcore.errors import KdcoreError, console_gone, one_line

F = TypeVar("F", bound=Callable[..., Any])


class GivenPath(click.Path):
    """``click.Path`` that refuses an empty argument: ``''`` would be the current directory
    (``ablate --out ''`` wrote its grid there, ``report ''`` read it as a run)."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value == "":
            self.fail("an empty path; name a file or folder ('.' for this one)", param, ctx)
        return super().convert(value, param, ctx)

#: the files a run directory holds (``models/`` holds its weights)
RUN_FILES = frozenset({"history.h5", "history.h5-journal", "history.h5.rebuild", "checkpoint.pt",
                       "checkpoint.pt.tmp", "checkpoint.previous.pt", "checkpoint.previous.pt.tmp",
                       "recipe.toml", "summary.json", "log.txt"})


def _is_run_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in ("history.h5", "checkpoint.pt",
                                                     "summary.json", "recipe.toml"))


def check_output(path: Path) -> Path:
    """``path`` resolved, once it is known to be fit for an output file; else one line.

    Refused: a run's own file (or anything in a run's ``models/``), a folder, and a path
    whose folder does not exist.
    """
    try:
        target = path.resolve()
        owner = (target.parent if target.name in RUN_FILES and _is_run_dir(target.parent)
                 else target.parent.parent if target.parent.name == "models"
                 and _is_run_dir(target.parent.parent) else None)
        folder_ok = target.parent.is_dir()
        if folder_ok:
            try:
                target.stat()  # a name the system refuses (too long) says so here
            except FileNotFoundError:
                pass
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise KdcoreError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}"
                          ) from None
    if owner is not None:
        raise KdcoreError(f"{path} is a file of the run in {owner}; write the output elsewhere")
    if not folder_ok:
        raise KdcoreError(f"cannot write {path}: no folder {target.parent}")
    if target.is_dir():  # refused now, before anything is printed, not when it is written
        raise KdcoreError(f"cannot write {path}: it is a folder; name a file")
    return target


@contextmanager
def output_file(path: Path, newline: str | None = None) -> Iterator[IO[str]]:
    """A text file to write ``path`` through: a temporary file beside it, moved into place
    when the block completes (a device or a pipe is written directly)."""
    target = check_output(path)
    direct = target.exists() and not target.is_file() and not target.is_dir()
    tmp = target if direct else target.with_name(f".{target.name[:200]}.{os.getpid()}.tmp")
    try:
        try:
            # a folder name from a non-UTF-8 file system holds lone surrogates: escaped
            with open(tmp, "w", newline=newline, encoding="utf-8",
                      errors="backslashreplace") as handle:
                yield handle
            if not direct:
                os.replace(tmp, target)
        finally:
            if not direct:
                tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise KdcoreError(f"cannot write {path}: {exc.strerror or exc}") from None


def output_dir(path: Path) -> Path:
    """``path`` made (with its parents) to hold output files; one line where it cannot be."""
    try:
        if path.resolve().name in RUN_FILES and _is_run_dir(path.resolve().parent):
            raise KdcoreError(f"{path} is a file of the run in {path.resolve().parent}; "
                              "write the output elsewhere")
        path.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError) as exc:
        raise KdcoreError(f"cannot make the folder {path}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    return path


def write_output(path: Path, write: Callable[[IO[str]], None], newline: str | None = None
                 ) -> None:
    """``write(handle)`` into :func:`output_file` ``path``."""
    with output_file(path, newline) as handle:
        write(handle)


def write_bytes(path: Path, data: bytes) -> None:
    """``data`` as ``path`` (in a folder :func:`output_dir` made), checked as every output is
    (:func:`check_output`: never a run's file, a link to one included), through a temporary
    file moved into place: a link at ``path`` is replaced, not written through, and a full
    disk leaves no half-written file. One line on failure."""
    check_output(path)
    tmp = path.with_name(f".{path.name[:200]}.{os.getpid()}.tmp")
    try:
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise KdcoreError(f"cannot write {path}: {exc.strerror or exc}") from None


# what reading a damaged history or summary raises beyond KdcoreError (h5py: OSError,
# RuntimeError, KeyError; content that is not what it should be: the rest)
_READ_ERRORS = (OSError, RuntimeError, KeyError, IndexError, ValueError, TypeError,
                AttributeError, RecursionError, json.JSONDecodeError)


def reading(fn: F) -> F:
    """A reading command whose input files cannot be read as a run's: one line, exit 2 (as a
    :class:`KdcoreError`), naming the error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            if console_gone(exc):  # `| head` has exited: not the run's files
                raise
            if exc.filename is None or exc.errno is None:
                raise KdcoreError(f"cannot read the run's files ({one_line(exc)})") from None
            raise KdcoreError(f"cannot read {exc.filename}: {exc.strerror}") from None
        except KdcoreError:  # its own words (NotInHistory is a KeyError too, not damage)
            raise
        except _READ_ERRORS as exc:
            detail = " ".join(str(exc).split())[:200]
            raise KdcoreError(f"cannot read the run's files as a kdcore run's; one may be "
                              f"damaged ({type(exc).__name__}: {detail})") from None

    return wrapper  # type: ignore[return-value]


__all__ = ["RUN_FILES", "check_output", "output_dir", "output_file", "reading", "write_bytes",
           "write_output"]
