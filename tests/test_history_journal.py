"""The rollback journal and the rebuild, each on its own: what recovery accepts and puts back,
which pages an update journals, the lock's waiting, and what a rebuilt history keeps.

Journals are written here from the format the module documents (a header of magic and the
file's old size, then records of offset, length, CRC32 and the saved bytes), not with the
module's own structs, so that a change to the format fails here."""

from __future__ import annotations

import errno
import os
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from kdcore import locks
from kdcore.errors import KdcoreError
from kdcore.history import History, HistoryWriter
from kdcore.history_journal import PAGE, JournaledFile, disk, locked, recover
from kdcore.history_rebuild import rebuild
from tests.test_history import (
    _append,
    _assert_one_line_error,
    _assert_rows,
    _format_1,
    _row,
    _writer,
)

MAGIC = b"kdjrnl01"


def _journal(size: int, records: list[tuple[int, bytes]]) -> bytes:
    """A journal of a file that held ``size`` bytes, saving ``records`` (offset, bytes)."""
    out = struct.pack("<8sQ", MAGIC, size)
    for offset, data in records:
        out += struct.pack("<QII", offset, len(data), zlib.crc32(data)) + data
    return out


def _records(journal: bytes) -> list[tuple[int, bytes]]:
    """The (offset, bytes) records of a journal, read by the documented format."""
    assert journal[:8] == MAGIC
    pos, out = 16, []
    while pos < len(journal):
        offset, length, crc = struct.unpack_from("<QII", journal, pos)
        data = journal[pos + 16:pos + 16 + length]
        assert len(data) == length and zlib.crc32(data) == crc
        out.append((offset, data))
        pos += 16 + length
    return out


@pytest.fixture
def three_pages(tmp_path) -> tuple[Path, bytes]:
    path = tmp_path / "f"
    original = np.random.default_rng(0).integers(0, 256, 3 * PAGE, dtype=np.uint8).tobytes()
    path.write_bytes(original)
    return path, original


# -- recovery ------------------------------------------------------------------------------

def test_recovery_puts_back_the_saved_pages_and_the_old_size(three_pages):
    path, original = three_pages
    assert recover(path) is False  # no journal: nothing to undo
    journal = path.with_name("f-journal")
    journal.write_bytes(_journal(len(original), [(PAGE, original[PAGE:2 * PAGE]),
                                                 (0, original[:PAGE])]))
    with open(path, "r+b") as fh:  # the update overwrote pages 0 and 1 and grew the file
        fh.write(b"\x01" * (2 * PAGE))
        fh.seek(0, os.SEEK_END)
        fh.write(b"\x02" * 5000)
    assert recover(path) is True
    assert path.read_bytes() == original and not journal.exists()


@pytest.mark.parametrize("torn", ["short", "crc"])
def test_a_torn_last_record_is_not_applied(three_pages, torn):
    """A kill while a record was written leaves it short (or its bytes not what its CRC
    says); its page was never overwritten, so it must not be written back."""
    path, original = three_pages
    changed = bytearray(original)
    changed[:PAGE] = b"\x07" * PAGE  # journaled, then overwritten
    changed[2 * PAGE:] = b"\x09" * PAGE  # the update's own page, which the torn record held
    raw = _journal(len(original), [(0, original[:PAGE])])
    last = _journal(0, [(2 * PAGE, b"\x09" * PAGE)])[16:]
    if torn == "short":
        raw += last[:len(last) - 100]
    else:  # the whole record is there, but not the bytes its CRC was taken of
        raw += last[:16] + original[2 * PAGE:]
    path.write_bytes(bytes(changed))
    path.with_name("f-journal").write_bytes(raw)
    assert recover(path) is True
    expected = bytearray(original)
    expected[2 * PAGE:] = b"\x09" * PAGE
    assert path.read_bytes() == bytes(expected)


