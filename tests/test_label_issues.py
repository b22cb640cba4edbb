"""kdcore.label_issues / ``kdcore label-issues`` (kdcore/label_ranking.py): the ranking on
hand-written history-like input against a worked example and an independent transcription of
docs/history.md's reading, the same on a tiny real run, the command line (table, CSV, bad
input) and the cleanlab comparison script's core."""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
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
    """8 samples, 3 classes, given [0, 1, 2, 0, 1, 2, 0, 2], true [0, 2, 2, 1, 1, 2, 1, 2]
    (samples 1, 3 and 6 truly mislabelled). The student's rows are 1, 2, 4, 5 (rows 0 and 3
    are the teacher's stages: nothing at them counts for the student). The model's
    probabilities p are written as logits log(p), so its softmax is p."""
    given, n, rows = np.array([0, 1, 2, 0, 1, 2, 0, 2]), 8, 6
    p = np.tile(np.array([[.8, .1, .1], [.1, .8, .1], [.2, .2, .6], [.5, .4, .1],
                          [.65, .25, .1], [.2, .2, .6], [.1, .8, .1], [.2, .2, .6]]),
                (rows, 1, 1))
    p[1:3, 1] = [.1, .2, .7]           # sample 1: the model disagrees in stage a
    p[4:, 3] = [.4, .5, .1]            # sample 3: the model disagrees in stage c
    p[3] = 1 / 3                       # stage b: would change every score if it counted
    target = np.tile(np.eye(3)[given], (rows, 1, 1))
    target[1:, 4] = [.05, .9, .05]     # sample 4: smoothed only, not relabelled
    target[5, 1] = [0, 0, 1]           # sample 1: relabelled at the last row
    target[1:, [5, 7]] = [1, 0, 0]     # samples 5, 6 and 7: relabelled throughout (score 1)
    target[1:, 6] = [0, 1, 0]
    shared = np.ones((rows, n), bool)
    shared[4:, 2] = False              # sample 2: left out by a shared mask in stage c
    shared[5, [3, 7]] = False          # samples 3 and 7: left out at the last row
    shared[1:4] = False                # rows 1-2 no component wrote, row 3 the teacher's
    own, other = np.ones((rows, n), bool), np.ones((rows, n), bool)
    own[4, 1] = False                  # sample 1: the student's own mask, row 4
    own[5, 3] = False                  # sample 3: the student's own mask too, row 5
    own[0] = False                     # row 0: the teacher's stage
    other[:, [3, 4]] = False           # the teacher's mask: does not count for the student
    written = ["", "s", "s", "s", "s", "s"]
    return FakeHistory({
        "logits/student": (np.log(p), written),
        "logits/teacher": (np.zeros((rows, n, 3)), ["t"] * rows),
        "target": (target, ["labels", "labels", "labels", "labels", "lp", "lp"]),
        "select/sl": (shared, ["", "", "", "sl", "sl", "sl"]),
        "select/co/student": (own, ["co"] * rows),
        "select/co/teacher": (other, ["co"] * rows),
    }, {"noisy_label": given, "clean_label": np.array([0, 2, 2, 1, 1, 2, 1, 2]),
        "sample_id": np.arange(10, 18)})


