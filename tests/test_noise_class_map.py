"""Class-mapped ("asymmetric") noise: exact per-class counts, the presets' mappings, swaps that
read the clean labels, and one-line refusals of bad mappings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kdcore.config import bind_params
from kdcore.data.base import NoiseContext
from kdcore.data.class_map import CIFAR100_SUPERCLASS, class_map, resolve_mapping
from kdcore.data.noise import NOISE_MODELS
from kdcore.errors import KdcoreError, RecipeError


def _ctx(counts: list[int], seed: int = 0) -> NoiseContext:
    """Labels with ``counts[c]`` samples of class ``c``, in a shuffled order."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(99))]
    return NoiseContext(labels, len(counts), torch.Generator().manual_seed(seed))


# the DivideMix / ELR transition for CIFAR-10 asymmetric noise, as those codes write it
DIVIDEMIX_CIFAR10 = {0: 0, 2: 0, 4: 7, 7: 7, 1: 1, 9: 1, 3: 5, 5: 3, 6: 6, 8: 8}


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.45, 1.0])
def test_cifar10_flips_exactly_the_rate_of_each_mapped_class_to_its_partner(rate):
    counts = [50, 41, 37, 60, 23, 30, 44, 19, 28, 33]
    ctx = _ctx(counts)
    noisy = class_map(ctx, rate=rate, mapping="cifar10").numpy()
    clean = ctx.labels.numpy()
    for c, n in enumerate(counts):
        mine = noisy[clean == c]
        partner = DIVIDEMIX_CIFAR10[c]
        if partner == c:  # an unmapped class keeps every label
            assert (mine == c).all()
            continue
        assert set(np.unique(mine)) <= {c, partner}
        assert (mine == partner).sum() == round(rate * n)
    assert noisy.shape == clean.shape and noisy.dtype == np.int64


def test_a_swap_exchanges_samples_from_the_clean_labels_and_never_chains():
    ctx = _ctx([100, 80, 60])
    noisy = class_map(ctx, rate=0.3, mapping=[[0, 1], [1, 0]]).numpy()
    clean = ctx.labels.numpy()
    # 30 zeros became ones, 24 ones became zeros; none went 0 -> 1 -> 0; class 2 untouched
    assert ((clean == 0) & (noisy == 1)).sum() == 30 and ((clean == 0) & (noisy == 0)).sum() == 70
    assert ((clean == 1) & (noisy == 0)).sum() == 24 and ((clean == 1) & (noisy == 1)).sum() == 56
    assert (noisy[clean == 2] == 2).all()


def test_a_chain_of_pairs_maps_each_source_once():
    ctx = _ctx([10, 10, 10, 10])
    noisy = class_map(ctx, rate=1.0, mapping=[[0, 1], [1, 2], [2, 3]]).numpy()
    clean = ctx.labels.numpy()
    assert [int(noisy[clean == c][0]) for c in range(4)] == [1, 2, 3, 3]
    assert all(len(np.unique(noisy[clean == c])) == 1 for c in range(4))


def test_the_superclass_table_groups_cifar100_into_20_superclasses_of_5():
    table = np.asarray(CIFAR100_SUPERCLASS)
    assert table.shape == (100,) and np.bincount(table).tolist() == [5] * 20
    # fine classes by name (alphabetical, as CIFAR-100 numbers them) and their superclasses
    known = {"apple": (0, "fruit_and_vegetables"), "aquarium_fish": (1, "fish"),
             "baby": (2, "people"), "bear": (3, "large_carnivores"),
             "beaver": (4, "aquatic_mammals"), "bed": (5, "household_furniture"),
             "bicycle": (8, "vehicles_1"), "bottle": (9, "food_containers"),
             "tractor": (89, "vehicles_2"), "whale": (95, "aquatic_mammals"),
             "worm": (99, "non-insect_invertebrates")}
    coarse = ["aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
              "household_electrical_devices", "household_furniture", "insects",
              "large_carnivores", "large_man-made_outdoor_things",
              "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
              "medium_mammals", "non-insect_invertebrates", "people", "reptiles",
              "small_mammals", "trees", "vehicles_1", "vehicles_2"]
    for fine, (index, superclass) in known.items():
        assert coarse[table[index]] == superclass, fine


def test_superclass_pairs_swap_two_classes_in_every_superclass_drawn_by_the_generator():
    pairs = resolve_mapping("cifar100_superclass_pairs", 100, torch.Generator().manual_seed(3))
    table = np.asarray(CIFAR100_SUPERCLASS)
    assert len(pairs) == 40 and len({s for s, _ in pairs}) == 40
    assert sorted(table[s] for s, _ in pairs) == sorted(list(range(20)) * 2)
    assert all(table[s] == table[t] and (t, s) in pairs for s, t in pairs)
    other = resolve_mapping("cifar100_superclass_pairs", 100, torch.Generator().manual_seed(4))
    assert sorted(pairs) != sorted(other)
    ctx = _ctx([50] * 100, seed=3)
    noisy = class_map(ctx, rate=0.4, mapping="cifar100_superclass_pairs").numpy()
    flipped = noisy != ctx.labels.numpy()
    assert flipped.sum() == 40 * 20  # 40 source classes x round(0.4 * 50): a rate of 0.16
    assert {(int(c), int(n)) for c, n in zip(ctx.labels.numpy()[flipped], noisy[flipped])} \
        == set(pairs)


