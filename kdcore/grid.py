"""Grids of runs: recipes x variants x seeds, resumable, one at a time or in parallel processes.

A grid's runs live in ``OUT/<variant>/seed<k>/``. A run with a ``summary.json`` is finished and
skipped; one with a checkpoint but no summary was interrupted and is resumed.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from kdcore.checkpoint import CHECKPOINT
from kdcore.config import structure
from kdcore.errors import KdcoreError, RecipeError
from kdcore.recipe import read_toml
from kdcore.rundir import check_output_dir, started
from kdcore.torchrun import LAUNCHER_ENV


@attrs.frozen
class Variant:
    """One column of a grid: a recipe file and the overrides applied to it.

    Attributes:
        name: the variant's directory name (and its row label in reports).
        recipe: the recipe file.
        set: ``key.path=value`` overrides, as ``--set`` takes them.
    """

    name: str
    recipe: str
    set: list[str] = attrs.Factory(list)


@attrs.frozen
class GridFile:
    """The TOML form of a grid (``kdcore ablate --grid FILE``).

    Attributes:
        recipe: the default recipe of every variant (relative to the grid file).
        seeds: the seeds every variant runs with.
        set: overrides applied to every variant, before its own.
        variant: the variants; a variant without ``recipe`` uses the grid's.
    """

    recipe: str | None = None
    seeds: list[int] = attrs.Factory(lambda: [0])
    set: list[str] = attrs.Factory(list)
    variant: list[dict[str, Any]] = attrs.Factory(list)


@attrs.frozen
class RunSpec:
    """One run of a grid."""

    variant: Variant
    seed: int
    out: Path

    @property
    def overrides(self) -> list[str]:
        return [*self.variant.set, f"run.seed={self.seed}"]


def read_grid(path: str | Path) -> tuple[list[Variant], list[int]]:
    """Variants and seeds from a grid file; paths are relative to the file."""
    path = Path(path)
    try:
        grid = structure(GridFile, read_toml(path))
    except RecipeError as exc:
        raise exc.at(file=str(path)) from None
    variants = []
    for i, raw in enumerate(grid.variant):
        key = f"variant[{i}]"
        if "name" not in raw:
            raise RecipeError("a variant needs a 'name'", file=str(path), key=key)
        recipe = raw.get("recipe", grid.recipe)
        if recipe is None:
            raise RecipeError("no recipe: give the grid or the variant a 'recipe'",
                              file=str(path), key=key)
        unknown = set(raw) - {"name", "recipe", "set"}
        if unknown:
            raise RecipeError(f"unknown key '{sorted(unknown)[0]}'; expected name, recipe, set",
                              file=str(path), key=key)
        for field, kind in (("name", str), ("recipe", str), ("set", list)):
            value = raw.get(field, "" if kind is str else [])
            if not isinstance(value, kind) or (kind is list
                                               and not all(isinstance(s, str) for s in value)):
                what = "a string" if kind is str else "a list of strings"
                raise RecipeError(f"'{field}' must be {what}", file=str(path),
                                  key=f"{key}.{field}")
        variants.append(Variant(str(raw["name"]), str(path.parent / recipe),
                                [*grid.set, *raw.get("set", [])]))
    if not variants and grid.recipe:
        variants.append(Variant(Path(grid.recipe).stem, str(path.parent / grid.recipe),
                                list(grid.set)))
    return variants, list(grid.seeds)


def parse_variant(text: str, recipe: str, prefix: str = "") -> Variant:
    """``name:key=value;key=value`` from the command line (named ``prefix`` + name)."""
    name, _, rest = text.partition(":")
    if not name:
        raise KdcoreError(f"variant '{text}' has no name (expected name:key=value;...)")
    return Variant(prefix + name, recipe, [s for s in _split_outside_strings(rest) if s.strip()])


def _split_outside_strings(text: str) -> list[str]:
    """``text`` split at each ``;`` that is not inside a TOML string (``"a;b"``, ``'a;b'``)."""
    parts, current, quote, escaped = [], [], "", False
    for c in text:
        if c == ";" and not quote:
            parts.append("".join(current))
            current = []
            continue
        current.append(c)
        if quote == '"' and escaped:
            escaped = False
        elif quote == '"' and c == "\\":
            escaped = True
        elif quote and c == quote:
            quote = ""
        elif not quote and c in "\"'":
            quote = c
    return [*parts, "".join(current)]


def check_name(name: str) -> None:
    """A variant's name is one directory under the grid's: no separator, no ``.`` or ``..``."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name
            or any(ord(c) < 32 or ord(c) == 127 for c in name) or len(os.fsencode(name)) > 200):
        raise KdcoreError(f"variant name {name!r} is not a directory name (one path part, "
                          f"not '.' or '..', no '/' or control character, at most 200 bytes)")