@pytest.mark.parametrize("size, records", [
    (1 << 48, []),  # a size no history comes near (truncating to it would make a huge file)
    ((1 << 48) + 7, [(0, b"x" * PAGE)]),
    (3 * PAGE, [(100, b"x" * 10)]),  # not at a page's start
    (PAGE + 10, [(PAGE, b"x" * PAGE)]),  # beyond the old end of the file
])
def test_a_journal_that_does_not_fit_the_file_is_refused_and_both_are_left(
        three_pages, size, records):
    path, original = three_pages
    journal = path.with_name("f-journal")
    raw = _journal(size, records)
    journal.write_bytes(raw)
    with pytest.raises(KdcoreError) as info:
        recover(path)
    assert str(info.value) == (f"{journal} is not a journal of {path} (its records do not fit "
                               "a history file); move it away, then try again")
    assert path.read_bytes() == original and journal.read_bytes() == raw


def test_a_journal_cut_off_in_its_header_is_dropped(three_pages):
    path, original = three_pages
    journal = path.with_name("f-journal")
    journal.write_bytes(MAGIC + b"\x00\x01")  # killed before the file was touched
    assert recover(path) is True
    assert path.read_bytes() == original and not journal.exists()


def test_a_journal_that_is_no_file_or_cannot_be_read_is_one_line(three_pages):
    path, original = three_pages
    journal = path.with_name("f-journal")
    journal.mkdir()
    with pytest.raises(KdcoreError) as info:
        recover(path)
    assert str(info.value) == f"{journal} is not a journal file; move it away, then try again"
    journal.rmdir()
    journal.symlink_to(journal)  # a loop: stat fails
    with pytest.raises(KdcoreError) as info:
        recover(path)
    assert str(info.value) == (f"cannot read {journal} (Too many levels of symbolic links); "
                               "move it away, then try again")
    assert path.read_bytes() == original


# -- what an update journals ---------------------------------------------------------------

def test_each_old_page_is_journaled_once_before_its_first_overwrite(three_pages):
    path, original = three_pages
    journal = path.with_name("f-journal")
    fd = os.open(path, os.O_RDWR)
    try:
        f = JournaledFile(fd, path)
        assert os.stat(journal).st_mode & 0o777 == 0o644 & ~_umask()
        assert f.tell() == 0 and f.read(10) == original[:10] and f.tell() == 10
        assert f.read(0) == b"" and f.tell() == 10
        f.seek(5)
        f.write(b"")  # nothing written: nothing saved
        assert _records(journal.read_bytes()) == []
        f.seek(PAGE)
        f.write(b"\x01" * PAGE)  # exactly page 1, ending on page 2's first byte
        assert _records(journal.read_bytes()) == [(PAGE, original[PAGE:2 * PAGE])]
        f.seek(2 * PAGE)
        f.write(b"\x02")  # one byte at a page's start
        f.seek(PAGE + 17)
        f.write(b"\x03" * 40)  # a page already saved
        f.seek(3 * PAGE + 100)
        f.write(b"\x04" * 100)  # beyond the old end: nothing there to save
        assert _records(journal.read_bytes()) == [(PAGE, original[PAGE:2 * PAGE]),
                                                  (2 * PAGE, original[2 * PAGE:])]
        f.abandon()
    finally:
        os.close(fd)
    assert path.read_bytes() == original and not journal.exists()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_short_write_is_a_full_disk(three_pages, monkeypatch):
    """A write the disk took only part of is the failure (the update then goes on in memory
    and is abandoned), never a gap before the next journal record."""
    path, original = three_pages
    real = disk.pwrite
    fd = os.open(path, os.O_RDWR)
    try:
        f = JournaledFile(fd, path)
        monkeypatch.setattr(disk, "pwrite", lambda fd, data, offset: real(fd, data[:3], offset))
        f.seek(PAGE)
        assert f.write(b"\x05" * 10) == 10
        assert isinstance(f.failure, OSError) and f.failure.errno == errno.ENOSPC
        # the first write cut short is the page's journal record (its 16-byte head, 4096 bytes)
        assert f.failure.strerror == "the disk took 3 of 4112 bytes: it is probably full"
        f.seek(PAGE)
        assert f.read(10) == b"\x05" * 10  # what the update wrote, as it reads it back
        monkeypatch.setattr(disk, "pwrite", real)
        f.abandon()
    finally:
        os.close(fd)
    assert path.read_bytes() == original


# -- the lock ------------------------------------------------------------------------------

