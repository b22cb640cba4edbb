"""``kdcore inspect``'s reading and writing (kdcore/cli_inspect.py) on a small history written by
hand with :class:`HistoryWriter`, without training: every cell of the CSV exports against the
values written, the printed table's rounding and layout, which metrics and columns a pattern or
``all`` selects, the cartography files and the refusals, each with its whole message."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from kdcore.cli import main
from kdcore.cli_inspect import (
    export_cartography,
    inspect_run,
    print_metrics,
    read_columns,
    read_metrics,
    trained_rows,
    write_columns,
)
from kdcore.errors import KdcoreError
from kdcore.history import History, no_logits_of
from kdcore.history_writer import HistoryWriter
from kdcore.ledger import Column

RECIPE = """
[[stages]]
name = "teacher"
train = ["teacher"]

[[stages]]
name = "student"
train = ["student"]
"""
N, C = 3, 4
NAN = float("nan")
# logits of the teacher (stage teacher) and the student (stage student), per epoch row
T_LOGITS = np.arange(2 * N * C, dtype=np.float32).reshape(2, N, C) / 8
S_LOGITS = -np.arange(N * C, dtype=np.float32).reshape(N, C) / 4
LOSS = [[0.5, NAN, 2.25], [1.0, 0.125, 3.0]]  # loss/ce of the teacher's two epochs
TARGETS = np.array([[[0.125, 0.5, 0.25, 0.125], [1, 0, 0, 0], [0, 0, 0.25, 0.75]],
                    [[0, 0, 0, 1], [0.25, 0.25, 0.25, 0.25], [0, 1, 0, NAN]]],
                   dtype=np.float32)
PROBS = np.array([[0.5, 0.5, 0, 0], [0, 0.25, 0.75, 0], [0, 0, 0, 1]])  # a vector per sample


def _col(data, producer, kind="value"):
    return Column(np.asarray(data), producer, kind)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Three epoch rows: the teacher's two (loss, mask, targets, its logits), the student's
    one (its logits, a metric of its own)."""
    out = tmp_path_factory.mktemp("run")
    writer = HistoryWriter(out / "history.h5")
    writer.create(recipe_toml=RECIPE, versions={}, num_classes=C, class_names=list("abcd"),
                  constants={"sample_id": np.array([7, 3, 5]),
                             "clean_label": np.array([0, 1, 2]),
                             "noisy_label": np.array([1, 1, 3]),
                             "noise_mask": np.array([True, False, True]),
                             "per_class": np.ones(C), "grid": np.zeros((N, 2, 2)),
                             "probs": PROBS},
                  transition_matrix=np.eye(C))
    for e in range(2):
        writer.append_epoch(stage="teacher", epoch=e, metrics={
            "train/teacher/loss": 1.0 / (e + 3), "val/teacher/acc": 0.5 + e / 4,
        }, columns={"loss/ce": _col(LOSS[e], "ce"),
                    "select/small": _col([True, e == 0, False], "small", "mask"),
                    "target": _col(TARGETS[e], "lp", "target"),
                    "logits/teacher": _col(T_LOGITS[e], "teacher")})
    writer.append_epoch(stage="student", epoch=0, metrics={
        "train/student/loss": 2.0, "val/teacher/acc": NAN, "count": 7,
    }, columns={"logits/student": _col(S_LOGITS, "student")})
    return out


@pytest.fixture
def hist(run_dir):
    with History(run_dir / "history.h5") as h:
        yield h


def _csv(text):
    return list(csv.reader(io.StringIO(text)))


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_are_chosen_by_pattern_in_the_patterns_order(hist):
    names, epochs, values = read_metrics(hist, ["val/*", "train/*"])
    assert names == ["val/teacher/acc", "train/student/loss", "train/teacher/loss"]
    assert epochs == [("teacher", 0), ("teacher", 1), ("student", 0)]
    np.testing.assert_array_equal(values["val/teacher/acc"], [0.5, 0.75, NAN])
    assert read_metrics(hist, ["count", "*"])[0][0] == "count"


def test_a_pattern_that_matches_no_metric_lists_them(hist):
    with pytest.raises(KdcoreError) as info:
        read_metrics(hist, ["test/*", "x"])
    assert str(info.value) == ("no metric matches 'test/*', 'x'; the history has count, "
                               "train/student/loss, train/teacher/loss, val/teacher/acc")