def plan(variants: Sequence[Variant], seeds: Sequence[int], out: Path) -> list[RunSpec]:
    for v in variants:
        check_name(v.name)
        if not Path(v.recipe).is_file():
            raise KdcoreError(f"variant '{v.name}': no recipe file {v.recipe}")
    if not seeds:
        raise KdcoreError("no seeds to run: give at least one")
    check_output_dir(out)  # a name the system refuses (too long) is one line here
    # what only a run writes (not recipe.toml: a grid's own recipe may be kept in its folder)
    held = [n for n in ("history.h5", "summary.json", CHECKPOINT) if (out / n).exists()]
    if held:  # the grid's runs would land among that run's files, and report would mix them
        raise KdcoreError(f"{out} holds a run ({', '.join(held)}); a grid's runs go in a "
                          "folder of their own")
    twice = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if twice:
        raise KdcoreError(f"seed {twice[0]} is given twice (a grid runs each seed once)")
    names = [v.name for v in variants]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        name = sorted(dup)[0]
        recipes = " and ".join(dict.fromkeys(v.recipe for v in variants if v.name == name))
        raise KdcoreError(f"two variants named '{name}' (of {recipes}); each needs a name "
                          "of its own, the folder its runs go in")
    return [RunSpec(v, s, out / v.name / f"seed{s}") for v in variants for s in seeds]


def check_specs(specs: Sequence[RunSpec], host: Any = None) -> None:
    """Resolve every run's recipe with its overrides and seed, as the run will, and with
    ``host`` (a :class:`~kdcore.PluginHost`) build its plan (every component's parameters,
    roles and column wiring; no data is loaded): a bad file, ``--set``, seed or component
    parameter is one error before any run starts, not a failure per run."""
    from loguru import logger

    from kdcore.plan import build_plan
    from kdcore.provenance import check_same_recipe, code_changes, code_digests, recorded_code
    from kdcore.recipe import load_recipe

    other_code: dict[Path, list[str]] = {}
    for spec in specs:
        try:
            recipe = load_recipe(spec.variant.recipe, spec.overrides)
            if host is not None:
                build_plan(recipe, host)
            if status(spec) != "new":
                check_same_recipe(spec.out, status(spec) == "done", recipe)
                if host is not None and (changed := code_changes(recorded_code(spec.out),
                                                                 code_digests(recipe, host))):
                    other_code[spec.out] = changed
        except KdcoreError as exc:  # the file alone does not say which of the grid's runs
            raise KdcoreError(f"variant '{spec.variant.name}' seed {spec.seed}: {exc}") from None
    if other_code:  # an edit may change nothing computed: said, not refused
        dists = sorted({d for changed in other_code.values() for d in changed})
        shown = ", ".join(map(str, list(other_code)[:3])) + (", ..." if len(other_code) > 3
                                                             else "")
        logger.warning(f"{len(other_code)} of the grid's runs already there were made by other "
                       f"code ({', '.join(dists)} changed since: {shown}); finished ones stand "
                       f"as they are, interrupted ones resume with this code; remove them to "
                       f"run them again")


