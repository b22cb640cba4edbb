"""What ``kdcore label-issues`` prints (kdcore/cli_label_issues.py), from a list built by hand:
the table's columns and alignment, the lines before and after it, and the lengths at which
precision is printed; no run is trained."""

from __future__ import annotations

import numpy as np
import pytest

from kdcore.cli_label_issues import class_legend, format_table, precision_ks, summary_lines
from kdcore.label_ranking import LabelIssues


def _issues(n: int = 3, *, clean: bool = True, mislabelled: int | None = None,
            class_names: tuple[str, ...] = ()) -> LabelIssues:
    """``n`` listed samples of 50, flagged over the student's three epoch rows (rows 1-3 of a
    history whose row 0 is the teacher's)."""
    given = np.arange(n) % 3
    return LabelIssues(
        model="student", rows=np.array([1, 2, 3]),
        epochs=[("teacher", 0), ("student", 0), ("student", 1), ("student", 2)],
        num_samples=50, index=np.arange(n), sample_id=np.arange(n) * 1000 + 7,
        given=given, refined=(given + 1) % 3, score=np.linspace(0.9, 0.5, n),
        model_doubt=np.linspace(0.8, 0.125, n), times_flagged=np.full(n, 3),
        times_excluded=np.arange(n) % 2, since=np.full(n, 1),
        clean=np.where(np.arange(n) % 2 == 0, (given + 1) % 3, given) if clean else None,
        num_mislabelled=None if not clean else (mislabelled if mislabelled is not None else 4),
        class_names=list(class_names))


def test_the_table_aligns_every_column_right_under_its_header():
    assert format_table(_issues(), 20) == [
        "rank  sample_id  given  refined  true   score  model_doubt  flagged  excluded      since",
        "   1          7      0        1     1  0.9000       0.8000      3/3       0/3  student 1",
        "   2       1007      1        2     1  0.7000       0.4625      3/3       1/3  student 1",
        "   3       2007      2        0     0  0.5000       0.1250      3/3       0/3  student 1",
    ]


def test_a_wide_value_widens_its_column_and_top_cuts_the_list():
    issues = _issues(12)
    lines = format_table(issues, 11)
    assert len(lines) == 12 and lines[-1].split()[:2] == ["11", "10007"]
    assert lines[0].startswith("rank  sample_id") and lines[-1].startswith("  11      10007")


def test_without_true_labels_the_table_has_no_true_column():
    (header, row) = format_table(_issues(1, clean=False), 5)
    assert header.split() == ["rank", "sample_id", "given", "refined", "score", "model_doubt",
                              "flagged", "excluded", "since"]
    assert row.split() == ["1", "7", "0", "1", "0.9000", "0.8000", "3/3", "0/3", "student", "1"]


def test_an_empty_list_prints_its_header():
    assert format_table(_issues(0), 20) == [
        "rank  sample_id  given  refined  true  score  model_doubt  flagged  excluded  since"]


def test_the_lines_around_the_table_name_the_model_its_last_epoch_and_the_rates():
    assert summary_lines(_issues(), 2) == [
        "model 'student': 3 of 50 samples flagged at the last of its 3 trained epochs (stage "
        "'student' epoch 3), ranked by score, then model doubt",
        "precision at 2: 0.5000",
        "precision at 3: 0.6667",
        "recall: 0.5000 (4 of 50 samples truly mislabelled)",
    ]


def test_without_true_labels_there_is_no_precision_or_recall():
    assert summary_lines(_issues(clean=False), 20)[1:] == [
        "true labels unknown: no precision or recall"]


def test_recall_without_a_mislabelled_sample_is_not_a_number():
    assert summary_lines(_issues(mislabelled=0), 20)[-1] == (
        "recall: n/a (0 of 50 samples truly mislabelled)")


@pytest.mark.parametrize(("top", "length", "expected"), [
    (20, 5000, [20, 100, 1000, 5000]),
    (100, 5000, [100, 1000, 5000]),
    (20, 50, [20, 50]),
    (80, 50, [50]),
    (1, 1, [1]),
    (20, 0, []),
    (2000, 1500, [100, 1000, 1500]),
])
def test_precision_is_printed_at_top_100_1000_and_the_whole_list(top, length, expected):
    assert precision_ks(top, length) == expected


NAMES = ("cat", "dog", "\u00e9mu\x07", "owl")


def test_the_class_legend_names_the_labels_the_shown_rows_hold():
    # rows: given 0 1 2 0, refined 1 2 0 1, true 1 1 0 0 (see _issues)
    assert class_legend(_issues(4, class_names=NAMES), 20) == (
        "classes: 0 cat, 1 dog, 2 \u00e9mu\\x07")  # a control character escaped
    assert class_legend(_issues(4, class_names=NAMES), 1) == "classes: 0 cat, 1 dog"  # row 1
    assert class_legend(_issues(1, clean=False, class_names=NAMES), 5) == (
        "classes: 0 cat, 1 dog")
    issues = _issues(1, class_names=NAMES)
    object.__setattr__(issues, "clean", np.array([3]))  # only the true label is new
    assert class_legend(issues, 5) == "classes: 0 cat, 1 dog, 3 owl"
    assert class_legend(_issues(0, class_names=NAMES), 5) is None  # nothing shown
    assert class_legend(_issues(4), 5) is None  # no names recorded
    assert class_legend(_issues(4, class_names=("0", "1", "2")), 5) is None  # digits' names
    assert class_legend(_issues(4, class_names=("0", "1", "x")), 5) == "classes: 0 0, 1 1, 2 x"
    # names for fewer classes than the labels (a plugin's dataset): the named ones only
    assert class_legend(_issues(4, class_names=("cat", "dog")), 5) == "classes: 0 cat, 1 dog"


def test_the_command_prints_the_legend_between_the_table_and_the_rates(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from kdcore import label_ranking
    from kdcore.cli import main

    monkeypatch.setattr(label_ranking, "find_label_issues",
                        lambda run, role: _issues(2, class_names=NAMES[:2] + ("bird",)))
    (tmp_path / "summary.json").write_text("{}")
    res = CliRunner().invoke(main, ["label-issues", str(tmp_path)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[4:6] == ["classes: 0 cat, 1 dog, 2 bird", "precision at 2: 0.5000"]
