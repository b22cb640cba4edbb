"""Plugin failures that got past kdcore's isolation of plugin code.

Plugin code that raises ``SystemExit`` (a ``sys.exit``, or argparse's ``parse_args()`` reading
kdcore's own command line when a plugin module is imported) or ``GeneratorExit`` fails as that
plugin, wherever kdcore calls it: never kdcore's own exit, which would end an unfinished run
with the plugin's status (0 for ``sys.exit()``) and no word of why. An exception whose own
message raises is named by what it raised, not a second traceback. A component that raises any
exception in a run of ``kdcore ablate`` fails that run, as a ``kdcore run`` subprocess of
``--jobs N`` does: the grid says so and goes on."""

from __future__ import annotations

import sys
from pathlib import Path

import attrs
import pytest

from kdcore import Component, History, KdcoreError, PluginHost, hookimpl, load_recipe
from kdcore.loggers import start_loggers
from kdcore.plugins import ObserverBus
from kdcore.testing import component, stage, tiny_recipe, write_recipe
from tests.cli_helpers import invoke
from tests.test_plugins import FakeDist, FakeEntryPoint, _entry_points


class Unsayable(Exception):
    """An exception whose message reads an attribute its ``__init__`` never set."""

    def __str__(self):
        return self.detail

    __repr__ = __str__


# made anew at each raise: kdcore notes on an exception where its traceback went
EXITS = [lambda: SystemExit(0), lambda: SystemExit(3), lambda: SystemExit("usage: ..."),
         GeneratorExit, Unsayable]


@attrs.frozen
class LeavesParams:
    hook: str = "on_epoch_start"  # where it leaves: setup, on_epoch_start or transfer
    epoch: int = 1  # on_epoch_start: the epoch
    seed: int = -1  # only in the run of this seed (-1: every run)
    how: int = 0  # an index into EXITS, or -1: ValueError


class Leaves(Component):
    """Raises at the hook its parameters name."""

    Params = LeavesParams
    description = "leaves on purpose"

    def _leave(self, ctx, hook: str) -> None:
        p = self.params
        if p.hook == hook and p.seed in (-1, ctx.recipe.run.seed):
            raise ValueError("a plugin bug") if p.how < 0 else EXITS[p.how]()

    def setup(self, ctx):
        self._leave(ctx, "setup")

    def on_epoch_start(self, ctx):
        if ctx.epoch == self.params.epoch:
            self._leave(ctx, "on_epoch_start")

    def transfer(self, ctx, batch):
        self._leave(ctx, "transfer")


class LeavesPlugin:
    @hookimpl
    def kdcore_add_components(self):
        return {"leaves": Leaves}


PLUGIN = LeavesPlugin()


def _recipe(tmp_path: Path, **params) -> Path:
    data = tiny_recipe(stage("student", 3, ["student"], component("ce"),
                             component("leaves", params=params)))
    return write_recipe(data, tmp_path / "leaves.toml")


def _lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("how", range(len(EXITS)))
def test_a_component_that_exits_or_cannot_say_why_stops_the_run_in_one_line(tmp_path, how):
    run_dir = tmp_path / "run"
    result = invoke("run", _recipe(tmp_path, how=how), "--out", run_dir, "--quiet",
                    "--plugin", "tests.test_plugin_exits:PLUGIN")
    assert result.exit_code == 1, result.output
    exc = EXITS[how]()
    message = "<its message raised AttributeError>" if isinstance(exc, Unsayable) else str(exc)
    cause = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    hint = ("; plugin code must raise an exception, not call sys.exit"
            if isinstance(exc, SystemExit) else "")
    assert _lines(result) == [
        f"kdcore: error: the run stopped: component 'leaves' (leaves) in on_epoch_start raised "
        f"{cause}{hint}; the traceback is in {run_dir / 'log.txt'}"]
    log = (run_dir / "log.txt").read_text()
    assert "Traceback (most recent call last)" in log and f"{type(exc).__name__}" in log
    with History(run_dir) as h:  # the epoch before is kept, and the run resumes from it
        assert len(h.epochs()) == 1
    assert not (run_dir / "summary.json").exists()


