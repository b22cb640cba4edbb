"""The data of one run: splits, noisy labels and the realised noise, built from ``[data]``."""

from __future__ import annotations

import contextlib
import math
import signal
import traceback
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import torch
from loguru import logger

from kdcore import distributed, interrupts
from kdcore.class_warnings import warn_if_classes_missing, warn_if_mostly_mislabelled
from kdcore.config import bind_params
from kdcore.data.base import ArrayDataset, DatasetSplits, FileDataset, NoiseContext, Split
from kdcore.data.noise import realised_transition
from kdcore.data.split_checks import check_noisy_labels, check_splits
from kdcore.data.splits import make_splits
from kdcore.device import check_fits
from kdcore.errors import KdcoreError, RecipeError
from kdcore.locks import drop_inherited

if TYPE_CHECKING:
    from kdcore.plugins import PluginHost
    from kdcore.recipe import DataConfig


@attrs.define(eq=False)
class RunData:
    """Every split of a run, on the run's device, and the noise that was applied.

    Attributes:
        train, val, test, gold: the splits; ``y`` holds the true labels.
        train_noisy, val_noisy: the observed labels of the noisy splits.
        train_source: the row of each training sample in the loader's training split
            (``sample_id`` in the history), so that results can be traced back.
        source_noisy: the observed label of every row of the loader's training split: the
            training and (with ``apply_to_val``) validation rows as corrupted, the others
            their true labels (``kdcore noise`` writes it; None where not built here).
        transition: the realised clean-to-noisy transition matrix on the training split.
        noise_rate: the realised share of training labels that differ from the truth.
        workers: the DataLoader processes that decode a file-backed split's batches ahead of
            training (``data.workers``; 0: in this process).
    """

    train: Split
    val: Split
    test: Split
    gold: Split
    train_noisy: torch.Tensor
    val_noisy: torch.Tensor
    train_source: torch.Tensor
    transition: torch.Tensor
    noise_rate: float
    num_classes: int
    class_names: tuple[str, ...]
    device: torch.device
    workers: int = 0
    source_noisy: torch.Tensor | None = None
    _streams: weakref.WeakSet[Any] = attrs.field(factory=weakref.WeakSet, init=False,
                                                  repr=False)

    def split(self, name: str) -> Split:
        try:
            return {"train": self.train, "val": self.val, "test": self.test,
                    "gold": self.gold}[name]
        except KeyError:
            raise KeyError(f"no split '{name}'; splits: train, val, test, gold") from None

    def inputs(self, split: Split, index: torch.Tensor | slice) -> torch.Tensor:
        """Model inputs for rows ``index`` (a long tensor or a slice) of ``split``: float,
        normalised, on the device. A slice of float data is a view: no copy. A file-backed
        split's images are read here, in this process (:meth:`stream` reads ahead)."""
        if isinstance(split, FileDataset):
            rows = index.cpu() if isinstance(index, torch.Tensor) else index
            return self._normalised(split, split.read(rows).to(self.device))
        return self._normalised(split, split.x[index])

    def _normalised(self, split: Split, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
            if split.mean is not None and split.std is not None:
                shape = (1, -1) + (1,) * (x.dim() - 2)
                mean = torch.tensor(split.mean, device=x.device).view(shape)
                std = torch.tensor(split.std, device=x.device).view(shape)
                x = (x - mean) / std
        return x

    def stream(self, split: Split, batches: Sequence[torch.Tensor | slice]
               ) -> Iterator[tuple[torch.Tensor | slice, torch.Tensor]]:
        """``(rows, inputs)`` for each batch of rows in ``batches``, in order (the rows are
        the global sample indices the ledger uses). A file-backed split's images are decoded
        ahead in :attr:`workers` DataLoader processes; otherwise as :meth:`inputs`."""
        passes = self._stream(split, batches)
        if self.workers and isinstance(split, FileDataset):  # the passes with workers to end
            self._streams.add(passes)
        return passes

    def close_streams(self) -> None:
        """End every pass that a stop left suspended (an error or an interrupt in the middle
        of an epoch), and with it its DataLoader workers: left to the collector they outlived
        the run, and at exit multiprocessing ended them with a traceback."""
        for passes in list(self._streams):
            passes.close()

    def _stream(self, split: Split, batches: Sequence[torch.Tensor | slice]
                ) -> Iterator[tuple[torch.Tensor | slice, torch.Tensor]]:
        if not isinstance(split, FileDataset):
            for rows in batches:
                yield rows, self.inputs(split, rows)
            return
        # a distributed run's rank decodes its share of each batch's files (the rows its
        # models compute) and every rank gets the whole batch
        shares = [_share(rows) for rows in batches]
        if self.workers == 0 or not batches:
            for rows, share in zip(batches, shares):
                yield rows, distributed.gather_rows(self.inputs(split, share), _len(rows))
            return
        from torch.utils.data import DataLoader

        cpu = [rows.cpu() if isinstance(rows, torch.Tensor) else rows for rows in shares]
        # a generator of its own: the iterator draws its workers' base seed from it, not
        # from torch's global generator, which dropout and components draw from (AML-KD's
        # mixup coefficient): a streamed run must train as the in-memory run does
        loader = DataLoader(_Batches(split, cpu), batch_size=None, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda",
                            worker_init_fn=start_worker,
                            generator=torch.Generator())
        # the workers are started and ended with interrupts held: one raised in a fork hook
        # or in torch's iterator __del__ (which joins the workers) is printed and dropped
        with interrupts.held(), _sigterm_blocked():
            decoded = iter(loader)
        try:
            for rows in batches:
                failed = None
                try:
                    raw = next(decoded)
                except Exception as exc:  # a worker's error arrives wrapped: its last line
                    if "DataLoader worker" not in str(exc):
                        raise
                    failed = _worker_error(exc)
                    # torch's error and its frames form a cycle that holds the iterator: left
                    # to the collector, its workers outlived the run's stop, and at exit
                    # multiprocessing ended them with a traceback ("killed by signal")
                    traceback.clear_frames(exc.__traceback__)
                if failed is not None:  # raised here: no context to keep torch's error alive
                    raise KdcoreError(failed)
                x = self._normalised(split, raw.to(self.device, non_blocking=True))
                yield rows, distributed.gather_rows(x, _len(rows))
        finally:
            with interrupts.held():
                del decoded  # its __del__ runs here, not wherever the collector gets to it

    def batches(self, split: Split, batch_size: int) -> Iterator[slice]:
        """Consecutive row slices over ``split`` (evaluation and full-set passes): slicing
        instead of gathering spares a copy of every input."""
        n = len(split)
        for start in range(0, n, batch_size):
            yield slice(start, min(start + batch_size, n))


def _len(rows: torch.Tensor | slice) -> int:
    return len(rows) if isinstance(rows, torch.Tensor) else rows.stop - rows.start


def _share(rows: torch.Tensor | slice) -> torch.Tensor | slice:
    """The part of ``rows`` this process decodes (all of them outside a distributed run)."""
    if distributed.world().size == 1:
        return rows
    mine = distributed.local_rows(_len(rows))
    if isinstance(rows, torch.Tensor):
        return rows[mine]
    return slice(rows.start + mine.start, rows.start + mine.stop)


def build_run_data(cfg: DataConfig, host: PluginHost, seed: int, device: torch.device
                   ) -> RunData:
    """Load the dataset, split it, apply the noise model, and move everything to ``device``.

    Everything random here draws from one generator seeded by ``seed``, so splits and noise
    are the same for every run of a recipe with that seed, whatever its models or components.
    """
    with host.activate():
        return _build_run_data(cfg, host, seed, device)


def _int64_labels(loaded: DatasetSplits) -> DatasetSplits:
    """The splits with ``int64`` labels, as the engine writes them: a loader's ``int32`` or
    ``uint8`` labels (NumPy's and image formats' usual types) are taken as they are meant."""
    train, test = (s if s is None or s.y.dtype == torch.int64 else attrs.evolve(s, y=s.y.long())
                   for s in (loaded.train, loaded.test))
    return DatasetSplits(train=train, test=test)


def _build_run_data(cfg: DataConfig, host: PluginHost, seed: int, device: torch.device
                    ) -> RunData:
    loader = host.datasets.get(cfg.dataset)
    params = bind_params(loader, cfg.params, "data.params")
    try:
        loaded: DatasetSplits = loader(**params)
    except KdcoreError:
        raise
    except (OSError, ValueError) as exc:
        raise KdcoreError(f"dataset '{cfg.dataset}' could not be loaded: {exc}") from None
    gen = torch.Generator().manual_seed(seed)
    check_splits(cfg.dataset, loaded)
    loaded = _int64_labels(loaded)
    full = loaded.train
    num_classes = full.num_classes
    # the C x C transition matrix (float64), counted before anything loops over the classes
    check_fits(f"dataset '{cfg.dataset}' has {num_classes} classes: its transition matrix",
               8 * num_classes ** 2, device, "a label space this large is a mistake",
               key="data.dataset")
    splits = make_splits(
        full.y, num_classes=num_classes, generator=gen, val_fraction=cfg.val_fraction,
        gold_per_class=cfg.gold_per_class,
        test_fraction=(0.2 if cfg.test_fraction is None else cfg.test_fraction)
        if loaded.test is None else 0.0,
    )
    test = loaded.test if loaded.test is not None else full.subset(splits["test"])
    if len(test) == 0:  # every class too small for its share to round to a sample
        raise RecipeError(f"carves no test sample from dataset '{cfg.dataset}' ({len(full)} "
                          "samples; the fraction is taken of each class and rounded): a run "
                          "without a test set has nothing to report; raise it",
                          key="data.test_fraction")
    if loaded.test is not None and cfg.test_fraction is not None:
        logger.warning(f"dataset '{cfg.dataset}' has its own test split: data.test_fraction "
                       f"= {cfg.test_fraction} is not used")
    train_idx = splits["train"]
    if cfg.train_subset and cfg.train_subset < len(train_idx):
        train_idx = _stratified_subset(full.y[train_idx], train_idx, cfg.train_subset, gen)
    train, val, gold = full.subset(train_idx), full.subset(splits["val"]), full.subset(
        splits["gold"])
    # the ledger's per-class float32 columns: the targets before and after refinement
    check_fits(f"the ledger's targets of {len(train)} samples x {num_classes} classes",
               2 * 4 * len(train) * num_classes, device, "lower it", key="data.train_subset")

    noise_fn = host.noise_models.get(cfg.noise.model)
    noise_params = bind_params(noise_fn, cfg.noise.params, "data.noise.params")
    train_noisy = _apply_noise(cfg.noise.model, noise_fn, noise_params, train, num_classes, gen,
                               source=(train_idx, len(full)))
    val_noisy = (_apply_noise(cfg.noise.model, noise_fn, noise_params, val, num_classes, gen,
                              source=(splits["val"], len(full)))
                 if cfg.noise.apply_to_val else val.y.clone())

    source_noisy = full.y.clone()
    source_noisy[train_idx] = train_noisy.to(source_noisy.device)
    if cfg.noise.apply_to_val:
        source_noisy[splits["val"]] = val_noisy.to(source_noisy.device)

    def to_dev(ds: Split) -> Split:
        if isinstance(ds, FileDataset):  # the images stay files; the labels move
            return attrs.evolve(ds, y=ds.y.to(device))
        return attrs.evolve(ds, x=ds.x.to(device), y=ds.y.to(device))

    transition = realised_transition(train.y, train_noisy, num_classes)
    class_names = tuple(full.class_names) or tuple(str(c) for c in range(num_classes))
    counts = torch.bincount(train.y.cpu(), minlength=num_classes)
    warn_if_classes_missing(cfg.dataset, counts, test.y, class_names)
    warn_if_mostly_mislabelled(transition, counts, class_names, cfg.noise.model)
    return RunData(
        train=to_dev(train), val=to_dev(val), test=to_dev(test), gold=to_dev(gold),
        train_noisy=train_noisy.to(device), val_noisy=val_noisy.to(device),
        train_source=train_idx.clone(),
        transition=transition,
        noise_rate=float((train_noisy != train.y).double().mean()),  # make_splits: N > 0
        num_classes=num_classes,
        class_names=class_names, device=device, workers=cfg.workers,
        source_noisy=source_noisy,
    )


class _Batches:
    """A map-style dataset whose items are whole batches: item ``i`` is the ``uint8`` images
    of the ``i``-th batch of rows (DataLoader workers decode them in order)."""

    def __init__(self, split: FileDataset, batches: Sequence[torch.Tensor | slice]) -> None:
        self.split = split
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.split.read(self.batches[i])


WORKER_GRACE_S = 3
"""How long a DataLoader worker goes on after a SIGTERM (:func:`leave_stop_signals_to_the_run`)."""


def start_worker(worker_id: int) -> None:
    """A DataLoader worker's start: the run's locks dropped (:func:`kdcore.locks.drop_inherited`),
    a SIGTERM left to the run (:func:`leave_stop_signals_to_the_run`)."""
    drop_inherited()
    leave_stop_signals_to_the_run(worker_id)


def leave_stop_signals_to_the_run(worker_id: int) -> None:
    """In a DataLoader worker: a SIGTERM ends it only :data:`WORKER_GRACE_S` seconds later.

    A scheduler's SIGTERM reaches every process of a run; a worker killed at once made torch
    raise "DataLoader worker is killed by signal" inside the run's own stop, which then
    failed. Given the grace, the run stops at its checkpoint and ends its workers itself. Not
    ignored outright: Python's multiprocessing ends a worker left at exit with SIGTERM and
    waits for it. (Ctrl-C's KeyboardInterrupt torch's workers already leave to the run.)
    """
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # its default action ends the process
    signal.signal(signal.SIGTERM, _end_after_grace)
    if hasattr(signal, "pthread_sigmask"):  # a SIGTERM held since the fork arrives here now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


@contextlib.contextmanager
def _sigterm_blocked() -> Iterator[None]:
    """SIGTERM blocked in this thread while the DataLoader forks its workers, which inherit
    the mask: torch puts a SIGTERM handler of its own in a worker (one that ends it at once)
    before :func:`leave_stop_signals_to_the_run` runs, and a SIGTERM arriving between the two
    had ended the worker ("DataLoader worker exited unexpectedly" in the run's stop). Blocked,
    it waits for the worker's own handler; here it arrives when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _end_after_grace(signum: int, frame: object) -> None:
    signal.alarm(WORKER_GRACE_S)


def _worker_error(exc: Exception) -> str:
    """The message of an error raised in a DataLoader worker (PyTorch re-raises it with the
    worker's traceback appended; its last line is the original ``Type: message``)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else repr(exc)
    return last.split(": ", 1)[1] if ": " in last and "Error" in last.split(": ", 1)[0] \
        else last


def _apply_noise(name: str, fn: Any, params: dict[str, Any], ds: Split, num_classes: int,
                 gen: torch.Generator, source: tuple[torch.Tensor, int]) -> torch.Tensor:
    """Corrupt ``ds``'s labels; ``source``: its rows in the loader's training split, and that
    split's size (``NoiseContext.source_index`` / ``source_size``)."""
    index, size = source
    ctx = NoiseContext(labels=ds.y.clone(), num_classes=num_classes, generator=gen,
                       x=ds.x if isinstance(ds, ArrayDataset) else None,
                       source_index=index.clone(), source_size=size)
    try:
        noisy = fn(ctx, **params)
    except TypeError as exc:
        raise RecipeError(str(exc), key="data.noise.params") from None
    except RecipeError:
        raise
    except KdcoreError as exc:  # its refusal of these data ("needs at least 2 classes")
        raise RecipeError(str(exc), key="data.noise") from None
    return check_noisy_labels(name, noisy, ds.y, num_classes)


def _stratified_subset(labels: torch.Tensor, index: torch.Tensor, size: int,
                       gen: torch.Generator) -> torch.Tensor:
    """Exactly ``size`` rows of ``index`` keeping class proportions: each class gets the floor
    of its share, the rows left over go to the largest remainders (ties: the lower class), and,
    where ``size`` allows, no class is left out (a row moves from the class that has most)."""
    perm = torch.randperm(len(index), generator=gen)
    classes = labels.unique()
    rows = [perm[labels[perm] == c] for c in classes]
    quotas = [len(r) * size / len(index) for r in rows]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(rows)), key=lambda k: (counts[k] - quotas[k], k))
    for k in by_remainder[:size - sum(counts)]:
        counts[k] += 1
    if size >= len(rows):
        for k in range(len(rows)):
            if counts[k] == 0:
                donor = max(range(len(rows)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[k] = 1
    chosen = torch.cat([r[:n] for r, n in zip(rows, counts)])
    return index[chosen.sort().values]
