"""The dataset types loaders return, and the contexts handed to noise models.

kdcore keeps a split in memory as tensors by default (:class:`ArrayDataset`): on a 2-core CPU a
Python ``Dataset`` with a ``DataLoader`` costs more than the small models it feeds, and every
per-sample column of the ledger is indexed by the same row number anyway. A split too large for
memory (a million 224-pixel images) is a :class:`FileDataset`: its images are decoded when a
batch needs them, in ``data.workers`` DataLoader processes, while its labels and the ledger stay
in memory, indexed by the same global row numbers.
"""

from __future__ import annotations

import attrs
import numpy as np
import torch

from kdcore.errors import KdcoreError


@attrs.define(eq=False)
class ArrayDataset:
    """One split of a dataset, held in memory.

    Attributes:
        x: inputs, ``float32`` of any shape ``(N, ...)`` or ``uint8`` images ``(N, C, H, W)``.
        y: the true labels, integers ``(N,)``, taken as ``int64`` (the dataset's own labels;
            noise is applied later by a noise model).
        num_classes: C.
        class_names: optional names of the classes, in label order.
        mean, std: per-channel normalisation applied to ``uint8`` images after scaling to
            [0, 1]; ``None`` for float inputs.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...] = ()
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: torch.Tensor) -> ArrayDataset:
        """The rows ``index`` (a long tensor), as a new dataset sharing nothing mutable."""
        return attrs.evolve(self, x=self.x[index], y=self.y[index])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


@attrs.define(eq=False)
class FileDataset:
    """One split of images read from files when a batch needs them (streaming).

    Attributes:
        paths: each sample's image file.
        y: the labels, integers ``(N,)``, taken as ``int64``.
        num_classes: C.
        size: images are converted to RGB and resized to ``size`` x ``size`` (bilinear) as
            they are read, giving ``uint8`` ``(3, size, size)``.
        class_names: optional names of the classes, in label order.
        mean, std: per-channel normalisation applied after scaling to [0, 1].
    """

    paths: tuple[str, ...]
    y: torch.Tensor
    num_classes: int
    size: int
    class_names: tuple[str, ...] = ()
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: torch.Tensor) -> FileDataset:
        """The rows ``index`` (a long tensor), as a new dataset."""
        rows = index.tolist()
        return attrs.evolve(self, paths=tuple(self.paths[i] for i in rows), y=self.y[index])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.size, self.size)

    def read(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The images of rows ``index`` (a long tensor or a slice), ``uint8`` ``(B, 3, S, S)``.

        Raises:
            KdcoreError: an image cannot be read; the message names the first and counts the
                others (every image is tried, so that one pass finds all of a folder's damaged
                files, not one per run).
        """
        from kdcore.data.images import read_image

        rows = range(len(self))[index] if isinstance(index, slice) else index.tolist()
        if not rows:
            return torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
        images, unreadable = [], []
        for i in rows:
            try:
                images.append(read_image(self.paths[i], self.size))
            except KdcoreError as exc:
                unreadable.append((self.paths[i], exc))
        if unreadable:
            first, others = unreadable[0][1], [path for path, _ in unreadable[1:]]
            if not others:
                raise first
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise KdcoreError(f"{first}; {len(others)} more of the {len(rows)} images cannot "
                              f"be read either: {shown}")
        return torch.from_numpy(np.stack(images))


Split = ArrayDataset | FileDataset
"""A split of either kind."""


@attrs.define(eq=False)
class DatasetSplits:
    """What a dataset loader returns: its training split and, if it has one, its test split.

    When ``test`` is ``None`` the engine carves a stratified test split out of ``train``.
    """

    train: ArrayDataset | FileDataset
    test: ArrayDataset | FileDataset | None = None


@attrs.define(eq=False)
class NoiseContext:
    """What a noise model sees: the clean labels of the samples to corrupt, and more.

    Attributes:
        labels: clean labels ``(N,)`` int64.
        num_classes: C.
        generator: the only source of randomness a noise model may use (seeded by the run).
        x: the inputs of the same samples (instance-dependent noise needs them).
        source_index: each sample's row in the loader's training split
            (``DatasetSplits.train``) as ``int64`` ``(N,)``, or ``None`` when unknown. Noise
            that is a property of the image rather than of its class needs it: CIFAR-N's
            per-image human labels are indexed by the row in CIFAR's original training set.
            Runs fill it for the training and validation splits (both are rows of the loader's
            training split, after the split and ``train_subset``).
        source_size: the number of rows of the loader's training split, with ``source_index``
            (a per-image label file must cover exactly that split).
    """

    labels: torch.Tensor
    num_classes: int
    generator: torch.Generator
    x: torch.Tensor | None = None
    source_index: torch.Tensor | None = None
    source_size: int | None = None

    def flat_labels(self) -> torch.Tensor:
        """The clean labels as a flat ``int64`` tensor on the generator's device, where a noise
        model draws.

        Raises:
            KdcoreError: a label outside ``0..C-1``.
        """
        labels = self.labels.reshape(-1).to(device=self.generator.device, dtype=torch.int64)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise KdcoreError(f"labels must lie in 0..{self.num_classes - 1} for noise to be "
                              "applied")
        return labels

    def shaped_as_labels(self, noisy: torch.Tensor) -> torch.Tensor:
        """A noise model's flat result as it returns it: ``int64``, with the shape and device
        of :attr:`labels`."""
        return noisy.to(device=self.labels.device, dtype=torch.int64).reshape(self.labels.shape)