def test_the_same_generator_gives_the_same_labels_and_the_global_rng_does_not_matter():
    torch.manual_seed(1)
    first = class_map(_ctx([40] * 10, seed=5), rate=0.3, mapping="cifar10")
    torch.manual_seed(2)
    second = class_map(_ctx([40] * 10, seed=5), rate=0.3, mapping="cifar10")
    other = class_map(_ctx([40] * 10, seed=6), rate=0.3, mapping="cifar10")
    assert torch.equal(first, second) and not torch.equal(first, other)


@pytest.mark.parametrize(("mapping", "message"), [
    ([], "must list at least one"),
    ([[1]], r"entry 0 must be \[source, target\]"),
    ([[1, 2, 3]], r"entry 0 must be \[source, target\]"),
    ([[0, 1], [-1, 2]], r"entry 1 must be \[source, target\], two class indices >= 0"),
    ([[3, 3]], "entry 0 maps class 3 to itself"),
    ([[0, 1], [2, 3], [0, 2]], "class 0 is a source twice"),
    ("cifar100", "expected 'cifar10' or 'cifar100_superclass_pairs' or a list"),
    ([[0, 1.5]], "expected 'cifar10' or 'cifar100_superclass_pairs' or a list"),
    ([[True, 1]], "expected 'cifar10' or 'cifar100_superclass_pairs' or a list"),
])
def test_a_bad_mapping_is_refused_before_any_data(mapping, message):
    with pytest.raises(RecipeError, match=message) as err:
        bind_params(NOISE_MODELS["class_map"], {"rate": 0.2, "mapping": mapping},
                    "data.noise.params")
    assert err.value.key == "data.noise.params.mapping"
    with pytest.raises((KdcoreError, ValueError)):  # called directly, too
        class_map(_ctx([5] * 10), rate=0.2, mapping=mapping)


@pytest.mark.parametrize(("params", "message"), [
    ({"rate": 1.5, "mapping": "cifar10"}, "class_map noise: 'rate' must be in [0, 1], got 1.5"),
    ({"rate": 0.2, "mapping": "cifar"}, "class_map noise: 'mapping' must be one of cifar10, "
     "cifar100_superclass_pairs or [source, target] pairs, got 'cifar'"),
    ({"rate": 0.2, "mapping": [[0, 1], [0, 2]]}, "class_map noise: 'mapping': class 0 is a "
     "source twice (entry 1); each class is mislabelled as one other class"),
])
def test_a_direct_call_with_bad_parameters_is_one_exact_line(params, message):
    with pytest.raises(KdcoreError) as err:
        class_map(_ctx([5] * 10), **params)
    assert str(err.value) == message


def test_a_mapping_the_data_cannot_take_is_one_line():
    with pytest.raises(KdcoreError, match=r"mapping names class 12; the data have classes 0\.\.9"):
        class_map(_ctx([5] * 10), rate=0.2, mapping=[[0, 1], [3, 12]])
    with pytest.raises(KdcoreError, match="'cifar10' is for 10 classes .* the data have 3"):
        class_map(_ctx([5] * 3), rate=0.2, mapping="cifar10")
    with pytest.raises(KdcoreError, match="is for 100 classes"):
        class_map(_ctx([5] * 10), rate=0.2, mapping="cifar100_superclass_pairs")
    bad = NoiseContext(torch.tensor([0, 3, 10]), 10, torch.Generator())
    with pytest.raises(KdcoreError, match=r"labels must lie in 0\.\.9"):
        class_map(bad, rate=0.2, mapping="cifar10")


def test_a_recipe_names_it_and_kdcore_noise_writes_the_labels(tmp_path):
    from kdcore.cli import main

    out = tmp_path / "noisy.npy"
    res = CliRunner().invoke(main, [
        "noise", "recipes/ce.toml", "--out", str(out),
        "--set", 'data.noise={model="class_map", params={rate=0.4, mapping="cifar10"}}'])
    assert res.exit_code == 0, res.output
    from sklearn.datasets import load_digits

    clean = load_digits().target
    noisy = np.load(out)
    changed = noisy != clean
    assert changed.any() and all(DIVIDEMIX_CIFAR10[int(c)] == int(n)
                                 for c, n in zip(clean[changed], noisy[changed]))
    bad = CliRunner().invoke(main, [
        "check", "recipes/ce.toml", "--set",
        'data.noise={model="class_map", params={rate=0.4, mapping=[[0, 10]]}}'])
    assert bad.exit_code == 2 and "mapping names class 10" in bad.output
    assert "Traceback" not in bad.output
