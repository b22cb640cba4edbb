"""Small-loss selection: exact kept counts, rankings, tie-breaking, scopes, the noise-rate
estimates, and the ledger record."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdcore
from kdcore import PluginHost, RecipeError
from kdcore.plan import build_plan
from kdcore.recipe import recipe_from_dict
from kdcore.testing import MODELS, component, harness, run_tiny, stage, teacher_stage, tiny_recipe
from kdcore.testing import TinyNet as Net
from kdcore_selection.small_loss import SmallLoss, keep_smallest, kept_count, mixture_noise_rate

RECIPES = Path(__file__).parents[3] / "recipes"

STUDENT = {"student": {"arch": "mlp", "params": {"hidden": [16]}}}  # the default lr (0.05)


def test_keep_smallest_picks_the_smallest():
    losses = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7])
    assert keep_smallest(losses, 2).tolist() == [False, True, False, True, False]
    assert not keep_smallest(losses, 0).any()


def test_keep_smallest_breaks_ties_by_position():
    # the two smallest are unique; the third and fourth kept come from the tied 0.2s at
    # positions 1, 4, 6, 9: the lowest positions among them, 1 and 4
    losses = torch.tensor([0.9, 0.2, 0.05, 0.7, 0.2, 0.01, 0.2, 0.8, 0.5, 0.2])
    assert keep_smallest(losses, 4).nonzero().flatten().tolist() == [1, 2, 4, 5]
    # all tied, long enough for topk's unordered selection to differ: the first `keep`
    tied = torch.full((1000,), 0.3)
    assert keep_smallest(tied, 37).nonzero().flatten().tolist() == list(range(37))
    # ties straddling the cut among other values
    losses = torch.tensor([1.0, 0.0, 1.0, 2.0, 1.0, 0.0, 1.0])
    assert keep_smallest(losses, 3).nonzero().flatten().tolist() == [0, 1, 5]
    assert keep_smallest(losses, 5).nonzero().flatten().tolist() == [0, 1, 2, 4, 5]


CLEAN_NOISY = {
    # per-sample losses: clean ones small, noisy ones large (two known distributions)
    "gaussians": (lambda g, k: 0.3 + 0.15 * torch.randn(k, generator=g),
                  lambda g, k: 2.5 + 0.6 * torch.randn(k, generator=g)),
    "half-normal clean": (lambda g, k: (0.4 * torch.randn(k, generator=g)).abs(),
                          lambda g, k: 3.0 + 0.8 * torch.randn(k, generator=g)),
}


@pytest.mark.parametrize("family", sorted(CLEAN_NOISY))
@pytest.mark.parametrize("rate", [0.2, 0.4])
@pytest.mark.parametrize("seed", [0, 1])
def test_mixture_estimate_recovers_the_known_noise_rate(family, rate, seed):
    clean, noisy = CLEAN_NOISY[family]
    g = torch.Generator().manual_seed(seed)
    n = 4000
    n_noisy = round(rate * n)
    losses = torch.cat([clean(g, n - n_noisy), noisy(g, n_noisy)])
    losses = losses[torch.randperm(n, generator=g)]
    assert abs(mixture_noise_rate(losses) - rate) <= 0.05
    # the scale and the order of the losses do not matter
    assert abs(mixture_noise_rate(7.0 * losses.flip(0) + 3.0) - rate) <= 0.05


@pytest.mark.parametrize("losses", [
    torch.full((500,), 2.3), torch.zeros(3), torch.ones(1), torch.empty(0),
    torch.tensor([0.0] * 90 + [1.0] * 10), torch.tensor([0.0] * 10 + [1.0] * 90),
    torch.tensor([float("nan"), float("inf"), 1.0, 1.0, 1.0]),
], ids=["equal", "three-zeros", "one", "empty", "two-values-low", "two-values-high", "non-finite"])
def test_mixture_estimate_is_finite_and_a_rate_on_degenerate_losses(losses):
    r = mixture_noise_rate(losses)
    assert math.isfinite(r) and 0.0 <= r <= 1.0


def test_mixture_estimate_on_two_point_masses_is_the_upper_share():
    assert mixture_noise_rate(torch.tensor([0.0] * 90 + [1.0] * 10)) == pytest.approx(0.1)
    assert mixture_noise_rate(torch.tensor([0.0] * 10 + [1.0] * 90)) == pytest.approx(0.9)


@pytest.mark.parametrize(("size", "rate"), [(64, 0.4), (10, 0.4), (256, 0.5), (7, 0.0)])
def test_kept_count_is_floor(size, rate):
    assert kept_count(size, rate) == math.floor(round((1 - rate) * size, 9))


class CountCheck:
    """Records, after each batch, how many samples of the batch the selection kept."""

    def __init__(self):
        self.counts = []

    @kdcore.hookimpl
    def kdcore_batch_end(self, ctx, batch, losses):
        mask = ctx.ledger["select/small_loss"][batch.index]
        self.counts.append((len(batch), int(mask.sum())))


def _run(tmp_path, params, batch=64, epochs=1, observer=None):
    recipe = tiny_recipe(
        stage("s", epochs, ["student"], component("small_loss", params=params), component("ce")),
        models=STUDENT, name="sl", batch_size=batch, run={"checkpoint_interval_s": 30.0})
    run_tiny(recipe, tmp_path / "run", plugins=[observer] if observer else [])
    return kdcore.History(tmp_path / "run")


@pytest.mark.slow
def test_batch_scope_keeps_exactly_floor_of_each_batch(tmp_path):
    check = CountCheck()
    with _run(tmp_path, {"rate": 0.3}, batch=64, observer=check) as h:
        assert h.metric("select/small_loss/fraction")[0] == pytest.approx(
            sum(k for _, k in check.counts) / sum(b for b, _ in check.counts))
    assert check.counts and all(k == math.floor(0.7 * b + 1e-9) for b, k in check.counts)


@pytest.mark.slow
def test_oracle_rate_is_the_realised_rate_and_pass_scope_records_without_masking(tmp_path):
    with _run(tmp_path, {"scope": "pass", "pass_batch_size": 50, "mask_loss": False,
                         "estimate": "oracle"}) as h:
        realised = 1 - h.data("clean_mask").mean()
        assert h.metric("select/small_loss/rate")[0] == pytest.approx(realised)
        assert h.metric("select/small_loss/rate_estimate")[0] == pytest.approx(realised)
        mask = h.column("select/small_loss", 0)
        n = len(mask)
        full, rest = divmod(n, 50)
        expected = full * kept_count(50, realised) + (kept_count(rest, realised) if rest else 0)
        assert mask.sum() == expected
        # precision against the true noise mask is measured every epoch
        assert 0 <= h.metric("select/small_loss/precision")[0] <= 1


@pytest.mark.slow
def test_mixture_is_the_default_and_its_rates_are_in_the_history(tmp_path):
    with _run(tmp_path, {"scope": "dataset", "mask_loss": False}, epochs=2) as h:
        realised = float(1 - h.data("clean_mask").mean())
        estimates = h.metric("select/small_loss/rate_estimate")
        assert len(estimates) == 2 and all(0.0 <= r <= 1.0 for r in estimates)
        np.testing.assert_allclose(h.metric("select/small_loss/rate_realised"), realised)
        np.testing.assert_allclose(h.metric("select/small_loss/rate"), estimates)


def _harness(params, n=100, c=4, models=None, **kw):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    clean = torch.randint(0, c, (n,), generator=g)
    noisy = torch.where(torch.rand(n, generator=g) < 0.3, torch.randint(0, c, (n,), generator=g),
                        clean)
    torch.manual_seed(0)
    models = models or {"student": Net(c=c)}
    return harness(SmallLoss, params, x=x, noisy_label=noisy, clean_label=clean, num_classes=c,
                   models=models, name="small_loss", **kw)


def test_dataset_scope_ranks_globally():
    h = _harness({"scope": "dataset", "rate": 0.5, "ranking_model": "student"}).setup()
    h.epoch_start(0)
    mask = h.run.ledger["select/small_loss"]
    assert mask.sum() == kept_count(len(mask), 0.5)
    with torch.no_grad():
        losses = F.cross_entropy(h.run.models["student"](h.run.data.train.x)[0],
                                 h.run.ledger["noisy_label"], reduction="none")
    assert losses[mask].max() <= losses[~mask].min()
    # the batches read the epoch's selection row by row
    rows = torch.tensor([5, 0, 17, 3])
    assert torch.equal(h.component.select(h.ctx, h.batch(rows)), mask[rows])


def test_ramp_grows_the_dropped_share_and_batches_keep_the_floor():
    h = _harness({"rate": 0.4, "ramp_epochs": 2}).setup()
    rates = []
    for epoch in range(3):
        h.epoch_start(epoch)
        rates.append(h.metrics["select/small_loss/rate"])
        mask = h.component.select(h.ctx, h.batch(torch.arange(10)))
        assert int(mask.sum()) == kept_count(10, rates[-1])
    np.testing.assert_allclose(rates, [0.0, 0.2, 0.4])


def test_disagreement_estimate_uses_the_estimator_model():
    torch.manual_seed(1)
    h = _harness({"estimate": "disagreement", "scope": "dataset"},
                 models={"student": Net(), "teacher": Net()}).setup()
    h.epoch_start(0)
    pred = h.run.models["teacher"](h.run.data.train.x)[0].argmax(1)
    expected = float((pred != h.run.ledger["noisy_label"]).double().mean())
    assert h.metrics["select/small_loss/rate"] == pytest.approx(expected)
    mask = h.run.ledger["select/small_loss"]
    assert mask.sum() == kept_count(len(mask), expected)


def test_column_estimate_is_the_share_of_noisy_labels_the_column_disagrees_with():
    h = _harness({"estimate": "column", "estimate_column": "lp/x/label", "scope": "dataset"})
    noisy = h.run.ledger["noisy_label"].clone()
    labels = noisy.clone()
    labels[[3, 8, 40, 41, 99]] = (labels[[3, 8, 40, 41, 99]] + 1) % 4  # five of 100 differ
    h.run.ledger.add("lp/x/label", labels, kind="label", producer="x")
    h.setup()
    h.epoch_start(0)
    assert h.metrics["select/small_loss/rate_estimate"] == pytest.approx(0.05)
    assert h.metrics["select/small_loss/rate"] == pytest.approx(0.05)
    assert int(h.run.ledger["select/small_loss"].sum()) == 95
    # re-read at each epoch start: a column rewritten since gives the new share
    labels[:20] = (noisy[:20] + 2) % 4
    h.run.ledger.add("lp/x/label", labels, kind="label", producer="x")
    h.epoch_start(1)
    expected = float((labels != noisy).double().mean())
    assert expected > 0.2
    assert h.metrics["select/small_loss/rate_estimate"] == pytest.approx(expected)


def test_column_estimate_needs_a_column_of_labels():
    with pytest.raises(ValueError) as err:
        SmallLoss.Params(estimate="column")
    assert str(err.value) == (
        'estimate "column" needs estimate_column, the ledger column of labels to compare the '
        'noisy labels with (for example "lp/initial_lp/refined" of a label propagation placed '
        'before it)')
    h = _harness({"estimate": "column", "estimate_column": "lp/x/confidence"})
    h.run.ledger.add("lp/x/confidence", torch.rand(100), kind="value", producer="x")
    h.setup()
    with pytest.raises(RecipeError, match="'small_loss'.*lp/x/confidence.*value.*kind label"):
        h.epoch_start(0)


def test_the_plan_checks_the_estimate_column_only_where_it_is_read():
    assert _harness({"estimate": "column", "estimate_column": "lp/x/label"}
                    ).component.reads() == ("lp/x/label",)
    assert _harness({"estimate": "column", "estimate_column": "lp/x/label", "rate": 0.2}
                    ).component.reads() == ()
    assert _harness({"estimate": "oracle", "estimate_column": "lp/x/label"}
                    ).component.reads() == ()
    with pytest.raises(RecipeError, match="lp/nowhere/label"):
        _plan({"estimate": "column", "estimate_column": "lp/nowhere/label"})
    _plan({"estimate": "oracle", "estimate_column": "lp/nowhere/label"})  # not read
    # the column must hold labels; the plan holds that against its writer's declared kind
    assert _harness({"estimate": "column", "estimate_column": "lp/x/label"}
                    ).component.read_kinds() == {"lp/x/label": "label"}
    assert _harness({"estimate": "oracle", "estimate_column": "lp/x/label"}
                    ).component.read_kinds() == {}


@pytest.mark.parametrize("scope", ["batch", "pass", "dataset"])
def test_the_selection_is_written_and_the_estimate_column_read_at_each_epoch_start(scope):
    """Every scope writes ``select/<name>`` in ``on_epoch_start`` (all kept, for ``batch``), so
    a label propagation may read it there; the estimate column is read there too."""
    h = _harness({"scope": scope, "estimate": "column", "estimate_column": "lp/x/label"})
    assert h.component.writes_at_start() == {"select/small_loss": "on_epoch_start"}
    assert h.component.reads_at_start() == {"lp/x/label": "on_epoch_start"}
    assert _harness({"scope": scope, "rate": 0.2}).component.reads_at_start() == {}
    h = _harness({"scope": scope, "rate": 0.2, "mask_loss": True}).setup()
    h.epoch_start(0)
    assert h.run.ledger["select/small_loss"].shape == (h.run.ledger.size,)


def test_roles_are_the_ones_the_settings_use():
    def roles(params):
        return _harness(params).component.roles()

    assert roles({}) == ()  # the mixture estimate over the served model's losses
    assert roles({"estimate": "oracle"}) == ()
    assert roles({"estimate": "disagreement"}) == ("teacher",)
    assert roles({"estimate": "disagreement", "rate": 0.2}) == ()
    assert roles({"ranking_model": "teacher", "estimate": "disagreement",
                  "estimator_model": "helper"}) == ("teacher", "helper")


def test_mixture_estimate_reads_the_ranking_models_losses_and_logs_the_rates():
    h = _harness({"scope": "dataset", "ranking_model": "student"}).setup()
    h.epoch_start(0)
    realised = float((h.run.ledger["noisy_label"] != h.run.ledger["clean_label"]).double().mean())
    assert h.metrics["select/small_loss/rate_realised"] == pytest.approx(realised)
    with torch.no_grad():
        losses = F.cross_entropy(h.run.models["student"](h.run.data.train.x)[0],
                                 h.run.ledger["noisy_label"], reduction="none")
    estimate = h.metrics["select/small_loss/rate_estimate"]
    assert estimate == pytest.approx(mixture_noise_rate(losses))
    assert h.metrics["select/small_loss/rate"] == estimate
    mask = h.run.ledger["select/small_loss"]
    assert mask.sum() == kept_count(len(mask), estimate)


def test_a_given_rate_logs_no_estimate():
    h = _harness({"rate": 0.25}).setup()
    h.epoch_start(0)
    assert h.metrics["select/small_loss/rate"] == 0.25
    assert "select/small_loss/rate_estimate" not in h.metrics


def test_the_oracle_is_not_the_default():
    assert SmallLoss.Params().estimate == "mixture"


def test_no_shipped_recipe_uses_the_oracle_but_release_parity():
    """The oracle needs the true noise rate, which no user has on real data: only the
    release-parity recipe may ask for it, and each setting that does says why in a comment."""
    using = {p.name: p.read_text() for p in sorted(RECIPES.glob("*.toml"))
             if "oracle" in p.read_text().lower()}
    assert set(using) <= {"amlkd-release.toml"}
    for name, text in using.items():
        settings = [line for line in text.splitlines()
                    if "oracle" in line.split("#", 1)[0].lower()]
        assert settings, name
        for line in settings:
            assert "#" in line and "parity" in line.split("#", 1)[1], line


def _plan(params):
    recipe = tiny_recipe(teacher_stage(1), stage(
        "s", 1, ["student"], component("small_loss", params=params), component("ce")))
    return build_plan(recipe_from_dict(recipe), PluginHost())


def test_plan_refuses_a_missing_role_only_where_it_is_used():
    with pytest.raises(RecipeError, match="small_loss.*model role 'nope'"):
        _plan({"estimate": "disagreement", "estimator_model": "nope"})
    with pytest.raises(RecipeError, match="model role 'studnet'.*did you mean 'student'"):
        _plan({"ranking_model": "studnet"})
    _plan({"rate": 0.3, "estimate": "disagreement", "estimator_model": "nope"})  # unused
    _plan({"estimate": "oracle", "estimator_model": "nope"})  # unused


def test_a_selector_serving_several_models_needs_the_one_that_ranks():
    """It stopped in set-up with "serves ('student', 'peer'); name one", after `check` had
    accepted the recipe."""
    models = {**MODELS, "peer": MODELS["student"]}

    def plan(params):
        recipe = tiny_recipe(teacher_stage(1), stage(
            "s", 1, ["student", "peer"], component("small_loss", params=params),
            component("ce")), models=models)
        return build_plan(recipe_from_dict(recipe), PluginHost())

    with pytest.raises(RecipeError) as err:
        plan({})
    assert err.value.key == "stages[1].components[0].params"
    assert err.value.detail == ("component 'small_loss' serves ['student', 'peer']: set "
                                "params.ranking_model to the role whose losses rank the samples, "
                                "or its models to one role")
    plan({"ranking_model": "peer"})


def test_bad_parameters_are_rejected():
    with pytest.raises(kdcore.RecipeError, match=r"params\.rate.*\[0, 1\)"):
        _plan({"rate": 1.5})
    with pytest.raises(kdcore.RecipeError, match="did you mean 'scope'"):
        _plan({"scop": "batch"})


def _em_low_posterior(losses: np.ndarray, iters: int, var_floor: float) -> np.ndarray:
    """NumPy transcription of the documented EM: min-max normalise, start from the halves
    around the median, ``iters`` EM steps, posterior of the low-mean component."""
    x = (losses - losses.min()) / (losses.max() - losses.min())
    med = np.quantile(x, 0.5)
    halves = [x[x <= med], x[x > med]]
    mean = np.array([h.mean() for h in halves])
    var = np.maximum([h.var() for h in halves], var_floor)
    w = np.array([0.5, 0.5])

    def joint():
        return np.log(w) - 0.5 * (np.log(2 * np.pi * var) + (x[:, None] - mean) ** 2 / var)

    for _ in range(iters):
        lj = joint()
        resp = np.exp(lj - np.logaddexp(lj[:, 0], lj[:, 1])[:, None])
        mass = resp.sum(0)
        w = mass / mass.sum()
        mean = (resp * x[:, None]).sum(0) / mass
        var = np.maximum((resp * (x[:, None] - mean) ** 2).sum(0) / mass, var_floor)
    lj = joint()
    post = np.exp(lj - np.logaddexp(lj[:, 0], lj[:, 1])[:, None])
    return post[:, int(mean.argmin())]


def test_mixture_posterior_against_a_numpy_transcription():
    from kdcore_selection.small_loss import MIXTURE_VAR_FLOOR, mixture_posterior

    rng = np.random.default_rng(3)
    losses = np.concatenate([rng.gamma(1.5, 0.2, 300), rng.normal(2.5, 0.4, 200)])
    # tol = 0: exactly max_iter steps on both sides
    got = mixture_posterior(torch.from_numpy(losses), max_iter=40, tol=0.0).numpy()
    np.testing.assert_allclose(got, _em_low_posterior(losses, 40, MIXTURE_VAR_FLOOR),
                               atol=1e-9)
    assert got[:300].mean() > 0.9 and got[300:].mean() < 0.1  # the low component is clean
    rate = mixture_noise_rate(torch.from_numpy(losses))
    assert rate == pytest.approx(float((mixture_posterior(torch.from_numpy(losses)) < 0.5)
                                       .double().mean()))


def test_mixture_posterior_on_degenerate_losses():
    from kdcore_selection.small_loss import mixture_posterior

    post = mixture_posterior(torch.tensor([0.1, float("nan"), 0.1, float("inf"), 0.1]))
    assert post.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]  # all equal: clean; non-finite: not
    assert mixture_posterior(torch.tensor([2.0])).tolist() == [1.0]


def test_mixture_noise_rate_passes_its_settings_to_the_posterior():
    from kdcore_selection.small_loss import mixture_posterior

    rng = np.random.default_rng(5)
    losses = torch.from_numpy(np.concatenate([rng.normal(0.2, 0.05, 70),
                                              rng.normal(0.45, 0.3, 30)]))
    rates = {}
    for var_floor, max_iter in ((1e-6, 200), (0.05, 200), (1e-6, 1)):
        post = mixture_posterior(losses, var_floor=var_floor, max_iter=max_iter, tol=0.0)
        rates[var_floor, max_iter] = mixture_noise_rate(losses, var_floor=var_floor,
                                                        max_iter=max_iter, tol=0.0)
        assert rates[var_floor, max_iter] == pytest.approx(float((post < 0.5).double().mean()))
    assert len(set(rates.values())) == 3  # each setting changes the estimate here


def test_batch_scope_shows_every_sample_kept_before_its_first_batch():
    """A component that reads the mask at an epoch start (AWE, LP's keep_selected) finds it:
    every sample kept before any batch was ranked, then the batches' own masks."""
    h = _harness({"scope": "batch", "rate": 0.5}).setup()
    h.epoch_start(0)
    mask = h.run.ledger["select/small_loss"]
    assert mask.dtype == torch.bool and bool(mask.all()) and len(mask) == h.run.ledger.size
    assert h.run.ledger.column("select/small_loss").kind == "mask"
    rows = torch.arange(10)
    batch_mask = h.component.select(h.ctx, h.batch(rows))
    assert int(batch_mask.sum()) == kept_count(10, 0.5)
    h.run.ledger.write("select/small_loss", rows, batch_mask, producer="small_loss", kind="mask")
    h.epoch_start(1)  # the next epoch start leaves the batches' masks as they are
    assert torch.equal(h.run.ledger["select/small_loss"][rows], batch_mask)

