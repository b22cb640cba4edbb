"""kdcore.interrupts: a signal that arrives while HDF5 writes the history through Python is
held until the write is committed, and a stop whose exception Python dropped still stops the
run at its next batch. (Before, a signal sent early in a run, while the history's row was
much of each epoch, now and then segfaulted the process, failed it with a SystemError, or was
lost while the run trained on: benchmarks/signal_trials.py.)"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from kdcore import PluginHost, history_journal, hookimpl, interrupts, load_recipe, run_recipe
from kdcore.errors import Stopped
from tests.test_history import _append, _assert_rows, _row, _writer


def _raise_stopped(signum, frame):
    raise Stopped(signum)


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Python's own SIGINT handler, whatever the test runner installed (mutmut's)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def sigterm_raises():
    """SIGTERM raising Stopped for the test's while, as `kdcore run` has it."""
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    yield
    signal.signal(signal.SIGTERM, previous)
    interrupts.reset()


def test_a_signal_inside_a_held_block_is_delivered_when_it_ends(sigterm_raises):
    done = []
    with pytest.raises(Stopped):
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # twice: delivered once
            done.append("the block ran to its end")
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGTERM) is _raise_stopped
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt) as info:  # Ctrl-C's own handler, held the same way
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("again")
    assert done[-1] == "again" and type(info.value) is KeyboardInterrupt
    with interrupts.held():  # nothing arrived: nothing raised
        pass


def test_off_the_main_thread_a_held_block_changes_no_handler():
    seen = []

    def body():
        with interrupts.held():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


def test_a_signal_without_a_python_handler_is_not_taken_over():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with interrupts.held():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ctrl_c_inside_hdf5s_write_of_a_row_commits_the_row_then_interrupts(tmp_path,
                                                                              monkeypatch):
    """The signal arrives in the file object HDF5 calls (the journal's first write): the row
    is written and committed whole, the interrupt raised after it, the file appendable."""
    writer = _writer(tmp_path)
    _append(writer, range(1))
    pwrite, sent = history_journal.disk.pwrite, []

    def signalled_pwrite(fd, data, offset):
        if not sent:
            sent.append(offset)
            os.kill(os.getpid(), signal.SIGINT)
        return pwrite(fd, data, offset)

    monkeypatch.setattr(history_journal.disk, "pwrite", signalled_pwrite)
    with pytest.raises(KeyboardInterrupt):
        writer.append_epoch(**_row(1))
    assert sent
    monkeypatch.setattr(history_journal.disk, "pwrite", pwrite)
    _append(writer, range(2, 3))
    _assert_rows(tmp_path / "history.h5", 3)


class DropsItsStop:
    """An observer that asks for a stop the way the SIGTERM handler does, in a place where
    Python drops the exception (a weak reference's callback), at batch 1 of the student."""

    handler = staticmethod(interrupts.stop_on_signal)
    signum = signal.SIGTERM

    def __init__(self) -> None:
        self.batches = 0

    @hookimpl
    def kdcore_batch_end(self, ctx, batch, losses):
        if ctx.stage.name != "student":
            return
        self.batches += 1
        if self.batches == 2:
            try:
                self.handler(self.signum, None)
            except KeyboardInterrupt:  # Stopped is one
                pass  # dropped, as "Exception ignored in ..." drops it


class DropsItsCtrlC(DropsItsStop):
    handler = staticmethod(interrupts.interrupt_on_ctrl_c)
    signum = signal.SIGINT


@pytest.mark.slow
@pytest.mark.parametrize(("probe", "raised", "logged"), [
    (DropsItsStop, Stopped, "stopped by SIGTERM"),
    (DropsItsCtrlC, KeyboardInterrupt, "interrupted")])
def test_a_stop_whose_exception_was_dropped_stops_the_run_at_the_next_batch(
        tiny_recipe, tmp_path, probe, raised, logged):
    """SIGTERM's Stopped, or Ctrl-C's KeyboardInterrupt, dropped by Python at batch 1."""
    probe = probe()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            run_recipe(load_recipe(tiny_recipe), out=str(tmp_path / "run"),
                       host=PluginHost(extra=[probe]))
    finally:
        interrupts.reset()
    assert type(info.value) is raised
    if raised is Stopped:
        assert info.value.signum == signal.SIGTERM
    assert probe.batches == 2  # not one batch more
    assert f"{logged} in stage 'student', epoch 1" in (tmp_path / "run" / "log.txt").read_text()
