"""The history after a kill at any point of an update: exactly the committed rows, readable,
and appendable after ``rollback``.

Two ways to kill: in process, the disk calls of :mod:`kdcore.history_journal` are cut off after
the k-th one (every later write, truncate, rename and unlink is dropped, as for a dead process;
the k-th write optionally torn in half), for every k of an update; and for real, a child process
forks one process per kill point that SIGKILLs itself there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore.history import History, HistoryWriter
from kdcore.history_journal import _Disk, disk
from tests.test_history import _assert_rows, _row, _writer

COMMITTED = 3
_CALLS = ("pwrite", "ftruncate", "unlink", "replace", "fsync")


class _Cut:
    """Lets the first ``at`` disk calls through; the call ``at`` (half of it, when ``torn`` and
    a write) and every later one never reach the disk."""

    def __init__(self, at: int, torn: bool = False):
        self.at, self.torn, self.calls = at, torn, 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in _CALLS:
            monkeypatch.setattr(disk, name, self._call(getattr(_Disk, name), name))

    def _call(self, real, name):
        def call(*args):
            n, self.calls = self.calls, self.calls + 1
            if n < self.at:
                return real(*args)
            if n == self.at and self.torn and name == "pwrite":
                fd, data, offset = args
                real(fd, bytes(data)[: len(data) // 2], offset)
            return len(args[1]) if name == "pwrite" else None

        return call


def _killed(base: Path, where: Path, update, at: int, torn: bool) -> bool:
    """Copy ``base`` to ``where`` and run ``update`` on it, cut off at disk call ``at``;
    returns whether the cut came before the update finished."""
    where.mkdir()
    for name in ("history.h5", "history.h5-journal"):
        if (base / name).exists():
            shutil.copy(base / name, where / name)
    cut = _Cut(at, torn)
    with pytest.MonkeyPatch.context() as m:
        cut.install(m)
        try:
            update(HistoryWriter(where / "history.h5"))
        except Exception:
            pass  # HDF5 may notice its lost writes; the process would be dead anyway
    return cut.calls > at


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A history with COMMITTED rows."""
    d = tmp_path_factory.mktemp("base")
    w = _writer(d)
    for r in range(COMMITTED):
        w.append_epoch(**_row(r))
    return d


def _sweep(base: Path, tmp: Path, update) -> int:
    """Kill ``update`` at each of its disk calls in turn (every other one a torn write); after
    each, the committed rows read back exactly (through a reader, or rollback), rollback
    leaves them appendable, and one more row goes in. Returns the number of kill points."""
    at = 0
    while _killed(base, tmp / f"at{at}", update, at, torn=at % 2 == 1):
        path = tmp / f"at{at}"
        w = HistoryWriter(path / "history.h5")
        if at % 4 == 1:
            _assert_rows(path, COMMITTED)  # the reader undoes the half-done update itself
        rows = COMMITTED - (at % 3 == 2)  # a checkpoint older than the last row, now and then
        w.rollback(rows)
        assert not (path / "history.h5-journal").exists()
        _assert_rows(path, rows)
        w.append_epoch(**_row(rows))
        with History(path) as h:
            assert len(h) == rows + 1 and h.metric("train/loss")[-1] == rows / 3
        at += 1
    return at


def test_kill_at_every_disk_call_of_append_epoch(base, tmp_path):
    # the journal, its pages, HDF5's writes and closing metadata flush, the commit
    assert _sweep(base, tmp_path, lambda w: w.append_epoch(**_row(COMMITTED))) > 30


def test_kill_at_every_disk_call_of_add_data(base, tmp_path):
    assert _sweep(base, tmp_path, lambda w: w.add_data("extra", torch.arange(50))) > 5


