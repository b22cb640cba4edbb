"""The components in the engine: ledger masks, logged thresholds, the special cases as whole
runs, update orders, peer counts and parameter errors."""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import numpy as np
import pytest
import torch

import kdcore
from kdcore.testing import ColumnReaderPlugin, harness
from kdcore_smkd import DML, SMKD
from kdcore_smkd.losses import dml_loss, selection_mask, smkd_loss, threshold_at

PEERS = ("peer_a", "peer_b")
MIXED = {"schedule": "static", "threshold": 0.12, "certainty": "max_prob"}  # selects ~half


class Recorder:
    """Copies of the models at the start and end, and every batch as trained."""

    def __init__(self, check=None):
        self.check = check
        self.start: dict[str, torch.nn.Module] = {}
        self.end: dict[str, dict[str, torch.Tensor]] = {}
        self.batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.results: list = []

    @kdcore.hookimpl
    def kdcore_run_start(self, ctx):
        self.start = {r: copy.deepcopy(m) for r, m in ctx.models.items()}

    @kdcore.hookimpl
    def kdcore_batch_end(self, ctx, batch, losses):
        self.batches.append((batch.index.clone(), batch.x.clone(), batch.targets.clone()))
        if self.check is not None:
            self.results.append(self.check(ctx, batch, losses))

    @kdcore.hookimpl
    def kdcore_run_end(self, ctx, summary):
        self.end = {r: {k: v.detach().clone() for k, v in m.state_dict().items()}
                    for r, m in ctx.models.items()}


def _assert_same_weights(a, b, **tol):
    for role in PEERS:
        for key in a[role]:
            torch.testing.assert_close(a[role][key], b[role][key], **tol, msg=f"{role}.{key}")


# -- the ledger record --------------------------------------------------------------------------


class Linear(torch.nn.Module):
    """A model as kdcore's return ``(logits, features)``."""

    def __init__(self, d: int, c: int):
        super().__init__()
        self.fc = torch.nn.Linear(d, c)

    def forward(self, x):
        return self.fc(x), x


def _peers_harness(cls, params, train=PEERS):
    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.randint(0, 4, (40,))
    models = {r: Linear(6, 4) for r in PEERS}
    return harness(cls, params, x=x, noisy_label=y, models=models, train=train, serves=PEERS,
                   name="smkd")


def test_transfer_records_each_peers_mask_at_the_batch_rows():
    h = _peers_harness(SMKD, MIXED).setup()
    h.epoch_start(0)
    rows = torch.tensor([7, 3, 31, 0, 12, 25])
    batch = h.batch(rows)
    losses = h.component.transfer(h.ctx, batch)
    z = {r: batch.out(r).logits.detach() for r in PEERS}
    for role, other in (PEERS, PEERS[::-1]):
        torch.testing.assert_close(
            losses[role], smkd_loss(z[role], [z[other]], batch.targets, threshold=0.12,
                                    certainty_measure="max_prob"))
        column = h.run.ledger[f"select/smkd/{role}"]
        assert torch.equal(column[rows], selection_mask(z[role], 0.12, "max_prob"))
        assert h.run.ledger.producer(f"select/smkd/{role}") == "smkd"
        untouched = torch.ones(40, dtype=torch.bool)
        untouched[rows] = False
        assert not column[untouched].any()
    assert h.metrics["select/smkd/threshold"] == pytest.approx(0.12)
    assert h.metrics["select/smkd/threshold_start"] == pytest.approx(0.12)
    assert batch.store.get("smkd", "in_turn") is None  # simultaneous: no turn


def test_in_turn_keeps_its_turn_in_the_batch_store_under_its_name():
    h = _peers_harness(DML, {"order": "in_turn"}).setup()
    batch = h.batch([0, 1, 2, 3])
    h.component.transfer(h.ctx, batch)
    turn = batch.store.require("smkd", "in_turn")
    assert turn.learners == list(PEERS) and not turn.finished


