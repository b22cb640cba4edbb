"""The nCIFAR generator, its noise model and the SSL helpers at their edges: range boundaries,
exact messages, the base's own test split, seeding (written after a mutation run,
``benchmarks/mutants.py kdcore-ff``, found them untested)."""

from __future__ import annotations

import re
import zlib

import attrs
import pytest
import torch
from loguru import logger

import kdcore
from kdcore.testing import TinyNet, harness
from kdcore_ff import (
    OPEN_CLASS_NAME,
    STATUS_CLEAN,
    STATUS_CLOSED,
    STATUS_OPEN,
    InstanceFilter,
    ncifar_noise,
)
from kdcore_ff.ncifar import (
    NCifarSpec,
    _open_class_ids,
    class_sizes,
    filter_quality,
    generate,
    label_classes,
    largest_remainder,
    ncifar,
    profile,
    resolve_spec,
    run_status,
)
from kdcore_ff.ssl import HEAD, SSLPretrain, feature_view, head_seed


def assert_refused(call, message: str, key: str | None = None):
    """Assert that ``call()`` raises a KdcoreError whose message is exactly ``message`` (and
    whose recipe key is ``key``, when given)."""
    with pytest.raises(kdcore.KdcoreError) as info:
        call()
    assert (getattr(info.value, "detail", None) or str(info.value)) == message
    if key is not None:
        assert info.value.key == key
    return info.value


# -- open classes, profiles, sizes --------------------------------------------------------------


def test_open_classes_by_count_at_their_bounds():
    assert _open_class_ids(0, 10) == []
    assert _open_class_ids(8, 10) == list(range(2, 10))
    for bad in (9, -1):
        assert_refused(lambda bad=bad: _open_class_ids(bad, 10),
                 f"got {bad}, expected 0 to 8 (at least two classes must stay in the label set)",
                 "data.params.open_classes")


def test_open_classes_by_index_at_their_bounds():
    assert _open_class_ids([9, 0], 10) == [0, 9]
    assert _open_class_ids(list(range(8)), 10) == list(range(8))
    for bad in ([10], [-1], [2, 2], list(range(9))):
        assert_refused(lambda bad=bad: _open_class_ids(bad, 10),
                 f"got {bad}, expected distinct class indices in 0..9 leaving at least two "
                 "classes", "data.params.open_classes")


def test_profiles_of_one_and_two_classes():
    assert profile("exponential", 1, 0.1, 0.5) == [1.0]
    assert profile("exponential", 2, 0.1, 0.5) == [1.0, 0.1]


def test_class_sizes_of_one_per_class_and_the_least_size():
    assert class_sizes([5, 5], [1.0, 0.1], 1) == [1, 1]
    assert class_sizes([50, 50], [1.0, 0.01], 20) == [20, 1]


def test_largest_remainder_weights_at_their_edges():
    assert largest_remainder(3, torch.tensor([-1.0, 1.0])).tolist() == [0, 3]
    assert largest_remainder(4, torch.zeros(2)).tolist() == [2, 2]
    assert largest_remainder(4, torch.tensor([0.25, 0.75])).tolist() == [1, 3]


# -- the generator ------------------------------------------------------------------------------


def _base(test: bool, names: tuple[str, ...] = ("a", "b", "c", "d")) -> kdcore.DatasetSplits:
    """400 training rows (x = the row number, class = row % 4) and, with ``test``, 40 test
    rows (x = 1000 + the row number, class = (row + 1) % 4)."""
    train = kdcore.ArrayDataset(x=torch.arange(400.0)[:, None], y=torch.arange(400) % 4,
                                num_classes=4, class_names=names)
    held = kdcore.ArrayDataset(x=1000 + torch.arange(40.0)[:, None], y=(torch.arange(41) % 4)[1:],
                               num_classes=4, class_names=names)
    return kdcore.DatasetSplits(train=train, test=held if test else None)


def test_the_base_test_split_is_the_test_set():
    made = generate(_base(True), NCifarSpec(open_classes=[1], open_rate=0.0))
    test = made.splits.test
    assert (test.x >= 1000).all() and len(test) == 30
    rows = (test.x[:, 0] - 1000).long()
    assert torch.equal(torch.tensor([0, 0, 1, 2])[(rows + 1) % 4], test.y)  # b gone, c -> 1
    assert test.class_names == made.splits.train.class_names == ("a", "c", "d",
                                                                 OPEN_CLASS_NAME)


