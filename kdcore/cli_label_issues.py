"""``kdcore label-issues``: a finished run's ranked label issues (:mod:`kdcore.label_ranking`),
printed as a table with precision at k and recall where the true labels are known, or written
whole as CSV.

The command is built by :func:`command` and registered by :mod:`kdcore.cli`, which passes in
its one-line error handling and ``--help`` examples (this module does not import it: no
import cycle).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kdcore.cli_files import GivenPath, check_output, output_file
from kdcore.errors import printable

#: the list lengths at which precision is printed, besides ``--top`` and the whole list
PRECISION_AT = (100, 1000)


def precision_ks(top: int, length: int) -> list[int]:
    """``top``, 100, 1000 and ``length``, those not past the list's end, ascending."""
    return sorted({k for k in (top, *PRECISION_AT, length) if 0 < k <= length})


def write_csv(issues: Any, path: Path) -> None:
    """The whole list, one row per sample, :meth:`~kdcore.label_ranking.LabelIssues.table`'s
    columns; unknown ones (no true labels) as empty cells."""
    table = issues.table()
    with output_file(path, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(table)
        columns = [[""] * len(issues) if v is None else v.tolist() for v in table.values()]
        writer.writerows(zip(*columns))


def format_table(issues: Any, top: int) -> list[str]:
    """The first ``top`` entries as aligned text lines (epochs counted from 1, as the run's
    log prints them)."""
    k = min(top, len(issues))
    since = issues.since_epoch()[:k]
    header = ["rank", "sample_id", "given", "refined", *(["true"] if issues.clean is not None
                                                          else []),
              "score", "model_doubt", "flagged", "excluded", "since"]
    rows = []
    for i in range(k):
        true = [str(issues.clean[i])] if issues.clean is not None else []
        rows.append([str(i + 1), str(issues.sample_id[i]), str(issues.given[i]),
                     str(issues.refined[i]), *true, f"{issues.score[i]:.4f}",
                     f"{issues.model_doubt[i]:.4f}",
                     f"{issues.times_flagged[i]}/{len(issues.rows)}",
                     f"{issues.times_excluded[i]}/{len(issues.rows)}",
                     f"{since[i][0]} {since[i][1] + 1}"])
    widths = [max(len(h), *(len(r[j]) for r in rows)) if rows else len(h)
              for j, h in enumerate(header)]
    return ["  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in [header, *rows]]


def class_legend(issues: Any, top: int) -> str | None:
    """``classes: 0 cat, 2 dog``: the names of the labels the first ``top`` rows show, when
    the dataset's names say more than the labels do (not digits' "0".."9")."""
    names = issues.class_names
    if not names or all(name == str(i) for i, name in enumerate(names)):
        return None
    k = min(top, len(issues))
    shown = [issues.given[:k], issues.refined[:k]]
    if issues.clean is not None:
        shown.append(issues.clean[:k])
    labels = sorted({int(v) for column in shown for v in column})
    if not labels:
        return None
    return "classes: " + ", ".join(f"{i} {printable(names[i])}" for i in labels
                                   if 0 <= i < len(names))


def summary_lines(issues: Any, top: int) -> list[str]:
    """What precedes and follows the table: the model, the list's size, precision and recall."""
    stage, epoch = issues.epochs[int(issues.rows[-1])]
    head = (f"model '{issues.model}': {len(issues)} of {issues.num_samples} samples flagged at "
            f"the last of its {len(issues.rows)} trained epochs (stage '{stage}' epoch "
            f"{epoch + 1}), ranked by score, then model doubt")
    if issues.num_mislabelled is None:
        return [head, "true labels unknown: no precision or recall"]
    tail = [f"precision at {k}: {issues.precision_at(k):.4f}"
            for k in precision_ks(top, len(issues))]
    recall = issues.recall
    tail.append(f"recall: {'n/a' if recall is None else f'{recall:.4f}'} "
                f"({issues.num_mislabelled} of {issues.num_samples} samples truly mislabelled)")
    return [head, *tail]


def command(user_errors: Callable[[Any], Any], examples: Callable[..., str]) -> click.Command:
    """The ``label-issues`` command, for :mod:`kdcore.cli` to register: ``user_errors`` turns a
    KdcoreError into one line and exit 2, ``examples`` makes the ``--help`` epilog."""

    @click.command("label-issues", epilog=examples(
        "kdcore label-issues runs/amlkd",
        "kdcore label-issues runs/amlkd --model teacher --top 50",
        "kdcore label-issues runs/amlkd --csv issues.csv"))
    @click.argument("run_dir", type=GivenPath(path_type=Path))
    @click.option("--model", "role", default=None, metavar="ROLE",
                  help="The model whose epochs are read (default: student, else the model of "
                       "the recipe's last stage).")
    @click.option("--top", default=20, show_default=True, type=int,
                  help="How many of the list to print.")
    @click.option("--csv", "csv_path", type=GivenPath(dir_okay=False, path_type=Path),
                  help="Write the whole list here as CSV: exact values, 0-based epochs, "
                       "unknown values (no true labels) as empty cells.")
    @user_errors
    def label_issues(run_dir: Path, role: str | None, top: int, csv_path: Path | None) -> None:
        """The samples of RUN_DIR whose given label the run believes wrong, ranked.

        A sample is flagged at an epoch of the model when the run's belief (the refined target
        where a refiner relabelled it, else the model's softmax) does not pick its given label.
        The list: the samples flagged at the model's last epoch, by score (the mean over its
        epochs of 1 - belief in the given label), ties by model_doubt (the same mean of 1 - the
        model's own softmax of the given label). With the true labels (synthetic noise):
        precision at k and recall. 'flagged' and 'excluded': of the model's epochs, how many
        flagged the sample and at how many a selection mask left it out (which does not flag);
        'since': the stage and epoch (from 1) where the current unbroken flagged streak began.
        """
        from kdcore.errors import KdcoreError
        from kdcore.label_ranking import find_label_issues

        if top <= 0:
            raise KdcoreError(f"--top takes a positive number, got {top}")
        if csv_path:
            check_output(csv_path)  # before the table is printed
        issues = find_label_issues(run_dir, role)
        if not (run_dir / "summary.json").is_file():  # a model's later epochs may be missing
            click.echo(f"kdcore: warning: {printable(str(run_dir))} is an unfinished run (no "
                       "summary.json): the list reads the epochs recorded so far", err=True)
        if csv_path:  # first: a write the system refuses ends in its one line, no table
            write_csv(issues, csv_path)
        head, *tail = summary_lines(issues, top)
        click.echo(head)
        for line in format_table(issues, top):
            click.echo(line)
        legend = class_legend(issues, top)
        if legend:
            click.echo(legend)
        for line in tail:
            click.echo(line)
        if csv_path:
            click.echo(f"wrote {len(issues)} rows to {csv_path}")

    return label_issues