def test_the_printed_table_rounds_counts_epochs_from_one_and_aligns_right(hist, capsys):
    print_metrics(read_metrics(hist, ["val/*", "count"]), None)
    assert capsys.readouterr().out.splitlines() == [
        "row    stage  epoch  val/teacher/acc   count",
        "  0  teacher      1           0.5000       -",
        "  1  teacher      2           0.7500       -",
        "  2  student      1                -  7.0000",
    ]


def test_a_table_without_rows_prints_its_header_and_why(capsys):
    print_metrics((["m"], [], {"m": np.array([])}), None)
    assert capsys.readouterr().out == ("row  stage  epoch  m\n(no epoch yet: the run is in its "
                                       "first epoch, or was stopped there)\n")


def test_the_metrics_csv_is_exact_with_empty_cells_for_what_was_not_measured(hist, tmp_path):
    path = tmp_path / "m.csv"
    print_metrics((["train/teacher/loss", "count"], hist.epochs(),
                   {"train/teacher/loss": hist.metric("train/teacher/loss"),
                    "count": np.array([1, 2, 3], dtype=np.int64)}), path)
    rows = _csv(path.read_text())
    assert rows == [["row", "stage", "epoch", "train/teacher/loss", "count"],
                    ["0", "teacher", "0", repr(1 / 3), "1"],
                    ["1", "teacher", "1", "0.25", "2"],
                    ["2", "student", "0", "", "3"]]
    assert float(rows[1][3]) == hist.metric("train/teacher/loss")[0]


# -- columns ----------------------------------------------------------------------------------


def _exported(hist, names, tmp_path):
    path = tmp_path / "c.csv"
    write_columns(read_columns(hist, names), path)
    return _csv(path.read_text())


def test_a_column_exports_one_row_per_epoch_and_sample_missing_where_not_written(hist, tmp_path):
    rows = _exported(hist, ["loss/ce", "select/small"], tmp_path)
    assert rows[0] == ["row", "stage", "epoch", "ledger_row", "sample_id", "clean_label",
                       "noisy_label", "loss/ce", "select/small"]
    ids = [["7", "0", "1"], ["3", "1", "1"], ["5", "2", "3"]]
    expected = []
    for i, (st, e) in enumerate([("teacher", 0), ("teacher", 1), ("student", 0)]):
        for j in range(N):
            loss = "" if i == 2 or math.isnan(LOSS[i][j]) else repr(LOSS[i][j])
            mask = "" if i == 2 else str(int([True, i == 0, False][j]))
            expected.append([str(i), st, str(e), str(j), *ids[j], loss, mask])
    assert rows[1:] == expected


def test_a_column_with_a_class_axis_exports_its_argmax_and_the_value_there(hist, tmp_path):
    rows = _exported(hist, ["target", "logits/student"], tmp_path)
    assert rows[0][7:] == ["target/label", "target/confidence", "logits/student/argmax",
                           "logits/student/max"]
    cells = [r[7:] for r in rows[1:]]
    # NumPy transcription: argmax over classes, NaN rows missing, absent epochs missing; a
    # target whose largest value is not alone (sample 1's uniform row) has no label
    for i in range(3):
        for j in range(N):
            got = cells[i * N + j]
            if i == 2 or np.isnan(TARGETS[min(i, 1), j]).any():
                assert got[:2] == ["", ""], (i, j)
            else:
                k = int(np.argmax(TARGETS[i, j]))
                alone = (TARGETS[i, j] == TARGETS[i, j].max()).sum() == 1
                label = str(k) if alone else ""
                assert got[:2] == [label, repr(float(TARGETS[i, j, k]))], (i, j)
            if i < 2:
                assert got[2:] == ["", ""], (i, j)
            else:
                k = int(np.argmax(S_LOGITS[j]))
                assert got[2:] == [str(k), repr(float(S_LOGITS[j, k]))], (i, j)
    assert cells[N + 1][:2] == ["", "0.25"]  # the case is in the fixture


def test_all_means_every_ledger_column_and_every_per_sample_constant(hist, tmp_path):
    header = _exported(hist, ["all", "loss/ce"], tmp_path)[0]
    # the ledger's columns by name, then the constants with a value (or a vector) per sample
    assert header[7:] == ["logits/student/argmax", "logits/student/max",
                          "logits/teacher/argmax", "logits/teacher/max", "loss/ce",
                          "select/small", "target/label", "target/confidence", "noise_mask",
                          "probs/argmax", "probs/max"]
    rows = _exported(hist, ["select/small", "all"], tmp_path)
    assert rows[0][7:9] == ["select/small", "logits/student/argmax"]  # as asked, then the rest
    assert [r[-2:] for r in rows[1:4]] == [["0", "0.5"], ["2", "0.75"], ["3", "1.0"]]


