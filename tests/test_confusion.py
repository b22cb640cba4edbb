"""Each stage records the test confusion matrix of every model it trains and evaluates, with the
weights it keeps (``/data/test_confusion/<stage>/<role>``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcore import History, PluginHost, load_recipe, run_recipe
from kdcore.evaluation import confusion_on_test
from kdcore.rundata import build_run_data


def _data_and_linear(tiny_recipe):
    """The tiny recipe's data (digits, 64 inputs, 10 classes) and a seeded linear layer."""
    recipe = load_recipe(tiny_recipe)
    data = build_run_data(recipe.data, PluginHost(), recipe.run.seed, torch.device("cpu"))
    torch.manual_seed(0)
    return data, torch.nn.Linear(64, 10)


def _numpy_predictions(data, split, linear):
    """``linear``'s argmax over ``split``, in float64 NumPy, and the inputs."""
    x = data.inputs(split, slice(None)).numpy().astype(np.float64)
    w, b = linear.weight.detach().numpy(), linear.bias.detach().numpy()
    return (x @ w.T + b).argmax(1), x


def test_the_matrix_counts_true_class_by_predicted_class(tiny_recipe):
    data, linear = _data_and_linear(tiny_recipe)

    class Model(torch.nn.Module):
        def forward(self, x):
            return linear(x), x

    pred, _ = _numpy_predictions(data, data.test, linear)
    expected = np.zeros((10, 10), dtype=np.int64)
    for t, p in zip(data.test.y.tolist(), pred.tolist()):
        expected[t, p] += 1
    got = confusion_on_test(Model(), data, batch_size=7)
    assert got.dtype == torch.int64 and np.array_equal(got.numpy(), expected)
    assert expected.sum() == len(data.test.y) and np.trace(expected) > 0


def test_a_sample_whose_logits_hold_nan_has_no_prediction_and_is_said_once(tiny_recipe,
                                                                              warnings):
    """argmax took the NaN's index: a model whose BatchNorm statistics had turned NaN (its
    training loss still finite) scored the share of class 0 as its accuracy, silently."""
    from kdcore.evaluation import evaluate

    data, linear = _data_and_linear(tiny_recipe)

    class Model(torch.nn.Module):
        def forward(self, x):
            z = linear(x)
            z[x[:, 27] > x[:, 36], 3] = float("nan")  # some rows, by input
            return z, x

    def numpy_reading(split, labels):
        pred, x = _numpy_predictions(data, split, linear)
        nan = x[:, 27] > x[:, 36]
        return pred, nan, ((pred == labels.numpy()) & ~nan).mean()

    val_pred, val_nan, val_acc = numpy_reading(data.val, data.val_noisy)
    test_pred, test_nan, test_acc = numpy_reading(data.test, data.test.y)
    assert 0 < val_nan.sum() < len(val_nan) and 0 < test_nan.sum() < len(test_nan)
    said, confusions = set(), {}
    for _ in range(2):
        out = evaluate({"s": Model()}, ["s"], data, 7, confusions=confusions, warned=said)
        assert out["val/s/acc"] == pytest.approx(val_acc)
        assert out["test/s/acc"] == pytest.approx(test_acc)
    expected = np.zeros((10, 10), dtype=np.int64)
    for t, p in zip(data.test.y.numpy()[~test_nan], test_pred[~test_nan]):
        expected[t, p] += 1
    assert np.array_equal(confusions["s"].numpy(), expected)
    assert warnings == [  # once: the second epoch is not said again
        f"model 's' gave NaN logits for {val_nan.sum()} of {len(val_nan)} validation and "
        f"{test_nan.sum()} of {len(test_nan)} test samples, which count as wrong predictions: "
        "its weights and BatchNorm statistics are all finite, so its activations overflowed "
        "float32 or turned NaN in evaluation (which normalises with BatchNorm's running "
        "statistics where training uses each batch's own; statistics far from the batches' "
        "can overflow: a lower learning rate, or an architecture made for inputs of this "
        "size) (said once)"]
    assert said == {"s"}
    evaluate({"s": Model()}, ["s"], data, 7)  # without a set to note it in: said every time
    assert warnings[1] == warnings[0].removesuffix(" (said once)")


