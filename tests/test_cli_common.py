"""What every command shares (kdcore/cli_common.py): a user error as one line and its exit
code, an interrupt, SIGTERM stopping as an interrupt does, an error left for the ``--nproc``
launcher instead of said, the plugin host of ``--plugin`` and ``--strict-plugins``, the log's
level, and the ``--help`` examples."""

from __future__ import annotations

import json
import signal
import threading

import click
import pytest
from click.testing import CliRunner
from loguru import logger

from kdcore import interrupts
from kdcore.cli_common import (
    configure_logging,
    examples,
    plugin_host,
    plugin_option,
    set_option,
    stop_on_signals,
    strict_option,
    user_errors,
)
from kdcore.errors import KdcoreError, Stopped
from kdcore.failures import RunFailed
from kdcore.torchrun import ERRORS_ENV


def _command(raises: BaseException | None = None, returns: object = None, hint: str = ""):
    @click.command()
    @(user_errors(on_interrupt=hint) if hint else user_errors)
    def cmd() -> object:
        """Its doc."""
        if raises is not None:
            raise raises
        click.echo("ran")
        return returns

    return cmd


@pytest.mark.parametrize(("error", "code", "line"), [
    (KdcoreError("no such run"), 2, "kdcore: error: no such run"),
    (RunFailed("component 'x' returned NaN"), 1, "kdcore: error: component 'x' returned NaN"),
    (KdcoreError("a\nb\x1b[31m"), 2, "kdcore: error: a\\nb\\x1b[31m"),
    (KeyboardInterrupt(), 130, "kdcore: interrupted"),
    (Stopped(signal.SIGTERM), 143, "kdcore: stopped by SIGTERM"),
    (Stopped(signal.SIGHUP), 129, "kdcore: stopped by SIGHUP"),
])
def test_an_error_is_one_line_on_stderr_with_its_exit_code(error, code, line):
    result = CliRunner().invoke(_command(error))
    assert result.exit_code == code
    assert result.stderr == line + "\n" and result.stdout == ""


@pytest.mark.parametrize(("error", "code", "line"), [
    (KeyboardInterrupt(), 130, "kdcore: interrupted; go on thus"),
    (Stopped(signal.SIGTERM), 143, "kdcore: stopped by SIGTERM; go on thus"),
    (KdcoreError("no such run"), 2, "kdcore: error: no such run"),  # no hint: not interrupted
])
def test_an_interrupt_says_how_the_command_goes_on_where_it_knows(error, code, line):
    result = CliRunner().invoke(_command(error, hint="go on thus"))
    assert result.exit_code == code
    assert result.stderr == line + "\n" and result.stdout == ""


def test_any_other_exception_is_not_taken_for_a_user_error():
    result = CliRunner().invoke(_command(ValueError("a bug")))
    assert isinstance(result.exception, ValueError) and result.exit_code == 1


def test_a_command_that_succeeds_runs_as_written():
    fn = user_errors(lambda x: x * 2)
    assert fn(21) == 42
    assert user_errors(on_interrupt="again")(lambda x: x * 3)(7) == 21
    wrapped = _command().callback
    assert wrapped.__name__ == "cmd" and wrapped.__doc__ == "Its doc."
    assert CliRunner().invoke(_command()).stdout == "ran\n"


