"""Loggers (``run.loggers``): TensorBoard and CSV hold exactly the history's metrics, at the
history's rows, also across a resume; the plan refuses an unknown name; a logger that raises is
isolated; the third-party logger of docs/plugins.md (section 7) runs as the page shows."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
from loguru import logger

import kdcore
from kdcore.loggers import CSV_FIXED, CsvLogger
from kdcore.plan import build_plan
from kdcore.plugins import ObserverBus, PluginHost
from kdcore.recipe import recipe_from_dict
from kdcore.testing import InterruptAt, Interrupted, component, run_tiny, stage, teacher_stage
from kdcore.testing import tiny_recipe as make_recipe
from tests.test_docs_plugins import file_blocks

NOT_LOGGED = {"time/epoch"}  # measured after the observers ran


def recipe(*loggers: str, student_epochs: int = 2, **run: Any) -> dict[str, Any]:
    """Two stages (the student's metrics appear in row 2: the CSV grows columns)."""
    return make_recipe(teacher_stage(2), stage("student", student_epochs, ["student"],
                                               component("ce")),
                       run={"loggers": list(loggers), **run})


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def history(run_dir: Path) -> tuple[list[tuple[str, int]], dict[str, np.ndarray]]:
    with kdcore.History(run_dir) as h:
        return h.epochs(), h.metrics()


def assert_csv_is_the_history(run_dir: Path) -> None:
    epochs, metrics = history(run_dir)
    with (run_dir / "logs" / "csv" / "metrics.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        header, lines = list(reader.fieldnames or ()), list(reader)
    assert tuple(header[:3]) == CSV_FIXED
    assert len(header) == len(set(header))
    assert set(header[3:]) == set(metrics) - NOT_LOGGED
    assert [(line["row"], line["stage"], line["epoch"]) for line in lines] == [
        (str(row), stage_name, str(epoch)) for row, (stage_name, epoch) in enumerate(epochs)]
    empty = 0
    for name in header[3:]:
        for row, line in enumerate(lines):
            cell = line[name]
            empty += cell == ""
            logged = float(cell) if cell else math.nan  # an empty cell: not in this row
            assert same(logged, float(metrics[name][row])), (name, row, cell)
    assert empty > 0  # the teacher's rows lack the student's metrics, and the other way round


def assert_tensorboard_is_the_history(run_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    epochs, metrics = history(run_dir)
    acc = EventAccumulator(str(run_dir / "logs" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert set(tags) == set(metrics) - NOT_LOGGED
    for tag in tags:
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        assert steps == sorted(set(steps)), (tag, steps)  # each row once
        column = metrics[tag]
        for e in events:
            assert same(e.value, float(np.float32(column[e.step]))), (tag, e.step)
        # the rows without a value are those where the metric was missing (NaN in the history)
        assert all(math.isnan(column[row]) for row in set(range(len(epochs))) - set(steps))
    assert {e.step for tag in tags for e in acc.Scalars(tag)} == set(range(len(epochs)))


# -- the built-in loggers ---------------------------------------------------------------------


@pytest.mark.slow
def test_tensorboard_and_csv_hold_the_historys_metrics(tmp_path):
    run_tiny(recipe("tensorboard", "csv"), tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "logs").iterdir()) == ["csv", "tensorboard"]
    assert_csv_is_the_history(tmp_path / "run")
    assert_tensorboard_is_the_history(tmp_path / "run")


@pytest.mark.slow
def test_a_resumed_run_logs_each_row_once(tmp_path):
    # checkpoints at the run's start, its first epoch and the teacher stage's end only: the
    # crash in the student's third epoch loses two logged rows, which the resume replays
    data = recipe("tensorboard", "csv", student_epochs=3, checkpoint_interval_s=3600)
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        run_tiny(data, out, plugins=[InterruptAt(2, 1, "student")])
    with (out / "logs" / "csv" / "metrics.csv").open() as handle:
        assert len(handle.readlines()) == 1 + 4  # header and rows 0..3
    run_tiny(data, out, resume=True)
    assert len(history(out)[0]) == 5
    assert_csv_is_the_history(out)
    assert_tensorboard_is_the_history(out)


def fake_ctx(stage_index: int, *, resumed: bool = False) -> Any:
    stages = [SimpleNamespace(name="a", epochs=2), SimpleNamespace(name="b", epochs=2)]
    return SimpleNamespace(recipe=SimpleNamespace(stages=stages), stage=stages[stage_index],
                           stage_index=stage_index, resumed=resumed)


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_the_csv_grows_columns_and_drops_replayed_rows(tmp_path):
    log = CsvLogger(tmp_path / "csv")
    log.kdcore_epoch_end(fake_ctx(0), 0, {"x": 0.1, "y": 1 / 3})
    log.kdcore_epoch_end(fake_ctx(0), 1, {"x": float("nan")})
    log.kdcore_epoch_end(fake_ctx(1), 0, {"z": 2, "x": 1e-300})
    path = tmp_path / "csv" / "metrics.csv"
    assert read_csv(path) == [["row", "stage", "epoch", "x", "y", "z"],
                              ["0", "a", "0", "0.1", repr(1 / 3), ""],
                              ["1", "a", "1", "nan", "", ""],
                              ["2", "b", "0", "1e-300", "", "2.0"]]
    # a resumed process (a new logger) replays row 2 on: the interrupted one's row 2 goes
    resumed = CsvLogger(tmp_path / "csv")
    resumed.kdcore_epoch_end(fake_ctx(1, resumed=True), 0, {"x": 0.5})
    assert read_csv(path)[1:] == [["0", "a", "0", "0.1", repr(1 / 3), ""],
                                  ["1", "a", "1", "nan", "", ""], ["2", "b", "0", "0.5", "", ""]]
    # a new run in the same directory starts the file afresh
    CsvLogger(tmp_path / "csv").kdcore_epoch_end(fake_ctx(0), 0, {"w": 1.0})
    assert read_csv(path) == [["row", "stage", "epoch", "w"], ["0", "a", "0", "1.0"]]


def test_a_resumed_csv_logger_reads_back_exactly_what_was_written(tmp_path):
    # a metric name holding a line break is written quoted and must come back as it was (not
    # as a second column); a row short of cells (a file edited by hand) reads as empty cells
    path = tmp_path / "csv" / "metrics.csv"
    CsvLogger(tmp_path / "csv").kdcore_epoch_end(fake_ctx(0), 0, {"a\r\nb": 1.0})
    with path.open("a", newline="") as handle:
        handle.write("1,a,1\r\n")
    resumed = CsvLogger(tmp_path / "csv")
    resumed.kdcore_epoch_end(fake_ctx(1, resumed=True), 0, {"a\r\nb": 2.0})
    assert read_csv(path) == [["row", "stage", "epoch", "a\r\nb"], ["0", "a", "0", "1.0"],
                              ["1", "a", "1", ""], ["2", "b", "0", "2.0"]]


def test_start_loggers_hands_each_factory_its_folder_and_the_recipe(tmp_path):
    from kdcore.loggers import start_loggers

    class Observer:
        @kdcore.hookimpl
        def kdcore_run_end(self, summary):
            pass

    seen, observer = [], Observer()
    host = SimpleNamespace(loggers={"mine": lambda folder, rec: seen.append((folder, rec))
                                    or observer}, strict=False)
    rec = SimpleNamespace(run=SimpleNamespace(loggers=["mine"]))
    assert start_loggers(host, rec, tmp_path) == [("mine", observer)]
    assert seen == [(tmp_path / "logs" / "mine", rec)]


class _Unmarked:
    def kdcore_run_end(self, summary):  # no @kdcore.hookimpl: pluggy would never call it
        pass


class _Observes:
    @kdcore.hookimpl
    def kdcore_epoch_end(self, epoch):
        pass


class _Factories:
    @kdcore.hookimpl
    def kdcore_add_loggers(self):
        return {"gives_none": lambda log_dir, recipe: None,
                "unmarked": lambda log_dir, recipe: _Unmarked(),
                "observes": lambda log_dir, recipe: _Observes()}


@pytest.mark.parametrize(("name", "gave"), [("gives_none", "NoneType None"),
                                            ("unmarked", "_Unmarked <tests.test_loggers.")])
def test_a_logger_whose_factory_gives_no_observer_is_named_and_left_out(tmp_path, name, gave):
    """It was registered with pluggy and never called: a logger that logged nothing, said
    nowhere."""
    from kdcore.loggers import start_loggers

    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        host = PluginHost(entry_points=False, extra=[_Factories()])
        rec = SimpleNamespace(run=SimpleNamespace(loggers=[name, "observes"]))
        (kept,) = start_loggers(host, rec, tmp_path)
    finally:
        logger.remove(sink)
    assert kept[0] == "observes" and isinstance(kept[1], _Observes)
    (line,) = warnings
    assert line.startswith(f"logger '{name}' (_Factories-0) gave {gave}"), line
    assert line.endswith(", which implements no observer hook (a @kdcore.hookimpl method named "
                         "kdcore_*); the run goes on without it")
    strict = PluginHost(entry_points=False, extra=[_Factories()], strict=True)
    with pytest.raises(kdcore.KdcoreError, match=f"^logger '{name}' \\(_Factories-0\\) gave"):
        start_loggers(strict, rec, tmp_path)


def test_tensorboard_without_its_package_is_one_line(monkeypatch, tmp_path):
    from kdcore.loggers import tensorboard_logger

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(kdcore.KdcoreError) as err:
        tensorboard_logger(tmp_path, None)
    assert str(err.value).startswith("logger 'tensorboard' needs the tensorboard package (")
    assert str(err.value).endswith("); install it with: pip install 'kdcore[loggers]'")


# -- choosing loggers -------------------------------------------------------------------------


def test_an_unknown_logger_is_refused_by_the_plan():
    host = PluginHost()
    with pytest.raises(kdcore.RecipeError, match=r"unknown logger 'tensorbord' \(did you mean "
                       r"'tensorboard'\?\); known: .*csv.*tensorboard") as refused:
        build_plan(recipe_from_dict(recipe("csv", "tensorbord")), host)
    assert refused.value.key == "run.loggers[1]"
    with pytest.raises(kdcore.RecipeError, match="logger 'csv' is named twice") as refused:
        build_plan(recipe_from_dict(recipe("csv", "csv")), host)
    assert refused.value.key == "run.loggers[1]"
    assert "csv" in host.infos["builtin"].provides["loggers"]
    build_plan(recipe_from_dict(recipe("csv", "tensorboard")), host)


def test_loggers_observe_after_the_plugins():
    order: list[str] = []

    class Plugin:
        @kdcore.hookimpl
        def kdcore_run_end(self, ctx, summary):
            order.append("plugin")
            summary["seen"] = True

    class Log:
        def __init__(self, name: str):
            self.name = name

        @kdcore.hookimpl
        def kdcore_run_end(self, summary):  # a subset of the arguments, as pluggy allows
            order.append(f"{self.name} saw {summary['seen']}")

    bus = ObserverBus(PluginHost(extra=[Plugin()], entry_points=False),
                      extra=[("b", Log("b")), ("a", Log("a"))])
    assert bus.has("kdcore_run_end") and not bus.has("kdcore_batch_end")
    bus.call("kdcore_run_end", ctx=None, summary={})
    assert order == ["plugin", "b saw True", "a saw True"]


class Broken:
    calls = 0

    @kdcore.hookimpl
    def kdcore_epoch_end(self, ctx, epoch, metrics):
        Broken.calls += 1
        raise RuntimeError("logger bug")


def _no_start(log_dir: Path, recipe: kdcore.Recipe) -> object:
    raise ConnectionError("no server")


class Faulty:
    """A plugin with a logger that raises at the first epoch and one that cannot start."""

    @kdcore.hookimpl
    def kdcore_add_loggers(self):
        return {"broken": lambda log_dir, recipe: Broken(), "no_start": _no_start}


@pytest.mark.slow
def test_a_raising_logger_is_isolated(tmp_path):
    Broken.calls, warnings = 0, []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        summary = run_tiny(recipe("broken", "no_start", "csv"), tmp_path / "run",
                           plugins=[Faulty()])
    finally:
        logger.remove(sink)
    assert set(summary) == {"teacher", "student"}
    assert Broken.calls == 1  # disabled after its first failure
    assert_csv_is_the_history(tmp_path / "run")  # the other logger saw every epoch
    broken = [w for w in warnings if "logger 'broken'" in w]
    assert len(broken) == 1 and "kdcore_epoch_end raised" in broken[0]
    assert "logger bug" in broken[0] and "disabled for the rest of this run" in broken[0]
    no_start = [w for w in warnings if "logger 'no_start'" in w]
    assert len(no_start) == 1 and "failed to start" in no_start[0]
    assert "no server" in no_start[0] and "goes on without it" in no_start[0]
    assert len(warnings) == 2
    with pytest.raises(kdcore.KdcoreError, match="logger 'no_start'.*no server"):
        kdcore.run_recipe(kdcore.load_recipe(tmp_path / "run.toml"), out=str(tmp_path / "s"),
                          host=PluginHost(extra=[Faulty()], strict=True), progress=False)


# -- the page's logger ------------------------------------------------------------------------


def page_logger(tmp_path: Path) -> ModuleType:
    """docs/plugins.md's ``kdcore_jsonl_logger.py``, imported from ``tmp_path``."""
    path = tmp_path / "kdcore_jsonl_logger.py"
    path.write_text(file_blocks()["kdcore_jsonl_logger.py"])
    spec = importlib.util.spec_from_file_location("kdcore_jsonl_logger", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.pop(spec.name, None)
    spec.loader.exec_module(module)
    return module


def test_the_pages_logger_registers(tmp_path):
    module = page_logger(tmp_path)
    host = PluginHost(extra=[module], entry_points=False)
    assert host.infos[module.__name__].provides == {"loggers": ["jsonl"]}
    build_plan(recipe_from_dict(recipe("jsonl")), host)


@pytest.mark.slow
def test_the_pages_logger_writes_the_historys_metrics(tmp_path):
    module = page_logger(tmp_path)
    run_tiny(recipe("jsonl"), tmp_path / "run", plugins=[module])
    epochs, metrics = history(tmp_path / "run")
    lines = (tmp_path / "run" / "logs" / "jsonl" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["row"], r["stage"], r["epoch"]) for r in records] == [
        (row, stage_name, epoch) for row, (stage_name, epoch) in enumerate(epochs)]
    assert set().union(*(r["metrics"] for r in records)) == set(metrics) - NOT_LOGGED
    for row, r in enumerate(records):
        for name, value in r["metrics"].items():
            assert same(math.nan if value is None else value, float(metrics[name][row]))
