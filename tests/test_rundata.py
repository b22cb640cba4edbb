"""A run's data (kdcore/rundata.py) built from a tiny dataset plugin, without training: which
rows go where, what the noise model is handed and what it may return, the realised noise, the
inputs a batch gets (normalised against a NumPy transcription), the batches over a split, a
distributed rank's share of a streamed batch, and a DataLoader worker's error message."""

from __future__ import annotations

import os
from typing import Any

import attrs
import numpy as np
import pytest
import torch
from loguru import logger

from kdcore import distributed, hookimpl
from kdcore.data.base import ArrayDataset, DatasetSplits, FileDataset
from kdcore.errors import KdcoreError, RecipeError
from kdcore.plugins import PluginHost
from kdcore.recipe.schema import DataConfig, NoiseConfig
from kdcore.rundata import RunData, _share, _worker_error, build_run_data
from tests.cli_helpers import logged

CLASSES = 4


class _Data:
    """A dataset plugin whose loader and noise models the tests set."""

    def __init__(self) -> None:
        self.loaded = None  # what the loader returns (or raises, if an exception)
        self.seen: list = []  # the NoiseContext of every call of the noise model

    @hookimpl
    def kdcore_add_datasets(self):
        def tiny():
            if isinstance(self.loaded, BaseException):
                raise self.loaded
            return self.loaded

        return {"tiny": tiny}

    @hookimpl
    def kdcore_add_noise_models(self):
        def shift(ctx, *, by: int = 1):
            """Every label moved ``by`` classes on (a rate of 1 that is easy to check)."""
            self.seen.append(ctx)
            return (ctx.labels + by) % ctx.num_classes

        def returns(ctx, *, labels: Any):
            return labels

        return {"shift": shift, "returns": returns}


def _splits(rows: int = 40, test: int | None = None, **extra) -> DatasetSplits:
    x = torch.arange(rows * 3, dtype=torch.float32).view(rows, 3)
    train = ArrayDataset(x, torch.arange(rows) % CLASSES, CLASSES, **extra)
    held = None if test is None else ArrayDataset(
        -torch.ones(test, 3), torch.arange(test) % CLASSES, CLASSES)
    return DatasetSplits(train=train, test=held)


def _build(plugin: _Data, *, seed: int = 0, **data) -> RunData:
    data.setdefault("noise", NoiseConfig(model="shift"))
    cfg = DataConfig(dataset="tiny", **data)
    return build_run_data(cfg, PluginHost(extra=[plugin], entry_points=False), seed,
                          torch.device("cpu"))


@pytest.fixture
def plugin() -> _Data:
    p = _Data()
    p.loaded = _splits()
    return p


# -- the splits and the noise -----------------------------------------------------------------


def test_the_splits_cover_the_carved_set_once_and_the_noise_touches_train_only(plugin):
    data = _build(plugin, val_fraction=0.25, test_fraction=0.2, gold_per_class=1,
                  noise=NoiseConfig(model="shift", apply_to_val=False))
    rows = {name: data.split(name).x[:, 0].long() // 3 for name in ("train", "val", "test",
                                                                      "gold")}
    # 40 rows, 10 per class: 2 test, 1 gold, round(2.5) = 2 validation, 5 training per class
    assert {k: len(v) for k, v in rows.items()} == {"train": 20, "val": 8, "test": 8, "gold": 4}
    assert sorted(torch.cat(list(rows.values())).tolist()) == list(range(40))
    assert torch.equal(data.train_source, rows["train"])
    for name, split in (("train", data.train), ("val", data.val), ("gold", data.gold)):
        assert torch.equal(split.y, rows[name] % CLASSES), name  # true labels, kept
    assert torch.equal(data.train_noisy, (data.train.y + 1) % CLASSES)
    assert torch.equal(data.val_noisy, data.val.y)  # apply_to_val is off
    assert data.noise_rate == 1.0 and data.num_classes == CLASSES
    expected = np.roll(np.eye(CLASSES), 1, axis=1)  # class i labelled i + 1
    np.testing.assert_array_equal(data.transition.numpy(), expected)
    assert data.class_names == ("0", "1", "2", "3") and data.workers == 0
    # every source row's label: noisy where it trains, the truth elsewhere
    source = torch.arange(40) % CLASSES
    source[rows["train"]] = (source[rows["train"]] + 1) % CLASSES
    assert torch.equal(data.source_noisy, source)


