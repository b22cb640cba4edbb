"""docs/plugins.md's examples, run as written.

Every code block of the page whose first line is ``# file: <path>`` is written under
``tmp_path``; the two plugin modules are imported from there and registered in-process
(``PluginHost(extra=[module])``, or ``--plugin MODULE`` on the command line: the only change to
the page's commands, which assume the packages are installed; installing with pip is what
``tests/test_third_party_plugin.py`` covers). A CSV table of a few hundred of scikit-learn's
digits stands in for the user's ``table.csv``. Then: the ``kdcore check`` lines of the page's
``console`` blocks are run and their output compared with the page's; the loader is called
directly; the page's own harness tests are run; and (slow) the page's recipe trains, and the
page's resume test runs.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import inspect
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from loguru import logger

import kdcore
from kdcore.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
PACKAGES = {"kdcore-confident": "kdcore_confident", "kdcore-csv-table": "kdcore_csv_table"}
PLUGIN_OPTIONS = [opt for module in PACKAGES.values() for opt in ("--plugin", module)]
DOCS_TESTS = "kdcore-confident/tests/test_confident.py"
EXPECTED_FILES = {
    "kdcore-confident/pyproject.toml", "kdcore-confident/kdcore_confident.py",
    "kdcore-confident/tests/conftest.py", DOCS_TESTS,
    "kdcore-csv-table/pyproject.toml", "kdcore-csv-table/kdcore_csv_table.py", "table.toml",
    "kdcore_jsonl_logger.py",  # section 7's logger: tests/test_loggers.py runs it
}
TABLE_ROWS = 400

# a fenced block at the start of a line (blocks indented in a list item are illustrations)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
FILE_LINE = re.compile(r"^# file: (\S+)\n")


def doc_blocks() -> list[tuple[str, str]]:
    """``(language, text)`` of every top-level fenced block of the page, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(DOC.read_text())]


def file_blocks() -> dict[str, str]:
    """The blocks that are files, by the path their first line names."""
    files: dict[str, str] = {}
    for _, text in doc_blocks():
        m = FILE_LINE.match(text)
        if m:
            assert m.group(1) not in files, f"two blocks are the file {m.group(1)}"
            files[m.group(1)] = text
    return files


def console_commands() -> list[tuple[list[str], list[str]]]:
    """Each ``$ kdcore ...`` line of the page's console blocks (as arguments after
    ``kdcore``) with the output lines the page shows under it."""
    out: list[tuple[list[str], list[str]]] = []
    for lang, text in doc_blocks():
        if lang != "console":
            continue
        for line in text.splitlines():
            if line.startswith("$ "):
                words = shlex.split(line[2:], comments=True)
                out.append((words, []))
            elif out:
                out[-1][1].append(line)
    return [(words[1:], shown) for words, shown in out if words[0] == "kdcore"]


def write_table(path: Path, rows: range) -> tuple[np.ndarray, np.ndarray]:
    """Rows of scikit-learn's digits as a CSV of 64 features scaled to [0, 1] and a label;
    returns the features as the file holds them and the labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    cells = [[f"{v / 16:.4g}" for v in bunch.data[i]] for i in rows]
    labels = np.asarray(bunch.target[list(rows)], dtype=np.int64)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*(f"f{i}" for i in range(64)), "label"])
        writer.writerows([*row, int(y)] for row, y in zip(cells, labels, strict=True))
    return np.asarray(cells, dtype=np.float32), labels


def _forget_modules() -> None:
    for name in [*PACKAGES.values(), "docs_test_confident"]:
        sys.modules.pop(name, None)


@pytest.fixture
def docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The page's files under ``tmp_path`` (the working directory), the packages on the
    import path, and ``table.csv``."""
    for name, text in file_blocks().items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    write_table(tmp_path / "table.csv", range(TABLE_ROWS))
    monkeypatch.chdir(tmp_path)
    for package in PACKAGES:
        monkeypatch.syspath_prepend(str(tmp_path / package))
    _forget_modules()
    yield tmp_path
    _forget_modules()


def plugin_modules() -> list[ModuleType]:
    return [importlib.import_module(module) for module in PACKAGES.values()]


