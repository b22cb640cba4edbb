"""What a checkpoint keeps and what reading one refuses, rule by rule: the names of the keys a
changed recipe differs in, the whole text of every refusal, the temporary file `--overwrite`
knows, when a checkpoint is due, and the state of plugins and of a stage's components
(their own state and generator) carried across a resume."""

from __future__ import annotations

import os
import re
import threading
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdcore
from kdcore import PluginHost, checkpointing, hookimpl, load_recipe, run_recipe
from kdcore import checkpoint as ckpt
from kdcore.checkpointing import Checkpointer, differing_keys
from kdcore.cli_files import RUN_FILES
from kdcore.errors import KdcoreError
from kdcore.testing import InterruptAt, Interrupted, assert_same_history
from tests.conftest import TINY_RECIPE

# -- the keys a changed recipe differs in ----------------------------------------------------


def test_differing_keys_names_each_path_once_in_order():
    saved = {"run": {"seed": 0, "name": "a"}, "stages": [{"epochs": 2}, {"epochs": 3, "w": 1}],
             "hidden": [16], 2: "x", "gone": 1, "same": [1, [2]], "t": 1}
    now = {"run": {"seed": 1, "name": "a"}, "stages": [{"epochs": 4}, {"epochs": 3, "w": 1.0}],
           "hidden": [16, 16], 2: "x", "new": 1, "same": [1, [2]], "t": True}
    assert differing_keys(saved, now) == [
        "gone", "hidden", "new", "run.seed", "stages[0].epochs", "stages[1].w", "t"]
    assert differing_keys({"a": {"b": 1}}, {"a": 5}) == ["a"]  # a table replaced by a value
    assert differing_keys(1, 2) == ["(root)"] and differing_keys([1], [1]) == []
    # a tensor never equals anything: a fingerprint holds none, so one is a difference
    assert differing_keys({"w": torch.zeros(1)}, {"w": torch.zeros(1)}) == ["w"]
    assert differing_keys({"w": 0}, {"w": torch.zeros(1)}) == ["w"]


# -- reading a checkpoint --------------------------------------------------------------------

def _state(**changes):
    state = {"format": checkpointing.FORMAT,
             "position": {"stage": 0, "epoch": 1, "history_rows": 1, "step": 7},
             "fingerprint": {"recipe": {"run": {}}}, "models": {}, "optimizers": {},
             "components": {}, "generators": {}, "plugins": {}, "ledger": {}, "rng": {},
             "best": {}, "carried": {}, "summary": {}}
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


@pytest.mark.parametrize(("changes", "what"), [
    ({"models": None, "ledger": None}, "lacks models, ledger"),
    ({"models": None, "position": "x"}, "lacks models"),
    ({"position": [0, 1, 1, 7]}, "has no valid position"),
    ({"position": {"stage": 0, "epoch": 1, "history_rows": 1}}, "has no valid position"),
    ({"position": {"stage": 0, "epoch": -1, "history_rows": 1, "step": 7}},
     "has no valid position"),
    ({"position": {"stage": 0, "epoch": 1.0, "history_rows": 1, "step": 7}},
     "has no valid position"),
    ({"models": [], "carried": "x"}, "is damaged (wrong type of models, carried)"),
    ({"fingerprint": {"recipe": "a recipe"}}, "is damaged (wrong type of fingerprint)"),
    ({"fingerprint": {}}, "is damaged (wrong type of fingerprint)"),
])
def test_a_damaged_checkpoint_is_named_whole(tmp_path, changes, what):
    path = tmp_path / "checkpoint.pt"
    ckpt.save(_state(**changes), path)
    with pytest.raises(KdcoreError) as info:
        checkpointing.read(path)
    assert str(info.value) == f"the checkpoint {path} {what}; start again with --overwrite"
    ckpt.save(_state(), path)
    assert checkpointing.read(path)["position"]["step"] == 7