def test_a_frozen_peer_gets_no_loss_but_its_mask_is_recorded():
    h = _peers_harness(DML, {}, train=("peer_a",)).setup()
    losses = h.component.transfer(h.ctx, h.batch([4, 5]))
    assert set(losses) == {"peer_a"}
    assert h.run.ledger["select/smkd/peer_b"][[4, 5]].all()




@pytest.mark.slow
def test_masks_are_recorded_at_the_batch_rows_and_do_not_mask_the_loss(run_peers, component):
    def check(ctx, batch, losses):
        out = {r: batch.out(r).logits.detach() for r in PEERS}  # cached: before the step
        masks_ok = all(
            torch.equal(ctx.ledger[f"select/smkd/{r}"][batch.index],
                        selection_mask(out[r], 0.12, "max_prob")) for r in PEERS)
        # the engine's loss is the mean over *every* sample of the batch
        expected = {r: smkd_loss(out[r], [out[o] for o in PEERS if o != r], batch.targets,
                                 threshold=0.12, certainty_measure="max_prob").mean()
                    for r in PEERS}
        loss_ok = all(math.isclose(float(losses[r].detach()), float(expected[r].detach()),
                                   rel_tol=1e-5)
                      for r in PEERS)
        selected = int(ctx.ledger["select/smkd/peer_a"][batch.index].sum())
        return masks_ok, loss_ok, selected, len(batch), bool((batch.index != torch.arange(
            len(batch))).any())

    rec = Recorder(check)
    with run_peers(component("smkd", MIXED), observers=(rec,)) as h:
        assert rec.results and all(m and lo for m, lo, *_ in rec.results)
        assert all(shuffled for *_, shuffled in rec.results)  # rows are not batch positions
        selected = sum(s for _, _, s, _, _ in rec.results)
        assert 0 < selected < sum(n for *_, n, _ in rec.results)  # a real mix
        clean = h.data("clean_mask").astype(bool)
        for role in PEERS:
            column = h.column(f"select/smkd/{role}", 0).astype(bool)
            assert h.metric(f"select/smkd/{role}/fraction")[0] == pytest.approx(column.mean())
            assert h.metric(f"select/smkd/{role}/precision")[0] == pytest.approx(
                (column & clean).sum() / column.sum())
            assert h.metric(f"select/smkd/{role}/recall")[0] == pytest.approx(
                (column & clean).sum() / clean.sum())
        assert h.metric("select/smkd/threshold")[0] == pytest.approx(0.12)
        for split in ("val", "test"):
            assert 0 <= h.metric(f"ensemble/smkd/{split}_acc")[0] <= 1
        assert h.metric("better/smkd/test_acc")[0] in (h.metric("test/peer_a/acc")[0],
                                                       h.metric("test/peer_b/acc")[0])


@pytest.mark.slow
def test_progressive_threshold_is_logged_per_epoch(run_peers, component):
    params = {"schedule": "progressive", "exp_base": 8.0, "transit": 0.4}
    with run_peers(component("smkd", params), epochs=3, batch=50) as h:
        n = len(h.data("clean_mask"))
        nb = math.ceil(n / 50)
        total = 3 * nb
        kw = {"schedule": "progressive", "threshold": 0.0, "exp_base": 8.0, "transit": 0.4}
        start = [threshold_at(e * nb, total, **kw) for e in range(3)]
        mean = [np.mean([threshold_at(e * nb + b, total, **kw) for b in range(nb)])
                for e in range(3)]
        np.testing.assert_allclose(h.metric("select/smkd/threshold_start"), start, rtol=1e-12)
        np.testing.assert_allclose(h.metric("select/smkd/threshold"), mean, rtol=1e-12)
        assert start[0] == pytest.approx(1 - 1 / (1 + math.exp(8 * 0.4)))


# -- the special cases, as whole runs -----------------------------------------------------------