def test_the_worked_example():
    """Worked by hand, over the student's rows 1, 2, 4, 5 (E = 4):

    * 0: p = [.8, .1, .1], given 0: the model agrees at every row; never flagged, not listed.
    * 1: given 1. Rows 1-2: p = [.1, .2, .7] (flagged, doubt .8 each); row 4: p = [.1, .8, .1]
      (not flagged, doubt .2; its own mask leaves it out there: excluded, not flagged, so the
      streak breaks); row 5: the target relabels it [0, 0, 1] (flagged, doubt 1). Score
      2.8 / 4 = .7, model doubt (.8 + .8 + .2 + .2) / 4 = .5, flagged 3, since row 5,
      excluded 1, refined 2. Listed.
    * 2: p = [.2, .2, .6], given 2: the model agrees; the shared mask leaves it out at rows 4
      and 5, which no longer flags: not listed (excluded 2, unseen).
    * 3: given 0. Rows 1-2: p = [.5, .4, .1] (doubt .5, not flagged); rows 4-5: p = [.4, .5,
      .1] (doubt .6, flagged). Score = model doubt = 2.2 / 4 = .55, flagged 2, since row 4.
      Excluded 1: at row 5 both the shared mask and its own leave it out (one row, counted
      once); the teacher's mask (every row) and the shared mask at rows 1-3 (unwritten or the
      teacher's row) do not count. Refined 0 (the target is the given label).
    * 4: p = [.65, .25, .1], given 1; the target [.05, .9, .05] only smooths the given label,
      so the belief is the model's: flagged at every row, score = model doubt = .75. The
      teacher's mask leaves it out: not counted, excluded 0.
    * 5, 6, 7: relabelled (hard) at every row: belief[given] = 0, score exactly 1, flagged 4,
      since row 1: a three-way tie in score. Model doubt: 6 (given 0, p = [.1, .8, .1]) .9;
      5 and 7 (given 2, p = [.2, .2, .6]) .4 each. So 6 first (by model doubt, although its
      ledger row is later), then 5 and 7 (equal model doubt: by ledger row). Sample 7 is left
      out by the shared mask at row 5: excluded 1, which changes nothing else.

    The list: 6, 5, 7 (score 1), 4 (.75), 1 (.7), 3 (.55); truly mislabelled: 6, 1, 3.
    """
    h = _worked()
    r = find_label_issues(h)
    assert r.model == "student" and list(r.rows) == [1, 2, 4, 5] and r.num_samples == 8
    assert list(r.index) == [6, 5, 7, 4, 1, 3]
    np.testing.assert_allclose(r.score, [1, 1, 1, .75, .7, .55])
    np.testing.assert_allclose(r.model_doubt, [.9, .4, .4, .75, .5, .55])
    assert list(r.sample_id) == [16, 15, 17, 14, 11, 13]
    assert list(r.given) == [0, 2, 2, 1, 1, 0] and list(r.refined) == [1, 0, 0, 1, 2, 0]
    assert list(r.times_flagged) == [4, 4, 4, 4, 3, 2]
    assert list(r.times_excluded) == [0, 0, 1, 0, 1, 1]
    assert list(r.since) == [1, 1, 1, 1, 5, 4]
    assert r.since_epoch() == [("a", 0)] * 4 + [("c", 1), ("c", 0)]
    assert 2 not in r.index                         # excluded, never flagged: not listed
    assert list(r.clean) == [1, 2, 2, 1, 2, 1] and r.num_mislabelled == 3
    assert [r.precision_at(k) for k in range(1, 7)] == pytest.approx(
        [1, .5, 1 / 3, .25, .4, .5])
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
        doubts, own, flags, present, left = [], [], [], [], 0
        for t in rows:
            if any(prod[t] and not m[t][i] for m, prod in masks):
                left += 1
            if any(math.isnan(z) for z in logits[t][i]):
                continue  # no logits of the sample at this row: the row does not count
            present.append(t)
            e = [math.exp(z) for z in logits[t][i]]
            model = [v / sum(e) for v in e]
            belief = model
            if tprod[t] and target[t][i][given[i]] < max(target[t][i]):  # relabelled
                belief = list(target[t][i])
            flags.append(int(np.argmax(belief)) != given[i])
            doubts.append(1 - belief[given[i]])
            own.append(1 - model[given[i]])
        since = None
        for t, f in zip(reversed(present), reversed(flags)):
            if not f:
                break
            since = t
        last = rows[-1]
        relabelled = tprod[last] and target[last][i][given[i]] < max(target[last][i])
        refined = int(np.argmax(target[last][i])) if relabelled else given[i]
        out[i] = {"score": sum(doubts) / len(doubts) if doubts else None,
                  "model_doubt": sum(own) / len(own) if own else None,
                  "count": sum(flags), "excluded": left, "since": since,
                  "last": bool(flags) and flags[-1], "refined": refined,
                  "missing": len(rows) - len(present), "last_missing": rows[-1] not in present}
    order = sorted((i for i in out if out[i]["last"]),
                   key=lambda i: (-out[i]["score"], -out[i]["model_doubt"], i))
    return {"order": order, "samples": out, "rows": rows}