def test_a_truncated_checkpoint_is_one_line_naming_overwrite(tmp_path):
    """A checkpoint cut short (copied while written, a disk that filled): torch's zip reader
    adds a paragraph of guesses after its reason; the refusal is the reason and the way out."""
    path = tmp_path / "checkpoint.pt"
    ckpt.save(_state(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(KdcoreError) as info:
        checkpointing.read(path)
    message = str(info.value)
    assert message.startswith(f"cannot read checkpoint {path}: ")
    assert message.endswith("; start again with --overwrite") and ".;" not in message
    assert "\n" not in message and "miniz" not in message and "likelihood" not in message


def _weights_state() -> dict:
    weights = {"w": torch.full((64,), 1.5), "b": torch.arange(8.0)}
    return _state(models={"student": weights}, position={"stage": 0, "epoch": 3,
                                                          "history_rows": 3, "step": 70})


def test_a_checkpoint_with_a_damaged_byte_in_its_weights_is_refused_not_loaded(tmp_path):
    """torch.load does not check its archive's CRC-32s: the flipped bit loaded as another
    weight, and the resume went on from it. Now the damage is named, with the way out; and a
    teacher's weights file (``models.<role>.checkpoint``) is read the same way."""
    path = tmp_path / "checkpoint.pt"
    ckpt.save(_weights_state(), path)
    raw = bytearray(path.read_bytes())
    at = raw.index(np.full(64, 1.5, dtype="<f4").tobytes())
    raw[at + 100] ^= 0x04
    path.write_bytes(bytes(raw))
    assert torch.load(path, weights_only=True)["models"]["student"]["w"][25] != 1.5
    with pytest.raises(KdcoreError) as info:
        checkpointing.read(path)
    assert re.fullmatch(
        rf"cannot read checkpoint {re.escape(str(path))}: the file is damaged \(its record "
        r"\S+/data/\d+ fails its CRC-32 check\); start again with --overwrite",
        str(info.value)), str(info.value)
    with pytest.raises(KdcoreError, match="fails its CRC-32 check"):
        ckpt.load_weights(path, "student")


@pytest.mark.parametrize("seed", range(4))
def test_a_checkpoint_damaged_anywhere_is_refused_or_reads_exactly(tmp_path, seed):
    """A flipped bit anywhere in the file (the records, their headers, the archive's
    directory): reading it either fails with one line, or gives every value as saved (a bit
    of the records' alignment padding, which nothing reads)."""
    import random

    path = tmp_path / "checkpoint.pt"
    ckpt.save(_weights_state(), path)
    clean = path.read_bytes()
    rng = random.Random(seed)
    refused = 0
    for _ in range(40):
        raw = bytearray(clean)
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(raw))
        try:
            state = checkpointing.read(path)
        except KdcoreError as exc:
            assert "\n" not in str(exc) and str(exc).endswith("start again with --overwrite")
            refused += 1
            continue
        expected = _weights_state()
        assert state.keys() == expected.keys() and state["position"] == expected["position"]
        for name, tensor in expected["models"]["student"].items():
            assert torch.equal(state["models"]["student"][name], tensor)
    assert refused > 20


def test_missing_files_and_files_that_hold_no_weights_are_named_whole(tmp_path):
    missing = tmp_path / "none.pt"
    with pytest.raises(KdcoreError) as info:
        ckpt.load(missing)
    assert str(info.value) == f"checkpoint not found: {missing}"
    with pytest.raises(KdcoreError) as info:
        ckpt.load_weights(missing, "teacher")
    assert str(info.value) == f"checkpoint for model 'teacher' not found: {missing}"
    for odd in (tmp_path, "/dev/zero"):  # a directory; a file that never ends
        with pytest.raises(KdcoreError) as info:
            ckpt.load_weights(odd, "teacher")
        assert str(info.value) == f"checkpoint for model 'teacher' is not a regular file: {odd}"
    listed = tmp_path / "list.pt"
    ckpt.save([torch.zeros(1)], listed)
    with pytest.raises(KdcoreError) as info:
        ckpt.load_weights(listed, "teacher")
    assert str(info.value) == (f"{listed} holds a list, not the weights of a model (a state "
                               "dict, a kdcore weights file or a kdcore checkpoint)")
    run = tmp_path / "run.pt"
    ckpt.save({"models": {"student": {}, "peer": {}}}, run)
    with pytest.raises(KdcoreError) as info:
        ckpt.load_weights(run, "teacher")
    assert str(info.value) == f"{run} holds no model 'teacher'; it has student, peer"


@pytest.mark.parametrize("key", ["model", "state_dict"])
def test_weights_wrapped_as_other_tools_save_them_are_unwrapped(tmp_path, key):
    weights = {"0.weight": torch.ones(2, 3)}
    ckpt.save({key: weights, "epoch": 9}, tmp_path / "w.pt")
    assert ckpt.load_weights(tmp_path / "w.pt", "teacher").keys() == weights.keys()


def test_a_file_of_another_pickle_protocol_loads_without_a_warning(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pt", pickle_protocol=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(ckpt.load(tmp_path / "w.pt")["w"], torch.ones(2))


def test_an_environment_asking_torch_for_unsafe_loads_does_not_reach_ours(tmp_path,
                                                                           monkeypatch):
    """``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` turns torch.load's default to unpickling code;
    kdcore asks for weights only explicitly, so a file that would execute code is still
    refused."""

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(KdcoreError, match="cannot read checkpoint"):
        ckpt.load(tmp_path / "evil.pt")


# -- writing one -----------------------------------------------------------------------------

def test_a_checkpoint_is_written_under_the_temporary_name_overwrite_clears(tmp_path,
                                                                           monkeypatch):
    """A kill during the write leaves ``checkpoint.pt.tmp``, which ``--overwrite`` knows as a
    run's file; the folder is made first, however deep."""
    path = tmp_path / "a" / "b" / ckpt.CHECKPOINT
    seen = []
    real = torch.save
    monkeypatch.setattr(ckpt.torch, "save", lambda obj, f: (seen.append(f), real(obj, f)))
    ckpt.save({"x": 1}, path)
    assert [p.name for p in seen] == ["checkpoint.pt.tmp"] and "checkpoint.pt.tmp" in RUN_FILES
    assert ckpt.load(path) == {"x": 1} and not seen[0].exists()


def test_a_save_keeps_the_file_it_replaces_as_the_previous_one(tmp_path, monkeypatch):
    """The run's checkpoint before its last stays, a hard link renamed into place (no copy);
    without hard links, the previous file stays the older one it was."""
    path, previous = tmp_path / ckpt.CHECKPOINT, tmp_path / ckpt.PREVIOUS
    ckpt.save({"k": 0}, path, previous)
    assert not previous.exists()  # nothing before the first
    ckpt.save({"k": 1}, path, previous)
    ckpt.save({"k": 2}, path, previous)
    assert (ckpt.load(path), ckpt.load(previous)) == ({"k": 2}, {"k": 1})
    assert os.stat(previous).st_nlink == 1 and sorted(p.name for p in tmp_path.iterdir()) == (
        sorted([ckpt.CHECKPOINT, ckpt.PREVIOUS]))
    # a link left by a save killed before its rename is replaced, not left beside
    (tmp_path / f"{ckpt.PREVIOUS}.tmp").write_bytes(b"left by a kill")
    ckpt.save({"k": 2}, path, previous)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ckpt.CHECKPOINT, ckpt.PREVIOUS])
    assert f"{ckpt.PREVIOUS}.tmp" in RUN_FILES
    monkeypatch.setattr(ckpt.os, "link", lambda *a: (_ for _ in ()).throw(OSError(1, "no")))
    ckpt.save({"k": 3}, path, previous)
    assert (ckpt.load(path), ckpt.load(previous)) == ({"k": 3}, {"k": 2})
    assert {p.name for p in tmp_path.iterdir()} <= RUN_FILES


