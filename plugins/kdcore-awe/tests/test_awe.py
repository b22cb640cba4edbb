"""AWE: prototypes, ambiguity, both weight forms, alignment by sample id, release options."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import kdcore
from kdcore import PluginHost, RecipeError
from kdcore.context import SCALAR_KINDS
from kdcore.plan import build_plan
from kdcore.recipe import recipe_from_dict
from kdcore.testing import TinyNet as Net
from kdcore.testing import component, harness, run_tiny, stage, tiny_recipe
from kdcore_awe import AWE, WeightNet, ambiguity_profile, class_prototypes
from kdcore_awe.awe import AWEParams, ascending_ranks, confidence_weights


def _recipe(params: dict, lr: float = 0.0, epochs: int = 1) -> dict:
    """One stage of the student: dataset-scope small-loss selection, AWE on the CE term, CE."""
    student = {"arch": "mlp", "params": {"hidden": [16]}, "optimizer": {"lr": lr}}
    return tiny_recipe(
        stage("s", epochs, ["student"],
              component("small_loss", params={"scope": "dataset", "mask_loss": False}),
              component("awe", terms=["ce"], params=params),
              component("ce")),
        models={"student": student}, name="awe", run={"checkpoint_interval_s": 30.0},
    )


def _run(tmp_path, params, lr=0.0, epochs=1):
    tmp_path.mkdir(parents=True, exist_ok=True)
    run_tiny(_recipe(params, lr=lr, epochs=epochs), tmp_path / "run")
    return kdcore.History(tmp_path / "run")


def test_prototypes_guard_empty_classes_and_ambiguity_is_cosine():
    f = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    protos = class_prototypes(f, torch.tensor([0, 0, 1]), 3)
    assert torch.allclose(protos, torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))
    amb = ambiguity_profile(f, protos)
    assert torch.allclose(amb[:, :2], torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    assert torch.isfinite(amb).all()


def test_weightnet_shape_and_range():
    torch.manual_seed(0)
    net = WeightNet(4)
    out = net(torch.randn(5, 4), torch.eye(4)[[0, 1, 2, 3, 0]])
    assert out.shape == (5,) and ((out > 0) & (out < 1)).all()
    assert isinstance(net.net[1], torch.nn.PReLU) and net.net[1].weight.numel() == 1


def _harness(params, n=60, c=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    noisy = torch.randint(0, c, (n,), generator=g)
    torch.manual_seed(0)
    return harness(AWE, params, x=x, noisy_label=noisy, num_classes=c,
                   models={"student": Net(c=c)}, name="awe", terms=("ce",))


def test_loss_weights_stay_aligned_with_sample_ids():
    """Each sample's cosine weight is a function of that sample alone (the student is fixed
    here): a shuffled batch gets exactly its own rows' weights."""
    h = _harness({"loss_mode": "cosine"}).setup()
    h.epoch_start(0)
    with torch.no_grad():
        feats = h.run.models["student"](h.run.data.train.x)[1]
    labels = h.run.ledger["base_target"].argmax(1)
    amb = ambiguity_profile(feats, class_prototypes(feats, labels, 4))
    expected = torch.sigmoid(amb[torch.arange(len(labels)), labels])
    index = torch.randperm(60, generator=torch.Generator().manual_seed(1))[:16]
    w = h.component.weight(h.ctx, h.batch(index))
    torch.testing.assert_close(w.detach(), expected[index])


@pytest.mark.slow
def test_seed_weights_aligned_and_release_shuffle_permutes(tmp_path):
    params = {"seed_mode": "cosine", "loss_mode": "none", "selection": "select/small_loss"}
    with _run(tmp_path, params) as h:
        aligned = h.column("awe/seed_weight", 0)
    with _run(tmp_path / "b", {**params, "seed_alignment": "release_shuffled"}) as h:
        shuffled = h.column("awe/seed_weight", 0)
    assert not np.array_equal(aligned, shuffled)
    np.testing.assert_array_equal(np.sort(aligned), np.sort(shuffled))  # same values, moved
    # sigmoid of a cosine lies in (sigmoid(-1), sigmoid(1)) = (0.269, 0.731)
    lo, hi = 1 / (1 + math.e), 1 / (1 + math.exp(-1))
    assert ((aligned >= lo - 1e-3) & (aligned <= hi + 1e-3)).all()


