"""kdcore ablate --launcher slurm: runs as submitit jobs (a LocalExecutor stands in for SLURM)."""

from __future__ import annotations

import builtins
import contextlib
import functools
import json

import pytest
from click.testing import CliRunner

from kdcore import grid as ab
from kdcore import launchers
from kdcore.cli import main
from kdcore.testing import stage, teacher_stage, tiny_recipe, write_recipe

submitit = pytest.importorskip("submitit")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _recipes(tmp_path):
    data = tiny_recipe(teacher_stage(1), stage("student", 1, ["student"], {"use": "ce"}),
                       train_subset=120)
    return [write_recipe({**data, "run": {**data["run"], "name": n}}, tmp_path / f"{n}.toml")
            for n in ("a", "b")]


def _local(folder):
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=10)
    return executor


@pytest.mark.slow
def test_grid_runs_as_local_submitit_jobs_then_skips(tmp_path, monkeypatch):
    a, b = _recipes(tmp_path)
    out = tmp_path / "grid"
    made = []

    def factory(**params):
        made.append(params)
        return _local

    monkeypatch.setattr(launchers, "slurm_executor", factory)
    monkeypatch.setattr(launchers, "launch_grid", functools.partial(launchers.launch_grid,
                                                                     poll_s=0.2))
    args = ["ablate", a, b, "--launcher", "slurm", "--slurm-time", "10", "--slurm-cpus", "1",
            "--out", out]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert made == [{"partition": None, "time_min": 10, "gpus": 0, "cpus": 1, "mem_gb": 8}]
    assert "submitted 2 runs as jobs" in res.output
    assert "grid " + str(out) + ": 2 ran, 0 skipped, 0 failed" in res.output
    for name in ("a", "b"):
        run = out / name / "seed0"
        assert "student" in json.loads((run / "summary.json").read_text())
        assert (run / "history.h5").is_file()
    assert list((out / ".submitit").iterdir())  # submitit's job folders and logs

    # a second call submits nothing: both runs are finished
    specs = ab.plan([ab.Variant("a", str(a)), ab.Variant("b", str(b))], [0], out)
    lines = []
    counts = launchers.launch_grid(specs, pytest.fail, folder=tmp_path / "sub", echo=lines.append)
    assert counts == {"ran": 0, "skipped": 2, "failed": 0}
    assert lines == ["2 of 2 runs already finished: skipped"]


@pytest.mark.slow
def test_a_failing_job_is_counted_and_the_rest_run(tmp_path):
    (a, _) = _recipes(tmp_path)
    (tmp_path / "no.toml").write_text("[run\n")  # found when its job reads it
    specs = ab.plan([ab.Variant("ok", str(a)), ab.Variant("gone", str(tmp_path / "no.toml"))],
                    [0], tmp_path / "grid")
    lines = []
    counts = launchers.launch_grid(specs, _local, folder=tmp_path / "sub", echo=lines.append,
                                   poll_s=0.2)
    assert counts == {"ran": 1, "skipped": 0, "failed": 1}
    failed = [line for line in lines if "FAILED" in line]
    assert len(failed) == 1 and failed[0].startswith("[2/2] gone seed 0: FAILED (job ")
    assert "no.toml" in failed[0] and "Traceback" not in failed[0]


class _FakeJob:
    def __init__(self, fn, spec, n):
        self.fn, self.spec, self.job_id = fn, spec, f"7_{n}"

    def done(self):
        return True

    def result(self):
        if self.spec.variant.name == "bad":
            raise submitit.core.utils.FailedJobError(
                "Job (task=0) failed during processing with trace:\n----------------------\n"
                "Traceback (most recent call last):\n  File ...\n"
                "kdcore.errors.TrainingDiverged: loss is nan\n----------------------\n"
                "You can check full logs with 'job.stderr(0)'")
        return 3.0


class _FakeExecutor:
    """Records submissions; every job is finished at once (no process, no torch)."""

    def __init__(self, folder):
        self.folder, self.jobs, self.batched = folder, [], False

    @contextlib.contextmanager
    def batch(self):
        self.batched = True
        yield

    def submit(self, fn, spec):
        assert self.batched and isinstance(fn, launchers.RunJob)
        self.jobs.append(_FakeJob(fn, spec, len(self.jobs)))
        return self.jobs[-1]


