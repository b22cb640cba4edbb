"""kdcore ablate and kdcore report: grids, resumability, tables, plots."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kdcore.cli import main

FAST = ["--set", "stages.teacher.epochs=1", "--set", "stages.student.epochs=1"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    from tests.conftest import TINY_RECIPE

    root = tmp_path_factory.mktemp("grid")
    recipe = root / "tiny.toml"
    recipe.write_text(TINY_RECIPE.format(seed=0))
    out = root / "out"
    res = invoke("ablate", recipe, "--seeds", "0,1", "--variant", "kd:",
                 "--variant", "ce:stages.student.components.kd.enabled=false", *FAST,
                 "--out", out)
    assert res.exit_code == 0, res.output
    return recipe, out, res.output


def test_grid_layout_and_counts(grid):
    _, out, output = grid
    assert "4 ran, 0 skipped, 0 failed" in output
    for variant in ("kd", "ce"):
        for seed in (0, 1):
            summary = json.loads((out / variant / f"seed{seed}" / "summary.json").read_text())
            assert "student" in summary
    saved = (out / "ce" / "seed1" / "recipe.toml").read_text()
    assert "seed = 1" in saved and "enabled = false" in saved


def test_rerun_skips_finished_runs(grid):
    recipe, out, _ = grid
    res = invoke("ablate", recipe, "--seeds", "0,1", "--variant", "kd:",
                 "--variant", "ce:stages.student.components.kd.enabled=false", *FAST,
                 "--out", out)
    assert "4 of 4 runs already finished: skipped" in res.output
    assert "0 ran, 4 skipped" in res.output


def test_report_table_rows_and_means(grid, tmp_path):
    _, out, _ = grid
    path = tmp_path / "table.csv"
    res = invoke("report", out, "--model", "student", "--csv", path, "--markdown",
                 tmp_path / "t.md")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(path.open()))
    assert sorted((r["variant"], r["model"], r["seeds"]) for r in rows) == [
        ("ce", "student", "2"), ("kd", "student", "2")]
    for r in rows:
        accs = [json.loads((out / r["variant"] / f"seed{s}" / "summary.json").read_text())
                ["student"]["test_acc_at_best_val"] for s in (0, 1)]
        assert float(r["best_mean"]) == pytest.approx(statistics.fmean(accs), abs=1e-6)
        assert float(r["best_std"]) == pytest.approx(statistics.stdev(accs), abs=1e-6)
    md = (tmp_path / "t.md").read_text()
    table_lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 1 + 2 and "± " in md  # header and one row per variant


def test_report_gap_recovery_column(grid):
    # 1-epoch runs: kd's student may be above ce's or not; the gap is +1.00 or undefined
    _, out, _ = grid
    res = invoke("report", out, "--model", "student", "--baseline", "ce", "--ceiling", "kd")
    lines = [line for line in res.output.splitlines() if line.startswith("| kd")]
    mean = {v: statistics.fmean(
        json.loads((out / v / f"seed{s}" / "summary.json").read_text())
        ["student"]["test_acc_at_best_val"] for s in (0, 1)) for v in ("ce", "kd")}
    expected = "+1.00" if mean["kd"] > mean["ce"] else "n/a"
    assert lines and lines[0].rstrip(" |").endswith(expected)
    assert ("is not above baseline 'ce'" in res.stderr) == (expected == "n/a")


def _row(variant, model, best):
    return {"variant": variant, "model": model, "seeds": 3, "best_mean": best, "best_std": 0.0,
            "last_mean": best, "last_std": 0.0, "best_bacc_mean": best, "best_bacc_std": 0.0}


def test_gap_recovery_of_another_role_against_the_ce_student():
    # a mutual-learning method reports peer_a; CE and clean train a single "student"
    from kdcore.report import markdown_table

    rows = [_row("ce", "student", 0.80), _row("clean", "student", 0.90),
            _row("dml", "peer_a", 0.85), _row("dml", "peer_b", 0.88),
            _row("kd", "teacher", 0.95), _row("kd", "student", 0.82)]
    table = markdown_table(rows, baseline="ce", ceiling="clean",
                           gap_models=("student", "peer_a"))
    gaps = {tuple(c.strip() for c in line.split("|")[1:3]): line.split("|")[-2].strip()
            for line in table.splitlines()[2:]}
    assert gaps[("dml", "peer_a")] == "+0.50"
    assert gaps[("kd", "student")] == "+0.20"
    assert gaps[("clean", "student")] == "+1.00" and gaps[("ce", "student")] == "+0.00"
    assert gaps[("dml", "peer_b")] == "-" and gaps[("kd", "teacher")] == "-"


def test_a_markdown_cell_holding_a_bar_or_a_line_break_stays_one_cell():
    """A folder name (a variant made outside ablate) can hold '|' or a newline: the row
    gained a column, or split in two."""
    import re

    from kdcore.report import markdown_table

    table = markdown_table([_row("a|b", "student", 0.8), _row("x\ny", "student", 0.7)])
    lines = table.splitlines()
    assert len(lines) == 4
    assert [len(re.split(r"(?<!\\)\|", line)) for line in lines] == [8, 8, 8, 8]
    assert lines[2].startswith("| a\\|b | student |") and lines[3].startswith("| x y |")


def test_plot_curves_run_over_each_models_own_training_epochs(grid):
    # the grid's runs train the teacher for 1 epoch, then the student for 1
    from kdcore.figures import curve_series
    from kdcore.report import find_runs

    _, out, _ = grid
    series = curve_series(find_runs([out]))
    for metric in ("test/student/acc", "test/teacher/acc", "label/acc"):
        assert set(series[metric].runs) == {"kd", "ce"}, metric
        for curves in series[metric].runs.values():
            assert len(curves) == 2  # seeds
            assert all(c.shape == (1,) and np.isfinite(c).all() for c in curves), metric


def test_report_writes_valid_pngs(grid, tmp_path):
    _, out, _ = grid
    res = invoke("report", out, "--plots", tmp_path / "plots")
    assert res.exit_code == 0, res.output
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"label_acc.png", "transition_kd.png", "transition_ce.png"} <= names
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000
    assert res.stdout.splitlines()[-1] == f"wrote {len(pngs)} plots to {tmp_path / 'plots'}"


def test_grid_file_and_bad_input(tmp_path):
    from tests.conftest import TINY_RECIPE

    (tmp_path / "tiny.toml").write_text(TINY_RECIPE.format(seed=0))
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text('recipe = "tiny.toml"\nseeds = [3]\nset = ["stages.teacher.epochs=1",'
                         ' "stages.student.epochs=1"]\n[[variant]]\nname = "only"\n')
    res = invoke("ablate", "--grid", grid_file, "--out", tmp_path / "g")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "g" / "only" / "seed3" / "summary.json").is_file()
    bad = invoke("report", tmp_path / "nothing-here")
    assert bad.exit_code == 2 and "no such run directory" in bad.output
    bad = invoke("ablate", "--grid", grid_file, "--out", tmp_path / "g", "--seeds", "a")
    assert bad.exit_code == 2 and "--seeds" in bad.output


def _fake_run(folder, *, seed, rate=0.4, acc=0.5, extra="", model="student"):
    """A finished run's summary.json (one model's) and recipe.toml (``extra``: more of the
    recipe's TOML), written by hand."""
    import json as _json

    folder.mkdir(parents=True)
    metrics = {"test_acc_at_best_val": acc, "last_test_acc": acc, "test_bacc_at_best_val": acc,
               "last_test_bacc": acc}
    (folder / "summary.json").write_text(_json.dumps({model: metrics}))
    (folder / "recipe.toml").write_text(
        f'[run]\nname = "x"\nseed = {seed}\noutput_dir = "runs"\n'
        f"[data.noise.params]\nrate = {rate}\n{extra}")
    return folder


def test_report_counts_a_run_reached_twice_once(tmp_path):
    from kdcore.report import aggregate, find_runs

    _fake_run(tmp_path / "g" / "ce" / "seed0", seed=0, acc=0.2)
    _fake_run(tmp_path / "g" / "ce" / "seed1", seed=1, acc=0.4)
    for paths in ([tmp_path / "g", tmp_path / "g"], [tmp_path / "g" / "ce",
                                                     tmp_path / "g" / "ce" / "seed0"]):
        (row,) = aggregate(find_runs(paths))
        assert row["seeds"] == 2 and row["best_mean"] == pytest.approx(0.3)


def test_report_refuses_to_average_runs_that_only_share_a_folder_name(tmp_path):
    from kdcore.errors import KdcoreError
    from kdcore.report import find_runs

    _fake_run(tmp_path / "a" / "ce" / "seed0", seed=0)
    _fake_run(tmp_path / "b" / "ce" / "seed1", seed=1, rate=0.8)
    with pytest.raises(KdcoreError, match="would be averaged as variant 'ce', but their "
                                          "recipes differ at data.noise.params.rate"):
        find_runs([tmp_path])
    _fake_run(tmp_path / "c" / "ce" / "seed0", seed=0)
    with pytest.raises(KdcoreError, match="are both seed 0 of variant 'ce'"):
        find_runs([tmp_path / "a", tmp_path / "c"])
    # the same recipe's other seed, wherever it lies, is one more seed of the variant
    _fake_run(tmp_path / "d" / "ce" / "seed2", seed=2)
    assert [r.path for r in find_runs([tmp_path / "a", tmp_path / "d"])] == [
        tmp_path / "a" / "ce" / "seed0", tmp_path / "d" / "ce" / "seed2"]


def test_a_run_given_as_the_root_does_not_hide_the_runs_below_it(tmp_path):
    from kdcore.report import find_runs

    _fake_run(tmp_path / "kd", seed=0)
    _fake_run(tmp_path / "kd" / "ce" / "seed0", seed=0)
    assert sorted(r.variant for r in find_runs([tmp_path / "kd"])) == ["ce", "kd"]


def test_runs_are_found_root_first_then_in_path_order_each_once(tmp_path):
    from kdcore.report import find_runs

    root = _fake_run(tmp_path / "kd", seed=0)
    below = [_fake_run(root / name / "seed0", seed=0) for name in ("a", "b")]
    # "kd/a/seed0/summary.json" sorts before "kd/summary.json": the root's own run is put
    # first; a/seed0, found through the first path already, is skipped, not an end
    found = find_runs([below[0], root])
    assert [r.path for r in found] == [below[0], root, below[1]]
    assert [r.variant for r in found] == ["a", "kd", "b"]


def test_find_runs_says_where_it_looked_and_what_is_not_a_file(tmp_path):
    from kdcore.errors import KdcoreError
    from kdcore.report import find_runs

    empty = [tmp_path / "x", tmp_path / "y"]
    for folder in empty:
        folder.mkdir()
    with pytest.raises(KdcoreError) as exc:
        find_runs(empty)
    assert str(exc.value) == (f"no finished runs (directories with summary.json) under "
                              f"{empty[0]}, {empty[1]}")
    (tmp_path / "x" / "r").mkdir()
    (tmp_path / "x" / "r" / "history.h5").write_bytes(b"")  # a run still going, say
    with pytest.raises(KdcoreError) as exc:
        find_runs(empty)
    assert str(exc.value) == (f"no finished runs (directories with summary.json) under "
                              f"{empty[0]}, {empty[1]}; 1 unfinished run left out (started, no "
                              f"summary.json: running, stopped or failed): {empty[0] / 'r'}")
    (tmp_path / "y" / "r" / "summary.json").mkdir(parents=True)
    with pytest.raises(KdcoreError) as exc:
        find_runs(empty)
    assert str(exc.value) == f"{tmp_path / 'y' / 'r' / 'summary.json'} is not a file"


def test_the_variant_check_goes_on_past_a_run_without_its_recipe(tmp_path):
    from kdcore.errors import KdcoreError
    from kdcore.report import find_runs

    (_fake_run(tmp_path / "a" / "ce" / "seed0", seed=0) / "recipe.toml").unlink()
    twins = [_fake_run(tmp_path / name / "ce" / "seed0", seed=0) for name in ("b", "c")]
    with pytest.raises(KdcoreError) as exc:
        find_runs([tmp_path])
    assert str(exc.value) == (f"{twins[0]} and {twins[1]} are both seed 0 of variant 'ce'; "
                              "report them apart")


def test_a_saved_recipe_without_a_run_table_is_one_seed(tmp_path):
    from kdcore.report import find_runs

    run = _fake_run(tmp_path / "ce", seed=0)
    (run / "recipe.toml").write_text("[data]\nbatch_size = 4\n")
    assert [r.path for r in find_runs([tmp_path])] == [run]


def test_recipes_that_differ_name_their_first_five_keys(tmp_path):
    from kdcore.errors import KdcoreError
    from kdcore.report import find_runs

    runs = [_fake_run(tmp_path / name / "ce" / f"seed{k}", seed=k,
                      extra="[extra]\n" + "".join(f"{key} = {k}\n" for key in "abcdef"))
            for k, name in enumerate("pq")]
    with pytest.raises(KdcoreError) as exc:
        find_runs([tmp_path])
    assert str(exc.value) == (f"{runs[0]} and {runs[1]} would be averaged as variant 'ce', but "
                              "their recipes differ at extra.a, extra.b, extra.c, extra.d, "
                              "extra.e; report them apart")


def test_summaries_and_recipes_are_read_as_utf8_whatever_the_locale(tmp_path, monkeypatch):
    """On a machine whose locale encoding is ASCII (the C locale without Python's UTF-8 mode),
    a role or a recipe value outside ASCII still reads: both files are UTF-8 by definition."""
    import io
    import json as _json

    from kdcore.errors import KdcoreError
    from kdcore.report import find_runs

    first = _fake_run(tmp_path / "a" / "ce" / "seed0", seed=0, extra='[note]\ntext = "é"\n')
    again = _fake_run(tmp_path / "b" / "ce" / "seed0", seed=0, extra='[note]\ntext = "é"\n')
    summary = _json.loads((again / "summary.json").read_text())
    (again / "summary.json").write_text(_json.dumps({"élève": summary["student"]},
                                                    ensure_ascii=False), encoding="utf-8")
    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: encoding or "ascii")
    (run,) = find_runs([again])
    assert list(run.summary) == ["élève"]
    with pytest.raises(KdcoreError, match="are both seed 0 of variant 'ce'"):
        find_runs([first, again])