def _random(seed: int, n: int = 40, c: int = 4) -> FakeHistory:
    """History-like input: random logits (rounded), targets relabelled or softened at random,
    about a quarter of the samples relabelled hard at every row (as a label propagation does:
    they tie at score 1 where the target is written at every row of the model), sample 1 a
    copy of sample 0 (a tie in both keys), a shared mask and each model's own."""
    rng = np.random.default_rng(seed)
    rows = sum(k for *_, k in STAGES)
    given = rng.integers(0, c, n)
    clean = np.where(rng.random(n) < .4, rng.integers(0, c, n), given)
    target = np.tile(np.eye(c)[given], (rows, 1, 1))
    relabel = rng.random((rows, n)) < .3
    target[relabel] = np.eye(c)[rng.integers(0, c, (rows, n))][relabel]
    soft = rng.random((rows, n)) < .2
    target[soft] = rng.dirichlet(np.ones(c), (rows, n))[soft]
    # uniform rows (label smoothing with epsilon 1) and ties of the given label with another
    # class: neither relabels the sample (argmax had named the first of the tied classes)
    target[rng.random((rows, n)) < .1] = 1 / c
    tie = rng.random((rows, n)) < .1
    other = (given + 1) % c
    target[tie] = 0.0
    target[tie, given[None].repeat(rows, 0)[tie]] = 0.5
    target[tie, other[None].repeat(rows, 0)[tie]] = 0.5
    hard = rng.random(n) < .25
    hard[:2] = True
    target[:, hard] = np.eye(c)[(given[hard] + rng.integers(1, c, hard.sum())) % c]
    logits = rng.normal(0, 2, (rows, n, c)).round(1)   # ties in the scores happen
    logits[..., 0] = np.where(rng.random((rows, n)) < .3, logits[..., 0], -9)
    teacher = rng.normal(size=(rows, n, c))
    # no logits of a sample at a row (nothing computed the model on its batch), and of
    # sample 3 at every row
    logits[rng.random((rows, n)) < .15] = teacher[rng.random((rows, n)) < .15] = np.nan
    logits[:, 3] = teacher[:, 3] = np.nan
    given[1], target[:, 1], logits[:, 1], teacher[:, 1] = (given[0], target[:, 0],
                                                           logits[:, 0], teacher[:, 0])

    def mask(p):
        return rng.random((rows, n)) > p, [rng.choice(["", "m"]) for _ in range(rows)]

    return FakeHistory({
        "logits/student": (logits, [rng.choice(["", "s", "s"]) for _ in range(rows - 1)] + ["s"]),
        "logits/teacher": (teacher, ["t"] * rows),
        "target": (target, [rng.choice(["", "r", "r", "r", "r"]) for _ in range(rows)]),
        "select/a": mask(.2), "select/b/student": mask(.1), "select/b/teacher": mask(.5),
    }, {"noisy_label": given, "clean_label": clean, "sample_id": rng.permutation(n) + 100},
        num_classes=c)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("role", ["student", "teacher"])
