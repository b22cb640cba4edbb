"""nCIFAR-style data: closed noise, open noise and class imbalance on any registered dataset.

F&F (arXiv 2103.15055) argue that noisy CIFAR violates two assumptions of real noisy data: all
noise is *closed* (the true class is one of the C labels) and the classes are balanced. Their
nCIFAR sets break both; how exactly is unknown (spec ``methods/ff.md`` §6.4), so this module is a
parameterised reconstruction, not the paper's generator.

Two registered pieces work together:

* the dataset loader ``ncifar`` wraps a base loader (``digits``, ``fashion_mnist``, or any other
  registered dataset), removes the held-out ("open") classes from the label set, draws the kept
  classes' sizes from an imbalance profile, adds images of the open classes as the open-noise
  pool, and returns a clean test split of the kept classes only;
* the noise model ``ncifar_noise`` (which the recipe must name) relabels every open-class image
  into a kept class and adds closed noise (symmetric or pair-flip) to the kept-class images.

**The open-set sentinel class.** kdcore's engine applies the noise model to the *true* labels
of each split after carving the validation split, and records those true labels (``clean_label``
in the ledger and the history) and ``clean_mask = noisy == clean``. An open-class image has no
true label among the kept classes, so the loader gives it the extra label ``K`` (the number of
kept classes), named ``"<open-set>"``: the dataset has ``K + 1`` classes, the last of which is
never a training target (the noise model relabels every such image into ``0 .. K-1``) and never
a test label. Consequences, all intended:

* ``clean_label == K`` marks an open-noise sample in the ledger and in the history's ``/data``;
  its observed label is never its true class (which is not a label at all), so
  ``clean_mask`` is False and every selection's precision/recall counts it as noisy;
* models get ``K + 1`` outputs; the extra logit is never a target and only loses probability
  (label correction ignores it; see :func:`label_classes`);
* the realised transition matrix has a row ``K``: where the open images' labels went.

The per-sample status (0 clean, 1 closed-noisy, 2 open-noisy) is also written to the ledger
column ``ff/status`` at the start of the run (see :func:`sample_status`).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
import torch
from loguru import logger

import kdcore
from kdcore.config import bind_params, structure
from kdcore.validators import below_one, between, non_negative, unit_interval

OPEN_CLASS_NAME = "<open-set>"
"""The name of the sentinel class that marks open-set images (always the last class)."""

STATUS_CLEAN, STATUS_CLOSED, STATUS_OPEN = 0, 1, 2
"""The values of the ledger column ``ff/status``."""

DATASET = "ncifar"
NOISE_MODEL = "ncifar_noise"


# -- the generator's parameters -----------------------------------------------------------------


_ratio = between(0.0, 1.0, include_low=False, what="smallest / largest class")


@attrs.frozen
class NCifarSpec:
    """What ``ncifar`` generates (``data.params``; a ``preset`` fills the keys not given).

    Attributes:
        base: the registered dataset to build from (``digits``, ``fashion_mnist``, ...).
        base_params: the base loader's own parameters (``{ flatten = true }``).
        open_classes: how many of the base's classes to hold out (the last ones), or a list of
            their indices. Their images become the open-noise pool; they leave the label set.
        open_rate: the share of the generated training set made of open-class images:
            ``n_open = round(open_rate * S / (1 - open_rate))`` for ``S`` kept-class images.
        imbalance: the kept-class size profile: ``none``, ``exponential``
            (``n_c = n_max * ratio^(c / (K - 1))``, the long-tailed CIFAR profile) or ``step``
            (the last ``round(step_fraction * K)`` classes have ``n_max * ratio``).
        imbalance_ratio: smallest / largest class size, in (0, 1].
        step_fraction: the share of minority classes of the ``step`` profile.
        max_per_class: ``n_max``, the largest class's size (0: the largest the base allows).
        test_fraction: for a base without a test split, the share of each kept class carved
            out (before the profile is applied) as the clean test set.
        test_profile: ``balanced`` keeps the test set as it comes; ``same`` applies the
            training profile to it too (then plain and class-balanced accuracy differ).
        seed: seeds which images are drawn; the noise comes from the run's seed.
    """

    base: str = "digits"
    base_params: dict[str, Any] = attrs.Factory(dict)
    open_classes: int | list[int] = 2
    open_rate: float = attrs.field(default=0.2, validator=below_one)
    imbalance: Literal["none", "exponential", "step"] = "none"
    imbalance_ratio: float = attrs.field(default=0.1, validator=_ratio)
    step_fraction: float = attrs.field(default=0.5, validator=unit_interval)
    max_per_class: int = attrs.field(default=0, validator=non_negative)
    test_fraction: float = attrs.field(default=0.2, validator=below_one)
    test_profile: Literal["balanced", "same"] = "balanced"
    seed: int = 0


PRESETS: dict[str, dict[str, Any]] = {
    # 8 digits kept, 8 and 9 open; 1,797 images leave ~144 per kept class after the test carve
    "digits-lt": {"base": "digits", "open_classes": [8, 9], "open_rate": 0.2,
                  "imbalance": "exponential", "imbalance_ratio": 0.1},
    "digits-step": {"base": "digits", "open_classes": [8, 9], "open_rate": 0.2,
                    "imbalance": "step", "imbalance_ratio": 0.25, "step_fraction": 0.5},
    "digits-open": {"base": "digits", "open_classes": [8, 9], "open_rate": 0.2},
    # Fashion-MNIST, Bag and Ankle boot open, 3,000 images in the head class (~12.4k in all)
    "fmnist-lt": {"base": "fashion_mnist", "base_params": {"flatten": True},
                  "open_classes": [8, 9], "open_rate": 0.2, "imbalance": "exponential",
                  "imbalance_ratio": 0.1, "max_per_class": 3000},
    "fmnist-open": {"base": "fashion_mnist", "base_params": {"flatten": True},
                    "open_classes": [8, 9], "open_rate": 0.2, "max_per_class": 3000},
}
"""Generator presets (ours, not the paper's: its nCIFAR parameters are unknown)."""


def resolve_spec(preset: str | None, given: Mapping[str, Any]) -> NCifarSpec:
    """The generator's parameters: ``preset``'s values, overridden by those ``given``."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            close = difflib.get_close_matches(preset, list(PRESETS), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise kdcore.RecipeError(
                f"unknown preset '{preset}'{hint}; presets: "
                f"{', '.join(sorted(PRESETS))}", key="data.params.preset")
        values.update(PRESETS[preset])
    given = {k: v for k, v in given.items() if v is not None}
    if isinstance(given.get("base_params"), Mapping) and "base" not in given:
        # the preset's base loader parameters stay unless named again: { root = "..." }
        # keeps the preset's flatten = true
        given["base_params"] = {**values.get("base_params", {}), **given["base_params"]}
    values.update(given)
    return structure(NCifarSpec, values, "data.params")


# -- the generator ------------------------------------------------------------------------------


@attrs.frozen
class Generated:
    """What :func:`generate` made, with the bookkeeping the tests and the README use.

    Attributes:
        splits: the dataset (``K + 1`` classes; the last is the open-set sentinel).
        kept: the base class index of each kept class, in new label order.
        open: the base class indices held out.
        sizes: the kept-class sizes of the training set (the profile).
        n_open: the number of open-class images in the training set.
        train_source: each training row's row in the base training split.
        test_source: each test row's row in the base test split (or base training split when
            the test set was carved out of it).
        test_carved: whether the test set was carved out of the base training split.
    """

    splits: kdcore.DatasetSplits
    kept: tuple[int, ...]
    open: tuple[int, ...]
    sizes: tuple[int, ...]
    n_open: int
    train_source: torch.Tensor
    test_source: torch.Tensor
    test_carved: bool


def profile(kind: str, num: int, ratio: float, step_fraction: float) -> list[float]:
    """The relative size of each of ``num`` classes (the largest is 1)."""
    if kind == "exponential" and num > 1:
        return [ratio ** (c / (num - 1)) for c in range(num)]
    if kind == "step":
        minority = round(step_fraction * num)
        return [1.0] * (num - minority) + [ratio] * minority
    return [1.0] * num


def class_sizes(available: Sequence[int], shape: Sequence[float], max_per_class: int
                ) -> list[int]:
    """``round(n_max * shape_c)`` (at least 1) per class; ``n_max = 0``: the largest feasible.

    Raises:
        KdcoreError: a class has fewer images than its size needs.
    """
    if max_per_class <= 0:
        max_per_class = min(math.floor(a / s + 1e-9) for a, s in zip(available, shape))
    sizes = [max(1, round(max_per_class * s)) for s in shape]
    for c, (need, have) in enumerate(zip(sizes, available)):
        if need > have:
            raise kdcore.KdcoreError(
                f"ncifar: kept class {c} needs {need} training images (max_per_class "
                f"{max_per_class} x profile {shape[c]:.4g}) but the base has {have} left; "
                "lower data.params.max_per_class (0: the largest feasible)")
    return sizes


def _open_class_ids(open_classes: int | list[int], num_classes: int) -> list[int]:
    if isinstance(open_classes, int):
        if not 0 <= open_classes <= num_classes - 2:
            raise kdcore.RecipeError(
                f"got {open_classes}, expected 0 to {num_classes - 2} (at least two classes "
                "must stay in the label set)", key="data.params.open_classes")
        return list(range(num_classes - open_classes, num_classes))
    ids = list(open_classes)
    bad = [c for c in ids if not 0 <= c < num_classes]
    if bad or len(set(ids)) != len(ids) or len(ids) > num_classes - 2:
        raise kdcore.RecipeError(
            f"got {ids}, expected distinct class indices in 0..{num_classes - 1} leaving at "
            "least two classes", key="data.params.open_classes")
    return sorted(ids)


def generate(base: kdcore.DatasetSplits, spec: NCifarSpec) -> Generated:
    """Build the nCIFAR-style dataset from ``base`` (see the module docstring)."""
    train = base.train
    num_base = train.num_classes
    open_ids = _open_class_ids(spec.open_classes, num_base)
    kept = [c for c in range(num_base) if c not in open_ids]
    k = len(kept)
    gen = torch.Generator().manual_seed(spec.seed)
    y = train.y.reshape(-1).long().cpu()
    order = torch.randperm(len(y), generator=gen)
    pools = [order[y[order] == c] for c in kept]

    test_carved = base.test is None
    test_rows: list[torch.Tensor] = []
    if test_carved:
        cut = [round(spec.test_fraction * len(p)) for p in pools]
        test_rows = [p[:n] for p, n in zip(pools, cut)]
        pools = [p[n:] for p, n in zip(pools, cut)]
    else:
        ty = base.test.y.reshape(-1).long().cpu()
        test_order = torch.randperm(len(ty), generator=gen)
        test_rows = [test_order[ty[test_order] == c] for c in kept]

    shape = profile(spec.imbalance, k, spec.imbalance_ratio, spec.step_fraction)
    sizes = class_sizes([len(p) for p in pools], shape, spec.max_per_class)
    kept_rows = torch.cat([p[:n] for p, n in zip(pools, sizes)])
    total_kept = sum(sizes)
    n_open = round(spec.open_rate * total_kept / (1.0 - spec.open_rate))
    if n_open and not open_ids:  # before the pool check, whose message would miss the point
        raise kdcore.RecipeError("open_rate > 0 needs open_classes", key="data.params.open_rate")
    open_pool = order[torch.isin(y[order], torch.tensor(open_ids, dtype=torch.long))]
    if n_open > len(open_pool):
        most = len(open_pool) / (len(open_pool) + total_kept)
        raise kdcore.KdcoreError(
            f"ncifar: open_rate {spec.open_rate} needs {n_open} open-class images but the base "
            f"has {len(open_pool)} of classes {open_ids}; the largest feasible open_rate with "
            f"these class sizes is {math.floor(most * 1000) / 1000}")

    remap = torch.full((num_base,), k, dtype=torch.long)  # open classes -> the sentinel
    remap[torch.tensor(kept, dtype=torch.long)] = torch.arange(k)
    rows = torch.cat([kept_rows, open_pool[:n_open]]).sort().values  # base order: no position leak
    names = tuple(train.class_names) or tuple(str(c) for c in range(num_base))
    class_names = tuple(names[c] for c in kept) + (OPEN_CLASS_NAME,)
    new_train = attrs.evolve(train.subset(rows), y=remap[y[rows]], num_classes=k + 1,
                             class_names=class_names)

    if spec.test_profile == "same":
        n_max = min(math.floor(len(r) / s + 1e-9) for r, s in zip(test_rows, shape))
        test_rows = [r[: max(1, round(n_max * s))] for r, s in zip(test_rows, shape)]
    test_index = torch.cat(test_rows).sort().values
    source = train if test_carved else base.test
    source_y = y if test_carved else base.test.y.reshape(-1).long().cpu()
    new_test = attrs.evolve(source.subset(test_index), y=remap[source_y[test_index]],
                            num_classes=k + 1, class_names=class_names)
    return Generated(
        splits=kdcore.DatasetSplits(train=new_train, test=new_test), kept=tuple(kept),
        open=tuple(open_ids), sizes=tuple(sizes), n_open=n_open, train_source=rows,
        test_source=test_index, test_carved=test_carved)


def ncifar(
    *,
    preset: str | None = None,
    base: str | None = None,
    base_params: dict[str, Any] | None = None,
    open_classes: int | list[int] | None = None,
    open_rate: float | None = None,
    imbalance: Literal["none", "exponential", "step"] | None = None,
    imbalance_ratio: float | None = None,
    step_fraction: float | None = None,
    max_per_class: int | None = None,
    test_fraction: float | None = None,
    test_profile: Literal["balanced", "same"] | None = None,
    seed: int | None = None,
) -> kdcore.DatasetSplits:
    """An nCIFAR-style dataset built from a registered base dataset (the ``ncifar`` loader).

    Every parameter is described on :class:`NCifarSpec`; ``preset`` names an entry of
    :data:`PRESETS` whose values fill the parameters not given. Use it with the noise model
    ``ncifar_noise``, which relabels the open-class images and adds the closed noise.

    Returns:
        ``K + 1`` classes: the kept ones (in base order) and the open-set sentinel ``K``, which
        the training split's open-class images carry as their true label; the test split holds
        kept classes only, clean.
    """
    spec = resolve_spec(preset, {
        "base": base, "base_params": base_params, "open_classes": open_classes,
        "open_rate": open_rate, "imbalance": imbalance, "imbalance_ratio": imbalance_ratio,
        "step_fraction": step_fraction, "max_per_class": max_per_class,
        "test_fraction": test_fraction, "test_profile": test_profile, "seed": seed})
    if spec.base == DATASET:
        raise kdcore.RecipeError("ncifar cannot wrap itself", key="data.params.base")
    host = kdcore.active_host()  # the run's registries, in-process plugins included
    try:
        loader = host.datasets.get(spec.base)
    except kdcore.KdcoreError as exc:
        raise kdcore.RecipeError(str(exc), key="data.params.base") from None
    loaded = loader(**bind_params(loader, spec.base_params, "data.params.base_params"))
    made = generate(loaded, spec)
    logger.info(
        f"ncifar from {spec.base}: kept classes {list(made.kept)} with training sizes "
        f"{list(made.sizes)}, {made.n_open} images of classes {list(made.open)} as open noise "
        f"({made.n_open / max(len(made.splits.train), 1):.3f} of {len(made.splits.train)}), "
        f"test {len(made.splits.test)}")
    return made.splits


# -- the noise model ----------------------------------------------------------------------------


def largest_remainder(total: int, weights: torch.Tensor) -> torch.Tensor:
    """Split ``total`` into integer parts proportional to ``weights`` (Hamilton's method).

    Each part is the floor of its quota, and the leftover units go to the largest remainders
    (ties to the lower index), so every part is within one of its exact quota.
    """
    w = weights.double().clamp_min(0)
    if float(w.sum()) <= 0:
        w = torch.ones_like(w)
    quota = total * w / w.sum()
    parts = quota.floor().long()
    left = total - int(parts.sum())
    if left > 0:
        order = torch.sort(quota - parts, descending=True, stable=True).indices
        parts[order[:left]] += 1
    return parts


def ncifar_noise(
    ctx: kdcore.NoiseContext,
    *,
    closed: Literal["none", "symmetric", "pair_flip"] = "symmetric",
    closed_rate: float = 0.2,
    mapping: Literal["next", "random"] = "next",
    open_labels: Literal["proportional", "uniform"] = "proportional",
) -> torch.Tensor:
    """The noise of an ``ncifar`` dataset: closed noise on kept images, open images relabelled.

    The last class of ``ctx`` is the open-set sentinel ``K``. On the split it is given:

    1. closed noise: exactly ``round(closed_rate * N)`` of the kept-class images (``N`` counts
       every image of the split, open ones too, so ``closed_rate`` is a share of the whole
       split) get a wrong kept label, by kdcore's ``symmetric`` (uniform over the other kept
       classes) or ``pair_flip`` (``mapping``) noise model;
    2. open noise: every sentinel image gets a kept label; the counts per label are
       proportional to the kept classes' sizes in the split (``proportional``, so the
       observed label distribution keeps the imbalance profile) or equal (``uniform``), split
       by largest remainders and assigned to a random permutation of the open images.

    Args:
        ctx: the split's labels (``K + 1`` classes) and the run's generator.
        closed: the closed-noise model, or ``none``.
        closed_rate: the share of the split that gets closed noise, in [0, 1].
        mapping: ``pair_flip``'s partner classes (``next`` or ``random``).
        open_labels: how the open images' labels are spread over the kept classes.

    Returns:
        Labels in ``0 .. K-1`` for every image.
    """
    if not 0.0 <= closed_rate <= 1.0:
        raise kdcore.KdcoreError(f"ncifar_noise: closed_rate must be in [0, 1], not {closed_rate}")
    gen = ctx.generator
    labels = ctx.labels.reshape(-1).to(device=gen.device, dtype=torch.long)
    k = ctx.num_classes - 1
    if k < 2:
        raise kdcore.KdcoreError("ncifar_noise needs at least two kept classes plus the open-set "
                                 "class (use it with the ncifar dataset)")
    is_open = labels == k
    kept_rows = (~is_open).nonzero().squeeze(1)
    open_rows = is_open.nonzero().squeeze(1)
    noisy = labels.clone()
    n_closed = round(closed_rate * labels.numel())
    if closed != "none" and n_closed:
        if n_closed > kept_rows.numel():
            raise kdcore.KdcoreError(
                f"ncifar_noise: closed_rate {closed_rate} asks for {n_closed} closed-noisy "
                f"images but the split has only {kept_rows.numel()} kept-class images")
        sub = kdcore.NoiseContext(labels=labels[kept_rows], num_classes=k, generator=gen)
        fn = kdcore.active_host().noise_models.get(closed)
        extra = {"mapping": mapping} if closed == "pair_flip" else {}
        noisy[kept_rows] = fn(sub, rate=n_closed / kept_rows.numel(), **extra).to(noisy.device)
    if open_rows.numel():
        weights = (torch.bincount(labels[kept_rows], minlength=k) if open_labels == "proportional"
                   else torch.ones(k))
        parts = largest_remainder(open_rows.numel(), weights.cpu())
        assigned = torch.repeat_interleave(torch.arange(k), parts).to(noisy.device)
        perm = torch.randperm(open_rows.numel(), generator=gen, device=gen.device)
        noisy[open_rows[perm]] = assigned
    return noisy.to(ctx.labels.device).reshape(ctx.labels.shape)


# -- status of every sample ---------------------------------------------------------------------


def is_ncifar(ctx: kdcore.RunContext) -> bool:
    """Whether the run's data follow the ncifar convention (last class: the open-set sentinel)."""
    names = ctx.data.class_names
    return bool(names) and names[-1] == OPEN_CLASS_NAME


