"""Advisory ``flock`` locks, taken the same way wherever kdcore takes one.

``flock`` locks belong to an open file description, so the kernel releases them when the
process dies, however it dies: a SIGKILL never leaves a stale lock to clean up by hand. A
forked child shares that description, though: a lock held for the whole run (its directory's)
is registered with :func:`held_for_the_run`, and a forked worker drops its copies at once
(:func:`drop_inherited`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time

try:
    import fcntl
except ImportError:  # no flock on this platform: nothing is locked, as HDF5 does there
    fcntl = None  # type: ignore[assignment]

# file systems without flock (some network mounts): go on unlocked, as HDF5 does
NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS})


def try_lock(fd: int, *, exclusive: bool, deadline: float) -> bool:
    """Take ``fd``'s lock, polling until ``deadline`` (``time.monotonic()``); False when
    another holder kept it that long. True without a lock where the system has none.

    Raises:
        OSError: the lock failed for a reason other than another holder.
    """
    if fcntl is None:
        return True
    operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    while True:
        try:
            fcntl.flock(fd, operation)
            return True
        except OSError as exc:
            if exc.errno in NO_LOCKS:
                return True
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if time.monotonic() >= deadline:
                return False
        time.sleep(0.02)  # a reader's close is seen at once


_RUN_LOCKS: set[int] = set()  # descriptors of this process's run-long locks


def held_for_the_run(fd: int, held: bool = True) -> None:
    """Register (``held``) or forget the descriptor of a lock this process holds while its
    run lasts, for :func:`drop_inherited`."""
    if held:
        _RUN_LOCKS.add(fd)
    else:
        _RUN_LOCKS.discard(fd)


def drop_inherited() -> None:
    """In a process forked from a run (a DataLoader worker): close its copies of the run's
    locks, so that each lock goes when the run's own process does. Torch's workers notice
    their parent's death only seconds later; until then a SIGKILLed run's directory stayed
    locked, and ``--resume`` was refused as "in use by another kdcore process"."""
    for fd in _RUN_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _RUN_LOCKS.clear()


__all__ = ["NO_LOCKS", "drop_inherited", "held_for_the_run", "try_lock"]