def test_a_summary_error_quotes_at_most_120_characters_of_the_reason(tmp_path, monkeypatch):
    from kdcore import report
    from kdcore.errors import KdcoreError

    path = _fake_run(tmp_path / "ce", seed=0) / "summary.json"

    def refuse(text):
        raise ValueError("why\n" + "x" * 200)

    monkeypatch.setattr(report.json, "loads", refuse)
    with pytest.raises(KdcoreError) as exc:
        report.read_summary(path)
    reason = "why " + "x" * 116  # line breaks as spaces, then cut
    assert str(exc.value) == f"{path}: not a kdcore run summary (ValueError: {reason})"


def test_report_refuses_outputs_it_cannot_write_before_it_prints(tmp_path):
    """The table was printed first, then '--csv .' failed; --markdown and --csv on one path
    wrote the Markdown, then replaced it with the CSV."""
    from tests.cli_helpers import one_line_error

    _fake_run(tmp_path / "runs" / "ce", seed=0)
    one_line_error(invoke("report", tmp_path / "runs", "--csv", tmp_path), "is a directory")
    one_line_error(invoke("report", tmp_path / "runs", "--csv", ""),
                   "an empty path; name a file or folder")  # '' was the current folder
    one_line_error(invoke("report", tmp_path / "runs", "--markdown", tmp_path / "x.md",
                          "--csv", tmp_path / "x.md"), "--markdown and --csv name one file")
    assert not (tmp_path / "x.md").exists()
    (tmp_path / "page" / "index.html").mkdir(parents=True)
    one_line_error(invoke("report", tmp_path / "runs", "--html", tmp_path / "page"),
                   "index.html: it is a folder")
    if Path("/proc/self").is_dir():  # a folder that exists and refuses new files, to root too
        one_line_error(invoke("report", tmp_path / "runs", "--csv", "/proc/kdcore.csv"),
                       "cannot write /proc/kdcore.csv")


