"""What ``kdcore report`` does: the table, its CSV, the figures and the HTML page."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kdcore.cli_files import check_output, output_dir, reading, write_output
from kdcore.errors import KdcoreError, printable

if TYPE_CHECKING:
    from kdcore.report import RunResult


def report_runs(runs: Sequence[Path], *, md_path: Path | None, csv_path: Path | None,
                plots: Path | None, html_dir: Path | None, role: str | None,
                baseline: str | None, ceiling: str | None, gap_models: Sequence[str]) -> None:
    """Report the finished runs under ``runs`` (the options of ``kdcore report``)."""
    from kdcore import report as rp
    from kdcore import report_models as rm
    from kdcore.provenance import mixed_code

    # every output checked before anything is read or printed
    targets = [check_output(path) for path in (md_path, csv_path) if path is not None]
    if len(targets) == 2 and targets[0] == targets[1]:
        raise KdcoreError(f"--markdown and --csv name one file, {md_path}; give each its own")
    for folder in (plots, html_dir):
        if folder is not None:
            output_dir(folder)
    if html_dir is not None:
        check_output(html_dir / "index.html")
    baseline, ceiling = (None if v is None else rp.variant_label(v) for v in (baseline, ceiling))
    found = rp.find_runs(runs)
    choice = rm.choose_models(found, role or "student", explicit=role is not None)
    shown = rm.chosen_runs(found, choice)
    rows = rp.aggregate(shown)
    gap_models = tuple(gap_models) or tuple(dict.fromkeys(choice.models.values()))
    notes = [w for w in [rp.unfinished_note(runs, found), choice.warning(),
                         rp.mixed_datasets(shown), rp.mixed_noise(shown, baseline, ceiling),
                         mixed_code([r.path for r in shown])]
             + rm.gap_warnings(rows, baseline, ceiling, gap_models) if w]
    for line in notes:
        _warn(line)
    table = rp.markdown_table(rows, baseline=baseline, ceiling=ceiling, gap_models=gap_models)
    if csv_path:  # before the table is printed: a write the system refuses is one line
        csv_rows = rows
        if baseline is not None and ceiling is not None:
            gaps = rp.gap_recovery(rows, baseline, ceiling, gap_models)
            csv_rows = [dict(r, gap_recovered=gaps.get((r["variant"], r["model"])))
                        for r in rows]
        rp.write_csv(csv_rows, csv_path)
    if md_path:
        write_output(md_path, lambda handle: handle.write(table))
        click.echo(f"wrote {md_path}")
    else:
        click.echo(table, nl=False)
    if csv_path:
        click.echo(f"wrote {csv_path}")
    if plots or html_dir:
        from kdcore.figures import draw_figures, write_figures

        figures, unread = _drawn(shown, draw_figures)
        for line in unread:
            _warn(line)
        notes += unread
        if plots:
            written = write_figures(figures, plots)
            click.echo(f"wrote {len(written)} plots to {plots}")
        if html_dir:
            from kdcore.report_html import render, write_page

            cells = rp.table_cells(rows, baseline=baseline, ceiling=ceiling,
                                   gap_models=gap_models)
            title = "kdcore report: " + ", ".join(str(r) for r in runs)
            page = write_page(render(shown, cells, figures, title=title, notes=notes),
                              html_dir)
            click.echo(f"wrote {page} (1 table, {len(figures)} figures)")


def _drawn(runs: Sequence[RunResult], draw: Callable[[list[RunResult]], list[Any]]
           ) -> tuple[list[Any], list[str]]:
    """The figures of the runs whose history can be read, and a line for each of the others:
    a run whose ``history.h5`` was deleted to save space, or is damaged, keeps its place in
    the table (its summary) and is left out of the figures, rather than ending the report."""
    from kdcore.history import History

    readable, lines = [], []

    def leave_out(run: RunResult, exc: KdcoreError) -> None:
        lines.append(f"{run.path}: left out of the figures, its summary is in the table ({exc})")

    for run in runs:
        try:
            with History(run.path):
                readable.append(run)
        except KdcoreError as exc:
            leave_out(run, exc)
    safe_draw = reading(draw)  # a damaged history's h5py and numpy errors as one line
    try:
        return safe_draw(readable), lines
    except KdcoreError:  # a history that opens but fails further in: which one, run by run
        pass
    drawable = []
    for run in readable:
        try:
            safe_draw([run])
            drawable.append(run)
        except KdcoreError as exc:
            leave_out(run, exc)
    return safe_draw(drawable), lines


def _warn(line: str) -> None:
    click.echo(f"kdcore: warning: {printable(line)}", err=True)  # a run's name may hold anything
