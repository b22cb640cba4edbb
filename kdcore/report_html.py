"""One self-contained HTML page of a grid or a run: the results table, the runs, every figure.

The page loads nothing: styles are inline and figures are PNGs in ``data:`` URIs, so it can be
mailed, archived or opened offline; it runs no script.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from html import escape
from importlib import metadata
from pathlib import Path

from kdcore.cli_files import output_dir, write_output
from kdcore.figures import Figure
from kdcore.report import RunResult

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { background: #fff6e0; border-left: 4px solid #e0a800; padding: 0.4em 0.8em; }
.figures { display: flex; flex-wrap: wrap; gap: 1.5em; }
figure { margin: 0; max-width: 100%; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #555; max-width: 640px; }
nav a { margin-right: 1em; }
"""


def _table(header: Sequence[str], body: Sequence[Sequence[str]], *, numeric_from: int = 2,
           table_id: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    rows = []
    for cells in body:
        tds = "".join(f'<td class="num">{escape(c)}</td>' if i >= numeric_from
                      else f"<td>{escape(c)}</td>" for i, c in enumerate(cells))
        rows.append(f"<tr>{tds}</tr>")
    return (f'<table id="{table_id}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _figure(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (f'<figure id="fig-{escape(fig.name)}"><img alt="{escape(fig.title)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{escape(fig.caption)}'
            "</figcaption></figure>")


RUN_COLUMNS = ["variant", "run", "directory", "models", "data", "batch", "seed", "device",
               "torch"]
"""The page's table of runs: where each is, and how it was set up (mdistiller's and
RepDistiller's users ask which batch size and device a number came from)."""


def run_cells(run: RunResult) -> list[str]:
    """One row of the table of runs: the resolved recipe's data, batch size and seed, and the
    history's setup; ``-`` for what a run does not hold or cannot be read."""
    import tomllib

    from kdcore.errors import KdcoreError
    from kdcore.history import open_history

    cells = [run.variant, run.path.name, str(run.path), ", ".join(run.summary)]
    try:
        recipe = tomllib.loads((run.path / "recipe.toml").read_text(encoding="utf-8"))
        data, seed = recipe["data"], recipe["run"]["seed"]
        noise = data["noise"]
        rate = noise.get("params", {}).get("rate")
        cells += [f"{data['dataset']}, {noise['model']}" + ("" if rate is None else f" {rate}"),
                  str(data["batch_size"]), str(seed)]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        cells += ["-"] * 3
    try:
        with open_history(run.path / "history.h5") as h:
            setup = h.setup
        cells += [str(setup.get("device", "-")), str(setup.get("torch", "-"))]
    except (KdcoreError, OSError, ValueError):
        cells += ["-"] * 2
    return cells


def render(runs: Sequence[RunResult], table: tuple[list[str], list[list[str]]],
           figures: Sequence[Figure], *, title: str, notes: Sequence[str] = ()) -> str:
    """The page: ``table`` (header and cells, :func:`kdcore.report.table_cells`), the list of
    runs, ``notes`` (warnings the command line also printed) and ``figures``."""
    try:
        version = metadata.version("kdcore")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        version = "(not installed)"
    run_rows = [run_cells(r) for r in runs]
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>kdcore {escape(version)}, {escape(when)}: {len(runs)} run(s) in "
        f"{len({r.variant for r in runs})} variant(s). Test accuracy in %, mean ± standard "
        "deviation over seeds, at the epoch of best noisy-validation accuracy and at the last "
        "epoch.</p>",
        '<nav><a href="#results">Results</a><a href="#runs">Runs</a>'
        '<a href="#figures">Figures</a></nav>',
        '<h2 id="results">Results</h2>',
        *(f'<p class="note">{escape(n)}</p>' for n in notes),
        _table(*table, numeric_from=2, table_id="results-table"),
        '<h2 id="runs">Runs</h2>',
        _table(RUN_COLUMNS, run_rows, numeric_from=99,
               table_id="runs-table"),
        '<h2 id="figures">Figures</h2>',
        f'<div class="figures">{"".join(_figure(f) for f in figures)}</div>'
        if figures else "<p>No figures: the runs have no history to draw from.</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_page(page: str, out_dir: Path) -> Path:
    """``page`` as ``out_dir/index.html`` (written whole, then moved into place)."""
    path = output_dir(out_dir) / "index.html"
    write_output(path, lambda handle: handle.write(page))
    return path


__all__ = ["render", "write_page"]
