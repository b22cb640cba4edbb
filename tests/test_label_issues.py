"""kdcore.label_issues / ``kdcore label-issues`` (kdcore/label_ranking.py): the ranking on
hand-written history-like input against a worked example and an independent transcription of
docs/history.md's reading, the same on a tiny real run, the command line (table, CSV, bad
input) and the cleanlab comparison script's core."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import kdcore
from kdcore.cli import main
from kdcore.errors import KdcoreError
from kdcore.history import History
from kdcore.label_ranking import LabelIssues, find_label_issues, softmax
from kdcore.testing import component, run_tiny, stage, teacher_stage, tiny_recipe

ROOT = Path(__file__).resolve().parents[1]

# stages: teacher (row 0), a: student (rows 1-2), b: teacher (row 3), c: student (rows 4-5)
STAGES = [("teacher", "teacher", 1), ("a", "student", 2), ("b", "teacher", 1),
          ("c", "student", 2)]


def _recipe(stages: list[tuple[str, str, int]]) -> str:
    return "".join(f'[[stages]]\nname = "{n}"\nepochs = {e}\ntrain = ["{r}"]\n\n'
                   for n, r, e in stages)


class FakeHistory:
    """What find_label_issues reads of a History, from arrays; a whole column at once (no
    epoch) is refused: the reader must go one epoch row at a time."""

    def __init__(self, columns: dict[str, tuple[np.ndarray, list[str]]],
                 data: dict[str, np.ndarray], stages=STAGES, num_classes: int = 3):
        self.path = Path("fake/history.h5")
        self.recipe = _recipe(stages)
        self.num_classes = num_classes
        self._epochs = [(n, e) for n, _, k in stages for e in range(k)]
        self._columns, self._data = columns, data
        self.reads: list[tuple[str, int]] = []

    def epochs(self):
        return list(self._epochs)

    def column_names(self):
        return sorted(self._columns)

    def column(self, name, epoch=None):
        assert epoch is not None, "read a whole column at once"
        self.reads.append((name, epoch))
        return self._columns[name][0][epoch]

    def producers(self, name):
        return list(self._columns[name][1])

    def data(self, name):
        return self._data[name]

    def data_names(self):
        return sorted(self._data)


# -- a worked example ---------------------------------------------------------------------


def _worked() -> FakeHistory:
    """7 samples, 3 classes, given [0, 1, 2, 0, 1, 2, 0], true [0, 2, 2, 1, 1, 0, 0]. The
    student's rows are 1, 2, 4, 5 (row 3 is the teacher's stage: its student logits do not
    count)."""
    given, n, rows = np.array([0, 1, 2, 0, 1, 2, 0]), 7, 6
    p = np.tile(np.array([[.8, .1, .1], [.1, .8, .1], [.2, .2, .6], [.5, .4, .1],
                          [.65, .25, .1], [.2, .2, .6], [.8, .1, .1]]), (rows, 1, 1))
    p[1:3, 1] = [.1, .2, .7]           # sample 1: the model disagrees in stage a
    p[3] = 1 / 3                       # stage b: would change every score if it counted
    target = np.tile(np.eye(3)[given], (rows, 1, 1))
    target[1:, 4] = [.05, .9, .05]     # sample 4: smoothed only, not relabelled
    target[5, 1] = [0, 0, 1]           # sample 1: relabelled at the last row
    target[1:, 5] = [1, 0, 0]          # samples 5 and 6: relabelled throughout (score 1)
    target[1:, 6] = [0, 1, 0]
    shared = np.ones((rows, n), bool)
    shared[4:, 2] = False              # sample 2: left out by a shared mask in stage c
    shared[1:3] = False                # rows no component wrote: not a verdict
    own, other = np.ones((rows, n), bool), np.ones((rows, n), bool)
    own[5, 3] = False                  # sample 3: the student's own mask, last row
    other[:, 3] = False                # the teacher's mask: does not count for the student
    written = ["", "s", "s", "s", "s", "s"]
    return FakeHistory({
        "logits/student": (np.log(p), written),
        "logits/teacher": (np.zeros((rows, n, 3)), ["t"] * rows),
        "target": (target, ["labels", "labels", "labels", "labels", "lp", "lp"]),
        "select/sl": (shared, ["", "", "", "sl", "sl", "sl"]),
        "select/co/student": (own, ["co"] * rows),
        "select/co/teacher": (other, ["co"] * rows),
    }, {"noisy_label": given, "clean_label": np.array([0, 2, 2, 1, 1, 0, 0]),
        "sample_id": np.arange(10, 17)})


def test_the_worked_example():
    h = _worked()
    r = find_label_issues(h)
    assert r.model == "student" and list(r.rows) == [1, 2, 4, 5] and r.num_samples == 7
    assert list(r.index) == [5, 6, 4, 1, 3, 2]      # scores 1, 1 (a tie: by row), .75, .7 ...
    np.testing.assert_allclose(r.score, [1, 1, .75, .7, .5, .4])
    assert list(r.sample_id) == [15, 16, 14, 11, 13, 12]
    assert list(r.given) == [2, 0, 1, 1, 0, 2] and list(r.refined) == [0, 1, 1, 2, 0, 2]
    assert list(r.times_flagged) == [4, 4, 4, 3, 1, 2]
    assert list(r.since) == [1, 1, 1, 5, 5, 4]
    assert r.since_epoch() == [("a", 0)] * 3 + [("c", 1), ("c", 1), ("c", 0)]
    assert list(r.clean) == [0, 0, 1, 2, 1, 2] and r.num_mislabelled == 3
    assert [r.precision_at(k) for k in range(1, 7)] == pytest.approx([1, .5, 1 / 3, .5, .6, .5])
    assert r.precision_at(7) is None and r.recall == 1.0
    assert all(epoch in (1, 2, 4, 5) for _, epoch in h.reads)   # only the student's rows


def test_the_teacher_and_the_default_model():
    h = _worked()
    assert find_label_issues(h, "teacher").model == "teacher"
    h.recipe = _recipe(STAGES[:3])     # the last stage, b, trains the teacher ...
    h._epochs = h._epochs[:4]
    assert find_label_issues(h).model == "student"      # ... but a student is preferred
    del h._columns["logits/student"]   # no student: the model of the last stage
    assert find_label_issues(h).model == "teacher"
    h.recipe = _recipe([*STAGES[:2], ("b", "peer", 1)])  # b, a: no logits; the first
    assert find_label_issues(h).model == "teacher"


@pytest.mark.parametrize("model, needle", [("studnt", "did you mean 'student'"),
                                           ("peer_a", "models: student, teacher")])
def test_an_unknown_model_is_one_line(model, needle):
    with pytest.raises(KdcoreError, match=needle):
        find_label_issues(_worked(), model)


def test_a_model_that_never_trained_is_an_error():
    h = _worked()
    h.recipe = _recipe([("teacher", "teacher", 1), ("a", "teacher", 2), ("b", "teacher", 1),
                        ("c", "teacher", 2)])
    with pytest.raises(KdcoreError, match="model 'student' trained in no recorded epoch"):
        find_label_issues(h, "student")


def test_precision_needs_a_positive_k_and_true_labels():
    r = find_label_issues(_worked())
    for bad in (0, -1, 1.5, True):
        with pytest.raises(KdcoreError, match="positive integer"):
            r.precision_at(bad)  # type: ignore[arg-type]
    h = _worked()
    del h._data["clean_label"]
    unknown = find_label_issues(h)
    assert unknown.clean is None and unknown.num_mislabelled is None
    assert unknown.precision_at(1) is None and unknown.recall is None
    assert "clean_label" not in unknown.frame() and len(unknown.frame()) == 6


# -- an independent transcription ----------------------------------------------------------


def transcription(h, role: str) -> dict:
    """docs/history.md's reading, sample by sample, in plain Python."""
    import tomllib

    training = {s["name"] for s in tomllib.loads(h.recipe)["stages"] if role in s["train"]}
    logits, written = h._columns[f"logits/{role}"]
    rows = [t for t, (st, _) in enumerate(h.epochs()) if st in training and written[t]]
    target, tprod = h._columns["target"]
    masks = [v for k, v in h._columns.items() if k.startswith("select/")
             and (k.count("/") == 1 or k.endswith("/" + role))]
    given, out = h._data["noisy_label"], {}
    for i in range(len(given)):
        doubts, flags = [], []
        for t in rows:
            e = [math.exp(z) for z in logits[t][i]]
            belief = [v / sum(e) for v in e]
            if tprod[t] and int(np.argmax(target[t][i])) != given[i]:
                belief = list(target[t][i])
            flag = int(np.argmax(belief)) != given[i]
            flag = flag or any(prod[t] and not m[t][i] for m, prod in masks)
            doubts.append(1 - belief[given[i]])
            flags.append(flag)
        since = None
        for t, f in zip(reversed(rows), reversed(flags)):
            if not f:
                break
            since = t
        last = rows[-1]
        refined = int(np.argmax(target[last][i])) if tprod[last] else given[i]
        out[i] = {"score": sum(doubts) / len(doubts), "count": sum(flags), "since": since,
                  "last": flags[-1], "refined": refined}
    order = sorted((i for i in out if out[i]["last"]), key=lambda i: (-out[i]["score"], i))
    return {"order": order, "samples": out}