def test_a_profiled_test_set_is_seeded_and_keeps_one_per_class():
    spec = NCifarSpec(open_classes=[3], open_rate=0.0, imbalance="exponential",
                      imbalance_ratio=0.01, test_profile="same", seed=4)
    first = generate(_base(True), spec)
    torch.manual_seed(1)
    again = generate(_base(True), spec)
    torch.manual_seed(2)
    assert torch.equal(first.test_source, again.test_source)
    counts = torch.bincount(first.splits.test.y, minlength=3).tolist()
    assert counts == [10, 1, 1]  # round(10 * 0.1) = 1 and round(10 * 0.01) = 0 -> 1


def test_class_names_default_to_the_base_indices():
    made = generate(_base(False, names=()), NCifarSpec(open_classes=[0], open_rate=0.0))
    assert made.splits.train.class_names == ("1", "2", "3", OPEN_CLASS_NAME)


def test_infeasible_open_rates_name_the_largest_feasible_one():
    base = _base(False)
    spec = NCifarSpec(open_classes=[3], open_rate=0.9, test_fraction=0.0)
    # 3 x 100 kept, 100 open: at most 100 / 400 = 0.25
    assert_refused(lambda: generate(base, spec),
             "ncifar: open_rate 0.9 needs 2700 open-class images but the base has 100 of "
             "classes [3]; the largest feasible open_rate with these class sizes is 0.25")
    # 4 open images and one per kept class: at most 4 / 6, cut (not rounded) to 0.666
    tiny = kdcore.DatasetSplits(train=kdcore.ArrayDataset(
        x=torch.zeros(6, 1), y=torch.tensor([0, 1, 2, 2, 2, 2]), num_classes=3), test=None)
    assert_refused(lambda: generate(tiny, NCifarSpec(open_classes=[2], open_rate=0.9,
                                               test_fraction=0.0)),
             "ncifar: open_rate 0.9 needs 18 open-class images but the base has 4 of classes "
             "[2]; the largest feasible open_rate with these class sizes is 0.666")
    assert_refused(lambda: generate(base, NCifarSpec(open_classes=[], open_rate=0.2)),
             "open_rate > 0 needs open_classes", "data.params.open_rate")


def test_the_loader_passes_every_parameter_on():
    made = ncifar(base="digits", open_classes=[9], open_rate=0.0, imbalance="step",
                  imbalance_ratio=0.5, step_fraction=0.25, max_per_class=40, test_fraction=0.5,
                  test_profile="same")
    sizes = torch.bincount(made.train.y, minlength=10).tolist()
    assert sizes == [40] * 7 + [20] * 2 + [0]  # round(0.25 * 9) = 2 minority classes
    test = torch.bincount(made.test.y, minlength=10).tolist()
    assert test[:7] == [test[0]] * 7 and test[7:9] == [round(test[0] * 0.5)] * 2
    assert 80 <= test[0] <= 92  # half of each class of about 180 digits: the test carve
    with pytest.raises(kdcore.RecipeError) as info:
        ncifar(base="digit")
    assert info.value.key == "data.params.base"


def test_the_loader_seeds_its_draw_and_refuses_itself():
    made = [ncifar(base="digits", open_rate=0.1, imbalance="exponential", seed=s)
            for s in (0, 0, 1)]
    assert torch.equal(made[0].train.x, made[1].train.x)
    assert not torch.equal(made[0].train.x, made[2].train.x)
    assert_refused(lambda: ncifar(base="ncifar"), "ncifar cannot wrap itself", "data.params.base")


def test_the_loader_logs_what_it_made():
    lines: list[str] = []
    sink = logger.add(lines.append, format="{message}")
    try:
        made = ncifar(base="digits", open_classes=[8, 9], open_rate=0.2)
    finally:
        logger.remove(sink)
    n = len(made.train)
    n_open = int((made.train.y == 8).sum())
    assert f"as open noise ({n_open / n:.3f} of {n})" in "".join(lines)


def test_preset_hints_and_base_params():
    assert_refused(lambda: resolve_spec("zzz", {}),
             "unknown preset 'zzz'; presets: digits-lt, digits-open, digits-step, fmnist-lt, "
             "fmnist-open", "data.params.preset")
    assert resolve_spec(None, {"base_params": {"flatten": True}}).base_params == {
        "flatten": True}


# -- the noise model ----------------------------------------------------------------------------


def _ctx(labels: list[int], k: int, seed: int = 0) -> kdcore.NoiseContext:
    return kdcore.NoiseContext(labels=torch.tensor(labels), num_classes=k + 1,
                               generator=torch.Generator().manual_seed(seed))


def test_closed_rate_of_one_flips_every_kept_image():
    labels = [0, 1, 2] * 10
    noisy = ncifar_noise(_ctx(labels, 3), closed_rate=1.0)
    assert (noisy != torch.tensor(labels)).all()
    assert_refused(lambda: ncifar_noise(_ctx(labels, 3), closed_rate=1.5),
             "ncifar_noise: closed_rate must be in [0, 1], not 1.5")


