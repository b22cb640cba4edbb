"""The command line, in process: run, check, plugins, inspect, and every bad input."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from kdcore.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_user_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output  # one line, no traceback
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


@pytest.fixture
def finished_run(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    result = invoke("run", tiny_recipe, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    return out


def test_run_prints_summary(finished_run):
    assert (finished_run / "history.h5").is_file()
    assert (finished_run / "recipe.toml").is_file()
    summary = json.loads((finished_run / "summary.json").read_text())
    assert {"teacher", "student"} == set(summary)


@pytest.mark.parametrize("quiet", [False, True])
def test_run_logs_its_set_up_and_every_epoch_on_stderr_unless_quiet(tiny_recipe, tmp_path,
                                                                     quiet):
    """Loading the plugins is quiet in every command; the run after it logs from INFO on."""
    out = tmp_path / "run"
    result = invoke("run", tiny_recipe, "--out", out, *(["-q"] if quiet else []))
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == ["teacher", "student"]
    if quiet:
        assert result.stderr == ""
        return
    logged = [line.split(" ", 1)[1] for line in result.stderr.splitlines()]  # after the time
    assert logged[0] == f"run 'tiny' seed 0 on cpu -> {out}"
    epochs = [line.split(" | ")[0] for line in logged if " | " in line]
    assert epochs == ["teacher 1/2", "teacher 2/2", "student 1/2", "student 2/2"]


def test_inspect_prints_per_epoch_accuracy_labels_and_selection(finished_run, tiny_recipe,
                                                                  tmp_path):
    res = invoke("inspect", finished_run)
    assert res.exit_code == 0
    header = res.output.splitlines()[0].split()
    assert {"test/student/acc", "label/acc"} <= set(header)
    assert len(res.output.splitlines()) == 1 + 4
    out = tmp_path / "sel"
    text = tiny_recipe.read_text().replace('use = "ce"\n\n[[stages]]',
                                           'use = "ce"\n\n[[stages.components]]\n'
                                           'use = "all_samples"\n\n[[stages]]', 1)
    tiny_recipe.write_text(text)
    assert invoke("run", tiny_recipe, "--out", out, "-q").exit_code == 0
    header = invoke("inspect", out).output.splitlines()[0].split()
    assert {"select/all_samples/precision", "select/all_samples/recall"} <= set(header)


def test_inspect_exports_a_column_as_csv(finished_run, tmp_path):
    path = tmp_path / "target.csv"
    res = invoke("inspect", finished_run, "--column", "target", "--csv", path)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(path.open()))
    assert rows[0].keys() == {"row", "stage", "epoch", "ledger_row", "sample_id", "clean_label",
                              "noisy_label", "target/label", "target/confidence"}
    n = len({r["sample_id"] for r in rows})
    assert len(rows) == 4 * n


def test_inspect_exports_cartography_jsonl(finished_run, tmp_path):
    out = tmp_path / "dyn"
    res = invoke("inspect", finished_run, "--cartography", out, "--model", "student")
    assert res.exit_code == 0, res.output
    files = sorted(out.glob("dynamics_epoch_*.jsonl"))
    assert [f.name for f in files] == ["dynamics_epoch_0.jsonl", "dynamics_epoch_1.jsonl"]
    first = json.loads(files[1].read_text().splitlines()[0])
    assert set(first) == {"guid", "logits_epoch_1", "gold"} and len(first["logits_epoch_1"]) == 10


@pytest.mark.parametrize("writer, args", [("write_columns", ["--column", "clean_label"]),
                                          ("print_metrics", [])])
def test_inspect_lets_the_history_go_before_it_writes(finished_run, monkeypatch, writer, args):
    """A pager reading `inspect --column` slowly kept the history locked, and a training run
    appending to it stopped after a minute."""
    import fcntl
    import os

    from kdcore import cli_inspect

    seen = []
    original = getattr(cli_inspect, writer)

    def write(table, csv_path):
        fd = os.open(finished_run / "history.h5", os.O_RDWR)
        try:  # the writer's exclusive lock, without waiting: free only if inspect let go
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("free")
        except BlockingIOError:
            seen.append("held")
        finally:
            os.close(fd)
        original(table, csv_path)

    monkeypatch.setattr(cli_inspect, writer, write)
    res = invoke("inspect", finished_run, *args)
    assert res.exit_code == 0 and seen == ["free"]
    if args:  # a base column asked for is not written twice
        assert res.output.splitlines()[0] == ("row,stage,epoch,ledger_row,sample_id,"
                                              "clean_label,noisy_label")


def test_a_cartography_export_leaves_no_earlier_exports_epochs_behind(finished_run, tmp_path):
    """cartography reads every dynamics_epoch_*.jsonl in the folder: an earlier, longer
    export's later epochs mixed with this run's."""
    out = tmp_path / "dyn"
    out.mkdir()
    for name in ("dynamics_epoch_2.jsonl", "dynamics_epoch_17.jsonl", "dynamics_epoch_x.jsonl"):
        (out / name).write_text("{}\n")
    (out / "notes.txt").write_text("mine")
    assert invoke("inspect", finished_run, "--cartography", out, "--model", "student"
                  ).exit_code == 0
    assert sorted(f.name for f in out.iterdir()) == [
        "dynamics_epoch_0.jsonl", "dynamics_epoch_1.jsonl", "notes.txt"]


def test_plugins_lists_builtin_components_with_kinds():
    res = invoke("plugins")
    assert res.exit_code == 0
    assert "builtin  (kdcore" in res.output
    assert "hinton_kd [transfer]" in res.output and "label_smoothing [refine]" in res.output


def test_check_prints_resolved_recipe(tiny_recipe):
    res = invoke("check", tiny_recipe, "--set", "stages.student.components.kd.weight=0.7")
    assert res.exit_code == 0, res.output
    assert "weight = 0.7" in res.output


# -- bad input: one line, exit code 2, nothing already written lost -------------------------


def test_malformed_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\n")
    assert_user_error(invoke("run", bad), "malformed TOML", str(bad))


def test_unknown_component(tiny_recipe, tmp_path):
    tiny_recipe.write_text(tiny_recipe.read_text().replace('use = "hinton_kd"',
                                                           'use = "hinton_kdd"'))
    assert_user_error(invoke("run", tiny_recipe, "--out", tmp_path / "r"),
                      "unknown component 'hinton_kdd'", "did you mean 'hinton_kd'",
                      "stages[1].components[1].use")
    assert not (tmp_path / "r" / "history.h5").exists()


def test_unknown_dataset(tiny_recipe, tmp_path):
    tiny_recipe.write_text(tiny_recipe.read_text().replace('"digits"', '"digitz"'))
    assert_user_error(invoke("run", tiny_recipe, "--out", tmp_path / "r"),
                      "unknown dataset 'digitz'", "did you mean 'digits'")


def test_wrong_type(tiny_recipe, tmp_path):
    assert_user_error(invoke("run", tiny_recipe, "--set", "data.batch_size=\"x\"",
                             "--out", tmp_path / "r"), "data.batch_size", "expected an integer")


def test_wrong_component_parameter(tiny_recipe, tmp_path):
    assert_user_error(
        invoke("run", tiny_recipe, "--set", "stages.student.components.kd.params.temprature=2",
               "--out", tmp_path / "r"),
        "stages[1].components[1].params.temprature", "did you mean 'temperature'")
    assert_user_error(
        invoke("run", tiny_recipe, "--set", "stages.student.components.kd.params.temperature=-1",
               "--out", tmp_path / "r"), "temperature", "must be in [0.001, 1000]")


def test_missing_recipe_file(tmp_path):
    assert_user_error(invoke("run", tmp_path / "nope.toml"), "not found")


def test_missing_dataset_directory(tiny_recipe, tmp_path):
    missing = tmp_path / "no-such-dir"
    assert_user_error(
        invoke("run", tiny_recipe, "--set", 'data.dataset="fashion_mnist"',
               "--set", f'data.params.root="{missing}"', "--out", tmp_path / "r"),
        str(missing))


def test_missing_teacher_checkpoint(tiny_recipe, tmp_path):
    assert_user_error(
        invoke("run", tiny_recipe, "--set", f'models.teacher.checkpoint="{tmp_path}/t.pt"',
               "--out", tmp_path / "r"), "checkpoint for model 'teacher' not found")


def test_unwritable_output_directory(tiny_recipe, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert_user_error(invoke("run", tiny_recipe, "--out", blocker / "run"),
                      "cannot write to output directory")


def test_existing_run_is_not_overwritten(finished_run, tiny_recipe):
    before = (finished_run / "history.h5").read_bytes()
    assert_user_error(invoke("run", tiny_recipe, "--out", finished_run), "already holds a run",
                      "--resume")
    assert (finished_run / "history.h5").read_bytes() == before


def test_resume_without_checkpoint(tiny_recipe, tmp_path):
    assert_user_error(invoke("run", tiny_recipe, "--out", tmp_path / "x", "--resume"),
                      "nothing to resume")


def test_inspect_missing_and_unknown_column(finished_run, tmp_path):
    assert_user_error(invoke("inspect", tmp_path / "nothing"), "no history")
    assert_user_error(invoke("inspect", finished_run, "--column", "targte"),
                      "did you mean 'target'")


def test_bad_override_syntax(tiny_recipe):
    assert_user_error(invoke("run", tiny_recipe, "--set", "run.name"), "key.path=value")


def test_what_a_person_reads_counts_epochs_from_one(finished_run, tiny_recipe, tmp_path):
    table = [line.split() for line in invoke("inspect", finished_run).output.splitlines()[1:]]
    assert [(row[1], row[2]) for row in table] == [("teacher", "1"), ("teacher", "2"),
                                                   ("student", "1"), ("student", "2")]
    summary = json.loads((finished_run / "summary.json").read_text())  # data: from 0
    res = invoke("run", tiny_recipe, "--out", tmp_path / "again")
    line = next(x for x in res.output.splitlines() if x.startswith("student:"))
    assert f"best-val epoch {summary['student']['best_val_epoch'] + 1} of stage 'student'" in line