def test_only_constants_make_one_block_of_stage_data(hist, tmp_path):
    rows = _exported(hist, ["noise_mask", "sample_id"], tmp_path)
    assert rows == [["row", "stage", "epoch", "ledger_row", "sample_id", "clean_label",
                     "noisy_label", "noise_mask"],
                    ["0", "data", "0", "0", "7", "0", "1", "1"],
                    ["0", "data", "0", "1", "3", "1", "1", "0"],
                    ["0", "data", "0", "2", "5", "2", "3", "1"]]


def test_without_a_path_the_columns_go_to_standard_output(hist, capsys):
    write_columns(read_columns(hist, ["noise_mask"]), None)
    assert _csv(capsys.readouterr().out)[1] == ["0", "data", "0", "0", "7", "0", "1", "1"]


@pytest.mark.parametrize(("name", "message"), [
    ("per_class", "'per_class' is not per sample (shape (4,), the run has 3 samples); "
                  "--column exports per-sample data only"),
    ("targte", "no column 'targte' (did you mean 'target'?); columns: logits/student, "
               "logits/teacher, loss/ce, select/small, target (or 'all')"),
])
def test_a_column_that_cannot_be_exported_is_named(hist, name, message):
    with pytest.raises(KdcoreError) as info:
        read_columns(hist, [name])
    assert str(info.value) == message


def test_a_constant_with_more_than_a_class_axis_is_refused(hist):
    with pytest.raises(KdcoreError) as info:
        read_columns(hist, ["grid"])
    assert str(info.value) == ("column 'grid' has shape (3, 2, 2) per epoch; only per-sample "
                               "values and per-class vectors export as CSV")


# -- cartography ------------------------------------------------------------------------------


def test_cartography_writes_the_epochs_each_model_trained(hist, tmp_path):
    out = tmp_path / "dyn"
    assert export_cartography(hist, out, "teacher") == ("teacher", 2)
    for k in range(2):
        lines = [json.loads(line) for line in
                 (out / f"dynamics_epoch_{k}.jsonl").read_text().splitlines()]
        assert lines == [{"guid": g, f"logits_epoch_{k}": T_LOGITS[k, i].tolist(), "gold": y}
                         for i, (g, y) in enumerate([(7, 1), (3, 1), (5, 3)])]
    (out / "dynamics_epoch_x.jsonl").write_text("")
    assert export_cartography(hist, out, None) == ("student", 1)  # the first by name
    assert sorted(p.name for p in out.iterdir()) == ["dynamics_epoch_0.jsonl"]
    first = json.loads((out / "dynamics_epoch_0.jsonl").read_text().splitlines()[0])
    assert first == {"guid": 7, "logits_epoch_0": S_LOGITS[0].tolist(), "gold": 1}


def test_cartography_leaves_out_a_sample_without_logits_and_writes_strict_json(tmp_path):
    """A sample whose batch no term computed the model on has NaN logits that epoch: it was
    written as ``NaN`` (not JSON) as if the model had produced it; a float16 overflow (inf)
    as ``Infinity``, which JSON has not either."""
    writer = HistoryWriter(tmp_path / "h.h5")
    writer.create(recipe_toml='[[stages]]\nname = "s"\ntrain = ["m"]\n', versions={},
                  num_classes=2, class_names=["a", "b"],
                  constants={"noisy_label": np.array([0, 1, 1])}, transition_matrix=np.eye(2))
    logits = np.array([[0.5, -0.25], [NAN, NAN], [1e6, -1e6]], dtype=np.float32)
    writer.append_epoch(stage="s", epoch=0, metrics={}, columns={"logits/m": _col(logits, "m")})
    with History(tmp_path / "h.h5") as h:
        assert export_cartography(h, tmp_path / "d", None) == ("m", 1)

    def strict(constant):
        raise AssertionError(f"{constant} is not JSON")

    lines = [json.loads(line, parse_constant=strict)
             for line in (tmp_path / "d" / "dynamics_epoch_0.jsonl").read_text().splitlines()]
    assert lines == [{"guid": 0, "logits_epoch_0": [0.5, -0.25], "gold": 0},
                     {"guid": 2, "logits_epoch_0": [65504.0, -65504.0], "gold": 1}]