def test_the_ranking_is_the_transcription(seed, role):
    h = _random(seed)
    want = transcription(h, role)
    with warnings.catch_warnings():  # sample 3 has no logits at any row: no 0/0 warning
        warnings.simplefilter("error")
        r = find_label_issues(h, role)
    assert list(r.index) == want["order"]
    s = [want["samples"][i] for i in want["order"]]
    np.testing.assert_allclose(r.score, [x["score"] for x in s], rtol=1e-12)
    np.testing.assert_allclose(r.model_doubt, [x["model_doubt"] for x in s], rtol=1e-12)
    assert list(r.times_flagged) == [x["count"] for x in s]
    assert list(r.times_excluded) == [x["excluded"] for x in s]
    assert list(r.since) == [x["since"] for x in s]
    assert list(r.refined) == [x["refined"] for x in s]
    given, clean = h._data["noisy_label"], h._data["clean_label"]
    assert list(r.sample_id) == [h._data["sample_id"][i] for i in want["order"]]
    truly = [bool(clean[i] != given[i]) for i in want["order"]]
    for k in range(1, len(truly) + 1):
        assert r.precision_at(k) == pytest.approx(sum(truly[:k]) / k)
    assert r.recall == pytest.approx(sum(truly) / int((clean != given).sum()))


def test_the_random_input_exercises_the_new_keys():
    """The transcription comparison means something: across the seeds, score ties that the
    model doubt orders otherwise than the ledger row, ties in both keys, listed samples a mask
    left out, unlisted samples that a mask left out (masks do not flag), and listed samples
    without logits at some rows, the last among them."""
    by_doubt = both = excluded_listed = excluded_only = missing = last_missing = 0
    for seed in range(6):
        want = transcription(_random(seed), "student")
        o, s = want["order"], want["samples"]
        for a, b in zip(o, o[1:]):
            if s[a]["score"] == s[b]["score"]:
                by_doubt += a > b
                both += s[a]["model_doubt"] == s[b]["model_doubt"]
        excluded_listed += sum(s[i]["excluded"] > 0 for i in o)
        excluded_only += sum(s[i]["excluded"] > 0 and not s[i]["last"] for i in s)
        missing += sum(s[i]["missing"] > 0 for i in o)
        last_missing += sum(s[i]["last_missing"] for i in o)
        assert s[3]["missing"] == len(want["rows"]) and 3 not in o  # no logits at any row
    assert min(by_doubt, both, excluded_listed, excluded_only, missing, last_missing) > 0


def test_softmax_is_the_softmax():
    z = np.array([[1000.0, 999.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float16)
    e = np.exp([0.0, -1.0, -1000.0])
    np.testing.assert_allclose(softmax(z), [e / e.sum(), [1 / 3] * 3], atol=1e-12)


def test_softmax_of_logits_past_float16s_range_counts_them_at_its_largest_value(recwarn):
    """A model that ran away wrote ±inf into the float16 history; inf - inf had made the row
    NaN (its score and doubt with it), and numpy warned on label-issues' output."""
    big = 65504.0  # float16's largest
    z = np.array([[np.inf, 0.0, 1.0], [np.inf, np.inf, -np.inf], [-np.inf, 2.0, 0.0],
                  [-np.inf, -np.inf, -np.inf]], dtype=np.float16)
    want = []
    for row in np.clip(z.astype(np.float64), -big, big):
        e = np.exp(row - row.max())
        want.append(e / e.sum())
    np.testing.assert_allclose(softmax(z), want, atol=1e-12)
    np.testing.assert_allclose(softmax(z)[[0, 1, 3]], [[1, 0, 0], [0.5, 0.5, 0], [1 / 3] * 3],
                               atol=1e-12)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    finite = np.array([[65504.0, 65472.0]], dtype=np.float16)  # the range's edge is kept
    np.testing.assert_allclose(softmax(finite), [[1 / (1 + np.exp(-32.0)),
                                                  np.exp(-32.0) / (1 + np.exp(-32.0))]],
                               rtol=1e-9)


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
    np.testing.assert_allclose(r.model_doubt, [x["model_doubt"] for x in s], rtol=1e-9)
    assert list(r.times_flagged) == [x["count"] for x in s]
    assert list(r.times_excluded) == [x["excluded"] for x in s]
    assert list(r.since) == [x["since"] for x in s]
    assert list(r.sample_id) == list(sample_id[want["order"]])


def test_the_frame(tiny_run):
    r = kdcore.label_issues(tiny_run)
    f = r.frame()
    assert list(f.columns) == ["rank", "ledger_row", "sample_id", "given_label",
                               "refined_label", "clean_label", "truly_mislabelled", "score",
                               "model_doubt", "times_flagged", "times_excluded", "since_row",
                               "since_stage", "since_epoch"]
    np.testing.assert_array_equal(f["score"], r.score)
    np.testing.assert_array_equal(f["model_doubt"], r.model_doubt)
    np.testing.assert_array_equal(f["times_excluded"], r.times_excluded)
    assert (f["truly_mislabelled"] == (f["clean_label"] != f["given_label"])).all()
    assert set(f["since_stage"]) <= {"student"}      # the student's stage only


# -- the command line -----------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("command", [("label-issues", "{run}"),
                                     ("inspect", "{run}", "--cartography", "{tmp}/c")])
