"""kdcore.report_html's page, element by element, from runs written by the test (no training)."""

from __future__ import annotations

import base64
import re
from importlib import metadata
from pathlib import Path

import pytest

from kdcore import report_html
from kdcore.figures import Figure
from kdcore.history_writer import HistoryWriter
from kdcore.report import RunResult
from kdcore.report_html import RUN_COLUMNS, render, run_cells, write_page
from tests.test_report_html import Page

RECIPE = """[run]
seed = 3
[data]
dataset = "digits"
batch_size = 32
[data.noise]
model = "pair_flip"
[data.noise.params]
rate = 0.25
"""


def _run(root: Path, name: str, variant: str, recipe: str | None = RECIPE) -> RunResult:
    path = root / variant / name
    path.mkdir(parents=True)
    if recipe is not None:
        (path / "recipe.toml").write_text(recipe, encoding="utf-8")
    return RunResult(path=path, variant=variant, summary={"student": {}, "teacher": {}})


def _history(run: RunResult, setup: dict) -> None:
    import torch

    HistoryWriter(run.path / "history.h5").create(
        recipe_toml="", versions={"kdcore": "0"}, num_classes=2, class_names=["a", "b"],
        constants={}, transition_matrix=torch.eye(2), setup=setup)


def test_a_run_row_is_where_it_is_and_how_it_was_set_up(tmp_path):
    run = _run(tmp_path, "seed3", "kd")
    _history(run, {"device": "cuda:0", "torch": "9.9"})
    assert run_cells(run) == ["kd", "seed3", str(run.path), "student, teacher",
                              "digits, pair_flip 0.25", "32", "3", "cuda:0", "9.9"]
    assert len(RUN_COLUMNS) == len(run_cells(run))


@pytest.mark.parametrize("recipe, cells", [
    (RECIPE.replace("[data.noise.params]\nrate = 0.25\n", ""), ["digits, pair_flip", "32", "3"]),
    (RECIPE.replace("seed = 3", ""), ["-", "-", "-"]),  # a key missing
    ("[run\n", ["-", "-", "-"]),  # not TOML
    (None, ["-", "-", "-"]),  # no file
    ("data = 3\n[run]\nseed = 1\n", ["-", "-", "-"]),  # a table that is not one
])
def test_what_a_run_row_cannot_read_is_a_dash(tmp_path, recipe, cells):
    run = _run(tmp_path, "seed0", "v", recipe)
    _history(run, {"torch": "1.0"})  # no device recorded
    assert run_cells(run)[4:] == [*cells, "-", "1.0"]


def test_a_run_row_without_a_readable_history(tmp_path):
    run = _run(tmp_path, "seed0", "v")
    (run.path / "history.h5").write_bytes(b"not hdf5")
    assert run_cells(run)[7:] == ["-", "-"]
    (run.path / "history.h5").unlink()
    assert run_cells(run)[7:] == ["-", "-"]


def _page(tmp_path: Path, figures: list[Figure], notes: tuple[str, ...] = ()) -> str:
    runs = [_run(tmp_path, "seed0", "a"), _run(tmp_path, "seed1", "a"),
            _run(tmp_path, "seed0", "b")]
    table = (["variant", "model", "acc", "gap"], [["a", "student", "90.00", "1.0"],
                                                  ["b", "student", "80.00", "-"]])
    return render(runs, table, figures, title="Grid <1>", notes=notes)