def status(spec: RunSpec) -> str:
    """``done``, ``partial`` (resumed; started again if killed before a checkpoint) or ``new``."""
    if (spec.out / "summary.json").is_file():
        return "done"
    return "partial" if started(spec.out) else "new"


def pending(specs: Sequence[RunSpec], echo: Callable[[str], None] = print,
            ) -> tuple[list[RunSpec], dict[str, int]]:
    """The unfinished runs of ``specs`` and the counts so far (finished runs ``skipped``)."""
    todo = [s for s in specs if status(s) != "done"]
    counts = {"ran": 0, "skipped": len(specs) - len(todo), "failed": 0}
    if counts["skipped"]:
        echo(f"{counts['skipped']} of {len(specs)} runs already finished: skipped")
    return todo, counts


def run_spec(spec: RunSpec, resume: bool | None = None, host: Any = None) -> None:
    """Run ``spec`` in this process: its recipe with its overrides, into ``spec.out``.

    A run that a plugin's exception stops (its bug, not the user's error) raises
    :class:`~kdcore.failures.RunFailed`, its traceback in the run's ``log.txt``, as a ``kdcore
    run`` of ``--jobs N`` exits 1 with that line: the grid counts it failed and goes on.

    Args:
        resume: continue from the checkpoint in ``spec.out``; None: when there is one.
        host: the plugin host (default: the installed plugins).
    """
    from kdcore.engine import run_recipe
    from kdcore.failures import one_line_failures
    from kdcore.recipe import load_recipe

    if resume is None:
        resume = status(spec) == "partial"
    run = one_line_failures("the run")(run_recipe)
    run(load_recipe(spec.variant.recipe, spec.overrides), out=str(spec.out), resume=resume,
        host=host, progress=False, overrides=spec.overrides)


def run_grid(
    specs: Sequence[RunSpec],
    *,
    jobs: int = 1,
    echo: Callable[[str], None] = print,
    in_process: Callable[[RunSpec, bool], None] | None = None,
) -> dict[str, int]:
    """Run every unfinished run of ``specs``; returns counts of ``ran``, ``skipped``, ``failed``.

    With ``jobs == 1`` runs go one after another in this process (no torch import per run);
    with more, each run is a ``kdcore run`` subprocess, ``jobs`` at a time. An interrupt
    (Ctrl-C, or the SIGTERM ``kdcore ablate`` turns into one) starts no further run, passes the
    signal on to the running ones, waits while each stops at its last checkpoint, and is
    raised again.
    """
    todo, counts = pending(specs, echo)
    total = len(todo)
    children = _Children()

    def one(i: int, spec: RunSpec) -> bool:
        resume = status(spec) == "partial"
        label = f"[{i + 1}/{total}] {spec.variant.name} seed {spec.seed}"
        if children.stopping is not None:  # cancelled too late: it had just been picked up
            return False
        echo(f"{label}: {'resuming' if resume else 'starting'}")
        t0 = time.perf_counter()
        try:
            if jobs == 1 and in_process is not None:
                in_process(spec, resume)
            else:
                _subprocess_run(spec, resume, children)
        except _RunStopped as exc:
            echo(f"{label}: stopped by {exc}; the next kdcore ablate resumes it")
            return False
        except (KdcoreError, subprocess.CalledProcessError) as exc:
            echo(f"{label}: FAILED: {exc}")
            return False
        echo(f"{label}: done in {time.perf_counter() - t0:.0f}s")
        return True

    if jobs == 1:
        results = [one(i, s) for i, s in enumerate(todo)]
    else:
        results = _in_threads(todo, jobs, one, children)
    counts["ran"] = sum(results)
    counts["failed"] = len(results) - counts["ran"]
    return counts