def test_one_seed_has_no_spread_rather_than_a_spread_of_zero(tmp_path):
    import csv as _csv

    _fake_run(tmp_path / "runs" / "ce" / "seed0", seed=0, acc=0.25)
    _fake_run(tmp_path / "runs" / "kd" / "seed0", seed=0, acc=0.5)
    _fake_run(tmp_path / "runs" / "kd" / "seed1", seed=1, acc=0.7)
    res = invoke("report", tmp_path / "runs", "--csv", tmp_path / "t.csv")
    rows = {line.split("|")[1].strip(): line.split("|")[4].strip()
            for line in res.output.splitlines()[2:] if line.startswith("|")}
    assert rows == {"ce": "25.00", "kd": "60.00 ± 14.14"}
    table = {r["variant"]: r for r in _csv.DictReader((tmp_path / "t.csv").open())}
    assert table["ce"]["best_std"] == "" and table["ce"]["best_mean"] == "0.250000"
    assert table["kd"]["best_std"] == "0.141421"


def test_a_variant_folder_whose_name_is_not_utf8_is_reported_escaped(tmp_path):
    import os

    name = os.fsdecode(b"v\xff")  # a Latin-1 "ÿ" on a UTF-8 system: a lone surrogate
    _fake_run(tmp_path / "g" / name / "seed0", seed=0, acc=0.5)
    _fake_run(tmp_path / "g" / "ce" / "seed0", seed=0, acc=0.25)
    _fake_run(tmp_path / "g" / "clean" / "seed0", seed=0, acc=0.75)
    res = invoke("report", tmp_path / "g", "--csv", tmp_path / "t.csv", "--markdown",
                 tmp_path / "t.md", "--baseline", "ce", "--ceiling", "clean")
    assert res.exit_code == 0, res.output
    assert "| v\\udcff | student | 1 | 50.00 | 50.00 | 50.00 | +0.50 |" in (
        tmp_path / "t.md").read_text()
    with open(tmp_path / "t.csv", newline="") as fh:
        assert [r["variant"] for r in csv.DictReader(fh)] == ["ce", "clean", "v\\udcff"]
    # the same byte typed on the command line names the variant
    res = invoke("report", tmp_path / "g", "--baseline", name, "--ceiling", "clean")
    assert res.exit_code == 0 and "| ce | student | 1 | 25.00 | 25.00 | 25.00 | -1.00 |" in (
        res.output), res.output


