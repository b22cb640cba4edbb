"""scikit-learn's bundled handwritten digits: the default dataset, which needs no file."""

from __future__ import annotations

import numpy as np
import torch

from kdcore.data.base import ArrayDataset, DatasetSplits


def digits(*, flatten: bool = True) -> DatasetSplits:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 images of 10 classes.

    Needs no file at all, which makes it the default dataset. It has no test split of its own;
    the engine carves one out.

    Args:
        flatten: return ``(N, 64)`` feature vectors (for MLPs) instead of ``(N, 1, 8, 8)`` images.

    Returns:
        The training split only (``test`` is ``None``), ``float32`` pixels scaled from 0..16 to
        [0, 1].
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(np.asarray(bunch.data, dtype=np.float32) / 16.0)
    if not flatten:
        x = x.reshape(-1, 1, 8, 8)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    names = tuple(str(name) for name in bunch.target_names)
    return DatasetSplits(
        train=ArrayDataset(x=x.contiguous(), y=y, num_classes=10, class_names=names)
    )