def _random(seed: int, n: int = 40, c: int = 4) -> FakeHistory:
    rng = np.random.default_rng(seed)
    rows = sum(k for *_, k in STAGES)
    given = rng.integers(0, c, n)
    clean = np.where(rng.random(n) < .4, rng.integers(0, c, n), given)
    target = np.tile(np.eye(c)[given], (rows, 1, 1))
    relabel = rng.random((rows, n)) < .3
    target[relabel] = np.eye(c)[rng.integers(0, c, (rows, n))][relabel]
    soft = rng.random((rows, n)) < .2
    target[soft] = rng.dirichlet(np.ones(c), (rows, n))[soft]
    logits = rng.normal(0, 2, (rows, n, c)).round(1)   # ties in the scores happen
    logits[..., 0] = np.where(rng.random((rows, n)) < .3, logits[..., 0], -9)

    def mask(p):
        return rng.random((rows, n)) > p, [rng.choice(["", "m"]) for _ in range(rows)]

    return FakeHistory({
        "logits/student": (logits, [rng.choice(["", "s", "s"]) for _ in range(rows - 1)] + ["s"]),
        "logits/teacher": (rng.normal(size=(rows, n, c)), ["t"] * rows),
        "target": (target, [rng.choice(["", "r", "r"]) for _ in range(rows)]),
        "select/a": mask(.2), "select/b/student": mask(.1), "select/b/teacher": mask(.5),
    }, {"noisy_label": given, "clean_label": clean, "sample_id": rng.permutation(n) + 100},
        num_classes=c)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("role", ["student", "teacher"])