def test_pair_flip_passes_its_mapping_on():
    labels = torch.arange(60) % 6
    seen = set()
    for seed in range(4):
        noisy = ncifar_noise(_ctx(labels.tolist(), 6, seed), closed="pair_flip",
                             closed_rate=1.0, mapping="random")
        partner = {int(c): set(noisy[labels == c].tolist()) for c in range(6)}
        assert all(len(p) == 1 for p in partner.values())  # one partner per class
        seen |= {(c, next(iter(p))) for c, p in partner.items()}
    assert any(p != (c + 1) % 6 for c, p in seen)  # not the "next" mapping


@pytest.mark.parametrize(("kept", "want"), [([0] * 6 + [2] * 3, [6, 0, 3]),
                                            ([0] * 6 + [1] * 3, [6, 3, 0])])
def test_open_labels_proportional_with_an_absent_kept_class(kept, want):
    labels = kept + [3] * 9  # class 3: the sentinel
    noisy = ncifar_noise(_ctx(labels, 3), closed="none")
    assert torch.bincount(noisy[9:], minlength=3).tolist() == want


def test_open_images_get_their_labels_in_random_order():
    labels = [0] * 20 + [1] * 20 + [2] * 40
    noisy = ncifar_noise(_ctx(labels, 2), closed="none", open_labels="uniform")[40:]
    assert torch.bincount(noisy).tolist() == [20, 20]
    assert not torch.equal(noisy, noisy.sort().values)  # not handed out in row order


def test_noise_model_messages():
    assert_refused(lambda: ncifar_noise(_ctx([0, 1], 1)),
             "ncifar_noise needs at least two kept classes plus the open-set class (use it "
             "with the ncifar dataset)")
    assert_refused(lambda: class_sizes([3], [1.0], 5),
             "ncifar: kept class 0 needs 5 training images (max_per_class 5 x profile 1) but "
             "the base has 3 left; lower data.params.max_per_class (0: the largest feasible)")


# -- status on ncifar data ----------------------------------------------------------------------


def test_status_and_label_count_on_ncifar_data():
    noisy = torch.tensor([0, 1, 2, 0, 1, 2])
    clean = torch.tensor([0, 2, 3, 0, 3, 2])  # 3: the sentinel
    h = harness(InstanceFilter, {}, x=torch.zeros(6, 2), noisy_label=noisy, clean_label=clean,
                num_classes=4, models={"student": TinyNet(2, 4)})
    assert label_classes(h.ctx) == 4
    plain = run_status(h.ctx).tolist()
    assert plain == [STATUS_CLEAN, STATUS_CLOSED, STATUS_CLOSED, STATUS_CLEAN, STATUS_CLOSED,
                     STATUS_CLEAN]
    h.run.data = attrs.evolve(h.run.data, class_names=("0", "1", "2", OPEN_CLASS_NAME))
    assert label_classes(h.ctx) == 3
    assert run_status(h.ctx).tolist() == [STATUS_CLEAN, STATUS_CLOSED, STATUS_OPEN,
                                          STATUS_CLEAN, STATUS_OPEN, STATUS_CLEAN]


def test_status_recorded_by_the_plugin_wins():
    h = harness(InstanceFilter, {}, x=torch.zeros(3, 2), noisy_label=torch.tensor([0, 1, 0]),
                num_classes=2, models={"student": TinyNet(2, 2)})
    h.run.ledger.add("ff/status", torch.tensor([2, 2, 1]), producer="ff", kind="label")
    assert run_status(h.ctx).tolist() == [2, 2, 1]


def test_filter_quality_without_drops_or_noise_is_nan():
    q = filter_quality(torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.long))
    assert all(v != v for v in q.values())


def test_filter_quality_of_soft_scores():
    scores = torch.tensor([0.0, 0.5, 1.0, 0.0])
    status = torch.tensor([STATUS_OPEN, STATUS_CLEAN, STATUS_OPEN, STATUS_CLOSED])
    q = filter_quality(scores, status)  # dropped: rows 0 and 3
    assert q == {"open_precision": 0.5, "open_recall": 0.5, "closed_recall": 1.0,
                 "noisy_precision": 1.0}


# -- SSL helpers --------------------------------------------------------------------------------


def test_head_seed_golden_values():
    for seed, role in ((0, "student"), (7, "teacher"), (2**62 + 5, "student")):
        want = (seed * 1_000_003 + zlib.crc32(f"{role}/{HEAD}".encode())) % (2**63)
        assert head_seed(seed, role) == want


