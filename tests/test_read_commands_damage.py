"""The reading commands (inspect, label-issues, report) never write over a run's own files,
refuse an output path the system cannot take before they print anything, and read a damaged
history, summary or journal as one line with exit 2: never a traceback, nothing lost."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import h5py
import pytest

from tests.cli_helpers import digest, error_last, invoke, one_line_error


@pytest.fixture
def run_dir(tiny_runs, tmp_path):
    """A copy of the session's finished tiny run (tests/conftest.py)."""
    shutil.copytree(tiny_runs / "finished", tmp_path / "run")
    return tmp_path / "run"


OWN_FILES = [
    ("inspect", "--csv", "history.h5"),
    ("inspect --column target", "--csv", "recipe.toml"),
    ("label-issues", "--csv", "history.h5"),
    ("report", "--csv", "summary.json"),
    ("report", "--markdown", "models/student.pt"),
    ("inspect", "--csv", "log.txt"),
]


@pytest.mark.slow
@pytest.mark.parametrize("command,option,name", OWN_FILES)
def test_an_output_on_one_of_the_runs_own_files_is_refused(run_dir, command, option, name):
    before = digest(run_dir)
    verb, *extra = command.split()
    one_line_error(invoke(verb, run_dir, *extra, option, run_dir / name),
                   "is a file of the run", "elsewhere")
    assert digest(run_dir) == before