def test_the_warning_names_the_state_that_is_not_finite_or_says_that_none_is(tiny_recipe,
                                                                             warnings):
    """It asked "a NaN in its weights or BatchNorm statistics?" of a MNASNet whose weights and
    statistics were finite: its activations had overflowed float32 at a BatchNorm in
    evaluation mode, which normalises with the running statistics."""
    from kdcore.evaluation import evaluate

    data, _ = _data_and_linear(tiny_recipe)

    class Model(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(64)
            self.head = torch.nn.Linear(64, 10)
            with torch.no_grad():
                self.norm.weight.fill_(scale)  # an input off its running mean overflows
                self.norm.running_mean.fill_(-1.0)
                self.head.weight.copy_(torch.tensor([1.0, -1.0]).repeat(10, 32))

        def forward(self, x):
            z = self.norm(x)
            return self.head(z), z

    overflowing = Model(3e38).eval()
    evaluate({"s": overflowing}, ["s"], data, 64)
    assert warnings[-1].endswith(
        "samples, which count as wrong predictions: its weights and BatchNorm statistics are "
        "all finite, so its activations overflowed float32 or turned NaN in evaluation (which "
        "normalises with BatchNorm's running statistics where training uses each batch's own; "
        "statistics far from the batches' can overflow: a lower learning rate, or an "
        "architecture made for inputs of this size)"), warnings[-1]
    broken = Model(1.0).eval()
    broken.norm.running_var[5] = float("nan")
    evaluate({"s": broken}, ["s"], data, 64)
    assert warnings[-1].endswith("which count as wrong predictions: its weights or BatchNorm "
                                 "statistics hold NaN or inf (norm.running_var)"), warnings[-1]
    with torch.no_grad():
        broken.head.weight[0, 0] = float("inf")
        broken.norm.weight[2] = -float("inf")
    evaluate({"s": broken}, ["s"], data, 64)
    assert warnings[-1].endswith("hold NaN or inf (norm.weight, norm.running_var, "
                                 "head.weight)"), warnings[-1]
    with torch.no_grad():
        broken.head.bias[1] = float("nan")
    evaluate({"s": broken}, ["s"], data, 64)
    assert warnings[-1].endswith("hold NaN or inf (norm.weight, norm.running_var, head.weight "
                                 "and 1 more)"), warnings[-1]
    assert len(warnings) == 4


@pytest.mark.slow
def test_a_run_records_each_stages_matrix_of_its_kept_weights(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe)
    run_recipe(recipe, out=str(tmp_path / "run"))
    test_y = build_run_data(recipe.data, PluginHost(), recipe.run.seed,
                            torch.device("cpu")).test.y.numpy()
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    with History(tmp_path / "run") as h:
        assert {n for n in h.data_names() if n.startswith("test_confusion/")} == {
            "test_confusion/teacher/teacher", "test_confusion/student/student"}
        for stage, role in (("teacher", "teacher"), ("student", "student")):
            m = h.data(f"test_confusion/{stage}/{role}")
            assert m.shape == (10, 10)
            assert np.array_equal(m.sum(1), np.bincount(test_y, minlength=10))
            # the kept weights' accuracy and balanced accuracy, as the summary has them
            kept = summary[role]
            assert np.trace(m) / m.sum() == pytest.approx(kept["test_acc_at_best_val"])
            per_class = np.diag(m) / np.maximum(m.sum(1), 1)
            assert per_class.mean() == pytest.approx(kept["test_bacc_at_best_val"])


@pytest.mark.slow
def test_a_resume_records_the_same_matrices_even_from_an_older_checkpoint(tiny_recipe,
                                                                          tmp_path):
    """The kept epoch's matrix travels in the checkpoint; a checkpoint without it (an older
    kdcore's) has the stage predict the test split once more, to the same matrix."""
    from kdcore.checkpoint import CHECKPOINT, load, save
    from kdcore.testing import InterruptAt, Interrupted, assert_same_history

    # a student that does not learn keeps its first epoch, before the resume point
    recipe = load_recipe(tiny_recipe, ["stages.student.epochs=3", "run.checkpoint_interval_s=0",
                                       'stages.student.keep="best_val"',
                                       "models.student.optimizer.lr=1e-12"])
    run_recipe(recipe, out=str(tmp_path / "whole"))
    for name, older in (("resumed", False), ("older", True)):
        out = tmp_path / name
        with pytest.raises(Interrupted):
            run_recipe(recipe, out=str(out),
                       host=PluginHost(extra=[InterruptAt(epoch=2, batch=1, stage="student")]))
        if older:
            state = load(out / CHECKPOINT)
            for record in state["best"]["best"].values():
                del record["test_confusion"], record["last_test_confusion"]
            save(state, out / CHECKPOINT)
        run_recipe(recipe, out=str(out), resume=True)
        assert_same_history(tmp_path / "whole", out)
    with History(tmp_path / "whole") as h:
        assert h.metric("val/student/acc")[-3:].tolist() == [h.metric("val/student/acc")[-3]] * 3