def test_the_disks_refusals_are_one_line_with_its_reason(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = blocker / "sub" / "c.pt"
    with pytest.raises(KdcoreError) as info:
        ckpt.save({"x": 1}, path)
    assert str(info.value) == (f"cannot write {path}: Not a directory; the files written "
                               "before it are as they were")
    taken = tmp_path / "c.pt"
    taken.mkdir()  # the name is a folder: the rename fails, the folder's disk is known
    with pytest.raises(KdcoreError) as info:
        ckpt.save({"x": 1}, taken)
    assert re.fullmatch(rf"cannot write {re.escape(str(taken))}: Is a directory \(\d+ bytes "
                        r"free on its file system\); the files written before it are as they "
                        r"were", str(info.value)), str(info.value)
    assert not (tmp_path / "c.pt.tmp").exists()


@pytest.mark.parametrize(("message", "disk"), [
    ("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0", True),
    ("basic_ios::clear: iostream error", True),
    ("file write failed", True),
    ("CUDA error: an illegal memory access was encountered", False),
])
def test_only_torchs_write_errors_are_the_disks(tmp_path, message, disk):
    def write(tmp):
        raise RuntimeError(message)

    if disk:
        with pytest.raises(KdcoreError, match="the write failed"):
            ckpt._replace(tmp_path / "c.pt", write)
    else:
        with pytest.raises(RuntimeError, match="illegal memory access"):
            ckpt._replace(tmp_path / "c.pt", write)


def test_background_writes_follow_one_another_on_a_named_thread_the_exit_waits_for(
        tmp_path, monkeypatch):
    """By default a write goes to its own thread, named so that a stack dump of a hung write
    says what it is, and not a daemon: the interpreter finishes the write before it exits."""
    threads = []
    real = ckpt.save
    monkeypatch.setattr(ckpt, "save", lambda state, path, previous: (
        threads.append(threading.current_thread()), real(state, path, previous)))
    saver = ckpt.BackgroundSaver()
    for k in range(3):
        saver.save({"k": torch.tensor(k)}, tmp_path / f"{k}.pt")
        saver.wait()
    saver.wait()
    assert [int(ckpt.load(tmp_path / f"{k}.pt")["k"]) for k in range(3)] == [0, 1, 2]
    assert [(t.name, t.daemon) for t in threads] == [("kdcore-checkpoint", False)] * 3


def test_a_checkpoint_written_on_a_gpu_loads_on_a_machine_without_one(tmp_path, monkeypatch):
    """Tensors saved from CUDA carry their device; a CPU-only machine resuming the run (or
    loading it as a teacher) reads them onto the CPU."""
    with monkeypatch.context() as m:  # what torch.save records for a CUDA tensor's storage
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"w": torch.arange(3.0)}, tmp_path / "gpu.pt")
    assert b"cuda:0" in (tmp_path / "gpu.pt").read_bytes()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "gpu.pt", weights_only=True)
    loaded = ckpt.load(tmp_path / "gpu.pt")["w"]
    assert loaded.device.type == "cpu" and torch.equal(loaded, torch.arange(3.0))