def test_the_noise_model_gets_each_split_with_its_source_rows(plugin):
    data = _build(plugin, val_fraction=0.25, test_fraction=0.2,
                  noise=NoiseConfig(model="shift", params={"by": 2}))  # validation too
    train_ctx, val_ctx = plugin.seen
    assert torch.equal(train_ctx.labels, data.train.y) and train_ctx.labels is not data.train.y
    assert torch.equal(train_ctx.source_index, data.train_source)
    assert train_ctx.source_size == 40 and val_ctx.source_size == 40
    assert torch.equal(train_ctx.x, plugin.loaded.train.x[data.train_source])
    assert torch.equal(val_ctx.source_index, data.val.x[:, 0].long() // 3)
    assert train_ctx.num_classes == CLASSES and train_ctx.generator is val_ctx.generator
    assert torch.equal(data.val_noisy, (data.val.y + 2) % CLASSES)
    expected = torch.arange(40) % CLASSES
    for split in (data.train, data.val):
        rows = split.x[:, 0].long() // 3
        expected[rows] = (expected[rows] + 2) % CLASSES
    assert torch.equal(data.source_noisy, expected)


def test_splits_and_noise_depend_on_the_seed_alone(plugin):
    a, b, c = (_build(plugin, seed=s, val_fraction=0.25) for s in (3, 3, 4))
    assert torch.equal(a.train_source, b.train_source)
    assert not torch.equal(a.train_source, c.train_source)


def test_a_loaders_own_test_split_is_used_as_it_is(plugin):
    plugin.loaded = _splits(test=6)
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m).rstrip()), level="WARNING")
    try:
        data = _build(plugin, val_fraction=0.0)
        assert messages == []  # the default test share is not the user's choice
        _build(plugin, val_fraction=0.0, test_fraction=0.3)
    finally:
        logger.remove(sink)
    assert len(data.train) == 40 and torch.equal(data.test.x, -torch.ones(6, 3))
    assert len(messages) == 1 and messages[0].endswith(
        "dataset 'tiny' has its own test split: data.test_fraction = 0.3 is not used")


def test_the_default_test_share_is_a_fifth(plugin):
    data = _build(plugin, val_fraction=0.0)
    assert (len(data.train), len(data.test)) == (32, 8)


def test_train_subset_keeps_that_many_rows_and_the_others_do_not_train(plugin):
    data = _build(plugin, val_fraction=0.0, train_subset=8)
    assert len(data.train) == 8 and len(data.train_noisy) == 8
    assert np.bincount(data.train.y.numpy()).tolist() == [2, 2, 2, 2]
    rows = data.train.x[:, 0].long() // 3
    assert torch.equal(data.train_source, rows)
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(data.source_noisy[untouched], (torch.arange(40) % CLASSES)[untouched])
    # as many as there are: no subset drawn, so the noise draws are those of a run without
    noisy = NoiseConfig(model="symmetric", params={"rate": 0.5})
    whole, every = (_build(plugin, val_fraction=0.0, train_subset=k, noise=noisy)
                    for k in (32, 0))
    assert torch.equal(whole.train_source, every.train_source)
    assert torch.equal(whole.train_noisy, every.train_noisy)


def test_class_names_come_from_the_loader(plugin):
    plugin.loaded = _splits(class_names=("a", "b", "c", "d"))
    assert _build(plugin).class_names == ("a", "b", "c", "d")


@pytest.mark.parametrize(("error", "message"), [
    (OSError("disk gone"), "dataset 'tiny' could not be loaded: disk gone"),
    (ValueError("bad header"), "dataset 'tiny' could not be loaded: bad header"),
    (KdcoreError("its own words"), "its own words"),
])
def test_a_loader_that_fails_is_named_with_its_reason(plugin, error, message):
    plugin.loaded = error
    with pytest.raises(KdcoreError) as info:
        _build(plugin)
    assert str(info.value) == message


