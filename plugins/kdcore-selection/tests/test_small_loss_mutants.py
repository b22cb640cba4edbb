"""Small-loss selection, pinned down where mutation testing found the other tests loose: the
mixture estimate against an independent NumPy transcription of its documented algorithm, its
edge cases, the ``targets`` ranking, the checkpoint state, the ramp, the ledger record of
``mask_loss = false`` and the pass scope's shuffle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdcore.losses import one_hot, soft_cross_entropy
from kdcore.testing import TinyNet, harness
from kdcore_selection.small_loss import (
    MIXTURE_VAR_FLOOR,
    SmallLoss,
    keep_smallest,
    kept_count,
    mixture_noise_rate,
)

# -- the mixture estimate against a NumPy transcription ---------------------------------------


def reference_rate(losses, *, max_iter=100, tol=1e-8, var_floor=MIXTURE_VAR_FLOOR):
    """The documented algorithm, written out again in NumPy; returns (rate, EM iterations).

    Min-max normalise the finite losses; start from the halves at/below and above the median
    (when nothing lies above it: below and at/above), with their means, population variances
    floored at ``var_floor`` and equal weights; EM with responsibilities from the log joint by
    a stable softmax, stopping when the mean log-likelihood changes by less than ``tol`` or
    after ``max_iter`` iterations; the share whose posterior of the higher-mean component
    exceeds 0.5."""
    x = np.asarray(losses, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 2:
        return 0.0, 0
    low, high = x.min(), x.max()
    if high - low <= 1e-12 * max(1.0, abs(high)):
        return 0.0, 0
    x = (x - low) / (high - low)
    median = np.quantile(x, 0.5)
    lower, upper = x[x <= median], x[x > median]
    if upper.size == 0:
        lower, upper = x[x < median], x[x >= median]
    mean = np.array([lower.mean(), upper.mean()])
    var = np.maximum(np.array([lower.var(), upper.var()]), var_floor)
    weight = np.array([0.5, 0.5])
    col = x[:, None]

    def log_joint():
        return np.log(weight) - 0.5 * (np.log(2 * np.pi * var) + (col - mean) ** 2 / var)

    previous = -np.inf
    iterations = 0
    for _ in range(max_iter):
        iterations += 1
        log_p = log_joint()
        top = log_p.max(axis=1, keepdims=True)
        log_lik = top + np.log(np.exp(log_p - top).sum(axis=1, keepdims=True))
        resp = np.exp(log_p - log_lik)
        mass = np.maximum(resp.sum(axis=0), 1e-12)
        weight = mass / mass.sum()
        mean = (resp * col).sum(axis=0) / mass
        var = np.maximum((resp * (col - mean) ** 2).sum(axis=0) / mass, var_floor)
        current = log_lik.mean()
        if abs(current - previous) < tol:
            break
        previous = current
    log_p = log_joint()
    post = np.exp(log_p - log_p.max(axis=1, keepdims=True))
    post /= post.sum(axis=1, keepdims=True)
    return float((post[:, int(np.argmax(mean))] > 0.5).mean()), iterations


def _mix(seed, n, share, clean, noisy):
    g = np.random.default_rng(seed)
    k = round(share * n)
    return g.permutation(np.concatenate([clean(g, n - k), noisy(g, k)]))


def _overlapping(seed, n):
    return _mix(seed, n, 0.4, lambda g, k: g.normal(1.0, 0.5, k),
                lambda g, k: g.normal(2.0, 0.7, k))


DATASETS = {
    "separated": lambda: _mix(0, 200, 0.3, lambda g, k: g.normal(0.3, 0.15, k),
                              lambda g, k: g.normal(2.5, 0.6, k)),
    "overlapping": lambda: _overlapping(1, 500),
    "half-normal-clean": lambda: _mix(2, 1500, 0.2, lambda g, k: np.abs(g.normal(0, 0.4, k)),
                                      lambda g, k: g.normal(3.0, 0.8, k)),
    "shifted-and-scaled": lambda: 7.0 + 40.0 * _mix(
        3, 301, 0.25, lambda g, k: g.normal(0.2, 0.1, k), lambda g, k: g.normal(0.8, 0.2, k)),
    # a narrow range far from zero: the normalisation (not its shift or scale) decides
    "narrow-range-offset": lambda: 50.0 + 0.01 * _overlapping(1, 500),
    "unimodal-gaussian": lambda: np.random.default_rng(4).normal(5.0, 1.0, 400),
    "unimodal-exponential": lambda: np.random.default_rng(5).exponential(0.7, 600),
    # two tight clusters: both variances sit at the floor
    "variance-floor-binds": lambda: _mix(6, 97, 0.3, lambda g, k: g.normal(0.0, 1e-3, k),
                                         lambda g, k: 3.0 + g.normal(0.0, 1e-3, k)),
    # heavily overlapping: EM runs into max_iter
    "slow-em": lambda: _mix(7, 800, 0.35, lambda g, k: g.normal(0.0, 1.0, k),
                            lambda g, k: g.normal(1.3, 1.0, k)),
    "three-losses": lambda: np.random.default_rng(10).uniform(0, 1, 3),
    "odd-uniform": lambda: np.random.default_rng(5).uniform(0, 1, 41),
    "uniform": lambda: np.random.default_rng(0).uniform(0, 1, 35),
    # more than half the losses at the maximum: the fallback split
    "most-at-the-maximum": lambda: np.concatenate(
        [np.random.default_rng(4).uniform(0, 1, 40), np.ones(41)]),
}
SETTINGS = {"defaults": {}, "one-iteration": {"max_iter": 1}, "two-iterations": {"max_iter": 2},
            "three-iterations": {"max_iter": 3}, "coarse-tol": {"tol": 1e-3},
            "tol-1e-5": {"tol": 1e-5}}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("dataset", list(DATASETS))
def test_mixture_rate_equals_the_numpy_transcription(dataset, setting):
    losses = DATASETS[dataset]()
    expected, _ = reference_rate(losses, **SETTINGS[setting])
    assert mixture_noise_rate(torch.from_numpy(losses), **SETTINGS[setting]) == expected
    # float32 losses are estimated from their float64 values
    losses32 = torch.from_numpy(losses).float()
    assert (mixture_noise_rate(losses32, **SETTINGS[setting])
            == reference_rate(losses32.double().numpy(), **SETTINGS[setting])[0])


def test_the_datasets_exercise_what_they_are_named_for():
    assert reference_rate(DATASETS["slow-em"]())[1] == 100  # EM hits max_iter
    assert reference_rate(DATASETS["overlapping"](), tol=1e-3)[1] < 100  # tol ends it early
    x = DATASETS["variance-floor-binds"]()
    x = (x - x.min()) / (x.max() - x.min())
    assert x[x < 0.5].var() < MIXTURE_VAR_FLOOR and x[x > 0.5].var() < MIXTURE_VAR_FLOOR
    x = DATASETS["most-at-the-maximum"]()
    assert not (x > np.quantile(x, 0.5)).any()


def _rate(values):
    return mixture_noise_rate(torch.tensor(values, dtype=torch.float64))


@pytest.mark.parametrize("values", [[5.0], [float("nan"), 1.0], [], [float("inf")]],
                         ids=["one", "nan-and-one", "empty", "inf"])
def test_mixture_rate_of_fewer_than_two_finite_losses_is_zero(values):
    assert _rate(values) == 0.0


@pytest.mark.parametrize("values", [[5.0, 5.0, 5.0], [-2.0, -2.0], [0.0, 1e-12],
                                    [1e6, 1e6 + 1e-7]],
                         ids=["equal", "equal-negative", "at-the-tolerance",
                              "within-the-relative-tolerance"])
def test_mixture_rate_of_equal_losses_is_zero(values):
    # equal up to 1e-12 of max(1, |max|): the bound itself counts as equal
    assert _rate(values) == 0.0


@pytest.mark.parametrize("values", [[0.0, 1.0], [-1.0, 1.0], [0.0, 1.5e-12], [3.0, 2.0]],
                         ids=["zero-one", "symmetric", "just-above-the-tolerance", "reversed"])
def test_mixture_rate_of_two_distinct_losses_is_one_half(values):
    # the median splits them into one point each: each point is its own component (variance
    # at the floor), so the larger one has the high component's posterior ~1, the other ~0
    assert _rate(values) == 0.5


def test_mixture_rate_ignores_non_finite_losses():
    finite = [2.0, 3.0, 2.5, 2.2, 9.0, 8.5, 2.1]
    mixed = [float("inf"), 2.0, float("nan"), 3.0, 2.5, float("-inf"), 2.2, 9.0, 8.5, 2.1]
    assert _rate(mixed) == _rate(finite) == reference_rate(finite)[0]


def test_keep_smallest_keeps_a_single_sample():
    losses = torch.tensor([0.5, 0.1, 0.9, 0.3])
    assert keep_smallest(losses, 1).tolist() == [False, True, False, False]


# -- the component ------------------------------------------------------------------------------


def _harness(params, n=100, c=4, seed=0, model_seed=0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    clean = torch.randint(0, c, (n,), generator=g)
    noisy = torch.where(torch.rand(n, generator=g) < 0.3, torch.randint(0, c, (n,), generator=g),
                        clean)
    torch.manual_seed(model_seed)
    return harness(SmallLoss, params, x=x, noisy_label=noisy, clean_label=clean, num_classes=c,
                   models={"student": TinyNet(c=c)}, name="small_loss", seed=seed)


def _logits(h):
    with torch.no_grad():
        return h.run.models["student"](h.run.data.train.x)[0]


def _noisy_losses(h):
    return F.cross_entropy(_logits(h), h.run.ledger["noisy_label"], reduction="none")


def _set_targets(h):
    """Soft targets that rank the samples differently from the noisy labels."""
    g = torch.Generator().manual_seed(3)
    other = torch.randint(0, 4, (h.run.ledger.size,), generator=g)
    target = 0.8 * one_hot(other, 4) + 0.2 * torch.softmax(
        torch.randn(h.run.ledger.size, 4, generator=g), 1)
    h.run.ledger.add("target", target, producer="labels", kind="target")
    return target


@pytest.mark.parametrize("scope", ["batch", "dataset"])
def test_targets_labels_rank_by_soft_cross_entropy_against_the_ledger_targets(scope):
    h = _harness({"rate": 0.5, "labels": "targets", "scope": scope}).setup()
    target = _set_targets(h)
    h.epoch_start(0)
    rows = torch.arange(100)
    mask = h.component.select(h.ctx, h.batch(rows))
    by_target = keep_smallest(soft_cross_entropy(_logits(h), target), 50)
    by_noisy = keep_smallest(_noisy_losses(h), 50)
    assert not torch.equal(by_target, by_noisy)  # the two readings differ here
    assert torch.equal(mask, by_target)
    # a batch of some rows ranks against those rows' targets
    if scope == "batch":
        part = torch.tensor([7, 3, 40, 41, 12, 99, 0, 58, 21, 64])
        losses = soft_cross_entropy(_logits(h)[part], target[part])
        assert torch.equal(h.component.select(h.ctx, h.batch(part)), keep_smallest(losses, 5))


def test_noisy_labels_ignore_the_targets():
    h = _harness({"rate": 0.5}).setup()
    _set_targets(h)
    h.epoch_start(0)
    mask = h.component.select(h.ctx, h.batch(torch.arange(100)))
    assert torch.equal(mask, keep_smallest(_noisy_losses(h), 50))


def test_state_is_the_estimated_rate_and_a_resumed_component_uses_it():
    h = _harness({}).setup()
    assert h.component.state_dict() == {"estimated_rate": None}  # nothing estimated yet
    h.epoch_start(0)
    estimate = h.metrics["select/small_loss/rate_estimate"]
    assert h.component.state_dict() == {"estimated_rate": estimate}
    # a resumed component (mid-epoch: no epoch start) keeps the checkpointed rate, not its own
    other = _harness({}, model_seed=5).setup()
    assert mixture_noise_rate(_noisy_losses(other)) != 0.3
    other.component.load_state_dict({"estimated_rate": 0.3})
    assert other.component.estimated_rate == 0.3
    assert int(other.component.select(other.ctx, other.batch(torch.arange(10))).sum()) == 7
    other.component.load_state_dict(h.component.state_dict())
    assert other.component.estimated_rate == estimate


def test_a_batch_before_any_estimate_estimates_the_rate():
    # resumed from a state with no estimate: the first batch estimates it from the ledger
    h = _harness({}).setup()
    h.component.load_state_dict({"estimated_rate": None})
    mask = h.component.select(h.ctx, h.batch(torch.arange(40)))
    expected = mixture_noise_rate(_noisy_losses(h))
    assert h.component.estimated_rate == expected
    assert int(mask.sum()) == kept_count(40, expected)


def test_the_ramp_reaches_r_and_stays_there():
    h = _harness({"rate": 0.4, "ramp_epochs": 3}).setup()

    def rate_at(epoch):
        h.epoch_start(epoch)
        return h.metrics["select/small_loss/rate"]

    # linear up to epoch 3, then r (never above it)
    np.testing.assert_allclose([rate_at(e) for e in range(7)],
                               [0.0, 0.4 / 3, 0.8 / 3, 0.4, 0.4, 0.4, 0.4])


def test_pass_scope_with_an_estimated_rate_and_a_ramp():
    h = _harness({"scope": "pass", "pass_batch_size": 30, "estimate": "oracle",
                  "ramp_epochs": 2}).setup()
    h.epoch_start(1)
    realised = float((h.run.ledger["noisy_label"] != h.run.ledger["clean_label"])
                     .double().mean())
    assert h.metrics["select/small_loss/rate"] == pytest.approx(realised / 2)
    mask = h.run.ledger["select/small_loss"]
    assert int(mask.sum()) == 3 * kept_count(30, realised / 2) + kept_count(10, realised / 2)


def test_batch_scope_ranks_nothing_at_the_epoch_start():
    """It only makes the column (every sample kept) where none is yet, and draws nothing."""
    h = _harness({"rate": 0.3}).setup()
    before = h.ctx.generator.get_state()
    h.epoch_start(0)
    assert bool(h.run.ledger["select/small_loss"].all())
    assert torch.equal(h.ctx.generator.get_state(), before)
    h.run.ledger.write("select/small_loss", torch.tensor([3]), torch.tensor([False]),
                       producer="small_loss", kind="mask")
    h.epoch_start(1)
    assert int(h.run.ledger["select/small_loss"].sum()) == h.run.ledger.size - 1


def test_recording_without_masking_writes_a_mask_column_in_batch_scope():
    h = _harness({"rate": 0.3, "mask_loss": False}).setup()
    # no epoch start: the batch's own write makes the column (an epoch start would have made
    # it already, with every sample kept), so its kind is the write's
    rows = torch.tensor([4, 9, 2, 30, 31, 77, 50, 13, 5, 60])
    assert h.component.select(h.ctx, h.batch(rows)) is None
    assert h.ctx.ledger.kind("select/small_loss") == "mask"
    written = h.run.ledger["select/small_loss"][rows]
    assert torch.equal(written, keep_smallest(_noisy_losses(h)[rows], 7))


def _pass_mask(seed, global_seed):
    h = _harness({"scope": "pass", "pass_batch_size": 10, "rate": 0.5}, seed=seed).setup()
    torch.manual_seed(global_seed)
    h.epoch_start(0)
    return h, h.run.ledger["select/small_loss"].clone()


def test_pass_scope_shuffles_with_the_components_generator():
    h, mask = _pass_mask(seed=0, global_seed=123)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    losses = _noisy_losses(h)
    expected = torch.zeros(100, dtype=torch.bool)
    for start in range(0, 100, 10):
        rows = order[start:start + 10]
        expected[rows] = keep_smallest(losses[rows], 5)
    assert torch.equal(mask, expected)
    # the global generator does not matter; the component's seed does
    assert torch.equal(_pass_mask(seed=0, global_seed=999)[1], mask)
    assert not torch.equal(_pass_mask(seed=1, global_seed=123)[1], mask)