@pytest.mark.slow
def test_check_names_a_component_whose_setup_exits(tmp_path):
    result = invoke("check", _recipe(tmp_path, hook="setup"),
                    "--plugin", "tests.test_plugin_exits:PLUGIN")
    assert result.exit_code == 1, result.output
    assert _lines(result) == [
        "kdcore: error: the set-up stopped: component 'leaves' (leaves) in setup raised "
        "SystemExit: 0; plugin code must raise an exception, not call sys.exit; "
        "KDCORE_TRACEBACK=1 shows the traceback"]


@pytest.mark.slow
@pytest.mark.parametrize("how", [-1, 0])
def test_ablate_counts_a_run_a_plugin_stopped_as_failed_and_goes_on(tmp_path, how):
    """In this process (``--jobs 1``) as in a subprocess of ``--jobs N``: the run of seed 0
    fails, the one of seed 1 runs."""
    out = tmp_path / "grid"
    result = invoke("ablate", _recipe(tmp_path, hook="transfer", seed=0, how=how),
                    "--seeds", "0,1", "--out", out,
                    "--plugin", "tests.test_plugin_exits:PLUGIN")
    assert result.exit_code == 1, result.output
    cause = "ValueError: a plugin bug" if how < 0 else (
        "SystemExit: 0; plugin code must raise an exception, not call sys.exit")
    log = out / "leaves" / "seed0" / "log.txt"
    assert _lines(result)[-4:] == [
        f"[1/2] leaves seed 0: FAILED: the run stopped: component 'leaves' (leaves) in "
        f"transfer raised {cause}; the traceback is in {log}",
        "[2/2] leaves seed 1: starting",
        _lines(result)[-2],
        f"grid {out}: 1 ran, 0 skipped, 1 failed"]
    assert _lines(result)[-2].startswith("[2/2] leaves seed 1: done in ")
    assert "Traceback (most recent call last)" in log.read_text()
    assert (out / "leaves" / "seed1" / "summary.json").is_file()


def test_a_plugin_module_that_exits_at_import_is_refused_in_one_line(tmp_path, monkeypatch):
    (tmp_path / "exits_at_import.py").write_text(
        "import argparse\nargparse.ArgumentParser(prog='p').parse_args(['--no-such'])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = write_recipe(tiny_recipe(stage("s", 1, ["student"], component("ce"))),
                          tmp_path / "r.toml")
    for command in (["check", recipe], ["plugins"]):
        result = invoke(*command, "--plugin", "exits_at_import")
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert _lines(result) == [  # argparse's own two lines, then kdcore's
            "usage: p [-h]", "p: error: unrecognized arguments: --no-such",
            "kdcore: error: cannot import plugin 'exits_at_import': SystemExit: 2"]
    (tmp_path / "unsayable_at_import.py").write_text(
        "class Unsayable(Exception):\n    def __str__(self):\n        return self.detail\n"
        "raise Unsayable()\n")
    result = invoke("plugins", "--plugin", "unsayable_at_import")
    assert result.exit_code == 2 and _lines(result) == [
        "kdcore: error: cannot import plugin 'unsayable_at_import': Unsayable: "
        "<its message raised AttributeError>"]


def test_an_installed_plugin_that_exits_at_import_is_skipped_with_one_warning(monkeypatch,
                                                                             warnings):
    def exits():
        sys.exit("a script, not a plugin")

    _entry_points(monkeypatch, [FakeEntryPoint("exits", "kdcore_x", exits,
                                               FakeDist("kdcore-x", "1.0"))])
    host = PluginHost()
    assert warnings == ["plugin 'exits' (kdcore-x 1.0) skipped: failed to import kdcore_x: "
                        "SystemExit('a script, not a plugin')"]
    assert "ce" in host.components  # the others loaded
    with pytest.raises(KdcoreError, match="^plugin 'exits' \\(kdcore-x\\): failed to import"):
        PluginHost(strict=True)


class ExitsInHooks:
    """Leaves in its constructor, a registry hook or an observer hook, as ``where`` says."""

    def __init__(self, where: str):
        self.where = where

    @hookimpl
    def kdcore_add_datasets(self):
        if self.where == "registry":
            raise SystemExit(1)
        return {}

    @hookimpl
    def kdcore_run_end(self, ctx, summary):
        raise {"generator": GeneratorExit(), "unsayable": Unsayable()}.get(self.where,
                                                                           SystemExit(0))


def test_a_registry_hook_that_exits_skips_its_plugin(warnings):
    host = PluginHost(entry_points=False, extra=[ExitsInHooks("registry")])
    assert warnings == ["plugin 'ExitsInHooks-0' (in-process) skipped: kdcore_add_datasets "
                        "failed: SystemExit(1)"]
    assert host.infos["ExitsInHooks-0"].error is not None