# -- the command's wiring (kdcore/cli_report.py) ----------------------------------------------


def test_report_prints_the_table_it_writes_and_says_what_it_wrote(grid, tmp_path):
    _, out, _ = grid
    shown = invoke("report", out)
    md, table_csv = tmp_path / "t.md", tmp_path / "t.csv"
    written = invoke("report", out, "--markdown", md, "--csv", table_csv)
    assert shown.stdout == md.read_text() and shown.stdout.endswith(" |\n")
    assert written.stdout == f"wrote {md}\nwrote {table_csv}\n"
    assert "gap_recovered" not in table_csv.read_text().splitlines()[0]


def test_report_names_the_model_asked_for(grid):
    _, out, _ = grid
    teacher = invoke("report", out, "--model", "teacher").stdout
    rows = [line for line in teacher.splitlines() if line.startswith(("| kd", "| ce"))]
    assert len(rows) == 2 and all("| teacher |" in line for line in rows), teacher
    ghost = invoke("report", out, "--model", "ghost")
    assert ghost.exit_code == 2 and "'ghost'" in ghost.stderr and ghost.stdout == ""


def test_report_warnings_go_to_stderr_and_into_the_page(grid, tmp_path):
    _, out, _ = grid
    res = invoke("report", out, "--baseline", "ce", "--html", tmp_path / "page")
    note = "no gap column: --baseline ce needs --ceiling too"
    assert res.stderr == f"kdcore: warning: {note}\n" and note not in res.stdout
    page = (tmp_path / "page" / "index.html").read_text()
    assert f'<p class="note">{note}</p>' in page
    assert f"<title>kdcore report: {out}</title>" in page


