"""Data parallel runs (``kdcore run --nproc 2``, gloo on the CPU) against one process at the
same global batch, and a SIGKILL of the two-process run followed by ``--resume``.

Tolerance: the ranks split each batch's rows, so matrix products and the gradient sum add the
same numbers in another order. Every discrete column (selections, propagated labels, targets,
masks) must be equal; float columns may differ by that float32 rounding, carried through a few
epochs, and then by one flip of the last bit of their float16 storage (2**-10 of the value):
``FLOAT_ATOL + FLOAT_RTOL * |value|``; metrics (accuracies included) within ``METRIC_ATOL``.
Two runs with two processes are bit-for-bit equal: the gloo sum of two ranks is the same each
time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kdcore import KdcoreError, distributed
from kdcore.cli import main
from kdcore.history import History
from kdcore.testing import assert_close_history, assert_same_history

ROOT = Path(__file__).parents[1]
RECIPES = ROOT / "recipes"
SMALL = ["data.train_subset=240", "run.device=\"cpu\"", "run.checkpoint_interval_s=0",
         "models.teacher.params.hidden=[32]", "models.student.params.hidden=[16]"]
KD = [*SMALL, "stages.teacher.epochs=2", "stages.student.epochs=2"]
AMLKD = [*SMALL, "stages.teacher.epochs=2", "stages.warmup.epochs=1",
         "stages.refine.epochs=2", "stages.mutual.epochs=2"]
FLOAT_ATOL, FLOAT_RTOL = 1e-3, 2e-3
METRIC_ATOL = 1e-4


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _launch(args: list[str], tmp_path: Path, timeout: float = 300
            ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "kdcore", "run", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=tmp_path,
                          start_new_session=True)


def _run_one_process(recipe: str, overrides: list[str], out: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(RECIPES / recipe), *_sets(overrides),
                                       "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output


def assert_same_up_to_rounding(a: Path, b: Path) -> None:
    assert_close_history(a / "history.h5", b / "history.h5", float_atol=FLOAT_ATOL,
                         float_rtol=FLOAT_RTOL, metric_atol=METRIC_ATOL)


RANK_DIGEST = textwrap.dedent('''
    """Writes, on every rank, a digest of the ledger and the models at each stage's end."""
    import hashlib, os
    import kdcore

    class Digest:
        @kdcore.hookimpl
        def kdcore_stage_end(self, ctx, stage):
            h = hashlib.sha256()
            for name in sorted(ctx.ledger):
                h.update(name.encode() + ctx.ledger[name].cpu().numpy().tobytes())
            for role in sorted(ctx.models):
                for key, value in sorted(ctx.models[role].state_dict().items()):
                    h.update(key.encode() + value.cpu().numpy().tobytes())
            with open(os.path.join(os.environ["DIGEST_DIR"], f"rank{os.environ['RANK']}"),
                      "a") as fh:
                fh.write(f"{stage.name} {h.hexdigest()}\\n")

    DIGEST = Digest()
