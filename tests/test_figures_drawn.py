"""The report's per-class and ledger figures and what they pool, from histories written by the
test (no training) and from the report grid; the drawn axes read back from matplotlib."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore.figures import _common
from kdcore.figures.classes import draw_test_class_accuracy, per_class_test_accuracy
from kdcore.history_writer import HistoryWriter
from kdcore.ledger import Column
from kdcore.report import RunResult

pytest.importorskip("matplotlib")


def _run(root: Path, variant: str, seed: int, confusions: dict[str, np.ndarray],
         models: tuple[str, ...] = ("student",), names: list[str] | None = None) -> RunResult:
    """A history whose stages ``warm`` then ``main`` ran, holding ``confusions`` by
    ``<stage>/<role>``."""
    path = root / variant / f"seed{seed}"
    path.mkdir(parents=True)
    names = ["cat", "dog", "eel"] if names is None else names
    c = len(next(iter(confusions.values()), M1))
    w = HistoryWriter(path / "history.h5")
    w.create(recipe_toml="", versions={"kdcore": "0"}, num_classes=c, class_names=names,
             constants={}, transition_matrix=torch.eye(c))
    for stage in ("warm", "main"):
        w.append_epoch(stage=stage, epoch=0, metrics={},
                       columns={"target": Column(torch.eye(c), "ce", "target")})
    for key, matrix in confusions.items():
        w.add_data(f"test_confusion/{key}", matrix)
    return RunResult(path=path, variant=variant, summary={m: {} for m in models})


M1 = np.array([[3, 1, 0], [0, 2, 2], [1, 0, 4]])
M2 = np.array([[4, 0, 0], [1, 3, 0], [0, 0, 0]])  # no test sample of the last class


def _recall(m: np.ndarray) -> np.ndarray:
    return np.array([m[i, i] / m[i].sum() if m[i].sum() else np.nan for i in range(len(m))])


def test_each_variants_mean_recall_of_the_last_stage_that_holds_the_model(tmp_path):
    runs = [_run(tmp_path, "a", 0, {"warm/student": M2, "main/student": M1}),
            _run(tmp_path, "a", 1, {"warm/student": M1}),  # only its first stage recorded
            _run(tmp_path, "b", 0, {"main/student": M2}),
            _run(tmp_path, "b", 1, {"main/student": M1})]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 / 0 and the mean of one NaN are expected, quietly
        accuracy, classes, shown = per_class_test_accuracy(runs, "student")
    assert classes == ["cat", "dog", "eel"] and shown == {"student"}
    np.testing.assert_allclose(accuracy["a"], _recall(M1))  # both seeds' kept matrices are M1
    expected_b = np.array([(4 / 4 + 3 / 4) / 2, (3 / 4 + 2 / 4) / 2, 4 / 5])  # NaN left out
    np.testing.assert_allclose(accuracy["b"], expected_b)


def test_runs_without_a_model_or_a_matrix_are_left_out_not_the_rest(tmp_path):
    runs = [_run(tmp_path, "none", 0, {"main/student": M1}, models=()),
            _run(tmp_path, "old", 0, {}),  # written before kdcore recorded the matrices
            _run(tmp_path, "one", 0, {"main/student": M2}, names=[])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        accuracy, classes, shown = per_class_test_accuracy(runs, None)
    assert list(accuracy) == ["one"] and classes == ["0", "1", "2"]  # no names: numbers
    np.testing.assert_array_equal(accuracy["one"], _recall(M2))  # one seed: its NaN kept
    assert per_class_test_accuracy(runs[:2], None) == ({}, [], set())
    assert draw_test_class_accuracy(runs[:2], None) is None


@pytest.fixture
def drawn(monkeypatch):
    figs = []
    monkeypatch.setattr(_common, "png", lambda fig: figs.append(fig) or b"png")
    yield figs
    import matplotlib.pyplot as plt

    for f in figs:
        plt.close(f)


def test_bars_side_by_side_per_class_one_colour_per_variant(tmp_path, drawn):
    runs = [_run(tmp_path, "a", 0, {"main/student": M1}),
            _run(tmp_path, "b", 0, {"main/student": M2}),
            _run(tmp_path, "c", 0, {"main/student": M1})]
    figure = draw_test_class_accuracy(runs, "student")
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c"]
    width = 0.8 / 3
    for k, (container, matrix) in enumerate(zip(ax.containers, (M1, M2, M1), strict=True)):
        centres = [p.get_x() + p.get_width() / 2 for p in container.patches]
        np.testing.assert_allclose(centres, np.arange(3) + (k - 1) * width)
        np.testing.assert_allclose([p.get_width() for p in container.patches], width)
        np.testing.assert_allclose([p.get_height() for p in container.patches],
                                   100 * _recall(matrix))  # NaN: no bar
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "eel"]
    assert tuple(drawn[0].get_size_inches()) == pytest.approx((6.4, 3.6))  # at least 6.4 wide
    assert figure.name == "class_test_acc" and figure.png == b"png"
    assert figure.title == ax.get_title() == "Per-class test accuracy of the student"
    assert figure.caption == ("Per-class test accuracy of the student, with the weights kept by "
                              "the last stage that trained it (its best-validation or last "
                              "epoch, as the recipe keeps), mean over seeds.")


def test_many_classes_widen_the_figure_and_several_models_are_named_as_such(tmp_path, drawn):
    runs = [_run(tmp_path, v, 0, {"main/student": M1, "main/peer": M1},
                 models=("student",) if v == "a" else ("peer",)) for v in "abcd"]
    # three classes, four variants: 0.55 * 3 * (4 + 1) / 2 = 4.125 inches, below the minimum
    draw_test_class_accuracy(runs, None)
    assert drawn[0].axes[0].get_title() == ("Per-class test accuracy of each variant's "
                                            "reported model")
    assert tuple(drawn[0].get_size_inches()) == pytest.approx((6.4, 3.6))
    wide = [_run(tmp_path / "w", v, 0, {"main/student": np.eye(12, dtype=int) + 1},
                 names=[f"class {i}" for i in range(12)]) for v in "abc"]
    draw_test_class_accuracy(wide, "student")
    assert tuple(drawn[1].get_size_inches()) == pytest.approx((0.55 * 12 * (3 + 1) / 2, 3.6))


# -- the ledger pooled over seeds (kdcore.figures.ledger.pooled), on the report grid -------------


def _expected_pool(run_dir: Path, row: int) -> dict:
    from kdcore.history import History

    with History(run_dir) as h:
        clean, noisy = h.data("clean_label"), h.data("noisy_label")
        target = h.column("target", row).argmax(1)
        losses = {n: h.column(n, row) for n in h.column_names() if n.startswith("loss/")}
        c = h.num_classes
    m = np.zeros((c, c))
    for i, j in zip(clean, target):
        m[i, j] += 1
    return {"clean": clean, "noisy": noisy, "target": target, "losses": losses,
            "transition": m / np.maximum(m.sum(1, keepdims=True), 1)}


@pytest.mark.parametrize("role, row", [("teacher", 0), ("student", 3), (None, 3)])
def test_the_pool_is_each_seeds_last_trained_row_of_the_model(report_grid, role, row):
    from kdcore.figures.ledger import pooled
    from kdcore.report import find_runs

    runs = find_runs([report_grid])
    pools = pooled(runs, role)
    assert sorted(pools) == ["ls", "ls-weak"]
    for variant, pool in pools.items():
        seeds = [_expected_pool(report_grid / variant / f"seed{s}", row) for s in (0, 1)]
        for key in ("clean", "noisy", "target"):
            np.testing.assert_array_equal(pool[key], np.concatenate([e[key] for e in seeds]))
        assert pool["classes"] == [str(i) for i in range(10)]  # digits: no class names
        for got, e in zip(pool["transitions"], seeds, strict=True):
            np.testing.assert_allclose(got, e["transition"])
        names = sorted(seeds[0]["losses"])
        assert sorted(pool["columns"]) == names and names  # the kept per-sample losses
        for name in names:
            for got, e in zip(pool["columns"][name], seeds, strict=True):
                np.testing.assert_array_equal(got, e["losses"][name])


def test_a_pool_leaves_out_runs_without_the_model_or_the_labels(report_grid, tmp_path):
    import shutil

    import h5py

    from kdcore.figures.ledger import pooled
    from kdcore.report import find_runs

    for name in ("a", "b", "c"):
        shutil.copytree(report_grid / "ls" / "seed0", tmp_path / name / "seed0")
    with h5py.File(tmp_path / "a" / "seed0" / "history.h5", "a") as f:
        del f["data/clean_label"]  # an older history without the clean labels
    runs = find_runs([tmp_path])
    assert [r.variant for r in runs] == ["a", "b", "c"]
    assert sorted(pooled(runs, "student")) == ["b", "c"]
    assert sorted(pooled(runs, "nobody")) == []  # a model no stage trained
    nameless = [type(r)(path=r.path, variant=r.variant, summary={}) for r in runs]
    assert pooled(nameless[:1] + runs[1:], None).keys() == {"b", "c"}


@pytest.mark.parametrize("names, classes", [(["x", "y"], ["x", "y"]), ([], ["0", "1"])])
def test_a_pool_keeps_per_sample_losses_and_weights_with_finite_values_only(tmp_path, names,
                                                                            classes):
    from kdcore.figures.ledger import pooled

    path = tmp_path / "v" / "seed0"
    path.mkdir(parents=True)
    w = HistoryWriter(path / "history.h5")
    w.create(recipe_toml='[[stages]]\nname = "main"\ntrain = ["student"]\n',
             versions={"kdcore": "0"}, num_classes=2, class_names=names,
             constants={"clean_label": torch.tensor([0, 1, 1], dtype=torch.int32),
                        "noisy_label": torch.tensor([0, 0, 1], dtype=torch.int32)},
             transition_matrix=torch.eye(2))
    nan = torch.full((3,), float("nan"))
    columns = {"target": Column(torch.tensor([[1.0, 0], [1, 0], [0, 1]]), "ce", "target"),
               "weight/awe": Column(torch.tensor([0.5, 1.0, 0.25]), "awe", "weight"),
               "loss/ce": Column(torch.tensor([0.1, 2.0, 0.3]), "ce", "value"),
               "loss/unwritten": Column(nan, "x", "value"),
               "loss/per_class": Column(torch.ones(3, 2), "x", "value"),
               "select/s": Column(torch.tensor([True, False, True]), "s", "mask")}
    w.append_epoch(stage="main", epoch=0, metrics={}, columns=columns)
    pool = pooled([RunResult(path=path, variant="v", summary={"student": {}})], None)["v"]
    assert sorted(pool["columns"]) == ["loss/ce", "weight/awe"]
    np.testing.assert_array_equal(pool["columns"]["weight/awe"][0], [0.5, 1.0, 0.25])
    assert pool["classes"] == classes
    np.testing.assert_array_equal(pool["target"], [0, 0, 1])
    np.testing.assert_array_equal(pool["transitions"][0], [[1, 0], [0.5, 0.5]])


def test_a_uniform_target_row_is_in_no_column_of_the_transitions(tmp_path):
    """argmax counted it as trained on class 0."""
    from kdcore.figures.ledger import pooled

    path = tmp_path / "v" / "seed0"
    path.mkdir(parents=True)
    w = HistoryWriter(path / "history.h5")
    w.create(recipe_toml='[[stages]]\nname = "main"\ntrain = ["student"]\n',
             versions={"kdcore": "0"}, num_classes=2, class_names=["a", "b"],
             constants={"clean_label": torch.tensor([0, 1, 1], dtype=torch.int32),
                        "noisy_label": torch.tensor([0, 0, 1], dtype=torch.int32)},
             transition_matrix=torch.eye(2))
    target = torch.tensor([[1.0, 0], [0.5, 0.5], [0, 1]])
    w.append_epoch(stage="main", epoch=0, metrics={},
                   columns={"target": Column(target, "ls", "target")})
    pool = pooled([RunResult(path=path, variant="v", summary={"student": {}})], None)["v"]
    np.testing.assert_array_equal(pool["transitions"][0], [[1, 0], [0, 1]])


def test_the_transition_matrix_is_the_mean_over_seeds_with_its_cells_written(drawn):
    from kdcore.figures.ledger import draw_transition

    seeds = [np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([[1.0, 0.0], [0.7, 0.3]])]
    figure = draw_transition("v", {"transitions": seeds, "classes": ["cat", "dog"]})
    ax = drawn[0].axes[0]
    image = ax.get_images()[0]
    np.testing.assert_allclose(image.get_array(), [[1.0, 0.0], [0.6, 0.4]])
    assert image.get_clim() == (0, 1)
    cells = {(t.get_position(), t.get_text(), t.get_color()) for t in ax.texts}
    assert cells == {((0, 0), "1", "black"), ((1, 0), ".00", "white"),
                     ((0, 1), ".60", "black"), ((1, 1), ".40", "white")}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"]
    assert [t.get_rotation() for t in ax.get_xticklabels()] == [90, 90]  # names over 2 letters
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("label trained on (last epoch)", "true class")
    assert figure.name == "transition_v" and figure.title == ax.get_title() == \
        "Label transitions, v"
    assert figure.caption == ("Label transitions, v: the fraction of each true class trained on "
                              "each label at the last epoch, mean over seeds.")


@pytest.mark.parametrize("c, cells, ticks", [(12, True, True), (13, False, True),
                                             (20, False, True), (21, False, False)])
def test_a_large_transition_matrix_drops_its_cell_values_then_its_names(drawn, c, cells, ticks):
    from kdcore.figures.ledger import draw_transition

    names = [str(i) for i in range(c)]
    draw_transition("v", {"transitions": [np.eye(c)], "classes": names})
    ax = drawn[0].axes[0]
    assert len(ax.texts) == (c * c if cells else 0)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert (labels == names) is ticks
    if ticks:
        assert {t.get_rotation() for t in ax.get_xticklabels()} == {0}  # short names stand


def _pool(columns: dict) -> dict:
    return {"clean": np.array([0, 1, 1, 2, 2]), "noisy": np.array([0, 1, 2, 2, 0]),
            "target": np.array([0, 2, 1, 1, 0]), "classes": ["a", "b", "c"], "columns": columns}


def test_loss_histograms_split_by_the_given_label_on_shared_bins(drawn):
    from kdcore.figures.ledger import draw_distributions

    losses = np.array([0.1, 0.2, 3.0, 0.4, np.nan])  # the NaN is left out
    figure = draw_distributions("v", _pool({"loss/ce": [losses[:3], losses[3:]],
                                            "weight/w": [np.ones(5)]}), "loss/")
    (ax,) = drawn[0].axes
    right = [p for p in ax.patches if p.get_label() == "given label right (3)"]
    wrong = [p for p in ax.patches if p.get_label() == "given label wrong (1)"]
    assert right and wrong  # samples 0, 1, 3 right; 2 wrong; 4's loss NaN
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["given label right (3)",
                                                                   "given label wrong (1)"]
    edges = np.histogram_bin_edges([0.1, 0.2, 3.0, 0.4], bins=40)
    heights, _ = np.histogram([0.1, 0.2, 0.4], bins=edges, density=True)
    bars = [p for c in ax.containers for p in c.patches]
    np.testing.assert_allclose([p.get_height() for p in bars[:40]], heights)
    np.testing.assert_allclose([p.get_x() for p in bars[:40]], edges[:-1])
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("loss/ce", "per-sample loss",
                                                                  "density")
    assert figure.name == "loss_hist_v"
    assert figure.title == drawn[0]._suptitle.get_text() == "Per-sample losses at the last " \
                                                             "epoch, v"
    assert figure.caption == ("Per-sample losses at the last epoch, v, pooled over seeds; "
                              "samples split by whether their given label is the true one.")


def test_weight_histograms_split_by_the_training_label_four_at_most(drawn):
    from kdcore.figures.ledger import draw_distributions

    columns = {f"weight/w{i}": [np.linspace(0, 1, 5)] for i in range(5)}
    columns["weight/short"] = [np.ones(4)]  # not one value per pooled sample: left out
    columns["loss/ce"] = [np.ones(5)]
    figure = draw_distributions("v", _pool(columns), "weight/")
    axes = drawn[0].axes
    assert [ax.get_title() for ax in axes] == ["weight/w0", "weight/w1", "weight/w2",
                                               "weight/w3"]
    assert tuple(drawn[0].get_size_inches()) == pytest.approx((3.4 * 4, 3.0))
    # training labels: right for samples 0, 2; wrong for 1, 3, 4 (the given: 3 right, 2 wrong)
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == [
        "training label right (2)", "training label wrong (3)"]
    assert axes[0].get_xlabel() == "weight" and figure.name == "weight_hist_v"
    assert "whether their training label is the true one" in figure.caption
    assert draw_distributions("v", _pool({"weight/short": [np.ones(4)]}), "weight/") is None


# -- curves -------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric, words", [
    ("test/s/bacc", ("Test balanced accuracy of the s", "test balanced accuracy (%)", True)),
    ("test/s/acc_clean", ("Test accuracy on clean labels of the s",
                          "test accuracy on clean labels (%)", True)),
    ("val/s/bacc", ("Validation balanced accuracy of the s", "validation balanced accuracy (%)",
                    True)),
    ("val/s/acc", ("Validation accuracy of the s on noisy labels (model selection)",
                   "noisy-validation accuracy (%)", True)),
    ("train/s/loss", ("Training loss of the s (total)", "mean loss per sample", False)),
    ("test/s/other", ("Test other of the s", "test other (%)", True)),
    ("label/acc", ("Accuracy of the labels trained on", "correct training labels (%)", True)),
    ("label/fixed", ("Mislabelled samples whose training label is right (fixed)",
                     "fixed, % of mislabelled samples", True)),
    ("label/broken", ("Correctly labelled samples whose training label is wrong (broken)",
                      "broken, % of correctly labelled samples", True)),
    ("select/a/b/recall", ("Recall of the selection 'a/b'", "selected among clean (%)", True)),
    ("select/a/precision", ("Precision of the selection 'a'", "clean among selected (%)", True)),
    ("select/a/fraction", ("Fraction selected of the selection 'a'", "selected samples (%)",
                           True)),
    ("select/a/other", ("select/a/other", "select/a/other", False)),
    ("test/s", ("test/s", "test/s", False)),  # not split/role/what
    ("test/s/acc/x", ("test/s/acc/x", "test/s/acc/x", False)),
])
def test_every_metric_in_words(metric, words):
    from kdcore.figures import describe

    assert describe(metric) == words


def test_curves_come_in_the_reports_order():
    from kdcore.figures.curves import curve_order

    metrics = ["select/a/recall", "zzz", "label/broken", "train/s/loss", "label/acc",
               "val/s/acc", "test/t/acc", "label/fixed", "test/s/acc"]
    assert sorted(metrics, key=curve_order) == [
        "test/s/acc", "test/t/acc", "val/s/acc", "train/s/loss", "label/acc", "label/fixed",
        "label/broken", "select/a/recall", "zzz"]


def test_a_curve_of_unequal_seeds_with_a_gap_its_stages_and_its_words(drawn):
    from kdcore.figures import Curves, draw_curve

    curves = Curves(model="")
    curves.runs["v"] += [np.array([1.0, 2.0, np.nan, 4.0, 9.0]),
                         np.array([3.0, 4.0, np.nan, 6.0])]
    curves.stages["v"] = ["a", "a", "b", "b", "c"]
    figure = draw_curve("train/s/loss", curves)  # not a fraction: not scaled
    (ax,) = drawn[0].axes
    line = ax.lines[0]
    np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4])  # cut to the shortest seed
    np.testing.assert_array_equal(line.get_ydata(), [2.0, 3.0, np.nan, 5.0])
    # the band, in two pieces around the gap
    band = np.concatenate([p.vertices[:, 1] for p in ax.collections[0].get_paths()])
    std = np.std([1.0, 3.0], ddof=1)
    assert band.min() == pytest.approx(2.0 - std) and band.max() == pytest.approx(5.0 + std)
    dividers = [ln.get_xdata()[0] for ln in ax.lines[1:]]
    assert dividers == [2.5]  # the first stage's start is not a divider; c is past the cut
    assert [t.get_text() for t in ax.texts] == ["a", "b"]
    assert ax.get_xlim() == (0.5, 4.5)
    assert ax.get_xlabel() == "training epoch of the reported model"
    assert ax.get_legend().get_title().get_text() == "mean ± std over seeds"
    assert figure.name == "train_s_loss" and figure.title == "Training loss of the s (total)"
    assert figure.caption == ("Training loss of the s (total): mean over seeds (line) ± one "
                              "standard deviation (band); dashed lines mark stage changes.")


def test_write_figures_writes_each_as_its_name_png(tmp_path):
    from kdcore.figures import Figure, write_figures

    paths = write_figures([Figure("a_b", "t", "c", b"\x89PNG one"), Figure("c", "t", "c", b"2")],
                          tmp_path / "plots")
    assert paths == [tmp_path / "plots" / "a_b.png", tmp_path / "plots" / "c.png"]
    assert [p.read_bytes() for p in paths] == [b"\x89PNG one", b"2"]


def test_the_asked_model_is_drawn_and_named(tmp_path, drawn):
    runs = [_run(tmp_path, "a", 0, {"main/student": M1, "main/peer": M2})]
    draw_test_class_accuracy(runs, "peer")
    ax = drawn[0].axes[0]
    assert ax.get_title() == "Per-class test accuracy of the peer"
    assert ax.get_ylabel() == "test accuracy (%)"
    np.testing.assert_allclose([p.get_height() for p in ax.patches], 100 * _recall(M2))


def test_a_figure_becomes_a_png_of_110_dpi_and_is_closed():
    import struct

    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2.0, 1.0))
    other = plt.figure()  # the current figure now: not the one to close
    data = _common.png(fig)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (220, 110)  # IHDR: width, height in pixels
    assert not plt.fignum_exists(fig.number) and plt.fignum_exists(other.number)
    plt.close(other)


def test_label_accuracy_bars_per_class_given_labels_first_and_hatched(drawn):
    from kdcore.figures.ledger import draw_class_accuracy

    clean = np.array([0, 0, 1, 1, 2, 2])
    noisy = np.array([0, 1, 1, 1, 0, 2])
    pools = {"x": {"clean": clean, "noisy": noisy, "target": clean, "classes": ["a", "b", "c"]},
             "y": {"clean": clean, "noisy": noisy, "target": noisy, "classes": ["a", "b", "c"]},
             "z": {"clean": clean[:4], "noisy": clean[:4], "target": np.array([1, 0, 1, 1]),
                   "classes": ["a", "b", "c"]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a class without samples is NaN, not a mean of nothing
        figure = draw_class_accuracy(pools)
    ax = drawn[0].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["given labels (x, y)", "given labels (z)", "x", "y", "z"]
    width = 0.8 / 5
    expected = {"given labels (x, y)": [50, 100, 50], "given labels (z)": [100, 100, np.nan],
                "x": [100, 100, 100], "y": [50, 100, 50], "z": [50, 100, np.nan]}
    for k, (label, container) in enumerate(zip(labels, ax.containers, strict=True)):
        patches = container.patches
        np.testing.assert_allclose([p.get_x() + p.get_width() / 2 for p in patches],
                                   np.arange(3) + (k - 2) * width)
        np.testing.assert_allclose([p.get_width() for p in patches], width)
        np.testing.assert_allclose([p.get_height() for p in patches], expected[label])
        assert {p.get_hatch() for p in patches} == ({"//"} if k < 2 else {None})
    title = "Per-class accuracy of the labels trained on (last epoch)"
    assert (figure.name, figure.title, ax.get_title()) == ("class_label_acc", title, title)
    assert ax.get_ylabel() == "correct labels (%)"
    assert figure.caption == (f"{title}, pooled over seeds; hatched: the given (noisy) labels, "
                              "one bar per set of variants that share them.")
    assert draw_class_accuracy({}) is None


def test_which_metrics_are_the_reported_models_curves():
    from kdcore.figures.curves import _is_curve

    curves = ["val/s/acc", "train/s/loss", "label/acc", "select/a/precision", "select/a/recall"]
    others = ["val/t/acc", "test/s/acc", "select/a/fraction", "val/s/recall", "label/fixed"]
    assert [m for m in curves + others if _is_curve(m, "s")] == curves


def test_labels_fixed_or_broken_when_no_sample_is_of_one_kind():
    from kdcore.figures.curves import label_changes

    class History:
        def __init__(self, noisy):
            self.noisy = np.array(noisy)

        def data(self, name):
            return np.array([0, 1, 1]) if name == "clean_label" else self.noisy

        def column(self, name, row):
            return np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])  # labels 0, 1, 0

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mean of nothing
        fixed, broken = label_changes(History([0, 1, 1]), np.array([True]))  # none mislabelled
        np.testing.assert_array_equal(fixed, [np.nan])
        np.testing.assert_array_equal(broken, [1 / 3])
        fixed, broken = label_changes(History([1, 0, 0]), np.array([False, True]))  # all
        np.testing.assert_array_equal(fixed, [2 / 3])
        np.testing.assert_array_equal(broken, [np.nan])


def test_the_asked_models_curves_and_figures(report_grid, drawn):
    from kdcore.figures import curve_series, draw_figures
    from kdcore.report import find_runs

    runs = find_runs([report_grid])
    series = curve_series(runs, "teacher")
    assert {"test/teacher/acc", "val/teacher/acc", "train/teacher/loss"} <= set(series)
    assert "val/student/acc" not in series and series["label/fixed"].model == "teacher"
    assert all(len(c) == 1 for c in series["val/teacher/acc"].runs["ls"])  # one teacher epoch
    nameless = [type(r)(path=r.path, variant=r.variant, summary={}) for r in runs]
    assert set(curve_series(nameless[:1] + runs[1:])["val/student/acc"].runs) == {"ls",
                                                                                   "ls-weak"}
    figures = {f.name: f for f in draw_figures(runs, "teacher")}
    assert "val_teacher_acc" in figures and "val_student_acc" not in figures
    assert figures["class_test_acc"].title == "Per-class test accuracy of the teacher"
    transition = np.mean(pooled_transitions(report_grid, "ls", row=0), axis=0)
    ax = drawn[list(figures).index("transition_ls")].axes[0]
    np.testing.assert_allclose(ax.get_images()[0].get_array(), transition)


def pooled_transitions(root: Path, variant: str, row: int) -> list[np.ndarray]:
    return [_expected_pool(root / variant / f"seed{s}", row)["transition"] for s in (0, 1)]


def test_variants_differ_in_line_style_and_marker_their_bands_in_their_colour(drawn):
    # told apart in black and white too; the band is the colour of its line
    from matplotlib.colors import to_rgb

    from kdcore.figures import Curves, draw_curve

    curves = Curves(model="student")
    for k, variant in enumerate(("a", "b", "c")):
        # one seed of the first variant: no band, so the bands' own colour cycle lags
        curves.runs[variant] += [np.arange(20.0) + k, np.arange(20.0) + k + 1][:1 + (k > 0)]
        curves.stages[variant] = ["main"] * 20
    draw_curve("train/s/loss", curves)
    (ax,) = drawn[0].axes
    lines = [ln for ln in ax.lines if ln.get_label() in ("a (n=1)", "b (n=2)", "c (n=2)")]
    assert [ln.get_linestyle() for ln in lines] == ["-", "--", "-."]
    assert [ln.get_marker() for ln in lines] == ["o", "s", "^"]
    assert [ln.get_markevery() for ln in lines] == [2, 2, 2]  # about eight markers a line
    bands = ax.collections
    assert len(bands) == 2
    for line, band in zip(lines[1:], bands):
        assert to_rgb(band.get_facecolor()[0]) == pytest.approx(to_rgb(line.get_color()))
    # the lines over every band, each later variant over the earlier ones
    assert max(b.get_zorder() for b in bands) < min(ln.get_zorder() for ln in lines)
    assert [ln.get_zorder() for ln in lines] == sorted(ln.get_zorder() for ln in lines)
    assert ax.get_xlabel() == "training epoch of the student"
    assert ax.get_xlim() == (0.5, 20.5)


def test_one_seed_of_one_epoch_no_band_and_whole_epochs_on_the_axis(drawn):
    from kdcore.figures import Curves, draw_curve

    curves = Curves()
    curves.runs["v"] += [np.array([0.25])]
    draw_curve("test/s/acc", curves)
    (ax,) = drawn[0].axes
    assert ax.get_xlim() == (0.5, 1.5)
    assert not ax.collections  # one seed: no standard deviation to draw
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [25.0])  # a fraction, in %
    curves.runs["v"] = [np.array([0.1, 0.2, 0.3])]
    draw_curve("test/s/acc", curves)
    assert drawn[1].axes[0].lines[0].get_markevery() == 1  # under eight epochs: every one
    ticks = [t for t in drawn[1].axes[0].get_xticks() if 0.5 <= t <= 3.5]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_weight_histograms_are_titled_weights_right_in_blue_wrong_in_red(drawn):
    from matplotlib.colors import to_rgb

    from kdcore.figures.ledger import draw_distributions

    figure = draw_distributions("v", _pool({"weight/w": [np.linspace(0, 1, 5)]}), "weight/")
    assert figure.title == "Per-sample weights at the last epoch, v"
    assert drawn[0]._suptitle.get_text() == figure.title
    (ax,) = drawn[0].axes
    colours = {c.patches[0].get_label(): {to_rgb(p.get_facecolor()) for p in c.patches}
               for c in ax.containers}
    assert colours == {"training label right (2)": {to_rgb("tab:blue")},
                       "training label wrong (3)": {to_rgb("tab:red")}}


@pytest.mark.parametrize("classes, rotation, align", [
    (["cat", "dog", "eel"], 0, "center"),  # three letters at most: upright, centred
    (["cat", "dogs", "eel"], 45, "right"),  # a longer name: slanted, ending under its bar
])
def test_class_names_under_their_bars_slanted_when_long(classes, rotation, align):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.bar(range(3), [1, 2, 3], label="v")
    _common.finish_class_bars(fig, ax, classes, "accuracy (%)", "Title")
    labels = ax.get_xticklabels()
    assert [t.get_text() for t in labels] == classes
    assert list(ax.get_xticks()) == [0, 1, 2]
    assert {(t.get_rotation(), t.get_horizontalalignment()) for t in labels} == {
        (rotation, align)}
    assert (ax.get_ylabel(), ax.get_title()) == ("accuracy (%)", "Title")
    assert not ax.xaxis.get_gridlines()[0].get_visible()  # the grid across, for the heights
    assert ax.yaxis.get_gridlines()[0].get_visible()
    plt.close(fig)


def test_figures_without_matplotlib_say_how_to_install_it(monkeypatch):
    import sys

    from kdcore.errors import KdcoreError

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    with pytest.raises(KdcoreError) as err:
        _common.pyplot()
    assert str(err.value) == "figures need matplotlib: pip install 'kdcore[report]'"
