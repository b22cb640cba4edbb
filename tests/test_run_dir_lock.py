"""One process per run directory: a run holds its folder's lock from before it changes anything
there until it ends, however it ends; a second ``kdcore run``, ``--resume`` or ``--overwrite``
into the folder meanwhile is one line and exit 2, and the live run's files are left as they
were. (Before the lock, an ``--overwrite`` started beside a live run deleted its history under
it, and two ``--resume`` would have appended their epochs to one history.)"""

from __future__ import annotations

import pytest

from kdcore import PluginHost, hookimpl, load_recipe, run_recipe
from kdcore.errors import KdcoreError
from kdcore.rundir import RunDirLock
from kdcore.testing import InterruptAt, Interrupted
from tests.cli_helpers import invoke
from tests.cli_helpers import one_line_error as assert_one_line_error


class LockSeen:
    """An observer that tries the run directory's lock at every epoch's end."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @hookimpl
    def kdcore_epoch_end(self, ctx, epoch, metrics):
        try:
            with RunDirLock() as other:
                other.acquire(ctx.run_dir)
        except KdcoreError as exc:
            self.seen.append(str(exc))
        else:
            self.seen.append("free")


def _in_use(out) -> str:
    return (f"{out} is in use by another kdcore process (a run, its --resume or --overwrite); "
            "wait for it to end, or give another --out")


@pytest.mark.slow
def test_a_run_holds_its_folder_while_it_trains_and_leaves_it_free_however_it_ends(
        tiny_recipe, tmp_path):
    out, probe = tmp_path / "run", LockSeen()
    run_recipe(load_recipe(tiny_recipe), out=str(out), host=PluginHost(extra=[probe]))
    assert probe.seen and set(probe.seen) == {_in_use(out)}
    with RunDirLock() as after:
        after.acquire(out)
    stopped = tmp_path / "stopped"
    with pytest.raises(Interrupted):
        run_recipe(load_recipe(tiny_recipe), out=str(stopped),
                   host=PluginHost(extra=[InterruptAt(epoch=0, batch=1, stage="student")]))
    with RunDirLock() as after:  # an exception out of the run releases it too
        after.acquire(stopped)


@pytest.mark.slow
def test_run_resume_and_overwrite_beside_a_live_run_are_refused_and_touch_nothing(
        tiny_recipe, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        run_recipe(load_recipe(tiny_recipe), out=str(out),
                   host=PluginHost(extra=[InterruptAt(epoch=0, batch=1, stage="student")]))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with RunDirLock() as live:  # the run, alive in another process
        live.acquire(out)
        for flags in ((), ("--resume",), ("--overwrite",)):
            assert_one_line_error(invoke("run", tiny_recipe, "--out", out, "-q", *flags),
                                  _in_use(out))
        result = invoke("check", tiny_recipe, "--out", out)  # the recipe is fine: a warning
        assert result.exit_code == 0, result.output
        assert _in_use(out) in result.stderr
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    result = invoke("run", tiny_recipe, "--out", out, "-q", "--resume")  # ended: it resumes
    assert result.exit_code == 0, result.output


def test_a_forked_worker_that_drops_the_runs_locks_does_not_hold_its_folder(tmp_path):
    """A DataLoader worker is a fork of the run and shares its lock's open file: a SIGKILLed
    run's directory stayed locked while its workers lived on (seconds, until torch's
    watchdog saw the parent gone), and ``--resume`` was refused as in use. A worker drops
    its copies first (:func:`kdcore.locks.drop_inherited`, in ``rundata.start_worker``)."""
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    for drop, free in ((True, True), (False, False)):
        run = RunDirLock()
        run.acquire(tmp_path)
        ready, done = fork.Event(), fork.Event()
        worker = fork.Process(target=_worker, args=(drop, ready, done))
        worker.start()
        try:
            assert ready.wait(30)
            run.release()  # as the run's death closes its descriptor
            other = RunDirLock()
            try:
                other.acquire(tmp_path)
                taken = True
            except KdcoreError:
                taken = False
            finally:
                other.release()
            assert taken is free
        finally:
            done.set()
            worker.join(30)


def _worker(drop, ready, done):
    from kdcore import rundata

    if drop:
        rundata.start_worker(0)
    ready.set()
    done.wait(30)


def test_a_released_lock_is_not_closed_again_by_a_later_worker(tmp_path):
    """A run that ended gave its lock's descriptor back: a worker forked later (the next run
    of ``kdcore ablate --jobs 1``, in the same process) must leave alone whatever file now has
    that number."""
    import multiprocessing

    run = RunDirLock()
    run.acquire(tmp_path)
    number = run._fd
    run.release()
    with open(tmp_path / "other", "w") as other:
        assert other.fileno() == number  # the lowest free number, as POSIX gives it
        fork = multiprocessing.get_context("fork")
        still_open = fork.Value("b", 0)
        worker = fork.Process(target=_still_open_after_start, args=(number, still_open))
        worker.start()
        worker.join(30)
    assert still_open.value == 1


def _still_open_after_start(fd, still_open):
    import os

    from kdcore import rundata

    rundata.start_worker(0)
    try:
        os.fstat(fd)
        still_open.value = 1
    except OSError:
        still_open.value = 0


def test_dropping_a_lock_whose_descriptor_is_gone_is_quiet(tmp_path):
    import os

    from kdcore import locks

    live = os.open(tmp_path, os.O_RDONLY)
    gone = os.open(tmp_path, os.O_RDONLY)
    os.close(gone)
    locks.held_for_the_run(gone)
    locks.held_for_the_run(live)
    locks.drop_inherited()  # a worker whose copy was closed already goes on to the next
    with pytest.raises(OSError):
        os.fstat(live)  # closed by the drop
    locks.drop_inherited()  # nothing left to close
