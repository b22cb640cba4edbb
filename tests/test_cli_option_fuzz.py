"""Every option and argument of every command, fuzzed with what a user can type.

For each command, its positional argument and each option that takes a value, a seeded
generator draws values from a pool of hostile ones (empty, NUL, line breaks and other control
characters, a lone surrogate as a non-UTF-8 argument arrives, huge, negative and non-finite
numbers, TOML and override syntax, names too long, paths that are a run's own files, a folder,
nowhere) and random strings. Every call must exit 0, or 2 with exactly one line on stderr and
no traceback; every file of the finished run the reading commands read stays as it was, byte
for byte. Each call runs in a fresh working directory, so a value read as a relative path
writes nowhere else.

Where an accepted value would start other processes (``run --nproc``, ``ablate --jobs``) the
launcher is replaced by an in-process stand-in: the process boundary is tested in
tests/test_distributed.py and tests/test_ablate_report.py; what is tested here is the input.
"""

from __future__ import annotations

import random
import re
import shutil
import string
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from kdcore.cli import main
from kdcore.testing import component, stage, tiny_recipe, write_recipe
from tests.cli_helpers import digest

SEED = 20261201
DRAWS = 8  # values per option, besides the empty one

HOSTILE = ["", " ", "-", "--", "\x00", "a\x00b", "x\ny", "\r", "\t", "\x1b[2J", "\x7f", "é",
           "\udcff", "0", "-1", "1", "2.5", "1e309", "-1e309", "nan", "inf",
           "99999999999999999999999", "9" * 5000, "run.seed=" + "9" * 5000, "0-" + "9" * 40,
           "0x10", "=", "a=b", "run.seed=", "run.seed=nan",
           "stages[0].epochs=-1", "data.batch_size=0", "[", "{", "'", '"', ";", "a;b", ":",
           "x:", ":y", "x" * 300, "/", ".", "..", "/dev/null", "/nonexistent/f", "{run}",
           "{run}/history.h5", "{run}/summary.json", "{run}/models/student.pt", "{recipe}",
           "{run}/models"]
WHOLE_LINE = re.compile(r"kdcore: warning: |\d\d:\d\d:\d\d ")
ALPHABET = string.printable + "\x00\x01\x1b\x7f\x85éß€\u2028\udcff"

# the arguments each command is called with besides the option under test ({run}: a copy of
# a finished run, {recipe}: a one-stage recipe, {out}: a fresh path)
COMMANDS: dict[str, list[str]] = {
    "run": ["{recipe}", "--out", "{out}", "--quiet"],
    "check": ["{recipe}"],
    "noise": ["{recipe}", "--out", "{out}.npy"],
    "plugins": [],
    "inspect": ["{run}"],
    "report": ["{run}"],
    "label-issues": ["{run}"],
    "ablate": ["{recipe}", "--seeds", "0", "--out", "{out}"],
}


def _cases() -> list[tuple[str, str]]:
    """(command, option) for every option that takes a value, and (command, "<argument>") for
    its positional argument (the first of its arguments in :data:`COMMANDS`)."""
    return [(name, max(param.opts, key=len) if isinstance(param, click.Option)
             else f"<{param.name}>") for name in COMMANDS
            for param in main.commands[name].params
            if not (isinstance(param, click.Option) and param.is_flag)]


@pytest.fixture(scope="module")
def one_stage(tmp_path_factory) -> Path:
    """One stage of CE on 100 digits, one epoch: a run that a fuzzed value lets through trains
    in a fraction of a second."""
    path = tmp_path_factory.mktemp("fuzz") / "ce.toml"
    return write_recipe(tiny_recipe(stage("train", 1, ["student"], component("ce")),
                                    models={"student": {"arch": "mlp",
                                                        "params": {"hidden": [8]}}},
                                    train_subset=100), path)


@pytest.fixture
def stand_ins(monkeypatch):
    """Launchers that would start processes, run in this one instead; and one small figure
    for the report's many (drawn in tests/test_figures.py): what a fuzzed ``--plots`` or
    ``--html`` folder receives is written the same way, in a tenth of the time."""
    from kdcore import figures, grid, torchrun
    from kdcore.figures import Figure

    monkeypatch.setattr(torchrun, "launch", lambda nproc, args: None)
    monkeypatch.setattr(grid, "_subprocess_run",
                        lambda spec, resume, children: grid.run_spec(spec, resume))
    png = b"\x89PNG\r\n\x1a\n" + bytes(64)
    monkeypatch.setattr(figures, "draw_figures",
                        lambda runs, role=None: [Figure("test_student_acc", "t", "c", png)])


def assert_exit_0_or_one_line(result: Result, args: list[str]) -> None:
    """Exit 0, or exit 2 with one line on stderr; never an exception or a traceback. Every
    line on stderr is whole: an error, a warning or a log line (a value quoted in it must not
    break it in two)."""
    shown = f"kdcore {' '.join(map(repr, args))}\n{result.output}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{shown}\nraised {result.exception!r}") from result.exception
    assert result.exit_code in (0, 2), shown
    assert "Traceback" not in result.output, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if result.exit_code == 2:
        assert len(lines) == 1 and lines[0].startswith("kdcore: error: "), shown
    else:
        assert all(WHOLE_LINE.match(line) for line in lines), shown


