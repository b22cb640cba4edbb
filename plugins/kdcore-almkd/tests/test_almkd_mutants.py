"""The checks that the mutation run of docs/mutation.md (target ``kdcore-almkd``) found missing:
the analysis module on a hand-built history, the component's update wired against the NumPy
reference (``reference.py``) and its objective statistics, the epoch metrics, the initial
tables, the checkpoint state, the settings' bounds, the recipe checks and the mixing helpers'
edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kdcore
from kdcore.data.base import ArrayDataset
from kdcore.recipe import recipe_from_dict
from kdcore.testing import TinyNet, component, harness, stage, teacher_stage, tiny_recipe
from kdcore_almkd import analysis
from kdcore_almkd import mixing as mx
from kdcore_almkd.component import AlmKD, AlmKDParams, kd_share, recipe_problems

# -- analysis --------------------------------------------------------------------------------


class FakeHistory:
    """What the analysis reads of a run history: columns ``(E, N, ...)``, epochs, data."""

    opened: list = []

    def __init__(self, columns, clean, epochs):
        self.columns, self.clean, self.rows = columns, clean, epochs

    def column_names(self):
        return list(self.columns)

    def __len__(self):
        return len(self.rows)

    def column(self, name, epoch=None):
        return self.columns[name] if epoch is None else self.columns[name][epoch]

    def data(self, name):
        assert name == "clean_mask"
        return self.clean

    def epochs(self):
        return list(self.rows)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _history(*, second_table: bool = False, clean=None):
    rng = np.random.default_rng(0)
    n = 6
    table = rng.random((3, n, 3)) * 0.6  # row sums below 1: the clamp must not lift them
    table[0] = np.nan  # the teacher stage's epoch, before the table existed
    table[2, 0] = 0.0  # a zero row: share 0
    columns = {"target": rng.random((3, n, 4)), "weight/almkd": table,
               "weight/awe": rng.random((3, n)), "weight/one": rng.random((3, n, 1))}
    if second_table:
        columns["weight/two"] = rng.random((3, n, 2))
    if clean is None:
        clean = np.array([1, 0, 1, 1, 0, 0], dtype=np.uint8)
    return FakeHistory(columns, clean, [("teacher", 0), ("student", 0), ("student", 1)])


def test_weight_columns_are_the_2d_tables_with_two_or_more_columns():
    assert analysis.weight_columns(_history(second_table=True)) == ["weight/almkd", "weight/two"]
    empty = FakeHistory({"weight/almkd": np.zeros((0, 6, 3))}, np.ones(6), [])
    assert analysis.weight_columns(empty) == []
    one_epoch = FakeHistory({"weight/almkd": np.zeros((1, 6, 3))}, np.ones(6), [("s", 0)])
    assert analysis.weight_columns(one_epoch) == ["weight/almkd"]


def test_kd_share_of_the_analysis():
    w = np.array([[0.1, 0.2, 0.1], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 2.0, 1.0]])
    np.testing.assert_allclose(analysis.kd_share(w), [0.75, 0.0, 0.0, 1.0], rtol=1e-12)
    assert analysis.kd_share(w[None]).shape == (1, 4)


def test_lambda_by_noise_against_numpy():
    h = _history()
    rows = analysis.lambda_by_noise(h)
    assert rows == analysis.lambda_by_noise(h, "weight/almkd")
    clean = h.clean.astype(bool)
    assert [(r.stage, r.epoch) for r in rows] == [("student", 0), ("student", 1)]
    for r, w in zip(rows, h.columns["weight/almkd"][1:]):
        kd = w[:, 1] + w[:, 2]
        total = w.sum(axis=1)
        share = np.divide(kd, total, out=np.zeros_like(kd), where=total > 0)
        want = [w[clean, 0].mean(), w[~clean, 0].mean(), kd[clean].mean(), kd[~clean].mean(),
                share[clean].mean(), share[~clean].mean()]
        got = [r.ce_clean, r.ce_noisy, r.kd_clean, r.kd_noisy, r.share_clean, r.share_noisy]
        np.testing.assert_allclose(got, want, rtol=1e-12)
        assert r.share_gap == pytest.approx(want[5] - want[4], rel=1e-12)
    # no noisy sample: the noisy means are NaN
    all_clean = analysis.lambda_by_noise(_history(clean=np.ones(6, dtype=np.uint8)))
    assert math.isnan(all_clean[0].ce_noisy) and not math.isnan(all_clean[0].ce_clean)
    with pytest.raises(ValueError, match=r"^name the weight table with column=\.\.\.; found "
                                         r"\['weight/almkd', 'weight/two'\]$"):
        analysis.lambda_by_noise(_history(second_table=True))
    with pytest.raises(ValueError, match=r"; found none$"):
        analysis.lambda_by_noise(FakeHistory({}, np.ones(6), []))


HEAD = ("stage        epoch  ce clean  ce noisy  kd clean  kd noisy share clean share noisy"
        "     gap")


def test_format_rows_by_hand():
    row = analysis.EpochRow("student", 3, 0.25, 0.5, 0.75, 0.125, 0.6, 0.7)
    assert analysis.format_rows([row]) == (
        HEAD + "\nstudent          3    0.2500    0.5000    0.7500    0.1250      0.6000"
        "      0.7000 +0.1000")
    assert analysis.format_rows([]) == HEAD


def test_main_reads_the_history_of_a_run_directory_or_file(tmp_path, monkeypatch, capsys):
    opened = []

    def fake(path):
        opened.append(path)
        return _history(second_table=True)

    monkeypatch.setattr(analysis, "History", fake)
    (tmp_path / "history.h5").write_bytes(b"")
    want = analysis.format_rows(analysis.lambda_by_noise(_history(), "weight/almkd"))
    assert analysis.main([str(tmp_path), "--column", "weight/almkd"]) == 0
    assert capsys.readouterr().out == want + "\n"
    assert analysis.main([str(tmp_path / "history.h5"), "--column", "weight/two"]) == 0
    # weight/two has no NaN rows: the teacher stage's epoch is a row too
    assert capsys.readouterr().out.startswith(HEAD + "\nteacher          0 ")
    assert opened == [tmp_path, tmp_path / "history.h5"]
    # two tables and no --column: the error on stderr, exit 2
    assert analysis.main([str(tmp_path)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("error: name the weight table with column=")
    # a directory without history.h5, a missing file
    (tmp_path / "empty").mkdir()
    assert analysis.main([str(tmp_path / "empty")]) == 2
    assert analysis.main([str(tmp_path / "empty" / "history.h5")]) == 2
    assert capsys.readouterr().err.count("error: no history.h5 in") == 2


def test_main_help_names_the_program_and_its_arguments(capsys):
    with pytest.raises(SystemExit):
        analysis.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: python -m kdcore_almkd.analysis [-h] [--column COLUMN] run_dir")
    for text in ("Mean lambda (KD share) on truly noisy vs clean samples, per epoch.",
                 "run_dir a run directory (or its history.h5)",
                 "--column COLUMN the weight table, e.g. weight/almkd (default: the only one)"):
        assert f" {text} " in f"{out} ", text


# -- the component ---------------------------------------------------------------------------


def _mlp() -> kdcore.KDModel:
    return TinyNet(8, 3, 5, activation="tanh")


def _harness(params=None, *, n=30, teachers=("teacher",), gold=12, clean=None, val=0):
    torch.manual_seed(0)
    x, y = torch.randn(n, 8), torch.randint(0, 3, (n,))
    models = {"student": _mlp(), **{t: _mlp() for t in teachers}}
    h = harness(AlmKD, {"teachers": list(teachers), **(params or {})}, x=x, noisy_label=y,
                clean_label=clean, num_classes=3, models=models, train=("student",),
                name="almkd")
    if gold:
        h.run.data.gold = ArrayDataset(torch.randn(gold, 8), torch.arange(gold) % 3, 3)
    if val:  # a val split whose observed labels differ from its true ones
        h.run.data.val = ArrayDataset(torch.randn(val, 8), torch.arange(val) % 3, 3)
        h.run.data.val_noisy = (torch.arange(val) + 1) % 3
    h.run.optimizers["student"] = torch.optim.SGD(models["student"].parameters(), lr=0.2)
    return h


def _np(t):
    return t.detach().double().numpy()


def _objectives(lam, z, h, q, teacher, zv, hv, yv, *, order, batch, fit, val_batches, eta,
                temperature, reps, step, high, reference):
    """The meta objective (mean CE at the look-ahead validation logits) at the first and the
    last repetition of every chunk, averaged over chunks, with the reference's vectors."""
    lam = lam.copy()
    first, last, chunks = 0.0, 0.0, 0
    for c, group in enumerate(reference._chunks(order, batch, fit)):
        ind = np.concatenate(group)
        sl, kd = reference._stack(group, z, h, q, [teacher], temperature)
        vb = val_batches[c % len(val_batches)]
        ncls = z.shape[1]
        for r in range(reps):
            comb = (lam[ind, 0:1] * sl + lam[ind, 1:2] * kd[0]).sum(axis=0)
            ahead = zv[vb] - eta * comb[:ncls] - eta * hv[vb] @ comb[ncls:].reshape(ncls, -1).T
            j = -(yv[vb] * reference.log_softmax(ahead)).sum(axis=1).mean()
            first += j if r == 0 else 0.0
            last += j if r == reps - 1 else 0.0
            u = reference.up_grads(comb, zv[vb], hv[vb], yv[vb], eta)
            for k, g in enumerate([sl, kd[0]]):
                lam[ind, k] = lam[ind, k] + step * eta * (g @ u)
            lam = np.clip(lam, 1e-7, high)
        chunks += 1
    return first / chunks, last / chunks