@pytest.mark.slow
@pytest.mark.parametrize("command", ["inspect", "label-issues", "report"])
@pytest.mark.parametrize("where", ["missing_folder", "long_name", "device_full"])
def test_an_output_the_system_refuses_is_one_line(run_dir, tmp_path, command, where):
    path = {"missing_folder": tmp_path / "nowhere" / "out.csv",
            "long_name": tmp_path / ("x" * 300 + ".csv"),
            "device_full": Path("/dev/full")}[where]
    if where == "device_full" and not path.exists():
        pytest.skip("no /dev/full here")
    result = invoke(command, run_dir, "--csv", path)
    if where == "device_full":  # found when the table, printed first, is written
        error_last(result, "cannot write")
    else:
        one_line_error(result, "cannot write")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_a_csv_output_is_written_whole_and_replaces_an_older_one(run_dir, tmp_path):
    out = tmp_path / "metrics.csv"
    out.write_text("old\n")
    result = invoke("inspect", run_dir, "--csv", out)
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("row,stage,epoch")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _drop_strings(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        del f["strings"]


def _bad_stage_code(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f["epochs/stage"][0] = 999


def _bad_recipe(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f.attrs["recipe"] = "stages = 5"


def _bad_labels(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        labels = f["data/noisy_label"]
        labels[0] = 12345


# what a command does not read, so its damage goes unseen there (the rest must be refused):
# the metrics table reads no recipe and no labels; cartography and the page copy the labels
# without indexing by them
UNREAD = {("_bad_recipe", "inspect"), ("_bad_labels", "inspect"),
          ("_bad_labels", "inspect --cartography"), ("_bad_labels", "report --html")}


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_drop_strings, _bad_stage_code, _bad_recipe, _bad_labels])
@pytest.mark.parametrize("command", [("inspect",), ("inspect", "--cartography", "{tmp}/c"),
                                     ("label-issues",), ("report", "--html", "{tmp}/h")])
def test_a_damaged_history_is_one_line(run_dir, tmp_path, damage, command):
    damage(run_dir / "history.h5")
    args = [a.replace("{tmp}", str(tmp_path)) for a in command[1:]]
    result = invoke(command[0], run_dir, *args)
    if (damage.__name__, " ".join(command[:2])) in UNREAD:
        assert result.exit_code == 0, result.output
        return
    assert "Traceback" not in result.output
    if command[0] == "report":  # the table is the summary's; the figures leave the run out
        assert result.exit_code == 0, result.output
        (warning,) = [line for line in result.output.splitlines() if "warning" in line]
        assert warning.startswith(f"kdcore: warning: {run_dir}: left out of the figures, its "
                                  "summary is in the table ("), warning
        assert "(1 table, 0 figures)" in result.output
        return
    one_line_error(result)


@pytest.mark.slow
@pytest.mark.parametrize("content", ["not json", "[1]", "3", '{"student": {}}',
                                     '{"student": 5}', "[" * 100000])
def test_a_damaged_summary_is_one_line(run_dir, content):
    (run_dir / "summary.json").write_text(content)
    line = one_line_error(invoke("report", run_dir))
    assert line.startswith(f"kdcore: error: {run_dir / 'summary.json'}: not a kdcore run "
                           "summary ("), line


_HEAD = struct.Struct("<8sQ")
_RECORD = struct.Struct("<QII")


@pytest.mark.slow
@pytest.mark.parametrize("journal", ["directory", "offset_beyond_size", "huge_size"])
def test_a_journal_that_cannot_be_this_files_is_refused_and_the_history_kept(run_dir,
                                                                             journal):
    import zlib

    history = run_dir / "history.h5"
    before = history.read_bytes()
    path = run_dir / "history.h5-journal"
    size = len(before)
    if journal == "directory":
        path.mkdir()
    else:
        page = bytes(4096)
        offset = size + 4096 if journal == "offset_beyond_size" else 0
        recorded = 1 << 62 if journal == "huge_size" else size
        path.write_bytes(_HEAD.pack(b"kdjrnl01", recorded)
                         + _RECORD.pack(offset, len(page), zlib.crc32(page)) + page)
    for command in (["inspect"], ["label-issues"]):
        one_line_error(invoke(command[0], run_dir, *command[1:]), "journal", "move it away")
    # the report's table needs only the summary: the run is left out of the figures, and says why
    report = invoke("report", run_dir, "--html", run_dir.parent / "h")
    assert report.exit_code == 0 and "Traceback" not in report.output, report.output
    (warning,) = [line for line in report.output.splitlines() if "warning" in line]
    assert warning.startswith(f"kdcore: warning: {run_dir}: left out of the figures")
    assert "journal" in warning and "move it away" in warning and "0 figures" in report.output
    assert history.read_bytes() == before


def test_the_summary_fixture_is_what_report_reads(run_dir):
    """The damage above replaces a file report does read: the intact one reports."""
    assert json.loads((run_dir / "summary.json").read_text())
    assert invoke("report", run_dir).exit_code == 0


@pytest.mark.slow
@pytest.mark.parametrize("name,command", [("history.h5", "inspect"),
                                          ("history.h5", "label-issues"),
                                          ("summary.json", "report")])
def test_a_pipe_in_place_of_a_runs_file_is_refused_not_waited_on(run_dir, name, command):
    import os

    (run_dir / name).unlink()
    os.mkfifo(run_dir / name)
    line = one_line_error(invoke(command, run_dir))
    assert line == f"kdcore: error: {run_dir / name} is not a file", line


@pytest.mark.slow
def test_metrics_that_match_nothing_are_an_error_naming_what_there_is(run_dir):
    line = one_line_error(invoke("inspect", run_dir, "--metrics", "nosuch,[x"))
    assert line.startswith(
        "kdcore: error: no metric matches 'nosuch', '[x'; the history has "), line
    assert "test/student/acc" in line.split("the history has ")[1]


@pytest.mark.parametrize("command", ["inspect", "label-issues", "report"])
def test_a_run_directory_name_the_system_refuses_is_one_line(tmp_path, command):
    line = one_line_error(invoke(command, tmp_path / ("r" * 300)))
    assert line.startswith("kdcore: error: ") and line.endswith("File name too long"), line


@pytest.mark.slow
def test_inspect_options_that_would_be_ignored_are_refused(run_dir, tmp_path):
    one_line_error(invoke("inspect", run_dir, "--model", "student"), "--cartography")
    one_line_error(invoke("inspect", run_dir, "--column", "target", "--cartography",
                          tmp_path / "c"), "give one")
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_a_data_array_that_is_not_per_sample_is_not_exported_as_a_column(run_dir, tmp_path):
    """The noise's transition matrix (C x C) is in /data beside the per-sample labels; its rows
    are classes, so pairing them with sample ids would be wrong."""
    with h5py.File(run_dir / "history.h5", "r") as f:
        classes, n = f["data/transition_matrix"].shape[0], f["data/noisy_label"].shape[0]
    line = one_line_error(invoke("inspect", run_dir, "--column", "transition_matrix",
                                 "--csv", tmp_path / "t.csv"))
    assert line == (f"kdcore: error: 'transition_matrix' is not per sample (shape ({classes}, "
                    f"{classes}), the run has {n} samples); --column exports per-sample data "
                    "only"), line
    assert not (tmp_path / "t.csv").exists()
    assert invoke("inspect", run_dir, "--column", "clean_label", "--csv",
                  tmp_path / "c.csv").exit_code == 0


def _flip_in_chunk(path: Path, dataset: str, coord: tuple[int, ...], byte: int, bit: int) -> None:
    """Flip one bit of a stored chunk on disk, as a bad sector or a bad copy would."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info_by_coord(coord)
    assert byte < info.size
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset + byte)
        value = raw.read(1)[0]
        raw.seek(info.byte_offset + byte)
        raw.write(bytes([value ^ (1 << bit)]))


@pytest.mark.slow
def test_a_flipped_bit_on_disk_is_a_damaged_history_never_another_value(run_dir, tmp_path):
    """Every chunk carries a checksum that HDF5 checks on read. Before, a metric's stored float
    read back changed and Zstd decoded many a damaged ledger chunk into other numbers: the
    commands printed them with exit 0."""
    path = run_dir / "history.h5"
    clean = path.read_bytes()
    with h5py.File(path, "r") as f:
        metric = "metrics/test/student/acc"
        rows = f[metric].shape[0]
        first = f["ledger/logits/student"].id.get_chunk_info(0)  # the first row stored
        coord, size = first.chunk_offset, first.size
    # the metrics table: a bit of the last row's value (8 bytes a float64)
    _flip_in_chunk(path, metric, (0,), 8 * (rows - 1) + 3, 5)
    one_line_error(invoke("inspect", run_dir), "the history is damaged")
    # a ledger column: a bit in each stretch of its first stored row's compressed chunk
    refused = 0
    for byte in range(0, size, max(1, size // 24)):
        path.write_bytes(clean)
        _flip_in_chunk(path, "ledger/logits/student", coord, byte, byte % 8)
        result = invoke("inspect", run_dir, "--column", "logits/student", "--csv",
                        tmp_path / "out.csv")
        assert "Traceback" not in result.output
        refused += result.exit_code == 2 and "the history is damaged" in result.output
    assert refused == len(range(0, size, max(1, size // 24)))