def test_a_model_without_logits_is_named_with_the_models_there_are(tiny_run, tmp_path, command):
    # NotInHistory is a KeyError too: the reading commands had called it damage
    args = [a.format(run=tiny_run, tmp=tmp_path) for a in command]
    res = CliRunner().invoke(main, [*args, "--model", "studnt"])
    assert res.exit_code == 2 and res.stderr == (
        f"kdcore: error: no training logits of model 'studnt' in {tiny_run / 'history.h5'} "
        "(did you mean 'student'?); models: student, teacher (no stage of the run trains it)\n")
    assert not (tmp_path / "c").exists()


def test_the_table(tiny_run):
    r = kdcore.label_issues(tiny_run)
    with kdcore.History(tiny_run) as h:
        assert r.class_names == h.class_names == [str(i) for i in range(10)]  # no legend
    res = invoke("label-issues", tiny_run, "--top", 3)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith(f"model 'student': {len(r)} of 120 samples flagged at the last "
                               "of its 2 trained epochs (stage 'student' epoch 2)")
    assert lines[1].split() == ["rank", "sample_id", "given", "refined", "true", "score",
                                "model_doubt", "flagged", "excluded", "since"]
    for i, line in enumerate(lines[2:5]):
        cells = line.split()
        assert cells[:7] == [str(i + 1), str(r.sample_id[i]), str(r.given[i]),
                             str(r.refined[i]), str(r.clean[i]), f"{r.score[i]:.4f}",
                             f"{r.model_doubt[i]:.4f}"]
        assert cells[7:] == [f"{r.times_flagged[i]}/2", f"{r.times_excluded[i]}/2", "student",
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
                "clean_label", "truly_mislabelled", "score", "model_doubt", "times_flagged",
                "times_excluded", "since_row", "since_epoch"):
        assert pd.api.types.is_numeric_dtype(f[col]), col
    np.testing.assert_array_equal(f["score"].to_numpy(), r.score)   # full precision
    np.testing.assert_array_equal(f["model_doubt"].to_numpy(), r.model_doubt)
    np.testing.assert_array_equal(f["times_excluded"].to_numpy(), r.times_excluded)
    np.testing.assert_array_equal(f["ledger_row"].to_numpy(), r.index)
    np.testing.assert_array_equal(f["since_row"].to_numpy(), r.since)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_csv_the_system_refuses_is_one_line_and_no_table(tiny_run):
    """/proc exists and refuses new files, to root too: the check before the work passes it."""
    res = invoke("label-issues", tiny_run, "--csv", "/proc/kdcore-issues.csv")
    assert res.exit_code == 2
    assert res.output.splitlines() == [
        "kdcore: error: cannot write /proc/kdcore-issues.csv: No such file or directory"]


