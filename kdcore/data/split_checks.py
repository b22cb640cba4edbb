"""What a dataset loader or a noise model gave, checked against what
:class:`~kdcore.data.base.DatasetSplits` and the noise hook document at set-up (so by ``kdcore
check``), rather than where a batch, the normalisation or the evaluation first trips on it: a
wrong type or shape, labels outside the classes, inputs that are not finite, a normalisation
that cannot apply."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kdcore.data.base import ArrayDataset, DatasetSplits, FileDataset
from kdcore.errors import KdcoreError, shown

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: inputs checked for NaN this many bytes at a time
_CHECK_BYTES = 64 * 2**20


def check_splits(dataset: str, loaded: Any) -> None:
    """Refuse, in one line naming ``dataset``, what the engine could not train on as given.

    Raises:
        KdcoreError: the first thing found wrong.
    """
    where = f"dataset '{dataset}'"
    if not isinstance(loaded, DatasetSplits) or not isinstance(
            loaded.train, ArrayDataset | FileDataset):
        raise KdcoreError(f"{where} gave a {type(loaded).__name__}, not DatasetSplits of "
                          "ArrayDataset or FileDataset splits")
    train = loaded.train
    classes = train.num_classes
    if isinstance(classes, bool) or not isinstance(classes, numbers.Integral) or classes < 1:
        raise KdcoreError(f"{where} gave num_classes {shown(classes)}; expected a whole "
                          "number of classes, at least 1")
    for name, split in (("training", train), ("test", loaded.test)):
        if split is None:
            continue
        if not isinstance(split, ArrayDataset | FileDataset):
            raise KdcoreError(f"{where}: its {name} split is a {type(split).__name__}")
        if len(split) == 0:  # nothing to train on, or to measure
            raise KdcoreError(f"{where} gave an empty {name} split")
        y = split.y
        if y.dtype in (torch.bool, *_FLOATS) or y.is_complex() or y.dim() != 1:
            raise KdcoreError(f"{where}: its {name} labels are {y.dtype} of shape "
                              f"{tuple(y.shape)}; expected integers of shape (N,)")
        if int(y.min()) < 0 or int(y.max()) >= classes:
            raise KdcoreError(f"{where}: its {name} labels run from {int(y.min())} to "
                              f"{int(y.max())}; classes are 0 .. {classes - 1}")
        if isinstance(split, ArrayDataset):
            _check_inputs(f"{where}: its {name}", split, len(y))
        else:
            _check_files(f"{where}: its {name} split", split, len(y))
        _check_normalisation(f"{where}: its {name} split", split)
        if split.input_shape != train.input_shape or split.num_classes != classes:
            raise KdcoreError(f"{where}: its {name} split holds inputs {split.input_shape} "
                              f"of {split.num_classes} classes, the training split "
                              f"{train.input_shape} of {classes}")
    if train.class_names and len(train.class_names) != classes:
        raise KdcoreError(f"{where} names {len(train.class_names)} classes of {classes}")


def _check_inputs(where: str, split: ArrayDataset, labels: int) -> None:
    x = split.x
    if not isinstance(x, torch.Tensor):
        raise KdcoreError(f"{where} inputs are a {type(x).__name__}; expected a torch.Tensor "
                          "(torch.from_numpy turns an array into one)")
    if x.dtype not in (torch.float32, torch.uint8) or x.dim() == 0 or len(x) != labels:
        raise KdcoreError(f"{where} inputs are {x.dtype} of shape {tuple(x.shape)} for "
                          f"{labels} labels; expected float32 (or uint8 images), one per label")
    if x.dim() == 1:  # a model was then handed rows of no shape, and named as the culprit
        raise KdcoreError(f"{where} inputs are of shape {tuple(x.shape)}: a single number per "
                          "sample; give each sample its values along a dimension of their own "
                          "(x[:, None] for one feature)")
    if x.requires_grad:  # the first batch's backward pass ran into the loader's graph
        raise KdcoreError(f"{where} inputs carry an autograd graph (requires_grad); make them "
                          "data with .detach(), or build them under torch.no_grad()")
    # a NaN or an infinity made the first batch's loss NaN, a whole set-up later
    if x.dtype == torch.float32 and len(x):
        rows = x.reshape(len(x), -1)
        step = max(1, _CHECK_BYTES // max(4 * rows.shape[1], 1))  # no copy of a whole split
        bad = [torch.nonzero(~torch.isfinite(rows[start:start + step]).all(dim=1)) + start
               for start in range(0, len(rows), step)]
        found = torch.cat(bad).flatten()
        if len(found):
            raise KdcoreError(f"{where} inputs are not finite (NaN or infinite) in "
                              f"{len(found)} sample{'s' if len(found) > 1 else ''} (the "
                              f"first: sample {int(found[0])}); the loader should drop or fill "
                              "them")


def _check_files(where: str, split: FileDataset, labels: int) -> None:
    """A streamed split's list of files, checked as a built-in loader's is: a path that is not
    a string (an int was read as an open file descriptor), a count other than the labels', a
    listed file that is not there (found in the middle of an epoch), an impossible size."""
    paths = split.paths
    if not isinstance(paths, tuple | list) or not all(isinstance(p, str) for p in paths):
        odd = paths if not isinstance(paths, tuple | list) else next(
            p for p in paths if not isinstance(p, str))
        raise KdcoreError(f"{where} lists {shown(odd)} as a path; expected a tuple of paths "
                          "as strings")
    if len(paths) != labels:
        raise KdcoreError(f"{where} lists {len(paths)} image files for {labels} labels; "
                          "expected one per label")
    size = split.size
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise KdcoreError(f"{where} resizes images to a size of {shown(size)}; expected a "
                          "whole number of pixels, at least 1")
    try:
        check_listed_files(paths)
    except KdcoreError as exc:
        raise KdcoreError(f"{where}: {exc}") from None


def check_listed_files(paths: Sequence[str]) -> None:
    """Refuse a streamed split with a listed image that is not a file, at set-up: its batch
    would otherwise fail in the middle of training (the mean and std read only a sample of
    the images). A stat per file: seconds for a million, against the epochs it saves."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise KdcoreError(f"{len(missing)} of the {len(paths)} listed images are not files "
                          f"(first: {missing[0]})")


