"""``kdcore run --nproc N``: start a run's worker processes on this machine through PyTorch's
elastic launcher, exactly as ``torchrun --standalone --nproc-per-node N -m kdcore run ...``
would (several machines: run torchrun itself; docs/distributed.md)."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from kdcore.errors import KdcoreError, Stopped

# OMP threads per worker when the user set none: torchrun's own default, without its banner
DEFAULT_THREADS = "1"
# the folder where the workers of launch() leave their error line, one file per rank: the
# launcher says each distinct line once, rather than every worker the same one
ERRORS_ENV = "KDCORE_WORKER_ERRORS"
# the process id of the launcher (--nproc's, a grid's) its processes die with
LAUNCHER_ENV = "KDCORE_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1  # prctl(2)
#: seconds between the looks of :func:`watch_parent` at its parent, where the kernel cannot be
#: asked to kill a process with its launcher: how long a worker may outlive it
PARENT_WATCH_S = 0.5


class WorkersFailed(KdcoreError):
    """Workers of ``--nproc`` failed; the exit code is theirs (1: a failure, 2: the input)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def launch(nproc: int, kdcore_args: Sequence[str]) -> None:
    """Run ``python -m kdcore <kdcore_args>`` in ``nproc`` processes and wait for them.

    Raises:
        KdcoreError: a worker failed (its own message is above, on stderr).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise KdcoreError(f"--nproc must be at least 1, got {nproc}")
    threads = os.environ.get("OMP_NUM_THREADS")
    # the workers inherit both; this process gets its own values back (it may go on computing)
    os.environ["OMP_NUM_THREADS"] = threads or DEFAULT_THREADS
    errors = tempfile.TemporaryDirectory(prefix="kdcore-workers-")
    os.environ[ERRORS_ENV] = errors.name
    os.environ[LAUNCHER_ENV] = str(os.getpid())
    # the elastic agent's own log folder goes with ours (else a torchelastic_* folder is left
    # in the temporary directory by every run)
    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0",
         f"--log-dir={errors.name}", "--module", "kdcore", *kdcore_args])
    # the elastic agent logs each worker's exit at ERROR with a multi-line report; the
    # worker has already said why in one line
    quiet = [logging.getLogger(name) for name in _elastic_loggers()]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as exc:
        raise workers_failed({r: f.exitcode for r, f in exc.failures.items()}, nproc,
                             Path(errors.name)) from None
    except SignalException as exc:  # the launcher stopped its workers and then itself
        if exc.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise Stopped(exc.sigval) from None  # as one process stops: one line, 128 + signal
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        os.environ.pop(ERRORS_ENV, None)
        os.environ.pop(LAUNCHER_ENV, None)
        errors.cleanup()


def die_with_launcher() -> bool:
    """In a process that a kdcore launcher started (a worker of :func:`launch`, a run of
    ``kdcore ablate --jobs N``): die by SIGKILL when that launcher dies, and return True;
    elsewhere return False. On Linux the kernel is asked for the signal; where it cannot be
    (another system, a sandbox whose seccomp filter refuses ``prctl``), a daemon thread looks
    every :data:`PARENT_WATCH_S` seconds whether the launcher is still this process's parent
    (:func:`watch_parent`). The launcher's id is taken out of the environment, so that a
    process this one starts does not inherit it.

    Both launchers start their processes in sessions of their own (torch's elastic agent does,
    and the grid, so that a terminal's Ctrl-C reaches only the launcher), so a SIGKILL of the
    launcher alone, or of its process group (``timeout``'s), left them training on unseen,
    and ``--resume`` or the next ``kdcore ablate`` was refused while they held the run
    directory. Killed with it, they stop as a machine that dies does, and the run continues
    from its last checkpoint.

    Raises:
        KdcoreError: the launcher died before the request (this process was handed on to
            another parent), so no signal will come.
    """
    launcher = os.environ.pop(LAUNCHER_ENV, "")
    if not launcher.isdigit():
        return False
    asked = _kernel_kills_with_parent()
    if os.getppid() != int(launcher):  # it died before the request: no signal will come
        raise KdcoreError(f"the process that started this one (process {launcher}, a kdcore "
                          "launcher) is gone; stopping before the run starts")
    if not asked:  # started after the look above, so that this line is said before any kill
        threading.Thread(target=watch_parent, args=(int(launcher),), daemon=True,
                         name="kdcore-launcher-watch").start()
    return True


def _kernel_kills_with_parent() -> bool:
    """Whether the kernel took the request to SIGKILL this process when its parent dies
    (Linux's ``prctl(PR_SET_PDEATHSIG)``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) == 0  # 0: taken
    except (OSError, AttributeError):  # no C library to ask, or one without prctl
        return False


def watch_parent(launcher: int, interval: float = PARENT_WATCH_S) -> None:
    """Wait while process ``launcher`` is this process's parent, looking every ``interval``
    seconds, then SIGKILL this process, as the kernel would have: an orphan is handed on to
    another parent, so a changed parent id is its launcher's death."""
    while os.getppid() == launcher:
        time.sleep(interval)
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))  # Windows has no SIGKILL


def _elastic_loggers() -> list[str]:
    """The loggers of torch's launcher and elastic agent, each of which torch gives a level of
    its own (so quieting their parent left the agent's "Received 15 death signal, shutting
    down workers" on a SIGTERM's one line)."""
    names = {"torch.distributed.elastic", "torch.distributed.run"}
    return sorted(names | {name for name in logging.root.manager.loggerDict
                           if name.startswith("torch.distributed.elastic.")})


def report_worker_error(message: str, exit_code: int, *, consequence: bool = False) -> bool:
    """In a worker of :func:`launch`, leave the error line for the launcher and return True
    (the launcher says it); elsewhere (one process, a user's own torchrun) return False.

    ``consequence``: the worker stopped because another one did (its collective failed, or
    the launcher stopped it after another had failed), so the launcher says it after the
    others."""
    folder = os.environ.get(ERRORS_ENV)
    if not folder or "RANK" not in os.environ:
        return False
    try:
        (Path(folder) / os.environ["RANK"]).write_text(
            json.dumps({"message": message, "exit_code": exit_code,
                        "consequence": consequence}), encoding="utf-8")
    except OSError:
        return False
    return True


def workers_failed(exit_codes: Mapping[int, int], nproc: int, folder: Path) -> WorkersFailed:
    """The launcher's one error for its failed workers (rank -> exit code): each distinct line
    they left once, prefixed by the ranks that said it unless every failed worker said the
    same; a worker that left none (killed by a signal, crashed) by its exit code.

    The likely cause comes first: the lines of workers that failed on their own, the first
    one first; then the workers that died without a line (a SIGKILL from the out-of-memory
    killer breaks the others' connections); last the lines that are consequences (a
    collective that failed, a worker the launcher stopped, with a line or, by SIGTERM, without
    one), the first one first."""
    said: dict[str, list[int]] = {}
    # (order, when, rank, line, exit code, silent: the line is the launcher's, not the worker's)
    left: list[tuple[int, int, int, str, int, bool]] = []
    for rank in sorted(exit_codes):
        path = folder / str(rank)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            left.append((2 if record.get("consequence") is True else 0,
                         path.stat().st_mtime_ns, rank, str(record["message"]),
                         int(record["exit_code"]), False))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            code = exit_codes[rank]
            how = (f"was stopped by {_signal_name(-code)}" if code < 0
                   else f"ended with exit code {code}")
            why = (" (sent by the out-of-memory killer, or by the launcher to a worker that "
                   "hung)" if code == -signal.SIGKILL else "")
            # a SIGTERM without a line is most likely the launcher stopping the others once
            # one had failed: a consequence, said after a worker SIGKILLed at the same time
            order = 2 if code == -signal.SIGTERM else 1
            left.append((order, 0, rank, f"worker process {how} without a message{why}", 1,
                         True))
    left.sort()
    for *_, rank, line, _, _ in left:
        said.setdefault(line, []).append(rank)
    codes = {code for *_, code, _ in left}
    if len(said) == 1 and not left[-1][5]:
        message = left[-1][3]
    else:
        message = "; ".join(f"worker {', '.join(map(str, ranks))} of {nproc}: {line}"
                            for line, ranks in said.items())
    return WorkersFailed(message, codes.pop() if len(codes) == 1 else 1)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def check_gpus(device: str, nproc: int) -> None:
    """Refuse more processes than GPUs when the run is on CUDA (one GPU per process).

    Raises:
        KdcoreError: ``nproc`` exceeds this machine's GPUs.
    """
    import torch

    from kdcore.device import resolve_device

    if resolve_device(device).type != "cuda":
        return
    count = torch.cuda.device_count()
    if nproc > count:
        raise KdcoreError(f"--nproc {nproc}: a CUDA run takes one GPU per process and this "
                          f"machine has {count}; use --nproc {count}, or set "
                          f"run.device = \"cpu\" for CPU processes")


def worker_args(recipe: Path, overrides: Sequence[str], out: str | None, resume: bool,
                overwrite: bool, quiet: bool, progress: bool | None, plugins: Sequence[str],
                strict_plugins: bool) -> list[str]:
    """The ``kdcore`` arguments of each worker of ``run --nproc``: the same run."""
    args = ["run", str(recipe)]
    if progress is not None:
        args.append("--progress" if progress else "--no-progress")
    for value in overrides:
        args += ["--set", value]
    for plugin in plugins:
        args += ["--plugin", plugin]
    if out is not None:
        args += ["--out", out]
    args += ["--resume"] * resume + ["--overwrite"] * overwrite + ["--quiet"] * quiet
    return args + ["--strict-plugins"] * strict_plugins


__all__ = ["WorkersFailed", "check_gpus", "die_with_launcher", "launch", "report_worker_error",
           "watch_parent", "worker_args", "workers_failed"]
