"""The run directory: where a run goes, what it may replace there, and what it refuses.

A run writes ``history.h5``, ``recipe.toml``, ``log.txt``, ``summary.json``, its checkpoint and
``models/*.pt`` into one folder. :func:`prepare_run_dir` makes that folder and refuses to
replace what it did not write: an earlier run (without ``--resume`` or ``--overwrite``), the
recipe file being run, or a folder that holds such files but no run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kdcore import checkpoint as ckpt
from kdcore.errors import KdcoreError, os_reason
from kdcore.locks import held_for_the_run, try_lock
from kdcore.recipe import Recipe


class RunDirLock:
    """The exclusive lock a run holds on its directory while it runs (a context manager;
    leaving it releases the lock, as the process's end does, however it ends).

    Two processes in one run directory would append their epochs to one history, overwrite
    each other's checkpoint, or (``--overwrite``) delete a live run's files under it.
    """

    def __init__(self) -> None:
        self._fd: int | None = None

    def acquire(self, run_dir: Path) -> None:
        """Lock ``run_dir`` (an existing directory); a no-op while held.

        Raises:
            KdcoreError: another process holds it.
        """
        if self._fd is not None:
            return
        try:
            fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise KdcoreError(f"cannot use output directory {run_dir}: "
                              f"{os_reason(exc)}") from None
        try:
            taken = try_lock(fd, exclusive=True, deadline=0.0)
        except OSError:  # a file system whose locks refuse directories: run unguarded
            taken = True
        if not taken:
            os.close(fd)
            raise KdcoreError(f"{run_dir} is in use by another kdcore process (a run, its "
                              "--resume or --overwrite); wait for it to end, or give another "
                              "--out")
        self._fd = fd
        held_for_the_run(fd)  # not by the DataLoader workers the run forks

    def release(self) -> None:
        if self._fd is not None:
            held_for_the_run(self._fd, held=False)
            os.close(self._fd)  # closing the descriptor drops its lock
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def prepare_run_dir(recipe: Recipe, out: str | None, *, resume: bool, overwrite: bool,
                    lock: RunDirLock | None = None) -> Path:
    """Create (or check) the run directory; refuse to clobber an earlier run.

    Args:
        lock: taken on the directory before anything in it is checked or replaced (a live
            run's directory is then refused as in use, not as holding a run); the caller
            releases it when its run ends.

    Returns:
        the run directory.
    """
    run_dir = run_dir_of(recipe, out)
    check_output_dir(run_dir)  # a name the system refuses is one line, before any file test
    if recipe.source and run_dir.joinpath("recipe.toml").resolve() == Path(
            recipe.source).resolve():
        raise KdcoreError(f"the recipe is {recipe.source}, the file the run in {run_dir} "
                          "writes its resolved recipe to; move the recipe, or give another "
                          "--out")
    if lock is not None and run_dir.is_dir():
        lock.acquire(run_dir)
    if resume:
        if not started(run_dir):
            raise KdcoreError(f"nothing to resume: no run was started in {run_dir}; run without "
                              f"--resume to start one (--overwrite replaces an earlier run)")
    elif not overwrite and (refusal := new_run_refusal(run_dir)):
        raise KdcoreError(refusal)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except (OSError, ValueError) as exc:
        raise KdcoreError(f"cannot write to output directory {run_dir}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    if lock is not None:  # made just now, or made by a run started at the same moment
        lock.acquire(run_dir)
    # the earlier run's log goes with it: appended to, it opened with that run's lines
    names = ("history.h5", "history.h5-journal", ckpt.CHECKPOINT, ckpt.PREVIOUS, "summary.json",
             "log.txt")
    if overwrite or resume:
        # everything checked before anything goes: a refused --overwrite deletes nothing, and
        # a resume does not train to its end to fail on saving the weights into a file
        odd = [n for n in (*names, "recipe.toml")
               if (run_dir / n).exists() and not (run_dir / n).is_file()]
        if (run_dir / "models").exists() and not (run_dir / "models").is_dir():
            odd.append("models")
        if odd:
            raise KdcoreError(f"{'--resume' if resume else '--overwrite'}: {', '.join(odd)} in "
                              f"{run_dir} is not what a run leaves there (a directory or a "
                              f"file of the other kind); move it away first")
    if overwrite and not resume:
        for name in names:
            (run_dir / name).unlink(missing_ok=True)
        for weights in _stale_weights(recipe, run_dir):
            weights.unlink()
    return run_dir


def new_run_refusal(run_dir: Path) -> str | None:
    """Why a run started without ``--resume`` or ``--overwrite`` may not go into ``run_dir``
    (it holds a run, or files a run writes), as one line; None when it may."""
    if (run_dir / "history.h5").exists():
        return (f"{run_dir} already holds a run; use --resume to continue it, --overwrite to "
                f"replace it, or --out for a new directory")
    # no history: not a run's folder, or one killed at its very start; its files are the
    # user's until --overwrite says otherwise
    mine = [n for n in RUN_FILES if (run_dir / n).exists()]
    if not mine:
        return None
    start = ("; a run killed there before its first checkpoint: --resume starts it again"
             if "recipe.toml" in mine else "")
    return (f"{run_dir} holds {', '.join(mine)}, which a run writes, but no run; give an "
            f"empty or new --out, or --overwrite to replace them{start}")


RUN_STARTS = (ckpt.CHECKPOINT, "history.h5", "recipe.toml")
"""The files that say a run was started in a folder (:func:`started`)."""


def started(run_dir: Path) -> bool:
    """Whether a run was started in ``run_dir``: what ``--resume`` continues (a checkpoint) or
    starts again (a history or the resolved recipe of a run killed before its first
    checkpoint)."""
    return any((run_dir / n).exists() for n in RUN_STARTS)


RUN_FILES = ("recipe.toml", "log.txt", "summary.json", ckpt.CHECKPOINT, ckpt.PREVIOUS, "models")
"""What a run writes in its folder besides its history (``models`` a folder)."""


def _stale_weights(recipe: Recipe, run_dir: Path) -> list[Path]:
    """The earlier run's ``models/*.pt`` that ``--overwrite`` deletes: all but those the new
    recipe loads as a ``models.<role>.checkpoint`` (which the new run has not read yet)."""
    loaded = {Path(cfg.checkpoint).resolve() for cfg in recipe.models.values()
              if cfg.enabled and cfg.checkpoint}
    return [p for p in sorted((run_dir / "models").glob("*.pt"))
            if p.is_file() and p.resolve() not in loaded]


def run_dir_of(recipe: Recipe, out: str | None) -> Path:
    """The run directory: ``out``, or ``run.output_dir/run.name`` without one."""
    if out is not None and not str(out).strip():
        # an unset shell variable: taking the default would let --overwrite replace that run
        raise KdcoreError("--out is empty; give a run directory, or leave --out out for "
                          "run.output_dir/run.name")
    return Path(out) if out is not None else Path(recipe.run.output_dir) / recipe.run.name


def check_output_dir(run_dir: Path) -> None:
    """Refuse a run directory that could not be created or written, leaving nothing behind:
    its nearest existing ancestor must be a directory in which a directory can be made."""
    try:
        probe = run_dir.absolute()
        while not probe.exists():
            probe = probe.parent
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte
        raise KdcoreError(f"cannot use output directory {run_dir}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    if not probe.is_dir():
        raise KdcoreError(f"cannot write to output directory {run_dir}: {probe} is not a "
                          f"directory")
    try:  # permissions do not bind root, and some file systems refuse anyway: try it
        os.rmdir(tempfile.mkdtemp(prefix=".kdcore-check-", dir=probe))
    except OSError as exc:
        raise KdcoreError(f"cannot write to output directory {run_dir}: {probe}: "
                          f"{exc.strerror or exc}") from None


__all__ = ["RUN_FILES", "RunDirLock", "check_output_dir", "new_run_refusal", "prepare_run_dir",
           "run_dir_of", "started"]