def test_the_rows_a_model_trained_are_those_of_its_stages(hist):
    assert trained_rows(hist, "teacher") == [0, 1]
    assert trained_rows(hist, "student") == [2]
    assert trained_rows(hist, "nobody") == []


@pytest.mark.parametrize(("role", "message"), [
    ("ghost", "no training logits of model 'ghost' in {path}; models: student, teacher (no "
              "stage of the run trains it)"),
    ("studnet", "no training logits of model 'studnet' in {path} (did you mean 'student'?); "
                "models: student, teacher (no stage of the run trains it)"),
])
def test_cartography_of_a_model_without_logits_names_the_models_it_has(hist, tmp_path, role,
                                                                       message):
    with pytest.raises(KdcoreError) as info:
        export_cartography(hist, tmp_path / "d", role)
    assert str(info.value) == message.format(path=hist.path)
    assert not (tmp_path / "d").exists()


def test_cartography_of_a_history_without_logits_or_trained_rows(tmp_path):
    writer = HistoryWriter(tmp_path / "h.h5")
    writer.create(recipe_toml='[[stages]]\nname = "s"\ntrain = []\n', versions={},
                  num_classes=2, class_names=["a", "b"],
                  constants={"noisy_label": np.array([0, 1])}, transition_matrix=np.eye(2))
    writer.append_epoch(stage="s", epoch=0, metrics={}, columns={})
    with History(tmp_path / "h.h5") as h, pytest.raises(KdcoreError) as info:
        export_cartography(h, tmp_path / "d", None)
    assert str(info.value) == "the history holds no training logits"
    writer.append_epoch(stage="s", epoch=1, metrics={},
                        columns={"logits/m": _col(np.zeros((2, 2)), "m")})
    with History(tmp_path / "h.h5") as h, pytest.raises(KdcoreError) as info:
        export_cartography(h, tmp_path / "d", None)
    assert str(info.value) == "model 'm' trained in no recorded epoch of this run"


def test_a_history_of_no_epoch_yet_says_so(tmp_path):
    """A run in its first epoch, or stopped there (a kill before the first epoch's row), has
    a history of no rows: the table said nothing below its header, and cartography and
    label-issues blamed missing logits on nothing."""
    writer = HistoryWriter(tmp_path / "history.h5")
    writer.create(recipe_toml=RECIPE, versions={}, num_classes=2, class_names=["a", "b"],
                  constants={"noisy_label": np.array([0, 1]), "clean_label": np.array([0, 1])},
                  transition_matrix=np.eye(2))
    runner = CliRunner()
    why = "(it holds no epoch yet: the run is in its first epoch, or was stopped there)"
    result = runner.invoke(main, ["inspect", str(tmp_path)])
    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "row  stage  epoch", "(no epoch yet: the run is in its first epoch, or was stopped "
        "there)"]
    for args, said in (
            (["inspect", tmp_path, "--cartography", tmp_path / "d"],
             f"the history holds no training logits {why}"),
            (["inspect", tmp_path, "--cartography", tmp_path / "d", "--model", "student"],
             f"no training logits of model 'student' in {tmp_path / 'history.h5'}; models: "
             f"none {why}"),
            (["label-issues", tmp_path], f"{tmp_path / 'history.h5'} holds no training "
                                        f"logits of a model its stages train {why}")):
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code == 2 and result.output == f"kdcore: error: {said}\n"
    writer.append_epoch(stage="teacher", epoch=0, metrics={}, columns={})  # a row: no longer
    with History(tmp_path) as h:
        assert why not in str(no_logits_of(h, "student"))

def test_a_recipe_that_cannot_be_read_is_named(tmp_path):
    writer = HistoryWriter(tmp_path / "h.h5")
    writer.create(recipe_toml="stages = [", versions={}, num_classes=2, class_names=["a", "b"],
                  constants={"noisy_label": np.array([0, 1])}, transition_matrix=np.eye(2))
    with History(tmp_path / "h.h5") as h, pytest.raises(KdcoreError) as info:
        trained_rows(h, "m")
    assert str(info.value).startswith(f"{tmp_path / 'h.h5'}: cannot read the run's recipe (")