def test_the_page_from_head_to_foot(tmp_path, monkeypatch):
    monkeypatch.setattr(report_html.metadata, "version", lambda name: f"{name}-7.1")
    png = b"\x89PNG\r\n\x1a\n and the rest"
    figures = [Figure("curves", "Curves & more", "What it shows", png),
               Figure("classes", "Classes", "Per class", b"\x89PNG 2")]
    html = _page(tmp_path, figures, notes=("seeds differ", "a <note>"))
    lines = html.split("\n")
    assert lines[:3] == ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                         '<meta name="viewport" content="width=device-width, initial-scale=1">']
    assert lines[3].startswith("<title>Grid &lt;1&gt;</title><style>")
    assert f"<style>{report_html.STYLE}</style></head><body>\n<h1>Grid &lt;1&gt;</h1>\n<p>kdcore " \
        in html
    assert html.endswith("\n</body></html>\n")
    intro = re.search(r"<p>(kdcore .*?)</p>", html).group(1)
    assert re.fullmatch(
        r"kdcore kdcore-7\.1, \d{4}-\d\d-\d\d \d\d:\d\d UTC: 3 run\(s\) in 2 variant\(s\)\. Test "
        r"accuracy in %, mean ± standard deviation over seeds, at the epoch of best "
        r"noisy-validation accuracy and at the last epoch\.", intro)
    assert ('<nav><a href="#results">Results</a><a href="#runs">Runs</a>'
            '<a href="#figures">Figures</a></nav>') in lines
    order = [lines.index(x) for x in ('<h2 id="results">Results</h2>',
                                      '<p class="note">seeds differ</p>',
                                      '<p class="note">a &lt;note&gt;</p>',
                                      '<h2 id="runs">Runs</h2>', '<h2 id="figures">Figures</h2>')]
    assert order == sorted(order)
    results = next(line for line in lines if line.startswith('<table id="results-table">'))
    assert results == ('<table id="results-table"><thead><tr><th>variant</th><th>model</th>'
                       '<th>acc</th><th>gap</th></tr></thead><tbody><tr><td>a</td>'
                       '<td>student</td><td class="num">90.00</td><td class="num">1.0</td>'
                       '</tr><tr><td>b</td><td>student</td><td class="num">80.00</td>'
                       '<td class="num">-</td></tr></tbody></table>')
    runs = next(line for line in lines if line.startswith('<table id="runs-table">'))
    assert 'class="num"' not in runs and runs.count("<tr>") == 4
    parsed = Page()
    parsed.feed(html)
    assert parsed.tables["runs-table"][0] == RUN_COLUMNS
    assert [r[:2] for r in parsed.tables["runs-table"][1:]] == [["a", "seed0"], ["a", "seed1"],
                                                                ["b", "seed0"]]
    div = lines[-3]
    assert div.startswith('<div class="figures"><figure id="fig-curves"><img alt="Curves &amp; '
                          'more" src="data:image/png;base64,')
    assert div.count("<figure ") == 2 and '<figure id="fig-classes">' in div
    assert "<figcaption>What it shows</figcaption></figure><figure " in div
    assert div.endswith("<figcaption>Per class</figcaption></figure></div>")
    sources = [img["src"] for img in parsed.images]
    assert [base64.b64decode(s.split(",", 1)[1]) for s in sources] == [png, b"\x89PNG 2"]


def test_a_page_without_figures_says_why_and_a_source_tree_says_so(tmp_path, monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(report_html.metadata, "version", missing)
    html = _page(tmp_path, [])
    assert "<p>No figures: the runs have no history to draw from.</p>\n</body>" in html
    assert '<div class="figures">' not in html and '<p class="note">' not in html
    assert "<p>kdcore (not installed), " in html


def test_the_page_is_written_as_index_html(tmp_path):
    path = write_page("<p>page</p>\n", tmp_path / "out" / "report")
    assert path == tmp_path / "out" / "report" / "index.html"
    assert path.read_text(encoding="utf-8") == "<p>page</p>\n"


def test_the_pages_time_is_utc_whatever_the_machines_zone(tmp_path, monkeypatch):
    import datetime as dt
    import time

    monkeypatch.setenv("TZ", "Asia/Kathmandu")  # UTC+05:45: no whole-hour coincidence
    time.tzset()
    try:
        if time.localtime().tm_gmtoff == 0:  # no tz database: the zone would be UTC itself
            pytest.skip("this machine has no Asia/Kathmandu time zone")
        before = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        html = _page(tmp_path, [])
        after = dt.datetime.now(dt.UTC)
    finally:
        monkeypatch.undo()
        time.tzset()
    stamp = re.search(r", (\d{4}-\d\d-\d\d \d\d:\d\d) UTC: ", html).group(1)
    shown = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M").replace(tzinfo=dt.UTC)
    assert before <= shown <= after