''')


@pytest.fixture(scope="module")
def amlkd_two(tmp_path_factory) -> Path:
    """The small AML-KD run in two processes, uninterrupted (shared by two tests); each rank
    writes a digest of its ledger and models at every stage's end to ``digests/``."""
    out = tmp_path_factory.mktemp("amlkd-two") / "run"
    (out.parent / "rank_digest.py").write_text(RANK_DIGEST)
    (out.parent / "digests").mkdir()
    os.environ["DIGEST_DIR"] = str(out.parent / "digests")
    try:
        proc = _launch([str(RECIPES / "amlkd.toml"), *_sets(AMLKD), "--out", str(out),
                        "--nproc", "2", "-q", "--plugin", "rank_digest:DIGEST"], out.parent)
    finally:
        del os.environ["DIGEST_DIR"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test acc") == len(("teacher", "student"))  # printed once
    return out


@pytest.fixture(scope="module")
def kd_two(tmp_path_factory) -> Path:
    """The small KD run in two processes, uninterrupted (shared by two tests)."""
    out = tmp_path_factory.mktemp("kd-two") / "run"
    proc = _launch([str(RECIPES / "kd.toml"), *_sets(KD), "--out", str(out), "--nproc", "2",
                    "-q"], out.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_kd_in_two_processes_matches_one_at_the_same_global_batch(tmp_path, kd_two):
    one, two = tmp_path / "one", kd_two
    _run_one_process("kd.toml", KD, one)
    assert_same_up_to_rounding(one, two)
    # one history and one summary, written by rank 0
    assert sorted(p.name for p in two.iterdir() if p.suffix in (".h5", ".json")) == [
        "history.h5", "summary.json"]


@pytest.mark.slow
def test_a_batch_with_fewer_rows_than_processes_runs_as_in_one_process(tmp_path):
    """The last batch of 65 rows in batches of 64 has one row: the second rank's share is
    empty, and the run crashed in the gather."""
    small = [*SMALL, "data.train_subset=65", "data.batch_size=64", "stages.student.epochs=1"]
    proc = _launch([str(RECIPES / "ce.toml"), *_sets(small), "--out", str(tmp_path / "two"),
                    "--nproc", "2", "-q"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _run_one_process("ce.toml", small, tmp_path / "one")
    assert_same_up_to_rounding(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_kdmlc_in_two_processes_matches_one(tmp_path):
    """MLC's look-ahead differentiates the teacher's parameters itself: it averages those
    gradients across ranks (``kdcore.distributed.mean_across_ranks``); without that the
    ranks' label-correction networks would drift from the one-process run."""
    overrides = [*SMALL, "stages.kdmlc.epochs=2"]
    proc = _launch([str(RECIPES / "kdmlc.toml"), *_sets(overrides), "--out",
                    str(tmp_path / "two"), "--nproc", "2", "-q"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _run_one_process("kdmlc.toml", overrides, tmp_path / "one")
    assert_same_up_to_rounding(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
def test_every_rank_holds_the_same_ledger_and_models_at_every_stage_end(amlkd_two):
    digests = amlkd_two.parent / "digests"
    zero, one = (digests / "rank0").read_text(), (digests / "rank1").read_text()
    assert [line.split()[0] for line in zero.splitlines()] == [
        "teacher", "warmup", "refine", "mutual"]
    assert zero == one


@pytest.mark.slow
def test_amlkd_in_two_processes_matches_one_at_the_same_global_batch(tmp_path, amlkd_two):
    _run_one_process("amlkd.toml", AMLKD, tmp_path / "one")
    assert_same_up_to_rounding(tmp_path / "one", amlkd_two)
    with History(amlkd_two / "history.h5") as h:  # the discrete columns checked are there
        assert {"select/small_loss", "lp/mutual_lp/label", "target"} <= set(h.column_names())


KILLER = textwrap.dedent('''
    """SIGKILLs every process of a distributed run (the launcher and each worker) at the
    second batch of the refine stage's second epoch, as a machine that dies would."""
    import os, signal
    import kdcore

    class Killer:
        seen = 0

        @kdcore.hookimpl
        def kdcore_batch_end(self, ctx, batch, losses):
            if ctx.stage.name != "refine" or ctx.epoch != 1:
                return
            self.seen += 1
            if self.seen == 2 and int(os.environ.get("RANK", "0")) == 0:
                agent = os.getppid()
                workers = [int(p) for p in os.listdir("/proc") if p.isdigit()
                           and _parent(int(p)) == agent]
                for pid in [agent, *workers]:
                    if pid != os.getpid():
                        os.kill(pid, signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)

    KILLER = Killer()


    def _parent(pid):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return int(fh.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            return -1
''')


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers in /proc")
def test_sigkill_of_a_two_process_run_then_resume_equals_the_uninterrupted_run(tmp_path,
                                                                              amlkd_two):
    (tmp_path / "killer.py").write_text(KILLER)
    args = [str(RECIPES / "amlkd.toml"), *_sets(AMLKD), "--nproc", "2", "-q"]
    killed = _launch([*args, "--out", str(tmp_path / "killed"), "--plugin", "killer:KILLER"],
                     tmp_path)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (tmp_path / "killed" / "summary.json").exists()
    with History(tmp_path / "killed" / "history.h5") as h:
        assert 0 < len(h) < 7  # stopped mid-run, with epochs written
    resumed = _launch([*args, "--out", str(tmp_path / "killed"), "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_history(tmp_path / "killed", amlkd_two)
    assert (tmp_path / "killed" / "summary.json").read_text() == (
        amlkd_two / "summary.json").read_text()


WORKER_KILLER = textwrap.dedent('''
    """SIGKILLs the second worker of a distributed run at the student stage's first batch, as
    the out-of-memory killer would: the first worker's collective then fails."""
    import os, signal
    import kdcore

    class WorkerKiller:
        @kdcore.hookimpl
        def kdcore_batch_end(self, ctx, batch, losses):
            if ctx.stage.name == "student" and os.environ.get("RANK") == "1":
                os.kill(os.getpid(), signal.SIGKILL)

    KILLER = WorkerKiller()
''')


@pytest.mark.slow
def test_a_worker_killed_alone_is_said_first_and_the_run_resumes(tmp_path, kd_two):
    """The launcher's line leads with the worker that died without a word, before the broken
    collective of the worker that outlived it (which named the collective and the component
    that called it, and was said first when it was the only line left); --resume then ends
    as the uninterrupted run."""
    (tmp_path / "worker_killer.py").write_text(WORKER_KILLER)
    args = [str(RECIPES / "kd.toml"), *_sets(KD), "--nproc", "2", "-q"]
    killed = _launch([*args, "--out", str(tmp_path / "killed"),
                      "--plugin", "worker_killer:KILLER"], tmp_path)
    assert killed.returncode == 1, killed.stderr[-3000:]
    said = [line for line in killed.stderr.splitlines() if line.startswith("kdcore: error:")]
    first = ("kdcore: error: worker 1 of 2: worker process was stopped by SIGKILL without a "
             "message (sent by the out-of-memory killer, or by the launcher to a worker that "
             "hung); worker 0 of 2: ")
    assert len(said) == 1 and said[0].startswith(first), said[0][:600]
    rest = said[0][len(first):]
    # the survivor's collective fails on the broken connection at once; on a loaded machine
    # the launcher's SIGTERM can reach it first, and it then leaves no line
    if rest != "worker process was stopped by SIGTERM without a message":
        assert rest.startswith("the run stopped: component '"), rest
        assert " in transfer, torch.distributed's all_gather raised RuntimeError: " in rest
        assert "; most likely another process of the run stopped first, and its line says " in (
            rest)
    resumed = _launch([*args, "--out", str(tmp_path / "killed"), "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_history(tmp_path / "killed", kd_two)


LAUNCHER_KILLER = textwrap.dedent('''
    """SIGKILLs the launcher of --nproc alone (the workers' parent) at the student stage's
    first batch, as a job scheduler that kills only the process it started would; each worker
    leaves its process id in the run's parent folder first."""
    import os, signal
    import kdcore

    class LauncherKiller:
        done = False

        @kdcore.hookimpl
        def kdcore_run_start(self, ctx):
            with open(f"worker{os.environ['RANK']}.pid", "w") as fh:
                fh.write(str(os.getpid()))

        @kdcore.hookimpl
        def kdcore_batch_end(self, ctx, batch, losses):
            if ctx.stage.name == "student" and os.environ.get("RANK") == "0" and not self.done:
                self.done = True
                os.kill(os.getppid(), signal.SIGKILL)

    KILLER = LauncherKiller()
''')


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_workers_die_with_their_launcher_and_the_run_resumes(tmp_path, kd_two):
    """torch's agent starts the workers in sessions of their own: with the launcher killed
    they trained on alone, unseen, to the run's end (or --resume was refused while they held
    the run directory)."""
    import time

    (tmp_path / "launcher_killer.py").write_text(LAUNCHER_KILLER)
    args = [str(RECIPES / "kd.toml"), *_sets(KD), "--nproc", "2", "-q"]
    killed = _launch([*args, "--out", str(tmp_path / "killed"),
                      "--plugin", "launcher_killer:KILLER"], tmp_path)
    assert killed.returncode == -9, killed.stderr[-3000:]
    workers = [int((tmp_path / f"worker{rank}.pid").read_text()) for rank in (0, 1)]
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        assert time.monotonic() < deadline, "the workers outlived their launcher"
        time.sleep(0.05)
    assert not (tmp_path / "killed" / "summary.json").exists()  # they stopped with it
    resumed = _launch([*args, "--out", str(tmp_path / "killed"), "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_history(tmp_path / "killed", kd_two)


def _death_signal() -> int:
    import ctypes

    got = ctypes.c_int(0)
    ctypes.CDLL(None).prctl(2, ctypes.byref(got), 0, 0, 0)  # PR_GET_PDEATHSIG
    return got.value


@pytest.fixture
def death_signal_cleared():
    """This process's parent-death signal, cleared again after the test has asked for one."""
    import ctypes

    yield _death_signal
    ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG: none


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
@pytest.mark.parametrize(("launcher", "rank", "armed"), [
    ("parent", "0", True),  # a worker of launch(): SIGKILL when its launcher dies
    ("parent", None, True),  # a run of a grid's
    (None, "0", False),  # a user's own torchrun: nothing asked
    (None, None, False),  # kdcore run
    ("", "0", False),
    ("12x", "0", False),
])
def test_a_worker_of_the_launcher_asks_to_die_with_it(monkeypatch, death_signal_cleared,
                                                      launcher, rank, armed):
    from kdcore.torchrun import LAUNCHER_ENV, die_with_launcher

    monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)
    if launcher is not None:
        monkeypatch.setenv(LAUNCHER_ENV, str(os.getppid()) if launcher == "parent" else launcher)
    if rank is not None:
        monkeypatch.setenv("RANK", rank)
    assert die_with_launcher() is armed
    assert death_signal_cleared() == (9 if armed else 0)
    assert LAUNCHER_ENV not in os.environ  # not handed on to what this process starts


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_a_worker_whose_launcher_is_not_its_parent_stops_with_one_line(monkeypatch,
                                                                      death_signal_cleared):
    """Handed on to another parent: the launcher died before the request, so no signal will
    come; the worker stops before its run starts."""
    from kdcore.torchrun import LAUNCHER_ENV, die_with_launcher

    monkeypatch.setenv(LAUNCHER_ENV, str(os.getppid() + 1))
    with pytest.raises(KdcoreError, match=rf"^the process that started this one \(process "
                       rf"{os.getppid() + 1}, a kdcore launcher\) is gone; stopping before the "
                       "run starts$"):
        die_with_launcher()
    assert death_signal_cleared() == 9 and LAUNCHER_ENV not in os.environ


@pytest.fixture
def watches(monkeypatch):
    """The launchers watched by :func:`kdcore.torchrun.watch_parent` threads, a stand-in that
    notes its launcher and returns (the real one would SIGKILL this test's process)."""
    import threading

    from kdcore import torchrun

    watched: list[tuple[int, float]] = []

    def watch(launcher: int, interval: float = torchrun.PARENT_WATCH_S) -> None:
        thread = threading.current_thread()
        # a daemon: a thread that kept the process alive would keep a finished run running
        assert thread.daemon and thread.name == "kdcore-launcher-watch"
        watched.append((launcher, interval))

    monkeypatch.setattr(torchrun, "watch_parent", watch)

    def joined() -> list[tuple[int, float]]:
        for thread in threading.enumerate():
            if thread.name == "kdcore-launcher-watch":
                thread.join(10)
        return watched

    return joined


@pytest.mark.parametrize("libc", ["refuses", "missing", "no prctl", "not linux"])
def test_a_worker_whose_kernel_cannot_be_asked_watches_its_launcher(monkeypatch, watches, libc):
    """prctl refused (a sandbox's seccomp), no C library, one without prctl, or another
    system: a thread watches whether the launcher is still the parent instead."""
    import ctypes

    from kdcore.torchrun import LAUNCHER_ENV, PARENT_WATCH_S, die_with_launcher

    class Refusing:
        def prctl(self, *args):
            return -1

    def load(name, *args, **kwargs):
        assert libc != "not linux", "prctl is Linux's"
        if libc == "missing":
            raise OSError("no libc")
        return Refusing() if libc == "refuses" else object()

    monkeypatch.setattr(ctypes, "CDLL", load)
    monkeypatch.setattr(sys, "platform", "darwin" if libc == "not linux" else "linux")
    monkeypatch.setenv(LAUNCHER_ENV, str(os.getppid()))
    assert die_with_launcher() is True
    assert watches() == [(os.getppid(), PARENT_WATCH_S)]
    assert LAUNCHER_ENV not in os.environ
    # a launcher that is gone already: one line, as on Linux
    monkeypatch.setenv(LAUNCHER_ENV, str(os.getppid() + 1))
    with pytest.raises(KdcoreError, match=rf"\(process {os.getppid() + 1}, a kdcore launcher\) "
                                          "is gone"):
        die_with_launcher()
    # no watcher for it: one would kill the process before its line was said
    assert watches() == [(os.getppid(), PARENT_WATCH_S)]


@pytest.mark.parametrize(("interval", "kept"), [(0.25, 3), (None, 2), (0.25, 0)])
def test_watch_parent_kills_its_process_once_the_launcher_is_no_longer_its_parent(
        monkeypatch, interval, kept):
    import signal

    from kdcore.torchrun import PARENT_WATCH_S, watch_parent

    if kept == 0:  # Windows has no SIGKILL: its SIGTERM ends a process there at once
        monkeypatch.delattr(signal, "SIGKILL")

    parents = iter([41] * kept + [1])  # then handed on to init: the launcher died
    naps: list[float] = []
    kills: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "getppid", lambda: next(parents))
    monkeypatch.setattr(time, "sleep", naps.append)
    monkeypatch.setattr(os, "kill", lambda pid, sig: kills.append((pid, sig)))
    watch_parent(41, *(() if interval is None else (interval,)))
    assert naps == [interval or PARENT_WATCH_S] * kept
    assert kills == [(os.getpid(), signal.SIGTERM if kept == 0 else 9)]
    assert PARENT_WATCH_S == 0.5


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_watching_worker_dies_with_its_killed_launcher():
    """For real, in processes of their own: a worker that cannot ask the kernel (it takes
    itself for another system's) dies within moments of a SIGKILL of its launcher alone."""
    from kdcore.torchrun import LAUNCHER_ENV

    worker = ("import sys, time\nfrom kdcore.torchrun import die_with_launcher\n"
              "sys.platform = 'darwin'\nassert die_with_launcher()\n"
              "print('armed', flush=True)\ntime.sleep(120)\n")
    launcher = textwrap.dedent(f"""
        import os, subprocess, sys, time
        env = {{**os.environ, {LAUNCHER_ENV!r}: str(os.getpid())}}
        child = subprocess.Popen([sys.executable, "-c", {worker!r}], env=env,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "armed\\n"
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    pid = 0
    try:
        pid = int(proc.stdout.readline())
        assert _alive(pid)
        proc.kill()
        proc.wait(30)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
    finally:
        proc.kill()
        if pid and _alive(pid):
            os.kill(pid, 9)


def test_a_run_whose_launcher_is_gone_stops_with_one_line(tmp_path):
    """For real, through the command line, in a process of its own: a grid's run whose
    launcher is not its parent stops before anything is written, exit 2, one line."""
    from kdcore.torchrun import LAUNCHER_ENV

    env = {**os.environ, LAUNCHER_ENV: "1" if os.getppid() != 1 else "2",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "kdcore", "run", str(RECIPES / "ce.toml"),
                           "--out", str(tmp_path / "run")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    # the last line (a mutation run's copy warns about its configuration first)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"kdcore: error: the process that started this one (process {env[LAUNCHER_ENV]}, "
        "a kdcore launcher) is gone; stopping before the run starts")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


READER_GATE = textwrap.dedent('''
    """Rank 0 holds its second epoch's end (after the first checkpoint) until the test has
    opened the history as a reader would (an h5py.File left open in a notebook):
    READER_DIR/ready, then READER_DIR/open."""
    import os, pathlib, time
    import kdcore

    class Gate:
        @kdcore.hookimpl
        def kdcore_epoch_end(self, ctx, epoch, metrics):
            folder = pathlib.Path(os.environ["READER_DIR"])
            if (epoch != 1 or int(os.environ.get("RANK", "0")) != 0
                    or (folder / "open").exists()):
                return
            (folder / "ready").touch()
            deadline = time.monotonic() + 60
            while not (folder / "open").exists() and time.monotonic() < deadline:
                time.sleep(0.02)

    GATE = Gate()
''')


@pytest.mark.slow
def test_rank_0_held_up_by_a_reader_stops_before_the_group_timeout_and_resumes(tmp_path):
    """An h5py.File held open on a two-process run's history: rank 0 warns, gives up before
    ``run.distributed_timeout_s`` (at which the other rank's collective fails) with one line
    naming the reader and --resume, its checkpoint kept; once the reader is closed, --resume
    finishes the run as the uninterrupted one."""
    import time

    import h5py

    (tmp_path / "reader_gate.py").write_text(READER_GATE)
    gate = tmp_path / "gate"
    gate.mkdir()
    over = [*SMALL, "stages.student.epochs=3", "run.distributed_timeout_s=20"]
    args = [str(RECIPES / "ce.toml"), *_sets(over), "--nproc", "2", "-q"]
    held = tmp_path / "held"
    env = {**os.environ, "READER_DIR": str(gate), "PYTHONPATH": os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "kdcore", "run", *args, "--out", str(held),
                             "--plugin", "reader_gate:GATE"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (gate / "ready").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        with h5py.File(held / "history.h5", "r"):
            (gate / "open").touch()
            out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    # the workers disagree (rank 0's line exit 2, the other rank's broken collective 1): 1
    assert proc.returncode == 1, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("kdcore: error:")]
    assert len(said) == 1 and said[0].startswith(
        f"kdcore: error: worker 0 of 2: {held / 'history.h5'} is held open elsewhere (a reader "
        "such as an open History or h5py.File, or a second run in this directory); the run's "
        "other processes stop at the process group's timeout (20 s): close it, then --resume; "
        "worker 1 of 2: "), err[-3000:]
    other = said[0].split("worker 1 of 2: ")[1]
    # the other rank's collective fails once rank 0 has gone; on a loaded machine the
    # launcher's SIGTERM can reach it first, and it then leaves no line (a consequence either
    # way, said after rank 0's)
    if other != "worker process was stopped by SIGTERM without a message":
        assert other.startswith("the run stopped: ") and "torch.distributed's " in other, other
    assert "the run waits until it is closed" in err  # warned first, half-way at the latest
    assert (held / "checkpoint.pt").exists() and not (held / "summary.json").exists()

    resumed = _launch([*args, "--out", str(held), "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = _launch([*args, "--out", str(tmp_path / "whole")], tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert_same_history(held, tmp_path / "whole")


# -- the pieces, in one process ---------------------------------------------------------------

@pytest.mark.parametrize("n, size", [(0, 2), (1, 2), (5, 2), (6, 3), (7, 4), (64, 8)])
def test_row_counts_are_tensor_splits_parts(n, size):
    import torch

    parts = torch.arange(n).tensor_split(size)
    assert distributed.row_counts(n, size) == [len(p) for p in parts]


def test_one_process_is_the_plain_computation():
    import torch

    x = torch.randn(5, 3, requires_grad=True)
    (out,) = distributed.split_call(lambda rows: (rows * 2,), x)
    assert out.shape == (5, 3)
    out.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full((5, 3), 2.0))
    assert distributed.gather_rows(x, 5) is x
    assert distributed.local_rows(5) == slice(0, 5)
    assert distributed.broadcast({"a": 1}) == {"a": 1}
    assert distributed.world().main and distributed.is_main()


# -- the command line, in process (nothing is launched) ----------------------------------------

def _cli(args: list[str]) -> object:
    return CliRunner().invoke(main, ["run", *args])


LOCAL_ONLY = '''
from kdcore.builtin.components import CrossEntropy
from kdcore.hookspecs import hookimpl


class LocalOnlyCE(CrossEntropy):
    distributed = "it keeps per-process state that no rank shares"


@hookimpl
def kdcore_add_components():
    return {"local_only_ce": LocalOnlyCE}
'''


def test_a_component_that_cannot_run_distributed_is_refused_before_launch(tmp_path,
                                                                         monkeypatch):
    from kdcore.testing import component, stage, tiny_recipe, write_recipe

    (tmp_path / "local_only_plugin.py").write_text(LOCAL_ONLY)
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = write_recipe(tiny_recipe(stage("only", 1, ["student"],
                                            component("local_only_ce"))), tmp_path / "r.toml")
    args = [str(recipe), "--plugin", "local_only_plugin", "--out", str(tmp_path / "r")]
    result = _cli([*args, "--nproc", "2"])
    assert result.exit_code == 2
    assert "cannot run in 2 processes: it keeps per-process state" in result.output
    assert "stages[0].components[0].use" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()
    assert _cli(args).exit_code == 0  # in one process it runs


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "99999999999999999999"])
def test_a_bad_process_count_is_one_line(value):
    result = _cli([str(RECIPES / "kd.toml"), "--nproc", value])
    assert result.exit_code == 2 and "--nproc" in result.output
    assert "Traceback" not in result.output


def test_nproc_inside_a_torchrun_worker_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = _cli([str(RECIPES / "kd.toml"), "--nproc", "2"])
    assert result.exit_code == 2 and "already one of a distributed run's workers" in result.output


def test_an_earlier_run_is_refused_before_launch(tmp_path):
    (tmp_path / "history.h5").write_bytes(b"")
    result = _cli([str(RECIPES / "kd.toml"), "--nproc", "2", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "already holds a run" in result.output


def test_a_live_runs_folder_is_refused_before_launch_and_left_free_for_the_workers(
        tmp_path, monkeypatch):
    import kdcore.torchrun
    from kdcore.rundir import RunDirLock

    (tmp_path / "history.h5").write_bytes(b"")
    args = [str(RECIPES / "kd.toml"), "--nproc", "2", "--out", str(tmp_path), "--resume"]
    launched = []
    monkeypatch.setattr(kdcore.torchrun, "launch", lambda n, worker: launched.append(worker))
    with RunDirLock() as live:
        live.acquire(tmp_path)
        result = _cli(args)
        assert result.exit_code == 2 and "is in use by another kdcore process" in result.output
    assert not launched
    result = _cli(args)
    assert result.exit_code == 0 and launched, result.output
    with RunDirLock() as first_worker:  # the launcher's check let go of it
        first_worker.acquire(tmp_path)


def test_nothing_to_resume_is_refused_before_launch(tmp_path):
    result = _cli([str(RECIPES / "kd.toml"), "--nproc", "2", "--out", str(tmp_path / "none"),
                   "--resume"])
    assert result.exit_code == 2 and "nothing to resume" in result.output


def test_each_worker_gets_the_same_run():
    from kdcore.torchrun import worker_args

    args = worker_args(Path("r.toml"), ["run.seed=1", "a.b=\"x y\""], "out", True, False,
                        True, False, ["my_plugin:P"], True)
    assert args == ["run", "r.toml", "--no-progress", "--set", "run.seed=1", "--set",
                    "a.b=\"x y\"", "--plugin", "my_plugin:P", "--out", "out", "--resume",
                    "--quiet", "--strict-plugins"]
    assert worker_args(Path("r.toml"), [], None, False, True, False, None, [], False) == [
        "run", "r.toml", "--overwrite"]
    assert worker_args(Path("r.toml"), [], None, False, False, False, True, [], False) == [
        "run", "r.toml", "--progress"]


def test_the_launcher_starts_kdcore_in_n_workers_and_restores_its_environment(monkeypatch):
    """torchrun's arguments, the workers' environment (one OMP thread unless set, the folder
    for their error lines, the launcher's process id), and this process's environment and
    loggers as they were."""
    import logging

    import torch.distributed.run as torchrun

    from kdcore.torchrun import ERRORS_ENV, LAUNCHER_ENV, launch

    seen = {}

    def started(args):
        seen.update(args=args, threads=os.environ.get("OMP_NUM_THREADS"),
                    errors=os.environ.get(ERRORS_ENV), launcher=os.environ.get(LAUNCHER_ENV),
                    level=logging.getLogger("torch.distributed.elastic").level,
                    run_level=logging.getLogger("torch.distributed.run").level)
        assert Path(seen["errors"]).is_dir()

    monkeypatch.setattr(torchrun, "run", started)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(ERRORS_ENV, raising=False)
    launch(3, ["run", "r.toml", "-q"])
    args = seen["args"]
    assert (args.standalone, args.nproc_per_node, args.max_restarts, args.module,
            args.training_script, args.training_script_args) == (
        True, "3", 0, True, "kdcore", ["run", "r.toml", "-q"])
    assert args.log_dir == seen["errors"] and Path(seen["errors"]).name.startswith(
        "kdcore-workers-")
    assert seen["threads"] == "1" and seen["level"] == seen["run_level"] == logging.CRITICAL
    assert seen["launcher"] == str(os.getpid())
    assert not {"OMP_NUM_THREADS", ERRORS_ENV, LAUNCHER_ENV} & set(os.environ)
    assert not Path(seen["errors"]).exists()  # removed with the workers' lines
    assert logging.getLogger("torch.distributed.elastic").level != logging.CRITICAL
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    launch(1, ["run", "r.toml"])
    assert seen["threads"] == "4" and os.environ["OMP_NUM_THREADS"] == "4"
    with pytest.raises(KdcoreError, match="^--nproc must be at least 1, got 0$"):
        launch(0, ["run", "r.toml"])


@pytest.mark.parametrize("sig, exit_code, said", [
    (2, 130, "interrupted; resume with --resume"),
    (15, 143, "stopped by SIGTERM; resume with --resume"),  # as one process says it
])
def test_a_signal_to_the_launcher_is_one_line(monkeypatch, tmp_path, capfd, sig, exit_code,
                                             said):
    import logging

    import torch.distributed.elastic.agent.server.api  # noqa: F401  (the agent's logger)
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException

    def stopped(args):
        # what torch's agent logs, through a logger with a level of its own, before it raises
        logging.getLogger("torch.distributed.elastic.agent.server.api").warning(
            "Received %s death signal, shutting down workers", sig)
        raise SignalException(f"got signal: {sig}", sigval=sig)

    monkeypatch.setattr(torchrun, "run", stopped)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    result = _cli([str(RECIPES / "kd.toml"), "--nproc", "2", "--out", str(tmp_path / "r")])
    assert result.exit_code == exit_code and said in result.output
    assert "Traceback" not in result.output
    assert "death signal" not in result.output + capfd.readouterr().err
    assert logging.getLogger("torch.distributed.elastic.agent.server.api").level != (
        logging.CRITICAL)  # as it was
    # the launcher's thread setting was for its workers: this process's environment is as it was
    assert "OMP_NUM_THREADS" not in os.environ


def test_a_failed_worker_is_one_line(monkeypatch, tmp_path):
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    def failed(args):
        raise ChildFailedError("kdcore", {1: ProcessFailure(1, 123, 2, "<N/A>")})

    monkeypatch.setattr(torchrun, "run", failed)
    result = _cli([str(RECIPES / "kd.toml"), "--nproc", "2", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert result.output == ("kdcore: error: worker 1 of 2: worker process ended with exit "
                             "code 2 without a message\n")


def test_more_processes_than_gpus_are_refused(monkeypatch):
    import torch

    from kdcore.torchrun import check_gpus

    check_gpus("cpu", 64)  # CPU processes: any number
    if not torch.cuda.is_available():
        check_gpus("auto", 64)  # "auto" is the CPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_gpus("cuda", 2)
    with pytest.raises(KdcoreError, match="machine has 2; use --nproc 2"):
        check_gpus("cuda", 3)


def test_a_worker_without_its_gpu_is_one_line(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(distributed, "_world", distributed.World(rank=3, size=4, local_rank=1))
    with pytest.raises(KdcoreError, match="needs GPU 1, but it has 1"):
        distributed.local_gpu()


def test_a_step_averages_gradients_first_only_across_ranks_and_then_not_again(monkeypatch):
    import torch

    param = torch.nn.Parameter(torch.ones(2))
    param.grad = torch.full((2,), 4.0)
    opt = torch.optim.SGD([param], lr=1.0)
    averaged: list[str] = []

    def average(params):  # what the all-reduce would do on 2 ranks, one holding zeros
        for p in params:
            p.grad.mul_(0.5)
        averaged.append("grads")

    class Scaler:  # a gradient scaler that found no overflow
        def step(self, optimizer):
            averaged.append("scaler")
            optimizer.step()

    monkeypatch.setattr(distributed, "average_gradients", average)
    distributed.step(opt)  # one process: the step alone
    assert averaged == [] and param.tolist() == [-3.0, -3.0]
    monkeypatch.setattr(distributed, "_world", distributed.World(rank=0, size=2, local_rank=0))
    param.grad = torch.full((2,), 4.0)
    distributed.step(opt, Scaler())
    assert averaged == ["grads", "scaler"] and param.tolist() == [-5.0, -5.0]
    assert opt not in distributed._synced  # a later step outside this one averages again


NAN_SELECT = textwrap.dedent('''
    """A selector whose mask is NaN: every worker's run fails (RunFailed, exit code 1)."""
    import math
    import torch
    import kdcore

    class NanSelect(kdcore.Component):
        def select(self, ctx, batch):
            return torch.full((len(batch),), math.nan)

    class Plugin:
        @kdcore.hookimpl
        def kdcore_add_components(self):
            return {"nan_select": NanSelect}

    PLUGIN = Plugin()
''')


@pytest.mark.slow
def test_failed_workers_say_their_error_once_with_their_exit_code(tmp_path, monkeypatch):
    """Each of N workers printed the same line, the launcher one more, and the launcher's
    exit code was 2 where the workers' was 1. Nothing is left in the temporary directory
    (the elastic agent left a torchelastic_* folder there)."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "nan_select.py").write_text(NAN_SELECT)
    recipe = tmp_path / "nan.toml"
    recipe.write_text(f'extends = "{(RECIPES / "base-digits.toml").as_posix()}"\n'
                      '[[stages]]\nname = "student"\nepochs = 1\ntrain = ["student"]\n'
                      '[[stages.components]]\nuse = "nan_select"\n'
                      '[[stages.components]]\nuse = "ce"\n')
    proc = _launch([str(recipe), *_sets(SMALL), "--out",
                    str(tmp_path / "r"), "--nproc", "2", "-q", "--plugin", "nan_select:PLUGIN"],
                   tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["kdcore: error: component 'nan_select' (nan_select) select returned NaN; "
                     "a select must lie in [0, 1]"]
    left = [p.name for p in (tmp_path / "tmp").iterdir()]
    assert [n for n in left if n != "torchinductor_root"] == [], left  # (torch's cache)


def test_the_launcher_says_each_workers_line_once_first_one_first(tmp_path):
    from kdcore.torchrun import workers_failed

    def leave(rank: int, message: str, code: int, when_ns: int,
              consequence: bool | None = None) -> None:
        path = tmp_path / str(rank)
        extra = "" if consequence is None else f', "consequence": {str(consequence).lower()}'
        path.write_text(f'{{"message": "{message}", "exit_code": {code}{extra}}}')
        os.utime(path, ns=(when_ns, when_ns))

    leave(0, "broken pipe", 1, 2_000)
    leave(1, "bad input", 2, 1_000)
    leave(2, "broken pipe", 1, 3_000, consequence=False)
    failed = workers_failed({0: 1, 1: 2, 2: 1, 3: -9}, 4, tmp_path)
    assert str(failed) == ("worker 1 of 4: bad input; worker 0, 2 of 4: broken pipe; worker 3 "
                           "of 4: worker process was stopped by SIGKILL without a message "
                           "(sent by the out-of-memory killer, or by the launcher to a worker "
                           "that hung)")
    assert failed.exit_code == 1  # the workers disagree: a failure
    same = workers_failed({1: 2, 2: 1}, 4, tmp_path)  # only the workers that failed count
    assert (str(same), same.exit_code) == (
        "worker 1 of 4: bad input; worker 2 of 4: broken pipe", 1)
    assert (str(workers_failed({0: 1, 2: 1}, 3, tmp_path)),
            workers_failed({0: 1, 2: 1}, 3, tmp_path).exit_code) == ("broken pipe", 1)
    assert workers_failed({1: 2}, 2, tmp_path).exit_code == 2
    leave(4, "stopped", 130, 4_000)
    assert workers_failed({1: 2, 4: 130}, 5, tmp_path).exit_code == 1  # two codes: a failure
    (tmp_path / "5").write_text("{not json")
    assert str(workers_failed({5: 7}, 6, tmp_path)) == (
        "worker 5 of 6: worker process ended with exit code 7 without a message")
    (tmp_path / "6").write_text('["a list"]')
    assert str(workers_failed({6: -15}, 7, tmp_path)) == (
        "worker 6 of 7: worker process was stopped by SIGTERM without a message")


def test_the_launcher_says_a_worker_that_died_silently_before_the_lines_it_caused(tmp_path):
    """A worker killed by SIGKILL (the out-of-memory killer) leaves no line, and the others'
    collectives then fail on the broken connection, or the launcher stops them: their lines,
    left first, are consequences, said after the cause; among the lines of a kind, the first
    one left comes first."""
    from kdcore.torchrun import workers_failed

    def leave(rank: int, message: str, when_ns: int, consequence: bool) -> None:
        path = tmp_path / str(rank)
        path.write_text(json.dumps({"message": message, "exit_code": 1,
                                    "consequence": consequence}))
        os.utime(path, ns=(when_ns, when_ns))

    leave(0, "all_gather raised: connection reset", 1_000, True)
    leave(2, "stopped by SIGTERM", 500, True)
    failed = workers_failed({0: 1, 1: -9, 2: 143}, 3, tmp_path)
    assert str(failed) == (
        "worker 1 of 3: worker process was stopped by SIGKILL without a message (sent by the "
        "out-of-memory killer, or by the launcher to a worker that hung); worker 2 of 3: "
        "stopped by SIGTERM; worker 0 of 3: all_gather raised: connection reset")
    leave(3, "bad input", 9_000, False)  # a worker's own failure, though left last: first
    assert str(workers_failed({0: 1, 1: -9, 3: 2}, 4, tmp_path)).startswith(
        "worker 3 of 4: bad input; worker 1 of 4: worker process was stopped by SIGKILL")
    assert str(workers_failed({0: 1}, 3, tmp_path)) == "all_gather raised: connection reset"
    leave(4, "x", 0, "yes")  # anything but true is the worker's own failure
    assert str(workers_failed({0: 1, 4: 1}, 5, tmp_path)).startswith("worker 4 of 5: x; ")
    # both silent: the launcher's SIGTERM of the survivor after the SIGKILL it followed (by
    # rank, worker 0 led; tests/test_distributed.py's kill test failed on it now and then)
    silent = workers_failed({5: -15, 6: -9, 7: -11}, 8, tmp_path)
    assert str(silent) == (
        "worker 6 of 8: worker process was stopped by SIGKILL without a message (sent by the "
        "out-of-memory killer, or by the launcher to a worker that hung); worker 7 of 8: "
        "worker process was stopped by SIGSEGV without a message; worker 5 of 8: worker "
        "process was stopped by SIGTERM without a message")
    assert silent.exit_code == 1
    leave(8, "all_gather raised: connection reset", 50, True)  # a consequence with a line
    assert str(workers_failed({8: 1, 5: -15, 6: -9}, 9, tmp_path)) == (
        "worker 6 of 9: worker process was stopped by SIGKILL without a message (sent by the "
        "out-of-memory killer, or by the launcher to a worker that hung); worker 5 of 9: "
        "worker process was stopped by SIGTERM without a message; worker 8 of 9: all_gather "
        "raised: connection reset")


def test_a_worker_leaves_its_line_only_under_the_launcher(monkeypatch, tmp_path):
    from kdcore.torchrun import ERRORS_ENV, report_worker_error

    monkeypatch.delenv(ERRORS_ENV, raising=False)
    monkeypatch.setenv("RANK", "3")
    assert not report_worker_error("x", 2)  # one process, or a user's own torchrun
    monkeypatch.setenv(ERRORS_ENV, str(tmp_path))
    assert report_worker_error("bad: \"quoted\"", 2)
    assert (tmp_path / "3").read_text() == (
        '{"message": "bad: \\"quoted\\"", "exit_code": 2, "consequence": false}')
    monkeypatch.setenv(ERRORS_ENV, str(tmp_path / "gone"))
    assert not report_worker_error("x", 2)  # nowhere to leave it: the worker says it