class _Flock:
    """``fcntl.flock`` that fails with ``errors`` in turn, then takes the lock."""

    def __init__(self, *errors: int):
        self.errors, self.calls = list(errors), 0

    def __call__(self, fd, operation):
        self.calls += 1
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))


def test_a_busy_lock_is_waited_for_in_short_polls(three_pages, monkeypatch):
    path, _ = three_pages
    flock, sleeps = _Flock(errno.EAGAIN, errno.EACCES, errno.EAGAIN), []
    monkeypatch.setattr(locks.fcntl, "flock", flock)
    monkeypatch.setattr(locks.time, "sleep", sleeps.append)
    with locked(path, exclusive=True, timeout=60):
        pass
    assert flock.calls == 4 and len(sleeps) == 3
    assert all(0 < s <= 0.05 for s in sleeps)  # a reader's close is seen at once


def test_a_file_system_without_locks_goes_on_unlocked(three_pages, monkeypatch):
    path, _ = three_pages
    for code in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        monkeypatch.setattr(locks.fcntl, "flock", _Flock(code))
        with locked(path, exclusive=True, timeout=0) as fd:
            assert os.fstat(fd).st_ino == os.stat(path).st_ino


def test_a_lock_error_that_is_not_busy_fails_at_once(three_pages, monkeypatch):
    path, _ = three_pages
    flock = _Flock(*[errno.EINVAL] * 1000)
    monkeypatch.setattr(locks.fcntl, "flock", flock)
    monkeypatch.setattr(locks.time, "sleep", lambda s: None)
    with pytest.raises(KdcoreError) as info:
        with locked(path, exclusive=True, timeout=1.0):
            pass
    assert str(info.value) == f"cannot lock {path} (Invalid argument)"  # not "held open"
    assert flock.calls == 1


# -- the rebuild ---------------------------------------------------------------------------

def test_a_rebuild_waits_for_a_reader_and_replaces_a_stale_copy(tmp_path):
    path = tmp_path / "history.h5"
    w = _writer(tmp_path)
    _append(w, range(3))
    before = path.read_bytes()
    with locked(path, exclusive=False, timeout=1):  # a reader's lock, as History takes it
        _assert_one_line_error(lambda: rebuild(path, 2, timeout=0.1), "held open elsewhere")
    assert path.read_bytes() == before
    stale = tmp_path / "history.h5.rebuild"
    stale.write_bytes(b"left by a rebuild that was killed")
    rebuild(path, 2, timeout=1)
    assert not stale.exists()
    _assert_rows(tmp_path, 2)


def _damage(path: Path, dataset: str, rows: int) -> None:
    with h5py.File(path, "a") as f:
        f[dataset].resize((rows, *f[dataset].shape[1:]))


@pytest.mark.parametrize("dataset", ["epochs/stage", "metrics/train/loss", "ledger/target",
                                     "producers/target"])
def test_a_dataset_shorter_than_the_rows_kept_is_named(tmp_path, dataset):
    path = tmp_path / "history.h5"
    w = _writer(tmp_path)
    _append(w, range(3))
    _damage(path, dataset, 2)
    damaged = path.read_bytes()
    with pytest.raises(KdcoreError) as info:
        w.rollback(3)
    assert str(info.value) == (f"{path}: the history is damaged ({dataset} holds 2 of 3 rows); "
                               "start the run again with --overwrite")
    assert path.read_bytes() == damaged
    w.rollback(2)
    _assert_rows(tmp_path, 2)


def test_a_file_that_is_no_history_is_named(tmp_path):
    path = tmp_path / "history.h5"
    path.write_bytes(b"not HDF5" * 100)
    message = _assert_one_line_error(lambda: rebuild(path, 0, timeout=1), "--overwrite")
    assert message == (f"{path}: the history is damaged (Unable to synchronously open file "
                       "(file signature not found)); start the run again with --overwrite")
    with h5py.File(path, "w") as f:  # HDF5, but not a history
        f.create_dataset("x", data=np.arange(3))
    message = _assert_one_line_error(lambda: rebuild(path, 0, timeout=1), "not a kdcore history")
    assert message.startswith(f"{path} is not")
    _writer(tmp_path)
    message = _assert_one_line_error(lambda: rebuild(path, 1, timeout=1), "--overwrite")
    assert message == (f"{path}: the history is damaged (it holds 0 epoch rows, the checkpoint "
                       "1); start the run again with --overwrite")