def test_kill_at_every_disk_call_of_rollback(base, tmp_path):
    """Rollback itself (undoing the journal, then the rebuild) may be killed and rerun."""
    half_done = tmp_path / "half"
    assert _killed(base, half_done, lambda w: w.append_epoch(**_row(COMMITTED)), 25, False)
    at = 0
    while _killed(half_done, tmp_path / f"at{at}", lambda w: w.rollback(2), at, at % 2 == 1):
        path = tmp_path / f"at{at}"
        HistoryWriter(path / "history.h5").rollback(2)
        _assert_rows(path, 2)
        at += 1
    assert at > 5


def test_kill_in_create_leaves_no_half_file(tmp_path):
    counted = _Cut(10**9)
    with pytest.MonkeyPatch.context() as m:
        counted.install(m)
        _writer(tmp_path)
    # the new file's writes, its fsync, the stale journal's unlink, the rename
    assert counted.calls > 5
    for at in range(counted.calls):
        (tmp_path / "history.h5").unlink(missing_ok=True)
        (tmp_path / "history.h5-journal").write_bytes(b"stale")
        with pytest.MonkeyPatch.context() as m:
            _Cut(at).install(m)
            _writer(tmp_path)
        assert not (tmp_path / "history.h5").exists()
    _writer(tmp_path).append_epoch(**_row(0))
    _assert_rows(tmp_path, 1)
    assert not (tmp_path / "history.h5-journal").exists()


# -- real kills ----------------------------------------------------------------------------

# numpy only, so that the child need not import torch (seconds); the test reads it too
ROWS = '''
import types
import numpy as np

N, C = 40, 3


def row(r):
    g = np.random.default_rng(r)
    col = lambda data, producer, kind: types.SimpleNamespace(
        data=data, producer=producer, kind=kind, snapshot=True)
    columns = {"target": col(g.dirichlet(np.ones(C), N).astype(np.float32),
                             "lp" if r % 2 else "lp2", "target"),
               "select/m": col(g.random(N) > 0.5, "sel", "mask")}
    if r >= 2:
        columns["weight/w"] = col(g.random(N).astype(np.float32), "w", "weight")
    metrics = {"loss": r / 7, **({"late": float(r)} if r >= 2 else {})}
    return {"stage": "s" if r < 3 else "t", "epoch": r, "metrics": metrics, "columns": columns}
'''