def test_a_loader_bug_is_not_disguised_as_bad_data(plugin):
    plugin.loaded = RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):
        _build(plugin)


@pytest.mark.parametrize(("data", "key"), [
    ({"params": {"size": 3}}, "data.params.size"),
    ({"noise": NoiseConfig(model="shift", params={"rate": 0.1})}, "data.noise.params.rate")])
def test_a_parameter_the_loader_or_the_noise_model_lacks_is_named_by_its_key(plugin, data, key):
    with pytest.raises(RecipeError) as info:
        _build(plugin, **data)
    assert info.value.key == key


def test_the_test_split_must_be_a_split(plugin):
    plugin.loaded = DatasetSplits(train=_splits().train, test=[1, 2])
    with pytest.raises(KdcoreError) as info:
        _build(plugin)
    assert str(info.value) == "dataset 'tiny': its test split is a list"


def test_the_workers_setting_is_kept(plugin):
    assert _build(plugin, workers=3).workers == 3


def test_noise_as_other_integers_is_taken_as_int64(plugin):
    def narrow(ctx):
        return ctx.labels.numpy().astype(np.int32)

    plugin.kdcore_add_noise_models = hookimpl(lambda: {"narrow": narrow})
    data = _build(plugin, noise=NoiseConfig(model="narrow"))
    assert data.train_noisy.dtype == torch.long and data.val_noisy.dtype == torch.long
    assert torch.equal(data.train_noisy, data.train.y)


def test_a_class_left_without_rows_takes_one_from_the_lowest_of_the_largest():
    """Two classes of 450 and five of 20, 10 rows: the large ones get 5 each, then give one
    to each small class in turn, the lower class first where they tie."""
    from kdcore.rundata import _stratified_subset

    labels = torch.cat([torch.zeros(450, dtype=torch.long), torch.ones(450, dtype=torch.long),
                        torch.arange(100) % 5 + 2])
    got = _stratified_subset(labels, torch.arange(1000), 10, torch.Generator())
    assert np.bincount(labels[got].numpy(), minlength=7).tolist() == [2, 3, 1, 1, 1, 1, 1]


@pytest.mark.parametrize(("labels", "message"), [
    ([0] * 31, "labels of shape (31,) for labels of shape (32,)"),
    ([0] * 33, "labels of shape (33,) for labels of shape (32,)"),
    ([[0]] * 32, "labels of shape (32, 1) for labels of shape (32,)"),
    ([0] * 31 + [-1], "labels from -1 to 0; classes are 0 .. 3"),
    ([1] * 31 + [4], "labels from 1 to 4; classes are 0 .. 3"),
    ([0.0] * 32, "labels of dtype torch.float32; expected integers"),
    ([0] * 31 + [2.5], "labels of dtype torch.float32; expected integers"),
    ([True] * 32, "labels of dtype torch.bool; expected integers"),
    (None, "NoneType None; expected a label per sample"),
    ("0" * 32, "str '00000000000000000000000000000000'; expected a label per sample"),
    ([[0], [0, 1]] * 16, "list [[0], [0, 1], [0], [0, 1], [0], [0, 1], [0], [0, 1], [0],..., "
                         "which is not an array of labels (expected sequence of length 1 at "
                         "dim 1 (got 2))"),
])
def test_noise_of_the_wrong_type_shape_or_range_is_refused(plugin, labels, message):
    """Each named the noise model and what it gave: it said "the wrong shape or range" of
    all of them, took floats truncated and bools as classes 0 and 1, and None was a
    TypeError traceback."""
    with pytest.raises(KdcoreError) as info:
        _build(plugin, val_fraction=0.0, noise=NoiseConfig(
            model="returns", params={"labels": labels}, apply_to_val=False))
    assert str(info.value).startswith(f"noise model 'returns' returned {message}"), info.value


