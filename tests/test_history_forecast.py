"""The history's disk forecast: the first row of each stage, times the rows still to come,
against the free space of the history's disk; one warning a run at most."""

from __future__ import annotations

from collections import namedtuple

import pytest

from kdcore import history_forecast
from kdcore.history_forecast import DiskForecast
from kdcore.testing import component, run_tiny, stage, teacher_stage, tiny_recipe

Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def free_bytes(monkeypatch):
    """The free space the forecast sees, settable; the folders it asked about."""
    state = {"free": 0, "asked": []}

    def disk_usage(folder):
        state["asked"].append(folder)
        return Usage(10**15, 0, state["free"])

    monkeypatch.setattr(history_forecast.shutil, "disk_usage", disk_usage)
    return state


def _row(forecast: DiskForecast, stage: str, row: int, total: int, grows: int) -> None:
    forecast.before(stage)
    with forecast.path.open("ab") as f:
        f.write(b"x" * grows)
    forecast.after(row, total)


def test_a_stage_whose_rows_would_not_fit_is_said_once(tmp_path, free_bytes, warnings):
    forecast = DiskForecast(tmp_path / "history.h5")
    forecast.after(0, 10)  # no row measured: nothing to say
    assert forecast.warned is False and free_bytes["asked"] == []
    forecast.path.write_bytes(b"h" * 5000)
    free_bytes["free"] = 9 * 1000  # exactly the 9 rows after row 0, at 1000 bytes each
    _row(forecast, "teacher", 0, 10, 1000)
    assert warnings == [] and free_bytes["asked"] == [tmp_path]
    _row(forecast, "teacher", 1, 10, 10**6)  # not a stage's first row: not measured
    assert free_bytes["asked"] == [tmp_path]
    free_bytes["free"] = 7 * 1500 - 1  # row 2 of 10: 7 to come, at 1500 bytes
    _row(forecast, "student", 2, 10, 1500)
    assert warnings == [
        "the history grew by 1.5 KiB with stage 'student''s first row: the run's 7 rows still "
        f"to come need about 10.3 KiB, and 10.3 KiB are free on the disk of {forecast.path}; "
        "the run will stop when it is full (--resume continues once there is room); "
        "run.history_skip keeps columns out of the history"]
    assert forecast.warned
    _row(forecast, "third", 9, 20, 10**6)  # said once a run
    assert len(warnings) == 1 and len(free_bytes["asked"]) == 2


@pytest.mark.parametrize(("row", "total", "grows"), [(9, 10, 1000), (0, 10, 0)])
def test_nothing_to_come_or_no_growth_asks_nothing(tmp_path, free_bytes, warnings, row, total,
                                                     grows):
    forecast = DiskForecast(tmp_path / "history.h5")
    _row(forecast, "s", row, total, grows)
    assert warnings == [] and free_bytes["asked"] == []


def test_a_disk_that_does_not_say_its_free_space_is_not_forecast(tmp_path, monkeypatch,
                                                                  warnings):
    def fails(folder):
        raise OSError("not supported")

    monkeypatch.setattr(history_forecast.shutil, "disk_usage", fails)
    forecast = DiskForecast(tmp_path / "history.h5")
    _row(forecast, "s", 0, 10, 1000)
    assert warnings == [] and not forecast.warned


@pytest.mark.slow
def test_a_run_whose_history_would_fill_the_disk_warns_at_its_first_row(tmp_path, free_bytes,
                                                                         warnings):
    """The run trains on: the forecast is a warning, not a refusal."""
    free_bytes["free"] = 1
    data = tiny_recipe(teacher_stage(2), stage("student", 2, ["student"], component("ce")))
    summary = run_tiny(data, tmp_path / "run")
    assert set(summary) == {"teacher", "student"}
    said = [w for w in warnings if w.startswith("the history grew by ")]
    assert len(said) == 1 and "with stage 'teacher''s first row: the run's 3 rows" in said[0]
    assert free_bytes["asked"] == [tmp_path / "run"]
    free_bytes["free"], free_bytes["asked"] = 10**12, []
    warnings.clear()
    run_tiny(data, tmp_path / "roomy")
    assert warnings == [] and free_bytes["asked"] == [tmp_path / "roomy"] * 2  # each stage's


def test_one_byte_of_growth_counts_and_a_file_not_yet_there_is_empty(tmp_path, free_bytes,
                                                                      warnings):
    forecast = DiskForecast(tmp_path / "history.h5")  # not written yet: 0 bytes
    free_bytes["free"] = 9 * 1000 - 1
    _row(forecast, "s", 0, 10, 1000)
    assert len(warnings) == 1 and "need about 8.8 KiB" in warnings[0]
    forecast = DiskForecast(tmp_path / "other.h5")
    free_bytes["free"] = 0
    _row(forecast, "s", 0, 2, 1)
    assert len(warnings) == 2 and "grew by 1 bytes" in warnings[1]
