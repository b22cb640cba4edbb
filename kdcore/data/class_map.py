"""Class-mapped ("asymmetric") label noise: some classes are mislabelled as one given other
class each, as the noisy-label literature's asymmetric settings do.

``mapping`` is a list of ``[source, target]`` class pairs, or a preset:

- ``"cifar10"``: truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog (classes
  9 -> 1, 2 -> 0, 4 -> 7, 3 -> 5, 5 -> 3), the mapping of Patrini et al. (CVPR 2017) that
  DivideMix, ELR and most CIFAR-10 "asym" tables use; the other five classes stay clean.
- ``"cifar100_superclass_pairs"``: in each of CIFAR-100's 20 superclasses, two of its five fine
  classes drawn at random (with the noise's generator) swap labels; the other three stay clean.
  The within-superclass asymmetric noise of ProSelfLC (CVPR 2021), which SMKD's protocol
  follows ("within each coarse class, pick two fine classes A and B and swap r of their
  labels").

**Reconstruction (ours):** exactly ``round(rate * n_c)`` samples of each source class ``c``,
a uniformly random subset, get its target, so every source class's realised flip rate is
``rate`` (DivideMix draws one subset of ``rate * N`` over all samples and maps those of source
classes: the same rate in expectation, a random one per class). A swap reads the clean labels:
``A -> B`` and ``B -> A`` exchange samples, they do not chain.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch

from kdcore.data.base import NoiseContext
from kdcore.errors import KdcoreError
from kdcore.validators import require, unit_interval

CIFAR10_ASYMMETRIC = ((9, 1), (2, 0), (4, 7), (3, 5), (5, 3))
"""Patrini et al.'s CIFAR-10 mapping, ``(source, target)``: truck -> automobile, bird ->
airplane, deer -> horse, cat -> dog, dog -> cat."""

CIFAR100_SUPERCLASS = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)
"""The superclass (coarse label, 0-19) of each of CIFAR-100's fine classes 0-99, as the
dataset's ``coarse_labels`` give it: apple (0) is fruit and vegetables (4), aquarium fish (1)
fish (1), baby (2) people (14)."""

PRESETS = ("cifar10", "cifar100_superclass_pairs")


def class_pairs(instance: Any, attribute: Any, value: Any) -> None:
    """A non-empty list of ``[source, target]`` pairs of class indices (>= 0), each source
    once and never its own target."""
    name = attribute.name
    if isinstance(value, str):
        if value not in PRESETS:  # (a recipe's Literal says so first; a direct call here)
            raise ValueError(f"'{name}' must be one of {', '.join(PRESETS)} or [source, target] "
                             f"pairs, got {value!r}")
        return
    if not value:
        raise ValueError(f"'{name}' must list at least one [source, target] pair")
    sources: set[int] = set()
    for i, pair in enumerate(value):
        if len(pair) != 2 or not all(isinstance(c, int) and not isinstance(c, bool)
                                     and c >= 0 for c in pair):
            raise ValueError(f"'{name}': entry {i} must be [source, target], two class indices "
                             f">= 0, got {pair!r}")
        source, target = pair
        if source == target:
            raise ValueError(f"'{name}': entry {i} maps class {source} to itself")
        if source in sources:
            raise ValueError(f"'{name}': class {source} is a source twice (entry {i}); each "
                             "class is mislabelled as one other class")
        sources.add(source)


Rate = Annotated[float, unit_interval]
ClassMapping = Annotated[Literal["cifar10", "cifar100_superclass_pairs"] | list[list[int]],
                         class_pairs]
"""A preset's name or ``[source, target]`` pairs of class indices."""


def class_map(ctx: NoiseContext, *, rate: Rate, mapping: ClassMapping) -> torch.Tensor:
    """Class-mapped noise: ``rate`` of each source class's samples get its target class.

    Args:
        ctx: the clean labels and the generator.
        rate: the share of each source class's samples relabelled, in [0, 1]; the whole
            split's realised rate is ``rate`` times the share of samples in source classes
            (half of it for ``"cifar10"``, two fifths for ``"cifar100_superclass_pairs"``).
        mapping: ``"cifar10"``, ``"cifar100_superclass_pairs"`` (module docstring) or a list
            of ``[source, target]`` class pairs.

    Returns:
        The noisy labels, ``int64`` with the shape of ``ctx.labels``.

    Raises:
        KdcoreError: a preset on a dataset with another number of classes, or a pair naming a
            class the dataset does not have.
    """
    require(rate, "rate", Rate, where="class_map noise")
    require(mapping, "mapping", ClassMapping, where="class_map noise")
    labels, gen = ctx.flat_labels(), ctx.generator
    noisy = labels.clone()
    for source, target in resolve_mapping(mapping, ctx.num_classes, gen):
        rows = (labels == source).nonzero().squeeze(1)
        chosen = torch.randperm(rows.numel(), generator=gen, device=gen.device)
        noisy[rows[chosen[:round(rate * rows.numel())]]] = target
    return ctx.shaped_as_labels(noisy)


def resolve_mapping(mapping: str | list[list[int]], num_classes: int,
                    gen: torch.Generator) -> list[tuple[int, int]]:
    """The ``(source, target)`` pairs ``mapping`` stands for on ``num_classes`` classes (a
    superclass preset draws its pairs from ``gen``)."""
    if isinstance(mapping, str):
        size = {"cifar10": 10, "cifar100_superclass_pairs": 100}[mapping]
        if num_classes != size:
            raise KdcoreError(f"class_map: mapping '{mapping}' is for {size} classes (CIFAR-"
                              f"{size}'s), the data have {num_classes}")
        if mapping == "cifar10":
            return list(CIFAR10_ASYMMETRIC)
        pairs = []
        for coarse in range(20):
            fine = [c for c, s in enumerate(CIFAR100_SUPERCLASS) if s == coarse]
            a, b = (fine[int(i)] for i in torch.randperm(len(fine), generator=gen,
                                                         device=gen.device)[:2])
            pairs += [(a, b), (b, a)]
        return pairs
    outside = [c for pair in mapping for c in pair if c >= num_classes]
    if outside:
        raise KdcoreError(f"class_map: mapping names class {outside[0]}; the data have "
                          f"classes 0..{num_classes - 1}")
    return [(int(s), int(t)) for s, t in mapping]


__all__ = ["CIFAR100_SUPERCLASS", "CIFAR10_ASYMMETRIC", "class_map", "class_pairs",
           "resolve_mapping"]