def test_noise_as_numpy_or_narrow_integers_is_taken_as_labels(plugin):
    labels = [3, 2, 1, 0] * 8
    for given in (np.array(labels, dtype=np.uint8), torch.tensor(labels, dtype=torch.int8),
                  tuple(labels)):
        data = _build(plugin, val_fraction=0.0, noise=NoiseConfig(
            model="returns", params={"labels": given}, apply_to_val=False))
        assert data.train_noisy.tolist() == labels and data.train_noisy.dtype == torch.long


def test_noise_as_a_list_is_taken_as_labels(plugin):
    labels = [3, 2, 1, 0] * 8
    data = _build(plugin, val_fraction=0.0, noise=NoiseConfig(
        model="returns", params={"labels": labels}, apply_to_val=False))
    assert data.train_noisy.tolist() == labels and data.train_noisy.dtype == torch.long


def test_a_noise_model_that_rejects_its_parameters_is_blamed_on_them(plugin):
    def strict(ctx, **params):
        raise TypeError("rate must be a number")

    plugin.kdcore_add_noise_models = hookimpl(lambda: {"strict": strict})
    with pytest.raises(RecipeError) as info:
        _build(plugin, noise=NoiseConfig(model="strict"))
    assert (info.value.key, info.value.detail) == ("data.noise.params", "rate must be a number")


# -- what a batch gets ------------------------------------------------------------------------


def _images(mean=None, std=None) -> ArrayDataset:
    x = torch.arange(2 * 2 * 3 * 3, dtype=torch.uint8).view(2, 2, 3, 3) * 7
    return ArrayDataset(x, torch.tensor([0, 1]), 2, mean=mean, std=std)


def _run_data(train) -> RunData:
    return RunData(train=train, val=train, test=train, gold=train,
                   train_noisy=train.y, val_noisy=train.y, train_source=torch.arange(len(train)),
                   transition=torch.eye(2), noise_rate=0.0, num_classes=2, class_names=("a", "b"),
                   device=torch.device("cpu"))


def test_images_are_scaled_and_normalised_per_channel():
    split = _images(mean=(0.5, 0.25), std=(0.5, 2.0))
    got = _run_data(split).inputs(split, torch.tensor([1]))
    x = split.x[1:].numpy().astype(np.float32) / 255
    expected = (x - np.array([0.5, 0.25]).reshape(1, 2, 1, 1)) / np.array([0.5, 2.0]).reshape(
        1, 2, 1, 1)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(("mean", "std"), [(None, None), ((0.5, 0.5), None), (None, (2.0, 2.0))])
def test_images_without_both_statistics_are_only_scaled(mean, std):
    split = _images(mean=mean, std=std)
    got = _run_data(split).inputs(split, slice(0, 2))
    np.testing.assert_allclose(got.numpy(), split.x.numpy().astype(np.float32) / 255, rtol=1e-6)


def test_float_inputs_are_served_as_they_are_a_slice_without_a_copy():
    split = _splits().train
    data = _run_data(split)
    view = data.inputs(split, slice(4, 8))
    assert view.data_ptr() == split.x[4].data_ptr() and torch.equal(view, split.x[4:8])
    rows = torch.tensor([9, 2])
    assert torch.equal(data.inputs(split, rows), split.x[rows])


def test_the_batches_over_a_split_are_consecutive_slices_up_to_its_end():
    data = _run_data(_splits().train)
    assert list(data.batches(data.train, 16)) == [slice(0, 16), slice(16, 32), slice(32, 40)]
    assert list(data.batches(data.train, 40)) == [slice(0, 40)]
    assert list(data.batches(data.train, 64)) == [slice(0, 40)]


def test_a_split_in_memory_streams_its_batches_in_order():
    data = _run_data(_splits().train)
    order = [torch.tensor([3, 1]), slice(5, 7), torch.tensor([0])]
    got = list(data.stream(data.train, order))
    assert [rows for rows, _ in got] == order
    for rows, x in got:
        assert torch.equal(x, data.train.x[rows])