@pytest.mark.parametrize(("val_batch", "split", "n"), [
    (1000, "gold", 30), (12, "gold", 30), (5, "gold", 30),  # 12: the whole split
    (5, "val", 30),  # the val split's observed (noisy) labels
    (5, "gold", 33),  # 8 + 8 + 8 + 9: the lone last sample in the batch before, as in training
])
def test_update_is_the_numpy_reference_on_the_components_order_and_meta_batches(reference,
                                                                                val_batch, split,
                                                                                n):
    params = {"batch_size": 8, "grad_fit": 2, "repetitions": 3, "val_batch": val_batch,
              "reference_batch_size": 16, "meta_split": split}
    h = _harness(params, n=n, gold=12 if split == "gold" else 0, val=12).setup()
    comp, ctx = h.component, h.ctx
    lam0 = _np(comp.lam)
    gen = torch.Generator().manual_seed(0)  # the component's generator, unused so far
    order = torch.randperm(n, generator=gen).numpy()
    meta = h.run.data.split(split)
    if val_batch >= len(meta):
        val_batches = [np.arange(len(meta))]
    else:
        val_batches = [b.numpy() for b in torch.randperm(len(meta), generator=gen).split(val_batch)]
    with torch.no_grad():
        student, teacher = ctx.models["student"].eval(), ctx.models["teacher"].eval()
        z, f = student(h.run.data.train.x)
        zt, _ = teacher(h.run.data.train.x)
        zv, fv = student(meta.x)
    q = np.eye(3)[h.run.data.train_noisy.numpy()]
    yv = np.eye(3)[(meta.y if split == "gold" else h.run.data.val_noisy).numpy()]
    step = 1500.0 * 8 / 16
    kwargs = dict(order=order, batch=8, fit=2, val_batches=val_batches, eta=0.2, temperature=4.0)
    want = reference.amal_update(lam0, _np(z), _np(f), q, [_np(zt)], _np(zv), _np(fv), yv,
                                 reps=3, step=step, **kwargs)
    first, last = _objectives(lam0, _np(z), _np(f), q, _np(zt), _np(zv), _np(fv), yv, reps=3,
                              step=step, high=2.0 - 1e-7, reference=reference, **kwargs)
    h.epoch_start(10)  # due: select_every 10
    # the component's generator drew the order, and the meta batches only when they are smaller
    # than the split (the next update's order depends on it)
    assert torch.equal(ctx.generator.get_state(), gen.get_state())
    np.testing.assert_allclose(_np(comp.lam), want, rtol=1e-4, atol=1e-6)
    assert h.metrics["weight/almkd/step"] == step
    assert h.metrics["weight/almkd/meta_loss_first"] == pytest.approx(first, rel=1e-5)
    assert h.metrics["weight/almkd/meta_loss_last"] == pytest.approx(last, rel=1e-5)
    assert first != pytest.approx(last, rel=1e-3)  # the repetitions moved the objective
    assert comp.state_dict()["updates"] == 1
    comp.update(ctx)
    assert comp.state_dict()["updates"] == 2
    torch.testing.assert_close(h.run.ledger["weight/almkd"], comp.lam)
    assert h.run.ledger.column("weight/almkd").kind == "weight"


