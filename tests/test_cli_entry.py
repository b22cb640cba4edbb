"""The ``kdcore`` entry point itself (``kdcore.cli.main``): how it is called, and what it
prints and returns when click stops before a command runs (an interrupt while options are
parsed, ``--version``, a NUL byte in a path argument)."""

from __future__ import annotations

from importlib.metadata import version

import pytest
from click.testing import CliRunner

from kdcore.cli import main
from kdcore.cli_files import GivenPath


def test_version_returns_0_when_the_arguments_are_given_positionally(capsys):
    # main(["--version"]): what a script does; the console script passes the 0 to sys.exit
    assert main.main(["--version"], prog_name="kdcore") == 0
    assert version("kdcore") in capsys.readouterr().out


def test_a_callers_standalone_mode_is_overridden():
    # click's standalone mode would print its usage block and exit on its own; the one-line
    # error holds whatever the caller asked for
    for standalone in (True, False):
        res = CliRunner().invoke(main, ["run"], standalone_mode=standalone)
        assert res.exit_code == 2, res.output
        assert res.stderr == "kdcore: error: Missing argument 'RECIPE'.\n"
        assert res.stdout == ""


@pytest.mark.parametrize("signal", [KeyboardInterrupt, EOFError])
def test_an_interrupt_while_options_are_parsed_aborts_with_exit_1(monkeypatch, signal):
    # click turns Ctrl-C or a closed input outside a command into Abort; an interrupt inside a
    # command is the command's (exit 130 and how to resume: tests/test_cli_common.py)
    def interrupted(*args, **kwargs):
        raise signal

    monkeypatch.setattr(GivenPath, "convert", interrupted)
    res = CliRunner().invoke(main, ["check", "recipe.toml"])
    assert res.exit_code == 1, res.output
    assert res.stderr.splitlines()[-1] == "kdcore: aborted"
    assert "aborted" not in res.stdout


def test_a_nul_byte_in_a_path_argument_is_one_line():
    res = CliRunner().invoke(main, ["inspect", "runs/a\x00b"])
    assert res.exit_code == 2, res.output
    assert res.stderr == "kdcore: error: a path on the command line contains a NUL byte\n"
    assert res.stdout == ""


@pytest.mark.parametrize("outcome, code", [(0, 0), (None, 0), (3, 3), (SystemExit(2), 2),
                                           (SystemExit(None), 0), (SystemExit("x"), 1)])
def test_a_torchrun_worker_leaves_with_the_commands_status(monkeypatch, outcome, code):
    import kdcore.__main__ as entry

    def command():
        if isinstance(outcome, SystemExit):
            raise outcome
        return outcome

    left = []
    monkeypatch.setattr(entry, "main", command)
    monkeypatch.setattr(entry.os, "_exit", left.append)
    entry.worker_main()
    assert left == [code]