def test_report_csv_holds_the_gap_recovered_with_both_references(grid, tmp_path):
    _, out, _ = grid
    path = tmp_path / "gap.csv"
    res = invoke("report", out, "--baseline", "ce", "--ceiling", "kd", "--csv", path)
    rows = {r["variant"]: r for r in csv.DictReader(path.open())}
    mean = {v: float(rows[v]["best_mean"]) for v in ("ce", "kd")}
    expected = ({"ce": "0.000000", "kd": "1.000000"} if mean["kd"] > mean["ce"]
                else {"ce": "", "kd": ""})
    assert {v: rows[v]["gap_recovered"] for v in ("ce", "kd")} == expected
    assert (res.stderr == "") == (mean["kd"] > mean["ce"])  # both references: no warning
    only = tmp_path / "only.csv"
    invoke("report", out, "--baseline", "ce", "--csv", only)
    assert "gap_recovered" not in only.read_text().splitlines()[0]


def test_the_gap_of_a_model_other_than_student_reaches_every_output(tmp_path):
    # the gap column is the reported model's, in the table, the CSV and the page alike; the
    # runs lie in two folders, both named in the page's title (hand-written runs have no
    # history to draw: the page gets no figures, and says why)
    first, second = tmp_path / "refs", tmp_path / "method"
    for folder, variant, acc in ((first, "ce", 0.25), (first, "clean", 0.75),
                                 (second, "dml", 0.5)):
        _fake_run(folder / variant / "seed0", seed=0, acc=acc, model="peer")
    md, table_csv, page = tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "page"
    res = invoke("report", first, second, "--model", "peer", "--baseline", "ce", "--ceiling",
                 "clean", "--markdown", md, "--csv", table_csv, "--html", page)
    assert res.exit_code == 0, res.output
    assert [line.split(": ", 2)[2] for line in res.stderr.splitlines()] == [
        f"{run}: left out of the figures, its summary is in the table (no history at "
        f"{run / 'history.h5'})" for run in (first / "ce" / "seed0", first / "clean" / "seed0",
                                             second / "dml" / "seed0")]
    assert f"wrote {page / 'index.html'} (1 table, 0 figures)" in res.output
    assert "| dml | peer | 1 | 50.00 | 50.00 | 50.00 | +0.50 |" in md.read_text()
    with open(table_csv, newline="") as fh:
        gaps = {r["variant"]: r["gap_recovered"] for r in csv.DictReader(fh)}
    assert gaps == {"ce": "0.000000", "clean": "1.000000", "dml": "0.500000"}
    html = (page / "index.html").read_text(encoding="utf-8")
    assert '<td>dml</td><td>peer</td>' in html and '<td class="num">+0.50</td></tr>' in html
    assert f"<title>kdcore report: {first}, {second}</title>" in html