@pytest.mark.parametrize(("error", "code", "message", "consequence"), [
    (KdcoreError("bad recipe"), 2, "bad recipe", False),
    (RunFailed("own bug"), 1, "own bug", False),
    # stopped because another worker did: the launcher says it after the others' lines
    (RunFailed("lost", "torch.distributed's all_gather"), 1, "lost", True),
    (KeyboardInterrupt(), 130, "interrupted; resume with --resume", True),
    (Stopped(signal.SIGTERM), 143, "stopped by SIGTERM; resume with --resume", True),
])
def test_a_launched_worker_leaves_its_error_to_the_launcher(tmp_path, monkeypatch, error, code,
                                                            message, consequence):
    monkeypatch.setenv(ERRORS_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    result = CliRunner().invoke(_command(error, hint="resume with --resume"))
    assert result.exit_code == code and result.stderr == ""
    assert json.loads((tmp_path / "1").read_text()) == {
        "message": message, "exit_code": code, "consequence": consequence}


def test_the_plugin_host_loads_the_given_plugins_and_is_strict_when_asked(tmp_path,
                                                                          monkeypatch):
    (tmp_path / "cli_common_probe.py").write_text(
        "import kdcore\n\n@kdcore.hookimpl\ndef kdcore_add_noise_models():\n"
        "    return {'probe_noise': lambda ctx: ctx.labels}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    host = plugin_host(["cli_common_probe"], strict=False)
    assert "probe_noise" in host.noise_models.names() and host.strict is False
    assert plugin_host([], strict=True).strict is True


def test_loading_plugins_logs_warnings_only(capsys):
    plugin_host([], strict=False)
    try:
        logger.info("info")
        logger.warning("warning")
    finally:
        logger.remove()
    assert [line.split(" ", 1)[1] for line in capsys.readouterr().err.splitlines()] == [
        "warning"]


@pytest.mark.parametrize(("quiet", "shown"), [(True, ["warning"]), (False, ["info", "warning"])])
def test_the_log_shows_warnings_or_everything_from_info(capsys, quiet, shown):
    configure_logging(quiet)
    try:
        logger.debug("debug")
        logger.info("info")
        logger.warning("warning")
    finally:
        logger.remove()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == shown
    assert all(len(line.split(" ", 1)[0]) == len("12:34:56") for line in lines)


def test_the_log_shows_the_time_on_a_24_hour_clock(capsys):
    configure_logging(False)
    try:
        logger.patch(lambda r: r.update(time=r["time"].replace(hour=15, minute=4, second=5))
                     ).info("late")
    finally:
        logger.remove()
    assert capsys.readouterr().err == "15:04:05 late\n"


def test_examples_keep_their_lines_as_written():
    assert examples("kdcore run a.toml", "kdcore check b.toml") == (
        "\b\nExamples:\n  kdcore run a.toml\n  kdcore check b.toml")


def test_the_recipe_options_parse_as_documented():
    @click.command()
    @set_option
    @plugin_option
    @strict_option
    def cmd(overrides, plugins, strict_plugins):
        click.echo(json.dumps([overrides, plugins, strict_plugins]))

    runner = CliRunner()
    result = runner.invoke(cmd, ["--set", "a=1", "--set", "b.c=2", "--plugin", "m:P",
                                 "--strict-plugins"])
    assert json.loads(result.stdout) == [["a=1", "b.c=2"], ["m:P"], True]
    assert json.loads(runner.invoke(cmd, []).stdout) == [[], [], False]
    help_text = runner.invoke(cmd, ["--help"]).stdout
    assert "--set KEY.PATH=VALUE" in help_text and "--plugin MODULE[:OBJ]" in help_text


def _probe(signum, frame):  # a handler of someone else's
    raise AssertionError("not ours")


def test_sigterm_raises_stopped_inside_and_kills_again_outside():
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # pytest's own, untouched
    with stop_on_signals():
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        with pytest.raises(Stopped) as info:
            handler(signal.SIGTERM, None)
        assert (info.value.signum, str(info.value)) == (signal.SIGTERM, "SIGTERM")
        assert isinstance(info.value, KeyboardInterrupt)  # stops a run as Ctrl-C does
        # the stop it began is not cut short by a second one (a forward of the same signal),
        # and is remembered in case its exception got lost
        assert handler(signal.SIGTERM, None) is None
        assert interrupts.requested == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert interrupts.requested is None  # the next run in this process starts afresh


def test_ctrl_c_raises_every_time_inside_and_is_remembered_until_the_end():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # not mutmut's
    try:
        with stop_on_signals():
            handler = signal.getsignal(signal.SIGINT)
            assert handler is not signal.default_int_handler and not interrupts.interrupted
            for _ in range(2):  # a second Ctrl-C still cuts a stop short
                with pytest.raises(KeyboardInterrupt) as info:
                    handler(signal.SIGINT, None)
                assert type(info.value) is KeyboardInterrupt  # exit 130, "interrupted"
                assert interrupts.interrupted
            with pytest.raises(KeyboardInterrupt):  # dropped, it is raised again here
                interrupts.check()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert not interrupts.interrupted  # the next run in this process starts afresh
        interrupts.check()
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_handler_installed_by_someone_else_is_left_alone(signum):
    previous = signal.signal(signum, _probe)
    try:
        with stop_on_signals():
            assert signal.getsignal(signum) is _probe
        assert signal.getsignal(signum) is _probe
    finally:
        signal.signal(signum, previous)


def test_off_the_main_thread_nothing_is_installed():
    seen = []

    def body():  # signal.signal would raise ValueError here
        with stop_on_signals():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [signal.SIG_DFL]


@pytest.mark.parametrize(("text", "seeds"), [
    ("0", [0]), (" 3 ", [3]), ("0,1,2", [0, 1, 2]), (" 0, 1", [0, 1]),
    ("0-4", [0, 1, 2, 3, 4]), ("2 - 3,7", [2, 3, 7]), ("5-5", [5]), ("9,0-1", [9, 0, 1]),
    ("-1", [-1]),  # refused by the recipe's own check, with the key that says why
])
def test_seeds_are_integers_and_inclusive_ranges_in_the_order_given(text, seeds):
    from kdcore.cli_common import parse_seeds

    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(("text", "message"), [
    ("1-3-5", "--seeds takes comma-separated integers or ranges (0-4), got '1-3-5'"),
    ("0,,1", "--seeds takes comma-separated integers or ranges (0-4), got '0,,1'"),
    ("1e3", "--seeds takes comma-separated integers or ranges (0-4), got '1e3'"),
    ("9" * 31, f"--seeds takes comma-separated integers or ranges (0-4), got '{'9' * 31}'"),
    ("0,\x1b[2J", "--seeds takes comma-separated integers or ranges (0-4), got '0,\\x1b[2J'"),
    ("4-2", "--seeds: the range 4-2 runs backwards; write 2-4"),
    ("0-99999", None), ("50000-149999", None),  # 100,000 seeds: the most
    ("0-100000", "--seeds names more than 100,000 seeds ('0-100000')"),
    ("0-99998,5,7", "--seeds names more than 100,000 seeds ('0-99998,5,7')"),
    ("0-" + "9" * 30, f"--seeds names more than 100,000 seeds ('0-{'9' * 30}')"),
])
def test_seeds_that_are_no_list_or_too_many_are_one_line(text, message):
    from kdcore.cli_common import parse_seeds
    from kdcore.errors import KdcoreError

    if message is None:
        assert len(parse_seeds(text)) == 100_000
        return
    with pytest.raises(KdcoreError) as info:
        parse_seeds(text)
    assert str(info.value) == message