def test_update_needs_a_meta_split():
    h = _harness(gold=0).setup()
    with pytest.raises(kdcore.RecipeError, match=r"^component 'almkd': the 'gold' split is "
                                                 r"empty; set data\.gold_per_class"):
        h.component.update(h.ctx)


def test_setup_refuses_two_students():
    torch.manual_seed(0)
    models = {"student": _mlp(), "s2": _mlp(), "teacher": _mlp()}
    h = harness(AlmKD, {}, x=torch.randn(5, 8), noisy_label=torch.arange(5) % 3, models=models,
                train=("student", "s2"), name="almkd")
    with pytest.raises(kdcore.RecipeError, match=r"^component 'almkd' serves \['student', "
                                                 r"'s2'\]; it mixes the losses of exactly one"):
        h.component.setup(h.ctx)


@pytest.mark.parametrize(("params", "row"), [
    ({}, [0.1, 0.9]),                                                  # amal: 1 - l0, l0
    ({"lambda0": 0.3}, [0.7, 0.3]),
    ({"lambda0": 2.5}, [1e-7, 2.0 - 1e-7]),                            # clipped both ways
    ({"preset": "almkd", "init": "constant", "lambda0": 0.3}, [0.3]),  # one convex lambda
    ({"preset": "almkd", "init": "constant", "lambda0": 1.0}, [1.0 - 1e-7]),
])
def test_constant_initial_tables(params, row):
    h = _harness(params, gold=0)
    h.component.setup(h.ctx)
    assert h.component.state_dict() == {"lam": None, "updates": 0}
    with pytest.raises(RuntimeError, match=r"^component 'almkd' has no lambda table yet$"):
        h.component.weights()
    h.component.on_stage_start(h.ctx)
    lam = h.component.lam
    assert lam.shape == (30, len(row))
    np.testing.assert_allclose(_np(lam), np.tile(row, (30, 1)), rtol=1e-6)