@pytest.mark.parametrize(("command", "option"), _cases(), ids=map("".join, _cases()))
def test_every_option_value_exits_0_or_in_one_line(command, option, one_stage, tiny_runs,
                                                   tmp_path, monkeypatch, stand_ins):
    rng = random.Random(f"{SEED}-{command}-{option}")
    run = tmp_path / "finished"
    shutil.copytree(tiny_runs / "finished", run)
    recipe = Path(shutil.copy(one_stage, tmp_path / "ce.toml"))  # an output may overwrite it
    before = digest(run)
    values = [""] + [rng.choice(HOSTILE) if rng.random() < 0.7 else
                     "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 12)))
                     for _ in range(DRAWS)]
    for k, value in enumerate(values):
        cwd = tmp_path / f"cwd{k}"
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        fill = {"{run}": str(run), "{recipe}": str(recipe), "{out}": str(cwd / "out")}
        args = [command, *(fill.get(a, a.replace("{out}", fill["{out}"]))
                           for a in COMMANDS[command])]
        typed = value
        for key, path in (("{run}", str(run)), ("{recipe}", str(recipe))):
            typed = typed.replace(key, path)
        if option.startswith("<"):  # the positional argument
            args[1] = typed
        else:
            if option in args:  # the option under test replaces the base's own
                at = args.index(option)
                del args[at:at + 2]
            args += [option, typed]
        assert_exit_0_or_one_line(CliRunner().invoke(main, args), args)
    after = digest(run)  # nothing that was there is lost or changed
    assert {name: after.get(name) for name in before} == before


def test_the_cases_cover_every_option_that_takes_a_value():
    assert set(COMMANDS) == set(main.commands)
    assert ("ablate", "--seeds") in _cases() and ("run", "--out") in _cases()
    assert ("run", "--resume") not in _cases()  # a flag
    assert ("report", "<runs>") in _cases() and ("run", "<recipe>") in _cases()


def test_printable_escapes_what_a_terminal_would_not_show_as_itself():
    from kdcore.errors import printable

    assert printable("plain text, é and € stay") == "plain text, é and € stay"
    assert printable("a\nb\rc\td\x00e\x1b[2Jf\x7fg\x85h\u2028i\udcffj") == (
        "a\\nb\\rc\\td\\x00e\\x1b[2Jf\\x7fg\\x85h\\u2028i\\udcffj")


def test_a_value_quoted_in_an_error_is_escaped_not_broken(one_stage):
    typed = "a\rb\u2028c\x1b[2Jd"
    result = CliRunner().invoke(main, ["check", str(one_stage), "--plugin", typed])
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("kdcore: error: cannot import plugin 'a\\rb\\u2028c\\x1b[2Jd'")


# what the fuzz found, pinned whatever the draws


def test_an_output_name_too_long_is_one_line_before_any_work(one_stage, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in (["run", str(one_stage)], ["ablate", str(one_stage), "--seeds", "0"]):
        result = CliRunner().invoke(main, [*command, "--out", "x" * 300])
        assert result.exit_code == 2, result.output
        assert result.stderr == (f"kdcore: error: cannot use output directory {'x' * 300}: "
                                 "File name too long\n")
    assert list(tmp_path.iterdir()) == []


def test_a_run_folder_named_with_a_byte_that_is_not_utf8(one_stage, tmp_path):
    out = tmp_path / "run\udcff"  # b"run\xff" as Python reads it from a command line
    result = CliRunner().invoke(main, ["run", str(one_stage), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    log = (out / "log.txt").read_text(encoding="utf-8")
    assert f"-> {tmp_path}/run\\udcff" in log  # escaped, where the sink had raised


def test_a_variant_name_is_measured_in_the_bytes_of_its_folder(one_stage, tmp_path):
    from kdcore import grid
    from kdcore.errors import KdcoreError

    (spec,) = grid.plan([grid.Variant("v\udcff", str(one_stage))], [0], tmp_path / "g")
    assert spec.out == tmp_path / "g" / "v\udcff" / "seed0"
    grid.check_name("é" * 100)  # 200 bytes
    for name in ("é" * 100 + "x", "\udcff" * 201):
        with pytest.raises(KdcoreError, match="at most 200 bytes"):
            grid.check_name(name)


def test_a_name_printed_with_a_byte_that_is_not_utf8_is_escaped(one_stage, tmp_path):
    result = CliRunner().invoke(main, ["ablate", str(one_stage), "--seeds", "0", "--variant",
                                       "v\udcff:", "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    assert "[1/1] v\\udcff seed 0: starting" in result.stdout
    assert (tmp_path / "g" / "v\udcff" / "seed0" / "summary.json").is_file()


def test_a_usage_error_or_a_warning_quoting_a_value_is_escaped(tiny_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_runs / "finished", run)
    result = CliRunner().invoke(main, ["label-issues", str(run), "--top", "a\rb"])
    assert result.exit_code == 2
    assert result.stderr == ("kdcore: error: Invalid value for '--top': 'a\\rb' is not a valid "
                             "integer.\n")
    result = CliRunner().invoke(main, ["report", str(run), "--baseline", "x\ny", "--ceiling",
                                       "z"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ("kdcore: warning: gap recovered is n/a: baseline 'x\\ny' and "
                             "ceiling 'z' not among the variants (run)\n")


def test_an_output_file_naming_a_path_with_a_byte_that_is_not_utf8(tiny_runs, tmp_path,
                                                                   stand_ins):
    """The HTML page's title quotes the run paths as given: one holding a lone surrogate made
    the page's write raise; it is written escaped."""
    run = tmp_path / "run\udcff"
    shutil.copytree(tiny_runs / "finished", run)
    result = CliRunner().invoke(main, ["report", str(run), "--html", str(tmp_path / "page")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "page" / "index.html").read_text(encoding="utf-8")
    assert f"kdcore report: {tmp_path}/run\\udcff" in page