def test_release_d2_makes_the_ce_term_mean_ce_times_mean_weight():
    """D2: every sample of a batch gets the batch mean of the weights, so the engine's
    weighted term ``mean(w * CE)`` (no mask) is ``mean(CE) * mean(w)``."""
    index = torch.arange(12)
    plain = _harness({"loss_mode": "cosine"}).setup()
    d2 = _harness({"loss_mode": "cosine", "batch_mean_weight": True}).setup()
    w = plain.component.weight(plain.ctx, plain.batch(index)).detach()
    w_d2 = d2.component.weight(d2.ctx, d2.batch(index)).detach()
    torch.testing.assert_close(w_d2, w.mean().expand(12))
    loss = torch.linspace(0.5, 3.0, 12)
    assert (loss * w_d2).mean().item() == pytest.approx(loss.mean().item() * w.mean().item())
    assert (loss * w).mean().item() != pytest.approx(loss.mean().item() * w.mean().item())


@pytest.mark.slow
def test_learned_weightnet_trains_and_zero_grad_option(tmp_path):
    with _run(tmp_path, {"loss_mode": "learned"}, lr=0.05, epochs=2) as h:
        w = h.column("weight/awe")
        assert w.shape[0] == 2 and np.isfinite(w.astype(np.float64)).all()
        # the objective only pushes the weights down (spec 1.12 q2): they fall
        assert w[1].astype(np.float64).mean() < w[0].astype(np.float64).mean()


@pytest.mark.slow
@pytest.mark.parametrize("cut", [(1, 0, "s"), (0, 1, "t"), (1, 1, "t")])
def test_a_run_resumed_keeps_d3s_accumulated_gradients(tmp_path, cut):
    """zero_grad = false (D3): the WeightNet's gradients are state within a stage (a stage
    carries the network and its optimiser over, not them); on the code before, a run cut in
    a stage's second epoch resumed with them at 0 and its last epochs' losses differed."""
    from kdcore.testing import InterruptAt, Interrupted, assert_same_history

    params = {"loss_mode": "learned", "zero_grad": False, "seed_alignment": "release_shuffled"}
    recipe = recipe_from_dict(tiny_recipe(
        *(stage(name, 2, ["student"], component("awe", params=params), component("ce"))
          for name in ("s", "t")), train_subset=100, seed=1))
    kdcore.run_recipe(recipe, out=str(tmp_path / "whole"), progress=False)
    with pytest.raises(Interrupted):
        kdcore.run_recipe(recipe, out=str(tmp_path / "cut"), progress=False,
                          host=PluginHost(extra=[InterruptAt(*cut)]))
    kdcore.run_recipe(recipe, out=str(tmp_path / "cut"), resume=True, progress=False)
    assert_same_history(tmp_path / "whole", tmp_path / "cut")


def _plan(*components):
    recipe = tiny_recipe(stage("s", 1, ["student"], *components, component("ce")),
                         models={"student": {"arch": "mlp", "params": {"hidden": [16]}}})
    return build_plan(recipe_from_dict(recipe), PluginHost())


def test_plan_checks_the_selection_column_and_the_student_role():
    selection = component("small_loss", params={"scope": "dataset", "mask_loss": False})
    awe = component("awe", terms=["ce"], params={"selection": "select/small_loss",
                                                 "seed_mode": "cosine"})
    plan = _plan(selection, awe)
    assert "awe/seed_weight" in plan.stages[0].components[1].written_columns()
    with pytest.raises(RecipeError, match="'awe'.*reads ledger column 'select/nope'"):
        _plan(selection, component("awe", terms=["ce"], params={"selection": "select/nope"}))
    with pytest.raises(RecipeError, match="reads ledger column 'select/small_loss'"):
        _plan(awe, selection)  # the selection must come first
    with pytest.raises(RecipeError, match="'awe'.*model role 'teacher'"):
        _plan(component("awe", terms=["ce"], params={"student": "teacher"}))