def docs_tests(root: Path) -> ModuleType:
    """The page's test module of kdcore-confident, imported from ``root``."""
    spec = importlib.util.spec_from_file_location("docs_test_confident", root / DOCS_TESTS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def is_slow(fn: object) -> bool:
    return any(mark.name == "slow" for mark in getattr(fn, "pytestmark", []))


def kdcore_cli(args: list[str]) -> object:
    """Run ``kdcore ARGS`` in-process with the page's plugins loaded by ``--plugin``."""
    extra = PLUGIN_OPTIONS if args[0] in ("check", "run", "plugins") else []
    try:
        return CliRunner().invoke(main, [*args, *extra])
    finally:
        logger.remove()  # the command logs to the runner's stream, closed by now


# -- the page ---------------------------------------------------------------------------------


def test_the_page_holds_both_packages_and_the_recipe():
    assert set(file_blocks()) == EXPECTED_FILES


def test_each_package_registers_what_its_entry_point_names(docs):
    provided = {"kdcore-confident": ("components", "confident"),
                "kdcore-csv-table": ("datasets", "csv_table")}
    for package, (kind, name) in provided.items():
        project = tomllib.loads((docs / package / "pyproject.toml").read_text())["project"]
        assert project["name"] == package
        assert project["entry-points"]["kdcore"] == {name: PACKAGES[package]}
        module = importlib.import_module(PACKAGES[package])
        info = kdcore.PluginHost(extra=[module]).infos[module.__name__]
        assert info.error is None
        assert info.provides == {kind: [name]}
    host = kdcore.PluginHost(extra=plugin_modules())
    assert host.components.get("confident").kinds() == ("select",)
    comp = host.components.get("confident")
    assert comp.writes == ("confident/{name}/p_label",)


def test_the_pages_python_files_pass_ruff(docs):
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed beside this interpreter")
    result = subprocess.run(
        [str(ruff), "check", "--no-cache", "--config", str(DOC.parents[1] / "pyproject.toml"),
         *(str(docs / name) for name in file_blocks() if name.endswith(".py"))],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the dataset loader -----------------------------------------------------------------------


def test_the_loader_reads_the_table_as_it_is(docs):
    from kdcore_csv_table import csv_table

    x, y = write_table(docs / "part.csv", range(30, 130))
    test_x, test_y = write_table(docs / "rest.csv", range(200, 240))
    splits = csv_table(path="part.csv", test_path="rest.csv")
    train, test = splits.train, splits.test
    assert (train.x.dtype, train.y.dtype) == (torch.float32, torch.int64)
    np.testing.assert_array_equal(train.x.numpy(), x)
    np.testing.assert_array_equal(train.y.numpy(), y)
    assert train.num_classes == int(y.max()) + 1 == 10
    assert train.class_names == tuple("0123456789")
    assert test is not None
    np.testing.assert_array_equal(test.x.numpy(), test_x)
    np.testing.assert_array_equal(test.y.numpy(), test_y)
    assert test.num_classes == 10
    assert csv_table(path="part.csv").test is None  # the engine carves one out


def test_the_loader_names_what_is_wrong(docs):
    from kdcore_csv_table import csv_table

    def refused(match: str, **params: str) -> None:
        with pytest.raises(kdcore.KdcoreError, match=match):
            csv_table(**params)

    refused(r"no file 'none\.csv' \(data\.params\.path;", path="none.csv")
    refused(r"no file 'none\.csv' \(data\.params\.test_path;", path="table.csv",
            test_path="none.csv")
    refused(r"table\.csv has no column 'digit' \(data\.params\.label_column\)",
            path="table.csv", label_column="digit")
    refused(r"^csv_table: 'path' is empty$", path=" ")
    refused(r"'path' contains a NUL byte", path="table\0.csv")
    (docs / "bad.csv").write_text("a,b,label\n1,2,0\n1,x,1\n")
    refused(r"bad\.csv, line 3: column 'b' holds 'x', not a finite number", path="bad.csv")
    (docs / "nan.csv").write_text("a,label\nnan,0\n")
    refused(r"line 2: column 'a' holds 'nan', not a finite number", path="nan.csv")
    (docs / "half.csv").write_text("a,label\n1,0.5\n")
    refused(r"line 2: label '0\.5' in column 'label' is not an integer >= 0", path="half.csv")
    (docs / "short.csv").write_text("a,b,label\n1,0\n")
    refused(r"line 2: 2 cells, expected 3", path="short.csv")
    (docs / "empty.csv").write_text("")
    refused(r"empty\.csv is empty", path="empty.csv")
    (docs / "more.csv").write_text("a,label\n1,0\n2,1\n")
    (docs / "more_test.csv").write_text("a,label\n1,2\n")
    refused(r"more_test\.csv has label 2; the labels of more\.csv are 0\.\.1",
            path="more.csv", test_path="more_test.csv")
    (docs / "other.csv").write_text("b,label\n1,0\n")
    refused(r"other\.csv has columns b, label, not those of more\.csv: a, label",
            path="more.csv", test_path="other.csv")


# -- kdcore check -----------------------------------------------------------------------------


def test_check_accepts_the_recipe(docs):
    result = kdcore_cli(["check", "table.toml"])
    assert result.exit_code == 0, result.stderr
    assert 'dataset = "csv_table"' in result.stdout
    assert 'path = "table.csv"' in result.stdout
    assert 'use = "confident"' in result.stdout


def test_check_refuses_as_the_page_shows(docs):
    commands = [(args, shown) for args, shown in console_commands() if args[0] == "check"]
    refusals = [(args, shown) for args, shown in commands if shown]
    assert len(refusals) >= 5
    shown_all = "\n".join(line for _, shown in refusals for line in shown)
    for what in ("uses model role", "reads ledger column", "must be in", "has no column",
                 "no file"):
        assert what in shown_all
    for args, shown in commands:
        result = kdcore_cli(args)
        if not shown:
            assert result.exit_code == 0, (args, result.stderr)
            continue
        assert result.exit_code == 2, (args, result.stdout)
        assert result.stderr.splitlines() == shown, args


def test_an_undeclared_write_is_refused_as_the_page_shows(docs):
    from kdcore.testing import harness
    from kdcore_confident import Confident

    class Forgetful(Confident):
        writes = ()

    h = harness(Forgetful, {}, x=torch.zeros(4, 2), noisy_label=torch.tensor([0, 1, 0, 1]),
                models={"teacher": docs_tests(docs).LogitsAreInputs()}, name="confident")
    h.setup()
    with pytest.raises(RuntimeError) as refused:
        h.epoch_start(0)
    assert str(refused.value) in DOC.read_text()


# -- the page's own tests ---------------------------------------------------------------------


def test_the_pages_unit_tests_pass(docs):
    module = docs_tests(docs)
    tests = {name: fn for name, fn in vars(module).items()
             if name.startswith("test_") and callable(fn)}
    fast = [fn for fn in tests.values() if not is_slow(fn)]
    assert fast, "the page shows no harness test"
    for fn in tests.values():
        if "run_tiny(" in inspect.getsource(fn):
            assert is_slow(fn), f"{fn.__name__} trains a whole recipe: mark it slow"
    for fn in fast:
        fn()


@pytest.mark.slow
def test_the_pages_resume_test_passes(docs):
    slow = [fn for name, fn in vars(docs_tests(docs)).items()
            if name.startswith("test_") and callable(fn) and is_slow(fn)]
    assert slow, "the page shows no resume test"
    for fn in slow:
        (docs / fn.__name__).mkdir()
        fn(docs / fn.__name__)


@pytest.mark.slow
def test_the_recipe_trains_on_the_table(docs):
    _, labels = write_table(docs / "table.csv", range(TABLE_ROWS))
    recipe = kdcore.load_recipe(docs / "table.toml")
    host = kdcore.PluginHost(extra=plugin_modules())
    summary = kdcore.run_recipe(recipe, out="runs/table", host=host, progress=False)
    assert set(summary) == {"teacher", "student"}
    with kdcore.History(docs / "runs" / "table") as h:
        # the table's rows and labels reached the run
        rows = h.data("sample_id")
        assert abs(len(rows) - 0.7 * TABLE_ROWS) <= 10  # less validation and test splits
        assert len(set(rows.tolist())) == len(rows) and rows.max() < TABLE_ROWS
        np.testing.assert_array_equal(h.data("clean_label"), labels[rows])
        assert h.num_classes == 10
        noisy = h.data("noisy_label") != h.data("clean_label")
        assert abs(noisy.mean() - 0.3) < 0.01
        # the selector's columns, tagged with its name in the student's epochs
        student = [i for i, (stage, _) in enumerate(h.epochs()) if stage == "student"]
        assert len(student) == 4
        for column in ("select/confident", "confident/confident/p_label"):
            assert column in h.column_names()
            assert {h.producers(column)[i] for i in student} == {"confident"}
        p_label = h.column("confident/confident/p_label", student[-1]).astype(np.float64)
        mask = h.column("select/confident", student[-1])
        assert mask.shape == (len(rows),)
        assert mask[p_label >= 0.3 + 1e-3].all()  # float16 in the history: leave a margin
        precision = h.metric("select/confident/precision")[student[-1]]
        assert precision > 1 - noisy.mean()  # it keeps clean labels more often than chance
    result = kdcore_cli([args for args, _ in console_commands() if args[0] == "inspect"][0])
    assert result.exit_code == 0, result.stderr
    assert "select/confident/precision" in result.stdout
