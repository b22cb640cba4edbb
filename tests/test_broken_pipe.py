"""A console whose reader went away (``kdcore inspect RUN | head``) ends a command quietly, as
click does for any command (exit 1, nothing printed); it is not "cannot read the run's files"
nor "the run stopped". A broken pipe of anything else stays a failure with its one line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from kdcore.cli_files import reading
from kdcore.errors import KdcoreError, console_gone
from kdcore.failures import one_line_failures
from kdcore.history_writer import HistoryWriter
from kdcore.ledger import Column


@pytest.fixture
def stdout_pipe(monkeypatch):
    """``stdout_pipe(reader=False)``: sys.stdout made a pipe whose reading end is closed (as
    after ``| head`` has exited), or still open. Set in the test's own call: pytest's output
    capture replaces sys.stdout between a fixture and the test."""
    ends: list[int] = []
    streams = []

    def make(reader: bool):
        read, write = os.pipe()
        if reader:
            ends.append(read)
        else:
            os.close(read)
        stream = os.fdopen(write, "w", buffering=1)
        streams.append(stream)
        monkeypatch.setattr(sys, "stdout", stream)
        return stream

    yield make
    monkeypatch.undo()
    for stream in streams:
        try:
            stream.close()
        except BrokenPipeError:
            pass
    for fd in ends:
        os.close(fd)


def _pipe_error() -> BrokenPipeError:
    return BrokenPipeError(32, "Broken pipe")


def test_console_gone_is_a_broken_pipe_of_stdout_with_no_reader(stdout_pipe):
    stdout_pipe(reader=False)
    with pytest.raises(BrokenPipeError) as info:
        print("row", file=sys.stdout)
    assert console_gone(info.value)
    assert not console_gone(OSError(5, "Input/output error"))  # another write error
    assert not console_gone(ValueError("Broken pipe"))


def test_a_broken_pipe_with_the_console_still_read_is_not_the_console(stdout_pipe):
    stream = stdout_pipe(reader=True)
    assert not console_gone(_pipe_error())
    os.set_blocking(stream.fileno(), False)
    with pytest.raises(BlockingIOError):  # a reader that does not keep up: the pipe is full
        while True:
            os.write(stream.fileno(), b"x" * 4096)
    assert not console_gone(_pipe_error())  # and the answer comes without waiting for it


def test_a_broken_stderr_is_the_console_too(monkeypatch):
    """``kdcore run ... 2>&1 | head``: stderr the broken pipe; a stdout with no file behind it
    (an in-process runner's) is passed over."""
    import io

    read, write = os.pipe()
    os.close(read)
    stream = os.fdopen(write, "w")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        assert console_gone(_pipe_error())
    finally:
        monkeypatch.undo()
        stream.close()  # nothing written: nothing to flush into the broken pipe


def test_reading_commands_let_the_consoles_broken_pipe_through(stdout_pipe):
    stdout_pipe(reader=False)

    @reading
    def command() -> None:
        print("row", file=sys.stdout)

    with pytest.raises(BrokenPipeError):  # click's own handling ends it quietly
        command()


def test_reading_commands_name_a_broken_pipe_that_is_not_the_console(stdout_pipe):
    stdout_pipe(reader=True)

    @reading
    def command() -> None:
        raise _pipe_error()

    with pytest.raises(KdcoreError, match=r"^cannot read the run's files \("):
        command()


def test_a_run_lets_the_consoles_broken_pipe_through_and_names_any_other(stdout_pipe,
                                                                         monkeypatch):
    monkeypatch.delenv("KDCORE_TRACEBACK", raising=False)
    stdout_pipe(reader=True)

    @one_line_failures("the run")
    def command() -> None:
        raise _pipe_error()

    with pytest.raises(KdcoreError, match="^the run stopped: BrokenPipeError"):
        command()
    stdout_pipe(reader=False)

    @one_line_failures("the run")
    def printing() -> None:
        print("summary", file=sys.stdout)

    with pytest.raises(BrokenPipeError):
        printing()


def test_kdcore_inspect_piped_into_a_reader_that_stops_ends_quietly(tmp_path):
    """The process boundary is the point: a real pipe, closed by its reader after one line."""
    n = 4000  # rows enough to fill the pipe's buffer
    writer = HistoryWriter(tmp_path / "history.h5")
    writer.create(recipe_toml='[[stages]]\nname = "s"\ntrain = ["m"]\n', versions={},
                  num_classes=2, class_names=["a", "b"],
                  constants={"noisy_label": np.zeros(n, dtype=np.int32)},
                  transition_matrix=np.eye(2))
    for epoch in range(3):
        writer.append_epoch(stage="s", epoch=epoch, metrics={}, columns={
            "loss/ce": Column(np.linspace(0, 1, n, dtype=np.float32), "ce", "value")})
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdcore", "inspect", str(tmp_path), "--column", "loss/ce"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"row,stage,epoch")
    proc.stdout.close()
    with proc.stderr:
        stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    # (under mutmut the child also prints mutmut's own warnings; they are not kdcore's)
    assert not any(word in stderr for word in ("kdcore:", "Traceback", "Broken pipe")), stderr