CHILD = '''
import os, shutil, signal, sys, types

# kdcore's package __init__ imports torch; the history modules need none of it
package = types.ModuleType("kdcore")
package.__path__ = [sys.argv[1]]
sys.modules["kdcore"] = package
import h5py
from kdcore import history_journal, history_writer
from kdcore.history_journal import _Disk, disk

exec(sys.argv[3])
work = sys.argv[2]
base = os.path.join(work, "base.h5")
w = history_writer.HistoryWriter(base)
w.create(recipe_toml="", versions={}, num_classes=C, class_names=["a", "b", "c"],
         constants={"noisy_label": np.arange(N) % C, "clean_label": np.arange(N) % C},
         transition_matrix=np.eye(C))
for r in range(3):
    w.append_epoch(**row(r))
assert "torch" not in sys.modules


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def count_calls(update):
    """Disk calls of an update, on a scratch copy."""
    calls = [0]
    for name in ("pwrite", "ftruncate", "unlink", "replace", "fsync"):
        real = getattr(_Disk, name)
        setattr(disk, name, lambda *a, real=real: (calls.__setitem__(0, calls[0] + 1), real(*a))[1])
    shutil.copy(base, os.path.join(work, "scratch.h5"))
    update(history_writer.HistoryWriter(os.path.join(work, "scratch.h5")))
    for name in ("pwrite", "ftruncate", "unlink", "replace", "fsync"):
        delattr(disk, name)
    return calls[0]


def at_disk_call(at, torn=False):
    calls = [0]
    for name in ("pwrite", "ftruncate", "unlink", "replace", "fsync"):
        real = getattr(_Disk, name)
        def call(*a, real=real, name=name):
            calls[0] += 1
            if calls[0] - 1 == at:
                if torn and name == "pwrite":
                    real(a[0], bytes(a[1])[: len(a[1]) // 2], a[2])
                die()
            return real(*a)
        setattr(disk, name, call)


def at_call(owner, attr, at):
    real, calls = getattr(owner, attr), [0]
    def call(*a, **k):
        calls[0] += 1
        if calls[0] - 1 == at:
            die()
        return real(*a, **k)
    setattr(owner, attr, call)


append = lambda w: w.append_epoch(**row(3))
add_data = lambda w: w.add_data("extra", np.arange(N))
n_append, n_data = count_calls(append), count_calls(add_data)
points = [
    (append, lambda: at_disk_call(0)),  # the journal's header
    (append, lambda: at_disk_call(1)),  # the first saved page, before its overwrite
    (append, lambda: at_disk_call(2, torn=True)),  # the first overwrite, half done
    (append, lambda: at_disk_call(n_append // 2, torn=True)),
    (append, lambda: at_disk_call(n_append - 3)),  # in HDF5's closing metadata flush
    (append, lambda: at_disk_call(n_append - 1)),  # the commit (the journal's unlink)
    # after the epoch and stage rows, before the metrics' rows
    (append, lambda: at_call(history_writer, "_append_value", 2)),
    # a producer code: the target's snapshot written, the code saying who made it not
    (append, lambda: at_call(history_writer, "_append_value", 4)),
    # the string table taking the new stage name "t"
    (append, lambda: at_call(h5py.Dataset, "__setitem__", 0)),
    # between the ledger snapshots: two written, the third not
    (append, lambda: at_call(h5py.Dataset, "__setitem__", 3)),
    # all of the epoch in HDF5's caches, nothing flushed
    (append, lambda: at_call(h5py.File, "close", 0)),
    (append, lambda: at_call(history_journal.JournaledFile, "commit", 0)),
    (add_data, lambda: at_disk_call(n_data // 2)),
    (add_data, lambda: at_disk_call(n_data - 1)),
]
for i, (update, arm) in enumerate(points):
    where = os.path.join(work, f"point{i}")
    os.mkdir(where)
    shutil.copy(base, os.path.join(where, "history.h5"))
    pid = os.fork()
    if pid == 0:
        try:
            arm()
            update(history_writer.HistoryWriter(os.path.join(where, "history.h5")))
        finally:
            os._exit(3)  # still alive: the kill point was never reached
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    print(f"point{i}", "killed" if killed else "survived", flush=True)
'''


