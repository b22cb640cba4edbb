"""kdcore report: each variant's reported model (--model is a preference), and the warnings
about a noise-gap recovery that cannot be computed. The runs are written by hand: a
summary.json and a history.h5 that holds the resolved recipe (no training)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from kdcore.cli import main
from kdcore.history_writer import HistoryWriter
from kdcore.report import find_runs
from kdcore.report_models import choose_models, final_role

CE = [("train", ["student"])]
KD = [("teacher", ["teacher"]), ("student", ["student"])]
MUTUAL = [("mutual", ["peer_a", "peer_b"])]


def write_run(run_dir, stages, accs, history=True, recipe=None):
    """A finished run: summary.json with each role's best-val test accuracy ``accs[role]``
    (its seed's), and a history.h5 whose recipe trains ``stages`` (name, roles) in order
    (or whose recipe is the TOML text ``recipe``)."""
    run_dir.mkdir(parents=True)
    if history:
        if recipe is None:
            recipe = "".join(f'[[stages]]\nname = "{name}"\ntrain = {json.dumps(train)}\n\n'
                             for name, train in stages)
        HistoryWriter(run_dir / "history.h5").create(
            recipe_toml=recipe, versions={"kdcore": "0"}, num_classes=2, class_names=["a", "b"],
            constants={"clean_label": np.array([0, 1], dtype=np.int32)},
            transition_matrix=np.eye(2))
    summary = {role: {"stage": stages[-1][0], "best_val_epoch": 0, "val_acc": acc,
                      "test_acc_at_best_val": acc, "test_bacc_at_best_val": acc,
                      "last_test_acc": acc, "last_test_bacc": acc, "kept": "best_val"}
               for role, acc in accs.items()}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def make_grid(root, variants):
    """``variants``: name -> (stages, [accs of seed 0, accs of seed 1, ...])."""
    for name, (stages, seeds) in variants.items():
        for k, accs in enumerate(seeds):
            write_run(root / name / f"seed{k}", stages, accs)
    return root


@pytest.fixture
def grid(tmp_path):
    # the ceiling (clean) above the baseline (ce); smkd trains peer_a and peer_b only
    return make_grid(tmp_path / "grid", {
        "ce": (CE, [{"student": 0.60}, {"student": 0.70}]),
        "clean": (CE, [{"student": 0.85}, {"student": 0.95}]),
        "kd": (KD, [{"teacher": 0.90, "student": 0.70}, {"teacher": 0.92, "student": 0.80}]),
        "smkd": (MUTUAL, [{"peer_a": 0.80, "peer_b": 0.70}, {"peer_a": 0.70, "peer_b": 0.72}]),
    })


def report(*args):
    res = CliRunner().invoke(main, ["report", *map(str, args)], catch_exceptions=False)
    table = {}
    for line in res.stdout.splitlines()[2:]:
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            table[cells[0]] = cells
    return res, table, [line for line in res.stderr.splitlines() if line]


def test_a_variant_without_the_student_is_reported_with_its_final_model(grid):
    res, table, warnings = report(grid)
    assert res.exit_code == 0, res.output
    assert {v: cells[1] for v, cells in table.items()} == {
        "ce": "student", "clean": "student", "kd": "student", "smkd": "peer_a"}
    assert table["smkd"][3] == "75.00 ± 7.07"  # peer_a's mean and std over its 2 seeds
    assert warnings == ["kdcore: warning: no model 'student' in 1 variant(s); reported with "
                        "their final trained model instead (smkd: peer_a)"]


def test_an_explicit_model_is_a_preference(grid, tmp_path):
    res, table, warnings = report(grid, "--model", "teacher", "--csv", tmp_path / "t.csv")
    assert res.exit_code == 0, res.output
    assert {v: cells[1] for v, cells in table.items()} == {
        "ce": "student", "clean": "student", "kd": "teacher", "smkd": "peer_a"}
    assert warnings == ["kdcore: warning: no model 'teacher' in 3 variant(s); reported with "
                        "their final trained model instead (ce: student, clean: student, "
                        "smkd: peer_a)"]
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert [(r["variant"], r["model"]) for r in rows] == [
        ("ce", "student"), ("clean", "student"), ("kd", "teacher"), ("smkd", "peer_a")]
    assert "gap_recovered" not in rows[0]


def test_an_explicit_model_no_run_has_is_an_error(grid):
    res, table, warnings = report(grid, "--model", "studnet")
    assert res.exit_code == 2 and not table
    assert warnings == ["kdcore: error: no run has model 'studnet' (models: peer_a, peer_b, "
                        "student, teacher)"]


def test_gap_column_against_hand_computed_values(grid, tmp_path):
    res, table, warnings = report(grid, "--baseline", "ce", "--ceiling", "clean",
                                  "--csv", tmp_path / "t.csv")
    assert res.exit_code == 0, res.output
    # baseline 0.65, ceiling 0.90: kd's student 0.75 -> 0.4, smkd's peer_a 0.75 -> 0.4
    assert {v: cells[-1] for v, cells in table.items()} == {
        "ce": "+0.00", "clean": "+1.00", "kd": "+0.40", "smkd": "+0.40"}
    assert len(warnings) == 1 and "smkd: peer_a" in warnings[0]  # only the model warning
    gaps = {r["variant"]: r["gap_recovered"] for r in csv.DictReader((tmp_path / "t.csv").open())}
    assert {v: float(g) for v, g in gaps.items()} == pytest.approx(
        {"ce": 0.0, "clean": 1.0, "kd": 0.4, "smkd": 0.4})


@pytest.mark.parametrize(("base", "top"), [("clean", "ce"), ("kd", "ce")])
def test_a_ceiling_below_the_baseline_leaves_the_gap_empty(grid, tmp_path, base, top):
    res, table, warnings = report(grid, "--baseline", base, "--ceiling", top,
                                  "--csv", tmp_path / "t.csv")
    assert res.exit_code == 0, res.output
    assert [cells[-1] for cells in table.values()] == ["n/a"] * 4
    assert "+1.00" not in res.stdout
    acc = {"ce": "65.00", "kd": "75.00", "clean": "90.00"}
    assert (f"kdcore: warning: gap recovered is n/a: ceiling '{top}' (student, {acc[top]}%) is "
            f"not above baseline '{base}' (student, {acc[base]}%)") in warnings
    assert len(warnings) == 2  # and the one about smkd's model
    gaps = [r["gap_recovered"] for r in csv.DictReader((tmp_path / "t.csv").open())]
    assert gaps == [""] * 4


def test_a_ceiling_equal_to_the_baseline(tmp_path):
    root = make_grid(tmp_path / "g", {"ce": (CE, [{"student": 0.7}]),
                                      "clean": (CE, [{"student": 0.7}]),
                                      "kd": (KD, [{"teacher": 0.9, "student": 0.8}])})
    res, table, warnings = report(root, "--baseline", "ce", "--ceiling", "clean")
    assert [cells[-1] for cells in table.values()] == ["n/a"] * 3
    assert warnings == ["kdcore: warning: gap recovered is n/a: ceiling 'clean' (student, "
                        "70.00%) is not above baseline 'ce' (student, 70.00%)"]


@pytest.mark.parametrize(("args", "warning"), [
    (["--baseline", "ce"], "no gap column: --baseline ce needs --ceiling too"),
    (["--ceiling", "clean"], "no gap column: --ceiling clean needs --baseline too"),
])
def test_a_gap_without_both_references_warns_and_has_no_column(grid, args, warning):
    res, table, warnings = report(grid, "--model", "student", *args)
    assert res.exit_code == 0, res.output
    assert "gap recovered" not in res.stdout and len(table["ce"]) == 6
    assert f"kdcore: warning: {warning}" in warnings


def test_a_reference_variant_missing_from_the_grid(grid):
    res, table, warnings = report(grid, "--baseline", "ce", "--ceiling", "clen")
    assert res.exit_code == 0, res.output
    assert [cells[-1] for cells in table.values()] == ["n/a"] * 4
    assert ("kdcore: warning: gap recovered is n/a: ceiling 'clen' not among the variants "
            "(ce, clean, kd, smkd)") in warnings


def test_no_gap_asked_no_gap_warning(grid):
    _, _, warnings = report(grid, "--model", "student")
    assert warnings == ["kdcore: warning: no model 'student' in 1 variant(s); reported with "
                        "their final trained model instead (smkd: peer_a)"]


def test_unfinished_runs_are_named_as_left_out(grid):
    """A run still going, stopped or failed was started but has no summary.json: the table
    leaves it out, and said nothing of it. One killed before its first epoch (its recipe.toml
    and log.txt, no history) or whose history is gone (its checkpoint) counts as well; a
    folder of other files does not."""
    for seed in (2, 3):
        write_run(grid / "kd" / f"seed{seed}", KD, {"student": 0.1})
        (grid / "kd" / f"seed{seed}" / "summary.json").unlink()
    res, table, warnings = report(grid, "--model", "student")
    assert res.exit_code == 0 and table["kd"][2] == "2", res.output  # seeds 0 and 1 only
    assert warnings[0] == (
        f"kdcore: warning: 2 unfinished runs left out (started, no summary.json: "
        f"running, stopped or failed): {grid / 'kd' / 'seed2'}, {grid / 'kd' / 'seed3'}")
    early, moved, other = (grid / "ce" / n for n in ("seed5", "seed6", "notes"))
    for folder, files in ((early, ("recipe.toml", "log.txt")), (moved, ("checkpoint.pt",)),
                          (other, ("log.txt", "plot.png"))):
        folder.mkdir()
        for name in files:
            (folder / name).write_text("x")
    _, table, warnings = report(grid, "--model", "student")
    assert warnings[0] == (
        f"kdcore: warning: 4 unfinished runs left out (started, no summary.json: running, "
        f"stopped or failed): {early}, {moved}, {grid / 'kd' / 'seed2'}, {grid / 'kd' / 'seed3'}")
    assert table["ce"][2] == "2"
    for folder in (early, moved, other):
        shutil.rmtree(folder)
    for seed, count, end in [(4, 3, "kd/seed3"), (5, 4, "kd/seed3"), (6, 5, "kd/seed3"),
                             (7, 6, "kd/seed2 and 1 more"),
                             (8, 7, "ce/seed8 and 2 more")]:
        write_run(grid / "ce" / f"seed{seed}", CE, {"student": 0.1})
        (grid / "ce" / f"seed{seed}" / "summary.json").unlink()
        _, _, warnings = report(grid, "--model", "student")
        assert warnings[0].startswith(f"kdcore: warning: {count} unfinished runs left out")
        assert warnings[0].endswith(f"{grid}/{end}"), warnings[0]  # five named, in order
    finished = grid / "kd" / "seed0"
    assert "unfinished" not in " ".join(report(finished)[2])  # a run given by itself
    (finished / "summary.json").unlink()
    (grid / "kd" / "seed1" / "summary.json").unlink()
    res = CliRunner().invoke(main, ["report", str(grid / "kd")])
    assert res.exit_code == 2 and "no finished runs" in res.output


def test_final_role_reads_the_recipe_else_the_summary(tmp_path):
    write_run(tmp_path / "dml", [("mutual", ["peer_b", "peer_a"])],
              {"peer_a": 0.5, "peer_b": 0.6})
    write_run(tmp_path / "plain", KD, {"student": 0.5, "teacher": 0.6}, history=False)
    write_run(tmp_path / "kd", KD, {"student": 0.5, "teacher": 0.6})
    runs = {r.variant: r for r in find_runs([tmp_path])}
    assert final_role(runs["dml"]) == "peer_b"  # the first role of the last stage
    assert final_role(runs["plain"]) == "teacher"  # no history: the summary's last role
    assert final_role(runs["kd"]) == "student"
    choice = choose_models(list(runs.values()), "peer_a")
    assert choice.models == {"dml": "peer_a", "kd": "student", "plain": "teacher"}
    assert choice.others == ["kd", "plain"]


@pytest.mark.parametrize("recipe", [
    "",  # no stages
    "stages = [1, 2]",  # stages that are not tables
    '[[stages]]\nname = "warm"\n',  # a stage that trains nothing
    None,  # a history.h5 that is not HDF5
])
def test_final_role_of_a_recipe_without_trained_stages_is_the_summarys_last(tmp_path, recipe):
    run_dir = tmp_path / "odd"
    write_run(run_dir, [("x", ["student"])], {"student": 0.5, "teacher": 0.6},
              recipe=recipe or "")
    if recipe is None:
        (run_dir / "history.h5").write_bytes(b"not HDF5")
    (run,) = find_runs([run_dir])
    assert final_role(run) == "teacher"


def test_choose_models_prefers_the_student_and_names_none_only_when_asked(tmp_path):
    # the student trained first, the teacher last: its final role is the teacher
    write_run(tmp_path / "g" / "rev", [("s", ["student"]), ("t", ["teacher"])],
              {"student": 0.5, "teacher": 0.6})
    write_run(tmp_path / "g" / "smkd", MUTUAL, {"peer_a": 0.5, "peer_b": 0.6})
    runs = find_runs([tmp_path / "g"])
    choice = choose_models(runs)  # the defaults: "student", not named by the user
    assert (choice.models, choice.others) == ({"rev": "student", "smkd": "peer_a"}, ["smkd"])
    only_mutual = [r for r in runs if r.variant == "smkd"]
    assert choose_models(only_mutual).models == {"smkd": "peer_a"}  # no error unless explicit


def test_choose_models_of_runs_without_models(tmp_path):
    from kdcore.errors import KdcoreError
    from kdcore.report import RunResult

    empty = [RunResult(tmp_path / "v", "v", {})]
    assert final_role(empty[0]) is None
    choice = choose_models(empty)
    assert (choice.models, choice.others) == ({}, [])
    with pytest.raises(KdcoreError) as exc:
        choose_models(empty, "student", explicit=True)
    assert str(exc.value) == "no run has model 'student' (models: none)"


@pytest.mark.parametrize(("text", "said"), [
    ('{"seed": 7}', "model 'seed': not an object"),  # another program's summary.json
    ("[1, 2]", "expected an object of model roles"),
    ("{}", "expected an object of model roles"),
    ('{"student": {"last_test_acc": 0.5}}', "model 'student': no 'test_acc_at_best_val'"),
    ('{"student": {"test_acc_at_best_val": "0.9", "last_test_acc": 0.5, '
     '"test_bacc_at_best_val": null, "last_test_bacc": null}}',
     "model 'student': 'test_acc_at_best_val' is not a number"),
    ('{"student": {"test_acc_at_best_val": 0.9, "last_test_acc": true, '
     '"test_bacc_at_best_val": null, "last_test_bacc": null}}',
     "model 'student': 'last_test_acc' is not a number"),
    ("{not json", "JSONDecodeError: Expecting property name"),
    (b"\xff\xfe", "UnicodeDecodeError"),
])
def test_a_summary_that_is_not_a_runs_is_one_line_naming_it(tmp_path, text, said):
    write_run(tmp_path / "grid" / "ce" / "seed0", CE, {"student": 0.6})
    other = tmp_path / "grid" / "tool" / "summary.json"
    other.parent.mkdir()
    other.write_bytes(text if isinstance(text, bytes) else text.encode())
    result = CliRunner().invoke(main, ["report", str(tmp_path / "grid")])
    assert result.exit_code == 2
    assert result.output.startswith(f"kdcore: error: {other}: not a kdcore run summary (")
    assert said in result.output and result.output.count("\n") == 1
    # null accuracies (a run without a validation split) are a run's
    other.write_text('{"student": {"test_acc_at_best_val": null, "last_test_acc": 0.5, '
                     '"test_bacc_at_best_val": null, "last_test_bacc": 0.5}}')
    assert len(find_runs([tmp_path / "grid"])) == 2