def test_failed_job_counts_and_exit_code(tmp_path, monkeypatch):
    a, _ = _recipes(tmp_path)
    made = []

    def factory(folder):
        made.append(_FakeExecutor(folder))
        return made[-1]

    monkeypatch.setattr(launchers, "slurm_executor", lambda **_: factory)
    out = tmp_path / "grid"
    res = invoke("ablate", a, "--variant", "good:", "--variant", "bad:", "--seeds", "0,1",
                 "--launcher", "slurm", "--out", out)
    assert res.exit_code == 1
    assert made[0].folder == out / ".submitit" / "%j"
    assert [(j.spec.variant.name, j.spec.seed) for j in made[0].jobs] == [
        ("good", 0), ("good", 1), ("bad", 0), ("bad", 1)]
    assert "[3/4] bad seed 0: FAILED (job 7_2): kdcore.errors.TrainingDiverged: loss is nan" \
        in res.output
    assert "[1/4] good seed 0: done in 3s (job 7_0)" in res.output
    assert res.output.rstrip().endswith(f"grid {out}: 2 ran, 0 skipped, 2 failed")


def test_run_job_skips_finished_and_requeues_itself(tmp_path, monkeypatch):
    spec = ab.RunSpec(ab.Variant("v", "r.toml"), 0, tmp_path)
    calls = []
    monkeypatch.setattr(ab, "run_spec", lambda s: calls.append(s))
    job = launchers.RunJob()
    job(spec)
    assert calls == [spec]
    (tmp_path / "summary.json").write_text("{}")
    assert job(spec) == 0.0 and calls == [spec]
    again = job.checkpoint(spec)
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert again.function is job and again.args == (spec,)


def test_slurm_refused_without_submitit_or_sbatch(tmp_path, monkeypatch):
    a, _ = _recipes(tmp_path)
    real_import = builtins.__import__

    def no_submitit(name, *args, **kwargs):
        if name == "submitit" or name.startswith("submitit."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "__import__", no_submitit)
        res = invoke("ablate", a, "--launcher", "slurm", "--out", tmp_path / "g")
    assert res.exit_code == 2
    assert res.output == "kdcore: error: --launcher slurm needs submitit: pip install " \
        "'kdcore[cluster]'\n"
    monkeypatch.setattr(launchers.shutil, "which", lambda _: None)
    res = invoke("ablate", a, "--launcher", "slurm", "--out", tmp_path / "g")
    assert res.exit_code == 2 and "sbatch" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists()


# -- the SLURM executor's parameters, the polling loop and the job's error line -----------------


class _FakeAutoExecutor:
    made: list[_FakeAutoExecutor] = []
    fail: str | None = None

    def __init__(self, folder, cluster):
        if self.fail:
            raise RuntimeError(self.fail)
        self.folder, self.cluster, self.params = folder, cluster, None
        _FakeAutoExecutor.made.append(self)

    def update_parameters(self, **params):
        self.params = params


