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
    with pytest.raises(KdcoreError, match="cannot read checkpoint"):
        ckpt.load(tmp_path / "evil.pt")


def test_load_weights_accepts_run_checkpoints_and_state_dicts(tmp_path):
    sd = {"layer.weight": torch.ones(2, 2)}
    ckpt.save({"models": {"teacher": sd}}, tmp_path / "run.pt")
    ckpt.save({"state_dict": sd}, tmp_path / "plain.pt")
    for name in ("run.pt", "plain.pt"):
        assert torch.equal(ckpt.load_weights(tmp_path / name, "teacher")["layer.weight"],
                           sd["layer.weight"])
    with pytest.raises(KdcoreError, match="holds no model 'student'"):
        ckpt.load_weights(tmp_path / "run.pt", "student")