def test_unknown_true_labels_are_empty_cells(tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")
    h = _worked()
    del h._data["clean_label"]
    from kdcore import label_ranking

    monkeypatch.setattr(label_ranking, "find_label_issues",
                        lambda run, model: find_label_issues(h, model))
    (tmp_path / "summary.json").write_text("{}")  # a finished run: no warning line first
    res = invoke("label-issues", tmp_path, "--csv", tmp_path / "i.csv")
    assert res.exit_code == 0 and "true labels unknown" in res.output
    f = pd.read_csv(tmp_path / "i.csv")
    assert f["clean_label"].isna().all() and f["truly_mislabelled"].isna().all()
    header, *rows = (line.split(",") for line in (tmp_path / "i.csv").read_text().splitlines())
    unknown = [header.index("clean_label"), header.index("truly_mislabelled")]
    assert all(row[j] == "" for row in rows for j in unknown) and len(rows) == 6
    assert list(f["sample_id"]) == [16, 15, 17, 14, 11, 13]
    # the worked example's values: model doubt differs from the score where relabelled
    np.testing.assert_allclose(f["score"], [1, 1, 1, .75, .7, .55])
    np.testing.assert_allclose(f["model_doubt"], [.9, .4, .4, .75, .5, .55])
    assert list(f["times_excluded"]) == [0, 0, 1, 0, 1, 1]
    lines = res.output.splitlines()
    assert lines[1].split() == ["rank", "sample_id", "given", "refined", "score",
                                "model_doubt", "flagged", "excluded", "since"]
    assert [line.split()[4:8] for line in lines[2:8]] == [
        ["1.0000", "0.9000", "4/4", "0/4"], ["1.0000", "0.4000", "4/4", "0/4"],
        ["1.0000", "0.4000", "4/4", "1/4"], ["0.7500", "0.7500", "4/4", "0/4"],
        ["0.7000", "0.5000", "3/4", "1/4"], ["0.5500", "0.5500", "2/4", "1/4"]]


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


def test_an_unfinished_run_is_read_with_a_warning(tiny_run, tmp_path):
    import shutil

    finished = invoke("label-issues", tiny_run)
    assert finished.exit_code == 0 and "unfinished" not in finished.output
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    (copy / "summary.json").unlink()
    result = invoke("label-issues", copy)
    assert result.exit_code == 0
    assert result.output.splitlines()[0] == (
        f"kdcore: warning: {copy} is an unfinished run (no summary.json): the list reads the "
        "epochs recorded so far")


# -- which model, and the refusals' exact words (mutation run kdcore-label-ranking) -----------


class _RecipeOnly(FakeHistory):
    """A history with teacher logits only and the recipe text given."""

    def __init__(self, recipe: str, roles=("teacher",)):
        super().__init__({f"logits/{r}": (np.zeros((1, 2, 3)), ["x"]) for r in roles}, {})
        self.recipe = recipe


@pytest.mark.parametrize("recipe", ["", '[[stages]]\nname = "a"\n',
                                    '[[stages]]\nname = "a"\ntrain = ["student"]\n'])
def test_a_model_no_stage_trains_is_refused_in_words(recipe):
    with pytest.raises(KdcoreError, match=r"^fake/history.h5 holds no training logits of a model "
                       r"its stages train$"):
        find_label_issues(_RecipeOnly(recipe))


def test_model_refusals_in_words():
    with pytest.raises(KdcoreError, match=r"^fake/history.h5: cannot read the run's recipe \("):
        find_label_issues(_RecipeOnly("[[stages"))
    with pytest.raises(KdcoreError, match=r"^no training logits of model 'peer' in "
                       r"fake/history.h5; models: none$"):
        find_label_issues(_RecipeOnly("", roles=()), model="peer")
    with pytest.raises(KdcoreError, match=r"^model takes a model role such as 'student', not int "
                       r"5$"):
        find_label_issues("run", model=5)
    with pytest.raises(KdcoreError, match=r"^run takes a path \(a string or a pathlib.Path\), "
                       r"not int 12345$"):
        find_label_issues(12345)


def test_the_tables_column_types(tiny_run):
    table = find_label_issues(tiny_run).table()
    assert table["since_stage"].dtype == object and table["since_epoch"].dtype == np.int64
    assert table["truly_mislabelled"].dtype == np.int64
    assert table["clean_label"].dtype == np.int64  # "3", not "3.0", in --csv
    assert set(table["since_stage"]) <= {"student", None}
