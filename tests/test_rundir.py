"""kdcore.rundir's decisions one by one, without a run: where a run goes, what it may replace
there and what it refuses, each refusal's whole line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from kdcore import locks
from kdcore.errors import KdcoreError
from kdcore.recipe import load_recipe, recipe_from_dict
from kdcore.rundir import RunDirLock, prepare_run_dir
from kdcore.testing import component, stage, tiny_recipe, write_recipe


def _recipe(tmp_path: Path, **run):
    return recipe_from_dict(tiny_recipe(stage("s", 1, ["student"], component("ce")),
                                        run={"output_dir": str(tmp_path / "runs"), **run}))


def _refused(recipe, out, **flags) -> str:
    with pytest.raises(KdcoreError) as err:
        prepare_run_dir(recipe, None if out is None else str(out),
                        **{"resume": False, "overwrite": False, **flags})
    return str(err.value)


def test_without_out_the_run_goes_to_output_dir_slash_name_made_with_its_parents(tmp_path):
    recipe = _recipe(tmp_path, name="first", output_dir=str(tmp_path / "a" / "b"))
    made = prepare_run_dir(recipe, None, resume=False, overwrite=False)
    assert made == tmp_path / "a" / "b" / "first" and made.is_dir()
    assert list(made.iterdir()) == []  # the write probe leaves nothing
    deep = tmp_path / "x" / "y" / "z"
    assert prepare_run_dir(recipe, str(deep), resume=False, overwrite=False) == deep
    assert deep.is_dir()


def test_resume_needs_something_of_a_run(tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    expected = (f"nothing to resume: no run was started in {out}; run without --resume to "
                "start one (--overwrite replaces an earlier run)")
    assert _refused(recipe, out, resume=True) == expected  # no folder
    out.mkdir()
    assert _refused(recipe, out, resume=True) == expected  # an empty folder
    (out / "log.txt").write_text("")
    assert _refused(recipe, out, resume=True) == expected  # nothing resume reads
    for name in ("history.h5", "recipe.toml", "checkpoint.pt"):
        alone = tmp_path / f"only-{name}"
        alone.mkdir()
        (alone / name).write_text("")
        # the folder passes; what resume makes of the file is checked later
        assert prepare_run_dir(recipe, str(alone), resume=True, overwrite=False) == alone


def test_the_recipe_file_is_not_the_runs_own_recipe_toml(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    source = write_recipe(tiny_recipe(stage("s", 1, ["student"], component("ce"))),
                          out / "recipe.toml")
    recipe = load_recipe(source)
    assert _refused(recipe, out, overwrite=True) == (
        f"the recipe is {source}, the file the run in {out} writes its resolved recipe to; "
        "move the recipe, or give another --out")


def test_a_folder_with_a_runs_files_but_no_history_is_the_users(tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    out.mkdir()
    (out / "log.txt").write_text("mine")
    (out / "summary.json").write_text("{}")
    assert _refused(recipe, out) == (
        f"{out} holds log.txt, summary.json, which a run writes, but no run; give an empty or "
        "new --out, or --overwrite to replace them")
    assert (out / "log.txt").read_text() == "mine"


def test_a_run_killed_at_its_start_is_said_to_resume(tmp_path):
    """A run killed before its first checkpoint and its history leaves its resolved recipe
    (then its log): the refusal of a plain rerun says that --resume starts it again."""
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    out.mkdir()
    (out / "recipe.toml").write_text(recipe.to_toml())
    (out / "log.txt").write_text("")
    assert _refused(recipe, out) == (
        f"{out} holds recipe.toml, log.txt, which a run writes, but no run; give an empty or "
        "new --out, or --overwrite to replace them; a run killed there before its first "
        "checkpoint: --resume starts it again")
    assert prepare_run_dir(recipe, str(out), resume=True, overwrite=False) == out

def test_an_earlier_run_needs_resume_or_overwrite(tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    out.mkdir()
    (out / "history.h5").write_text("")
    assert _refused(recipe, out) == (
        f"{out} already holds a run; use --resume to continue it, --overwrite to replace it, "
        "or --out for a new directory")


def test_overwrite_removes_the_earlier_runs_history_journal_checkpoint_summary_and_log(
        tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    out.mkdir()
    gone = ("history.h5", "history.h5-journal", "checkpoint.pt", "checkpoint.previous.pt",
            "summary.json", "log.txt")
    for name in (*gone, "recipe.toml"):
        (out / name).write_text("old")
    prepare_run_dir(recipe, str(out), resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["recipe.toml"]  # the run rewrites it
    # resuming keeps them all
    for name in gone:
        (out / name).write_text("old")
    prepare_run_dir(recipe, str(out), resume=True, overwrite=True)
    assert all((out / name).exists() for name in gone)


def test_overwrite_refuses_odd_entries_naming_each_and_deletes_nothing(tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    (out / "history.h5").mkdir(parents=True)
    (out / "history.h5-journal").mkdir()
    (out / "models").write_text("not a folder")
    (out / "summary.json").write_text("{}")
    assert _refused(recipe, out, overwrite=True) == (
        f"--overwrite: history.h5, history.h5-journal, models in {out} is not what a run "
        "leaves there (a directory or a file of the other kind); move it away first")
    assert (out / "summary.json").exists()


@pytest.mark.parametrize("odd, make", [
    ("log.txt", Path.mkdir), ("recipe.toml", Path.mkdir), ("checkpoint.pt", Path.mkdir),
    ("models", Path.touch)])
def test_resume_refuses_odd_entries_before_training(tmp_path, odd, make):
    """A log.txt that is a folder stopped the resume with "the run stopped: IsADirectoryError";
    a models that is a file let it train to the end and fail on saving the weights."""
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    out.mkdir()
    (out / "history.h5").write_text("")
    make(out / odd)
    assert _refused(recipe, out, resume=True) == (
        f"--resume: {odd} in {out} is not what a run leaves there (a directory or a file of "
        "the other kind); move it away first")
    assert (out / "history.h5").read_text() == ""


def _in_use(out: Path) -> str:
    return (f"{out} is in use by another kdcore process (a run, its --resume or --overwrite); "
            "wait for it to end, or give another --out")


@pytest.mark.parametrize("flags", [{}, {"resume": True}, {"overwrite": True},
                                   {"resume": True, "overwrite": True}])
def test_a_folder_a_live_run_holds_is_refused_as_in_use_before_any_other_check(tmp_path,
                                                                              flags):
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    out.mkdir()
    for name in ("history.h5", "checkpoint.pt", "summary.json"):
        (out / name).write_text("live")
    with RunDirLock() as live:  # another open description of the folder: another process's
        live.acquire(out)
        with pytest.raises(KdcoreError) as err:
            prepare_run_dir(recipe, str(out), lock=RunDirLock(),
                            **{"resume": False, "overwrite": False, **flags})
        assert str(err.value) == _in_use(out)  # not "already holds a run; use --resume"
    assert all((out / n).read_text() == "live" for n in ("history.h5", "checkpoint.pt",
                                                         "summary.json"))


def test_the_lock_is_held_from_the_folders_making_until_released(tmp_path):
    recipe, out = _recipe(tmp_path), tmp_path / "new" / "run"
    with RunDirLock() as mine:
        assert prepare_run_dir(recipe, str(out), resume=False, overwrite=False,
                               lock=mine) == out
        mine.acquire(out)  # held: taking it again is a no-op, not a refusal
        with pytest.raises(KdcoreError) as err:
            RunDirLock().acquire(out)
        assert str(err.value) == _in_use(out)
    with RunDirLock() as after:  # left: free for the next run
        after.acquire(out)
    # without a lock given, nothing is taken (the --nproc launcher's refusals, tests)
    prepare_run_dir(recipe, str(out), resume=False, overwrite=True)
    with RunDirLock() as free:
        free.acquire(out)


def test_a_live_run_keeps_its_files_from_overwrite_made_by_a_run_started_with_it(
        tmp_path, monkeypatch):
    """Two runs started together: both find no folder; the one that locks it second, after
    making it, is refused before it deletes anything."""
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    other = RunDirLock()
    made = Path.mkdir

    def mkdir_then_the_other_run_locks(self, *args, **kwargs):
        made(self, *args, **kwargs)
        if self == out:
            other.acquire(out)
            (out / "history.h5").write_text("the other run's")

    monkeypatch.setattr(Path, "mkdir", mkdir_then_the_other_run_locks)
    with other, pytest.raises(KdcoreError) as err:
        prepare_run_dir(recipe, str(out), resume=False, overwrite=True, lock=RunDirLock())
    assert str(err.value) == _in_use(out)
    assert (out / "history.h5").read_text() == "the other run's"


@pytest.mark.parametrize(("code", "runs"), [
    (errno.EBADF, True),  # NFS's emulation on a read-only descriptor: no lock to be had
    (errno.ENOLCK, True),  # a file system without locks
    (errno.EAGAIN, False),  # held by another process: refused
])
def test_a_file_system_that_cannot_lock_a_folder_runs_unguarded(tmp_path, monkeypatch, code,
                                                                runs):
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    out.mkdir()

    def flock(fd, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(locks.fcntl, "flock", flock)
    if runs:
        assert prepare_run_dir(recipe, str(out), resume=False, overwrite=False,
                               lock=RunDirLock()) == out
    else:
        with pytest.raises(KdcoreError) as err:
            prepare_run_dir(recipe, str(out), resume=False, overwrite=False, lock=RunDirLock())
        assert str(err.value) == _in_use(out)


def test_a_folder_that_cannot_be_opened_for_its_lock_is_one_line(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()

    def refuse(path, flags, *args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("kdcore.rundir.os.open", refuse)
    with pytest.raises(KdcoreError) as err:
        RunDirLock().acquire(out)
    assert str(err.value) == f"cannot use output directory {out}: Permission denied"


def test_only_a_folder_is_locked(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(KdcoreError) as err:
        RunDirLock().acquire(tmp_path / "file")
    assert str(err.value) == f"cannot use output directory {tmp_path / 'file'}: Not a directory"


def test_a_released_lock_can_be_taken_again_and_is_then_refused_like_any(tmp_path):
    mine, other = RunDirLock(), RunDirLock()
    mine.acquire(tmp_path)
    mine.release()
    mine.release()  # twice is harmless
    other.acquire(tmp_path)
    with pytest.raises(KdcoreError):
        mine.acquire(tmp_path)  # released, so not a no-op: the other holds it now
    other.release()
    mine.acquire(tmp_path)
    mine.release()


def test_without_flock_on_the_platform_every_lock_is_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "fcntl", None)
    assert locks.try_lock(0, exclusive=True, deadline=0.0) is True
    with RunDirLock() as first, RunDirLock() as second:
        first.acquire(tmp_path)
        second.acquire(tmp_path)


@pytest.mark.parametrize(("error", "reason"), [
    (PermissionError(13, "Permission denied"), "Permission denied"),
    (ValueError("embedded null byte"), "embedded null byte"),  # no strerror: the message
])
def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, error, reason):
    recipe, out = _recipe(tmp_path), tmp_path / "run"

    def refuse(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(Path, "write_text", refuse)
    assert _refused(recipe, out) == f"cannot write to output directory {out}: {reason}"


def test_an_empty_out_is_refused_in_one_line(tmp_path):
    for empty in ("", "  "):
        assert _refused(_recipe(tmp_path), empty) == (
            "--out is empty; give a run directory, or leave --out out for "
            "run.output_dir/run.name")


def test_a_name_the_system_refuses_is_one_line_before_anything_is_made(tmp_path):
    nul = tmp_path / "a\0b"  # Path.exists says no; making it says why
    assert _refused(_recipe(tmp_path), nul) == (
        f"cannot write to output directory {nul}: embedded null byte")
    long = tmp_path / ("x" * 300) / "run"
    assert _refused(_recipe(tmp_path), long) == (
        f"cannot use output directory {long}: File name too long")
    assert sorted(tmp_path.iterdir()) == []


def test_a_run_directory_below_a_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    out = tmp_path / "notes.txt" / "run"
    assert _refused(_recipe(tmp_path), out) == (
        f"cannot write to output directory {out}: {tmp_path / 'notes.txt'} is not a directory")


def test_the_write_check_is_made_in_the_nearest_existing_folder(tmp_path, monkeypatch):
    import tempfile

    made, real = [], tempfile.mkdtemp

    def recorded(*args, **kwargs):
        made.append(kwargs.get("dir"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", recorded)
    out = tmp_path / "new" / "run"
    prepare_run_dir(_recipe(tmp_path), str(out), resume=False, overwrite=False)
    assert made == [tmp_path] and sorted(p.name for p in tmp_path.iterdir()) == ["new"]


@pytest.mark.parametrize(("error", "reason"), [
    (PermissionError(13, "Permission denied"), "Permission denied"),
    (OSError("refused by the file system"), "refused by the file system"),
])
def test_a_folder_in_which_no_folder_can_be_made_is_one_line(tmp_path, monkeypatch, error,
                                                             reason):
    import tempfile

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    out = tmp_path / "run"
    assert _refused(_recipe(tmp_path), out) == (
        f"cannot write to output directory {out}: {tmp_path}: {reason}")
    assert not out.exists()
