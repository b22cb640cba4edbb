"""kdcore.figures: what each figure shows, checked on the matplotlib objects before PNG."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from kdcore import figures as fg
from kdcore.cli import main
from kdcore.history import History
from kdcore.report import find_runs

pytest.importorskip("matplotlib")

@pytest.fixture
def captured(monkeypatch):
    """The matplotlib figures drawn, kept open instead of turned into PNG bytes."""
    figs = []

    def keep(fig):
        figs.append(fig)
        return b"\x89PNG fake"

    monkeypatch.setattr(fg._common, "png", keep)
    yield figs
    import matplotlib.pyplot as plt

    for f in figs:
        plt.close(f)


def test_metric_names_become_words():
    assert fg.describe("test/student/acc") == ("Test accuracy of the student",
                                               "test accuracy (%)", True)
    title, axis, pct = fg.describe("val/student/acc")
    assert "noisy labels" in title and "model selection" in title and pct
    assert fg.describe("train/peer_a/loss")[:2] == ("Training loss of the peer_a (total)",
                                                     "mean loss per sample")
    assert fg.describe("select/small_loss/precision")[0] == \
        "Precision of the selection 'small_loss'"
    assert fg.describe("label/fixed")[2] and fg.describe("label/broken")[2]
    for metric in ("test/student/acc", "val/student/acc", "label/acc", "label/fixed",
                   "select/a/recall", "train/s/ce"):
        title, axis, _ = fg.describe(metric)
        assert metric not in title and metric not in axis  # never the raw metric path
    assert fg.describe("train/s/ce")[0] == "Training loss of the s ('ce' term)"
    assert fg.describe("custom/thing") == ("custom/thing", "custom/thing", False)


class FakeHistory:
    def __init__(self, clean, noisy, targets):
        self._data = {"clean_label": clean, "noisy_label": noisy}
        self._targets = targets

    def data(self, name):
        return self._data[name]

    def column(self, name, epoch):
        assert name == "target"
        return self._targets[epoch]


def test_labels_fixed_and_broken_match_a_transcription():
    rng = np.random.default_rng(0)
    n, c, epochs = 200, 5, 4
    clean = rng.integers(0, c, n)
    noisy = np.where(rng.random(n) < 0.3, rng.integers(0, c, n), clean)
    targets = rng.random((epochs, n, c))
    targets[:, ::7] = 1 / c  # uniform rows name no label: not right, whatever argmax says
    rows = np.array([False, True, True, True])
    fixed, broken = fg.label_changes(FakeHistory(clean, noisy, targets), rows)
    exp_fixed, exp_broken = [], []
    for e in (1, 2, 3):
        label = [int(np.argmax(t)) if list(t).count(max(t)) == 1 else None for t in targets[e]]
        mislabelled = [i for i in range(n) if noisy[i] != clean[i]]
        right = [i for i in range(n) if noisy[i] == clean[i]]
        exp_fixed.append(sum(label[i] == clean[i] for i in mislabelled) / len(mislabelled))
        exp_broken.append(sum(label[i] != clean[i] for i in right) / len(right))
    np.testing.assert_allclose(fixed, exp_fixed)
    np.testing.assert_allclose(broken, exp_broken)


def test_stage_boundaries():
    stages = ["warm", "warm", "refine", "refine", "mutual"]
    assert fg.curves._boundaries(stages) == [(0.5, "warm"), (2.5, "refine"), (4.5, "mutual")]
    assert fg.curves._boundaries([]) == []


def test_curve_band_legend_and_stage_lines(captured):
    a = [np.array([0.5, 0.6, 0.7]), np.array([0.7, 0.8, 0.9])]
    curves = fg.Curves(model="student")
    curves.runs["amlkd"].extend(a)
    curves.runs["ce"].append(np.array([0.4, 0.5, 0.55, 0.6]))  # one seed: no band, cut to 4
    curves.stages["amlkd"] = ["warm", "refine", "refine"]
    fig = fg.draw_curve("test/student/acc", curves)
    ax = captured[0].axes[0]
    assert fig.title == ax.get_title() == "Test accuracy of the student"
    assert ax.get_xlabel() == "training epoch of the student"
    assert ax.get_ylabel() == "test accuracy (%)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["amlkd (n=2)", "ce (n=1)"]
    mean_line = ax.lines[0]
    np.testing.assert_allclose(mean_line.get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(mean_line.get_ydata(), [60, 70, 80])
    assert mean_line.get_linestyle() != ax.lines[1].get_linestyle()  # never one hidden
    bands = [c for c in ax.collections if len(c.get_paths())]
    assert len(bands) == 1  # the one-seed variant has none
    ys = bands[0].get_paths()[0].vertices[:, 1]
    sample_std = (((50 - 60) ** 2 + (70 - 60) ** 2) / (2 - 1)) ** 0.5  # as the tables' stdev
    assert ys.min() == pytest.approx(60 - sample_std)
    assert ys.max() == pytest.approx(80 + sample_std)
    stage_lines = [ln for ln in ax.lines[2:] if ln.get_xdata()[0] == ln.get_xdata()[1]]
    assert [ln.get_xdata()[0] for ln in stage_lines] == [1.5]
    assert {t.get_text() for t in ax.texts} == {"warm", "refine"}


def test_series_of_a_grid_follow_each_models_training(report_grid):
    grid = report_grid
    series = fg.curve_series(find_runs([grid]))
    expected = {"test/student/acc", "test/teacher/acc", "val/student/acc", "train/student/loss",
                "label/acc", "label/fixed", "label/broken", "select/all_samples/precision",
                "select/all_samples/recall"}
    assert expected <= set(series)
    for metric in expected - {"test/teacher/acc"}:
        curves = series[metric]
        assert set(curves.runs) == {"ls", "ls-weak"} and curves.model == "student"
        assert all(len(c) == 3 for seeds in curves.runs.values() for c in seeds), metric
        assert curves.stages["ls"] == ["warm", "smooth", "smooth"]
    assert all(len(c) == 1 for c in series["test/teacher/acc"].runs["ls"])
    # the values are the history's own, over the student's epochs only
    with History(grid / "ls" / "seed1") as h:
        np.testing.assert_array_equal(series["val/student/acc"].runs["ls"][1],
                                      h.metric("val/student/acc")[1:])
        clean, noisy = h.data("clean_label"), h.data("noisy_label")
        last = h.column("target", len(h) - 1).argmax(1)
    # label smoothing keeps the argmax: nothing is fixed, nothing broken
    assert series["label/fixed"].runs["ls"][1][-1] == 0.0
    assert series["label/broken"].runs["ls"][1][-1] == 0.0
    assert np.array_equal(last, noisy) and (clean != noisy).any()


def test_every_figure_of_a_grid(report_grid, captured):
    grid = report_grid
    figs = fg.draw_figures(find_runs([grid]))
    names = [f.name for f in figs]
    assert names[0] == "test_student_acc"  # what the model reaches comes first
    assert {"val_student_acc", "train_student_loss", "label_acc", "label_fixed",
            "label_broken", "loss_hist_ls", "loss_hist_ls-weak", "transition_ls",
            "transition_ls-weak", "class_label_acc", "class_test_acc"} <= set(names)
    assert not any(n.startswith("weight_hist") for n in names)  # no weighter in these runs
    assert len(set(names)) == len(names)
    for f in figs:
        assert f.title and f.caption and f.png
    by_name = dict(zip(names, captured))
    hist = by_name["loss_hist_ls"].axes[0]
    assert hist.get_title() == "loss/ce"
    legend = [t.get_text() for t in hist.get_legend().get_texts()]
    with History(grid / "ls" / "seed0") as h:
        wrong = int((h.data("clean_label") != h.data("noisy_label")).sum())
    with History(grid / "ls" / "seed1") as h:
        wrong += int((h.data("clean_label") != h.data("noisy_label")).sum())
    assert legend[1] == f"given label wrong ({wrong})"
    transition = by_name["transition_ls"].axes[0]
    assert len(transition.texts) == 10 * 10  # every cell's value is written
    bars = by_name["class_label_acc"].axes[0]
    assert [t.get_text() for t in bars.get_legend().get_texts()] == ["given labels", "ls",
                                                                     "ls-weak"]


def test_per_class_test_accuracy_is_each_variants_mean_recall_of_its_last_stage(report_grid,
                                                                               captured):
    from kdcore.figures.classes import per_class_test_accuracy

    runs = find_runs([report_grid])
    for role, stage in (("student", "smooth"), ("teacher", "teacher")):
        accuracy, classes, shown = per_class_test_accuracy(runs, role)
        assert sorted(accuracy) == ["ls", "ls-weak"] and len(classes) == 10
        assert shown == {role}
        for variant in accuracy:
            recalls = []
            for seed in (0, 1):
                with History(report_grid / variant / f"seed{seed}") as h:
                    m = h.data(f"test_confusion/{stage}/{role}")
                recalls.append([m[i, i] / m[i].sum() for i in range(10)])
            np.testing.assert_allclose(accuracy[variant], np.mean(recalls, axis=0))
    figs = fg.draw_figures(runs)  # no --model: each run's reported model, the student here
    by_name = dict(zip([f.name for f in figs], captured))
    bars = by_name["class_test_acc"].axes[0]
    assert bars.get_title() == "Per-class test accuracy of the student"
    heights = [p.get_height() for p in bars.patches]
    np.testing.assert_allclose(heights[:10], 100 * per_class_test_accuracy(runs, "student")[0][
        "ls"])


def test_weight_histogram_splits_by_training_label():
    pool = {"clean": np.array([0, 1, 1, 2]), "noisy": np.array([0, 1, 2, 2]),
            "target": np.array([0, 2, 1, 2]), "classes": ["a", "b", "c"],
            "columns": {"weight/awe": [np.array([0.9, 0.1, 0.8, 0.7])],
                        "loss/ce": [np.array([0.1, 2.0, 0.3, 0.2])]}}
    fig = fg.draw_distributions("v", pool, "weight/")
    assert fig is not None and fig.name == "weight_hist_v"
    assert fig.png.startswith(b"\x89PNG")
    assert fg.draw_distributions("v", {**pool, "columns": {}}, "weight/") is None


def test_report_writes_every_figure_as_png(report_grid, tmp_path):
    grid = report_grid
    res = CliRunner().invoke(main, ["report", str(grid), "--plots", str(tmp_path / "p")],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    pngs = sorted((tmp_path / "p").glob("*.png"))
    assert len(pngs) >= 12
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = {p.stem for p in pngs}
    assert {"test_student_acc", "label_fixed", "transition_ls", "class_label_acc"} <= names


def test_given_label_bars_do_not_depend_on_which_variant_comes_first(captured):
    """The 'given labels' bars were the first variant's: with a clean run first, 100%."""
    clean = np.array([0, 0, 1, 1, 2, 2])
    noisy = np.array([0, 1, 1, 1, 0, 2])  # class 0: 1 of 2 right, class 1: 2 of 2, class 2: 1/2
    pools = {"ce": {"clean": clean, "noisy": noisy, "target": noisy, "classes": ["a", "b", "c"]},
             "clean": {"clean": clean, "noisy": clean, "target": clean,
                       "classes": ["a", "b", "c"]}}

    def heights(chosen):
        fg.draw_class_accuracy(chosen)
        ax = captured[-1].axes[0]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        per_bar = [[round(p.get_height()) for p in c.patches] for c in ax.containers]
        return dict(zip(labels, per_bar))

    one = heights({k: pools[k] for k in ["ce", "clean"]})
    other = heights({k: pools[k] for k in ["clean", "ce"]})
    assert one == other == {"given labels (ce)": [50, 100, 50], "given labels (clean)":
                            [100, 100, 100], "ce": [50, 100, 50], "clean": [100, 100, 100]}
    shared = {"a": pools["ce"], "b": {**pools["ce"], "target": clean}}
    assert list(heights(shared)) == ["given labels", "a", "b"]