@pytest.mark.parametrize("seed_mode", ["none", "cosine", "margin", "learned"])
def test_seed_weights_are_declared_only_where_the_seed_mode_writes_them(seed_mode):
    """With ``seed_mode = "none"`` nothing writes ``awe/seed_weight``: a label propagation
    reading it is refused by the plan (it had passed ``kdcore check`` and stopped the run at its
    stage's first epoch start); every other mode writes it at the epoch start."""
    selection = component("small_loss", params={"scope": "dataset", "mask_loss": False})
    awe = component("awe", params={"selection": "select/small_loss", "seed_mode": seed_mode})
    lp = component("teacher_lp", params={"seeds": "noisy", "graph": "student",
                                         "seed_weights": "awe/seed_weight"})
    if seed_mode == "none":
        with pytest.raises(RecipeError, match="'teacher_lp'.*reads ledger column "
                                              "'awe/seed_weight', which nothing placed before"):
            _plan(selection, awe, lp)
        return
    plan = _plan(selection, awe, lp)
    declared = plan.stages[0].components[1]
    assert "awe/seed_weight" in declared.written_columns()
    assert declared.writes_at_start() == {"awe/seed_weight": "on_epoch_start"}
    assert declared.reads_at_start() == {"select/small_loss": "on_epoch_start"}
    h = _harness({"seed_mode": seed_mode, "loss_mode": "none"}).setup()
    h.epoch_start(0)
    assert h.run.ledger["awe/seed_weight"].shape == (60,)


def test_a_column_read_as_selection_and_confidence_must_be_a_mask():
    both = _harness({"selection": "select/x", "confidence": "select/x"}).component
    assert both.read_kinds() == {"select/x": "mask"}
    apart = _harness({"selection": "select/x", "confidence": "lp/c"}).component
    assert apart.read_kinds() == {"lp/c": SCALAR_KINDS, "select/x": "mask"}


@pytest.mark.parametrize(("other", "holds"), [("selection", "a mask"),
                                              ("confidence", "one number per sample")])
def test_the_propagated_labels_are_not_the_selection_or_the_confidence_column(other, holds):
    params = {"loss_mode": "confidence", "selection": "select/x", "confidence": "lp/c",
              "propagated": "lp/l"}
    AWEParams(**params)
    params["propagated"] = params[other]
    with pytest.raises(ValueError, match=re.escape(
            f"propagated and {other} name the same column '{params[other]}', which cannot hold "
            f"the propagated labels and the {other} ({holds}) at once")):
        AWEParams(**params)
    AWEParams(**{**params, "loss_mode": "cosine"})  # not read there


def test_loss_weights_are_declared_only_where_the_loss_mode_weights_a_term():
    """With ``loss_mode = "none"`` the ``weight`` hook abstains on every batch: its columns
    are never written, so a reader of them is refused by the plan."""
    none = _harness({"loss_mode": "none", "selection": "select/x"}).component
    assert none.written_columns() == ()
    assert (none.writes_at_start(), none.reads_at_start()) == ({}, {})
    cosine = _harness({"loss_mode": "cosine", "seed_mode": "cosine"}).component
    assert cosine.written_columns() == ("awe/seed_weight", "weight/awe", "weight/awe/student")
    assert cosine.reads_at_start() == {}  # no selection: the student's predictions


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_margin_weights_against_a_numpy_transcription(tau):
    """``margin``: sigmoid((a_{i,y} - max_{c != y} a_ic) / tau), then (``mean_one``) divided by
    the batch mean; transcribed with NumPy from the features and the current targets."""
    h = _harness({"loss_mode": "margin", "margin_temperature": tau, "mean_one": True}).setup()
    h.epoch_start(0)
    with torch.no_grad():
        feats = h.run.models["student"](h.run.data.train.x)[1].double().numpy()
    labels = h.run.ledger["base_target"].argmax(1).numpy()
    protos = np.stack([feats[labels == c].mean(0) if (labels == c).any() else np.zeros(6)
                       for c in range(4)])
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    amb = unit @ (protos / np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)).T
    rows = np.arange(len(labels))
    own = amb[rows, labels]
    others = amb.copy()
    others[rows, labels] = -np.inf
    w = 1 / (1 + np.exp(-(own - others.max(1)) / tau))
    index = torch.tensor([3, 17, 5, 40, 22, 9, 31, 58])
    expected = w[index.numpy()] / w[index.numpy()].mean()
    got = h.component.weight(h.ctx, h.batch(index)).detach().double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got.mean() == pytest.approx(1.0)


def test_margin_seed_weights_need_no_training():
    h = _harness({"seed_mode": "margin", "loss_mode": "none"}).setup()
    h.epoch_start(0)
    seeds = h.run.ledger["awe/seed_weight"]
    assert ((seeds > 0) & (seeds < 1)).all() and seeds.std() > 0