def test_a_plugin_class_whose_constructor_exits_is_skipped(warnings):
    class Exits:
        def __init__(self):
            sys.exit(0)

        @hookimpl
        def kdcore_run_end(self, ctx, summary):
            pass

    PluginHost(entry_points=False, extra=[Exits])
    assert len(warnings) == 1 and "making one without arguments failed (SystemExit: 0)" in \
        warnings[0]


@pytest.mark.parametrize("where", ["exit", "generator", "unsayable"])
def test_an_observer_that_exits_or_cannot_say_why_is_disabled_after_one_warning(warnings, where):
    bus = ObserverBus(PluginHost(entry_points=False, extra=[ExitsInHooks(where)]))
    for _ in range(2):
        bus.call("kdcore_run_end", ctx=None, summary={})
    said = {"generator": "GeneratorExit()", "exit": "SystemExit(0)",
            "unsayable": "Unsayable(<its message raised AttributeError>)"}[where]
    assert warnings == [f"plugin 'ExitsInHooks-0' (in-process): kdcore_run_end raised {said}; "
                        "the plugin is disabled for the rest of this run"]
    assert bus.disabled == {"ExitsInHooks-0"}


def test_a_logger_whose_factory_exits_is_left_out(tmp_path, warnings):
    class ExitingLogger:
        @hookimpl
        def kdcore_add_loggers(self):
            return {"exits": lambda log_dir, recipe: sys.exit(0)}

    host = PluginHost(entry_points=False, extra=[ExitingLogger()])
    data = tiny_recipe(stage("s", 1, ["student"], component("ce")), run={"loggers": ["exits"]})
    recipe = load_recipe(write_recipe(data, tmp_path / "r.toml"))
    assert start_loggers(host, recipe, tmp_path) == []
    assert warnings == ["logger 'exits' (ExitingLogger-0) failed to start: SystemExit(0); the "
                        "run goes on without it"]


def test_every_plugin_failure_warning_names_an_exception_that_cannot_say_itself(
        tmp_path, monkeypatch, warnings):
    def unsayable():
        raise Unsayable()

    class Hooks:
        def __init__(self, fail_in_constructor: bool):
            if fail_in_constructor:
                unsayable()

        @hookimpl
        def kdcore_add_datasets(self):
            unsayable()

        @hookimpl
        def kdcore_add_loggers(self):
            return {"unsayable": lambda log_dir, recipe: unsayable()}

    _entry_points(monkeypatch, [FakeEntryPoint("u", "kdcore_u", unsayable,
                                               FakeDist("kdcore-u", "1"))])
    PluginHost(extra=[type("InConstructor", (Hooks,), {"__init__": lambda self: unsayable()}),
                      Hooks(False)])
    said = "<its message raised AttributeError>"
    assert warnings == [
        f"plugin 'u' (kdcore-u 1) skipped: failed to import kdcore_u: Unsayable({said})",
        "plugin 'InConstructor' (in-process) skipped: is a class, and making one without "
        f"arguments failed (Unsayable: {said}); name an instance of it",
        f"plugin 'Hooks-1' (in-process) skipped: kdcore_add_datasets failed: Unsayable({said})"]
    warnings.clear()
    host = PluginHost(entry_points=False, extra=[type("Loggers", (), {
        "kdcore_add_loggers": hookimpl(lambda self: {"unsayable": lambda d, r: unsayable()})})()])
    data = tiny_recipe(stage("s", 1, ["student"], component("ce")),
                       run={"loggers": ["unsayable"]})
    assert start_loggers(host, load_recipe(write_recipe(data, tmp_path / "r.toml")), tmp_path) == []
    assert warnings == [f"logger 'unsayable' (Loggers-0) failed to start: Unsayable({said}); the "
                        "run goes on without it"]


def test_a_runtime_error_that_cannot_say_itself_is_not_taken_for_out_of_memory():
    """The CPU allocator's out-of-memory is a RuntimeError told by its message."""
    from kdcore.failures import failure

    class UnsayableRuntime(RuntimeError):
        def __str__(self):
            return self.detail

    assert str(failure(UnsayableRuntime(), "the run")) == (
        "the run stopped: UnsayableRuntime: <its message raised AttributeError>; "
        "KDCORE_TRACEBACK=1 shows the traceback")
