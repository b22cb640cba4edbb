"""The LP component's wiring, checked piece by piece (docs/mutation.md, kdcore-lp-component):
the roles it declares, every setting handed to the graph and the solver, the graph cache, the
kept samples, the columns' kinds, its metrics against NumPy counts, and when it runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kdcore
import kdcore_lp.component as lp_component
from kdcore.losses import one_hot
from kdcore.testing import harness
from kdcore_lp import TeacherLP

N, D, C = 48, 4, 3


class Identity(torch.nn.Module):
    feature_dim = D

    def __init__(self, head: torch.Tensor):
        super().__init__()
        self.head = head

    def forward(self, x):
        return x @ self.head.T, x


def _harness(params, *, cls=TeacherLP, name="teacher_lp"):
    g = torch.Generator().manual_seed(4)
    clean = torch.arange(N) % C
    x = torch.eye(C, D)[clean] * 2 + 0.7 * torch.randn(N, D, generator=g)
    noisy = torch.where(torch.rand(N, generator=g) < 0.3, torch.randint(0, C, (N,),
                                                                        generator=g), clean)
    models = {"teacher": Identity(torch.eye(C, D)),
              "student": Identity(torch.randn(C, D, generator=g))}
    h = harness(cls, params, x=x, noisy_label=noisy, clean_label=clean, num_classes=C,
                models=models, name=name)
    return h


@pytest.mark.parametrize("graph, seeds, roles", [
    ("teacher", "noisy", ("teacher",)),
    ("student", "noisy", ("student",)),
    ("alternate", "noisy", ("teacher", "student")),
    ("student", "teacher_prediction", ("student", "teacher")),
    ("teacher", "selected", ("teacher", "student")),
    ("teacher", "previous", ("teacher",)),
])
def test_roles_are_the_graphs_and_the_seeds_models(graph, seeds, roles):
    h = _harness({"graph": graph, "seeds": seeds})
    assert h.component.roles() == roles


def test_every_setting_reaches_the_graph_and_the_solver(monkeypatch):
    seen = {}
    real_graph, real_propagate = lp_component.feature_graph, lp_component.propagate

    def graph(feats, **kw):
        seen["graph"] = kw
        return real_graph(feats, **kw)

    def propagate(w, seeds, num_classes, weights, **kw):
        seen["propagate"] = kw
        return real_propagate(w, seeds, num_classes, weights, **kw)

    monkeypatch.setattr(lp_component, "feature_graph", graph)
    monkeypatch.setattr(lp_component, "propagate", propagate)
    params = {"seeds": "noisy", "k": 6, "gamma": 2.0, "normalize": False, "chunk": 7,
              "knn_backend": "exact", "ivf_nprobe": 3, "alpha": 0.8, "clamp": False,
              "cg_tol": 1e-4, "cg_iters": 9}
    h = _harness(params).setup()
    h.epoch_start(0)
    assert seen["graph"] == {"k": 6, "gamma": 2.0, "normalize": False, "chunk": 7,
                             "backend": "exact", "nprobe": 3}
    assert seen["propagate"] == {"alpha": 0.8, "clamp": False, "tol": 1e-4, "maxiter": 9}


def test_the_graph_is_cached_per_model_version_and_older_versions_dropped(monkeypatch):
    builds = []
    real_graph = lp_component.feature_graph
    monkeypatch.setattr(lp_component, "feature_graph",
                        lambda feats, **kw: builds.append(1) or real_graph(feats, **kw))
    h = _harness({"seeds": "noisy"}).setup()
    comp, ctx = h.component, h.ctx
    first = comp._graph(ctx, "teacher")
    assert comp._graph(ctx, "teacher") is first and len(builds) == 1
    h.run.bump("teacher")
    comp._graph(ctx, "teacher")
    assert len(builds) == 2
    keys = [k for k in ctx.cache if k[:2] == ("kdcore_lp/graph", "teacher")]
    assert len(keys) == 1 and keys[0][2] == ctx.model_version("teacher")


def test_kept_samples_are_the_low_confidence_percentile_and_the_selection():
    h = _harness({"seeds": "noisy", "keep_percentile": 25.0,
                  "keep_selected": "select/small_loss"})
    selected = torch.zeros(N, dtype=torch.bool)
    selected[::5] = True
    h.run.ledger.add("select/small_loss", selected, producer="small_loss", kind="mask")
    h.setup()
    h.epoch_start(0)
    led = h.run.ledger
    conf = led["lp/teacher_lp/confidence"].double().numpy()
    low = conf < np.quantile(conf, 0.25)
    keep = low | selected.numpy()
    expected = np.where(keep, led["noisy_label"].numpy(), led["lp/teacher_lp/label"].numpy())
    assert 0 < low.sum() < N and (low & ~selected.numpy()).any()
    np.testing.assert_array_equal(led["base_target"].argmax(1).numpy(), expected)


def test_no_percentile_keeps_only_the_selection():
    h = _harness({"seeds": "noisy", "keep_percentile": 0.0}).setup()
    h.epoch_start(0)
    led = h.run.ledger
    np.testing.assert_array_equal(led["base_target"].argmax(1).numpy(),
                                  led["lp/teacher_lp/label"].numpy())


def test_columns_kinds_and_metrics_against_numpy_counts():
    h = _harness({"seeds": "noisy", "keep_selected": ""}).setup()
    h.epoch_start(0)
    led, metrics = h.run.ledger, h.run.epoch_metrics
    assert led.column("base_target").kind == "target"
    assert led.column("lp/teacher_lp/label").kind == "label"
    labels = led["lp/teacher_lp/label"].numpy()
    refined = led["base_target"].argmax(1).numpy()
    clean, noisy = led["clean_label"].numpy(), led["noisy_label"].numpy()
    assert metrics["lp/teacher_lp/acc"] == pytest.approx((labels == clean).mean())
    assert metrics["lp/teacher_lp/refined_acc"] == pytest.approx((refined == clean).mean())
    assert metrics["lp/teacher_lp/changed"] == pytest.approx((refined != noisy).mean())
    assert 0 < metrics["lp/teacher_lp/acc"] < 1


def test_base_target_is_not_snapshotted_and_the_ledger_keeps_one_copy():
    h = _harness({"seeds": "noisy"}).setup()
    h.epoch_start(0)
    assert h.run.ledger.column("base_target").snapshot is False


def test_previous_seeds_are_the_current_targets():
    h = _harness({"seeds": "previous", "keep_selected": ""})
    previous = (torch.arange(N) * 7) % C
    h.run.ledger.add("base_target", one_hot(previous, C), producer="initial_lp", kind="target",
                     snapshot=False)
    h.setup()
    np.testing.assert_array_equal(h.component.seed_labels(h.ctx).numpy(), previous.numpy())


@pytest.mark.parametrize("when, runs", [("stage_start", 0), ("epoch_start", 1)])
def test_lp_runs_at_epoch_starts_only_when_asked(monkeypatch, when, runs):
    h = _harness({"seeds": "noisy", "when": when, "every": 1}).setup()
    calls = []
    monkeypatch.setattr(h.component, "propagate_now", lambda ctx: calls.append(ctx.epoch))
    h.epoch_start(0)
    assert len(calls) == runs


def test_the_absolute_epoch_counts_this_stages_epoch_only_where_it_does_not_train_the_student():
    h = _harness({"seeds": "noisy", "graph": "alternate", "offset": 1}).setup()
    comp, ctx, run = h.component, h.ctx, h.run
    run.epoch = 3
    trains = ctx.trains("student")
    expected = ctx.role_epoch("student") + (0 if trains else 3)
    assert comp.absolute_epoch(ctx) == expected
    even = (expected + 1) % 2 == 0
    assert comp.graph_role(ctx) == ("student" if even else "teacher")
    run.epoch = 4
    assert comp.graph_role(ctx) != ("student" if even else "teacher")


def test_a_column_not_written_yet_is_named():
    h = _harness({"seeds": "noisy", "keep_selected": "select/nowhere"}).setup()
    with pytest.raises(kdcore.KdcoreError) as info:
        h.component._column(h.ctx, "select/nowhere")
    assert str(info.value).startswith(
        "component 'teacher_lp' reads ledger column 'select/nowhere' before the stage's first "
        "batch, where its writer declares it written (Component.writes_at_start and "
        "written_columns), but no ledger column 'select/nowhere'; columns: ")



def test_a_stage_that_does_not_train_the_student_adds_its_own_epoch():
    import attrs

    h = _harness({"seeds": "noisy", "graph": "alternate"}).setup()
    run = h.run
    run.stage = attrs.evolve(run.stage, train=["teacher"])
    run.epoch = 3
    assert not h.ctx.trains("student")
    assert h.component.absolute_epoch(h.ctx) == h.ctx.role_epoch("student") + 3


@pytest.mark.parametrize("graph", ["teacher", "student"])
def test_a_fixed_graph_is_that_models(graph):
    h = _harness({"seeds": "noisy", "graph": graph}).setup()
    assert h.component.graph_role(h.ctx) == graph


@pytest.mark.parametrize("percentile", [1.0, 25.0, 100 * 12 / 47, 85.745])
def test_kept_share_is_the_confidence_below_the_percentile(percentile):
    """Seeds from the teacher's predictions (independent of the given labels), and given labels
    that differ from every propagated label: a kept sample is one whose target is not its LP
    label. 12/47 puts the quantile exactly on a sample (kept only when strictly below), 85.745
    just above one (a threshold 1% lower would drop it)."""
    probe = _harness({"seeds": "teacher_prediction", "keep_selected": ""}).setup()
    probe.epoch_start(0)
    lp_labels = probe.run.ledger["lp/teacher_lp/label"]
    h = _harness({"seeds": "teacher_prediction", "keep_selected": "",
                  "keep_percentile": percentile})
    h.run.data.train_noisy.copy_((lp_labels + 1) % C)
    h.run.ledger["noisy_label"].copy_((lp_labels + 1) % C)
    h.setup()
    h.epoch_start(0)
    led = h.run.ledger
    assert torch.equal(led["lp/teacher_lp/label"], lp_labels)
    conf = led["lp/teacher_lp/confidence"].double().numpy()
    expected = conf < np.quantile(conf, percentile / 100.0)
    kept = led["base_target"].argmax(1).numpy() != lp_labels.numpy()
    np.testing.assert_array_equal(kept, expected)
    assert expected.sum() >= 1


@pytest.mark.parametrize("k, refused", [(N - 1, False), (N, True), (N + 5, True)])
def test_a_k_that_needs_more_samples_than_the_run_has_is_refused_at_setup(k, refused):
    """At set-up, so that ``kdcore check`` refuses it, not the first propagation."""
    import kdcore

    h = _harness({"seeds": "noisy", "k": k})
    if not refused:
        h.setup()
        return
    with pytest.raises(kdcore.RecipeError) as info:
        h.setup()
    assert str(info.value) == (f"component 'teacher_lp': k = {k} neighbours needs more than "
                               f"{k} training samples; the run has {N} (lower params.k, or "
                               "train on more samples)")


def test_read_kinds_hold_keep_selected_to_a_mask_and_seed_weights_to_one_number_a_sample():
    scalar = ("mask", "weight", "value", "exact")
    comp = _harness({"keep_selected": "select/s", "seed_weights": "awe/w"}).component
    assert comp.read_kinds() == {"select/s": "mask", "awe/w": scalar}
    assert _harness({"keep_selected": "select/s"}).component.read_kinds() == {"select/s": "mask"}
    assert _harness({"seed_weights": "awe/w"}).component.read_kinds() == {"awe/w": scalar}
    assert _harness({}).component.read_kinds() == {}


def test_every_lp_entry_whose_k_is_too_large_is_named_at_once(tmp_path):
    """A dataset too small for the recipe's k took one `check` per LP entry to find (AML-KD's
    three, on 12 training samples); the first entry set up names the rest, each once, and
    neither an entry whose k fits nor a disabled one."""
    import re

    from click.testing import CliRunner

    from kdcore.cli import main
    from kdcore.testing import component, stage, teacher_stage, tiny_recipe, write_recipe

    lp = {"seeds": "noisy"}

    def check(*entries):
        recipe = write_recipe(tiny_recipe(teacher_stage(1), *entries, train_subset=40),
                              tmp_path / "r.toml")
        result = CliRunner().invoke(main, ["check", str(recipe)])
        assert result.exit_code == 2, result.output
        return result.output.strip().splitlines()[-1]

    # the training samples the run has, as the message says
    n = int(re.search(r"the run has (\d+) ", check(stage("a", 1, ["student"], component(
        "ce"), component("teacher_lp", params={**lp, "k": 1000})))).group(1))
    assert 21 < n <= 40
    line = check(
        stage("a", 1, ["student"], component("ce"),
              component("initial_lp", "first", params={**lp, "k": 1000}),
              component("teacher_lp", "fits", params={**lp, "k": n - 1}),
              component("teacher_lp", "off", params={**lp, "k": 4000}, enabled=False)),
        stage("b", 1, ["student"], component("ce"),
              component("mutual_lp", "mutual", params={"k": 3000}),
              component("teacher_lp", "exactly", params={**lp, "k": n}),
              component("teacher_lp", params=lp)),  # its default k = 20: fits
        stage("c", 1, ["student"], component("ce"),
              component("mutual_lp", "mutual", params={"k": 3000}),  # again: named once
              component("mutual_lp", "last", params={"k": 2000})))
    assert line == (
        "kdcore: error: component 'first': k = 1000 neighbours needs more than 1000 training "
        f"samples, as do 'mutual' (k = 3000), 'exactly' (k = {n}) and 'last' (k = 2000); the "
        f"run has {n} (lower params.k of each, or train on more samples)")


def test_one_other_lp_entry_too_large_is_named_in_the_singular(tmp_path):
    from click.testing import CliRunner

    from kdcore.cli import main
    from kdcore.testing import component, stage, teacher_stage, tiny_recipe, write_recipe

    recipe = write_recipe(tiny_recipe(
        teacher_stage(1),
        stage("a", 1, ["student"], component("ce"),
              component("teacher_lp", "one", params={"seeds": "noisy", "k": 999}),
              component("teacher_lp", "two", params={"seeds": "noisy", "k": 1000}))),
        tmp_path / "r.toml")
    line = CliRunner().invoke(main, ["check", str(recipe)]).output.strip().splitlines()[-1]
    assert ", as does 'two' (k = 1000); the run has " in line, line
    assert line.endswith("(lower params.k of each, or train on more samples)"), line
