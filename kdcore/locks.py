"""Advisory ``flock`` locks, taken the same way wherever kdcore takes one.

``flock`` locks belong to an open file description, so the kernel releases them when the
process dies, however it dies: a SIGKILL never leaves a stale lock to clean up by hand.
"""

from __future__ import annotations

import errno
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


__all__ = ["NO_LOCKS", "try_lock"]
