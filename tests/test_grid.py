"""Ablation grids (kdcore/grid.py) piece by piece, without training: grid files, ``--variant``
text, run names, the run directories a grid plans, which of them are pending, how runs are
started (in this process or as ``kdcore run`` subprocesses) and how a failure is reported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kdcore import grid, interrupts
from kdcore.checkpoint import CHECKPOINT
from kdcore.errors import KdcoreError, RecipeError
from kdcore.grid import RunSpec, Variant
from kdcore.testing import teacher_stage, tiny_recipe, write_recipe
from tests.cli_helpers import invoke


def _grid_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return path


# -- grid files ---------------------------------------------------------------------------------


def test_a_grid_file_gives_variants_with_paths_relative_to_it_and_its_overrides_first(
        tmp_path):
    path = _grid_file(tmp_path, """
recipe = "base.toml"
seeds = [3, 1]
set = ["run.threads=1"]

[[variant]]
name = "plain"

[[variant]]
name = "other"
recipe = "sub/other.toml"
set = ["models.student.optimizer.lr=0.1"]
""")
    variants, seeds = grid.read_grid(path)
    assert seeds == [3, 1]
    assert variants == [
        Variant("plain", str(tmp_path / "base.toml"), ["run.threads=1"]),
        Variant("other", str(tmp_path / "sub/other.toml"),
                ["run.threads=1", "models.student.optimizer.lr=0.1"])]


def test_a_grid_without_variants_is_its_recipe_under_the_recipes_name(tmp_path):
    path = _grid_file(tmp_path, 'recipe = "recipes/amlkd.toml"\nset = ["run.seed=1"]\n')
    assert grid.read_grid(path) == ([Variant("amlkd", str(tmp_path / "recipes/amlkd.toml"),
                                             ["run.seed=1"])], [0])
    assert grid.read_grid(_grid_file(tmp_path, "seeds = [2]\n")) == ([], [2])


@pytest.mark.parametrize(("text", "key", "detail"), [
    ('recipe = "r.toml"\n[[variant]]\nset = []\n', "variant[0]", "a variant needs a 'name'"),
    ('[[variant]]\nname = "a"\n', "variant[0]",
     "no recipe: give the grid or the variant a 'recipe'"),
    ('recipe = "r.toml"\n[[variant]]\nname = "a"\n[[variant]]\nname = "b"\nzeta = 1\nalpha = 2\n',
     "variant[1]", "unknown key 'alpha'; expected name, recipe, set"),
    ('recipe = "r.toml"\n[[variant]]\nname = 1\n', "variant[0].name", "'name' must be a string"),
    ('[[variant]]\nname = "a"\nrecipe = 2\n', "variant[0].recipe",
     "'recipe' must be a string"),
    ('recipe = "r.toml"\n[[variant]]\nname = "a"\nset = "x=1"\n', "variant[0].set",
     "'set' must be a list of strings"),
    ('recipe = "r.toml"\n[[variant]]\nname = "a"\nset = ["x=1", 2]\n', "variant[0].set",
     "'set' must be a list of strings"),
    ("seeds = 1\n", "seeds", "got 1, expected a list of integers"),
])
def test_a_grid_file_that_cannot_be_run_names_its_file_and_key(tmp_path, text, key, detail):
    path = _grid_file(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        grid.read_grid(path)
    assert (info.value.file, info.value.key, info.value.detail) == (str(path), key, detail)


# -- --variant text and names -------------------------------------------------------------------


@pytest.mark.parametrize(("text", "name", "overrides"), [
    ("a", "a", []),
    ("a:", "a", []),
    ("a:x=1; ;y=2;", "a", ["x=1", "y=2"]),  # blank parts dropped
    ("b:run.name=\"p;q\";z=1", "b", ['run.name="p;q"', "z=1"]),
    ("c:n='p;q';z=1", "c", ["n='p;q'", "z=1"]),
    ('d:n="p\\";q";z=1', "d", ['n="p\\";q"', "z=1"]),  # an escaped quote does not end it
    ("e:n='p\\';q", "e", ["n='p\\'", "q"]),  # no escapes in a literal string
    ("f:n=\"it's;x\";z=1", "f", ["n=\"it's;x\"", "z=1"]),  # the other quote inside
    ('g:n="a\\\\";z=1', "g", ['n="a\\\\"', "z=1"]),  # an escaped backslash ends the escape
    ('h:n="";z=1', "h", ['n=""', "z=1"]),  # an empty string ends at its second quote
    ("X:n=X;Y=1", "X", ["n=X", "Y=1"]),
])
def test_a_variant_on_the_command_line(text, name, overrides):
    assert grid.parse_variant(text, "r.toml") == Variant(name, "r.toml", overrides)


def test_a_variant_without_a_name_is_refused():
    with pytest.raises(KdcoreError) as info:
        grid.parse_variant(":x=1", "r.toml")
    assert str(info.value) == "variant ':x=1' has no name (expected name:key=value;...)"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "a\x1fb", "a\x7fb",
                                  "x" * 201, "é" * 101])
def test_a_variant_name_must_be_one_directory(name):
    with pytest.raises(KdcoreError) as info:
        grid.check_name(name)
    assert str(info.value) == (f"variant name {name!r} is not a directory name (one path part, "
                               "not '.' or '..', no '/' or control character, at most 200 "
                               "bytes)")


@pytest.mark.parametrize("name", ["x" * 200, "é" * 100, "a b", "...", "a.b", "-x"])
def test_names_that_are_one_directory(name):
    grid.check_name(name)


# -- planning -----------------------------------------------------------------------------------


@pytest.fixture
def recipes(tmp_path):
    for name in ("r1.toml", "r2.toml"):
        (tmp_path / name).write_text("")
    return tmp_path


def test_a_grid_plans_every_variant_with_every_seed(recipes):
    a = Variant("a", str(recipes / "r1.toml"), ["x=1"])
    b = Variant("b", str(recipes / "r2.toml"))
    specs = grid.plan([a, b], [7, 2], recipes / "out")
    assert [(s.variant.name, s.seed, s.out) for s in specs] == [
        ("a", 7, recipes / "out/a/seed7"), ("a", 2, recipes / "out/a/seed2"),
        ("b", 7, recipes / "out/b/seed7"), ("b", 2, recipes / "out/b/seed2")]
    assert specs[0].overrides == ["x=1", "run.seed=7"]
    assert specs[3].overrides == ["run.seed=2"]


def test_what_a_grid_refuses_before_any_run(recipes):
    a = Variant("a", str(recipes / "r1.toml"))
    cases = [
        (([Variant("m", str(recipes / "missing.toml"))], [0]),
         f"variant 'm': no recipe file {recipes / 'missing.toml'}"),
        (([a], []), "no seeds to run: give at least one"),
        (([a], [1, 2, 1, 2]), "seed 1 is given twice (a grid runs each seed once)"),
        (([a, Variant("b", a.recipe), Variant("b", a.recipe), Variant("a", a.recipe)], [0]),
         f"two variants named 'a' (of {a.recipe}); each needs a name of its own, the folder its "
         "runs go in"),
        (([Variant("x/y", a.recipe)], [0]), None),
    ]
    for (variants, seeds), message in cases:
        with pytest.raises(KdcoreError) as info:
            grid.plan(variants, seeds, recipes / "out")
        if message is not None:
            assert str(info.value) == message


@pytest.mark.parametrize("held", [["history.h5"], ["summary.json", CHECKPOINT]])
def test_a_grid_does_not_go_into_a_runs_own_folder(recipes, held):
    out = recipes / "out"
    out.mkdir()
    for name in held:
        (out / name).write_text("")
    (out / "recipe.toml").write_text("")  # a grid may keep its recipe there
    with pytest.raises(KdcoreError) as info:
        grid.plan([Variant("a", str(recipes / "r1.toml"))], [0], out)
    assert str(info.value) == (f"{out} holds a run ({', '.join(held)}); a grid's runs go in a "
                               "folder of their own")
    (out / "recipe.toml").unlink()
    for name in held:
        (out / name).unlink()
    (out / "recipe.toml").write_text("")
    assert len(grid.plan([Variant("a", str(recipes / "r1.toml"))], [0], out)) == 1


def _specs(tmp_path, n=3):
    return [RunSpec(Variant("v", "r.toml"), s, tmp_path / f"seed{s}") for s in range(n)]


def test_status_and_pending(tmp_path):
    specs = _specs(tmp_path)
    specs[1].out.mkdir()
    (specs[1].out / CHECKPOINT).write_text("")
    specs[2].out.mkdir()
    (specs[2].out / "summary.json").write_text("{}")
    (specs[2].out / CHECKPOINT).write_text("")
    assert [grid.status(s) for s in specs] == ["new", "partial", "done"]
    said = []
    todo, counts = grid.pending(specs, said.append)
    assert todo == specs[:2] and counts == {"ran": 0, "skipped": 1, "failed": 0}
    assert said == ["1 of 3 runs already finished: skipped"]
    said.clear()
    assert grid.pending(specs[:2], said.append)[1]["skipped"] == 0 and said == []


@pytest.mark.parametrize("left", [["recipe.toml"], ["recipe.toml", "log.txt"],
                                  ["recipe.toml", "log.txt", "history.h5"], ["history.h5"]])
def test_a_run_killed_before_its_first_checkpoint_is_resumed(tmp_path, left):
    """What a run leaves when killed before its first checkpoint (its recipe.toml first, then
    log.txt, then history.h5) is what ``--resume`` starts again; as "new" the grid had started
    it without, which the run refused (its folder holds a run's files), so a grid SIGKILLed
    early failed on every rerun."""
    spec, = _specs(tmp_path, 1)
    spec.out.mkdir()
    for name in left:
        (spec.out / name).write_text("")
    assert grid.status(spec) == "partial"


def test_files_that_no_run_starts_with_are_a_new_run(tmp_path):
    spec, = _specs(tmp_path, 1)
    spec.out.mkdir()
    (spec.out / "log.txt").write_text("")  # written after recipe.toml: not a run's start
    (spec.out / "recipe.toml.tmp").write_text("")  # a kill while it was written
    assert grid.status(spec) == "new"


@pytest.mark.slow
@pytest.mark.parametrize("history", [True, False])
def test_a_grid_whose_run_was_killed_in_its_first_epoch_finishes_on_the_next_ablate(
        tmp_path, history):
    """The run stopped in its first batch (no checkpoint yet: the first comes after the first
    epoch), as a SIGKILL of ``kdcore ablate`` leaves it; with ``history`` false, before the
    history was made. ``kdcore ablate`` again ends the grid, the run as a direct run's."""
    from kdcore.testing import InterruptAt, Interrupted, assert_same_history, run_tiny

    data = tiny_recipe(teacher_stage(2))
    recipe = write_recipe(data, tmp_path / "r.toml")
    out = tmp_path / "grid" / "r" / "seed0"
    out.parent.mkdir(parents=True)
    with pytest.raises(Interrupted):
        run_tiny(data, out, plugins=[InterruptAt(0, 0)], overrides=["run.seed=0"])
    assert not (out / CHECKPOINT).exists() and (out / "recipe.toml").is_file()
    if not history:
        (out / "history.h5").unlink()
    result = invoke("ablate", recipe, "--seeds", "0", "--out", tmp_path / "grid")
    assert result.exit_code == 0 and "r seed 0: resuming" in result.output, result.output
    run_tiny(data, tmp_path / "direct", overrides=["run.seed=0"])
    assert_same_history(out, tmp_path / "direct")


# -- running ------------------------------------------------------------------------------------


def test_runs_in_this_process_one_after_another_resuming_the_interrupted(tmp_path,
                                                                        monkeypatch):
    specs = _specs(tmp_path, 4)
    specs[1].out.mkdir()
    (specs[1].out / CHECKPOINT).write_text("")
    specs[3].out.mkdir()
    (specs[3].out / "summary.json").write_text("{}")
    clock = iter([100.0, 103.4, 200.0, 200.2, 300.0])
    monkeypatch.setattr(grid.time, "perf_counter", lambda: next(clock))
    calls, said = [], []

    def in_process(spec, resume):
        calls.append((spec.seed, resume))
        if spec.seed == 2:
            raise KdcoreError("it broke")

    counts = grid.run_grid(specs, echo=said.append, in_process=in_process)
    assert calls == [(0, False), (1, True), (2, False)]
    assert counts == {"ran": 2, "skipped": 1, "failed": 1}
    assert said == ["1 of 4 runs already finished: skipped", "[1/3] v seed 0: starting",
                    "[1/3] v seed 0: done in 3s", "[2/3] v seed 1: resuming",
                    "[2/3] v seed 1: done in 0s", "[3/3] v seed 2: starting",
                    "[3/3] v seed 2: FAILED: it broke"]


def test_runs_in_parallel_are_subprocesses_jobs_at_a_time(tmp_path, monkeypatch):
    specs = _specs(tmp_path, 4)
    specs[2].out.mkdir()
    (specs[2].out / CHECKPOINT).write_text("")
    started = []
    together = threading.Barrier(2, timeout=30)  # two at once, or this never opens
    lock, running, most = threading.Lock(), [0], [0]

    def subprocess_run(spec, resume, children):
        with lock:
            started.append((spec.seed, resume))
            running[0] += 1
            most[0] = max(most[0], running[0])
        together.wait()
        with lock:
            running[0] -= 1
        if spec.seed == 3:
            raise subprocess.CalledProcessError(1, "kdcore")

    monkeypatch.setattr(grid, "_subprocess_run", subprocess_run)
    said = []
    counts = grid.run_grid(specs, jobs=2, echo=said.append,
                           in_process=lambda s, r: pytest.fail("not in this process"))
    assert sorted(started) == [(0, False), (1, False), (2, True), (3, False)]
    assert most == [2]  # never more than --jobs at once
    assert counts == {"ran": 3, "skipped": 0, "failed": 1}
    assert any(line.startswith("[4/4] v seed 3: FAILED: ") for line in said)
    started.clear()
    together = threading.Barrier(1)
    assert grid.run_grid(specs[:1], echo=said.append)["ran"] == 1  # one job, no in_process
    assert started == [(0, False)]


def test_a_bug_in_a_parallel_run_is_raised_in_the_calling_thread(tmp_path, monkeypatch):
    def broken_for_seed_1(spec, resume, children):
        if spec.seed == 1:
            raise ZeroDivisionError("a bug")

    monkeypatch.setattr(grid, "_subprocess_run", broken_for_seed_1)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        grid.run_grid(_specs(tmp_path, 3), jobs=2, echo=lambda line: None)


class _Stoppable:
    """A stand-in for ``subprocess.Popen``: a run that goes on until it is sent a signal,
    then stops at its checkpoint (exit 128 + the signal), or one killed by it at its start.
    The first, once both run, sends the grid's process ``signum``."""

    made: list[_Stoppable] = []
    both_running = threading.Barrier(2, timeout=30)
    killed_at_start = False
    signum = signal.SIGINT

    def __init__(self, cmd, **kwargs):
        self.cmd, self.kwargs, self.returncode, self.signals = cmd, kwargs, None, []
        self.sent = threading.Event()
        type(self).made.append(self)

    def communicate(self):
        first = self is self.made[0]
        self.both_running.wait()
        if first:
            os.kill(os.getpid(), self.signum)
        assert self.sent.wait(30)
        return "", ""

    def poll(self):
        return self.returncode

    def send_signal(self, signum):
        self.signals.append(signum)
        self.returncode = -signum if self.killed_at_start else 128 + signum
        self.sent.set()


@pytest.fixture
def sigterm_stops():
    """SIGINT and SIGTERM handled as `kdcore ablate` has them, whatever the test runner's
    own handlers (mutmut's)."""
    previous = (signal.signal(signal.SIGTERM, interrupts.stop_on_signal),
                signal.signal(signal.SIGINT, signal.default_int_handler))
    yield
    signal.signal(signal.SIGTERM, previous[0])
    signal.signal(signal.SIGINT, previous[1])
    interrupts.reset()


@pytest.mark.parametrize(("signum", "killed_at_start"), [
    (signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)])
def test_an_interrupted_parallel_grid_passes_the_signal_on_once_and_starts_no_more(
        tmp_path, monkeypatch, sigterm_stops, signum, killed_at_start):
    specs = _specs(tmp_path, 4)
    monkeypatch.setattr(_Stoppable, "made", [])
    monkeypatch.setattr(_Stoppable, "both_running", threading.Barrier(2, timeout=30))
    monkeypatch.setattr(_Stoppable, "killed_at_start", killed_at_start)
    monkeypatch.setattr(_Stoppable, "signum", signum)
    monkeypatch.setattr(grid.subprocess, "Popen", _Stoppable)
    said = []
    with pytest.raises(KeyboardInterrupt):
        grid.run_grid(specs, jobs=2, echo=said.append)
    assert len(_Stoppable.made) == 2  # the third and fourth never started
    assert [p.signals for p in _Stoppable.made] == [[signum], [signum]]
    assert all(p.kwargs["start_new_session"] for p in _Stoppable.made)
    name = signal.Signals(signum).name
    assert sorted(said) == ["[1/4] v seed 0: starting",
                            f"[1/4] v seed 0: stopped by {name}; the next kdcore ablate "
                            "resumes it",
                            "[2/4] v seed 1: starting",
                            f"[2/4] v seed 1: stopped by {name}; the next kdcore ablate "
                            "resumes it"]


def test_a_run_picked_up_as_the_grid_stops_is_not_started(tmp_path, monkeypatch):
    monkeypatch.setattr(grid.subprocess, "Popen", lambda *a, **k: pytest.fail("started"))
    children = grid._Children()
    children.stop(signal.SIGTERM)
    with pytest.raises(grid._RunStopped) as info:
        grid._subprocess_run(RunSpec(Variant("v", "r.toml"), 0, tmp_path), False, children)
    assert str(info.value) == "SIGTERM"


def test_a_run_that_fails_while_the_grid_stops_is_still_a_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(grid._Children, "run", lambda self, cmd, env: (1, "kdcore: error: x\n"))
    children = grid._Children()
    children.stopping = signal.SIGTERM  # it ended, of its own failure, as the grid stopped
    with pytest.raises(KdcoreError) as info:
        grid._subprocess_run(RunSpec(Variant("v", "r.toml"), 0, tmp_path), False, children)
    assert str(info.value) == "exit 1: kdcore: error: x"


def test_run_spec_runs_the_recipe_with_the_specs_overrides_in_its_folder(tmp_path,
                                                                         monkeypatch):
    import kdcore.engine

    recipe = write_recipe(tiny_recipe(teacher_stage(1)), tmp_path / "r.toml")
    spec = RunSpec(Variant("v", str(recipe), ["run.threads=1"]), 4, tmp_path / "v" / "seed4")
    got = []
    monkeypatch.setattr(kdcore.engine, "run_recipe",
                        lambda recipe, **kw: got.append((recipe, kw)))
    host = object()
    grid.run_spec(spec, host=host)
    (loaded, kw), = got
    assert loaded.run.seed == 4 and loaded.run.threads == 1
    assert kw == {"out": str(spec.out), "resume": False, "host": host, "progress": False,
                  "overrides": ["run.threads=1", "run.seed=4"]}
    spec.out.mkdir(parents=True)
    (spec.out / CHECKPOINT).write_text("")
    grid.run_spec(spec)
    assert got[1][1]["resume"] is True and got[1][1]["host"] is None
    grid.run_spec(spec, resume=False)
    assert got[2][1]["resume"] is False


def test_a_run_already_in_the_grids_folder_must_be_of_the_same_recipe(tmp_path):
    recipe = write_recipe(tiny_recipe(teacher_stage(1)), tmp_path / "r.toml")
    other = write_recipe(tiny_recipe(teacher_stage(2)), tmp_path / "other.toml")
    spec = RunSpec(Variant("v", str(recipe)), 0, tmp_path / "v" / "seed0")
    spec.out.mkdir(parents=True)
    grid.check_specs([spec])  # nothing there has run: no run to compare with
    # a run killed before its first checkpoint leaves its recipe: the next ablate resumes it
    (spec.out / "recipe.toml").write_text(other.read_text())
    again = f"remove {spec.out} to run it again, or give the grid another --out"
    for saved, why in ((other.read_bytes(), f"{spec.out} holds an interrupted run of another "
                                            f"recipe (it differs at stages[0].epochs)"),
                       (b"\xff not TOML", f"{spec.out / 'recipe.toml'} cannot be read, so "
                                          "whether the run there is this one is unknown")):
        (spec.out / "recipe.toml").write_bytes(saved)
        with pytest.raises(KdcoreError) as info:
            grid.check_specs([spec])
        assert str(info.value) == f"variant 'v' seed 0: {why}; {again}"


def _popen(returncode=0, stderr="", seen=None):
    """A stand-in for ``subprocess.Popen`` whose process ends with ``returncode``."""

    class Proc:
        def __init__(self, cmd, **kwargs):
            if seen is not None:
                seen.update(cmd=cmd, **kwargs)
            self.returncode = None

        def communicate(self):
            self.returncode = returncode
            return "", stderr

    return Proc


def test_a_subprocess_run_is_kdcore_run_with_the_specs_overrides(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(grid.subprocess, "Popen", _popen(seen=seen))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    spec = RunSpec(Variant("v", "r.toml", ["a=1", "b=2"]), 5, tmp_path / "seed5")
    grid._subprocess_run(spec, resume=False)
    assert seen["cmd"] == [sys.executable, "-m", "kdcore.cli", "run", "r.toml", "--out",
                           str(tmp_path / "seed5"), "--quiet", "--no-progress", "--set", "a=1",
                           "--set", "b=2", "--set", "run.seed=5"]
    assert seen["env"]["OMP_NUM_THREADS"] == "1"  # one thread per process
    # its output kept from the terminal; a session of its own, so that a terminal's Ctrl-C
    # reaches it once, through the grid
    assert seen["stdout"] == seen["stderr"] == subprocess.PIPE and seen["text"]
    assert seen["start_new_session"] is True
    # so it dies with the grid, in whatever way the grid dies (kdcore.torchrun.die_with_launcher)
    assert seen["env"]["KDCORE_LAUNCHER_PID"] == str(os.getpid())
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    grid._subprocess_run(spec, resume=True)
    assert seen["cmd"][-1] == "--resume" and seen["env"]["OMP_NUM_THREADS"] == "3"


@pytest.mark.parametrize(("stderr", "message"), [
    ("loading\nkdcore: error: r.toml: run.seed: bad\n",
     "exit 2: kdcore: error: r.toml: run.seed: bad"),
    ("", "exit 2: (no output)"),
    ("  \n", "exit 2: (no output)"),
])
def test_a_failed_subprocess_says_its_exit_code_and_last_line(tmp_path, monkeypatch, stderr,
                                                              message):
    monkeypatch.setattr(grid.subprocess, "Popen", _popen(2, stderr))
    with pytest.raises(KdcoreError) as info:
        grid._subprocess_run(RunSpec(Variant("v", "r.toml"), 0, tmp_path), resume=False)
    assert str(info.value) == message


def test_a_dry_run_checks_every_run_and_says_what_each_would_do(tmp_path):
    from kdcore.recipe import load_recipe

    recipe = write_recipe(tiny_recipe(teacher_stage(1)), tmp_path / "r.toml")
    out = tmp_path / "grid"
    # finished; interrupted; killed before its first checkpoint
    for seed, left in ((0, "summary.json"), (1, CHECKPOINT), (3, "log.txt")):
        run = out / "r" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "recipe.toml").write_text(load_recipe(recipe, [f"run.seed={seed}"]).to_toml())
        (run / left).write_text("{}")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    result = invoke("ablate", recipe, "--seeds", "0-3", "--out", out, "--dry-run")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"r seed 0: finished: skipped ({out / 'r' / 'seed0'})",
        f"r seed 1: would resume ({out / 'r' / 'seed1'})",
        f"r seed 2: would start ({out / 'r' / 'seed2'})",
        f"r seed 3: would start ({out / 'r' / 'seed3'})",  # no checkpoint: from its start
        f"grid {out}: 4 runs checked, none run (--dry-run)"]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    # checked as a run would be: a bad override is refused, naming the run
    bad = invoke("ablate", recipe, "--seeds", "0", "--out", out, "--dry-run",
                 "--set", "stages.0.epochs=-1")
    assert bad.exit_code == 2 and bad.output.startswith("kdcore: error: variant 'r' seed 0: ")
    one = invoke("ablate", recipe, "--seeds", "2", "--out", out, "--dry-run")
    assert one.output.splitlines()[-1] == f"grid {out}: 1 run checked, none run (--dry-run)"