def test_a_split_is_found_by_name_and_an_unknown_name_lists_them():
    data = _run_data(_splits().train)
    other = attrs.evolve(data, val=_images(), test=_images(), gold=_images())
    assert [other.split(n) for n in ("train", "val", "test", "gold")] == [
        other.train, other.val, other.test, other.gold]
    assert len({id(other.split(n)) for n in ("val", "test", "gold")}) == 3
    with pytest.raises(KeyError) as info:
        data.split("validation")
    assert info.value.args[0] == "no split 'validation'; splits: train, val, test, gold"


# -- streamed batches across ranks, and workers' errors ---------------------------------------


@pytest.mark.parametrize(("rank", "expected"), [(0, [0, 1, 2]), (1, [3, 4]), (2, [5, 6])])
def test_a_rank_decodes_its_share_of_a_streamed_batch(monkeypatch, rank, expected):
    monkeypatch.setattr(distributed, "_world", distributed.World(rank, 3, rank))
    rows = torch.tensor([10, 11, 12, 13, 14, 15, 16])
    assert _share(rows).tolist() == [10 + e for e in expected]
    assert _share(slice(20, 27)) == slice(20 + expected[0], 21 + expected[-1])


def test_outside_a_distributed_run_a_process_decodes_the_whole_batch():
    rows = torch.tensor([4, 2])
    assert _share(rows) is rows and _share(slice(3, 9)) == slice(3, 9)


@pytest.mark.parametrize(("text", "message"), [
    ("Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
     "last):\n  File \"x.py\", line 1\nOSError: image a.png cannot be read\n",
     "image a.png cannot be read"),
    ("Caught X in DataLoader worker.\nKdcoreError: image: it says: this\n", "image: it says: this"),
    ("DataLoader worker (pid 7) is killed by signal: Killed.\n\n",
     "DataLoader worker (pid 7) is killed by signal: Killed."),
    ("", "RuntimeError('')"),
    # the part before the first ': ' must name an error for the rest to be the message
    ("Decode Error: bad header", "bad header"),
    ("worker exited: MemoryError: out of memory", "worker exited: MemoryError: out of memory"),
])
def test_a_workers_error_is_told_by_its_last_line(text, message):
    assert _worker_error(RuntimeError(text)) == message


def test_a_file_split_streams_each_batch_from_its_files(monkeypatch):
    split = FileDataset(paths=("a", "b", "c"), y=torch.tensor([0, 1, 0]), num_classes=2,
                        size=2)
    reads = []

    def read(self, rows):
        reads.append(rows)
        n = len(range(3)[rows]) if isinstance(rows, slice) else len(rows)
        return torch.full((n, 3, 2, 2), 51, dtype=torch.uint8)

    monkeypatch.setattr(FileDataset, "read", read)
    data = _run_data(split)
    got = list(data.stream(split, [torch.tensor([2, 0]), slice(1, 2)]))
    assert [len(x) for _, x in got] == [2, 1] and reads[0].tolist() == [2, 0]
    assert reads[1] == slice(1, 2)
    assert all(torch.allclose(x, torch.full_like(x, 0.2)) for _, x in got)
    assert list(data.stream(split, [])) == []


def _file_split(tmp_path, monkeypatch):
    """Three files whose reads are logged, with the reading process, to a file (DataLoader
    workers are other processes)."""
    log = tmp_path / "reads.log"
    split = FileDataset(paths=("a", "b", "c"), y=torch.tensor([0, 1, 0]), num_classes=2,
                        size=2)

    def read(self, rows):
        rows = list(range(3)[rows]) if isinstance(rows, slice) else rows.tolist()
        with log.open("a") as fh:
            fh.write(f"{os.getpid()} {rows}\n")
        return torch.tensor(rows, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)

    monkeypatch.setattr(FileDataset, "read", read)
    return split, log


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_a_file_split_is_decoded_in_as_many_worker_processes_as_asked(tmp_path, monkeypatch,
                                                                     workers):
    split, log = _file_split(tmp_path, monkeypatch)
    data = attrs.evolve(_run_data(split), workers=workers)
    order = [torch.tensor([2, 0]), torch.tensor([1]), slice(0, 3)]
    got = list(data.stream(split, order))
    assert [rows for rows, _ in got] == order
    for (_, x), expected in zip(got, ([2, 0], [1], [0, 1, 2])):
        assert torch.equal(x[:, 0, 0, 0], torch.tensor(expected, dtype=torch.float32) / 255)
    pids = {int(line.split()[0]) for line in log.read_text().splitlines()}
    assert (pids == {os.getpid()}) == (workers == 0) and len(pids) <= max(workers, 1)
    log.unlink()
    assert list(data.stream(split, [])) == [] and not log.exists()  # no worker started