def _numpy_ce_on_targets(h) -> np.ndarray:
    """Each training sample's soft CE of the student's logits against its current target."""
    targets = h.run.ledger["base_target"].double().numpy()
    with torch.no_grad():
        logits = h.run.models["student"](h.run.data.train.x)[0].double().numpy()
    log_p = logits - logits.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    return -(targets * log_p).sum(1)


def test_loss_posterior_weights_are_the_clean_posterior_of_the_losses_on_the_targets():
    """``loss_posterior``: the mixture's clean posterior (kdcore-selection's, tested there
    against NumPy) of each sample's CE against its current target, from the eval-mode pass,
    indexed by sample id and divided by the batch mean; the CE is transcribed with NumPy."""
    from kdcore_selection.small_loss import mixture_posterior

    h = _harness({"loss_mode": "loss_posterior", "mean_one": True}).setup()
    h.epoch_start(0)
    ce = _numpy_ce_on_targets(h)
    post = mixture_posterior(torch.from_numpy(ce)).numpy()
    index = torch.tensor([7, 0, 33, 12, 50, 21])
    expected = post[index.numpy()] / post[index.numpy()].mean()
    weights = h.component.weight(h.ctx, h.batch(index)).detach()
    assert weights.dtype == torch.float32  # the features' dtype, not the EM's float64
    got = weights.double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    raw = _harness({"loss_mode": "loss_posterior"}).setup()
    raw.epoch_start(0)
    np.testing.assert_allclose(raw.component.weight(raw.ctx, raw.batch(index)).double().numpy(),
                               post[index.numpy()], rtol=1e-4, atol=1e-6)


def test_epoch_weights_are_computed_once_per_epoch():
    """Within an epoch the posteriors stay those of the targets its first batch saw (LP runs
    at the epoch start); the next epoch recomputes them from the targets then."""
    h = _harness({"loss_mode": "loss_posterior"}).setup()
    index = torch.arange(20)
    h.epoch_start(0)
    first = h.component.weight(h.ctx, h.batch(index)).clone()
    base = h.run.ledger["base_target"]
    flipped = base.roll(1, dims=1)  # every target moved to the next class
    base.copy_(flipped)
    torch.testing.assert_close(h.component.weight(h.ctx, h.batch(index)), first)
    h.epoch_start(1)
    assert not torch.allclose(h.component.weight(h.ctx, h.batch(index)), first)
    again = _harness({"loss_mode": "loss_posterior"}).setup()
    again.run.ledger["base_target"].copy_(flipped)
    again.epoch_start(1)
    torch.testing.assert_close(h.component.weight(h.ctx, h.batch(index)),
                               again.component.weight(again.ctx, again.batch(index)))


def test_loss_rank_weights_fall_linearly_with_the_loss_rank():
    """``loss_rank``: 1 for the smallest loss on the current targets, 0 for the largest, linear
    in the rank between (ties by position), then divided by the batch mean; NumPy ranks."""
    h = _harness({"loss_mode": "loss_rank", "mean_one": True}).setup()
    h.epoch_start(0)
    ce = _numpy_ce_on_targets(h)
    ranks = np.empty(len(ce))
    ranks[np.argsort(ce, kind="stable")] = np.arange(len(ce))
    w = 1.0 - ranks / (len(ce) - 1)
    index = torch.tensor([7, 0, 33, 12, 50, 21, int(np.argmin(ce)), int(np.argmax(ce))])
    expected = w[index.numpy()] / w[index.numpy()].mean()
    got = h.component.weight(h.ctx, h.batch(index)).detach()
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-7)


def test_loss_rank_of_two_samples_is_one_and_zero():
    h = _harness({"loss_mode": "loss_rank"}, n=2, c=2).setup()
    h.epoch_start(0)
    w = h.component.weight(h.ctx, h.batch(torch.arange(2))).detach()
    assert sorted(w.tolist()) == [0.0, 1.0]


def _confidence_harness(params, conf, selected=None):
    """AWE in ``confidence`` mode over the ledger columns ``lp/x/confidence`` and, when given,
    the selection mask ``select/s`` (what an LP component and a selector placed before it
    write)."""
    given = {"loss_mode": "confidence", "confidence": "lp/x/confidence", **params}
    if selected is not None:
        given["selection"] = "select/s"
    h = _harness(given, n=len(conf)).setup()
    h.run.ledger.add("lp/x/confidence", torch.from_numpy(conf), producer="lp")
    if selected is not None:
        h.run.ledger.add("select/s", torch.from_numpy(selected), producer="s", kind="mask")
    h.epoch_start(0)
    return h


