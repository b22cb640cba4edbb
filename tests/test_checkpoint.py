"""Checkpoint files: atomic writes, background writes, weights-only loading."""

from __future__ import annotations

import pytest
import torch

from kdcore import checkpoint as ckpt
from kdcore.errors import KdcoreError


@pytest.mark.parametrize("background", [True, False])
def test_saver_writes_a_snapshot_not_the_live_tensors(tmp_path, background):
    live = {"w": torch.zeros(3), "meta": {"epoch": 1, "names": ["a"]}}
    saver = ckpt.BackgroundSaver(background=background)
    saver.save(live, tmp_path / "c.pt")
    live["w"].add_(1.0)  # training goes on while the file is written
    saver.wait()
    back = ckpt.load(tmp_path / "c.pt")
    assert torch.equal(back["w"], torch.zeros(3)) and back["meta"] == {"epoch": 1, "names": ["a"]}
    assert not (tmp_path / "c.pt.tmp").exists()


def test_a_snapshot_copies_every_tensor_of_the_tree_and_keeps_its_containers():
    from collections import namedtuple

    Pair = namedtuple("Pair", "first second")
    live = {"pair": Pair(torch.zeros(1), [torch.ones(1), 3]), "size": torch.Size([2]),
            "t": (torch.zeros(2), "a"), "n": 1.5}
    copy = ckpt.snapshot(live)
    assert type(copy["pair"]) is Pair and type(copy["size"]) is torch.Size
    assert copy["size"] == torch.Size([2]) and copy["t"][1] == "a" and copy["n"] == 1.5
    for tensor in (live["pair"].first, live["pair"].second[0], live["t"][0]):
        tensor.add_(5)  # the live state trains on
    assert torch.equal(copy["pair"].first, torch.zeros(1))
    assert torch.equal(copy["pair"].second[0], torch.ones(1)) and copy["pair"].second[1] == 3
    assert torch.equal(copy["t"][0], torch.zeros(2))


