"""What the CLI tests share: an in-process ``kdcore`` call, the one-line-error contract, a
run directory's files by content (to show a refused command changed nothing), and the lines
a block logs."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

from click.testing import CliRunner, Result
from loguru import logger

from kdcore.cli import main


def invoke(*args: object) -> Result:
    """``kdcore ARGS`` in this process (paths and numbers as strings)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result: Result, *needles: str) -> str:
    """Exit 2, one line of output and no traceback; the line holds every needle."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in result.output, result.output
    return lines[0]


def error_last(result: Result, *needles: str) -> None:
    """Exit 2 with one error line, the last: for a command that prints (a table) before it
    finds what is wrong."""
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert [line for line in lines if "error" in line] == lines[-1:], result.output
    assert lines[-1].startswith("kdcore: error: "), result.output
    for needle in needles:
        assert needle in lines[-1], result.output


def digest(run_dir: Path) -> dict[str, str]:
    """Every file under ``run_dir``, by content."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def logged(level: str = "INFO") -> Iterator[list[str]]:
    """The messages loguru logs at ``level`` and above while the block runs."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level=level)
    try:
        yield lines
    finally:
        logger.remove(sink)