def test_a_rebuild_the_disk_refuses_leaves_the_file(tmp_path, monkeypatch):
    from kdcore import history_rebuild

    path = tmp_path / "history.h5"
    w = _writer(tmp_path)
    _append(w, range(3))
    before = path.read_bytes()
    real = h5py.File

    def file(name, mode="r", **kw):
        if mode == "w":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(name, mode, **kw)

    monkeypatch.setattr(history_rebuild.h5py, "File", file)
    with pytest.raises(KdcoreError) as info:
        w.rollback(2)
    assert str(info.value) == (f"{path}: could not rebuild the history ([Errno 28] No space "
                               "left on device)")
    assert path.read_bytes() == before and not (tmp_path / "history.h5.rebuild").exists()


def test_a_rebuild_keeps_chunks_codes_and_attribute_types(tmp_path):
    """The ledger's compressed chunks byte for byte (rows never written stay unallocated), the
    string table with each name once and code 0 for "no producer", every attribute's type."""
    path = tmp_path / "history.h5"
    w = _writer(tmp_path)
    _append(w, range(5))

    def snapshot():
        with h5py.File(path) as f:
            chunks = {}
            for name in ("target", "weight/awe"):
                ds = f["ledger"][name]
                for r in range(4):
                    origin = (r, *(0,) * (ds.ndim - 1))
                    written = ds.id.get_chunk_info_by_coord(origin).byte_offset is not None
                    chunks[name, r] = ds.id.read_direct_chunk(origin) if written else None
            attrs = {(obj.name, a): (obj.attrs[a], obj.attrs.get_id(a).dtype)
                     for obj in (f, f["ledger/target"], f["ledger/weight/awe"]) for a in obj.attrs}
            return chunks, attrs

    chunks, attrs = snapshot()
    w.rollback(4)
    after_chunks, after_attrs = snapshot()
    assert [k for k, v in chunks.items() if v is None] == [("weight/awe", r) for r in range(3)]
    assert after_chunks == chunks
    assert after_attrs.keys() == attrs.keys()
    for key, (value, dtype) in attrs.items():
        assert after_attrs[key][1] == dtype, key
        np.testing.assert_array_equal(after_attrs[key][0], value)
    with h5py.File(path) as f:
        names = [s.decode() for s in f["strings"][:]]
        assert names[0] == "" and len(set(names)) == len(names)
        np.testing.assert_array_equal(f["producers/weight/awe"][:], [0, 0, 0,
                                                                   names.index("awe1")])
        assert f["producers/target"].dtype == np.int32 and f["epochs/stage"].dtype == np.int32


def test_format_1_producers_shorter_than_the_rows_read_as_none(tmp_path):
    import json

    path = tmp_path / "history.h5"
    _format_1(path, 3)
    with h5py.File(path, "a") as f:
        f["ledger/target"].attrs["producers"] = json.dumps(["lp"])
    HistoryWriter(path).rollback(3)
    with History(path) as h:
        assert h.producers("target") == ["lp", "", ""]
        assert h.format == "kdcore-history/2"


def test_a_chunk_stored_without_its_filters_is_copied_as_stored(tmp_path):
    """HDF5 skips an optional filter that fails and notes it in the chunk's filter mask; the
    copied chunk keeps that mask, or a reader would decode bytes that were never encoded."""
    path = tmp_path / "history.h5"
    w = _writer(tmp_path)
    _append(w, range(3))
    raw = np.asarray(_row(1)["columns"]["target"].data).astype(np.float16)
    with h5py.File(path, "a") as f:
        # shuffle, Zstd and the checksum skipped
        f["ledger/target"].id.write_direct_chunk((1, 0, 0), raw.tobytes(), 0b111)
    w.rollback(3)
    with h5py.File(path) as f:
        assert f["ledger/target"].id.read_direct_chunk((1, 0, 0))[0] == 0b111
        np.testing.assert_array_equal(f["ledger/target"][1], raw)
    _assert_rows(tmp_path, 3)
