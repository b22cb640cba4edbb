"""Crash-safe in-place updates of one file: a rollback journal, plus the lock that orders them.

HDF5 updates a file in place and is not crash-safe: a process killed while the library writes
its metadata (inside ``H5Fclose`` as much as anywhere) leaves object headers, chunk indexes and
the superblock's end-of-allocation out of step, and the file may then read but not append, or
not read at all. So the history writer hands HDF5 a :class:`JournaledFile` (h5py's ``fileobj``
driver) instead of a path. Before the first write to a page of the bytes the file held when the
update began, that page's original content is appended to ``<file>-journal``; only then is the
page written. Deleting the journal is the commit. A journal left behind ("hot") means an update
died part-way: :func:`recover` copies the saved pages back and truncates the file to its old
size, which restores it byte for byte, however far the update had got. A kill while a journal
record is being written leaves a torn last record whose page was never written (records are
written before their page), so recovery skips it (length and CRC32 tell).

The guarantee is against a killed process (SIGKILL, OOM killer, a crash): the kernel keeps every
write the process completed. Against power loss it would need an fsync per update, which costs
more than the whole epoch row; only the rare rebuilds fsync.

Updates and readers exclude each other with ``flock`` on the file itself, the lock HDF5's own
readers take (shared), so an ``h5py.File(path)`` opened elsewhere is respected too. A writer
holds the exclusive lock from before the journal exists until after it is gone; a journal seen
while holding the lock is therefore one a dead process left.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kdcore.errors import KdcoreError, os_reason
from kdcore.locks import try_lock

PAGE = 4096
_MAGIC = b"kdjrnl01"
_HEAD = struct.Struct("<8sQ")  # magic, the file's size when the update began
_RECORD = struct.Struct("<QII")  # offset, length, crc32 of the saved bytes that follow


class _Disk:
    """Every call that changes a file on disk goes through :data:`disk`: one seam, so a test
    can cut a process off at any one of them (by setting its attributes) and check what
    recovery makes of the rest."""

    pwrite = staticmethod(os.pwrite)
    ftruncate = staticmethod(os.ftruncate)
    unlink = staticmethod(os.unlink)
    replace = staticmethod(os.replace)
    fsync = staticmethod(os.fsync)


disk = _Disk()


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + "-journal")


def recover(path: Path) -> bool:
    """Undo the update a journal records, if one is there; returns whether there was one.

    The caller holds the exclusive lock. Idempotent: killed part-way, it is simply run again.
    """
    journal = journal_path(path)
    raw = _read_journal(journal)
    if raw is None:
        return False
    # a journal without its full header was cut off before the file was touched
    if len(raw) >= _HEAD.size and path.exists():
        magic, size = _HEAD.unpack_from(raw)
        if magic == _MAGIC:
            pages = list(_records(raw))
            if size >= _MAX_FILE or any(offset % PAGE or offset + len(page) > size
                                                for offset, page in pages):
                raise KdcoreError(f"{journal} is not a journal of {path} (its records do not "
                                  f"fit a history file); move it away, then try again")
            fd = os.open(path, os.O_RDWR)
            try:
                for offset, page in pages:
                    disk.pwrite(fd, page, offset)
                disk.ftruncate(fd, size)
                disk.fsync(fd)
            finally:
                os.close(fd)
    disk.unlink(journal)
    return True


# a journal names the file's size when its update began: no history comes near 2**48 bytes
_MAX_FILE = 1 << 48


def _read_journal(journal: Path) -> bytes | None:
    """The journal's bytes (None: there is none); one line for what is not a journal file."""
    try:
        if not stat.S_ISREG(os.stat(journal).st_mode):
            raise KdcoreError(f"{journal} is not a journal file; move it away, then try again")
        return journal.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KdcoreError(f"cannot read {journal} ({exc.strerror or exc}); move it away, then "
                          f"try again") from None


