"""Streaming datasets: images decoded batch by batch in DataLoader workers give the same run as
the same images held in memory; the list and Clothing1M layouts read as their files say."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import kdcore
from kdcore.cli import main
from kdcore.data.base import ArrayDataset, FileDataset
from kdcore.data.loaders import clothing1m, image_folder, image_list
from kdcore.errors import KdcoreError
from kdcore.history import History


def _image(path: Path, colour: tuple[int, int, int], rng: np.random.Generator,
           suffix_size: int = 12) -> None:
    """A class-coloured image with per-image noise (PNG or JPEG by the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(np.array(colour) + rng.normal(0, 40, (suffix_size, suffix_size, 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """210 training and 60 test images, 3 classes, in ImageFolder layout."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 70), ("test", 20)):
        for c, colour in enumerate(COLOURS):
            for i in range(per_class):
                _image(root / split / f"class{c}" / f"{i:03d}.png", colour, rng)
    return root


def test_a_streaming_split_reads_what_the_in_memory_one_holds(folders):
    memory = image_folder(root=str(folders / "train"), size=8,
                          test_root=str(folders / "test"))
    stream = image_folder(root=str(folders / "train"), size=8,
                          test_root=str(folders / "test"), stream=True)
    assert isinstance(memory.train, ArrayDataset) and isinstance(stream.train, FileDataset)
    assert torch.equal(stream.train.y, memory.train.y)
    assert stream.train.input_shape == memory.train.input_shape == (3, 8, 8)
    assert torch.equal(stream.train.read(slice(None)), memory.train.x)
    rows = torch.tensor([5, 0, 209, 70])
    assert torch.equal(stream.train.read(rows), memory.train.x[rows])
    assert stream.train.mean == memory.train.mean and stream.train.std == memory.train.std
    assert stream.test.mean == stream.train.mean  # the test split takes the training stats
    sub = stream.train.subset(torch.tensor([3, 1]))
    assert sub.paths == (stream.train.paths[3], stream.train.paths[1])
    assert torch.equal(sub.read(slice(None)), memory.train.x[[3, 1]])


RECIPE = """
[run]
name = "stream"
seed = 3
device = "cpu"
[data]
dataset = "image_folder"
params = {{ root = "{root}/train", test_root = "{root}/test", size = 8, stream = {stream} }}
batch_size = 32
eval_batch_size = 50
workers = {workers}
[data.noise]
model = "symmetric"
params = {{ rate = 0.3 }}
[models.student]
arch = "mlp"
params = {{ hidden = [16], dropout = {dropout} }}
optimizer = {{ lr = 0.1 }}
[[stages]]
name = "student"
epochs = 2
train = ["student"]
[[stages.components]]
use = "ce"
"""


def _run(tmp_path: Path, name: str, **fmt) -> Path:
    recipe = tmp_path / f"{name}.toml"
    recipe.write_text(RECIPE.format(**fmt))
    out = tmp_path / name
    res = CliRunner().invoke(main, ["run", str(recipe), "--out", str(out), "--quiet"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_two_workers_give_the_in_memory_run(folders, tmp_path, dropout):
    """Bit for bit, also where the model draws from torch's global generator (dropout, as
    AML-KD's mixup coefficient does): the workers' DataLoader must not draw from it."""
    memory = _run(tmp_path, "memory", root=folders, stream="false", workers=0,
                  dropout=dropout)
    stream = _run(tmp_path, "stream", root=folders, stream="true", workers=2, dropout=dropout)
    with History(memory) as a, History(stream) as b:
        assert len(a) == len(b) == 2
        assert a.column_names() == b.column_names()
        for name in a.column_names():  # every ledger column, every epoch, bit for bit
            for epoch in range(len(a)):
                assert np.array_equal(a.column(name, epoch), b.column(name, epoch),
                                      equal_nan=True), (name, epoch)
        assert np.array_equal(a.data("sample_id"), b.data("sample_id"))
        for metric in a.metric_names():
            if not metric.startswith("time/"):
                assert np.array_equal(a.metric(metric), b.metric(metric), equal_nan=True), \
                    metric


def test_workers_leave_a_sigterm_to_the_run_and_go_on_decoding_for_a_while(folders,
                                                                           monkeypatch):
    """A scheduler's SIGTERM reaches every process of a run: the workers go on for a grace
    period (the run stops at its checkpoint and ends them itself); one killed by it at once
    had made torch raise "DataLoader worker is killed by signal" inside the run's stop. After
    the grace they end: Python ends a worker left at exit with SIGTERM and waits for it (the
    next test). Here the grace is longer than the run's 3 s, which a loaded machine took to
    decode the batches after the signal (a flaky failure: "DataLoader worker exited
    unexpectedly"); the forked workers inherit it."""
    import multiprocessing

    from kdcore.rundata import RunData

    monkeypatch.setattr("kdcore.rundata.WORKER_GRACE_S", 60)

    files = image_folder(root=str(folders / "train"), size=8, stream=True).train
    data = RunData(train=files, val=files, test=files, gold=files, train_noisy=files.y,
                   val_noisy=files.y, train_source=torch.arange(len(files)),
                   transition=torch.eye(3), noise_rate=0.0, num_classes=3,
                   class_names=("a", "b", "c"), device=torch.device("cpu"), workers=2)
    batches = [torch.arange(k, k + 4) for k in range(0, 60, 4)]
    stream = data.stream(files, batches)
    rows, x = next(stream)
    workers = multiprocessing.active_children()
    assert len(workers) == 2
    # the first batch can come from one worker while the other is still starting; wait until
    # each catches SIGTERM (Linux: /proc/<pid>/status, SigCgt). That is torch's handler first,
    # kdcore's later: a SIGTERM between the two had ended the worker (this test's flaky
    # failure, until the workers started with SIGTERM held: the next test)
    deadline = time.monotonic() + 30.0
    while not all(_catches(w.pid, signal.SIGTERM) for w in workers):
        assert time.monotonic() < deadline, "a worker never caught SIGTERM"
        time.sleep(0.01)
    for worker in workers:
        os.kill(worker.pid, signal.SIGTERM)
    time.sleep(0.5)  # delivered and acted on before the next batch is asked for
    got = [(rows, x), *stream]
    assert [r.tolist() for r, _ in got] == [b.tolist() for b in batches]
    for r, x in got:
        assert torch.equal(x, data.inputs(files, r))


def test_a_sigterm_before_a_workers_own_handler_waits_for_it(folders, monkeypatch):
    """torch gives each worker a SIGTERM handler of its own, which ends it at once, before the
    worker_init_fn puts kdcore's in place; a SIGTERM in between (a scheduler's, at a worker's
    start) had ended the worker and the run with "DataLoader worker exited unexpectedly". The
    workers start with SIGTERM blocked until kdcore's handler is in place. The window is
    widened here: the init waits a second before putting the handler in place, and the signal
    is sent as soon as the workers exist."""
    import multiprocessing
    import threading

    from kdcore import rundata

    monkeypatch.setattr(rundata, "WORKER_GRACE_S", 60)
    put_in_place = rundata.leave_stop_signals_to_the_run

    def slow_init(worker_id: int) -> None:
        time.sleep(1.0)
        put_in_place(worker_id)

    monkeypatch.setattr(rundata, "leave_stop_signals_to_the_run", slow_init)
    files = image_folder(root=str(folders / "train"), size=8, stream=True).train
    data = rundata.RunData(train=files, val=files, test=files, gold=files, train_noisy=files.y,
                           val_noisy=files.y, train_source=torch.arange(len(files)),
                           transition=torch.eye(3), noise_rate=0.0, num_classes=3,
                           class_names=("a", "b", "c"), device=torch.device("cpu"), workers=2)
    batches = [torch.arange(k, k + 4) for k in range(0, 60, 4)]
    signalled: list[int] = []

    def terminate_the_workers() -> None:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and len(signalled) < 2:
            for worker in multiprocessing.active_children():
                if worker.pid not in signalled:
                    os.kill(worker.pid, signal.SIGTERM)
                    signalled.append(worker.pid)
            time.sleep(0.005)

    sender = threading.Thread(target=terminate_the_workers)
    sender.start()
    stream = data.stream(files, batches)
    try:
        got = [next(stream)]
        sender.join()
        assert len(signalled) == 2
        # past its init (the first batch may come before the other's ends), each worker takes
        # SIGTERM again: multiprocessing ends a worker left at exit with it, and waits
        deadline = time.monotonic() + 30.0
        while any(_blocks(pid, signal.SIGTERM) for pid in signalled):
            assert time.monotonic() < deadline, "a worker still blocks SIGTERM"
            time.sleep(0.01)
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # ours too
        got += list(stream)
    finally:
        stream.close()  # its workers ended, whatever failed
        sender.join()
    assert [r.tolist() for r, _ in got] == [b.tolist() for b in batches]
    for r, x in got:
        assert torch.equal(x, data.inputs(files, r))


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (its SigCgt mask)."""
    return _in_mask(pid, "SigCgt", signum)


def _blocks(pid: int, signum: int) -> bool:
    """Whether process ``pid``'s main thread blocks ``signum`` (its SigBlk mask)."""
    return _in_mask(pid, "SigBlk", signum)


def _in_mask(pid: int, mask_name: str, signum: int) -> bool:
    with open(f"/proc/{pid}/status") as status:
        mask = next(line for line in status if line.startswith(f"{mask_name}:")).split()[1]
    return bool(int(mask, 16) >> (signum - 1) & 1)


def _a_worker_that_sleeps() -> None:
    from kdcore.rundata import leave_stop_signals_to_the_run

    leave_stop_signals_to_the_run(0)
    time.sleep(60)


def test_a_worker_ends_the_grace_after_a_sigterm():
    """As Python's multiprocessing ends a worker left at exit: SIGTERM, then a wait."""
    import multiprocessing

    from kdcore.rundata import WORKER_GRACE_S

    worker = multiprocessing.get_context("fork").Process(target=_a_worker_that_sleeps)
    worker.start()
    time.sleep(0.5)  # its signal handlers are in place
    worker.terminate()
    worker.join(timeout=WORKER_GRACE_S - 1)
    assert worker.is_alive()  # still working through the grace
    worker.join(timeout=30)
    assert worker.exitcode == -signal.SIGALRM


def test_an_unreadable_image_in_a_worker_is_one_line(folders, tmp_path):
    from kdcore.rundata import RunData

    files = image_folder(root=str(folders / "train"), size=8, stream=True).train
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    bad = FileDataset(paths=(*files.paths[:40], str(broken)), y=torch.zeros(41, dtype=torch.long),
                      num_classes=3, size=8, mean=files.mean, std=files.std)
    data = RunData(train=bad, val=bad, test=bad, gold=bad, train_noisy=bad.y, val_noisy=bad.y,
                   train_source=torch.arange(41), transition=torch.eye(3), noise_rate=0.0,
                   num_classes=3, class_names=("a", "b", "c"), device=torch.device("cpu"),
                   workers=2)
    batches = [torch.arange(0, 20), torch.arange(20, 41)]
    stream = data.stream(bad, batches)
    rows, x = next(stream)
    assert torch.equal(rows, batches[0]) and x.shape == (20, 3, 8, 8)
    assert torch.allclose(x, data.inputs(bad, batches[0]))
    with pytest.raises(KdcoreError) as err:
        next(stream)
    message = str(err.value)
    assert message.startswith("cannot read image") and str(broken) in message
    assert "\n" not in message and "Traceback" not in message
    # ended with the error, not left to the collector: torch's error and its frames, a cycle,
    # had held the workers until multiprocessing ended them at exit, with a traceback
    assert multiprocessing.active_children() == []


class _Boom(kdcore.Component):
    """Raises in the middle of the first epoch, while the workers decode batches ahead."""

    def select(self, ctx, batch):
        if ctx.step == 3:
            raise ValueError("boom")


class _BoomPlugin:
    @kdcore.hookimpl
    def kdcore_add_components(self):
        return {"boom": _Boom}


def test_a_run_stopped_in_the_middle_of_a_streamed_epoch_ends_its_workers(folders, tmp_path):
    recipe = tmp_path / "boom.toml"
    recipe.write_text(RECIPE.format(root=folders, stream="true", workers=2, dropout=0.0)
                      + '[[stages.components]]\nuse = "boom"\n')
    with pytest.raises(ValueError, match="^boom$") as info:
        kdcore.run(recipe, out=tmp_path / "run", plugins=[_BoomPlugin()])
    # while the error is still held, as the command line holds it until the process exits:
    # its frames hold the suspended epoch, whose workers had outlived the run (see above)
    assert info.value.__traceback__ is not None
    assert multiprocessing.active_children() == []


KILL_AT = """
import os, signal
import kdcore

@kdcore.hookimpl
def kdcore_batch_end(ctx, batch, losses):
    if ctx.epoch == 1 and ctx.stage_step == ctx.steps_per_epoch + 2:  # workers decoding ahead
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_a_streamed_run_killed_mid_epoch_resumes_at_once(folders, tmp_path):
    """SIGKILLed while its DataLoader workers decode ahead, the run left them holding its
    directory's lock (they are forks of it, and live on until torch's watchdog sees their
    parent gone): an immediate ``--resume`` was refused as in use. The workers now drop the
    lock as they start; the resume goes on at once and ends as the uninterrupted run."""
    import subprocess
    import sys

    from kdcore.rundir import RunDirLock
    from kdcore.testing import assert_same_history

    (tmp_path / "kill_at.py").write_text(KILL_AT)
    recipe = tmp_path / "stream.toml"
    recipe.write_text(RECIPE.format(root=folders, stream="true", workers=2, dropout=0.0)
                      .replace('device = "cpu"', 'device = "cpu"\ncheckpoint_interval_s = 0'))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    # no pipes: reading one to its end would wait for the workers, which hold it too
    with open(tmp_path / "stderr.txt", "w") as stderr:
        killed = subprocess.run([sys.executable, "-m", "kdcore", "run", str(recipe), "--out",
                                 str(tmp_path / "cut"), "-q", "--plugin", "kill_at"], env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    assert killed.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()
    with RunDirLock() as lock:  # at once: the workers may live on for seconds
        lock.acquire(tmp_path / "cut")
    resumed = CliRunner().invoke(main, ["run", str(recipe), "--out", str(tmp_path / "cut"),
                                        "--resume", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    straight = _run(tmp_path, "straight", root=folders, stream="true", workers=2, dropout=0.0)
    assert_same_history(tmp_path / "cut", straight)

@pytest.mark.slow
def test_a_streamed_run_resumes_on_copied_images_and_refuses_resized_ones(folders, tmp_path):
    """A streamed split keeps no digest of its images (it would read them all at every
    start), so an image re-made at another size, with its label and the count unchanged,
    was resumed on silently; each file's size is now compared. A copy of the images (new
    times, same bytes) resumes."""
    import shutil

    from kdcore.testing import InterruptAt, Interrupted

    root = tmp_path / "images"
    shutil.copytree(folders, root)
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(root=root, stream="true", workers=0, dropout=0.0))
    out = tmp_path / "run"
    with pytest.raises(Interrupted):
        kdcore.run(recipe, out=out, plugins=[InterruptAt(epoch=1, batch=0)])
    paths = image_folder(root=str(root / "train"), size=8, stream=True).train.paths
    with History(out) as h:
        sample_id = h.data("sample_id")
        assert h.data("file_size").tolist() == [os.path.getsize(paths[i]) for i in sample_id]
        assert "input_digest" not in h.data_names()
    shutil.rmtree(root)
    shutil.copytree(folders, root, copy_function=shutil.copyfile)  # the bytes, not the times
    trained = Path(paths[sample_id[5]])
    original = trained.read_bytes()
    Image.open(trained).resize((16, 16)).save(trained)  # another size, the same class
    resume = ["run", str(recipe), "--out", str(out), "--resume"]
    result = CliRunner().invoke(main, resume)
    assert result.exit_code == 2, result.output
    assert "the image files differ in size at 1 of 189 samples" in result.output, result.output
    assert "Traceback" not in result.output
    trained.write_bytes(original)
    result = CliRunner().invoke(main, [*resume, "--quiet"])
    assert result.exit_code == 0, result.output
    exported = tmp_path / "all.csv"
    assert CliRunner().invoke(main, ["inspect", str(out), "--column", "all", "--csv",
                                     str(exported)]).exit_code == 0
    assert "file_size" not in exported.read_text().splitlines()[0]


class _FeaturesAtSetup(kdcore.Component):
    """Reads the student's features over the training split as it is set up (a graph built
    from them, say); the model fails on the second batch, with more batches decoded ahead."""

    def setup(self, ctx):
        ctx.features("student")


class _FeaturesPlugin:
    @kdcore.hookimpl
    def kdcore_add_components(self):
        return {"features_at_setup": _FeaturesAtSetup}


def test_a_check_stopped_in_the_middle_of_a_streamed_pass_ends_its_workers(folders, tmp_path,
                                                                            monkeypatch):
    """`kdcore check` sets every component up as the run would (``dry_setup``), and one may
    stop in the middle of a streamed pass (out of memory, say). A pass held by a frame of the
    error outlives it, and its workers were ended at exit with a traceback (the run's case,
    above); ``dry_setup`` closes every pass as it stops, so this holds whether or not the code
    that streams keeps its pass in a variable (hand mutant in docs/mutation.md)."""
    from kdcore.engine import dry_setup
    from kdcore.plugins import PluginHost
    from kdcore.recipe import load_recipe
    from kdcore.runstate import Run

    calls = []
    call = Run._call

    def fails_on_the_second_batch(self, model, x):
        calls.append(len(x))
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return call(self, model, x)

    monkeypatch.setattr(Run, "_call", fails_on_the_second_batch)
    recipe = tmp_path / "features.toml"
    recipe.write_text(RECIPE.format(root=folders, stream="true", workers=2, dropout=0.0)
                      + '[[stages.components]]\nuse = "features_at_setup"\n')
    with pytest.raises(RuntimeError, match="^out of memory$") as info:
        dry_setup(load_recipe(recipe), PluginHost(extra=[_FeaturesPlugin()]), tmp_path / "r")
    assert calls[-2:] == [50, 50]  # (after the set-up's dry forward pass, if it made one)
    assert info.value.__traceback__ is not None
    assert multiprocessing.active_children() == []


def _given_labels_recipe(path: Path, dataset: str, params: str, *, batch_size: int,
                         workers: int) -> Path:
    """One epoch of CE on ``dataset``'s given labels (no noise added), written to ``path``."""
    path.write_text(f"""
[run]
name = "{path.stem}"
seed = 0
device = "cpu"
[data]
dataset = "{dataset}"
params = {{ {params} }}
batch_size = {batch_size}
workers = {workers}
[data.noise]
model = "none"
[models.student]
arch = "mlp"
params = {{ hidden = [8] }}
[[stages]]
name = "student"
epochs = 1
train = ["student"]
[[stages.components]]
use = "ce"
""")
    return path


def _clothing(root: Path, rng: np.random.Generator, *, train: int = 240, test: int = 60
              ) -> dict[str, int]:
    """Clothing1M's layout: images/<a>/<b>/<id>.jpg, the kv label lists, the key lists, the
    class names. The given labels of 30% of the training images differ from their colour's."""
    noisy, clean = {}, {}
    train_keys, test_keys = [], []
    for i in range(train + test):
        c = i % 3
        key = f"images/{i % 7}/{i % 5}/{1000 + i}.jpg"
        _image(root / key, COLOURS[c], rng)
        if i < train:
            noisy[key] = (c + 1) % 3 if rng.random() < 0.3 else c
            train_keys.append(key)
            if i % 4 == 0:
                clean[key] = c  # a few training images have a clean label too, as in the release
        else:
            clean[key] = c
            test_keys.append(key)
    (root / "noisy_label_kv.txt").write_text("".join(f"{k} {v}\n" for k, v in noisy.items()))
    (root / "clean_label_kv.txt").write_text("".join(f"{k} {v}\n" for k, v in clean.items()))
    (root / "noisy_train_key_list.txt").write_text("\n".join(train_keys) + "\n")
    (root / "clean_test_key_list.txt").write_text("\n".join(test_keys) + "\n")
    names = ["T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
             "Jacket", "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear"]
    (root / "category_names_eng.txt").write_text("\n".join(names) + "\n")
    return noisy


def test_clothing1m_layout_reads_the_given_and_the_clean_labels(tmp_path):
    noisy = _clothing(tmp_path / "c1m", np.random.default_rng(1))
    splits = clothing1m(root=str(tmp_path / "c1m"), size=8)
    train, test = splits.train, splits.test
    assert isinstance(train, FileDataset) and len(train) == 240 and len(test) == 60
    assert train.num_classes == 14 and train.class_names[0] == "T-Shirt"
    keys = [p.split("c1m/", 1)[1] for p in train.paths]
    assert train.y.tolist() == [noisy[k] for k in keys]  # the given labels
    assert test.y.tolist() == [(240 + i) % 3 for i in range(60)]  # the clean ones
    assert train.read(torch.tensor([0, 1])).shape == (2, 3, 8, 8)
    in_memory = clothing1m(root=str(tmp_path / "c1m"), size=8, stream=False)
    assert torch.equal(in_memory.train.x, train.read(slice(None)))


def test_clothing1m_errors_are_one_line(tmp_path):
    root = tmp_path / "c1m"
    _clothing(root, np.random.default_rng(2), train=20, test=5)
    lines = (root / "noisy_train_key_list.txt").read_text() + "images/9/9/missing.jpg\n"
    (root / "noisy_train_key_list.txt").write_text(lines)
    with pytest.raises(KdcoreError, match=r"1 images of .* have no label \(first: images/9/9/"):
        clothing1m(root=str(root), size=8)
    (root / "noisy_label_kv.txt").write_text("images/0/0/1000.jpg three\n")
    with pytest.raises(KdcoreError, match="line 1 .* an integer label"):
        clothing1m(root=str(root), size=8)
    with pytest.raises(KdcoreError, match="does not exist"):
        clothing1m(root=str(tmp_path / "nowhere"), size=8)


def test_a_clothing1m_run_streams_with_workers(tmp_path):
    _clothing(tmp_path / "c1m", np.random.default_rng(3))
    recipe = _given_labels_recipe(tmp_path / "c1m.toml", "clothing1m",
                                  f'root = "{tmp_path / "c1m"}", size = 8', batch_size=64,
                                  workers=2)
    res = CliRunner().invoke(main, ["check", str(recipe)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["run", str(recipe), "--out", str(tmp_path / "run"),
                                    "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with History(tmp_path / "run") as h:
        assert h.column("target", 0).shape[1] == 14
        n = len(h.data("sample_id"))
        assert n == 240 - round(240 * 0.1)  # the validation split is carved from the list


def test_a_listed_image_that_is_not_a_file_is_refused_by_check(tmp_path, monkeypatch):
    """Before, a streamed image outside the statistics' sample, or in the test list, passed
    ``kdcore check`` and stopped the run at its first batch or evaluation."""
    from kdcore.data.loaders import folder

    from .cli_helpers import invoke, one_line_error

    # the statistics read images 0, 5, 10 and 15 of the 20 (a million, and 2,000 of them)
    monkeypatch.setattr(folder, "sample_rows", lambda n: torch.arange(0, n, 5))
    rng = np.random.default_rng(5)
    for i in range(24):
        _image(tmp_path / "pics" / f"{i}.png", COLOURS[i % 3], rng)
    (tmp_path / "train.txt").write_text("".join(f"pics/{i}.png {i % 3}\n" for i in range(20)))
    (tmp_path / "test.txt").write_text("".join(f"pics/{i}.png {i % 3}\n" for i in range(20, 24)))
    recipe = _given_labels_recipe(
        tmp_path / "list.toml", "image_list",
        f'root = "{tmp_path}", train_list = "train.txt", test_list = "test.txt", size = 6',
        batch_size=8, workers=0)
    assert invoke("check", recipe).exit_code == 0
    (tmp_path / "pics" / "22.png").unlink()  # a test image
    one_line_error(invoke("check", recipe), "1 of the 4 listed images are not files",
                   f"(first: {tmp_path / 'pics' / '22.png'})")
    _image(tmp_path / "pics" / "22.png", COLOURS[1], rng)
    (tmp_path / "pics" / "7.png").unlink()  # a training image the sample does not read
    (tmp_path / "pics" / "9.png").unlink()
    (tmp_path / "pics" / "9.png").mkdir()  # a folder where an image should be
    one_line_error(invoke("check", recipe), "2 of the 20 listed images are not files",
                   f"(first: {tmp_path / 'pics' / '7.png'})")


def test_image_list_reads_paths_relative_to_its_root(tmp_path):
    rng = np.random.default_rng(4)
    for i in range(6):
        _image(tmp_path / "pics" / f"{i}.png", COLOURS[i % 3], rng)
    (tmp_path / "train.txt").write_text("".join(f"pics/{i}.png {i % 3}\n" for i in range(4)))
    (tmp_path / "test.txt").write_text("pics/4.png 1\npics/5.png 2\n")
    (tmp_path / "names.txt").write_text("red\ngreen\nblue\n")
    splits = image_list(root=str(tmp_path), train_list="train.txt", test_list="test.txt",
                        class_names="names.txt", size=6)
    assert splits.train.y.tolist() == [0, 1, 2, 0] and splits.test.y.tolist() == [1, 2]
    assert splits.train.class_names == ("red", "green", "blue")
    assert splits.train.read(slice(None)).shape == (4, 3, 6, 6)
    (tmp_path / "names.txt").write_text("red\n")
    with pytest.raises(KdcoreError, match="1 class names for labels up to 2"):
        image_list(root=str(tmp_path), train_list="train.txt", class_names="names.txt")


def test_a_path_listed_with_two_labels_is_refused_and_a_repeat_counts_once(tmp_path):
    """Before, the last of two labels was kept without a word."""
    rng = np.random.default_rng(6)
    for i in range(3):
        _image(tmp_path / "pics" / f"{i}.png", COLOURS[i], rng)
    (tmp_path / "train.txt").write_text("pics/0.png 0\npics/1.png 1\npics/0.png 0\n"
                                        "pics/2.png 2\n")
    splits = image_list(root=str(tmp_path), train_list="train.txt", size=4)
    assert splits.train.y.tolist() == [0, 1, 2]
    (tmp_path / "train.txt").write_text("pics/0.png 0\npics/1.png 1\npics/1.png 1\n"
                                        "pics/2.png 2\npics/1.png 2\n")
    with pytest.raises(KdcoreError) as err:
        image_list(root=str(tmp_path), train_list="train.txt", size=4)
    assert str(err.value) == (f"image_list: {tmp_path / 'train.txt'} lists pics/1.png with "
                              "label 1 on line 2 and with label 2 on line 5")


def test_instance_dependent_noise_on_a_stream_says_why_not(folders, tmp_path):
    recipe = tmp_path / "idn.toml"
    recipe.write_text(RECIPE.format(root=folders, stream="true", workers=0, dropout=0.0).replace(
        'model = "symmetric"', 'model = "instance_dependent"'))
    res = CliRunner().invoke(main, ["check", str(recipe)])
    assert res.exit_code == 2
    assert "streaming dataset keeps only file names" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("label, error", [
    ("²", "line 1 is 'pics/0.png ²'; every line must be an image path and an integer label"),
    ("-1", "line 1 is 'pics/0.png -1'; every line must be an image path and an integer label"),
    (str(2**20), f"line 1 has label {2**20}; labels are class indices 0 .. C-1, at most "
                 f"{2**20 - 1}"),
    ("99999999999", "line 1 has label 99999999999; labels are class indices 0 .. C-1, at "
                    f"most {2**20 - 1}"),
    ("9" * 5000, f"line 1 has label {'9' * 40}; labels are class indices 0 .. C-1, at "  # int()
                 f"most {2**20 - 1}"),  # refuses 4,301 digits and more; the message cuts at 40
    ("1" + "0" * 18, f"line 1 has label 1{'0' * 18}; labels are class indices 0 .. C-1, at "
                     f"most {2**20 - 1}"),
])
def test_a_label_list_with_a_label_that_is_no_class_index_is_refused(tmp_path, label, error):
    """Before the loader builds a class name per index (a label of 10**11 would hang it)."""
    (tmp_path / "train.txt").write_text(f"pics/0.png {label}\n")
    with pytest.raises(KdcoreError) as info:
        image_list(root=str(tmp_path), train_list="train.txt")
    assert str(info.value) == f"image_list: {tmp_path / 'train.txt'} {error}"


def test_labels_written_in_other_decimal_digits_are_read(tmp_path):
    from kdcore.data.loaders.lists import read_label_list

    (tmp_path / "l.txt").write_text("a.png \u0663\nb.png 0\nc.png " + "0" * 30 + "7\n")
    # ARABIC-INDIC DIGIT THREE; leading zeros, however many, are a number's own
    assert read_label_list(tmp_path / "l.txt", "image_list") == {"a.png": 3, "b.png": 0,
                                                                  "c.png": 7}


# every rule and message of the list loaders, one by one (the loaders' mutation run, session 16)


def test_clothing1m_messages_name_the_loader_and_the_file(tmp_path):
    root = tmp_path / "c1m"
    _clothing(root, np.random.default_rng(7), train=8, test=4)
    kv, clean_kv = root / "noisy_label_kv.txt", root / "clean_label_kv.txt"
    train_list, test_list = root / "noisy_train_key_list.txt", root / "clean_test_key_list.txt"
    names = root / "category_names_eng.txt"

    def said(**kwargs):
        with pytest.raises(KdcoreError) as err:
            clothing1m(**{"root": str(root), "size": 4, **kwargs})
        return str(err.value)

    assert said(root=None) == ("clothing1m: 'root' is missing; it must name Clothing1M's "
                               "images and lists")
    assert said(size=0) == "clothing1m: 'size' must be positive, got 0"
    keep = {p: p.read_text() for p in (kv, clean_kv, train_list, test_list, names)}
    for path in (kv, clean_kv, train_list, test_list):
        path.unlink()
        assert said() == f"clothing1m: {path} does not exist"
        path.write_text(keep[path])
    clean_kv.write_text("images/0/0/1000.jpg 1 x\n")
    assert said() == (f"clothing1m: {clean_kv} line 1 is 'images/0/0/1000.jpg 1 x'; every line "
                      "must be an image path and an integer label")
    clean_kv.write_text(keep[clean_kv])
    test_list.write_text(keep[test_list] + "images/9/9/nolabel.jpg\n")
    assert said() == (f"clothing1m: 1 images of {test_list} have no label (first: "
                      "images/9/9/nolabel.jpg)")
    test_list.write_text(keep[test_list])
    train_list.write_text(keep[train_list] + "images/9/9/nolabel.jpg\n")
    assert said() == (f"clothing1m: 1 images of {train_list} have no label (first: "
                      "images/9/9/nolabel.jpg)")
    train_list.write_text("\n")
    assert said() == f"clothing1m: {train_list} lists no images"
    train_list.write_text(keep[train_list])
    names.write_text("a\nb\n")
    assert said() == "clothing1m: 2 class names for labels up to 13"


def test_clothing1m_classes_sizes_and_test_split(tmp_path):
    root = tmp_path / "c1m"
    _clothing(root, np.random.default_rng(8), train=8, test=4)
    (root / "category_names_eng.txt").unlink()  # optional: the classes are then numbered
    splits = clothing1m(root=str(root))
    train, test = splits.train, splits.test
    assert train.size == 224 and train.num_classes == 14
    assert train.class_names == tuple(str(c) for c in range(14))
    assert isinstance(test, FileDataset) and (test.mean, test.std) == (train.mean, train.std)
    in_memory = clothing1m(root=str(root), size=4, stream=False)
    assert isinstance(in_memory.test, ArrayDataset)
    assert in_memory.test.mean == in_memory.train.mean
    # a clean test label above the given ones widens the label space
    clean_kv = root / "clean_label_kv.txt"
    first_test = (root / "clean_test_key_list.txt").read_text().split()[0]
    lines = [f"{first_test} 15" if line.split()[0] == first_test else line
             for line in clean_kv.read_text().splitlines()]
    clean_kv.write_text("\n".join(lines) + "\n")
    splits = clothing1m(root=str(root), size=4)
    assert splits.train.num_classes == 16 and splits.test.y.max() == 15


def test_image_list_messages_defaults_and_test_split(tmp_path):
    rng = np.random.default_rng(9)
    for i in range(5):
        _image(tmp_path / "my pics" / f"{i}.png", COLOURS[i % 3], rng)
    train = tmp_path / "train.txt"
    train.write_text("".join(f"my pics/{i}.png {i % 3}\n" for i in range(4)))

    def said(**kwargs):
        with pytest.raises(KdcoreError) as err:
            image_list(**{"root": str(tmp_path), "train_list": "train.txt", **kwargs})
        return str(err.value)

    assert said(root=None) == "image_list: 'root' is missing; it must name the listed images"
    assert said(size=0) == "image_list: 'size' must be positive, got 0"
    assert said(train_list="none.txt") == f"image_list: {tmp_path / 'none.txt'} does not exist"
    assert said(class_names="none.txt") == f"image_list: {tmp_path / 'none.txt'} does not exist"
    (tmp_path / "test.txt").write_text("my pics/4.png two\n")
    assert said(test_list="test.txt") == (
        f"image_list: {tmp_path / 'test.txt'} line 1 is 'my pics/4.png two'; every line must be "
        "an image path and an integer label")
    (tmp_path / "test.txt").write_text("my pics/4.png 1\n")
    (tmp_path / "names.txt").write_text("red\n")
    assert said(class_names="names.txt") == "image_list: 1 class names for labels up to 2"
    (tmp_path / "empty.txt").write_text(" \n")
    assert said(train_list="empty.txt") == f"image_list: {tmp_path / 'empty.txt'} lists no images"
    # paths with spaces; the default size; classes numbered; no test list, no test split
    splits = image_list(root=str(tmp_path), train_list="train.txt")
    assert splits.test is None and splits.train.size == 224
    assert splits.train.class_names == ("0", "1", "2") and splits.train.y.tolist() == [0, 1, 2, 0]
    assert splits.train.paths[0] == str(tmp_path / "my pics" / "0.png")
    splits = image_list(root=str(tmp_path), train_list="train.txt", test_list="test.txt",
                        size=4)
    assert isinstance(splits.test, FileDataset) and splits.test.y.tolist() == [1]
    assert (splits.test.mean, splits.test.std) == (splits.train.mean, splits.train.std)


def test_label_lines_up_to_the_largest_label_and_their_messages(tmp_path):
    from kdcore.data.loaders.lists import MAX_LABEL, read_label_list

    path = tmp_path / "labels.txt"
    path.write_text(f"a b/c.png {MAX_LABEL}\nd.png 0\n")
    assert read_label_list(path, "x") == {"a b/c.png": MAX_LABEL, "d.png": 0}
    path.write_text(f"d.png 0\ne.png {MAX_LABEL + 1}\n")
    with pytest.raises(KdcoreError) as err:
        read_label_list(path, "x")
    assert str(err.value) == (f"x: {path} line 2 has label {MAX_LABEL + 1}; labels are class "
                              f"indices 0 .. C-1, at most {MAX_LABEL}")
    line = "p" * 100 + ".png one"
    path.write_text(line + "\n")
    with pytest.raises(KdcoreError) as err:
        read_label_list(path, "x")
    assert str(err.value) == (f"x: {path} line 1 is '{line[:80]}'; every line must be an image "
                              "path and an integer label")
    with pytest.raises(KdcoreError) as err:
        read_label_list(tmp_path, "x")
    assert str(err.value) == f"x: cannot read {tmp_path}: [Errno 21] Is a directory: '{tmp_path}'"
    path.write_bytes(b"\xff.png 1\n")
    with pytest.raises(KdcoreError) as err:
        read_label_list(path, "x")
    assert str(err.value).startswith(f"x: cannot read {path}: 'utf-8' codec can't decode byte "
                                     "0xff in position 0")
    # a byte-order mark (Notepad's) is not taken into the first path
    path.write_bytes(b"\xef\xbb\xbfa.png 1\nb.png 0\n")
    assert read_label_list(path, "x") == {"a.png": 1, "b.png": 0}


def test_clothing1m_optional_parts_and_an_unreadable_names_file(tmp_path, monkeypatch):
    import io

    root = tmp_path / "c1m"
    _clothing(root, np.random.default_rng(10), train=8, test=4)
    (root / "clean_test_key_list.txt").write_text("\n")  # no test list: no test split
    assert clothing1m(root=str(root), size=4).test is None
    names = root / "category_names_eng.txt"
    names.write_bytes(b"T-Shirt\n\xff\n")
    with pytest.raises(KdcoreError) as err:
        clothing1m(root=str(root), size=4)
    assert str(err.value).startswith(f"clothing1m: cannot read {names}: 'utf-8' codec can't "
                                     "decode byte 0xff")
    # the lists are UTF-8 whatever the locale (an ASCII one without Python's UTF-8 mode)
    names.write_text("T-Shirt\nChemise\nPull\nCardigan\nSweat\nSweat à capuche\nCoupe-vent\n"
                     "Veste\nDoudoune\nCostume\nChâle\nRobe\nGilet\nSous-vêtements\n",
                     encoding="utf-8")
    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: encoding or "ascii")
    assert clothing1m(root=str(root), size=4).train.class_names[5] == "Sweat à capuche"


def test_reading_no_rows_gives_an_empty_batch_of_the_images_shape():
    ds = FileDataset(paths=("a.png",), y=torch.zeros(1, dtype=torch.long), num_classes=2, size=5)
    for rows in (torch.zeros(0, dtype=torch.long), slice(1, 1)):
        empty = ds.read(rows)
        assert empty.shape == (0, 3, 5, 5) and empty.dtype == torch.uint8