def test_a_split_in_memory_ignores_the_workers():
    data = attrs.evolve(_run_data(_splits().train), workers=2)
    ((rows, x),) = data.stream(data.train, [torch.tensor([1])])
    assert torch.equal(x, data.train.x[[1]])


def test_a_worker_reads_whole_batches(monkeypatch):
    from kdcore.rundata import _Batches

    split = FileDataset(paths=("a", "b"), y=torch.tensor([0, 1]), num_classes=2, size=2)
    batches = _Batches(split, [torch.tensor([1]), torch.tensor([0, 1])])
    reads = []
    monkeypatch.setattr(FileDataset, "read",
                        lambda self, rows: reads.append((self, rows.tolist())) or rows)
    assert len(batches) == 2 and batches[1].tolist() == [0, 1] and reads == [(split, [0, 1])]


def test_classes_the_training_split_lacks_are_named_with_their_test_samples(plugin):
    """A split made from sorted arrays (every training row of class 0): no model learns the
    others, and each of their test samples counts as an error; said once, before training."""
    rows = 12
    train = ArrayDataset(torch.zeros(rows, 3), torch.zeros(rows, dtype=torch.int64), CLASSES,
                         class_names=tuple("abcd"))
    test = ArrayDataset(torch.zeros(5, 3), torch.tensor([0, 1, 1, 2, 0]), CLASSES)
    plugin.loaded = DatasetSplits(train=train, test=test)
    with logged("WARNING") as lines:
        _build(plugin, val_fraction=0.0)
    assert lines == [
        "dataset 'tiny': the training split holds no sample of class 'b', 'c', 'd' (3 of 4 "
        "classes), so no model learns them; the test split's 3 samples of them count as "
        "errors"]
    with logged("WARNING") as lines:  # every class has a training sample
        _build(_with(plugin, _splits(test=6)), val_fraction=0.0)
    assert lines == []


def _with(plugin: _Data, loaded: DatasetSplits) -> _Data:
    plugin.loaded = loaded
    return plugin


@pytest.mark.parametrize("counts, test, message", [
    ([3, 0, 2], [0, 2], "class 'b' (1 of 3 classes), so no model learns it"),
    ([3, 0, 2], [1], "class 'b' (1 of 3 classes), so no model learns it; the test split's 1 "
                     "sample of it counts as an error"),
    ([3, 0, 2], [1, 0, 1], "class 'b' (1 of 3 classes), so no model learns it; the test "
                           "split's 2 samples of it count as errors"),
    ([0, 0, 2], [1], "class 'a', 'b' (2 of 3 classes), so no model learns them; the test "
                     "split's 1 sample of them counts as an error"),
    ([0, 0, 0, 0, 0, 1], [0, 4, 4], "class 'a', 'b', 'c', and 2 more classes (5 of 6 classes), "
                                     "so no model learns them; the test split's 3 samples of "
                                     "them count as errors"),
    ([0, 0, 0, 0, 1], [], "class 'a', 'b', 'c', and 1 more class (4 of 5 classes), so no "
                          "model learns them"),
])
def test_the_missing_classes_warning_names_three_then_counts(counts, test, message):
    from kdcore.class_warnings import warn_if_classes_missing

    with logged("WARNING") as lines:
        warn_if_classes_missing("d", torch.tensor(counts), torch.tensor(test, dtype=torch.int64),
                                tuple("abcdef"))
    assert lines == [f"dataset 'd': the training split holds no sample of {message}"]


