"""The console's streams gone or failing. A process started without a stderr (``kdcore run
... 2>&-``, a daemon's or a scheduler's child with the descriptor closed: Python sets
``sys.stderr`` to None) runs as with one, its log in log.txt only: the console sink had made
every run end in exit 1 ("Cannot log to objects of type 'NoneType'"). A stdout that cannot be
written after the run finished says the run finished."""

from __future__ import annotations

import sys

import pytest
from loguru import logger

from kdcore.cli import main
from kdcore.cli_common import configure_logging
from kdcore.testing import stage, tiny_recipe, write_recipe


@pytest.fixture
def no_stderr(monkeypatch):
    """Call it in the test itself: pytest's capture replaces sys.stderr after fixtures."""
    yield lambda: monkeypatch.setattr(sys, "stderr", None)
    monkeypatch.undo()
    logger.remove()  # quiet_logs' own sink is set up again for the next test


def test_logging_without_stderr_adds_no_console_sink(no_stderr):
    no_stderr()
    configure_logging(quiet=False)
    logger.info("said to nobody")  # no sink: dropped, not an error
    assert len(logger._core.handlers) == 0


def test_a_check_without_stderr_exits_2_on_a_bad_recipe(tmp_path, no_stderr):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nseed = -1\n")
    no_stderr()
    with pytest.raises(SystemExit) as exit_info:
        main(["check", str(bad)])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_a_run_without_stderr_finishes_and_logs_to_its_file(tmp_path, no_stderr, capsys):
    recipe = write_recipe(tiny_recipe(stage("s", 1, ["student"], {"use": "ce"})),
                          tmp_path / "r.toml")
    no_stderr()
    main(["run", str(recipe), "--out", str(tmp_path / "run")])  # returns: exit 0
    assert (tmp_path / "run" / "summary.json").is_file()
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "s 1/1 |" in log and "ERROR" not in log
    assert "test acc" in capsys.readouterr().out


def test_a_finished_run_whose_result_cannot_be_printed_says_it_finished(tmp_path,
                                                                        monkeypatch):
    """stdout on a full disk (``> out.txt``, or /dev/full): the line read "the run stopped:
    OSError: [Errno 28]", after the run had finished and written everything."""
    import errno

    import click

    import kdcore.cli
    import kdcore.engine
    from tests.cli_helpers import invoke

    summary = {"student": {"best_val_epoch": 0, "test_acc_at_best_val": 0.5, "stage": "s",
                           "last_test_acc": 0.5, "kept": "last"}}
    monkeypatch.setattr(kdcore.engine, "run_recipe", lambda *args, **kwargs: summary)
    real_echo = click.echo

    def full_stdout(message=None, file=None, nl=True, err=False, color=None):
        if not err:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_echo(message, file=file, nl=nl, err=err, color=color)

    monkeypatch.setattr(kdcore.cli.click, "echo", full_stdout)
    recipe = write_recipe(tiny_recipe(stage("s", 1, ["student"], {"use": "ce"})),
                          tmp_path / "r.toml")
    result = invoke("run", recipe, "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert result.output == (f"kdcore: error: the run finished (its results are in "
                             f"{tmp_path / 'run' / 'summary.json'}), but printing them "
                             "failed: No space left on device\n")


@pytest.mark.parametrize("env, shown", [
    ({}, ["a warning", "an error"]),
    ({"WORLD_SIZE": "2", "RANK": "0"}, ["a warning", "an error"]),
    ({"WORLD_SIZE": "2", "RANK": "1"}, ["an error"]),  # rank 0 says the warnings, once
    ({"WORLD_SIZE": "1", "RANK": "1"}, ["a warning", "an error"]),
    ({"WORLD_SIZE": "two", "RANK": "1"}, ["a warning", "an error"]),
    ({"WORLD_SIZE": "2", "RANK": "x"}, ["a warning", "an error"]),
])
def test_other_ranks_of_a_distributed_run_log_errors_only(monkeypatch, capsys, env, shown):
    """A data warning was printed once per process of `kdcore run --nproc 2`."""
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    configure_logging(quiet=True)
    logger.info("no info when quiet")
    logger.warning("a warning")
    logger.error("an error")
    logger.remove()
    assert [line.split(" ", 1)[1] for line in capsys.readouterr().err.splitlines()] == shown