def _numpy_confidence_weights(conf, selected, ramp, contradicted=None):
    """The documented weights, transcribed: q = each confidence's rank fraction over all
    samples (ties by position); the unselected ranked by q and the contradicted selected ones
    by 1 - q, together (ties by position); everyone else weighs 1."""
    n = len(conf)
    q = np.empty(n, dtype=np.int64)  # in whole ranks, so that q and 1 - q tie exactly
    q[np.argsort(conf, kind="stable")] = np.arange(n)
    against = selected & contradicted if contradicted is not None else np.zeros_like(selected)
    score = np.where(against, n - 1 - q, q)
    pool = np.flatnonzero(~selected | against)
    ranks = np.empty(len(pool))
    ranks[np.argsort(score[pool], kind="stable")] = np.arange(len(pool))
    w = np.ones(n)
    w[pool] = np.minimum(ranks / (len(pool) - 1) / ramp, 1.0)
    return w


@pytest.mark.parametrize("ramp", [0.25, 0.4, 1.0])
def test_confidence_weights_rank_the_unselected_samples_against_numpy(ramp):
    """Selected samples weigh 1; the others, ranked by confidence (ties by position), weigh
    ``min(rank / (n - 1) / ramp, 1)``: 0 for the least confident, 1 from the ``ramp`` share on."""
    rng = np.random.default_rng(3)
    conf = rng.random(60).astype(np.float32)
    conf[[4, 9, 30]] = conf[17]  # ties
    selected = rng.random(60) < 0.4
    h = _confidence_harness({"ramp": ramp}, conf, selected)
    w = _numpy_confidence_weights(conf, selected, ramp)
    index = torch.tensor([17, 4, 9, 30, 0, int(np.argmin(np.where(selected, 2, conf))),
                          int(np.flatnonzero(selected)[0]), 59])
    got = h.component.weight(h.ctx, h.batch(index)).detach()
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), w[index.numpy()], rtol=1e-6, atol=1e-7)
    assert got[5] == 0.0 and got[6] == 1.0  # the least confident unselected, a selected one


@pytest.mark.parametrize("ramp", [0.4, 1.0])
def test_selected_samples_the_propagation_contradicts_rank_by_their_contradiction(ramp):
    """A selected sample whose noisy label the propagated label contradicts is ambiguous: it
    joins the ranked (unselected) samples, and its confidence counts against its label (a
    confident contradiction ranks lowest, a hesitant one near the top). Unselected samples
    the propagation relabels are not contradicted (the propagated label is the one they train
    on)."""
    rng = np.random.default_rng(5)
    n = 50
    conf = rng.random(n).astype(np.float32)
    conf[[6, 11]] = conf[2]  # ties, broken by position
    selected = rng.random(n) < 0.6
    h = _harness({"loss_mode": "confidence", "confidence": "lp/x/confidence",
                  "selection": "select/s", "propagated": "lp/x/label", "ramp": ramp},
                 n=n).setup()
    noisy = h.run.ledger["noisy_label"].numpy()
    propagated = noisy.copy()
    flip = rng.random(n) < 0.3
    propagated[flip] = (noisy[flip] + 1) % 4
    h.run.ledger.add("lp/x/confidence", torch.from_numpy(conf), producer="lp")
    h.run.ledger.add("lp/x/label", torch.from_numpy(propagated), producer="lp", kind="label")
    h.run.ledger.add("select/s", torch.from_numpy(selected), producer="s", kind="mask")
    h.epoch_start(0)
    got = h.component.weight(h.ctx, h.batch(torch.arange(n))).detach().double().numpy()
    contradicted = propagated != noisy
    expected = _numpy_confidence_weights(conf, selected, ramp, contradicted)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    against = selected & contradicted
    assert against.sum() >= 3 and (~selected & contradicted).any()
    assert (got[selected & ~contradicted] == 1.0).all()
    # the more confident the contradiction, the lower the weight; before the ramp caps them,
    # the most confident one is below the median unselected sample, the least confident above
    order = np.flatnonzero(against)[np.argsort(conf[against], kind="stable")]
    assert (np.diff(got[order]) <= 0).all() and got[order[0]] > got[order[-1]]
    unramped = _numpy_confidence_weights(conf, selected, 1.0, contradicted)
    assert unramped[order[-1]] < np.median(unramped[~selected]) < unramped[order[0]]
    # without the column, or without a selection, nothing is contradicted
    plain = _numpy_confidence_weights(conf, selected, ramp)
    np.testing.assert_allclose(
        confidence_weights(torch.from_numpy(conf), torch.from_numpy(selected), ramp).numpy(),
        plain, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        confidence_weights(torch.from_numpy(conf), None, ramp,
                           torch.from_numpy(contradicted)).numpy(),
        _numpy_confidence_weights(conf, np.zeros(n, dtype=bool), ramp), rtol=1e-6, atol=1e-7)