def _in_threads(todo: Sequence[RunSpec], jobs: int, one: Callable[[int, RunSpec], bool],
                children: _Children) -> list[bool]:
    """``one`` over ``todo`` in ``jobs`` threads. An interrupt (in the main thread, wherever
    it is: even while a thread starts) stops ``children``, waits for every thread that
    started to finish the run it holds, and is raised again."""
    waiting = collections.deque(enumerate(todo))  # popleft is atomic: no lock needed
    results: dict[int, bool] = {}
    errors: list[BaseException] = []

    def worker(done: threading.Event) -> None:
        try:
            while children.stopping is None:
                try:
                    i, spec = waiting.popleft()
                except IndexError:
                    return
                results[i] = one(i, spec)
        except BaseException as exc:  # a bug: raised again in the main thread
            errors.append(exc)
        finally:
            done.set()

    # waited for through events, not Thread.join: a join that an interrupt cuts short marks
    # its thread as ended although it runs on (CPython 3.11, bpo-45274's handling)
    ends = [threading.Event() for _ in range(min(jobs, len(todo)))]
    threads = [threading.Thread(target=worker, args=(done,), name=f"kdcore-ablate-{k}")
               for k, done in enumerate(ends)]
    try:
        for t in threads:
            t.start()
        for done in ends:
            done.wait()
    except KeyboardInterrupt as exc:
        children.stop(getattr(exc, "signum", signal.SIGINT))
        for t, done in zip(threads, ends, strict=True):
            if t.ident is not None:  # started (a start cut short by the signal included)
                done.wait()
        raise
    if errors:
        raise errors[0]
    return [results[i] for i in sorted(results)]


class _RunStopped(Exception):
    """A run that stopped because the grid was interrupted (its signal's name)."""


class _Children:
    """The ``kdcore run`` processes of ``--jobs N`` alive now, so that an interrupt of the
    grid reaches each of them exactly once and starts no more.

    Each runs in a session of its own: a terminal's Ctrl-C reaches only the grid, which passes
    it on (a run given SIGINT twice would have its stop cut short). A signal sent to every
    process of a job (SLURM's) reaches a run directly as well; a second SIGTERM is ignored
    while a run stops (:func:`kdcore.interrupts.stop_on_signal`).
    """

    def __init__(self) -> None:
        self._alive: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()
        self.stopping: int | None = None  # the signal the grid was stopped by

    def run(self, cmd: list[str], env: dict[str, str]) -> tuple[int, str] | None:
        """Run ``cmd`` to its end: its exit code and standard error; None when the grid was
        stopped before it could start."""
        with self._lock:
            if self.stopping is not None:
                return None
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env=env, start_new_session=True)
            self._alive.add(proc)
        try:
            _, stderr = proc.communicate()
        finally:
            with self._lock:
                self._alive.discard(proc)
        return proc.returncode, stderr

    def stop(self, signum: int) -> None:
        """Start no more runs, and pass ``signum`` on to each running one."""
        with self._lock:
            self.stopping = signum
            for proc in self._alive:
                if proc.poll() is None:
                    proc.send_signal(signum)


def _subprocess_run(spec: RunSpec, resume: bool, children: _Children | None = None) -> None:
    cmd = [sys.executable, "-m", "kdcore.cli", "run", spec.variant.recipe, "--out",
           str(spec.out), "--quiet", "--no-progress"]
    for o in spec.overrides:
        cmd += ["--set", o]
    if resume:
        cmd.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           LAUNCHER_ENV: str(os.getpid())}  # the run dies with the grid (die_with_launcher)
    children = children or _Children()
    done = children.run(cmd, env)
    if done is None:
        raise _RunStopped(signal.Signals(children.stopping or signal.SIGINT).name)
    code, stderr = done
    # stopped at its checkpoint (128 + the signal), or killed by it before it could be
    if children.stopping is not None and code in (128 + children.stopping, -children.stopping):
        raise _RunStopped(signal.Signals(children.stopping).name)
    if code != 0:
        last = (stderr.strip().splitlines() or ["(no output)"])[-1]
        raise KdcoreError(f"exit {code}: {last}")
