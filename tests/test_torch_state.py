"""`run.deterministic` (kdcore/torch_state.py): torch's deterministic kernels, cuDNN's autotuner
off and cuBLAS's workspace fixed while the run trains; the caller's own settings before and
after, whatever they were and however the run ended; and on the CPU not one number changed
(torch then also fills uninitialised memory with NaN, so a read of it would show). The GPU half,
two runs of a conv net equal bit for bit, is in tests/test_cuda.py."""

from __future__ import annotations

import os

import pytest
import torch

from kdcore import KdcoreError, torch_state
from kdcore.testing import (
    InterruptAt,
    Interrupted,
    assert_same_history,
    component,
    hookimpl,
    run_tiny,
    stage,
    teacher_stage,
    tiny_recipe,
)

CUBLAS = "CUBLAS_WORKSPACE_CONFIG"


def settings() -> tuple:
    return (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
            os.environ.get(CUBLAS))


class Watch:
    """Torch's settings at every batch's end; raises at the first when ``fail``."""

    def __init__(self, fail: bool = False):
        self.seen: set[tuple] = set()
        self.fail = fail

    @hookimpl
    def kdcore_batch_end(self, ctx, batch, losses):
        self.seen.add(settings())
        if self.fail:
            raise KeyboardInterrupt  # not an observer's exception: it stops the run


@pytest.fixture
def caller(monkeypatch):
    """The caller's own settings, put back after the test whatever the run left."""
    monkeypatch.delenv(CUBLAS, raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    yield monkeypatch
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def ce_recipe(deterministic: bool | None = None) -> dict:
    data = tiny_recipe(stage("s", 2, ["student"], component("ce")))
    if deterministic is not None:
        data["run"]["deterministic"] = deterministic
    return data


def test_a_deterministic_run_trains_with_deterministic_kernels_and_gives_the_settings_back(
        tmp_path, caller):
    watch = Watch()
    run_tiny(ce_recipe(True), tmp_path / "run", plugins=[watch])
    assert watch.seen == {(True, True, True, False, ":4096:8")}  # warn-only: never stops a run
    assert settings() == (False, False, False, True, None)


def test_the_environments_own_cublas_workspace_is_kept(tmp_path, caller):
    caller.setenv(CUBLAS, ":16:8")
    watch = Watch()
    run_tiny(ce_recipe(True), tmp_path / "run", plugins=[watch])
    assert {s[4] for s in watch.seen} == {":16:8"} and os.environ[CUBLAS] == ":16:8"


def test_without_it_a_run_leaves_torch_as_the_caller_set_it(tmp_path, caller):
    torch.use_deterministic_algorithms(True)  # the caller's choice, not undone by the run
    watch = Watch()
    run_tiny(ce_recipe(), tmp_path / "run", plugins=[watch])
    assert watch.seen == {(True, False, False, True, None)}
    assert settings() == (True, False, False, True, None)


def test_a_run_stopped_part_way_gives_the_settings_back(tmp_path, caller):
    with pytest.raises(KeyboardInterrupt):
        run_tiny(ce_recipe(True), tmp_path / "run", plugins=[Watch(fail=True)])
    assert settings() == (False, False, False, True, None)


def test_on_the_cpu_deterministic_kernels_change_no_number(tmp_path, caller):
    kd = tiny_recipe(teacher_stage(2), stage("student", 2, ["student"], component("ce"),
                                            component("hinton_kd", params={"teacher": "teacher"})))
    run_tiny(kd, tmp_path / "plain")
    run_tiny({**kd, "run": {**kd["run"], "deterministic": True}}, tmp_path / "deterministic")
    assert_same_history(tmp_path / "plain", tmp_path / "deterministic")


def test_resuming_with_the_setting_changed_is_refused_naming_it(tmp_path, caller):
    with pytest.raises(Interrupted):
        run_tiny(ce_recipe(), tmp_path / "run", plugins=[InterruptAt(epoch=1, batch=0)])
    with pytest.raises(KdcoreError, match=r"run\.deterministic"):
        run_tiny(ce_recipe(True), tmp_path / "run", resume=True)


def test_make_deterministic_is_what_the_module_documents(caller):
    torch_state.make_deterministic()
    assert settings() == (True, True, True, False, torch_state.CUBLAS_WORKSPACE_CONFIG)