class _Versioned(torch.nn.Module):
    """Refuses weights without its format version, as torchvision's MNASNet does ("version
    should be set to 1 or 2 instead of None"), and counts the versions it was given."""

    _version = 2

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.BatchNorm1d(3)
        self.given = []

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
        self.given.append(local_metadata.get("version"))
        if local_metadata.get("version") not in (1, 2):
            raise ValueError(f"version should be set to 1 or 2 instead of "
                             f"{local_metadata.get('version')}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


@pytest.mark.parametrize("background", [True, False])
def test_a_modules_weights_keep_their_format_versions_through_every_copy(tmp_path, background):
    """The best weights a stage keeps, a checkpoint written in the background and a weights
    file were copies without ``_metadata``: MNASNet's run stopped at its best-validation
    restore."""
    model = _Versioned()
    BN = torch.nn.BatchNorm1d._version
    for copy in (ckpt.snapshot(model.state_dict()), ckpt.weights_of(model)):
        assert copy._metadata == {"": {"version": 2}, "inner": {"version": BN}}
        model.given.clear()
        model.load_state_dict(copy)
        assert model.given == [2]
        model.load_state_dict(ckpt.snapshot({"models": {"s": copy}})["models"]["s"])
    saver = ckpt.BackgroundSaver(background=background)
    saver.save({"models": {"s": model.state_dict()}}, tmp_path / "c.pt")
    saver.wait()
    model.load_state_dict(ckpt.load(tmp_path / "c.pt")["models"]["s"])
    ckpt.save_weights(model, tmp_path / "w.pt")
    model.given.clear()
    model.load_state_dict(ckpt.load_weights(tmp_path / "w.pt", "s"))
    assert model.given == [2]
    # a plain dict of tensors stays one: nothing to keep
    assert type(ckpt.snapshot({"w": torch.zeros(1)})) is dict


def test_background_write_errors_surface_on_wait(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    saver = ckpt.BackgroundSaver(background=True)
    saver.save({"w": torch.ones(1)}, blocker / "sub" / "c.pt")
    with pytest.raises(KdcoreError, match="could not write checkpoint"):
        saver.wait()


def test_load_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(KdcoreError, match="cannot read checkpoint") as info:
        ckpt.load(tmp_path / "evil.pt")
    # the reason (the global torch blocked), never torch's advice to load it unsafely
    message = str(info.value)
    assert "print" in message and "\n" not in message, message
    assert "weights_only" not in message and "Re-running" not in message, message


@pytest.mark.parametrize("text,reason", [
    # torch 2.4-2.5: the reason follows a marker
    ("Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` "
     "will likely succeed, but it can result in arbitrary code execution. Do it only if you "
     "got the file from a trusted source.\n Please file an issue with the following so that "
     "we can make `weights_only=True` compatible with your use case: WeightsUnpickler error: "
     "Unsupported global: GLOBAL builtins.print was not an allowed global by default. Please "
     "use `torch.serialization.add_safe_globals([print])` to allowlist this global.",
     "Unsupported global: GLOBAL builtins.print was not an allowed global by default"),
    # torch 2.6 on: advice first, then the reason as its own paragraph
    ("Weights only load failed. In PyTorch 2.6, we changed the default value of the "
     "`weights_only` argument in `torch.load` from `False` to `True`. Re-running `torch.load` "
     "with `weights_only` set to `False` will likely succeed, but it can result in arbitrary "
     "code execution. Do it only if you got the file from a trusted source.\n\n\nTrying to "
     "load unsupported GLOBAL posix.system whose module posix is blocked.\n\nCheck the "
     "documentation of torch.load to learn more.",
     "Trying to load unsupported GLOBAL posix.system whose module posix is blocked."),
    ("invalid load key, 'x'.", "invalid load key, 'x'."),
])
def test_the_reason_torch_refused_a_file_is_its_own_line(text, reason):
    from kdcore.errors import weights_only_reason

    assert weights_only_reason(RuntimeError(text)) == reason


def test_load_weights_accepts_run_checkpoints_and_state_dicts(tmp_path):
    sd = {"layer.weight": torch.ones(2, 2)}
    ckpt.save({"models": {"teacher": sd}}, tmp_path / "run.pt")
    ckpt.save({"state_dict": sd}, tmp_path / "plain.pt")
    for name in ("run.pt", "plain.pt"):
        assert torch.equal(ckpt.load_weights(tmp_path / name, "teacher")["layer.weight"],
                           sd["layer.weight"])
    with pytest.raises(KdcoreError, match="holds no model 'student'"):
        ckpt.load_weights(tmp_path / "run.pt", "student")


def test_a_write_the_disk_refuses_leaves_the_old_file_and_no_temporary_one(tmp_path,
                                                                             monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt.save({"a": torch.ones(2)}, path)
    before = path.read_bytes()

    def full(state, f):  # torch's zip writer on a full disk
        f.write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(KdcoreError) as info:
        ckpt.save({"a": torch.zeros(2)}, path)
    assert str(info.value).startswith(f"cannot write {path}: the write failed (")
    assert str(info.value).endswith(" bytes free on its file system); the files written "
                                    "before it are as they were")
    assert path.read_bytes() == before and not (tmp_path / "checkpoint.pt.tmp").exists()

    def bug(state, f):  # not the disk's: a state torch cannot pickle, say
        raise RuntimeError("cannot pickle 'generator' object")

    monkeypatch.setattr(torch, "save", bug)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        ckpt.save({"a": torch.zeros(2)}, path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), RuntimeError("cannot pickle it")])
def test_a_save_stopped_half_way_leaves_the_old_file_and_no_temporary_one(tmp_path,
                                                                         monkeypatch, stop):
    """Ctrl-C or a SIGTERM while the checkpoint is written (once a run has stopped so, its
    folder held a half `checkpoint.pt.tmp`), or a state torch cannot pickle."""
    path = tmp_path / "checkpoint.pt"
    ckpt.save({"a": torch.ones(2)}, path)
    before = path.read_bytes()

    def stopped(state, f):
        f.write_bytes(b"half")
        raise stop

    monkeypatch.setattr(torch, "save", stopped)
    with pytest.raises(type(stop)):
        ckpt.save({"a": torch.zeros(2)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_run_text_files_are_written_whole_or_refused_in_one_line(tmp_path):
    ckpt.save_text('{"a": 1}', tmp_path / "summary.json")
    assert (tmp_path / "summary.json").read_text() == '{"a": 1}'
    assert not (tmp_path / "summary.json.tmp").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(KdcoreError) as info:
        ckpt.save_text("x", tmp_path / "file" / "summary.json")
    assert str(info.value).startswith(f"cannot write {tmp_path / 'file' / 'summary.json'}: ")
