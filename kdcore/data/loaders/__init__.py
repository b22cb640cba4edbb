"""Dataset loaders: each reads one dataset format from local files into a :class:`DatasetSplits`.

Nothing is ever downloaded: kdcore runs on machines without network access, so every loader
reads files that are already on disk and, when they are missing, says where it looked and how to
get them. Loaders take only keyword-only, annotated parameters because the recipe's
``data.params`` table is passed to them as keywords; their ranges (a directory that is not
empty, a positive size) are ``Annotated`` metadata, so :func:`kdcore.config.bind_params` refuses
an impossible value before anything is read, and each loader checks them again when called
directly.

Image datasets are returned as ``uint8`` tensors ``(N, C, H, W)`` with the per-channel mean and
standard deviation that the engine applies after scaling to [0, 1]; this keeps CIFAR-sized data
four times smaller in memory than ``float32``.

One module per format: :mod:`.digits` (scikit-learn's bundled digits), :mod:`.idx`
(IDX files: Fashion-MNIST, and MNIST's layout for MNIST, KMNIST, EMNIST), :mod:`.cifar`
(CIFAR-10/100 python pickles), :mod:`.cifar_n` (CIFAR-N label files), :mod:`.folder` (image
folders), :mod:`.lists` (``path label`` lists and Clothing1M's layout, streaming by default),
:mod:`.npz` (one's own arrays); :mod:`.arrays` unpickles numpy arrays without running code.
"""

from __future__ import annotations

from collections.abc import Callable

from kdcore.data.base import DatasetSplits
from kdcore.data.loaders.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    cifar10,
    cifar100,
)
from kdcore.data.loaders.cifar_n import (
    CIFAR_N_DISTRIBUTION,
    CIFAR_N_ZIP,
    cifar_n_labels,
    find_cifar_n_file,
)
from kdcore.data.loaders.digits import digits
from kdcore.data.loaders.folder import IMAGE_EXTENSIONS, image_folder
from kdcore.data.loaders.idx import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DEFAULT_DIR,
    FASHION_MNIST_ENV,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    fashion_mnist,
    mnist,
)
from kdcore.data.loaders.lists import CLOTHING1M_FILES, clothing1m, image_list
from kdcore.data.loaders.npz import npz

DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "digits": digits,
    "fashion_mnist": fashion_mnist,
    "mnist": mnist,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "image_folder": image_folder,
    "image_list": image_list,
    "clothing1m": clothing1m,
    "npz": npz,
}
"""The built-in dataset loaders by recipe name."""

__all__ = [
    "CLOTHING1M_FILES",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR_N_DISTRIBUTION",
    "CIFAR_N_ZIP",
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEFAULT_DIR",
    "FASHION_MNIST_ENV",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "IMAGE_EXTENSIONS",
    "cifar10",
    "cifar100",
    "cifar_n_labels",
    "clothing1m",
    "digits",
    "fashion_mnist",
    "find_cifar_n_file",
    "image_folder",
    "image_list",
    "mnist",
    "npz",
]