def test_sigkill_inside_updates(tmp_path):
    """14 real kills inside append_epoch and add_data (one child process, one fork each)."""
    kdcore_dir = Path(__file__).resolve().parents[1] / "kdcore"
    done = subprocess.run([sys.executable, "-c", CHILD, str(kdcore_dir), str(tmp_path), ROWS],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines == [w for i in range(14) for w in (f"point{i}", "killed")], done.stdout
    scope: dict = {}
    exec(ROWS, scope)
    row = scope["row"]
    for i in range(14):
        path = tmp_path / f"point{i}"
        assert (path / "history.h5-journal").exists(), i  # each died inside its update
        if i % 2:
            _assert_rows(path, COMMITTED, row)
        w = HistoryWriter(path / "history.h5")
        w.rollback(COMMITTED)
        _assert_rows(path, COMMITTED, row)
        w.append_epoch(**row(COMMITTED))
        w.add_data("extra", np.arange(5))
        _assert_rows(path, COMMITTED + 1, row, data=("clean_label", "noisy_label", "extra"))


class _Full:
    """A disk that fills up at write ``at``: from then on a write that needs new space (one
    past the file's end: every journal record, the file's growth) is refused with ENOSPC, or,
    every other time, cut short where the file ends; overwriting what exists still works."""

    def __init__(self, at: int):
        self.at, self.calls, self.refused = at, 0, 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(disk, "pwrite", self.pwrite)

    def pwrite(self, fd, data, offset):
        import errno
        import os

        n, self.calls = self.calls, self.calls + 1
        end = os.fstat(fd).st_size
        if n < self.at or offset + len(data) <= end:
            return os.pwrite(fd, data, offset)
        self.refused += 1
        if self.refused % 2 == 0 and offset < end:  # what fits in place, then no more
            return os.pwrite(fd, bytes(data)[: end - offset], offset)
        raise OSError(errno.ENOSPC, "No space left on device")


def _fill_at_every_write(tmp_path: Path, start: Path | None, update, refused: str) -> int:
    """Run ``update(dir)`` on a copy of ``start``'s history (or in an empty folder) with the
    disk filling up at write 0, 1, 2, ... until one run needs no refused write; each refused
    one must end in one line starting ``refused`` (``{path}``: the history's path) that names
    the disk's error. Returns how many writes were refused in turn."""
    from kdcore.errors import KdcoreError

    at = 0
    while True:
        path = tmp_path / f"at{at}"
        path.mkdir()
        if start is not None:
            shutil.copy(start / "history.h5", path / "history.h5")
        full = _Full(at)
        with pytest.MonkeyPatch.context() as m:
            full.install(m)
            try:
                update(path)
            except KdcoreError as exc:
                message = str(exc)
            else:
                message = None
        if not full.refused:
            assert message is None
            return at
        assert message is not None and "\n" not in message
        assert message.startswith(refused.format(path=path / "history.h5")), message
        assert "No space left on device" in message or "probably full" in message, message
        assert not (path / "history.h5-journal").exists()
        at += 1


@pytest.mark.slow
def test_a_disk_that_fills_up_at_any_write_of_append_epoch_leaves_the_committed_rows(
        base, tmp_path):
    """One line naming the disk's error, the file as it was (readable, no journal left),
    and appendable once there is space again; never a crash of HDF5's file driver."""
    def append(path: Path) -> None:
        HistoryWriter(path / "history.h5").append_epoch(**_row(COMMITTED))

    refused = _fill_at_every_write(tmp_path, base, append,
                                   "{path}: writing the history failed (")
    assert refused > 10
    for at in range(refused + 1):
        path = tmp_path / f"at{at}"
        if at < refused:  # as committed; then, with space again, the row goes in
            _assert_rows(path, COMMITTED)
            append(path)
        _assert_rows(path, COMMITTED + 1)


def test_a_disk_that_fills_up_at_any_write_of_create_leaves_no_file(tmp_path):
    """The new file is written through the shield as well: HDF5's own driver, writing to a
    path, crashed the process (a segfault at its closing flush) when the disk refused a write,
    and wrote around :data:`disk`, where a full disk could not be shown."""
    refused = _fill_at_every_write(tmp_path, None, _writer, "cannot create {path}: ")
    assert refused > 3
    for at in range(refused):
        path = tmp_path / f"at{at}"
        assert sorted(p.name for p in path.iterdir()) == []  # no half file, no temporary one
        _writer(path).append_epoch(**_row(0))
        _assert_rows(path, 1)


def test_a_disk_that_fills_up_at_any_write_of_a_rebuild_leaves_the_file(base, tmp_path):
    """Rollback's rebuild writes its copy through the shield: one line, the file as it was
    and no copy left behind; then, with space again, the rollback goes through."""
    refused = _fill_at_every_write(tmp_path, base,
                                   lambda path: HistoryWriter(path / "history.h5").rollback(2),
                                   "{path}: could not rebuild the history (")
    assert refused > 3
    before = (base / "history.h5").read_bytes()
    for at in range(refused + 1):
        path = tmp_path / f"at{at}"
        if at < refused:
            assert (path / "history.h5").read_bytes() == before
            assert sorted(p.name for p in path.iterdir()) == ["history.h5"]
            HistoryWriter(path / "history.h5").rollback(2)
        _assert_rows(path, 2)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and SIGXFSZ")
def test_a_run_past_the_file_size_limit_stops_with_one_line(tmp_path, tiny_recipe):
    """For real, in a process of its own (the point is that it does not crash): with a file
    size limit the history cannot be created under, ``kdcore run`` ends with exit 2 and one
    line; once the limit is gone, ``--resume`` starts the run. (Python ignores SIGXFSZ,
    so a write past the limit fails with EFBIG, or is cut short, as on a full disk.)"""
    import resource

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, resource.RLIM_INFINITY))

    out = tmp_path / "run"
    command = [sys.executable, "-m", "kdcore", "run", str(tiny_recipe), "--out", str(out),
               "--no-progress"]
    proc = subprocess.run(command, capture_output=True, text=True, preexec_fn=limited,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"kdcore: error: cannot create {out / 'history.h5'}: "), last
    assert not (out / "history.h5").exists() and not (out / "history.h5.create").exists()
    proc = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with History(out / "history.h5") as h:
        assert h.epochs() == [("teacher", 0), ("teacher", 1), ("student", 0), ("student", 1)]


