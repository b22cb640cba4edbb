"""Label-propagation edge cases: non-finite features end the run naming the component and the
model; negative similarities are clamped at 0 before the power, checked against an independent
NumPy transcription of the documented formula; mutual LP alternates graphs by the student's
absolute epoch (``(role_epoch + offset) % 2``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import kdcore
from kdcore.recipe import Recipe, StageConfig
from kdcore.testing import harness
from kdcore_lp import MutualLP, TeacherLP, propagate_features


class Linear(nn.Module):
    """A linear connector: its features are its inputs (signed, possibly NaN), its logits a
    fixed linear map of them."""

    def __init__(self, d: int, c: int):
        super().__init__()
        self.head = nn.Linear(d, c)
        with torch.no_grad():
            self.head.weight.copy_(torch.arange(c * d, dtype=torch.float32).view(c, d).cos())
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(x), x


# -- non-finite features ----------------------------------------------------------------------

def _nan_harness(role_with_nan: str, seeds: str = "noisy"):
    g = torch.Generator().manual_seed(0)
    n, d, c = 240, 5, 3
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    x_bad = x.clone()
    x_bad[[5, 17, 100], 2] = float("nan")

    class Fixed(Linear):
        def __init__(self, feats):
            super().__init__(d, c)
            self.feats = feats

        def forward(self, inputs):  # the features of the whole split, in index order
            return self.head(self.feats), self.feats

    models = {"teacher": Fixed(x_bad if role_with_nan == "teacher" else x),
              "student": Fixed(x_bad if role_with_nan == "student" else x)}
    return harness(TeacherLP, {"k": 5, "seeds": seeds}, x=x, noisy_label=y, num_classes=c,
                   models=models, name="teacher_lp")


def test_nan_teacher_feature_ends_the_run_naming_component_and_model():
    h = _nan_harness("teacher").setup()
    with pytest.raises(kdcore.TrainingDiverged) as err:
        h.epoch_start(0)
    message = str(err.value)
    assert message.startswith("component 'teacher_lp' (teacher_lp): features of model "
                              "'teacher' are not finite (3 of 240 samples)")
    assert "\n" not in message
    assert isinstance(err.value, kdcore.KdcoreError)
    # nothing was written: the labels trained on are still the noisy ones
    assert h.run.ledger.producer("base_target") != "teacher_lp"


def test_nan_in_the_seed_model_is_named_too():
    # the graph (teacher) is finite; the student's logits make the selected labels
    h = _nan_harness("student", seeds="selected").setup()
    with pytest.raises(kdcore.TrainingDiverged,
                       match=r"^component 'teacher_lp' \(teacher_lp\): logits of model "
                             r"'student' are not finite \(3 of 240 samples\)"):
        h.epoch_start(0)


# -- negative similarities --------------------------------------------------------------------

def _numpy_w(feats: np.ndarray, *, k: int, gamma: float, normalize: bool,
             signed: bool = False) -> np.ndarray:
    """``W = A + A^T`` (zero diagonal), ``A_ij = max(s_ij, 0)^gamma`` on each row's k nearest
    (``signed``: the released ``s_ij^gamma``), transcribed with NumPy."""
    f = feats.astype(np.float64)
    if normalize:
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
    s = f @ f.T
    n = len(f)
    a = np.zeros((n, n))
    for i in range(n):
        order = [j for j in np.argsort(-s[i], kind="stable") if j != i][:k]
        a[i, order] = (s[i, order] if signed else np.maximum(s[i, order], 0.0)) ** gamma
    w = a + a.T
    np.fill_diagonal(w, 0.0)
    return w


def _reference(feats: np.ndarray, seeds: np.ndarray, c: int, *, k: int, gamma: float,
               alpha: float, normalize: bool, clamp: bool = True):
    """The documented formula, transcribed with NumPy and a dense solve."""
    w = _numpy_w(feats, k=k, gamma=gamma, normalize=normalize)
    deg = w.sum(1)
    deg[deg == 0] = 1.0
    wn = w / np.sqrt(deg)[:, None] / np.sqrt(deg)[None, :]
    n = len(feats)
    y = np.zeros((n, c))
    y[np.arange(n), seeds] = 1.0
    total = y.sum(0)
    y = y / np.where(total > 0, total, 1.0)
    z = np.linalg.solve(np.eye(n) - alpha * wn, y)
    if clamp:
        z = np.maximum(z, 0.0)
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    return p.argmax(1), p.max(1), z


def _signed_features():
    """Two clusters (around e1 and e2, lifted along +e3), a loner along -e3 whose every
    similarity is negative, and a point between them with mixed-sign neighbours."""
    rng = np.random.default_rng(3)
    a = np.array([1.0, 0.0, 0.3]) + 0.15 * rng.standard_normal((5, 3))
    b = np.array([0.0, 1.0, 0.3]) + 0.15 * rng.standard_normal((5, 3))
    loner = np.array([[0.05, -0.03, -1.0]])
    mixed = np.array([[-0.9, 0.1, 0.0]])
    feats = np.concatenate([a, b, loner, mixed]).astype(np.float32)
    seeds = np.array([0, 0, 1, 0, 0, 1, 1, 1, 2, 1, 2, 0])
    return feats, seeds


@pytest.mark.parametrize("normalize", [True, False])
def test_all_negative_neighbourhoods_give_finite_labels_of_the_documented_formula(normalize):
    feats, seeds = _signed_features()
    k, gamma, alpha, c = 4, 3.0, 0.99, 3
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True) if normalize else feats
    s = f.astype(np.float64) @ f.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    top = -np.sort(-s, axis=1)[:, :k]
    assert (top[10] < 0).all()  # the loner's k nearest are all negative
    assert (top[11] < 0).any() and (top[11] > 0).any()  # mixed signs
    # the released rule (signed similarity to the power) gives the loner a negative degree
    assert _numpy_w(feats, k=k, gamma=gamma, normalize=normalize, signed=True).sum(1)[10] < 0

    got = propagate_features(torch.from_numpy(feats), torch.from_numpy(seeds), c, k=k,
                             gamma=gamma, alpha=alpha, normalize=normalize, tol=1e-14,
                             maxiter=200)
    labels, conf, z = _reference(feats, seeds, c, k=k, gamma=gamma, alpha=alpha,
                                 normalize=normalize)
    assert torch.isfinite(got.scores).all() and torch.isfinite(got.confidence).all()
    np.testing.assert_allclose(got.scores.double().numpy(), z, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.confidence.double().numpy(), conf, rtol=1e-6)
    assert np.array_equal(got.labels.numpy(), labels)
    # the loner is isolated: it keeps its own seed
    assert int(got.labels[10]) == seeds[10]
    np.testing.assert_allclose(z[10], np.eye(c)[seeds[10]] / (seeds == seeds[10]).sum())


def test_the_component_on_a_linear_connector_with_negative_similarities():
    feats, seeds = _signed_features()
    x = torch.from_numpy(feats)
    y = torch.from_numpy(seeds)
    params = {"k": 4, "seeds": "noisy", "cg_tol": 1e-14, "cg_iters": 200}
    h = harness(TeacherLP, params, x=x, noisy_label=y, num_classes=3,
                models={"teacher": Linear(3, 3), "student": Linear(3, 3)},
                name="teacher_lp").setup()
    h.epoch_start(0)
    labels, conf, _ = _reference(feats, seeds, 3, k=4, gamma=3.0, alpha=0.99, normalize=True)
    led = h.run.ledger
    assert np.array_equal(led["lp/teacher_lp/label"].numpy(), labels)
    np.testing.assert_allclose(led["lp/teacher_lp/confidence"].double().numpy(), conf,
                               rtol=1e-6)
    assert np.array_equal(led["base_target"].argmax(1).numpy(), labels)


# -- mutual LP's alternation ------------------------------------------------------------------

def _graph_sequence(student_epochs_before: int, epochs: int, offset: int | None = None
                    ) -> list[str]:
    """The graph roles mutual LP uses at each epoch of a stage placed after a teacher stage
    and ``student_epochs_before`` epochs of the student in earlier stages."""
    g = torch.Generator().manual_seed(0)
    n, c = 30, 3
    x = torch.randn(n, 3, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    params = {"k": 4} if offset is None else {"k": 4, "offset": offset}
    h = harness(MutualLP, params, x=x, noisy_label=y, num_classes=c,
                models={"teacher": Linear(3, c), "student": Linear(3, c)}, name="mutual_lp")
    stages = [StageConfig(name="teacher", epochs=7, train=["teacher"]),
              StageConfig(name="warmup", epochs=1, train=["student"]),
              StageConfig(name="refine", epochs=student_epochs_before - 1, train=["student"]),
              StageConfig(name="mutual", epochs=epochs, train=["student"])]
    h.run.recipe = Recipe(stages=stages)
    h.run.stage_index = 3
    h.run.stage = stages[3]
    h.setup()
    seq = []
    for epoch in range(epochs):
        h.epoch_start(epoch)
        assert h.ctx.role_epoch("student") == student_epochs_before + epoch
        seq.append("teacher" if h.metrics["lp/mutual_lp/graph_is_teacher"] == 1.0
                   else "student")
    return seq


def test_mutual_lp_alternates_by_the_students_absolute_epoch():
    # the release: student graph on even absolute epochs, teacher graph on odd ones (its
    # stage 2 starts at epoch 181 with the teacher's graph)
    assert _graph_sequence(15, 5) == ["teacher", "student", "teacher", "student", "teacher"]
    assert _graph_sequence(30, 5) == ["student", "teacher", "student", "teacher", "student"]
    # offset 1 swaps the parities
    assert _graph_sequence(15, 4, offset=1) == ["student", "teacher", "student", "teacher"]
    assert _graph_sequence(30, 4, offset=1) == ["teacher", "student", "teacher", "student"]


def test_offset_is_an_int_parameter_defaulting_to_the_release():
    assert MutualLP.Params().offset == 0
    with pytest.raises(ValueError, match="gamma"):
        MutualLP.Params(gamma=0.0)