def test_a_carried_table_of_the_right_shape_is_kept_with_its_update_count():
    h = _harness(gold=0)
    h.component.setup(h.ctx)
    table = torch.rand(30, 2)
    h.component.load_state_dict({"lam": table, "updates": 4})
    h.component.on_stage_start(h.ctx)
    assert torch.equal(h.component.lam, table) and h.component.state_dict()["updates"] == 4
    h.component.load_state_dict({"lam": torch.rand(30, 3), "updates": 4})  # wrong shape
    h.component.on_stage_start(h.ctx)
    assert h.component.lam.shape == (30, 2) and h.component.state_dict()["updates"] == 0
    h.component.load_state_dict({"lam": None})  # an old checkpoint without the count
    assert h.component.lam is None and h.component.state_dict() == {"lam": None, "updates": 0}


def test_epoch_metrics_against_numpy():
    clean = torch.tensor([0, 1, 2] * 10)
    h = _harness(teachers=("teacher", "t2"), gold=0, clean=clean)
    h.component.setup(h.ctx)
    table = torch.rand(30, 3, generator=torch.Generator().manual_seed(3))
    h.component.load_state_dict({"lam": table})
    h.component.on_stage_start(h.ctx)
    metrics = {}
    h.component.on_epoch_end(h.ctx, metrics)
    w = table.double().numpy()
    is_clean = (h.run.data.train_noisy == clean).numpy()
    assert 0 < is_clean.sum() < 30
    share = (w[:, 1] + w[:, 2]) / w.sum(axis=1)
    want = {"weight/almkd/kd_share": share.mean(),
            "weight/almkd/kd_share_clean": share[is_clean].mean(),
            "weight/almkd/kd_share_noisy": share[~is_clean].mean(),
            "weight/almkd/ce": w[:, 0].mean(), "weight/almkd/teacher": w[:, 1].mean(),
            "weight/almkd/t2": w[:, 2].mean()}
    assert metrics == pytest.approx(want, rel=1e-12)
    # every sample clean: the noisy share is NaN; every sample noisy: the clean one
    h = _harness(gold=0)
    h.setup()
    metrics = {}
    h.component.on_epoch_end(h.ctx, metrics)
    assert math.isnan(metrics["weight/almkd/kd_share_noisy"])
    assert metrics["weight/almkd/kd_share_clean"] == pytest.approx(0.9)
    torch.manual_seed(0)  # the harness's draws: inputs, then noisy labels
    torch.randn(30, 8)
    noisy = (torch.randint(0, 3, (30,)) + 1) % 3  # every true label differs from the noisy one
    h = _harness(gold=0, clean=noisy)
    h.setup()
    metrics = {}
    h.component.on_epoch_end(h.ctx, metrics)
    assert not h.run.ledger["clean_mask"].any()
    assert math.isnan(metrics["weight/almkd/kd_share_clean"])
    assert metrics["weight/almkd/kd_share_noisy"] == pytest.approx(0.9)


def test_kd_share_of_the_component():
    w = torch.tensor([[0.1, 0.2, 0.1], [0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 2.0, 1.0]],
                     dtype=torch.float64)
    np.testing.assert_allclose(kd_share(w).numpy(), [0.75, 0.0, 0.0, 1.0], rtol=1e-12)