def _check_normalisation(where: str, split: ArrayDataset | FileDataset) -> None:
    """``mean`` and ``std`` scale uint8 images ``(C, H, W)`` per channel, both or neither: one
    given alone, or either given for float inputs, was passed over without a word; a std of 0
    or a length that is neither 1 nor the channels' count failed in the first batch."""
    mean, std = split.mean, split.std
    if mean is None and std is None:
        return
    images = isinstance(split, FileDataset) or split.x.dtype == torch.uint8
    if not images:
        raise KdcoreError(f"{where} gives a mean and std for float inputs, which are used as "
                          "they are; normalise them in the loader (mean and std apply to "
                          "uint8 images)")
    if mean is None or std is None:
        raise KdcoreError(f"{where} gives a {'std' if mean is None else 'mean'} without a "
                          f"{'mean' if mean is None else 'std'}; give both, or neither")
    if len(split.input_shape) != 3:  # (N, H, W) would be scaled per row of pixels
        raise KdcoreError(f"{where} gives a mean and std for uint8 inputs of shape "
                          f"{split.input_shape} per sample; they scale images of shape "
                          "(C, H, W) per channel (give the channel axis, even of 1)")
    channels = split.input_shape[0]
    for label, values in (("mean", mean), ("std", std)):
        try:
            given = [float(v) for v in values]
        except (TypeError, ValueError):
            raise KdcoreError(f"{where}'s {label} is {shown(values)}; expected one number "
                              "per channel") from None
        if len(given) not in (1, channels):
            raise KdcoreError(f"{where}'s {label} has {len(given)} values for "
                              f"{channels} channels; expected 1 or {channels}")
        if not all(math.isfinite(v) for v in given) or (
                label == "std" and min(given) <= 0):
            raise KdcoreError(f"{where}'s {label} is {tuple(values)}; expected finite values"
                              f"{', each above 0' if label == 'std' else ''}")


def check_noisy_labels(model: str, noisy: Any, labels: torch.Tensor,
                       num_classes: int) -> torch.Tensor:
    """A noise model's result as ``int64`` labels of ``labels``' shape, or one line naming the
    model and what it returned: labels that are not integers (floats were truncated, bools read
    as classes 0 and 1), of another shape, outside the classes, or no labels at all."""
    where = f"noise model '{model}'"
    if not isinstance(noisy, torch.Tensor | np.ndarray | list | tuple):
        raise KdcoreError(f"{where} returned {shown(noisy)}; expected a label per sample")
    try:
        given = torch.as_tensor(noisy)
    except (TypeError, ValueError, RuntimeError) as exc:  # a ragged list, a list of strings
        raise KdcoreError(f"{where} returned {shown(noisy)}, which is not an array of labels "
                          f"({exc})") from None
    if given.dtype == torch.bool or given.is_floating_point() or given.is_complex():
        raise KdcoreError(f"{where} returned labels of dtype {given.dtype}; expected integers")
    if given.shape != labels.shape:
        raise KdcoreError(f"{where} returned labels of shape {tuple(given.shape)} for labels "
                          f"of shape {tuple(labels.shape)}")
    if len(given) and (int(given.min()) < 0 or int(given.max()) >= num_classes):
        raise KdcoreError(f"{where} returned labels from {int(given.min())} to "
                          f"{int(given.max())}; classes are 0 .. {num_classes - 1}")
    return given.to(device=labels.device, dtype=torch.long)
