"""kdcore report --html: one self-contained page, read as HTML and rendered in headless Chromium.

The browser test needs Debian's ``chromium`` (``make browser`` installs it; ``make test`` runs
that first). Without it the test is skipped, except under CI, where a missing browser fails.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdcore.cli import main
from kdcore.report import aggregate, find_runs

pytest.importorskip("matplotlib")


class Page(HTMLParser):
    """The tables (their cell texts), images and every external reference of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict[str, str]] = []
        self.external: list[str] = []
        self.scripts = 0
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            value = a.get(key) or ""
            if value and not value.startswith(("data:", "#")):
                self.external.append(value)
        if tag == "script":
            self.scripts += 1
        elif tag == "link":
            self.external.append(a.get("href") or "<link>")
        elif tag == "table":
            self._table = a.get("id", f"table{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(a)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def page(report_grid, tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    res = CliRunner().invoke(main, ["report", str(report_grid), "--html", str(out),
                                    "--baseline", "ls", "--ceiling", "ls-weak"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    path = out / "index.html"
    images = path.read_text(encoding="utf-8").count("<img ")
    assert f"wrote {path} (1 table, {images} figures)" in res.output
    return path


def test_page_is_self_contained_and_holds_every_table_and_figure(page, report_grid):
    html = page.read_text(encoding="utf-8")
    parsed = Page()
    parsed.feed(html)
    assert parsed.external == [] and parsed.scripts == 0
    rows = aggregate(find_runs([report_grid]))
    results = parsed.tables["results-table"]
    assert results[0][:4] == ["variant", "model", "seeds", "test acc, best val (%)"]
    assert results[0][-1] == "gap recovered"
    shown = {(r[0], r[1]) for r in results[1:]}
    assert shown == {("ls", "student"), ("ls-weak", "student")}  # the reported model only
    for r in results[1:]:
        mean = next(x for x in rows if (x["variant"], x["model"]) == (r[0], r[1]))["best_mean"]
        assert r[3].startswith(f"{100 * mean:.2f} ± ")
    runs = parsed.tables["runs-table"]
    assert len(runs) == 1 + 4  # header, 2 variants x 2 seeds
    import torch

    assert runs[0] == ["variant", "run", "directory", "models", "data", "batch", "seed",
                       "device", "torch"]
    for row in runs[1:]:  # what each run was set up with (REPORT_RECIPE, on this machine)
        assert row[4:] == ["digits, symmetric 0.4", "64", row[1][-1], "cpu", torch.__version__]
    assert sorted(Path(page.parent).iterdir()) == [page]  # everything is inside the page
    assert len(parsed.images) >= 12
    for img in parsed.images:
        assert img["alt"]
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        assert base64.b64decode(img["src"][len(prefix):])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<title>kdcore report: " in html and unescape("&plusmn;") in html


def test_names_are_escaped(tmp_path, report_grid):
    from kdcore.figures import Figure
    from kdcore.report_html import render

    runs = find_runs([report_grid])
    fig = Figure("x", "<b>t</b>", "a & b", b"\x89PNG")
    html = render(runs[:1], (["<h>"], [["<script>"]]), [fig], title="<t>", notes=["<n>"])
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;" in html
    assert "<t>" not in html and "<n>" not in html


def test_a_run_without_its_setup_shows_dashes(tmp_path, report_grid):
    """A history written before kdcore recorded the setup, a recipe.toml gone."""
    import h5py

    from kdcore.report_html import run_cells

    run = tmp_path / "old"
    shutil.copytree(report_grid / "ls" / "seed0", run)
    with h5py.File(run / "history.h5", "a") as f:
        del f.attrs["setup"]
    (run / "recipe.toml").unlink()
    cells = run_cells(find_runs([run])[0])
    assert cells[:2] == ["old", "old"] and cells[4:] == ["-"] * 5


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHECK = """<script>window.addEventListener("load", function () {
  var out = {images: [].slice.call(document.images).map(function (i) {
      return {ok: i.complete, width: i.naturalWidth, shown: i.getBoundingClientRect().width}; }),
    tables: [].slice.call(document.querySelectorAll("table")).map(function (t) {
      return {id: t.id, rows: t.rows.length, height: t.getBoundingClientRect().height}; })};
  document.body.setAttribute("data-rendered", JSON.stringify(out));
});</script>"""


def test_page_renders_in_headless_chromium(page, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make browser` installs it (make test runs it)")
        pytest.skip("no chromium here: `make browser` installs Debian's package")
    # the report runs no script; this copy adds one that reports what the browser rendered
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"),
                     encoding="utf-8")
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1200,900", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    marker = 'data-rendered="'
    start = proc.stdout.index(marker) + len(marker)
    rendered = json.loads(unescape(proc.stdout[start:proc.stdout.index('"', start)]))
    parsed = Page()
    parsed.feed(page.read_text(encoding="utf-8"))
    assert len(rendered["images"]) == len(parsed.images)
    for img in rendered["images"]:  # decoded, with pixels, and laid out on the page
        assert img["ok"] and img["width"] > 100 and img["shown"] > 100, img
    tables = {t["id"]: t for t in rendered["tables"]}
    assert set(tables) == set(parsed.tables)
    for table_id, rows in parsed.tables.items():
        assert tables[table_id]["rows"] == len(rows) and tables[table_id]["height"] > 20


def test_runs_whose_history_is_gone_or_damaged_stay_in_the_table_and_leave_the_figures(
        tmp_path, report_grid):
    """A grid whose histories were deleted to save space (the summaries kept), or one damaged:
    the report said ``no history at ...`` and wrote no page, after printing the table."""
    grid = tmp_path / "grid"
    shutil.copytree(report_grid, grid)
    (grid / "ls" / "seed1" / "history.h5").unlink()
    (grid / "ls-weak" / "seed0" / "history.h5").write_bytes(b"not an HDF5 file")
    out = tmp_path / "html"
    res = CliRunner().invoke(main, ["report", str(grid), "--html", str(out), "--plots",
                                    str(tmp_path / "plots")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.stderr.splitlines() if line.startswith("kdcore: warning")]
    assert [w.split(": left out")[0] for w in warnings] == [
        f"kdcore: warning: {grid / 'ls' / 'seed1'}",
        f"kdcore: warning: {grid / 'ls-weak' / 'seed0'}"]
    assert f"(no history at {grid / 'ls' / 'seed1' / 'history.h5'})" in warnings[0]
    assert "damaged or not an HDF5 file" in warnings[1]
    parsed = Page()
    parsed.feed((out / "index.html").read_text(encoding="utf-8"))
    assert [r[2] for r in parsed.tables["results-table"][1:]] == ["2", "2"]  # seeds, summaries
    assert len(parsed.images) >= 12 and len(list((tmp_path / "plots").iterdir())) >= 12
    html = (out / "index.html").read_text(encoding="utf-8")
    assert html.count("left out of the figures") == 2  # the page says so too


def test_a_history_that_opens_but_cannot_be_drawn_leaves_only_its_run_out(tmp_path,
                                                                          report_grid):
    """Damage further in (HDF5's string table gone): the first draw fails, the runs are
    drawn one by one to find which, and the others' figures are drawn as before."""
    import h5py

    grid = tmp_path / "grid"
    shutil.copytree(report_grid, grid)
    whole = CliRunner().invoke(main, ["report", str(grid), "--plots", str(tmp_path / "all")])
    assert whole.exit_code == 0 and "warning" not in whole.output, whole.output
    with h5py.File(grid / "ls" / "seed0" / "history.h5", "r+") as f:
        del f["strings"]
    res = CliRunner().invoke(main, ["report", str(grid), "--plots", str(tmp_path / "p")],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    (warning,) = [line for line in res.stderr.splitlines() if "warning" in line]
    assert warning.startswith(f"kdcore: warning: {grid / 'ls' / 'seed0'}: left out of the "
                              "figures, its summary is in the table (cannot read the run's "
                              "files as a kdcore run's; one may be damaged (KeyError: ")
    drawn = sorted(p.name for p in (tmp_path / "p").iterdir())
    assert drawn == sorted(p.name for p in (tmp_path / "all").iterdir())  # ls keeps seed1
