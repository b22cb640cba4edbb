"""The nCIFAR-style generator and its noise model: sizes, rates, the open-set sentinel, the
status of every sample in the history, and the recipe checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kdcore
from kdcore_ff import OPEN_CLASS_NAME, STATUS_CLEAN, STATUS_CLOSED, STATUS_OPEN, ncifar_noise
from kdcore_ff.ncifar import (
    NCifarSpec,
    class_sizes,
    generate,
    largest_remainder,
    ncifar,
    profile,
    resolve_spec,
)


def _digits() -> kdcore.DatasetSplits:
    return kdcore.active_host().datasets.get("digits")()


# -- the generator ------------------------------------------------------------------------------


def test_profiles():
    assert profile("none", 4, 0.1, 0.5) == [1.0] * 4
    exp = profile("exponential", 8, 0.1, 0.5)
    assert exp[0] == 1.0 and exp[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(exp, exp[1:]))
    assert exp[3] == pytest.approx(0.1 ** (3 / 7))
    assert profile("step", 8, 0.25, 0.5) == [1.0] * 4 + [0.25] * 4
    assert profile("step", 5, 0.5, 0.4) == [1.0] * 3 + [0.5] * 2


def test_digits_generation_has_the_asked_sizes_and_open_share():
    base = _digits()
    spec = NCifarSpec(open_classes=[8, 9], open_rate=0.2, imbalance="exponential",
                      imbalance_ratio=0.1, test_fraction=0.2)
    made = generate(base, spec)
    y0 = base.train.y
    counts = torch.bincount(y0, minlength=10).tolist()
    test_n = [round(0.2 * counts[c]) for c in range(8)]
    avail = [counts[c] - test_n[c] for c in range(8)]
    shape = [0.1 ** (c / 7) for c in range(8)]
    n_max = min(math.floor(a / s + 1e-9) for a, s in zip(avail, shape))
    expected = [max(1, round(n_max * s)) for s in shape]
    assert list(made.sizes) == expected
    assert made.sizes[-1] == round(made.sizes[0] * 0.1)  # the asked ratio, within rounding
    train, test = made.splits.train, made.splits.test
    assert train.num_classes == test.num_classes == 9
    assert train.class_names == tuple(str(c) for c in range(8)) + (OPEN_CLASS_NAME,)
    # class sizes and the open share, exactly
    label_counts = torch.bincount(train.y, minlength=9).tolist()
    assert label_counts[:8] == expected
    total = sum(expected)
    assert made.n_open == label_counts[8] == round(0.2 * total / 0.8)
    assert abs(made.n_open / len(train) - 0.2) <= 0.5 / len(train)
    # each row is the base image it claims to be: kept rows keep their class, open rows are 8/9
    base_labels = y0[made.train_source]
    kept = torch.tensor(made.kept)
    is_open = train.y == 8
    assert set(base_labels[is_open].tolist()) <= {8, 9}
    assert torch.equal(kept[train.y[~is_open]], base_labels[~is_open])
    assert torch.equal(train.x, base.train.x[made.train_source])
    # the test set: carved before the profile, kept classes only, clean, disjoint from train
    assert made.test_carved
    assert torch.bincount(test.y, minlength=9).tolist() == test_n + [0]
    assert torch.equal(kept[test.y], y0[made.test_source])
    assert not set(made.test_source.tolist()) & set(made.train_source.tolist())


def test_generation_is_seeded():
    base = _digits()
    a = generate(base, NCifarSpec(seed=3))
    b = generate(base, NCifarSpec(seed=3))
    c = generate(base, NCifarSpec(seed=4))
    assert torch.equal(a.train_source, b.train_source)
    assert not torch.equal(a.train_source, c.train_source)


def test_step_profile_fixed_head_size_and_imbalanced_test():
    base = _digits()
    spec = NCifarSpec(open_classes=2, open_rate=0.1, imbalance="step", imbalance_ratio=0.5,
                      step_fraction=0.5, max_per_class=100, test_profile="same")
    made = generate(base, spec)
    assert list(made.sizes) == [100] * 4 + [50] * 4
    assert made.open == (8, 9)
    test_counts = torch.bincount(made.splits.test.y, minlength=9)[:8].tolist()
    carved = [round(0.2 * n) for n in torch.bincount(base.train.y)[:8].tolist()]
    n_max = min(math.floor(n / s) for n, s in zip(carved, [1] * 4 + [0.5] * 4))
    assert test_counts == [n_max] * 4 + [round(n_max * 0.5)] * 4


def test_base_with_its_own_test_split():
    gen = torch.Generator().manual_seed(0)
    train = kdcore.ArrayDataset(x=torch.randn(500, 3, generator=gen),
                                y=torch.arange(500) % 5, num_classes=5,
                                class_names=("a", "b", "c", "d", "e"))
    test = kdcore.ArrayDataset(x=torch.randn(50, 3, generator=gen), y=torch.arange(50) % 5,
                               num_classes=5, class_names=train.class_names)
    made = generate(kdcore.DatasetSplits(train=train, test=test),
                    NCifarSpec(open_classes=[1], open_rate=0.2))
    assert not made.test_carved
    assert made.splits.train.class_names == ("a", "c", "d", "e", OPEN_CLASS_NAME)
    assert list(made.sizes) == [100] * 4 and made.n_open == 100
    new_test = made.splits.test
    assert len(new_test) == 40 and int(new_test.y.max()) == 3  # class "b" is gone
    assert torch.equal(torch.tensor([0, 2, 3, 4])[new_test.y], test.y[made.test_source])


def test_infeasible_requests_say_why():
    with pytest.raises(kdcore.KdcoreError, match=r"kept class 0 needs 500 .*max_per_class"):
        class_sizes([200, 300], [1.0, 1.0], 500)
    with pytest.raises(kdcore.KdcoreError, match=r"open_rate 0.9 .*largest feasible open_rate"):
        ncifar(base="digits", open_rate=0.9)
    with pytest.raises(kdcore.RecipeError, match=r"data.params.open_classes"):
        ncifar(base="digits", open_classes=[3, 3])
    with pytest.raises(kdcore.RecipeError, match=r"data.params.open_classes"):
        ncifar(base="digits", open_classes=9)
    with pytest.raises(kdcore.RecipeError, match=r"did you mean 'digits-lt'"):
        ncifar(preset="digits-l")
    with pytest.raises(kdcore.RecipeError, match=r"data.params.base.*did you mean 'digits'"):
        ncifar(base="digit")
    with pytest.raises(kdcore.RecipeError, match=r"data.params.base_params.flaten"):
        ncifar(base="digits", base_params={"flaten": True})
    with pytest.raises(kdcore.RecipeError, match=r"data.params.imbalance_ratio.*\(0, 1\]"):
        ncifar(base="digits", imbalance_ratio=2.0)


def test_presets_are_overridden_by_given_values():
    split = ncifar(preset="digits-lt", open_rate=0.1)
    counts = torch.bincount(split.train.y, minlength=9)
    assert int(counts[8]) == round(0.1 * int(counts[:8].sum()) / 0.9)
    # base_params merge into the preset's, unless the base itself is named again
    spec = resolve_spec("fmnist-lt", {"base_params": {"root": "/somewhere"}})
    assert spec.base_params == {"flatten": True, "root": "/somewhere"}
    assert resolve_spec("fmnist-lt", {"base": "digits", "base_params": {}}).base_params == {}


# -- the noise model ----------------------------------------------------------------------------


def _ctx(counts: list[int], n_open: int, seed: int = 0) -> kdcore.NoiseContext:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)]
                       + [torch.full((n_open,), len(counts))])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(9))]
    return kdcore.NoiseContext(labels=labels, num_classes=len(counts) + 1,
                               generator=torch.Generator().manual_seed(seed))


def test_largest_remainder_is_exact_and_breaks_ties_by_index():
    assert largest_remainder(25, torch.tensor([40, 30, 20, 10])).tolist() == [10, 8, 5, 2]
    assert largest_remainder(25, torch.ones(4)).tolist() == [7, 6, 6, 6]
    assert largest_remainder(0, torch.tensor([1, 2])).tolist() == [0, 0]


@pytest.mark.parametrize("closed", ["symmetric", "pair_flip"])
def test_noise_counts_are_exact_and_open_images_get_kept_labels(closed):
    ctx = _ctx([40, 30, 20, 10], 25)
    clean = ctx.labels.clone()
    noisy = ncifar_noise(ctx, closed=closed, closed_rate=0.2)
    is_open = clean == 4
    flipped = (noisy != clean) & ~is_open
    assert int(flipped.sum()) == round(0.2 * 125)  # a share of the whole split
    assert int(noisy.max()) < 4  # nobody keeps the sentinel
    if closed == "pair_flip":
        assert torch.equal(noisy[flipped], (clean[flipped] + 1) % 4)
    # proportional to the kept classes' sizes, by largest remainders
    assert torch.bincount(noisy[is_open], minlength=4).tolist() == [10, 8, 5, 2]
    again = ncifar_noise(_ctx([40, 30, 20, 10], 25), closed=closed, closed_rate=0.2)
    assert torch.equal(noisy, again)


def test_uniform_open_labels_and_no_closed_noise():
    ctx = _ctx([40, 30, 20, 10], 25)
    clean = ctx.labels.clone()
    noisy = ncifar_noise(ctx, closed="none", open_labels="uniform")
    assert torch.equal(noisy[clean < 4], clean[clean < 4])
    assert torch.bincount(noisy[clean == 4], minlength=4).tolist() == [7, 6, 6, 6]


def test_noise_model_errors():
    with pytest.raises(kdcore.KdcoreError, match="only 25 kept-class images"):
        ncifar_noise(_ctx([15, 10], 75), closed_rate=0.5)
    with pytest.raises(kdcore.KdcoreError, match="at least two kept classes"):
        ncifar_noise(_ctx([10], 5))


# -- inside a run: the history records the truth ------------------------------------------------


class DataProbe:
    @kdcore.hookimpl
    def kdcore_stage_start(self, ctx, stage):  # after every plugin's kdcore_run_start
        self.data = ctx.data
        self.status_producer = ctx.ledger.producer("ff/status")


@pytest.mark.slow
def test_run_records_status_and_open_images_never_carry_their_class(ff):
    # open classes in the middle of the label set, so that kept labels are remapped
    data = ('{ base = "digits", open_classes = [0, 5], open_rate = 0.25, '
            'imbalance = "exponential", imbalance_ratio = 0.25 }')
    probe = DataProbe()
    run_dir = ff.run(ff.stage("s", 1, ff.comp("ce")), data=data, observers=[probe])
    made = generate(_digits(), NCifarSpec(open_classes=[0, 5], open_rate=0.25,
                                          imbalance="exponential", imbalance_ratio=0.25))
    lookup = ff.digits_lookup()
    d = probe.data
    names = d.class_names
    assert names[-1] == OPEN_CLASS_NAME and len(names) == 9
    x = d.train.x.cpu().numpy()
    with kdcore.History(run_dir) as h:
        clean, noisy = h.data("clean_label"), h.data("noisy_label")
        status = h.data("ff/status")
        assert "ff/status" in h.data_names() and "ff/status" not in h.column_names()
        assert probe.status_producer == "ff"  # written by the plugin's run-start hook, as itself
        open_rows = clean == 8
        # the status column lines up with the samples, the labels and the images
        np.testing.assert_array_equal(status == STATUS_OPEN, open_rows)
        np.testing.assert_array_equal(status == STATUS_CLOSED, ~open_rows & (noisy != clean))
        np.testing.assert_array_equal(status == STATUS_CLEAN, ~open_rows & (noisy == clean))
        np.testing.assert_array_equal(h.data("clean_mask"), status == STATUS_CLEAN)
        original = [lookup[row.tobytes()] for row in x]
        for i in range(len(x)):
            if open_rows[i]:
                assert original[i] <= {0, 5}  # an image of an open class ...
                assert int(names[noisy[i]]) not in original[i]  # ... never labelled with it
                assert noisy[i] < 8
            else:
                assert int(names[clean[i]]) in original[i]  # kept images keep their class
        # realised rates on the training split: exact, given kdcore's stratified val carve
        n = len(clean)
        n_open_train = made.n_open - round(0.1 * made.n_open)
        assert int(open_rows.sum()) == n_open_train
        assert int((status == STATUS_CLOSED).sum()) == round(0.2 * n)
        kept_sizes = np.bincount(clean[~open_rows], minlength=8)
        assert kept_sizes.tolist() == [s - round(0.1 * s) for s in made.sizes]
        assert h.metric("ff/open_share")[0] == pytest.approx(n_open_train / n)
        assert h.metric("ff/closed_share")[0] == pytest.approx(round(0.2 * n) / n)
        # the transition matrix has the open-set row: where the open images' labels went
        t = h.data("transition_matrix")
        assert t.shape == (9, 9) and t[8, 8] == 0 and t[8].sum() == pytest.approx(1.0)
    # validation labels are noisy the same way; the test set is clean and has kept classes only
    assert int(d.val_noisy.max()) < 8 and bool((d.val.y == 8).any())
    assert int(d.test.y.max()) < 8 and len(d.test) == len(made.splits.test)


@pytest.mark.parametrize(("override", "message"), [
    ("data.noise.model=symmetric", "needs the noise model 'ncifar_noise'"),
    ("data.gold_per_class=2", "cannot make a clean gold split"),
    ("data.noise.apply_to_val=false", "needs it true"),
    ("data.dataset=digits", "works only with the ncifar dataset"),
])
def test_recipe_checks(ff, override, message):
    with pytest.raises(kdcore.RecipeError, match=message):
        ff.plan(ff.stage("s", 1, ff.comp("ce")), overrides=(override,))