def test_random_states_restore_only_as_many_generators_as_were_saved():
    gens = [torch.Generator().manual_seed(k) for k in range(3)]
    state = ckpt.rng_state(*gens)
    drawn = [torch.rand(2, generator=g) for g in gens]
    ckpt.set_rng_state(state, *gens)
    assert all(torch.equal(torch.rand(2, generator=g), d) for g, d in zip(gens, drawn))
    with pytest.raises(ValueError):
        ckpt.set_rng_state(state, *gens[:2])


def test_a_checkpoint_is_due_after_the_first_epoch_then_every_interval(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(checkpointing.time, "monotonic", lambda: clock[0])
    c = Checkpointer(tmp_path, {}, 3600.0, False)
    assert c.due(first_epoch=True) and not c.due()
    clock[0] += 3599.5
    assert not c.due()
    clock[0] += 0.5
    assert c.due()


def test_a_checkpointer_writes_unless_told_not_to(tmp_path):
    model = torch.nn.Linear(2, 1)
    Checkpointer(tmp_path / "a", {}, 0.0, False).save_weights("student", model)
    Checkpointer(tmp_path / "b", {}, 0.0, False, writes=False).save_weights("student", model)
    assert (tmp_path / "a" / "models" / "student.pt").is_file()
    assert not (tmp_path / "b").exists()


# -- state carried across a resume -----------------------------------------------------------

class NoisyCE(kdcore.Component):
    """CE times a factor that depends on the batches this instance has seen (its state) and
    on a draw from its own generator: a resume that restored neither would train otherwise."""

    description = "test component with state and draws"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = 0

    def transfer(self, ctx, batch):
        self.batches += 1
        factor = 1.0 + 0.01 * self.batches + 0.1 * float(torch.rand(1, generator=ctx.generator))
        return F.cross_entropy(batch.out("student").logits, batch.noisy_label,
                               reduction="none") * factor

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state):
        self.batches = int(state["batches"])