def _mislabelled_warnings(transition, counts, names="abcde") -> list[str]:
    from kdcore.class_warnings import warn_if_mostly_mislabelled

    with logged("WARNING") as lines:
        warn_if_mostly_mislabelled(torch.tensor(transition, dtype=torch.float64),
                                    torch.tensor(counts), tuple(names), "pair_flip")
    return lines


def test_classes_labelled_mostly_as_another_are_named_once_they_have_20_samples():
    rows = [[0.4, 0.6, 0.0], [0.0, 0.5, 0.5], [0.1, 0.0, 0.9]]  # a: mostly b; b: a tie
    assert _mislabelled_warnings(rows, [20, 30, 30], "abc") == [
        "data.noise (pair_flip): in the training labels, class 'a' mostly 'b' (60%, its own 40%): "
        "learning from these labels alone teaches each as the other class (clean samples, "
        "data.gold_per_class, are the way round it)"]
    assert _mislabelled_warnings(rows, [19, 30, 30], "abc") == []  # a class too small to tell
    rows[2] = [0.0, 0.6, 0.4]  # c: mostly b, after the small class a
    assert _mislabelled_warnings(rows, [19, 30, 30], "abc")[0].startswith(
        "data.noise (pair_flip): in the training labels, class 'c' mostly 'b' (60%, its own "
        "40%): ")
    assert _mislabelled_warnings([[0.9, 0.1], [0.2, 0.8]], [50, 50], "ab") == []


@pytest.mark.parametrize(("flipped", "more"), [
    (3, ""), (4, ", and 1 more class"), (5, ", and 2 more classes")])
def test_more_than_three_mislabelled_classes_are_counted_after_the_first_three(flipped, more):
    flip = [[(0.3 if i < flipped else 0.9) if i == j else (0.7 if i < flipped else 0.1)
             if j == (i + 1) % 5 else 0.0 for j in range(5)] for i in range(5)]
    (line,) = _mislabelled_warnings(flip, [40] * 5)
    assert line.startswith("data.noise (pair_flip): in the training labels, class 'a' mostly "
                           "'b' (70%, its own 30%), 'b' mostly 'c' (70%, its own 30%), 'c' "
                           f"mostly 'd' (70%, its own 30%){more}: learning ")


def test_a_recipe_whose_noise_mislabels_classes_is_warned_of_while_its_data_is_built(tmp_path):
    from kdcore.api import as_recipe
    from kdcore.engine import dry_setup
    from kdcore.testing import teacher_stage, tiny_recipe

    with logged("WARNING") as lines:
        for rate in (0.2, 1.0):
            dry_setup(as_recipe(tiny_recipe(teacher_stage(1)), [
                f'data.noise={{model="pair_flip", params={{rate={rate}}}}}']), PluginHost())
    assert [line[:62] for line in lines if line.startswith("data.noise")] == [
        "data.noise (pair_flip): in the training labels, class '0' most"]


@pytest.mark.parametrize("model", ["symmetric", "pair_flip", "instance_dependent"])
def test_a_noise_models_refusal_of_the_data_says_where_the_recipe_sets_it(tmp_path, model):
    """On a dataset of one class `check` said only "symmetric noise needs at least 2
    classes", without the recipe or its key."""
    from click.testing import CliRunner

    from kdcore.cli import main
    from kdcore.testing import stage, tiny_recipe, write_recipe

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "one.npz", x_train=rng.normal(size=(60, 4)).astype(np.float32),
             y_train=np.zeros(60, dtype=np.int64))
    data = tiny_recipe(stage("s", 1, ["student"], {"use": "ce"}), train_subset=0,
                       data={"dataset": "npz", "params": {"path": str(tmp_path / "one.npz")}})
    data["data"]["noise"] = {"model": model, "params": {"rate": 0.2}}
    path = write_recipe(data, tmp_path / "one.toml")
    result = CliRunner().invoke(main, ["check", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"kdcore: error: {path}: data.noise: {model} noise needs at least 2 classes")