@pytest.mark.slow
def test_zero_knowledge_run_is_independent_training(run_peers, component):
    """threshold > 1: fallback none = plain CE on each peer; uniform = label smoothing."""
    runs = {
        "smkd_none": [component("smkd", {"schedule": "static", "threshold": 1.5,
                                         "fallback": "none"})],
        "ce": [component("ce")],
        "smkd_ls": [component("smkd", {"schedule": "static", "threshold": 1.5, "epsilon": 0.2})],
        "ls": [component("label_smoothing", {"epsilon": 0.2}), component("ce")],
    }
    ends = {}
    for name, comps in runs.items():
        rec = Recorder()
        run_peers(*comps, epochs=2, observers=(rec,), name=name).close()
        ends[name] = rec.end
    _assert_same_weights(ends["smkd_none"], ends["ce"], rtol=1e-5, atol=1e-6)
    _assert_same_weights(ends["smkd_ls"], ends["ls"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_all_knowledge_run_is_dml(run_peers, component):
    """threshold <= 0, epsilon 0.5, KL form and recipe weight 2 trains exactly as DML."""
    rec_s, rec_d = Recorder(), Recorder()
    run_peers(component("smkd", {"schedule": "static", "threshold": 0.0, "form": "kl",
                                 "epsilon": 0.5}, weight=2.0),
              epochs=2, observers=(rec_s,), name="smkd").close()
    with run_peers(component("dml"), epochs=2, observers=(rec_d,), name="dml") as h:
        for role in PEERS:  # DML uses every sample's knowledge: all-true masks
            assert h.metric(f"select/dml/{role}/fraction")[0] == 1.0
            assert h.metric(f"select/dml/{role}/precision")[0] == pytest.approx(
                h.data("clean_mask").mean())
    _assert_same_weights(rec_s.end, rec_d.end, rtol=1e-5, atol=1e-6)


# -- update order -------------------------------------------------------------------------------


def _replay(rec: Recorder, loss_fn, order: str) -> dict[str, dict[str, torch.Tensor]]:
    """Train copies of the starting models on the recorded batches by hand."""
    models = {r: copy.deepcopy(rec.start[r]) for r in PEERS}
    opts = {r: torch.optim.SGD(models[r].parameters(), lr=0.1, momentum=0.9,
                               weight_decay=5e-4) for r in PEERS}
    for _, x, q in rec.batches:
        z = {r: models[r](x)[0] for r in PEERS}
        if order == "simultaneous":
            total = sum(loss_fn(z[r], z[o].detach(), q).mean()
                        for r, o in (PEERS, PEERS[::-1]))
            for opt in opts.values():
                opt.zero_grad()
            total.backward()
            for opt in opts.values():
                opt.step()
        else:  # DML: A steps against B, then B against the updated A
            a, b = PEERS
            opts[a].zero_grad()
            loss_fn(z[a], z[b].detach(), q).mean().backward()
            opts[a].step()
            with torch.no_grad():
                z_a_new = models[a](x)[0]
            opts[b].zero_grad()
            loss_fn(z[b], z_a_new, q).mean().backward()
            opts[b].step()
    return {r: {k: v.detach() for k, v in models[r].state_dict().items()} for r in PEERS}


@pytest.mark.slow
@pytest.mark.parametrize(("use", "params", "loss_fn"), [
    ("dml", {}, lambda z, p, q: dml_loss(z, [p], q)),
    ("smkd", {"schedule": "static", "threshold": 0.12, "certainty": "max_prob"},
     lambda z, p, q: smkd_loss(z, [p], q, threshold=0.12, certainty_measure="max_prob")),
])
def test_in_turn_steps_each_peer_once_against_the_updated_peer(run_peers, component, use, params,
                                                                 loss_fn):
    ends = {}
    for order in ("simultaneous", "in_turn"):
        rec = Recorder()
        # a zero-weight CE on peer_b first makes the engine offer peer_b's backward first
        comps = (component("ce", models=["peer_b"], weight=0.0),
                 component(use, {**params, "order": order}))
        run_peers(*comps, observers=(rec,), name=order, batch=100).close()
        assert len(rec.batches) >= 3
        ends[order] = rec.end
        # one SGD step (momentum 0.9) per peer per batch, in the order given: a second step
        # of a peer, or a peer stepped against stale predictions, would not match
        _assert_same_weights(rec.end, _replay(rec, loss_fn, order), rtol=1e-5, atol=1e-6)
    with pytest.raises(AssertionError):
        _assert_same_weights(ends["simultaneous"], ends["in_turn"], rtol=1e-5, atol=1e-6)


# -- peers and parameters -----------------------------------------------------------------------


@pytest.mark.slow
def test_three_peers(run_peers, component):
    extra = {"peer_c": {"arch": "mlp", "params": {"hidden": [8]}, "optimizer": {"lr": 0.1}}}
    train = ["peer_a", "peer_b", "peer_c"]
    for use in ("smkd", "dml"):
        with run_peers(component(use, {"order": "in_turn"}), train=train,
                       extra_models=extra, name=use) as h:
            for role in ("peer_a", "peer_b", "peer_c"):
                assert f"select/{use}/{role}/fraction" in h.metric_names()
                assert np.isfinite(h.metric(f"train/{role}/{use}")).all()


@pytest.mark.slow
def test_a_frozen_peer_is_a_fixed_teacher(run_peers, component):
    comps = component("smkd", models=["peer_a", "peer_b"])
    with run_peers(comps, train=["peer_a"]) as h:
        assert "train/peer_a/smkd" in h.metric_names()
        assert "train/peer_b/smkd" not in h.metric_names()
        assert "select/smkd/peer_b/fraction" in h.metric_names()


def test_one_peer_is_an_error(plan, component):
    for use in ("smkd", "dml"):
        with pytest.raises(kdcore.RecipeError, match="two or more distinct peer models"):
            plan(component(use), train=["peer_a"])
        with pytest.raises(kdcore.RecipeError, match="two or more distinct peer models"):
            plan(component(use, models=["peer_a", "peer_a"]))


def test_bad_parameters_are_rejected(plan, component):
    cases = [({"epsilon": 1.5}, r"params\.epsilon.*\[0, 1\]"),
             ({"treshold": 0.3}, "did you mean 'threshold'"),
             ({"direction": "down"}, "'relax' or 'tighten'"),
             ({"temperature": 0}, r"temperature.*must be in \[0.001, 1000\]")]
    for params, message in cases:
        with pytest.raises(kdcore.RecipeError, match=message):
            plan(component("smkd", params))
    with pytest.raises(kdcore.RecipeError, match="'sum' or 'mean'"):
        plan(component("dml", {"peer_reduction": "avg"}))


@pytest.mark.parametrize("use", ["smkd", "dml"])
def test_plan_checks_the_selection_columns_and_the_peer_roles(plan, component, use):
    """Each peer's ``select/<name>/<role>`` is declared, written in ``transfer``: a reader
    of a later stage is wired; one before it, one at the start of its stage or in an earlier
    hook of its batches (the column is not there yet), or one reading a role the component
    does not serve, is refused."""
    reader = component("column_reader", {"column": f"select/{use}/peer_b"}, models=["peer_a"])
    mutual = component(use)
    comp = plan(mutual, later=[reader], plugins=(ColumnReaderPlugin(),)).stages[0].components[0]
    assert set(comp.written_columns()) >= {f"select/{use}/peer_a", f"select/{use}/peer_b"}
    assert comp.writes_in_batch() == {f"select/{use}/peer_a": "transfer",
                                      f"select/{use}/peer_b": "transfer"}
    assert comp.writes_at_start() == {}
    assert comp.roles() == () and comp.reads() == ()
    with pytest.raises(kdcore.RecipeError, match=f"'select/{use}/peer_b' in on_epoch_start, "
                       "before stage 'mutual' trains its first batch"):
        plan(mutual, reader, plugins=(ColumnReaderPlugin(),))
    with pytest.raises(kdcore.RecipeError, match=f"'select/{use}/peer_b'"):
        plan(reader, mutual, plugins=(ColumnReaderPlugin(),))
    other = component("column_reader", {"column": f"select/{use}/peer_c"}, models=["peer_a"])
    with pytest.raises(kdcore.RecipeError, match=f"'select/{use}/peer_c'"):
        plan(mutual, other, plugins=(ColumnReaderPlugin(),))
    # a peer that [models] does not define is refused before any component is built
    with pytest.raises(kdcore.RecipeError, match="unknown model role 'peer_c'"):
        plan(component(use, models=["peer_a", "peer_c"]))


class TakeOver(kdcore.Component):
    """Takes over every backward pass it is offered (a stand-in for a meta-learner), declaring
    the roles it serves, or none (a third party's oversight)."""

    declares = True

    def backward_roles(self):
        return tuple(self.models) if self.declares else ()

    def backward(self, ctx, batch, role, loss):
        loss.backward()
        return True


class Undeclared(TakeOver):
    declares = False


class TakeOverPlugin:
    @kdcore.hookimpl
    def kdcore_add_components(self):
        return {"take_over": TakeOver, "undeclared_take_over": Undeclared}


@pytest.mark.slow
@pytest.mark.parametrize(("use", "match"), [
    ("take_over", "both take over the backward pass of 'peer_a'"),  # the plan's check
    ("undeclared_take_over", "took over the backward pass of 'peer_a', which its "
                             r"backward_roles\(\) does not name"),  # the engine's, at once
])
def test_in_turn_refuses_to_share_the_backward_pass(run_peers, component, use, match):
    comps = (component(use), component("dml", {"order": "in_turn"}))
    with pytest.raises(kdcore.KdcoreError, match=match):
        run_peers(*comps, observers=(TakeOverPlugin(),))


class SharedWeight(kdcore.Component):
    """Weights that carry a graph to a parameter of the component, one tensor for every model
    it serves (AWE's learned WeightNet does the same)."""

    made: ClassVar[list[SharedWeight]] = []

    def setup(self, ctx):
        self.theta = torch.zeros((), requires_grad=True)
        self.made.append(self)

    def weight(self, ctx, batch):
        return 2 * torch.sigmoid(self.theta).expand(len(batch))


class SharedWeightPlugin:
    @kdcore.hookimpl
    def kdcore_add_components(self):
        return {"shared_weight": SharedWeight}


@pytest.mark.slow
def test_in_turn_backs_up_each_peer_through_a_graph_they_share(run_peers, component):
    """The second peer's backward went through the weights' graph again, which the first had
    freed ("Trying to backward through the graph a second time")."""
    SharedWeight.made.clear()
    comps = (component("shared_weight"), component("dml", {"order": "in_turn"}))
    with run_peers(*comps, observers=(SharedWeightPlugin(),)) as h:
        assert np.isfinite(h.metric("train/peer_b/dml")).all()
    assert SharedWeight.made[-1].theta.grad is not None  # the peers' losses reached it



@pytest.mark.parametrize("use", ["dml", "smkd"])
def test_in_turn_declares_the_backward_passes_it_takes_over(use):
    from kdcore import PluginHost
    from kdcore.plan import build_plan
    from kdcore.recipe import recipe_from_dict
    from kdcore.testing import check_tiny, tiny_recipe

    peers = {"student": {"arch": "mlp", "params": {"hidden": [16]}},
             "peer": {"arch": "mlp", "params": {"hidden": [8]}}}
    for order, taken in (("in_turn", ("student", "peer")), ("simultaneous", ())):
        entry = {"use": use, "params": {"order": order}}
        comp = build_plan(recipe_from_dict(tiny_recipe(
            {"name": "s", "epochs": 1, "train": ["student", "peer"], "components": [entry]},
            models=peers)), PluginHost()).stages[0].components[0]
        assert comp.backward_roles() == taken
    # and check refuses two that take the same one
    two = tiny_recipe({"name": "s", "epochs": 1, "train": ["student", "peer"], "components": [
        {"use": use, "name": "a", "params": {"order": "in_turn"}},
        {"use": use, "name": "b", "params": {"order": "in_turn"}}]}, models=peers)
    with pytest.raises(kdcore.KdcoreError, match="both take over the backward pass"):
        check_tiny(two)