def test_the_propagated_column_must_hold_labels_where_it_is_read():
    given = {"loss_mode": "confidence", "confidence": "lp/x/confidence",
             "selection": "select/s", "propagated": "lp/x/label"}
    scalar = ("mask", "weight", "value", "exact")
    assert _harness(given).component.read_kinds() == {
        "lp/x/label": "label", "select/s": "mask", "lp/x/confidence": scalar}
    assert _harness({**given, "propagated": ""}).component.read_kinds() == {
        "select/s": "mask", "lp/x/confidence": scalar}
    assert _harness({**given, "selection": ""}).component.read_kinds() == {
        "lp/x/confidence": scalar}
    assert _harness({**given, "loss_mode": "cosine"}).component.read_kinds() == {
        "select/s": "mask", "lp/x/confidence": scalar}
    assert _harness({"loss_mode": "cosine"}).component.read_kinds() == {}


def test_confidence_weights_without_selection_rank_everyone_and_mean_one_rescales():
    rng = np.random.default_rng(4)
    conf = rng.random(40).astype(np.float32)
    none = np.zeros(40, dtype=bool)
    h = _confidence_harness({"ramp": 0.5, "mean_one": True}, conf)
    index = torch.arange(0, 40, 3)
    w = _numpy_confidence_weights(conf, none, 0.5)[index.numpy()]
    got = h.component.weight(h.ctx, h.batch(index)).detach().double().numpy()
    np.testing.assert_allclose(got, w / w.mean(), rtol=1e-6)


def test_confidence_weights_of_one_or_two_unselected_samples_and_their_dtype():
    """One unselected sample has no rank to divide by: it keeps weight 1 (not 0 / 0). Two
    are 0 and 1 (the higher ``1 / ramp``, capped). Weights and ranks are float32 whatever the
    confidences' dtype."""
    conf = torch.tensor([0.9, 0.2, 0.5], dtype=torch.float64)
    one = confidence_weights(conf, torch.tensor([True, False, True]), 1.0)
    assert one.tolist() == [1.0, 1.0, 1.0] and one.dtype == torch.float32
    two = confidence_weights(conf, torch.tensor([True, False, False]), 0.5)
    assert two.tolist() == [1.0, 0.0, 1.0]
    assert confidence_weights(conf, torch.tensor([False, False, True]), 1.0).tolist() == \
        [1.0, 0.0, 1.0]
    ranks = ascending_ranks(torch.tensor([30, 10, 20, 10]))
    assert ranks.dtype == torch.float32 and ranks.tolist() == [3.0, 0.0, 2.0, 1.0]


def test_confidence_mode_needs_its_column_written_before_it():
    message = ('loss_mode "confidence" needs the confidence column (for example '
               '"lp/teacher_lp/confidence" of an LP component placed before it)')
    with pytest.raises(RecipeError) as refused:
        _plan(component("awe", terms=["ce"], params={"loss_mode": "confidence"}))
    assert message in str(refused.value)
    with pytest.raises(RecipeError, match="'ramp' must be in"):
        _plan(component("awe", terms=["ce"], params={"loss_mode": "confidence", "ramp": 0,
                                                     "confidence": "lp/teacher_lp/confidence"}))
    lp = component("teacher_lp", params={"seeds": "noisy", "graph": "student"})
    awe = component("awe", terms=["ce"], params={"loss_mode": "confidence",
                                                 "confidence": "lp/teacher_lp/confidence"})
    plan = _plan(lp, awe)
    assert "lp/teacher_lp/confidence" in plan.stages[0].components[1].reads()
    with pytest.raises(RecipeError, match="reads ledger column 'lp/teacher_lp/confidence'"):
        _plan(awe, lp)
