"""Which code made a run (kdcore.provenance): the digests a history records, and the warnings of
a grid that keeps runs made by other code, a resume after an edit and a report that mixes
code versions."""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
import types
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner
from loguru import logger

from kdcore import PluginHost, load_recipe
from kdcore.cli import main
from kdcore.provenance import code_changes, code_digests, mixed_code, package_digest, recorded_code
from kdcore.testing import (
    InterruptAt,
    Interrupted,
    component,
    run_tiny,
    stage,
    teacher_stage,
    tiny_recipe,
    write_recipe,
)

RECIPES = Path(__file__).parents[1] / "recipes"


def _independent_digest(folder: Path) -> str:
    """The digest as the docstring states it, written out again."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.py")):
        h.update(str(f.relative_to(folder)).replace("\\", "/").encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


@pytest.fixture
def package(tmp_path, monkeypatch):
    """An importable package ``prov_pkg`` (two modules, one in a subpackage) and a module."""
    root = tmp_path / "src"
    (root / "prov_pkg" / "sub").mkdir(parents=True)
    (root / "prov_pkg" / "__init__.py").write_text("X = 1\n")
    (root / "prov_pkg" / "sub" / "__init__.py").write_text("")
    (root / "prov_pkg" / "sub" / "deep.py").write_text("Y = 2\n")
    (root / "prov_pkg" / "notes.txt").write_text("not source")
    (root / "prov_single.py").write_text("Z = 3\n")
    monkeypatch.syspath_prepend(str(root))
    import prov_pkg.sub.deep  # noqa: F401
    import prov_single  # noqa: F401

    yield root
    package_digest.cache_clear()
    for name in ("prov_pkg", "prov_pkg.sub", "prov_pkg.sub.deep", "prov_single"):
        sys.modules.pop(name, None)


def test_a_packages_digest_is_that_of_its_sources_by_path_and_bytes(package):
    assert package_digest("prov_pkg") == _independent_digest(package / "prov_pkg")
    assert package_digest("prov_pkg.sub.deep") == package_digest("prov_pkg")  # its top level
    single = hashlib.sha256(b"prov_single.py\0Z = 3\n\0").hexdigest()[:12]
    assert package_digest("prov_single") == single
    before = package_digest("prov_pkg")
    (package / "prov_pkg" / "sub" / "deep.py").write_text("Y = 3\n")
    assert package_digest("prov_pkg") == before  # what the process imported, once
    package_digest.cache_clear()
    assert package_digest("prov_pkg") != before
    (package / "prov_pkg" / "notes.txt").write_text("edited")  # not Python: not counted
    package_digest.cache_clear()
    assert package_digest("prov_pkg") == _independent_digest(package / "prov_pkg")
    (package / "prov_pkg" / "sub" / "deep.py").rename(package / "prov_pkg" / "deep.py")
    package_digest.cache_clear()  # the same bytes under another path: other code
    assert package_digest("prov_pkg") == _independent_digest(package / "prov_pkg")


def test_a_module_not_imported_or_a_source_that_cannot_be_read_has_no_digest(package):
    assert package_digest("prov_nowhere.sub") == ""  # not in sys.modules under that name
    assert package_digest("sys") == ""  # built into the interpreter: no file at all
    (package / "prov_pkg" / "gone.py").symlink_to(package / "missing.py")
    package_digest.cache_clear()
    assert package_digest("prov_pkg") == ""  # a dangling link: unreadable, never a crash


def test_a_namespace_package_has_no_digest(tmp_path, monkeypatch):
    (tmp_path / "prov_ns").mkdir()
    (tmp_path / "prov_ns" / "mod.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    import prov_ns.mod  # noqa: F401

    try:
        assert package_digest("prov_ns.mod") == ""
    finally:
        package_digest.cache_clear()
        sys.modules.pop("prov_ns", None), sys.modules.pop("prov_ns.mod", None)


def test_the_digests_cover_kdcore_and_the_plugins_a_recipe_uses():
    host = PluginHost()
    dists = {info.distribution for info in host.infos.values() if info.error is None}
    kdcore = package_digest("kdcore")
    amlkd = code_digests(load_recipe(RECIPES / "amlkd.toml"), host)
    assert amlkd["kdcore"] == kdcore
    # its components' packages, each the digest of its own folder
    for dist, folder in [("kdcore-lp", "kdcore_lp"), ("kdcore-selection", "kdcore_selection"),
                         ("kdcore-awe", "kdcore_awe"), ("kdcore-amlkd", "kdcore_amlkd")]:
        assert amlkd[dist] == _independent_digest(
            Path(importlib.import_module(folder).__file__).parent)
    ce = code_digests(load_recipe(RECIPES / "ce.toml"), host)
    assert "kdcore-lp" not in ce and "kdcore-smkd" not in ce  # installed, not used
    # a plugin with hooks that run in every run (kdcore-ff's observers) counts for every run
    assert ("kdcore-ff" in ce) is ("kdcore-ff" in dists)
    assert set(code_digests(load_recipe(RECIPES / "smkd.toml"), host)) == {
        *ce, "kdcore-smkd"}


@pytest.mark.parametrize(("kind", "name", "hooks", "counted"), [
    ("components", "ce", ["kdcore_add_components"], True),
    ("components", "kd", ["kdcore_add_components"], False),      # not in the recipe
    ("datasets", "digits", ["kdcore_add_datasets"], True),
    ("noise_models", "symmetric", ["kdcore_add_noise_models"], True),
    ("models", "mlp", ["kdcore_add_models"], True),
    ("augmentations", "flip", ["kdcore_add_augmentations"], True),
    ("loggers", "csv", ["kdcore_add_loggers"], True),
    ("loggers", "tensorboard", ["kdcore_add_loggers", "kdcore_configure"], False),
    ("datasets", "other", ["kdcore_batch_end"], True),           # an observer: every run
    ("datasets", "other", ["kdcore_run_start"], True),
])
def test_a_plugin_counts_when_the_recipe_takes_a_name_from_it_or_it_observes(
        package, kind, name, hooks, counted):
    from kdcore.plugins import PluginInfo

    recipe = load_recipe(RECIPES / "ce.toml", ['data.augment=[{name="flip"}]',
                                               'run.loggers=["csv"]'])
    infos = {"broken": PluginInfo("broken", "broken-dist", "1", provides={kind: [name]},
                                  error="failed to import"),
             "p": PluginInfo("p", "fake-dist", "1", provides={kind: [name]}, hooks=hooks)}
    host = types.SimpleNamespace(infos=infos, pm=types.SimpleNamespace(
        get_plugin=lambda n: sys.modules["prov_pkg.sub.deep"]))
    expected = {"kdcore": package_digest("kdcore")}
    if counted:
        expected["fake-dist"] = package_digest("prov_pkg")
    assert code_digests(recipe, host) == expected  # a plugin that failed to load: never
    object_host = types.SimpleNamespace(infos=infos, pm=types.SimpleNamespace(
        get_plugin=lambda n: Path()))  # a plugin object: its class's module
    assert code_digests(recipe, object_host).get("fake-dist") == (
        package_digest("pathlib") if counted else None)


def test_a_plugin_given_with_plugin_is_left_out_and_a_disabled_component_does_not_count():
    import kdcore

    class Watch:
        @kdcore.hookimpl
        def kdcore_epoch_end(self, ctx, epoch, metrics):
            pass

    host = PluginHost(extra=[Watch()])
    assert code_digests(load_recipe(RECIPES / "ce.toml"), host) == code_digests(
        load_recipe(RECIPES / "ce.toml"), PluginHost())
    off = load_recipe(RECIPES / "lp-lsh.toml", [
        f"stages.{s}.components.{c}.enabled=false" for s, c in _lp_components()])
    assert "kdcore-lp" not in code_digests(off, PluginHost())
    assert "kdcore-lp" in code_digests(load_recipe(RECIPES / "lp-lsh.toml"), PluginHost())


def _lp_components() -> list[tuple[str, str]]:
    recipe = load_recipe(RECIPES / "lp-lsh.toml")
    host = PluginHost()
    return [(s.name, c.name or c.use) for s in recipe.stages for c in s.components
            if host.infos[host.components.provider(c.use)].distribution == "kdcore-lp"]


@pytest.mark.parametrize(("recorded", "current", "changed"), [
    ({}, {"kdcore": "a"}, []),                                   # recorded nothing: unknown
    ({"kdcore": "a"}, {"kdcore": "a"}, []),
    ({"kdcore": "a", "kdcore-lp": "b"}, {"kdcore": "a", "kdcore-lp": "c"}, ["kdcore-lp"]),
    ({"kdcore": "a"}, {"kdcore": "a", "kdcore-lp": "b"}, ["kdcore-lp"]),  # now from a plugin
    ({"kdcore": "x", "kdcore-lp": "b"}, {"kdcore": "a"}, ["kdcore", "kdcore-lp"]),
])
def test_the_changes_are_the_distributions_whose_digests_differ(recorded, current, changed):
    assert code_changes(recorded, current) == changed


def _set_code(run_dir: Path, code: dict[str, str] | None) -> None:
    with h5py.File(run_dir / "history.h5", "r+") as f:
        setup = json.loads(f.attrs["setup"])
        if code is None:
            del setup["code"]
        else:
            setup["code"] = code
        f.attrs["setup"] = json.dumps(setup)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    """Two finished one-stage CE runs (seeds 0 and 1) of one variant, ``v/seed0``, ``v/seed1``."""
    root = tmp_path_factory.mktemp("prov")
    (root / "v").mkdir()
    runs = []
    for seed in (0, 1):
        run_tiny(tiny_recipe(stage("student", 1, ["student"], component("ce")), seed=seed,
                             train_subset=64), root / "v" / f"seed{seed}")
        runs.append(root / "v" / f"seed{seed}")
    return runs


def test_a_run_records_its_code_and_a_report_warns_when_runs_mixed_code(two_runs, tmp_path):
    a, b = two_runs
    assert recorded_code(a) == recorded_code(b) and recorded_code(a)["kdcore"] == (
        package_digest("kdcore"))
    assert mixed_code(two_runs) is None
    assert recorded_code(tmp_path) == {}  # no history: nothing recorded
    (tmp_path / "history.h5").write_bytes(b"not hdf5")
    assert recorded_code(tmp_path) == {}
    original = recorded_code(b)
    try:
        _set_code(b, None)  # a run made before kdcore recorded it: nothing to compare
        assert recorded_code(b) == {} and mixed_code(two_runs) is None
        _set_code(b, {**original, "kdcore": "0" * 12})
        warning = (f"the runs were made by different code: kdcore differs between {a} and {b}; "
                   "rerun those made before the edit to compare like with like")
        assert mixed_code(two_runs) == warning
        result = CliRunner().invoke(main, ["report", str(a.parent)])
        assert result.exit_code == 0, result.output
        assert f"kdcore: warning: {warning}" in result.output
        _set_code(b, {**original, "kdcore-extra": "1" * 12})  # only one run has it: agree
        assert mixed_code(two_runs) is None
    finally:
        _set_code(b, original)


def _warnings() -> tuple[list[str], int]:
    lines: list[str] = []
    return lines, logger.add(lambda m: lines.append(m.rstrip("\n")), level="WARNING",
                             format="{message}")


def _said(output: str) -> list[str]:
    """The warnings of other code in a command's output, without the log's time."""
    return [line.split(" ", 1)[1] for line in output.splitlines() if "other code" in line]


def _finished_grid(tmp_path: Path, seeds: str) -> tuple[list[str], Path]:
    """``kdcore ablate``'s arguments for a one-stage CE grid of ``seeds``, run once, and its
    folder."""
    recipe = write_recipe(tiny_recipe(stage("student", 1, ["student"], component("ce")),
                                      train_subset=64), tmp_path / "ce.toml")
    out = tmp_path / "grid"
    args = ["ablate", str(recipe), "--seeds", seeds, "--out", str(out)]
    assert CliRunner().invoke(main, args).exit_code == 0
    return args, out


def test_a_grid_says_which_runs_already_there_were_made_by_other_code(tmp_path):
    args, out = _finished_grid(tmp_path, "0,1")
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and _said(again.output) == []  # the same code: nothing said
    seed1 = out / "ce" / "seed1"
    _set_code(seed1, {**recorded_code(seed1), "kdcore": "0" * 12})
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "2 of 2 runs already finished: skipped" in again.output
    assert _said(again.output) == [
        f"1 of the grid's runs already there were made by other code (kdcore changed since: "
        f"{seed1}); finished ones stand as they are, interrupted ones resume with this code; "
        f"remove them to run them again"]


def test_many_runs_of_other_code_are_named_three_then_counted(tmp_path):
    args, out = _finished_grid(tmp_path, "0,1,2,3")
    for seed in range(4):
        run_dir = out / "ce" / f"seed{seed}"
        _set_code(run_dir, {**recorded_code(run_dir), "kdcore-x": "2" * 12, "kdcore": "3"})
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    runs = ", ".join(str(out / "ce" / f"seed{s}") for s in range(3))
    assert _said(again.output) == [
        f"4 of the grid's runs already there were made by other code (kdcore, kdcore-x "
        f"changed since: {runs}, ...); finished ones stand as they are, interrupted ones "
        f"resume with this code; remove them to run them again"]


@pytest.mark.parametrize("edited", [True, False])
def test_a_resume_says_whether_the_code_changed_since_the_run_started(tmp_path, edited):
    data = tiny_recipe(teacher_stage(2), train_subset=64)
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        run_tiny(data, out, plugins=[InterruptAt(epoch=1, batch=0)])
    if edited:
        _set_code(out, {**recorded_code(out), "kdcore": "0" * 12})
    lines, sink = _warnings()
    try:
        run_tiny(data, out, resume=True)
    finally:
        logger.remove(sink)
    said = [line for line in lines if "changed since" in line]
    assert said == (["--resume: kdcore changed since the run started; its epochs from here on "
                     "are this code's"] if edited else [])
    if edited:
        assert recorded_code(out)["kdcore"] == "0" * 12  # the record is the run's start's
