"""The nCIFAR generator, its noise model and the SSL helpers at their edges: range boundaries,
exact messages, the base's own test split, seeding (written after a mutation run,
``benchmarks/mutants.py kdcore-ff``, found them untested)."""

from __future__ import annotations

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
from kdcore_ff.ssl import HEAD, feature_view, head_seed


def _refused(call, message: str, key: str | None = None):
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
        _refused(lambda bad=bad: _open_class_ids(bad, 10),
                 f"got {bad}, expected 0 to 8 (at least two classes must stay in the label set)",
                 "data.params.open_classes")


def test_open_classes_by_index_at_their_bounds():
    assert _open_class_ids([9, 0], 10) == [0, 9]
    assert _open_class_ids(list(range(8)), 10) == list(range(8))
    for bad in ([10], [-1], [2, 2], list(range(9))):
        _refused(lambda bad=bad: _open_class_ids(bad, 10),
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
    """400 training rows (x = the row number) and, with ``test``, 40 test rows (x = 1000 +
    the row number), four classes in turn."""
    train = kdcore.ArrayDataset(x=torch.arange(400.0)[:, None], y=torch.arange(400) % 4,
                                num_classes=4, class_names=names)
    held = kdcore.ArrayDataset(x=1000 + torch.arange(40.0)[:, None], y=(torch.arange(40) % 4),
                               num_classes=4, class_names=names)
    return kdcore.DatasetSplits(train=train, test=held if test else None)


def test_the_base_test_split_is_the_test_set():
    made = generate(_base(True), NCifarSpec(open_classes=[1], open_rate=0.0))
    test = made.splits.test
    assert (test.x >= 1000).all() and len(test) == 30
    rows = (test.x[:, 0] - 1000).long()
    assert torch.equal(torch.tensor([0, 0, 1, 2])[rows % 4], test.y)  # b dropped, c -> 1
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
    _refused(lambda: generate(base, spec),
             "ncifar: open_rate 0.9 needs 2700 open-class images but the base has 100 of "
             "classes [3]; the largest feasible open_rate with these class sizes is 0.25")
    _refused(lambda: generate(base, NCifarSpec(open_classes=[], open_rate=0.2)),
             "open_rate > 0 needs open_classes", "data.params.open_rate")


def test_the_loader_seeds_its_draw_and_refuses_itself():
    made = [ncifar(base="digits", open_rate=0.1, imbalance="exponential", seed=s)
            for s in (0, 0, 1)]
    assert torch.equal(made[0].train.x, made[1].train.x)
    assert not torch.equal(made[0].train.x, made[2].train.x)
    _refused(lambda: ncifar(base="ncifar"), "ncifar cannot wrap itself", "data.params.base")


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
    _refused(lambda: resolve_spec("zzz", {}),
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
    _refused(lambda: ncifar_noise(_ctx(labels, 3), closed_rate=1.5),
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


def test_open_labels_proportional_with_an_absent_kept_class():
    labels = [0] * 6 + [2] * 3 + [3] * 9  # class 1 absent, class 3 the sentinel
    noisy = ncifar_noise(_ctx(labels, 3), closed="none")
    assert torch.bincount(noisy[9:], minlength=3).tolist() == [6, 0, 3]


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