def test_every_served_model_gets_its_own_head():
    torch.manual_seed(0)
    h = harness(SSLPretrain, {"projection_dim": 3}, x=torch.randn(8, 6),
                noisy_label=torch.arange(8) % 2,
                models={"student": TinyNet(6, 2), "peer": TinyNet(6, 2)},
                train=("student", "peer"))
    h.component.adapt_models(h.ctx)
    heads = [getattr(h.ctx.models[r], HEAD)[0].weight for r in ("student", "peer")]
    assert not torch.equal(*heads)


def _image_view(crop_padding: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight 4 x 4 images and one SSL view of them with only the crop and flip (the
    component's generator seeded 0)."""
    torch.manual_seed(0)
    x = torch.randn(8, 1, 4, 4)
    h = harness(SSLPretrain, {"crop_padding": crop_padding, "flip": flip, "noise_std": 0.0,
                              "drop_prob": 0.0, "recipe_augment": False}, x=x,
                noisy_label=torch.arange(8) % 2, models={"student": TinyNet(16, 2)}).setup()
    return x, h.component.view(h.ctx, x)


def test_image_views_are_flipped_without_a_crop():
    x, view = _image_view(0, True)
    same = [torch.equal(v, a) for v, a in zip(view, x)]
    mirrored = [torch.equal(v, a.flip(-1)) for v, a in zip(view, x)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert any(same) and any(mirrored)


def test_image_views_are_cropped_without_a_flip():
    from kdcore.data.augment import random_crop_flip

    x, view = _image_view(1, False)
    want = random_crop_flip(x, torch.Generator().manual_seed(0), padding=1, flip=False)
    assert torch.equal(view, want)


def test_a_head_whose_features_a_later_component_changed_is_refused_at_set_up():
    """An LSH connector added after the head (a later stage's mimicking, say) widened the
    features the head reads: the first batch stopped with a shape error."""
    torch.manual_seed(0)
    models = {"student": TinyNet(6, 2)}
    h = harness(SSLPretrain, {"projection_dim": 3}, x=torch.randn(4, 6),
                noisy_label=torch.arange(4) % 2, models=models)
    h.component.adapt_models(h.ctx)
    h.component.setup(h.ctx)  # the features the head was built for
    models["student"].classifier = torch.nn.Linear(12, 2)  # what a connector does
    assert_refused(lambda: h.component.setup(h.ctx),
                   "component 'sslpretrain': model 'student' has 12 features, but its "
                   "projection head was built for 8: a component after this one in the recipe "
                   "changed the model's features (an LSH connector, say); give 'student' the "
                   "feature size that component needs, so that nothing changes, or put that "
                   "component's stage first")


def test_a_second_entry_with_another_head_shape_is_refused():
    torch.manual_seed(0)
    models = {"student": TinyNet(6, 2)}
    first = harness(SSLPretrain, {"projection_dim": 3}, x=torch.randn(4, 6),
                    noisy_label=torch.arange(4) % 2, models=models)
    first.component.adapt_models(first.ctx)
    second = harness(SSLPretrain, {"projection_dim": 5}, x=torch.randn(4, 6),
                     noisy_label=torch.arange(4) % 2, models=models, name="again")
    assert_refused(lambda: second.component.adapt_models(second.ctx),
             "component 'again': model 'student' already has a projection head (8, 8, 3) "
             "from another ssl_pretrain entry; give both the same projection_hidden and "
             "projection_dim")


def test_feature_view_draws_only_what_it_uses():
    x = torch.ones(5, 7)
    gen = torch.Generator().manual_seed(3)
    out = feature_view(x, gen, noise_std=0.0, drop_prob=0.5)
    ref = torch.Generator().manual_seed(3)
    keep = torch.rand(x.shape, generator=ref) >= 0.5
    assert torch.equal(out, x * keep)  # no noise drawn before the mask
    gen = torch.Generator().manual_seed(3)
    feature_view(x, gen, noise_std=0.0, drop_prob=0.0)
    assert torch.equal(torch.rand(3, generator=gen),
                       torch.rand(3, generator=torch.Generator().manual_seed(3)))


def test_a_views_noise_is_held_to_float32():
    """``noise_std = 1e300`` passed ``check``; every view was infinite at the first step."""
    from kdcore.config import structure
    from kdcore_ff.ssl import SSLParams

    assert structure(SSLParams, {"noise_std": 3e38}).noise_std == 3e38
    for std in (3.5e38, 1e300):
        with pytest.raises(kdcore.RecipeError, match=re.escape(
                "'noise_std' must be a finite float32 number (magnitude at most 3.4e38), got")):
            structure(SSLParams, {"noise_std": std})