def test_report_says_when_the_gap_compares_other_noise_than_the_baselines(tmp_path):
    _fake_run(tmp_path / "runs" / "ce" / "seed0", seed=0, acc=0.5)
    _fake_run(tmp_path / "runs" / "clean" / "seed0", seed=0, acc=0.9, rate=0.0)
    _fake_run(tmp_path / "runs" / "kd" / "seed0", seed=0, acc=0.7)
    same = invoke("report", tmp_path / "runs", "--baseline", "ce", "--ceiling", "clean")
    assert same.exit_code == 0 and "warning" not in same.output, same.output
    _fake_run(tmp_path / "runs" / "kd-20" / "seed0", seed=0, acc=0.8, rate=0.2)
    res = invoke("report", tmp_path / "runs", "--baseline", "ce", "--ceiling", "clean")
    assert res.exit_code == 0
    assert res.output.splitlines()[0] == (
        "kdcore: warning: the gap recovered compares variants trained on other label noise "
        "than the baseline 'ce' (none rate=0.4): kd-20 (none rate=0.2); their gap is measured "
        "against another noise's baseline")
    assert "| kd-20 | student | 1 | 80.00 | 80.00 | 80.00 | +0.75 |" in res.output
    assert "warning" not in invoke("report", tmp_path / "runs").output  # no gap: no line
