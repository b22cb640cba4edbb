"""What a researcher expects of the command line: exact, numeric CSV exports that carry the
sample id and both labels; cartography over the epochs a model trained; ``--plugin`` on every
command that loads plugins; an example in every ``--help``; ``plugins --verbose``."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import click
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import kdcore.history  # noqa: F401 (registers the HDF5 filters for h5py reads)
from kdcore.cli import main
from kdcore.cli_plugins import param_docs
from kdcore.testing import MODELS, component, run_tiny, stage, teacher_stage, tiny_recipe

ROOT = Path(__file__).parents[1]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory):
    """Teacher 2 epochs, then the student 3 epochs distilled from the frozen teacher (whose
    logits the history still records every epoch)."""
    out = tmp_path_factory.mktemp("polish") / "run"
    recipe = tiny_recipe(
        teacher_stage(2),
        stage("student", 3, ["student"], component("ce", weight=0.5),
              component("hinton_kd", "kd", weight=0.5, params={"teacher": "teacher"}),
              component("all_samples")))
    run_tiny(recipe, out)
    return out


def _h5(run, group, name):
    with h5py.File(run / "history.h5", "r") as f:
        return f[group][name][:]


def _stages(run):
    with h5py.File(run / "history.h5", "r") as f:
        names = [s.decode() for s in f["strings"][:]]
        return [names[c] for c in f["epochs/stage"][:]]


# -- 1. CSV: empty cells for missing values, exact floats, sample id and labels --------------


@pytest.mark.slow
def test_metrics_csv_is_exact_with_empty_missing_cells(two_stage_run, tmp_path):
    path = tmp_path / "m.csv"
    res = invoke("inspect", two_stage_run, "--metrics", "train/*/loss,test/*/acc", "--csv", path)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(path.open()))
    assert [r["stage"] for r in rows] == ["teacher"] * 2 + ["student"] * 3
    for name in ("train/student/loss", "train/teacher/loss", "test/student/acc"):
        stored = _h5(two_stage_run, "metrics", name)
        for i, r in enumerate(rows):
            if np.isnan(stored[i]):
                assert r[name] == ""
            else:
                assert float(r[name]) == stored[i]  # exact round trip, not 4 decimals
    assert rows[0]["train/student/loss"] == "" and rows[2]["train/student/loss"] != ""
    printed = invoke("inspect", two_stage_run).output.splitlines()
    assert " - " in printed[1] or printed[1].split()[-1] == "-"  # the screen keeps its dashes


@pytest.mark.slow
def test_column_csv_carries_sample_id_labels_and_exact_values(two_stage_run, tmp_path):
    path = tmp_path / "c.csv"
    res = invoke("inspect", two_stage_run, "--column", "loss/kd", "--column", "target",
                 "--column", "select/all_samples", "--csv", path)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["row", "stage", "epoch", "ledger_row", "sample_id", "clean_label",
                             "noisy_label", "loss/kd", "target/label", "target/confidence",
                             "select/all_samples"]
    sample_id = _h5(two_stage_run, "data", "sample_id")
    clean, noisy = _h5(two_stage_run, "data", "clean_label"), _h5(two_stage_run, "data",
                                                                    "noisy_label")
    kd, target = _h5(two_stage_run, "ledger", "loss/kd"), _h5(two_stage_run, "ledger", "target")
    n = len(sample_id)
    assert len(rows) == 5 * n and not np.array_equal(sample_id, np.arange(n))
    stages = _stages(two_stage_run)
    for r in rows:
        i, j = int(r["row"]), int(r["ledger_row"])
        assert r["stage"] == stages[i]
        assert int(r["sample_id"]) == sample_id[j]
        assert (int(r["clean_label"]), int(r["noisy_label"])) == (clean[j], noisy[j])
        if stages[i] == "teacher":  # no KD term, no selector yet: missing, not 0 or False
            assert r["loss/kd"] == "" and r["select/all_samples"] == ""
        else:
            assert float(r["loss/kd"]) == float(kd[i, j])
            assert r["select/all_samples"] == "1"
        assert int(r["target/label"]) == target[i, j].argmax()
        assert float(r["target/confidence"]) == float(target[i, j].max())


@pytest.mark.slow
def test_column_all_exports_every_ledger_column(two_stage_run, tmp_path):
    path = tmp_path / "all.csv"
    assert invoke("inspect", two_stage_run, "--column", "all", "--csv", path).exit_code == 0
    header = next(csv.reader(path.open()))
    with h5py.File(two_stage_run / "history.h5", "r") as f:
        ledger = sorted(n for n, d in f["ledger"].items() if isinstance(d, h5py.Dataset))
        ledger += [f"select/{n}" for n in f["ledger/select"]] if "select" in f["ledger"] else []
    for name in ledger:
        assert any(h == name or h.startswith(f"{name}/") for h in header), (name, header)
    assert {"sample_id", "clean_label", "noisy_label", "logits/teacher/argmax"} <= set(header)


# -- 2. cartography: the epochs the model trained, guid the sample id ------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("role", "epochs"), [("teacher", 2), ("student", 3)])
def test_cartography_covers_only_the_epochs_the_model_trained(two_stage_run, tmp_path, role,
                                                              epochs):
    out = tmp_path / role
    res = invoke("inspect", two_stage_run, "--cartography", out, "--model", role)
    assert res.exit_code == 0, res.output
    files = sorted(out.glob("dynamics_epoch_*.jsonl"))
    assert [f.name for f in files] == [f"dynamics_epoch_{k}.jsonl" for k in range(epochs)]
    logits = _h5(two_stage_run, "ledger", f"logits/{role}")
    rows = [i for i, s in enumerate(_stages(two_stage_run)) if s == role]
    sample_id = _h5(two_stage_run, "data", "sample_id")
    noisy = _h5(two_stage_run, "data", "noisy_label")
    for k, (f, i) in enumerate(zip(files, rows)):
        lines = [json.loads(line) for line in f.read_text().splitlines()]
        assert [d["guid"] for d in lines] == sample_id.tolist()
        assert [d["gold"] for d in lines] == noisy.tolist()
        assert np.array_equal(np.array([d[f"logits_epoch_{k}"] for d in lines]),
                              logits[i].astype(np.float64))
    assert len({f.read_bytes() for f in files}) == epochs  # no frozen (identical) epochs


# -- 3. --plugin everywhere, examples in --help, plugins --verbose ---------------------------

PROBE = '''
from kdcore.builtin.components import CrossEntropy
from kdcore.hookspecs import hookimpl


class ProbeCE(CrossEntropy):
    """Cross-entropy under another name: only this plugin provides it."""


@hookimpl
def kdcore_add_components():
    return {"probe_ce": ProbeCE}
'''


@pytest.fixture
def probe_plugin(tmp_path, monkeypatch):
    (tmp_path / "polish_probe_plugin.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "polish_probe_plugin"


def test_plugins_and_check_take_plugin(probe_plugin, tmp_path):
    res = invoke("plugins", "--plugin", probe_plugin)
    assert res.exit_code == 0 and "probe_ce [transfer]" in res.output, res.output


@pytest.mark.parametrize("source, why", [
    ("def broken(:\n", "SyntaxError"),
    ("raise RuntimeError('no licence server')\n", "RuntimeError: no licence server"),
    ("import no_such_module_anywhere\n", "No module named"),
])
def test_a_plugin_module_that_fails_to_import_is_one_line(tmp_path, monkeypatch, source, why):
    (tmp_path / "failing_plugin_mod.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    res = invoke("plugins", "--plugin", "failing_plugin_mod")
    assert res.exit_code == 2, res.output
    assert "cannot import plugin 'failing_plugin_mod'" in res.output and why in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_ablate_takes_plugin(probe_plugin, tmp_path):
    from kdcore.testing import write_recipe

    recipe = write_recipe(tiny_recipe(stage("only", 1, ["student"], component("probe_ce")),
                                      models={"student": MODELS["student"]}),
                          tmp_path / "probe.toml")
    res = invoke("ablate", recipe, "--out", tmp_path / "grid", "--plugin", probe_plugin)
    assert res.exit_code == 0, res.output
    assert "1 ran, 0 skipped, 0 failed" in res.output
    assert (tmp_path / "grid" / "probe" / "seed0" / "history.h5").is_file()
    res = invoke("ablate", recipe, "--out", tmp_path / "g2", "--plugin", probe_plugin,
                 "--jobs", "2")
    assert res.exit_code == 2 and "--jobs 1" in res.output


def _examples(help_text):
    lines = help_text.split("Examples:", 1)[1].splitlines()
    return [shlex.split(line) for line in lines if line.strip().startswith("kdcore ")]


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_help_has_an_example_that_kdcore_accepts(name):
    res = invoke(name, "--help")
    assert res.exit_code == 0 and "Examples:" in res.output, res.output
    examples = _examples(res.output)
    assert examples and all(ex[1] == name for ex in examples), examples
    for argv in examples:
        ctx = main.make_context("kdcore", argv[1:])  # parses the group level
        cmd = main.get_command(ctx, argv[1])
        with ctx:
            cmd.make_context(argv[1], argv[2:], parent=ctx)  # raises on an unknown option
        for arg in argv[2:]:
            if arg.endswith(".toml"):
                assert (ROOT / arg).is_file(), arg
    bogus = main.get_command(main.make_context("kdcore", [name]), name)
    with pytest.raises(click.UsageError):
        bogus.make_context(name, ["--no-such-option"])


def test_group_help_has_examples():
    res = invoke("--help")
    assert "Examples:" in res.output and "kdcore run recipes/kd.toml" in res.output


def test_plugins_verbose_shows_parameters_and_descriptions():
    plain = invoke("plugins").output
    res = invoke("plugins", "--verbose")
    assert res.exit_code == 0
    assert "temperature: float = 4.0  T; the term is ``T^2 KL(p_t^T || p_s^T)``." in res.output
    assert "teacher: Role = 'teacher'  the model role whose softened outputs" in res.output
    assert "component hinton_kd [transfer]: Hinton KD" in res.output
    assert "temperature" not in plain
    data = json.loads(invoke("plugins", "--json", "--verbose").output)
    builtin = next(p for p in data if p["name"] == "builtin")
    kd = next(c for c in builtin["components"] if c["name"] == "hinton_kd")
    assert {"name": "temperature", "type": "float", "default": "4.0",
            "doc": "T; the term is ``T^2 KL(p_t^T || p_s^T)``."} in kd["params"]


def test_param_docs_reads_args_and_attributes_sections():
    doc = """Params of a thing.

    Args:
        rate (float): the fraction
            kept per epoch.
        lo, hi: the interval.

    Attributes:
        mode: one of ``a`` or ``b``.

    Returns:
        nothing: not a parameter.
    """
    assert param_docs(doc) == {"rate": "the fraction kept per epoch.", "lo": "the interval.",
                               "hi": "the interval.", "mode": "one of ``a`` or ``b``."}


def test_readme_documents_plugin_and_exports():
    text = (ROOT / "README.md").read_text()
    using = text.split("## Using it", 1)[1].split("\n## ", 1)[0]
    for needle in ("--plugin", "--column all", "--verbose", "sample_id", "--help"):
        assert needle in using, needle