@pytest.mark.parametrize("seed", range(12))
def test_a_journaled_file_reads_as_a_plain_file_before_and_after_the_disk_fills(
        tmp_path, monkeypatch, seed):
    """Random seeks (from the start, the position and the end), writes, truncations and reads
    against a bytearray and a position, as a file opened "r+b" behaves: once the disk refuses
    a write or a truncation, what HDF5 reads back is still what it wrote (kept in memory), and
    abandoning the update restores the original bytes."""
    import errno
    import os
    import random

    from kdcore.history_journal import JournaledFile

    rng = random.Random(seed)
    path = tmp_path / "f"
    original = rng.randbytes(10_000)
    path.write_bytes(original)
    fd = os.open(path, os.O_RDWR)
    f = JournaledFile(fd, path)
    model, at = bytearray(original), 0

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    fills_at = rng.randrange(100)
    for step in range(300):
        if step == fills_at:
            monkeypatch.setattr(disk, "pwrite", full)
            monkeypatch.setattr(disk, "ftruncate", full)
        op = rng.random()
        if op < 0.2:  # seek, from one of the three places
            whence = rng.choice((os.SEEK_SET, os.SEEK_CUR, os.SEEK_END))
            base = {os.SEEK_SET: 0, os.SEEK_CUR: at, os.SEEK_END: len(model)}[whence]
            offset = rng.randrange(-base, len(model) + 3000 - base)
            at = base + offset
            assert f.seek(offset, whence) == at, step
        elif op < 0.5:  # write where the last operation left off
            data = rng.randbytes(rng.randrange(1, 2000))
            assert f.write(data) == len(data)
            model.extend(bytes(max(0, at - len(model))))
            model[at:at + len(data)] = data
            at += len(data)
        elif op < 0.6:
            size = rng.randrange(len(model) + 100) if op < 0.55 else at
            assert f.truncate(size if op < 0.55 else None) == size
            del model[size:]
            model.extend(bytes(size - len(model)))
        else:
            n = rng.randrange(3000)
            if op < 0.7:
                assert f.read(n) == bytes(model[at:at + n]), step
            elif op < 0.75:  # to the end
                assert f.read() == bytes(model[at:]), step
                n = len(model)
            else:  # h5py's driver reads into a buffer it does not clear
                buffer = bytearray(b"\xff" * n)
                got = f.readinto(buffer)
                assert bytes(buffer[:got]) == bytes(model[at:at + n]), step
            at = max(at, min(at + n, len(model)))
        assert f.tell() == at, step
    assert f.seek(0, os.SEEK_END) == len(model)
    assert isinstance(f.failure, OSError) and f.failure.errno == errno.ENOSPC
    monkeypatch.setattr(disk, "pwrite", _Disk.pwrite)
    monkeypatch.setattr(disk, "ftruncate", _Disk.ftruncate)
    f.abandon()
    os.close(fd)
    assert path.read_bytes() == original
    assert not (tmp_path / "f-journal").exists()