class Counter:
    """A plugin with plugin-wide state: the batches it saw, checkpointed under its name."""

    def __init__(self):
        self.__name__ = "counter"  # the name its state is stored under
        self.batches, self.restored, self.resumed = 0, None, None

    @hookimpl
    def kdcore_run_start(self, ctx):
        self.resumed = ctx.resumed

    @hookimpl
    def kdcore_add_components(self):
        return {"noisy_ce": NoisyCE}

    @hookimpl
    def kdcore_batch_end(self, ctx, batch, losses):
        self.batches += 1

    @hookimpl
    def kdcore_checkpoint_state(self, ctx):
        assert ctx.recipe.run.name == "tiny"
        return {"batches": self.batches}

    @hookimpl
    def kdcore_load_checkpoint_state(self, ctx, states):
        assert ctx.recipe.run.name == "tiny"
        self.restored = dict(states)
        self.batches = states["counter"]["batches"]


def _recipe(tmp_path):
    text = TINY_RECIPE.format(seed=0).replace('use = "ce"\nweight = 0.5',
                                              'use = "noisy_ce"\nweight = 0.5')
    text = text.replace('device = "cpu"', 'device = "cpu"\ncheckpoint_interval_s = 0')
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return load_recipe(path)


@pytest.mark.slow
def test_a_resume_mid_stage_restores_plugin_state_and_each_components_state_and_draws(
        tmp_path):
    recipe = _recipe(tmp_path)
    straight = Counter()
    run_recipe(recipe, out=str(tmp_path / "straight"), host=PluginHost(extra=[straight]))
    with pytest.raises(Interrupted):
        run_recipe(recipe, out=str(tmp_path / "run"), host=PluginHost(
            extra=[Counter(), InterruptAt(epoch=1, batch=2, stage="student")]))
    state = ckpt.load(tmp_path / "run" / ckpt.CHECKPOINT)
    assert state["position"]["stage"] == 1 and state["position"]["epoch"] == 1
    # 400 training samples in batches of 64: seven a stage epoch, two teacher epochs before
    assert state["components"]["noisy_ce"] == {"batches": 7}
    assert state["plugins"] == {"counter": {"batches": 21}}
    again = Counter()
    run_recipe(recipe, out=str(tmp_path / "run"), resume=True,
               host=PluginHost(extra=[again]))
    assert again.restored == {"counter": {"batches": 21}}
    assert again.resumed is True and straight.resumed is False
    assert again.batches == straight.batches == 28
    assert_same_history(tmp_path / "run", tmp_path / "straight")


# -- what a checkpoint can hold ---------------------------------------------------------------

class _Own:
    """A plugin's own class: torch pickles it, and ``weights_only`` refuses it on the way back."""