def test_cartography_without_sample_ids_numbers_the_rows(tmp_path):
    writer = HistoryWriter(tmp_path / "h.h5")
    writer.create(recipe_toml='[[stages]]\nname = "s"\ntrain = ["m"]\n', versions={},
                  num_classes=2, class_names=["a", "b"],
                  constants={"noisy_label": np.array([1, 0])}, transition_matrix=np.eye(2))
    writer.append_epoch(stage="s", epoch=0, metrics={},
                        columns={"logits/m": _col(np.eye(2), "m")})
    with History(tmp_path / "h.h5") as h:
        export_cartography(h, tmp_path / "d", "m")
    lines = (tmp_path / "d" / "dynamics_epoch_0.jsonl").read_text().splitlines()
    assert [json.loads(x)["guid"] for x in lines] == [0, 1]


def test_a_stale_epoch_file_that_cannot_be_removed_is_named(hist, tmp_path, monkeypatch):
    out = tmp_path / "dyn"
    out.mkdir()
    (out / "dynamics_epoch_5.jsonl").write_text("")
    import pathlib

    unlink = pathlib.Path.unlink

    def refuse(self, missing_ok=False):
        if self.name == "dynamics_epoch_5.jsonl":
            raise PermissionError(13, "Permission denied")
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(pathlib.Path, "unlink", refuse)
    with pytest.raises(KdcoreError) as info:
        export_cartography(hist, out, "teacher")
    assert str(info.value) == (f"cannot remove {out / 'dynamics_epoch_5.jsonl'}, an earlier "
                               "export's epoch file that would mix with this one: Permission "
                               "denied")


# -- the command's options --------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"columns": ["target"], "cartography": "d"},
     "--column and --cartography are two exports: give one"),
    ({"role": "student"}, "--model chooses the model of --cartography; give --cartography too"),
])
def test_options_that_do_not_go_together_are_refused(run_dir, kwargs, message):
    args = {"columns": [], "csv_path": None, "cartography": None, "role": None,
            "patterns": ["*"]} | kwargs
    with pytest.raises(KdcoreError) as info:
        inspect_run(run_dir, **args)
    assert str(info.value) == message


def test_the_command_prints_the_table_and_writes_the_exports(run_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", str(run_dir), "--metrics", "count"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].split() == ["2", "student", "1", "7.0000"]
    path = tmp_path / "m.csv"
    result = runner.invoke(main, ["inspect", str(run_dir), "--metrics", "count", "--csv",
                                  str(path)])
    assert result.output == f"wrote 3 rows to {path}\n"
    result = runner.invoke(main, ["inspect", str(run_dir), "--column", "loss/ce", "--csv",
                                  str(path)])
    assert result.output == f"wrote 1 column(s) (3 epochs x 3 samples) to {path}\n"
    result = runner.invoke(main, ["inspect", str(run_dir), "--cartography",
                                  str(tmp_path / "d"), "--model", "teacher"])
    assert result.output == (f"wrote 2 epoch files (the epochs model 'teacher' trained) to "
                             f"{tmp_path / 'd'}\n")


def test_a_recipe_without_stages_or_train_lists_trains_nothing(tmp_path):
    for toml in ("", '[[stages]]\nname = "s"\n'):
        writer = HistoryWriter(tmp_path / "h.h5")
        writer.create(recipe_toml=toml, versions={}, num_classes=2, class_names=["a", "b"],
                      constants={"noisy_label": np.array([0, 1])}, transition_matrix=np.eye(2))
        writer.append_epoch(stage="s", epoch=0, metrics={}, columns={})
        with History(tmp_path / "h.h5") as h:
            assert trained_rows(h, "m") == [], toml


def test_a_history_without_the_sample_constants_still_exports_its_columns(tmp_path):
    writer = HistoryWriter(tmp_path / "h.h5")
    writer.create(recipe_toml="", versions={}, num_classes=2, class_names=["a", "b"],
                  constants={"other": np.zeros(3)}, transition_matrix=np.eye(2))
    writer.append_epoch(stage="s", epoch=0, metrics={},
                        columns={"loss/x": _col([0.5, 1.5, 2.5], "x")})
    with History(tmp_path / "h.h5") as h:
        rows = _exported(h, ["loss/x"], tmp_path)
    assert rows == [["row", "stage", "epoch", "ledger_row", "loss/x"],
                    ["0", "s", "0", "0", "0.5"], ["0", "s", "0", "1", "1.5"],
                    ["0", "s", "0", "2", "2.5"]]