def test_settings_bounds():
    with pytest.raises(ValueError, match=r"'lambda_min' must be below lambda_max \(0\.5\), "
                                         r"got 0\.5"):
        AlmKDParams(lambda_min=0.5, lambda_max=0.5)
    convex = AlmKDParams(preset="almkd", lambda_min=0.0, lambda_max=1.0).settings()
    assert (convex.lambda_min, convex.lambda_max) == (0.0, 1.0)
    with pytest.raises(ValueError, match=r"^'lambda_min' must be >= 0 with convex mixing, got "
                                         r"-0\.1$"):
        AlmKDParams(preset="almkd", lambda_min=-0.1)


def _recipe(*components, train=("student",)):
    data = tiny_recipe(teacher_stage(1), stage("student", 1, list(train), *components),
                       gold_per_class=5)
    return recipe_from_dict(data)


def test_recipe_problems_of_every_almkd_entry_after_others_and_bad_ones():
    recipe = _recipe(component("ce", params={}),
                     component("almkd", "bad", params={"lambda0": -1.0}),
                     component("almkd", "self", params={"teachers": ["student"]}),
                     component("almkd", "two", params={}, models=["student", "teacher"]))
    assert recipe_problems(recipe) == [
        "stages[1].components[2].params.teachers: 'student' is the student itself; for "
        "self-distillation add a role of the same architecture",
        "stages[1].components[3]: 'two' serves ['student', 'teacher']; it mixes the losses of "
        "exactly one student (set 'models')",
        "stages[1].components[3].params.teachers: 'teacher' is the student itself; for "
        "self-distillation add a role of the same architecture",
    ]


# -- mixing helpers --------------------------------------------------------------------------


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_term_losses_at_another_temperature(reference):
    rng = np.random.default_rng(1)
    z, t, q = rng.normal(size=(4, 3)) * 2, rng.normal(size=(4, 3)) * 2, np.eye(3)[[0, 2, 1, 1]]
    got = mx.term_losses(torch.tensor(z), torch.tensor(q), [torch.tensor(t)], 2.0).numpy()
    np.testing.assert_allclose(got[:, 0], reference.mixed_loss(z, q, [t], np.array([[1, 0]] * 4),
                                                              2.0), rtol=1e-12)
    np.testing.assert_allclose(got[:, 1], reference.mixed_loss(z, q, [t], np.array([[0, 1]] * 4),
                                                              2.0), rtol=1e-12)


def test_logit_gradients_of_unnormalised_targets_and_the_default_scale():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(4, 3))
    q = rng.random((4, 3))  # rows sum to about 1.5: sum(q) matters
    got = mx.logit_gradients(torch.tensor(z), torch.tensor(q), [], 4.0).numpy()
    np.testing.assert_allclose(got[:, 0], _softmax(z) * q.sum(axis=1, keepdims=True) - q,
                               rtol=1e-12)
    zt = torch.tensor(z, requires_grad=True)
    loss = -(torch.tensor(q) * torch.log_softmax(zt, 1)).sum() / 4
    (grad,) = torch.autograd.grad(loss, zt)
    loss = loss.detach()
    value, mine = mx._mean_ce_and_grad(torch.tensor(z), torch.tensor(q))
    assert float(value) == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(mine.numpy(), grad.numpy(), rtol=1e-12)


def test_lookahead_gradient_defaults_and_its_chunk_check():
    rng = np.random.default_rng(3)
    t = {k: torch.tensor(v) for k, v in dict(
        w=rng.random((4, 2)), delta=rng.normal(size=(4, 2, 3)), h=rng.normal(size=(4, 5)),
        zv=rng.normal(size=(6, 3)), hv=rng.normal(size=(6, 5)), yv=np.eye(3)[[0, 1, 2, 0, 1, 2]],
    ).items()}
    args = (t["w"], t["delta"], t["h"], t["zv"], t["hv"], t["yv"], 0.1)
    dw, j = mx.lookahead_gradient(*args)  # AMAL's a = 1: no chunk needed
    dw1, j1 = mx.lookahead_gradient(*args, val_weight=1.0)
    assert torch.equal(dw, dw1) and float(j) == float(j1)
    with pytest.raises(ValueError, match=r"^val_weight < 1 needs the chunk's logits and "
                                         r"targets$"):
        mx.lookahead_gradient(*args, val_weight=0.5, chunk_logits=t["zv"][:4])


def test_effective_step_edges():
    assert mx.effective_step(1500.0, 1) == 1500.0 / 128
    assert mx.effective_step(10.0, 4, 1) == 40.0
    with pytest.raises(ValueError, match="batch sizes must be positive"):
        mx.effective_step(10.0, 4, 0)
    with pytest.raises(ValueError, match="batch sizes must be positive"):
        mx.effective_step(10.0, 0, 4)