def label_classes(ctx: kdcore.RunContext) -> int:
    """The number of real labels: ``K`` on ncifar data (without the sentinel), else ``C``."""
    return ctx.num_classes - 1 if is_ncifar(ctx) else ctx.num_classes


def sample_status(clean: torch.Tensor, noisy: torch.Tensor, open_label: int | None
                  ) -> torch.Tensor:
    """0 clean, 1 closed-noisy (a wrong kept label), 2 open-noisy (true class not a label)."""
    status = torch.where(noisy != clean, STATUS_CLOSED, STATUS_CLEAN)
    if open_label is not None:
        status = torch.where(clean == open_label, STATUS_OPEN, status)
    return status.to(torch.long)


def run_status(ctx: kdcore.RunContext) -> torch.Tensor:
    """The status of every training sample of the run (by ledger row): the ledger's
    ``ff/status`` when the plugin wrote it, else worked out from the labels."""
    led = ctx.ledger
    if "ff/status" in led:
        return led["ff/status"]
    return sample_status(led["clean_label"], led["noisy_label"],
                         ctx.num_classes - 1 if is_ncifar(ctx) else None)


def filter_quality(selected: torch.Tensor, status: torch.Tensor) -> dict[str, float]:
    """How well a selection *drops* the noisy samples, by kind of noise.

    Args:
        selected: ``(N,)`` bool (or soft scores; > 0 counts as kept).
        status: ``(N,)`` 0 clean, 1 closed, 2 open.

    Returns:
        ``open_precision`` (share of the dropped samples that are open noise),
        ``open_recall`` (share of the open-noise samples dropped), ``closed_recall`` and
        ``noisy_precision`` (share of the dropped samples that are noisy of either kind); NaN
        where the denominator is empty.
    """
    kept = selected > 0 if selected.dtype != torch.bool else selected
    dropped = ~kept
    is_open = status == STATUS_OPEN
    closed = status == STATUS_CLOSED
    n_drop = int(dropped.sum())

    def share(a: torch.Tensor, b: int) -> float:
        return int(a.sum()) / b if b else float("nan")

    return {
        "open_precision": share(dropped & is_open, n_drop),
        "open_recall": share(dropped & is_open, int(is_open.sum())),
        "closed_recall": share(dropped & closed, int(closed.sum())),
        "noisy_precision": share(dropped & (status != STATUS_CLEAN), n_drop),
    }