def test_the_ranking_is_the_transcription(seed, role):
    h = _random(seed)
    want = transcription(h, role)
    r = find_label_issues(h, role)
    assert list(r.index) == want["order"]
    s = [want["samples"][i] for i in want["order"]]
    np.testing.assert_allclose(r.score, [x["score"] for x in s], rtol=1e-12)
    assert list(r.times_flagged) == [x["count"] for x in s]
    assert list(r.since) == [x["since"] for x in s]
    assert list(r.refined) == [x["refined"] for x in s]
    given, clean = h._data["noisy_label"], h._data["clean_label"]
    assert list(r.sample_id) == [h._data["sample_id"][i] for i in want["order"]]
    truly = [bool(clean[i] != given[i]) for i in want["order"]]
    for k in range(1, len(truly) + 1):
        assert r.precision_at(k) == pytest.approx(sum(truly[:k]) / k)
    assert r.recall == pytest.approx(sum(truly) / int((clean != given).sum()))


def test_softmax_is_the_softmax():
    z = np.array([[1000.0, 999.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float16)
    e = np.exp([0.0, -1.0, -1000.0])
    np.testing.assert_allclose(softmax(z), [e / e.sum(), [1 / 3] * 3], atol=1e-12)


# -- a tiny real run ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A teacher, then a student with a selection (all samples) and label smoothing."""
    out = tmp_path_factory.mktemp("label_issues") / "run"
    recipe = tiny_recipe(teacher_stage(1), stage(
        "student", 2, ["student"], component("all_samples"), component("label_smoothing"),
        component("ce"), component("hinton_kd", params={"teacher": "teacher"})),
        train_subset=120)
    run_tiny(recipe, out)
    return out


class _Loaded(FakeHistory):
    """A real history's arrays, for the transcription."""

    def __init__(self, h: History):
        self.path, self.recipe, self.num_classes = h.path, h.recipe, h.num_classes
        self._epochs = h.epochs()
        self._columns = {c: (h.column(c), h.producers(c)) for c in h.column_names()}
        self._data = {d: h.data(d) for d in h.data_names()}


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_a_real_run_is_read_as_transcribed(tiny_run, role):
    with History(tiny_run) as h:
        want = transcription(_Loaded(h), role)
        sample_id = h.data("sample_id")
    r = kdcore.label_issues(tiny_run, role if role == "teacher" else None)
    assert isinstance(r, LabelIssues) and r.model == role
    assert list(r.index) == want["order"] and len(r) > 0
    s = [want["samples"][i] for i in want["order"]]
    np.testing.assert_allclose(r.score, [x["score"] for x in s], rtol=1e-9)
    assert list(r.times_flagged) == [x["count"] for x in s]
    assert list(r.since) == [x["since"] for x in s]
    assert list(r.sample_id) == list(sample_id[want["order"]])


def test_the_frame(tiny_run):
    r = kdcore.label_issues(tiny_run)
    f = r.frame()
    assert list(f.columns) == ["rank", "ledger_row", "sample_id", "given_label",
                               "refined_label", "clean_label", "truly_mislabelled", "score",
                               "times_flagged", "since_row", "since_stage", "since_epoch"]
    np.testing.assert_array_equal(f["score"], r.score)
    assert (f["truly_mislabelled"] == (f["clean_label"] != f["given_label"])).all()
    assert set(f["since_stage"]) <= {"student"}      # the student's stage only


# -- the command line -----------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_the_table(tiny_run):
    r = kdcore.label_issues(tiny_run)
    res = invoke("label-issues", tiny_run, "--top", 3)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith(f"model 'student': {len(r)} of 120 samples flagged at the last "
                               "of its 2 trained epochs (stage 'student' epoch 2)")
    assert lines[1].split() == ["rank", "sample_id", "given", "refined", "true", "score",
                                "flagged", "since"]
    for i, line in enumerate(lines[2:5]):
        cells = line.split()
        assert cells[:6] == [str(i + 1), str(r.sample_id[i]), str(r.given[i]),
                             str(r.refined[i]), str(r.clean[i]), f"{r.score[i]:.4f}"]
        assert cells[6:] == [f"{r.times_flagged[i]}/2", "student",
                             str(r.since_epoch()[i][1] + 1)]
    ks = sorted({3, 100, len(r)} if len(r) >= 100 else {3, len(r)})
    assert lines[5:] == [*(f"precision at {k}: {r.precision_at(k):.4f}" for k in ks),
                         f"recall: {r.recall:.4f} ({r.num_mislabelled} of 120 samples truly "
                         "mislabelled)"]


def test_the_csv_is_the_whole_list_exactly(tiny_run, tmp_path):
    pd = pytest.importorskip("pandas")
    r = kdcore.label_issues(tiny_run)
    res = invoke("label-issues", tiny_run, "--csv", tmp_path / "issues.csv")
    assert res.exit_code == 0 and f"wrote {len(r)} rows to" in res.output
    f = pd.read_csv(tmp_path / "issues.csv")
    assert len(f) == len(r)
    for col in ("rank", "ledger_row", "sample_id", "given_label", "refined_label",
                "clean_label", "truly_mislabelled", "score", "times_flagged", "since_row",
                "since_epoch"):
        assert pd.api.types.is_numeric_dtype(f[col]), col
    np.testing.assert_array_equal(f["score"].to_numpy(), r.score)   # full precision
    np.testing.assert_array_equal(f["ledger_row"].to_numpy(), r.index)
    np.testing.assert_array_equal(f["since_row"].to_numpy(), r.since)


def test_unknown_true_labels_are_empty_cells(tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")
    h = _worked()
    del h._data["clean_label"]
    from kdcore import label_ranking

    monkeypatch.setattr(label_ranking, "find_label_issues",
                        lambda run, model: find_label_issues(h, model))
    res = invoke("label-issues", tmp_path, "--csv", tmp_path / "i.csv")
    assert res.exit_code == 0 and "true labels unknown" in res.output
    f = pd.read_csv(tmp_path / "i.csv")
    assert f["clean_label"].isna().all() and f["truly_mislabelled"].isna().all()
    header, *rows = (line.split(",") for line in (tmp_path / "i.csv").read_text().splitlines())
    unknown = [header.index("clean_label"), header.index("truly_mislabelled")]
    assert all(row[j] == "" for row in rows for j in unknown) and len(rows) == 6
    assert list(f["sample_id"]) == [15, 16, 14, 11, 13, 12]


@pytest.mark.parametrize("args, needle", [
    (["--top", "0"], "--top takes a positive number, got 0"),
    (["--top", "-3"], "--top takes a positive number, got -3"),
    (["--model", "studnt"], "did you mean 'student'"),
])
def test_bad_options_are_one_line(tiny_run, args, needle):
    _assert_user_error(invoke("label-issues", tiny_run, *args), needle)


def test_no_run_is_one_line(tmp_path):
    _assert_user_error(invoke("label-issues", tmp_path / "nothing"), "no history at")
    _assert_user_error(invoke("label-issues", tmp_path), "no history at")
    (tmp_path / "history.h5").write_text("not hdf5")
    _assert_user_error(invoke("label-issues", tmp_path), "not an HDF5 file")


def _assert_user_error(result, needle):
    assert result.exit_code == 2, result.output
    assert [line for line in result.output.splitlines() if line.strip()] == [
        f"kdcore: error: {result.output.split('kdcore: error: ')[1].strip()}"]
    assert needle in result.output


def test_help_has_examples():
    res = invoke("label-issues", "--help")
    assert res.exit_code == 0 and "kdcore label-issues runs/amlkd --csv issues.csv" in res.output


# -- the cleanlab comparison ---------------------------------------------------------------


def _script():
    spec = importlib.util.spec_from_file_location(
        "label_issues_cleanlab", ROOT / "benchmarks" / "label_issues_cleanlab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_list_scores():
    s = _script().list_scores(np.array([True, False, True, True]), 5, [1, 2, 4, 5])
    assert s == {"length": 4, "precision": .75, "recall": .6,
                 "precision_at": {"1": 1.0, "2": .5, "4": .75, "5": None}}
    assert _script().list_scores(np.array([], bool), 0, [1])["recall"] is None


def test_the_grid_setting_of_a_path():
    where = _script().where
    assert where(Path("runs/amlkd-fmnist-sym/amlkd/seed0")) == ("amlkd-fmnist-sym", "amlkd", 0)
    assert where(Path("runs/amlkd")) == ("amlkd", "amlkd", None)


def test_the_comparison_on_a_tiny_run(tiny_run, tmp_path):
    cleanlab = pytest.importorskip("cleanlab")
    from cleanlab.filter import find_label_issues as cleanlab_issues

    script = _script()
    r = kdcore.label_issues(tiny_run)
    one = script.compare_run(tiny_run)
    with History(tiny_run) as h:
        given, clean = h.data("noisy_label"), h.data("clean_label")
        probs = softmax(h.column("logits/student", len(h) - 1))
    num = int((clean != given).sum())
    assert one["num_mislabelled"] == num and one["ks"] == sorted({500, 1000, 2000, num})
    assert one["kdcore"]["length"] == len(r) and one["kdcore"]["recall"] == r.recall
    assert one["kdcore"]["precision_at"][str(num)] == r.precision_at(num)
    theirs = cleanlab_issues(labels=given, pred_probs=probs,
                             return_indices_ranked_by="self_confidence")
    truly = (clean != given)[theirs]
    assert one["cleanlab"]["length"] == len(theirs)
    assert one["cleanlab"]["recall"] == pytest.approx(truly.sum() / num)
    if len(theirs) >= num:
        assert one["cleanlab"]["precision_at"][str(num)] == pytest.approx(truly[:num].mean())
    results = script.main([str(tiny_run), str(tmp_path / "missing"),
                           "--out", str(tmp_path / "out.json")])
    assert results["runs"] == [one]     # the unfinished one skipped
    assert json.loads((tmp_path / "out.json").read_text()) == results
    (row,) = script.summarize([one, dict(one, seed=1)])
    assert row["seeds"] == 2 and row["kdcore"]["length"] == {"mean": len(r), "std": 0.0, "n": 2}
    table = script.markdown({"summary": [row], "pred_probs": script.PRED_PROBS,
                             "cleanlab_version": cleanlab.__version__})
    assert "| kdcore |" in table and "| cleanlab |" in table and "in-sample" in table