def _records(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """The saved pages, up to the torn last record a kill may leave (length and CRC tell):
    records are written before their page, so that page was never overwritten."""
    pos = _HEAD.size
    while pos + _RECORD.size <= len(raw):
        offset, length, crc = _RECORD.unpack_from(raw, pos)
        start = pos + _RECORD.size
        page = raw[start:start + length]
        if len(page) != length or zlib.crc32(page) != crc:
            return
        yield offset, page
        pos = start + length


def is_hot(path: Path) -> bool:
    return journal_path(path).exists()


class ShieldedFile:
    """A binary file object for ``h5py.File(fileobj)`` whose writes never raise into HDF5.

    An error raised into HDF5's write callback leaves h5py's file driver unusable, and its
    closing flush then crashes the process (a segfault when the disk is full or the file
    passes the process's size limit), as does HDF5's own driver writing to a path. So the first
    write the file system refuses is kept in :attr:`failure`, the writes after it are kept in
    memory (reads see them), and the caller raises :attr:`failure` once HDF5 has closed the
    file (:func:`shielded_new_file`; :class:`JournaledFile`, which also journals).

    Args:
        fd: the file, open read-write; the caller closes it.
    """

    def __init__(self, fd: int):
        self._fd = fd
        self._pos = 0
        #: the first write the file system refused (a full disk); from then on writes are
        #: kept in memory (:attr:`_overlay`), never on disk
        self.failure: OSError | None = None
        self._overlay: list[tuple[int, bytes]] = []
        self._end = 0  # the file's end as HDF5 sees it, once writes go to the overlay
        self._disk_end = 0  # and how much of what is on disk it still sees beneath them

    def _keep(self, start: int, end: float) -> None:
        """Bytes ``[start, end)`` of the file are about to change (:class:`JournaledFile`
        saves the originals here first)."""

    # -- the file-object protocol h5py's fileobj driver calls -------------------------------

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self._pos = offset
        elif whence == os.SEEK_CUR:
            self._pos += offset
        else:
            self._pos = self._file_end() + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def _file_end(self) -> int:
        return self._end if self.failure is not None else os.fstat(self._fd).st_size

    def readinto(self, buffer: memoryview | bytearray) -> int:
        if self.failure is None:
            n = os.preadv(self._fd, [buffer], self._pos)
        else:  # what is on disk, under what HDF5 wrote since
            view = memoryview(buffer).cast("B")
            n = max(0, min(len(view), self._end - self._pos))
            seen = max(0, min(n, self._disk_end - self._pos))
            got = os.preadv(self._fd, [view[:seen]], self._pos) if seen else 0
            view[got:n] = bytes(n - got)
            for start, data in self._overlay:
                lo, hi = max(start, self._pos), min(start + len(data), self._pos + n)
                if lo < hi:
                    view[lo - self._pos:hi - self._pos] = data[lo - start:hi - start]
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = max(0, self._file_end() - self._pos)
        buffer = bytearray(size)
        return bytes(buffer[:self.readinto(buffer)])

    def write(self, data: bytes | bytearray | memoryview) -> int:
        # never raises (the class's reason); the caller checks failure
        n = len(data)
        if self.failure is None:
            try:
                self._keep(self._pos, self._pos + n)
                _write_all(self._fd, data, self._pos)
            except OSError as exc:
                self._fail(exc)
        if self.failure is not None:
            self._overlay.append((self._pos, bytes(data)))
            self._end = max(self._end, self._pos + n)
        self._pos += n
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if self.failure is None:
            try:
                self._keep(size, math.inf)
                disk.ftruncate(self._fd, size)
                return size
            except OSError as exc:
                self._fail(exc)
        self._end = size  # and nothing beyond it may reappear if the file grows again
        self._disk_end = min(self._disk_end, size)
        self._overlay = [(start, data[:size - start]) for start, data in self._overlay
                         if start < size]
        return size

    def _fail(self, exc: OSError) -> None:
        self.failure = exc
        self._end = self._disk_end = os.fstat(self._fd).st_size

    def flush(self) -> None:
        pass  # every write above went straight to the kernel, which keeps it if we die


@contextmanager
def shielded_new_file(path: Path) -> Iterator[ShieldedFile]:
    """``path`` created empty (or emptied) for ``h5py.File(fileobj, "w")`` inside the block;
    the first write the file system refused is raised once the block (and HDF5's closing
    flush within it) is done. The caller removes ``path`` if anything is raised."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        shielded = ShieldedFile(fd)
        yield shielded
        if shielded.failure is not None:
            raise shielded.failure
    finally:
        os.close(fd)


class JournaledFile(ShieldedFile):
    """A :class:`ShieldedFile` that journals before it overwrites: the update of an existing
    history.

    Args:
        fd: the file, open read-write; the caller holds its exclusive lock, has run
            :func:`recover`, and closes ``fd`` afterwards.
        path: its path (the journal goes beside it).
    """

    def __init__(self, fd: int, path: Path):
        super().__init__(fd)
        self.size = os.fstat(fd).st_size  # bytes beyond this are new: nothing to save
        self._saved: set[int] = set()
        self._path = path
        self._journal = journal_path(path)
        self._jfd = os.open(self._journal, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._jpos = 0
        try:
            self._append(_HEAD.pack(_MAGIC, self.size))
        except OSError:  # nothing was written to the file: no journal to leave behind
            os.close(self._jfd)
            disk.unlink(self._journal)
            raise

    def _append(self, data: bytes) -> None:
        _write_all(self._jfd, data, self._jpos)
        self._jpos += len(data)

    def _keep(self, start: int, end: float) -> None:
        """Journal the original pages under ``[start, end)`` not journaled yet."""
        stop = int(min(end, self.size))
        if start >= stop:
            return
        records = []
        for page in range(start // PAGE, (stop - 1) // PAGE + 1):
            if page not in self._saved:
                self._saved.add(page)
                offset = page * PAGE
                data = os.pread(self._fd, min(PAGE, self.size - offset), offset)
                records.append(_RECORD.pack(offset, len(data), zlib.crc32(data)) + data)
        if records:
            self._append(b"".join(records))

    # -- the end of an update ------------------------------------------------------------------

    def commit(self) -> None:
        """The update is complete (HDF5 closed the file): drop the journal."""
        os.close(self._jfd)
        self._jfd = -1
        disk.unlink(self._journal)

    def abandon(self) -> None:
        """The update failed: put the original bytes back now."""
        if self._jfd >= 0:
            os.close(self._jfd)
            self._jfd = -1
        recover(self._path)


def _write_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """``data`` at ``offset``, whole: a short write (the disk filled up part-way) is an error,
    or the next record would land after a gap and hide every later one from recovery."""
    written = disk.pwrite(fd, data, offset)
    if written != len(data):
        raise OSError(errno.ENOSPC, f"the disk took {written} of {len(data)} bytes: it is "
                                    "probably full")


@contextmanager
def locked(path: Path, *, exclusive: bool, timeout: float,
           on_held: Callable[[], None] | None = None, then_wait: float = math.inf,
           gave_up: str = "close it and try again", missing: str = "") -> Iterator[int]:
    """Hold ``path``'s lock (exclusive: read-write fd; shared: read-only fd) and yield the fd.

    ``on_held``: called once when another holder has kept the file for ``timeout``, after
    which the wait goes on for ``then_wait`` seconds more (a run waiting for a reader: as long
    as it takes, unless other processes wait on it); without it, the wait ends there with an
    error. ``gave_up``: what the error tells the user to do; ``missing``: what it says when
    there is no file (after "no history at PATH").

    Raises:
        KdcoreError: the file is missing, or another process held it longer than ``timeout``
            (without ``on_held``).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):  # a pipe would block the open
                raise KdcoreError(f"{path} is not a file")
            fd = os.open(path, os.O_RDWR if exclusive else os.O_RDONLY)
        except FileNotFoundError:
            raise KdcoreError(f"no history at {path}{missing}") from None
        try:
            try:
                taken = try_lock(fd, exclusive=exclusive, deadline=deadline)
                if not taken and on_held is not None:
                    on_held()
                    on_held, deadline = None, time.monotonic() + then_wait
                    taken = try_lock(fd, exclusive=exclusive, deadline=deadline)
            except OSError as exc:  # not another holder: the system's reason, not "held open"
                raise KdcoreError(f"cannot lock {path} ({os_reason(exc)})") from None
            if not taken:
                raise KdcoreError(
                    f"{path} is held open elsewhere (a reader such as an open History or "
                    f"h5py.File, or a second run in this directory); {gave_up}")
            # a rebuild may have replaced the file while we waited: the lock must be on the
            # file the path names now
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)  # releases the lock
