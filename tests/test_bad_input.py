"""Bad input through ``kdcore check``: every case ends with exit code 2 and one line on stderr,
``kdcore: error: FILE: KEY: what is wrong``, never a traceback.

The recipes here are broken in the ways a hand edit, a copy from elsewhere or a script can break
them: bytes that are not UTF-8, nesting that overflows the TOML reader's recursion, values no
key accepts, ``extends`` that lead nowhere, ``--set`` paths and values that cannot apply.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from kdcore.cli import main
from kdcore.testing import component, stage, teacher_stage, tiny_recipe, write_recipe

DEEP = 2000  # far past tomllib's recursion limit


@pytest.fixture
def good(tmp_path: Path) -> Path:
    """A tiny recipe that ``check`` accepts."""
    data = tiny_recipe(teacher_stage(1), stage("student", 1, ["student"], component("ce")),
                       train_subset=200)
    return write_recipe(data, tmp_path / "good.toml")


def _refused(*args: str) -> str:
    """Run ``kdcore check ARGS`` in process; assert the one-line refusal and return it."""
    result = CliRunner().invoke(main, ["check", *args])
    assert "Traceback" not in result.output
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kdcore: error: ")
    return lines[0]


def _file(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_the_good_recipe_is_accepted(good: Path) -> None:
    """The control: every refusal below is a change to an acceptable recipe."""
    result = CliRunner().invoke(main, ["check", str(good)])
    assert result.exit_code == 0, result.output
    assert "[run]" in result.stdout


# -- files that cannot be read -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[run]\nname = "caf\xe9"\n'.encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 17)"),
        ('[run]\nname = "x"\n'.encode("utf-16"), "not UTF-8 text (byte 0xff at offset 0)"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text"),
        (b'[run]\nname = "a\x00b"\n', "malformed TOML"),  # a raw NUL is not TOML
        ("x = " + "[" * DEEP + "]" * DEEP, "nested too deeply"),
        ("x = " + "{a = " * DEEP + "1" + "}" * DEEP, "nested too deeply"),
        ("[" + ".".join(["a"] * DEEP) + "]\nb = 1\n", "nested more than 32"),
        (".".join(["a"] * DEEP) + " = 1\n", "nested more than 32"),
        ("[run\nname=", "malformed TOML"),
    ],
    ids=["latin-1", "utf-16", "binary", "raw-nul", "deep-arrays", "deep-inline-tables",
         "deep-table-header", "deep-dotted-key", "broken"],
)
def test_unreadable_files(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = _file(tmp_path, "bad.toml", content)
    line = _refused(str(path))
    assert message in line
    assert str(path) in line


def test_a_missing_recipe_file(tmp_path: Path) -> None:
    assert "recipe file not found" in _refused(str(tmp_path / "nope.toml"))


# -- values no key accepts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ("run.seed=99999999999999999999999", "run.seed", "outside TOML's 64-bit range"),
        ("run.seed=1e30", "run.seed", "expected an integer"),
        ("run.seed=-1", "run.seed", "'seed' must be in [0, 9223372036854775807]"),
        ("run.threads=1000000", "run.threads", "'threads' must be in [0, 4096]"),
        ("run.device=meta", "run.device", "must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ("run.device=mps", "run.device", "got 'mps'"),
        ("data.noise.params.rate=1.5", "data.noise.params.rate", "must be in [0, 1], got 1.5"),
        ("data.noise.params.rate=-0.1", "data.noise.params.rate", "must be in [0, 1]"),
        ("data.noise.params.rate=nan", "data.noise.params.rate", "NaN"),
        ("data.noise={model='transition_matrix', params={matrix=[[0.5, 0.6], [0, 1]]}}",
         "data.noise.params.matrix", "row 0 sums to 1.1"),
        ("models.student.optimizer.momentum=-1", "models.student.optimizer.momentum",
         "must be in [0, 1)"),
        ("models.student.optimizer.momentum=5", "models.student.optimizer.momentum",
         "must be in [0, 1)"),
        ("models.student.optimizer.momentum=nan", "models.student.optimizer.momentum", "NaN"),
        ("models.student.optimizer.lr=1e308", "models.student.optimizer.lr", "must be in [0, 10]"),
        ("stages.student.components.ce.weight=inf", "stages[1].components[0].weight",
         "must be a finite float32 number"),
        ("stages.student.components.ce.weight=nan", "stages[1].components[0].weight", "NaN"),
        ("data.dataset=cifar10", "data.params.root", "missing required key 'root'"),
        ("data.augment=[{name='cutout', params={size=4, sigma=1}}]",
         "data.augment[0].params.sigma", "unknown key 'sigma'"),
        ('run.name="a\\u0000b"', "run.name", "NUL byte"),
        ('run.output_dir="runs\\u0000"', "run.output_dir", "NUL byte"),
        ('models.teacher.checkpoint="t\\u0000.pt"', "models.teacher.checkpoint", "NUL byte"),
        ('data.params.root="/data\\u0000"', "data.params.root", "NUL byte"),
        ("run.name=caf\udce9", "run.name", "not valid UTF-8"),  # undecodable argv bytes
    ],
)
def test_values_no_key_accepts(good: Path, override: str, key: str, message: str) -> None:
    line = _refused(str(good), "--set", override)
    assert f"{good}: {key}: " in line
    assert message in line


def test_seed_written_as_a_float_in_the_file(tmp_path: Path, good: Path) -> None:
    path = _file(tmp_path, "seed.toml", good.read_text().replace("seed = 0", "seed = 1e30"))
    assert "run.seed: got 1e+30, expected an integer" in _refused(str(path))


# -- extends ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extends", "message"),
    [
        ('"good.toml\\u0000"', "extends: 'extends' contains a NUL byte"),
        ('"."', "extends: '.' is a directory"),
        ('"sub"', "extends: 'sub' is a directory"),
        ('"missing.toml"', "extends: 'missing.toml': no such recipe file"),
        ('"child.toml"', "extends: recipe extends itself in a cycle: child.toml -> child.toml"),
        ("3", "extends: got 3, expected a file path"),
    ],
)
def test_extends_that_leads_nowhere(tmp_path: Path, good: Path, extends: str,
                                    message: str) -> None:
    (tmp_path / "sub").mkdir()
    child = _file(tmp_path, "child.toml", f"extends = {extends}\n")
    line = _refused(str(child))
    assert str(child.resolve()) in line
    assert message in line


def test_extends_cycle_through_two_files(tmp_path: Path) -> None:
    _file(tmp_path, "a.toml", 'extends = "b.toml"\n')
    _file(tmp_path, "b.toml", 'extends = "a.toml"\n')
    line = _refused(str(tmp_path / "a.toml"))
    assert "b.toml: extends: recipe extends itself in a cycle: a.toml -> b.toml -> a.toml" in line


def test_a_bad_base_names_the_base(tmp_path: Path) -> None:
    base = _file(tmp_path, "base.toml", b"[run]\nname = '\xff'\n")
    child = _file(tmp_path, "child.toml", 'extends = "base.toml"\n')
    line = _refused(str(child))
    assert f"{base.resolve()}: not UTF-8" in line


# -- --set paths and values that cannot apply ----------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("run.name.first=x", "run.name.first: cannot set a key inside run.name = 'tiny', which "
                             "is not a table"),
        ("run.seed.x.y=1", "run.seed.x: cannot set a key inside run.seed = 0"),
        ("stages.0.train.x=1", "stages.0.train.x: no entry named 'x'"),
        ("stages.\u0661.epochs=1", "no entry named '\u0661'"),
        ("stages.9.epochs=1", "stages.9: index 9 out of range (length 2)"),
        ("run..name=x", "the key path has an empty part"),
        ("run.name", "is not of the form key.path=value"),
        ("data.params.x=" + "[" * DEEP + "]" * DEEP, "data.params.x: the value nests arrays"),
        ("data.params.x=" + "[" * 100 + "]" * 100, "data.params.x"),
        (".".join(["a"] * DEEP) + "=1", "nested more than 32"),
    ],
)
def test_overrides_that_cannot_apply(good: Path, override: str, message: str) -> None:
    line = _refused(str(good), "--set", override)
    assert str(good) in line
    assert message in line


# -- empty paths ----------------------------------------------------------------------------------


def _path_params() -> list[tuple[str, str]]:
    import click

    from kdcore.cli_files import GivenPath

    found = []
    for name, command in sorted(main.commands.items()):
        for param in command.params:
            if isinstance(param.type, click.Path):
                assert isinstance(param.type, GivenPath), (name, param.name)
                found.append((name, param.opts[0]))
    return found


def test_every_path_of_every_command_refuses_an_empty_one():
    """'' is the current directory to pathlib: ``ablate --out ''`` wrote its grid there."""
    assert ("ablate", "--out") in _path_params() and ("report", "runs") in _path_params()


@pytest.mark.parametrize(("command", "args"), [
    ("ablate", ["--out", "", "RECIPE"]),
    ("run", ["RECIPE", "--out", ""]),
    ("run", [""]),
    ("report", [""]),
    ("report", ["RUN", "--markdown", ""]),
    ("inspect", [""]),
    ("label-issues", [""]),
])
def test_an_empty_path_is_refused_and_nothing_is_written(tmp_path, monkeypatch, good, command,
                                                         args):
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.iterdir())
    args = [str(good) if a == "RECIPE" else str(tmp_path) if a == "RUN" else a for a in args]
    result = CliRunner().invoke(main, [command, *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"kdcore: error: Invalid value for '{_shown_param(command, args)}': an empty path; "
        "name a file or folder ('.' for this one)"]
    assert sorted(tmp_path.iterdir()) == before


def _shown_param(command: str, args: list[str]) -> str:
    at = args.index("")
    return args[at - 1] if at and args[at - 1].startswith("--") else {
        "run": "RECIPE", "report": "RUNS...", "inspect": "RUN_DIR", "label-issues": "RUN_DIR"}[
            command]
