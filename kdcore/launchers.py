"""Grids on a cluster: every unfinished run of a grid becomes a submitit job (``kdcore ablate
--launcher slurm``), the way Hydra's own submitit launcher sends sweeps to SLURM.

The scheduler is submitit's, not ours: :func:`launch_grid` takes the planned runs and an executor
factory (``folder -> submitit.Executor``; :func:`slurm_executor` makes the SLURM one, tests inject
``submitit.LocalExecutor``), submits the runs as one job array and collects them as
:func:`kdcore.grid.run_grid` does: finished runs skipped, the same counts. Each job is a
:class:`RunJob`, which resumes a run whose directory holds a checkpoint and is checkpointable: a
job that reaches its time limit or is preempted is requeued by submitit and resumes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from kdcore import grid as ab
from kdcore.errors import KdcoreError, one_line

ExecutorFactory = Callable[[Path], Any]
"""Makes a submitit executor (parameters set) whose job files go to the given folder."""


def require_submitit() -> ModuleType:
    """The submitit module, or a one-line error saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise KdcoreError("--launcher slurm needs submitit: pip install 'kdcore[cluster]'"
                          ) from None
    return submitit


class RunJob:
    """The job function: runs one :class:`~kdcore.grid.RunSpec` in the job's process.

    A module-level class, so it pickles by reference. The run resumes when its directory holds
    a checkpoint (decided when the job starts, so a requeued job resumes too) and is skipped when
    it already finished. Returns the seconds the run took.
    """

    def __call__(self, spec: ab.RunSpec) -> float:
        if ab.status(spec) == "done":
            return 0.0
        t0 = time.perf_counter()
        ab.run_spec(spec)
        return time.perf_counter() - t0

    def checkpoint(self, spec: ab.RunSpec) -> Any:
        """Called by submitit on timeout or preemption: requeue the same run (it resumes)."""
        return require_submitit().helpers.DelayedSubmission(self, spec)


def slurm_executor(*, partition: str | None = None, time_min: int = 60, gpus: int = 0,
                   cpus: int = 2, mem_gb: float = 8, name: str = "kdcore") -> ExecutorFactory:
    """An executor factory for SLURM; refuses (one line) without submitit or ``sbatch``."""
    if not 0 < mem_gb < float("inf"):  # click's range lets NaN through
        raise KdcoreError(f"--slurm-mem-gb takes a positive number of GB, got {mem_gb}")
    submitit = require_submitit()
    if shutil.which("sbatch") is None:
        raise KdcoreError("--launcher slurm: no 'sbatch' on PATH (run it where SLURM jobs "
                          "are submitted)")

    def make(folder: Path) -> Any:
        try:
            executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        except RuntimeError as exc:  # sbatch found, the rest of SLURM (srun) not
            raise KdcoreError(f"--launcher slurm: {one_line(exc)}") from None
        params: dict[str, Any] = {"name": name, "timeout_min": time_min, "cpus_per_task": cpus,
                                  "gpus_per_node": gpus, "mem_gb": mem_gb, "nodes": 1,
                                  "tasks_per_node": 1}
        if partition:
            params["slurm_partition"] = partition
        executor.update_parameters(**params)
        return executor

    return make


def launch_grid(specs: Sequence[ab.RunSpec], make_executor: ExecutorFactory, *,
                folder: str | Path, echo: Callable[[str], None] = print,
                poll_s: float = 5.0) -> dict[str, int]:
    """Submit every unfinished run of ``specs`` as a job and wait for all of them.

    Args:
        make_executor: makes the executor; its job files go to ``folder/<job id>``.
        folder: submitit's folder (job pickles, stdout and stderr of every job).
        poll_s: seconds between looks at the jobs' states.

    Returns:
        counts of ``ran``, ``skipped`` and ``failed``, as :func:`kdcore.grid.run_grid`.
    """
    todo, counts = ab.pending(specs, echo)
    if not todo:
        return counts
    executor = make_executor(Path(folder) / "%j")
    job_fn = RunJob()
    jobs = []
    with executor.batch():
        for spec in todo:
            jobs.append(executor.submit(job_fn, spec))
    ids = [str(j.job_id) for j in jobs]
    echo(f"submitted {len(jobs)} runs as jobs {ids[0]}"
         + (f"..{ids[-1]}" if len(ids) > 1 else "") + f"; logs in {folder}")
    total = len(todo)
    waiting = dict(enumerate(zip(todo, jobs)))
    try:
        while waiting:
            finished = [i for i, (_, job) in waiting.items() if job.done()]
            for i in finished:
                spec, job = waiting.pop(i)
                label = f"[{i + 1}/{total}] {spec.variant.name} seed {spec.seed}"
                ok = _collect(job, label, echo)
                counts["ran" if ok else "failed"] += 1
            if waiting and not finished:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        left = " ".join(str(job.job_id) for _, job in waiting.values())
        echo(f"interrupted: {len(waiting)} jobs still queued or running (scancel {left})")
        raise
    return counts


def _collect(job: Any, label: str, echo: Callable[[str], None]) -> bool:
    """Echo one finished job's outcome; True when the run succeeded."""
    try:
        seconds = job.result()
    except Exception as exc:  # noqa: BLE001 - whatever ended the job, the grid goes on
        echo(f"{label}: FAILED (job {job.job_id}): {_last_error(exc)}")
        return False
    echo(f"{label}: done in {seconds:.0f}s (job {job.job_id})")
    return True


def _last_error(exc: BaseException) -> str:
    """The exception line of a job's traceback (submitit wraps it between dashed lines)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"-"}]
    if len(rules) >= 2:
        body = [line for line in lines[rules[0] + 1:rules[1]] if line]
        if body:
            return body[-1]
    return next((line for line in lines if line), type(exc).__name__)
