"""kdcore.api (docs/api.md): argument handling of run and ablate (the engine replaced by a stub:
no training), the lazy exports, and load_history against a history written here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kdcore
from kdcore import api, engine, grid
from kdcore.history_writer import HistoryWriter
from kdcore.ledger import Column
from kdcore.testing import component, stage, teacher_stage, tiny_recipe, write_recipe


def _data() -> dict:
    return tiny_recipe(teacher_stage(1), stage("student", 1, ["student"], component("hinton_kd")),
                       train_subset=120)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """run_recipe replaced: records its arguments, writes a summary, returns it."""
    seen: list[dict] = []

    def fake(recipe, *, out, resume, host, progress, overrides, overwrite=False):
        seen.append({"recipe": recipe, "out": out, "resume": resume, "overwrite": overwrite,
                     "host": host, "progress": progress, "overrides": overrides})
        Path(out).mkdir(parents=True, exist_ok=True)
        summary = {"seed": recipe.run.seed}
        (Path(out) / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(engine, "run_recipe", fake)
    return seen


@pytest.mark.parametrize("form", ["path", "str", "recipe", "dict"])
def test_run_takes_a_path_a_recipe_or_a_dict_and_applies_overrides(tmp_path, calls, form):
    path = write_recipe(_data(), tmp_path / "tiny.toml")
    recipe = {"path": path, "str": str(path), "recipe": kdcore.load_recipe(path),
              "dict": _data()}[form]
    sets = ["run.seed=7", "data.batch_size=32"]
    result = kdcore.run(recipe, overrides=sets, out=tmp_path / "run")
    (call,) = calls
    assert call["recipe"].run.seed == 7 and call["recipe"].data.batch_size == 32
    assert call["overrides"] == sets and call["out"] == str(tmp_path / "run")
    assert (call["resume"], call["overwrite"], call["progress"]) == (False, False, False)
    assert result == api.RunResult(summary={"seed": 7}, run_dir=tmp_path / "run")
    with pytest.raises(AttributeError):  # frozen
        result.run_dir = tmp_path  # type: ignore[misc]


def test_run_defaults_to_output_dir_and_name_and_passes_its_flags(tmp_path, calls):
    data = _data()
    data["run"] |= {"output_dir": str(tmp_path / "runs"), "name": "mine"}
    class Plugin:  # a plugin implements at least one hook
        @kdcore.hookimpl
        def kdcore_run_start(self, ctx):
            pass

    plugin = Plugin()
    result = kdcore.run(data, resume=True, overwrite=True, progress=True, plugins=[plugin])
    assert result.run_dir == tmp_path / "runs" / "mine"
    (call,) = calls
    assert (call["resume"], call["overwrite"], call["progress"]) == (True, True, True)
    assert call["host"].pm.is_registered(plugin)


def test_a_recipe_object_without_overrides_is_used_as_it_is(tmp_path):
    recipe = kdcore.load_recipe(write_recipe(_data(), tmp_path / "tiny.toml"))
    assert api.as_recipe(recipe) is recipe
    assert api.as_recipe(recipe, ["run.seed=3"]).source == recipe.source


@pytest.mark.parametrize(("call", "message"), [
    # a lone string was iterated: "run.seed=1" became the override "r", seeds="10" seeds 1, 0
    ({"overrides": "run.seed=1"}, "overrides takes a list, such as ['run.seed=1'], not str "
                                  "'run.seed=1'"),
    ({"overrides": ["run.seed=1", 2]}, "overrides takes strings, such as ['run.seed=1']; got "
                                       "int 2"),
    ({"plugins": "mod:P"}, "plugins takes a list, such as [MyPlugin()], not str 'mod:P'"),
    ({"plugins": object()}, "plugins takes a list, such as [MyPlugin()], not object <object"),
    ({"out": 5}, "out takes a path (a string or a pathlib.Path), not int 5"),  # made ./5
    ({"out": ""}, "out takes a path (a string or a pathlib.Path), not str ''"),
    ({"resume": "no"}, "resume takes True or False, not str 'no'"),  # "no" is truthy
    ({"overwrite": 1}, "overwrite takes True or False, not int 1"),
    ({"progress": None}, "progress takes True or False, not NoneType None"),
    ({"overrides": ["x" * 100]}, "override 'xxxx"),  # a string, but not an override
])
def test_run_refuses_arguments_of_the_wrong_type_naming_the_argument(tmp_path, calls, call,
                                                                     message):
    args = {"out": tmp_path / "run", **call}
    with pytest.raises(kdcore.KdcoreError, match="^" + re.escape(message)):
        kdcore.run(_data(), **args)
    assert not calls and not Path("5").exists()


@pytest.mark.parametrize(("call", "message"), [
    # a path or plain data: AttributeError 'str' object has no attribute 'source'
    ({"recipe": "recipes/ce.toml"}, "run_recipe takes a kdcore.Recipe, not str "
                                    "'recipes/ce.toml'; kdcore.run takes a recipe file or "
                                    "recipe data as they are (kdcore.load_recipe reads a file "
                                    "into a Recipe)"),
    ({"recipe": Path("r.toml")}, "run_recipe takes a kdcore.Recipe, not PosixPath"),
    ({"recipe": {"run": {}}}, "run_recipe takes a kdcore.Recipe, not dict {'run': {}}; kdcore"),
    ({"recipe": 5}, "run_recipe takes a kdcore.Recipe, not int 5"),
    ({"host": "x"}, "run_recipe's host takes a kdcore.PluginHost or None, not str 'x'"),
    ({"out": 5}, "out takes a path (a string or a pathlib.Path), not int 5"),  # a TypeError
    ({"resume": "no"}, "resume takes True or False, not str 'no'"),
    ({"overwrite": 1}, "overwrite takes True or False, not int 1"),
    ({"progress": "yes"}, "progress takes True or False, not str 'yes'"),
    ({"overrides": "run.seed=1"}, "overrides takes a list, such as ['run.seed=1'], not str "
                                  "'run.seed=1'"),
])
def test_run_recipe_refuses_arguments_of_the_wrong_type_naming_the_argument(tmp_path, call,
                                                                            message):
    from kdcore.recipe import recipe_from_dict

    args = {"recipe": recipe_from_dict(_data()), "out": str(tmp_path / "run"), **call}
    with pytest.raises(kdcore.KdcoreError, match="^" + re.escape(message)):
        kdcore.run_recipe(args.pop("recipe"), **args)
    assert not (tmp_path / "run").exists()


def test_dry_setup_refuses_a_path_for_a_recipe_and_needs_a_host(tmp_path):
    from kdcore.recipe import recipe_from_dict

    with pytest.raises(kdcore.KdcoreError, match=re.escape(
            "dry_setup takes a kdcore.Recipe, not str 'r.toml'; kdcore.run takes")):
        kdcore.dry_setup("r.toml", kdcore.PluginHost())
    with pytest.raises(kdcore.KdcoreError) as exc:  # no hint for what is no recipe at all
        kdcore.dry_setup(5, kdcore.PluginHost())
    assert str(exc.value) == "dry_setup takes a kdcore.Recipe, not int 5"
    with pytest.raises(kdcore.KdcoreError, match=re.escape(
            "dry_setup's host takes a kdcore.PluginHost, not NoneType None")):
        kdcore.dry_setup(recipe_from_dict(_data()), None, out=str(tmp_path / "run"))


@pytest.mark.parametrize(("call", "message"), [
    ({"seeds": "10"}, "seeds takes a list, such as [0, 1, 2], not str '10'"),
    ({"seeds": 3}, "seeds takes a list, such as [0, 1, 2], not int 3"),
    ({"seeds": [1, 1.5]}, "seeds takes integers; got float 1.5"),
    ({"seeds": [True]}, "seeds takes integers; got bool True"),
    ({"variants": "a:run.seed=1"}, "variants takes a list, such as "
                                   "['lr-high:models.student.optimizer.lr=0.1'], not str"),
    ({"variants": [("a", "run.seed=1")]}, "variants takes 'name:key=value;...' strings, "
                                          "(name, [overrides]) pairs or kdcore.grid.Variant "
                                          "objects; got tuple ('a', 'run.seed=1')"),
    ({"variants": [3]}, "variants takes 'name:key=value;...' strings"),
    ({"overrides": "run.seed=1"}, "overrides takes a list, such as ['run.seed=1'], not str "
                                  "'run.seed=1'"),
    ({"jobs": 0}, "jobs takes a positive integer, not int 0"),
    ({"jobs": "2"}, "jobs takes a positive integer, not str '2'"),
    ({"jobs": True}, "jobs takes a positive integer, not bool True"),
    ({"out": None}, "out takes a path (a string or a pathlib.Path), not NoneType None"),
    ({"echo": "x"}, "echo takes a function (print, say) or None, not str 'x'"),
])
def test_ablate_refuses_arguments_of_the_wrong_type_naming_the_argument(tmp_path, calls, call,
                                                                        message):
    args = {"out": tmp_path / "grid", **call}
    with pytest.raises(kdcore.KdcoreError, match="^" + re.escape(message)):
        kdcore.ablate(_data(), **args)
    assert not calls and not (tmp_path / "grid").exists()


def test_ablate_takes_seeds_variants_and_jobs_of_the_right_types(tmp_path, calls):
    result = kdcore.ablate(_data(), seeds=(3,), variants=[("a", ("run.seed=1",)), "b:"],
                           jobs=1, out=str(tmp_path / "grid"))
    assert sorted(result.summaries()) == [("a", 3), ("b", 3)]


def test_a_plugin_named_by_a_string_is_imported_as_plugin_does(tmp_path, calls, monkeypatch):
    (tmp_path / "my_plugin.py").write_text(
        "import kdcore\n"
        "class P:\n"
        "    @kdcore.hookimpl\n"
        "    def kdcore_run_start(self, ctx):\n"
        "        pass\n"
        "PLUGIN = P()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    kdcore.run(_data(), out=tmp_path / "run", plugins=["my_plugin:PLUGIN"])
    import my_plugin

    assert calls[0]["host"].pm.is_registered(my_plugin.PLUGIN)
    with pytest.raises(kdcore.KdcoreError, match="cannot import plugin 'no_such_module:P'"):
        kdcore.run(_data(), out=tmp_path / "run2", plugins=["no_such_module:P"])


def test_load_recipe_and_label_issues_refuse_arguments_of_the_wrong_type(tmp_path):
    path = write_recipe(_data(), tmp_path / "tiny.toml")
    with pytest.raises(kdcore.KdcoreError, match=r"^load_recipe takes a recipe file's path, "
                                                  r"not int 5$"):
        kdcore.load_recipe(5)
    with pytest.raises(kdcore.KdcoreError, match=r"^load_recipe's overrides take a list, such "
                                                  r"as \['run.seed=1'\], not str 'run.seed=1'$"):
        kdcore.load_recipe(path, "run.seed=1")
    assert kdcore.load_recipe(str(path), ("run.seed=4",)).run.seed == 4
    with pytest.raises(kdcore.KdcoreError, match=r"^run takes a path .*, not int 5$"):
        kdcore.label_issues(5)
    with pytest.raises(kdcore.KdcoreError, match=r"^model takes a model role such as "
                                                  r"'student', not int 3$"):
        kdcore.label_issues(tmp_path, model=3)


def test_load_history_and_history_refuse_what_is_not_a_path():
    for read, name in ((kdcore.load_history, "run_dir"), (kdcore.History, "History")):
        with pytest.raises(kdcore.KdcoreError, match=f"^{name} takes a path .*, not int 5$"):
            read(5)
        with pytest.raises(kdcore.KdcoreError, match=f"^{name} takes a path .*, not str ''$"):
            read("")  # the current directory


def test_a_value_shown_in_a_refusal_is_cut_at_60_characters():
    from kdcore.errors import shown

    assert shown("a" * 58) == f"str '{'a' * 58}'"  # its repr is 60 characters
    assert shown("a" * 59) == f"str '{'a' * 56}..."
    with pytest.raises(kdcore.KdcoreError, match=r"^overrides takes a list, such as "
                                                  r"\['run.seed=1'\], not str 'x{56}\.\.\.$"):
        kdcore.run(_data(), overrides="x" * 100, out="never")


def test_every_variant_is_checked_not_only_the_first(tmp_path, calls):
    with pytest.raises(kdcore.KdcoreError, match="variants takes 'name:key=value;...'"):
        kdcore.ablate(_data(), variants=["a:", ("b", []), 3], out=tmp_path / "grid")


@pytest.mark.parametrize("bad", ["no stages", "bad value", "bad override", "no file", "a number"])
def test_a_bad_recipe_raises_kdcore_error(tmp_path, calls, bad):
    data, sets = _data(), []
    recipe: object = data
    if bad == "no stages":
        data["stages"] = []
    elif bad == "bad value":
        data["data"]["batch_size"] = 0
    elif bad == "bad override":
        sets = ["run.seed"]
    elif bad == "no file":
        recipe = tmp_path / "missing.toml"
    else:
        recipe = 3
    with pytest.raises(kdcore.KdcoreError):
        kdcore.run(recipe, overrides=sets, out=tmp_path / "run")
    assert not calls


def test_ablate_plans_with_ablate_py_and_reports_every_run(tmp_path, calls):
    path = write_recipe(_data(), tmp_path / "tiny.toml")
    result = kdcore.ablate(path, variants=["a:run.threads=1", ("b", ["run.threads=2"])],
                           seeds=[0, 1], overrides=["data.batch_size=32"], out=tmp_path / "g",
                           echo=lambda line: None)
    assert (result.ran, result.skipped, result.failed) == (4, 0, 0)
    assert [(r.variant, r.seed, r.run_dir) for r in result.runs] == [
        (v, s, tmp_path / "g" / v / f"seed{s}") for v in "ab" for s in (0, 1)]
    assert [c["overrides"] for c in calls][:2] == [
        ["data.batch_size=32", "run.threads=1", "run.seed=0"],
        ["data.batch_size=32", "run.threads=1", "run.seed=1"]]
    assert all(c["recipe"].data.batch_size == 32 for c in calls)
    assert result.summaries()[("b", 1)] == {"seed": 1}
    again = kdcore.ablate(path, variants=["a:run.threads=1", ("b", ["run.threads=2"])],
                          seeds=[0, 1], out=tmp_path / "g", echo=lambda line: None)
    assert (again.ran, again.skipped, len(calls)) == (0, 4, 4)


def test_ablate_reads_a_grid_file_and_takes_recipe_data(tmp_path, calls):
    write_recipe(_data(), tmp_path / "tiny.toml")
    (tmp_path / "grid.toml").write_text(
        'recipe = "tiny.toml"\nseeds = [3]\n[[variant]]\nname = "v"\nset = ["run.threads=1"]\n')
    result = kdcore.ablate(tmp_path / "grid.toml", out=tmp_path / "g", echo=lambda line: None)
    assert [(r.variant, r.seed, r.summary) for r in result.runs] == [("v", 3, {"seed": 3})]
    data = _data()
    data["run"]["name"] = "from-dict"
    result = kdcore.ablate([data, grid.Variant("w", str(tmp_path / "tiny.toml"))],
                           out=tmp_path / "h", echo=lambda line: None)
    assert [r.variant for r in result.runs] == ["from-dict", "w"]
    assert (tmp_path / "h" / ".recipes" / "from-dict.toml").is_file()


def test_ablate_counts_a_failed_run_and_refuses_nothing_or_twins(tmp_path, monkeypatch):
    def fail(spec, resume=None, host=None):
        raise kdcore.KdcoreError("boom")

    monkeypatch.setattr(grid, "run_spec", fail)
    path = write_recipe(_data(), tmp_path / "tiny.toml")
    result = kdcore.ablate(path, out=tmp_path / "g", echo=lambda line: None)
    assert (result.ran, result.failed, result.runs[0].summary) == (0, 1, None)
    with pytest.raises(kdcore.KdcoreError, match="nothing to run"):
        kdcore.ablate([], out=tmp_path / "g")
    with pytest.raises(kdcore.KdcoreError, match="two variants"):
        kdcore.ablate(path, variants=["a:", "a:run.seed=1"], out=tmp_path / "g")


def test_the_exports_are_lazy_and_are_the_api_functions():
    code = ("import sys, kdcore; assert 'kdcore.api' not in sys.modules; "
            "assert {'run', 'ablate', 'load_history'} <= set(kdcore.__all__); "
            "import kdcore.engine, kdcore.grid, kdcore.runstate; import kdcore.api as api; "
            "assert kdcore.run is api.run and kdcore.ablate is api.ablate; "
            "assert kdcore.load_history is api.load_history; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


# -- load_history -----------------------------------------------------------------------------

N, C = 5, 3
TARGETS = [np.eye(C, dtype=np.float16)[[0, 1, 2, 0, 1]] * np.float16(0.75),
           np.full((N, C), 1 / 3, dtype=np.float16)]
MASK = np.array([True, False, True, True, False])
LOGITS = np.arange(N * C, dtype=np.float16).reshape(N, C)[::-1].copy()


def _write_history(run_dir: Path) -> None:
    run_dir.mkdir()
    w = HistoryWriter(run_dir / "history.h5")
    recipe = kdcore.load_recipe(write_recipe(_data(), run_dir / "r.toml"))
    w.create(recipe_toml=recipe.to_toml(),
             versions={"kdcore": "0"}, num_classes=C, class_names=["a", "b", "c"],
             constants={"noisy_label": torch.tensor([0, 1, 2, 2, 1], dtype=torch.int32),
                        "clean_label": torch.tensor([0, 1, 2, 0, 1], dtype=torch.int32),
                        "clean_mask": torch.tensor([True, True, True, False, True]),
                        "sample_id": torch.tensor([10, 11, 12, 13, 14], dtype=torch.int32)},
             transition_matrix=torch.eye(C))
    w.append_epoch(stage="teacher", epoch=0, metrics={"val/teacher/acc": 0.25, "time/epoch": 1.5},
                   columns={"target": Column(torch.from_numpy(TARGETS[0]), "ce", "target"),
                            "select/small_loss": Column(torch.from_numpy(MASK), "sl", "mask")})
    w.append_epoch(stage="student", epoch=0, metrics={"val/student/acc": 0.125},
                   columns={"target": Column(torch.from_numpy(TARGETS[1]), "kd", "target"),
                            "logits/student": Column(torch.from_numpy(LOGITS), "kd", "value")})


def test_load_history_metrics_and_metadata(tmp_path):
    _write_history(tmp_path / "run")
    h = kdcore.load_history(tmp_path / "run")
    m = h.metrics
    assert list(m.columns) == ["stage", "epoch", "time/epoch", "val/student/acc",
                               "val/teacher/acc"]
    assert m.index.name == "row" and list(m.index) == [0, 1]
    assert list(m["stage"]) == ["teacher", "student"] and list(m["epoch"]) == [0, 0]
    assert m["val/teacher/acc"][0] == 0.25 and np.isnan(m["val/teacher/acc"][1])
    assert m["val/student/acc"][1] == 0.125 and m["time/epoch"][0] == 1.5
    assert (h.num_classes, h.class_names) == (C, ["a", "b", "c"])
    assert h.columns == ["logits/student", "select/small_loss", "target"]
    assert h.recipe.data.train_subset == 120
    assert h.data("sample_id").tolist() == [10, 11, 12, 13, 14]
    assert kdcore.load_history(tmp_path / "run" / "history.h5").metrics.equals(m)
    with pytest.raises(kdcore.KdcoreError, match="no data"):
        h.data("nope")
    with pytest.raises(kdcore.KdcoreError):
        kdcore.load_history(tmp_path / "nowhere")


def test_load_history_columns_in_long_form(tmp_path):
    import pandas as pd

    _write_history(tmp_path / "run")
    h = kdcore.load_history(tmp_path / "run")
    t = h.column("target")
    assert list(t.columns) == ["row", "stage", "epoch", "ledger_row", "sample_id", "clean_label",
                               "noisy_label", "label", "confidence"]
    assert t["row"].tolist() == [0] * N + [1] * N
    assert t["stage"].tolist() == ["teacher"] * N + ["student"] * N
    assert t["ledger_row"].tolist() == list(range(N)) * 2
    assert t["sample_id"].tolist() == [10, 11, 12, 13, 14] * 2
    assert t["noisy_label"].tolist() == [0, 1, 2, 2, 1] * 2
    # row 1's uniform targets name no label (argmax had named class 0)
    assert t["label"].isna().tolist() == [False] * N + [True] * N
    assert t["label"][:N].tolist() == [*TARGETS[0].argmax(1)]
    assert t["confidence"].to_numpy().tolist() == [*TARGETS[0].max(1).astype(np.float32),
                                                   *TARGETS[1].max(1).astype(np.float32)]
    full = h.column("target", full=True, epoch=-1)
    assert full["row"].tolist() == [1] * N
    got = full[["class_0", "class_1", "class_2"]].to_numpy()
    assert got.dtype == np.float32 and np.array_equal(got, TARGETS[1].astype(np.float32))
    mask = h.column("select/small_loss")
    # row 1: no component wrote it; its fill (False) read as "not selected"
    assert str(mask["value"].dtype) == "boolean"
    assert mask["value"].tolist() == [*MASK, *([pd.NA] * N)]
    assert mask["value"].isna().tolist() == [False] * N + [True] * N
    assert str(t["label"].dtype) == "Int64"
    # row 0 of the logits: not written (NaN fill), so no argmax (numpy's of NaN is 0)
    every = h.column("logits/student")
    assert every["argmax"].isna().tolist() == [True] * N + [False] * N
    assert np.isnan(every["max"].to_numpy()[:N]).all()
    assert every["max"].to_numpy()[N:].tolist() == LOGITS.max(1).astype(np.float32).tolist()
    logits = h.column("logits/student", epoch=1)
    assert logits["argmax"].tolist() == LOGITS.argmax(1).tolist()
    assert logits["max"].tolist() == LOGITS.max(1).astype(np.float32).tolist()
    with pytest.raises(kdcore.KdcoreError, match="no column 'nope' in .*; columns: "
                                                 "logits/student, select/small_loss, target$"):
        h.column("nope")
    with pytest.raises(KeyError):  # as a missing name is in Python, for code that looks it up
        h.data("nope")
    assert h.column("target", epoch=-2)["row"].tolist() == [0] * N  # the first of two rows
    for row in (2, -3):
        with pytest.raises(kdcore.KdcoreError, match=f"epoch row {row} out of range: the "
                                                     "history has 2 rows"):
            h.column("target", epoch=row)


def test_an_epoch_row_or_a_name_of_the_wrong_type_is_one_error(tmp_path):
    """``epoch=True`` read row 1, ``epoch=1.5`` and ``"1"`` and a name that is not a string were
    an IndexError, a TypeError or h5py's "Field names only allowed for compound types", and
    ``full="no"`` showed the full table; numpy integers (a frame's row numbers) are rows."""
    _write_history(tmp_path / "run")
    frames = kdcore.load_history(tmp_path / "run")
    history = kdcore.History(tmp_path / "run")
    assert frames.column("target", epoch=np.int64(1))["row"].tolist() == [1] * N
    assert np.array_equal(history.column("target", np.int32(-2)), TARGETS[0].astype(np.float32))
    assert np.array_equal(history.column("target", 1), TARGETS[1].astype(np.float32))
    read_row = [lambda e: frames.column("target", epoch=e),
                lambda e: history.column("target", e)]
    for read in read_row:
        for epoch, shown in ((True, "bool True"), (1.5, "float 1.5"), ("1", "str '1'"),
                             (np.float64(1.0), "float64 np.float64(1.0)")):
            with pytest.raises(kdcore.KdcoreError) as err:
                read(epoch)
            assert str(err.value) == ("epoch takes an epoch row, an integer (negative counts "
                                      f"from the end), not {shown}")
        for row in (2, -3):
            with pytest.raises(kdcore.KdcoreError, match=f"^epoch row {row} out of range: the "
                                                         "history has 2 rows$"):
                read(row)
    with pytest.raises(kdcore.KdcoreError, match="^full takes True or False, not str 'no'$"):
        frames.column("target", full="no")
    for method, what in ((history.metric, "metric"), (history.column, "column"),
                         (history.data, "data array"), (history.producers, "column"),
                         (history.column_kind, "column")):
        for name, shown in ((5, "int 5"), (None, "NoneType None"), (b"target", "bytes b'target'")):
            with pytest.raises(kdcore.KdcoreError) as err:
                method(name)
            assert str(err.value) == f"a {what} is named by a string, not {shown}"


def test_load_history_without_pandas_says_what_to_install(tmp_path, monkeypatch):
    _write_history(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(kdcore.KdcoreError, match=r"install kdcore\[analysis\]"):
        kdcore.load_history(tmp_path / "run")


def test_a_nan_row_of_a_class_column_has_no_argmax(tmp_path):
    """numpy's argmax of a row holding NaN is the NaN's index: it read as a class."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    w = HistoryWriter(run_dir / "history.h5")
    recipe = kdcore.load_recipe(write_recipe(_data(), run_dir / "r.toml"))
    w.create(recipe_toml=recipe.to_toml(), versions={"kdcore": "0"}, num_classes=C,
             class_names=["a", "b", "c"], constants={}, transition_matrix=torch.eye(C))
    logits = torch.tensor([[0.0, 2.0, 1.0], [float("nan"), 0.0, 5.0]])
    w.append_epoch(stage="teacher", epoch=0, metrics={},
                   columns={"logits/teacher": Column(logits, "ce", "value"),
                            "loss/ce": Column(torch.tensor([0.5, 1.5]), "ce", "value")})
    # values with no producer: kept in the file, not a value of that epoch
    w.append_epoch(stage="teacher", epoch=1, metrics={},
                   columns={"logits/teacher": Column(logits.nan_to_num(), "", "value"),
                            "loss/ce": Column(torch.tensor([0.5, 1.5]), "", "value")})
    h = kdcore.load_history(run_dir)
    frame = h.column("logits/teacher")
    assert frame["argmax"].isna().tolist() == [False, True, True, True]
    assert frame["argmax"][0] == 1 and frame["max"][0] == 2.0
    assert np.isnan(frame["max"].to_numpy()[1:]).all()
    full = h.column("logits/teacher", full=True)
    assert np.isnan(full["class_1"].to_numpy()[2:]).all() and full["class_1"][0] == 2.0
    assert h.column("loss/ce")["value"].tolist()[:2] == [0.5, 1.5]
    assert np.isnan(h.column("loss/ce")["value"].to_numpy()[2:]).all()


def test_a_column_a_history_skip_kept_out_is_named_as_such(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    w = HistoryWriter(run_dir / "history.h5")
    data = _data()
    data["run"] = {**data.get("run", {}), "history_skip": ["logits/*"]}
    recipe = kdcore.load_recipe(write_recipe(data, run_dir / "r.toml"))
    w.create(recipe_toml=recipe.to_toml(), versions={"kdcore": "0"}, num_classes=C,
             class_names=["a", "b", "c"], constants={}, transition_matrix=torch.eye(C))
    w.append_epoch(stage="teacher", epoch=0, metrics={},
                   columns={"loss/ce": Column(torch.tensor([0.5, 1.5]), "ce", "value")})
    h = kdcore.load_history(run_dir)
    with pytest.raises(kdcore.KdcoreError) as err:
        h.column("logits/teacher")
    assert str(err.value) == (f"no column 'logits/teacher' in {run_dir / 'history.h5'} (the "
                              "run's run.history_skip 'logits/*' kept it out); columns: loss/ce")
    with pytest.raises(kdcore.KdcoreError) as err:
        h.column("loss/kd")
    assert str(err.value).endswith("history.h5; columns: loss/ce")
    with pytest.raises(kdcore.KdcoreError) as err:
        h.column(5)
    assert str(err.value) == f"no column '5' in {run_dir / 'history.h5'}; columns: loss/ce"


# -- as_recipe and ablate: what reaches the runs -------------------------------------------------


def test_as_recipe_names_its_argument_and_leaves_the_callers_data_alone(tmp_path):
    with pytest.raises(kdcore.KdcoreError, match=r"^overrides takes a list, such as "
                                                  r"\['run.seed=1'\], not str 'run.seed=1'$"):
        api.as_recipe(_data(), "run.seed=1")
    with pytest.raises(kdcore.KdcoreError, match=r"^a recipe is a file path, a kdcore.Recipe "
                                                  r"or a dict, not int$"):
        api.as_recipe(3)
    data = _data()
    recipe = api.as_recipe(data, ["data.batch_size=32", "models.student.params.hidden=[8]"])
    assert recipe.data.batch_size == 32 and recipe.models["student"].params["hidden"] == [8]
    assert data == _data()  # the nested tables the overrides changed are copies


def test_ablate_checks_every_plan_before_any_run(tmp_path, calls):
    good, bad = _data(), _data()
    good["run"]["name"], bad["run"]["name"] = "good", "bad"
    bad["stages"][1]["components"][0]["params"] = {"temperature": -1.0}
    with pytest.raises(kdcore.KdcoreError, match="temperature"):
        kdcore.ablate([good, bad], out=tmp_path / "g", echo=lambda line: None)
    assert not calls


def test_ablate_hands_every_run_one_plugin_host_and_whether_it_resumes(tmp_path, calls):
    from kdcore.checkpoint import CHECKPOINT
    from kdcore.plugins import PluginHost

    path = write_recipe(_data(), tmp_path / "tiny.toml")
    (tmp_path / "g" / "tiny" / "seed1").mkdir(parents=True)
    (tmp_path / "g" / "tiny" / "seed1" / CHECKPOINT).write_bytes(b"")  # an interrupted run
    lines: list[str] = []
    result = kdcore.ablate(path, seeds=[0, 1], out=tmp_path / "g", echo=lines.append)
    assert [(c["resume"], c["recipe"].run.seed) for c in calls] == [(False, 0), (True, 1)]
    assert isinstance(calls[0]["host"], PluginHost) and calls[1]["host"] is calls[0]["host"]
    assert lines[0] == "[1/2] tiny seed 0: starting" and lines[2] == "[2/2] tiny seed 1: resuming"
    assert result.out == tmp_path / "g" and (result.ran, result.failed) == (2, 0)


def test_ablate_passes_jobs_to_the_grid(tmp_path, monkeypatch):
    seen = []

    def run_grid(specs, *, jobs, echo, in_process):
        seen.append((len(specs), jobs))
        return {"ran": 0, "skipped": 0, "failed": len(specs)}

    monkeypatch.setattr(grid, "run_grid", run_grid)
    result = kdcore.ablate(_data(), seeds=[0, 1, 2], jobs=3, out=tmp_path / "g")
    assert seen == [(3, 3)] and result.failed == 3 and result.summaries() == {}


def test_ablate_variants_of_every_kind_on_every_recipe(tmp_path, calls):
    a = write_recipe(_data(), tmp_path / "a.toml")
    b = write_recipe(_data(), tmp_path / "b.toml")
    variant = grid.Variant("obj", "ignored.toml", ["run.threads=1"])
    result = kdcore.ablate([a], variants=["s:run.threads=2", ("t", ["run.threads=3"]), variant],
                           out=tmp_path / "g", echo=lambda line: None)
    assert [(r.variant, r.seed) for r in result.runs] == [("s", 0), ("t", 0), ("obj", 0)]
    assert [c["overrides"] for c in calls] == [["run.threads=2", "run.seed=0"],
                                               ["run.threads=3", "run.seed=0"],
                                               ["run.threads=1", "run.seed=0"]]
    assert all(c["recipe"].source == str(a) for c in calls)
    # without variants, each recipe is one, named after its file; recipe data after run.name
    data_a, data_b = _data(), _data()
    data_a["run"]["name"], data_b["run"]["name"] = "da", "db"
    both = kdcore.ablate([a, b, data_a, data_b], out=tmp_path / "h", echo=lambda line: None)
    assert [r.variant for r in both.runs] == ["a", "b", "da", "db"]
    assert sorted(p.name for p in (tmp_path / "h" / ".recipes").iterdir()) == ["da.toml",
                                                                             "db.toml"]
    # variants of several recipes: named after their recipe (they went in one folder)
    several = kdcore.ablate([a, data_b], variants=["s:run.threads=2", variant],
                            out=tmp_path / "k", echo=lambda line: None)
    assert [r.variant for r in several.runs] == ["a-s", "a-obj", "db-s", "db-obj"]
    assert [c["overrides"] for c in calls[-4:]] == [["run.threads=2", "run.seed=0"],
                                                    ["run.threads=1", "run.seed=0"]] * 2


def test_a_grid_file_with_every_key_beside_a_recipe(tmp_path, calls):
    write_recipe(_data(), tmp_path / "tiny.toml")
    other = write_recipe(_data(), tmp_path / "other.toml")
    (tmp_path / "grid.toml").write_text(
        'recipe = "tiny.toml"\nseeds = [4]\nset = ["run.threads=1"]\n'
        '[[variant]]\nname = "v"\nset = ["data.batch_size=32"]\n')
    result = kdcore.ablate([other, tmp_path / "grid.toml"], out=tmp_path / "g",
                           echo=lambda line: None)
    assert [(r.variant, r.seed) for r in result.runs] == [("other", 4), ("v", 4)]
    assert calls[1]["overrides"] == ["run.threads=1", "data.batch_size=32", "run.seed=4"]
    # without a grid file, seed 0
    alone = kdcore.ablate(other, out=tmp_path / "h", echo=lambda line: None)
    assert [(r.variant, r.seed) for r in alone.runs] == [("other", 0)]


def test_nothing_to_run_says_what_to_give(tmp_path):
    with pytest.raises(kdcore.KdcoreError, match="^nothing to run: give recipes, variants or a "
                                                 "grid file$"):
        kdcore.ablate([], out=tmp_path / "g")


def test_a_run_results_history_is_load_history_of_its_directory(tmp_path):
    pytest.importorskip("pandas")
    _write_history(tmp_path / "run")
    frames = api.RunResult(summary={}, run_dir=tmp_path / "run").history()
    assert frames.metrics.equals(kdcore.load_history(tmp_path / "run").metrics)


@pytest.mark.slow
def test_a_run_leaves_the_callers_torch_state_as_it_found_it(tmp_path):
    """In a notebook, api.run seeded torch's generator with the run's seed and left the thread
    count at run.threads: the caller's next draws and every later computation changed."""
    threads = torch.get_num_threads()
    torch.manual_seed(1234)
    expected = torch.rand(3)  # what the caller draws next, had no run happened
    torch.manual_seed(1234)
    try:
        torch.set_num_threads(2)
        api.run(_data(), overrides=["run.threads=1"], out=tmp_path / "run")
        assert torch.get_num_threads() == 2
        assert torch.equal(torch.rand(3), expected)
        torch.manual_seed(1234)
        engine.dry_setup(api.as_recipe(_data(), ["run.threads=1"]), kdcore.PluginHost())
        assert torch.get_num_threads() == 2 and torch.equal(torch.rand(3), expected)
    finally:
        torch.set_num_threads(threads)