def _reads_back_in_torch(value):
    """The oracle: a real round trip through a file, as a resume reads a checkpoint."""
    import io

    buffer = io.BytesIO()
    try:
        torch.save({"x": value}, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception:
        return False
    return True


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")  # the oracle's read
@pytest.mark.parametrize("value", [
    np.float64(0.5), np.zeros(3), np.int64(2), _Own(), len, lambda: 1, torch.Generator(),
    (i for i in ()), frozenset({1}), slice(1, 2), range(3), {1, 2}, torch.Size([2]),
    torch.float16, torch.device("cpu"), 1j, 10**40, float("nan"), b"ab", None, True,
    torch.nn.Parameter(torch.zeros(1)), torch.zeros(2).to_sparse(), "text",
    {"nested": [1, (2.0, {"deeper": np.float32(1)})]}, {np.int64(1): 2}, {(1, 2): 3},
    type("Str", (str,), {})("a")], ids=lambda value: type(value).__name__)
def test_unloadable_agrees_with_what_torch_reads_back(value):
    assert (ckpt.unloadable({"x": value}) is None) is _reads_back_in_torch(value)


def test_unloadable_names_the_first_place_and_type_that_would_not_read_back():
    state = {"a": [1, 2, {"b": (3, np.float32(1.5))}], "c": torch.zeros(2)}
    assert ckpt.unloadable(state) == ("['a'][2]['b'][1]", "numpy.float32")
    assert ckpt.unloadable({"k": {np.int64(3): 1}}) == ("['k'][np.int64(3)] (the key)",
                                                        "numpy.int64")
    assert ckpt.unloadable(_Own()) == ("", f"{__name__}._Own")
    assert ckpt.unloadable([len]) == ("[0]", "builtin_function_or_method")
    assert ckpt.unloadable([torch.Generator()]) == ("[0]", "torch.Generator")  # not torch._C
    loop: list = [1]
    loop.append(loop)  # pickled once by its memo: the walk ends too
    assert ckpt.unloadable(loop) is None
    loop = [np.float64(1)]
    loop.append(loop)  # met again before the value beside it: the walk goes on past it
    assert ckpt.unloadable(loop) == ("[0]", "numpy.float64")
    assert ckpt.unloadable({"deep": _nested(5000)}) is None  # no recursion to run out of
    assert ckpt.unloadable_message("model 'student' state_dict()", {"m": np.zeros(1)}) == (
        "model 'student' state_dict() holds a value of type numpy.ndarray at ['m'], which a "
        "checkpoint cannot hold: checkpoints are read back with weights_only=True, which admits "
        "tensors, numbers, strings, lists, tuples and dicts (float(x), x.tolist() or "
        "torch.as_tensor(x) converts a NumPy value)")
    assert ckpt.unloadable_message("it", np.float64(1)).startswith(
        "it is a value of type numpy.float64, which")
    assert ckpt.unloadable_message("it", {"a": [1.0]}) is None


def test_unloadable_serialises_no_tensor_and_no_plain_value(monkeypatch):
    """A model's weights are walked, not copied into a buffer at every checkpoint."""
    def probe(value):
        raise AssertionError(f"probed {value!r}")

    monkeypatch.setattr(ckpt, "_reads_back", probe)
    state = {"w": torch.zeros(3), "p": torch.nn.Parameter(torch.zeros(1)), "n": [1, 2.5],
             "s": ("a", b"b", None, True), 3: {4.5: 1}}
    assert ckpt.unloadable(state) is None


def _nested(depth):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


class NumpyState(kdcore.Component):
    """Keeps a NumPy scalar in its state, as a component that averages with NumPy would."""

    description = "test component whose state holds a NumPy scalar"

    def transfer(self, ctx, batch):
        return F.cross_entropy(batch.out("student").logits, batch.noisy_label, reduction="none")

    def state_dict(self):
        return {"mean": np.float64(0.25)}


class NumpyPlugin:
    """A plugin whose checkpoint state holds a NumPy array."""

    def __init__(self):
        self.__name__ = "numpy_plugin"

    @hookimpl
    def kdcore_add_components(self):
        return {"numpy_state": NumpyState}

    @hookimpl
    def kdcore_checkpoint_state(self, ctx):
        return {"seen": np.zeros(2)}


def test_a_component_whose_state_would_not_read_back_stops_the_run_at_its_first_checkpoint(
        tmp_path):
    from kdcore.failures import RunFailed

    _recipe(tmp_path)  # a checkpoint due after every epoch
    path = tmp_path / "tiny.toml"
    path.write_text(path.read_text().replace('"noisy_ce"', '"numpy_state"'))
    recipe = load_recipe(path)
    with pytest.raises(RunFailed, match=re.escape(
            "component 'numpy_state' (numpy_state) state_dict() holds a value of type "
            "numpy.float64 at ['mean'], which a checkpoint cannot hold")):
        run_recipe(recipe, out=str(tmp_path / "run"), host=PluginHost(extra=[NumpyPlugin()]))


def test_a_plugin_whose_state_would_not_read_back_is_disabled_and_the_checkpoint_reads(
        tmp_path, warnings):
    _recipe(tmp_path)
    path = tmp_path / "tiny.toml"
    path.write_text(path.read_text().replace('"noisy_ce"', '"ce"'))
    recipe = load_recipe(path)
    run_recipe(recipe, out=str(tmp_path / "run"), host=PluginHost(extra=[NumpyPlugin()]))
    assert [w for w in warnings if "numpy_plugin" in w] == [
        "plugin 'numpy_plugin' (in-process): kdcore_checkpoint_state returned a state that "
        "holds a value of type numpy.ndarray at ['seen'], which a checkpoint cannot hold: "
        "checkpoints are read back with weights_only=True, which admits tensors, numbers, "
        "strings, lists, tuples and dicts (float(x), x.tolist() or torch.as_tensor(x) "
        "converts a NumPy value); the plugin is disabled for the rest of this run"]
    assert ckpt.load(tmp_path / "run" / ckpt.CHECKPOINT)["plugins"] == {}


class _ExtraState(torch.nn.Module):
    """A plugin's architecture that keeps a NumPy value as its extra state."""

    def __init__(self, spec):
        super().__init__()
        self.layer = torch.nn.Linear(spec.input_shape[0], spec.num_classes)

    def forward(self, x):
        return self.layer(x), x

    def get_extra_state(self):
        return {"scale": np.float32(1.0)}

    def set_extra_state(self, state):
        pass


class StageEndNumpy(kdcore.Component):
    """Plain CE, whose state takes a NumPy value at its stage's end (a summary statistic)."""

    description = "test component whose state changes at its stage's end"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ended = False

    def transfer(self, ctx, batch):
        return F.cross_entropy(batch.out(self.models[0]).logits, batch.noisy_label)

    def on_stage_end(self, ctx):
        self.ended = True

    def state_dict(self):
        return {"mean": np.float64(0.5) if self.ended else 0.5}


class _Parts:
    @hookimpl
    def kdcore_add_models(self):
        return {"extra_state": _ExtraState}

    @hookimpl
    def kdcore_add_components(self):
        return {"stage_end_numpy": StageEndNumpy}


@pytest.mark.parametrize("epochs", [1, 3])
def test_a_models_extra_state_that_would_not_read_back_stops_the_run_at_its_first_write(
        tmp_path, epochs):
    """The first epoch's checkpoint, or a one-epoch stage's weights file at its end."""
    from kdcore.failures import RunFailed
    from kdcore.recipe import recipe_from_dict
    from kdcore.testing import component, stage, tiny_recipe

    recipe = recipe_from_dict(tiny_recipe(
        stage("s", epochs, ["student"], component("ce")),
        models={"student": {"arch": "extra_state"}}))
    with pytest.raises(RunFailed, match=re.escape(
            "model 'student' state_dict() holds a value of type numpy.float32 at "
            "['_extra_state']['scale'], which")):
        run_recipe(recipe, out=str(tmp_path / "run"), host=PluginHost(extra=[_Parts()]))
    with kdcore.History(tmp_path / "run") as history:
        assert len(history.metric("time/epoch")) == 1
    assert not (tmp_path / "run" / "models" / "student.pt").exists()


def test_a_state_carried_from_a_stages_end_that_would_not_read_back_stops_the_run(tmp_path):
    from kdcore.failures import RunFailed
    from kdcore.recipe import recipe_from_dict
    from kdcore.testing import component, stage, tiny_recipe

    recipe = recipe_from_dict(tiny_recipe(
        stage("t", 1, ["teacher"], component("stage_end_numpy", "mean_ce")),
        stage("s", 1, ["student"], component("ce"))))
    with pytest.raises(RunFailed, match=re.escape(
            "component 'mean_ce' (stage_end_numpy) state_dict() at the end of its stage holds "
            "a value of type numpy.float64 at ['mean'], which")):
        run_recipe(recipe, out=str(tmp_path / "run"), host=PluginHost(extra=[_Parts()]))


class _PlainExtraState(_ExtraState):
    """An architecture whose extra state is plain data and a tensor, as torch allows."""

    def __init__(self, spec):
        super().__init__(spec)
        self.restored = None

    def get_extra_state(self):
        return {"scale": 2.0, "table": self.layer.bias.detach() * 0 + 1}

    def set_extra_state(self, state):
        self.restored = state


def test_a_model_with_an_extra_state_keeps_its_best_epoch_and_writes_its_weights(tmp_path):
    from kdcore.recipe import recipe_from_dict
    from kdcore.testing import component, stage, tiny_recipe

    class Architectures:
        @hookimpl
        def kdcore_add_models(self):
            return {"plain_extra": _PlainExtraState}

    recipe = recipe_from_dict(tiny_recipe(
        stage("s", 2, ["student"], component("ce"), keep="best_val"),
        models={"student": {"arch": "plain_extra"}}))
    run_recipe(recipe, out=str(tmp_path / "run"), host=PluginHost(extra=[Architectures()]))
    weights = ckpt.load_weights(tmp_path / "run" / "models" / "student.pt", "student")
    assert weights["_extra_state"]["scale"] == 2.0
    assert torch.equal(weights["_extra_state"]["table"], torch.ones(10))
    assert set(weights) == {"layer.weight", "layer.bias", "_extra_state"}