@pytest.fixture
def fake_slurm(monkeypatch):
    """submitit's AutoExecutor recorded, sbatch 'on PATH'."""
    import types

    module = types.SimpleNamespace(AutoExecutor=_FakeAutoExecutor)
    monkeypatch.setitem(__import__("sys").modules, "submitit", module)
    monkeypatch.setattr(launchers.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(_FakeAutoExecutor, "made", [])
    monkeypatch.setattr(_FakeAutoExecutor, "fail", None)
    return _FakeAutoExecutor


def test_slurm_executor_defaults_and_every_parameter(tmp_path, fake_slurm):
    launchers.slurm_executor()(tmp_path / "a")
    launchers.slurm_executor(partition="gpu", time_min=5, gpus=2, cpus=8, mem_gb=0.5,
                             name="mine")(tmp_path / "b")
    first, second = fake_slurm.made
    assert (first.folder, first.cluster) == (tmp_path / "a", "slurm")
    assert first.params == {"name": "kdcore", "timeout_min": 60, "cpus_per_task": 2,
                            "gpus_per_node": 0, "mem_gb": 8, "nodes": 1, "tasks_per_node": 1}
    assert second.params == {"name": "mine", "timeout_min": 5, "cpus_per_task": 8,
                             "gpus_per_node": 2, "mem_gb": 0.5, "nodes": 1, "tasks_per_node": 1,
                             "slurm_partition": "gpu"}


@pytest.mark.parametrize("mem", [0.0, -1.0, float("inf"), float("nan")])
def test_slurm_memory_must_be_positive_and_finite(fake_slurm, mem):
    with pytest.raises(launchers.KdcoreError, match=r"^--slurm-mem-gb takes a positive number "
                                                    rf"of GB, got {mem}$"):
        launchers.slurm_executor(mem_gb=mem)


def test_slurm_refusals_are_one_line_naming_what_is_missing(tmp_path, fake_slurm, monkeypatch):
    fake_slurm.fail = "Could not detect slurm\n(srun not found)"
    make = launchers.slurm_executor()
    with pytest.raises(launchers.KdcoreError, match=r"^--launcher slurm: Could not detect slurm"):
        make(tmp_path)
    monkeypatch.setattr(launchers.shutil, "which", lambda name: None)
    with pytest.raises(launchers.KdcoreError) as info:
        launchers.slurm_executor()
    assert str(info.value) == ("--launcher slurm: no 'sbatch' on PATH (run it where SLURM jobs "
                               "are submitted)")


def test_a_run_job_returns_the_seconds_its_run_took(tmp_path, monkeypatch):
    clock = iter([100.0, 103.5])
    monkeypatch.setattr(launchers.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(ab, "run_spec", lambda spec: None)
    assert launchers.RunJob()(ab.RunSpec(ab.Variant("v", "r.toml"), 0, tmp_path)) == 3.5


class _SlowJob:
    """Done from its ``after``-th look on; every look is logged."""

    def __init__(self, log, job_id, after):
        self.log, self.job_id, self.after, self.looks = log, job_id, after, 0

    def done(self):
        self.looks += 1
        self.log.append(f"look {self.job_id}")
        return self.looks >= self.after

    def result(self):
        return 1.0


class _SlowExecutor:
    def __init__(self, log, afters):
        self.log, self.afters, self.jobs = log, afters, []

    @contextlib.contextmanager
    def batch(self):
        yield

    def submit(self, fn, spec):
        self.jobs.append(_SlowJob(self.log, f"9_{len(self.jobs)}", self.afters[len(self.jobs)]))
        return self.jobs[-1]


def _specs(tmp_path, n):
    return [ab.RunSpec(ab.Variant(f"v{i}", "r.toml"), 0, tmp_path / "grid" / f"v{i}" / "seed0")
            for i in range(n)]


def test_launch_grid_sleeps_only_when_no_job_finished(tmp_path, monkeypatch):
    log: list[str] = []
    monkeypatch.setattr(launchers.time, "sleep", lambda s: log.append(f"sleep {s}"))
    specs = _specs(tmp_path, 2)
    lines: list[str] = []
    counts = launchers.launch_grid(specs, lambda folder: _SlowExecutor(log, [2, 3]),
                                   folder=tmp_path / "sub", echo=lines.append)
    assert counts == {"ran": 2, "skipped": 0, "failed": 0}
    assert log == ["look 9_0", "look 9_1", "sleep 5.0",  # neither finished: wait
                   "look 9_0", "look 9_1",  # one finished: look again at once
                   "look 9_1"]
    assert lines[0] == f"submitted 2 runs as jobs 9_0..9_1; logs in {tmp_path / 'sub'}"
    assert lines[1:] == ["[1/2] v0 seed 0: done in 1s (job 9_0)",
                         "[2/2] v1 seed 0: done in 1s (job 9_1)"]


def test_launch_grid_names_one_job_and_the_finished_runs_it_skips(tmp_path):
    specs = _specs(tmp_path, 2)
    specs[0].out.mkdir(parents=True)
    (specs[0].out / "summary.json").write_text("{}")
    lines: list[str] = []
    counts = launchers.launch_grid(specs, lambda folder: _SlowExecutor([], [1]),
                                   folder=tmp_path / "sub", echo=lines.append)
    assert counts == {"ran": 1, "skipped": 1, "failed": 0}
    assert lines[:2] == ["1 of 2 runs already finished: skipped",
                         f"submitted 1 runs as jobs 9_0; logs in {tmp_path / 'sub'}"]


def test_an_interrupted_launch_names_the_jobs_to_cancel(tmp_path, monkeypatch):
    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(launchers.time, "sleep", interrupt)
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        launchers.launch_grid(_specs(tmp_path, 3), lambda folder: _SlowExecutor([], [9, 9, 9]),
                              folder=tmp_path / "sub", echo=lines.append, poll_s=0.5)
    assert lines[0] == f"submitted 3 runs as jobs 9_0..9_2; logs in {tmp_path / 'sub'}"
    assert lines[-1] == "interrupted: 3 jobs still queued or running (scancel 9_0 9_1 9_2)"


@pytest.mark.parametrize("message, line", [
    ("Job failed:\n-----\nValueError: x\n-----\nsee logs", "ValueError: x"),
    ("Job failed:\n-----\nTraceback\n  File a\nKdcoreError: y\n-----\n", "KdcoreError: y"),
    ("head\n-----\n\n-----\n", "head"),  # nothing between the rules: the first line
    ("\n\n  just this  \nand more", "just this"),
    ("", "RuntimeError"),
])
def test_the_error_line_of_a_failed_job(message, line):
    assert launchers._last_error(RuntimeError(message)) == line
