"""A component that raises something other than a KdcoreError (a plugin's bug, or an input its
author did not foresee) stops ``kdcore run`` and ``kdcore check`` with one line that names the
component, the hook and the exception, exit 1; ``run`` saves the traceback in the run's
``log.txt``, and the history keeps every completed epoch."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pytest

from kdcore import Component, History, hookimpl, run_recipe
from kdcore.failures import RunFailed, failure, raising_component
from kdcore.testing import component, stage, teacher_stage, tiny_recipe, write_recipe
from tests.cli_helpers import invoke


@attrs.frozen
class BoomParams:
    at: int = 1


class Boom(Component):
    """Raises at the start of epoch ``at`` (0: at set-up)."""

    Params = BoomParams
    description = "raises on purpose"

    def setup(self, ctx):
        if self.params.at == 0:
            raise ValueError("cannot set up\n  (second line)")

    def on_epoch_start(self, ctx):
        if ctx.epoch == self.params.at:
            raise ValueError("boom at epoch start")


class BoomPlugin:
    @hookimpl
    def kdcore_add_components(self):
        return {"boom": Boom}


PLUGIN = BoomPlugin()


def _recipe(tmp_path: Path, at: int) -> Path:
    data = tiny_recipe(teacher_stage(1),
                       stage("student", 3, ["student"], component("ce"),
                             component("boom", params={"at": at})))
    return write_recipe(data, tmp_path / "boom.toml")


def _lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


@pytest.mark.slow
def test_a_component_that_raises_stops_the_run_in_one_line_with_its_traceback_saved(tmp_path):
    run_dir = tmp_path / "run"
    result = invoke("run", _recipe(tmp_path, at=1), "--out", run_dir, "--quiet",
                    "--plugin", "tests.test_failures:PLUGIN")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert _lines(result) == [
        "kdcore: error: the run stopped: component 'boom' (boom) in on_epoch_start raised "
        f"ValueError: boom at epoch start; the traceback is in {run_dir / 'log.txt'}"]
    log = (run_dir / "log.txt").read_text()
    assert "Traceback (most recent call last)" in log and "boom at epoch start" in log
    with History(run_dir) as h:  # the teacher's epoch and the student's first are kept
        assert len(h.epochs()) == 2


@pytest.mark.slow
def test_check_names_a_component_whose_setup_raises(tmp_path):
    result = invoke("check", _recipe(tmp_path, at=0), "--plugin", "tests.test_failures:PLUGIN")
    assert result.exit_code == 1, result.output
    assert _lines(result) == [
        "kdcore: error: the set-up stopped: component 'boom' (boom) in setup raised "
        "ValueError: cannot set up (second line); KDCORE_TRACEBACK=1 shows the traceback"]


@pytest.mark.slow
def test_kdcore_traceback_shows_the_exception_and_the_api_raises_it(tmp_path, monkeypatch):
    from kdcore import PluginHost, load_recipe

    recipe = _recipe(tmp_path, at=0)
    with pytest.raises(ValueError, match="cannot set up") as raised:
        run_recipe(load_recipe(recipe), out=str(tmp_path / "api"),
                   host=PluginHost(extra=[PLUGIN]))
    assert type(raised.value) is ValueError  # the plugin's own exception, not a RunFailed
    assert "cannot set up" in (tmp_path / "api" / "log.txt").read_text()  # and its traceback
    monkeypatch.setenv("KDCORE_TRACEBACK", "1")
    with pytest.raises(ValueError, match="cannot set up") as shown:
        invoke("check", recipe, "--plugin", "tests.test_failures:PLUGIN")
    assert type(shown.value) is ValueError


class ForgetsToSayItTook(Component):
    """Runs the backward pass of its model itself and returns None, not True."""

    description = "a backward hook that forgets its return"

    def transfer(self, ctx, batch):
        import torch.nn.functional as F

        return F.cross_entropy(batch.out("student").logits, batch.noisy_label)

    def backward_roles(self):
        return ("student",)

    def backward(self, ctx, batch, role, loss):
        loss.backward()


class ForgetfulPlugin:
    @hookimpl
    def kdcore_add_components(self):
        return {"forgets": ForgetsToSayItTook}


FORGETFUL = ForgetfulPlugin()


def test_a_backward_hook_that_took_the_pass_and_returned_none_is_told_what_to_return(tmp_path):
    """The engine ran the backward pass again, and autograd's words blamed no one."""
    recipe = write_recipe(tiny_recipe(stage("s", 1, ["student"], component("forgets"))),
                          tmp_path / "r.toml")
    result = invoke("run", recipe, "--out", tmp_path / "run", "--quiet",
                    "--plugin", "tests.test_failures:FORGETFUL")
    assert result.exit_code == 1, result.output
    (line,) = _lines(result)
    assert line.startswith("kdcore: error: the run stopped: RuntimeError: Trying to backward "
                           "through the graph a second time")
    assert line.endswith("...; a component's backward hook that runs the backward pass itself "
                         "must return True, or the engine runs it again; the traceback is in "
                         f"{tmp_path / 'run' / 'log.txt'}")


def test_a_second_backward_in_a_components_own_code_gets_no_hint_about_returns():
    class Twice(Component):
        def after_step(self, ctx, batch):
            raise RuntimeError("Trying to backward through the graph a second time (here)")

    import torch

    from kdcore.testing import harness

    h = harness(Twice, x=torch.zeros(4, 2), noisy_label=torch.tensor([0, 1, 0, 1]))
    with pytest.raises(RuntimeError) as info:
        h.component.after_step(h.ctx, h.batch())
    assert str(failure(info.value, "the run")) == (
        "the run stopped: component 'twice' (twice) in after_step raised RuntimeError: Trying to "
        "backward through the graph a second time (here); KDCORE_TRACEBACK=1 shows the "
        "traceback")


def test_the_line_without_a_component_and_with_a_long_message():
    def engine_code():
        raise RuntimeError("x" * 400)

    with pytest.raises(RuntimeError) as info:
        engine_code()
    assert raising_component(info.value) is None
    error = failure(info.value, "the run")
    assert isinstance(error, RunFailed) and error.exit_code == 1
    assert str(error) == (f"the run stopped: RuntimeError: {'x' * 300}...; "
                          "KDCORE_TRACEBACK=1 shows the traceback")
    assert str(failure(KeyError(), "the run")).startswith("the run stopped: KeyError; ")


def test_a_failed_collective_is_named_beside_the_component_that_called_it():
    """In a distributed run a collective fails when another process stopped: the line names
    torch.distributed's function (the innermost public one: not its private helpers), so
    the component that called it is not taken for the cause."""
    import torch
    import torch.distributed as dist

    from kdcore.failures import failed_collective
    from kdcore.testing import harness

    def collective():
        dist.all_reduce(torch.ones(1))  # no process group: raises inside torch.distributed

    class Collects(Component):
        Params = BoomParams

        def on_epoch_start(self, ctx):
            collective()

    with pytest.raises(ValueError) as info:
        collective()
    assert failed_collective(info.value) == "torch.distributed's all_reduce"
    assert str(failure(info.value, "the run")).startswith(
        "the run stopped: torch.distributed's all_reduce raised ValueError: Default process "
        "group has not been initialized")
    h = harness(Collects, x=torch.zeros(2, 1), noisy_label=torch.tensor([0, 1]))
    with pytest.raises(ValueError) as called:
        h.component.on_epoch_start(h.ctx)
    assert str(failure(called.value, "the run")).startswith(
        "the run stopped: component 'collects' (collects) in on_epoch_start, torch.distributed's "
        "all_reduce raised ValueError: ")
    with pytest.raises(RuntimeError) as plain:
        raise RuntimeError("x")
    assert failed_collective(plain.value) is None


def _raised_in_torch_distributed(message: str) -> BaseException:
    """An exception raised by a function of a module named like torch.distributed's."""
    scope = {"__name__": "torch.distributed.distributed_c10d"}
    exec("def all_gather(m):\n    raise RuntimeError(m)\n", scope)
    try:
        scope["all_gather"](message)
    except RuntimeError as exc:
        return exc
    raise AssertionError("not raised")


@pytest.mark.parametrize(("message", "hinted"), [
    ("[gloo/transport/tcp/unbound_buffer.cc:129] Timed out waiting 15000ms for send", True),
    ("WorkNCCL(SeqNum=1, OpType=ALLREDUCE) ran for 600010 milliseconds before timing out.",
     True),
    ("Socket Timeout", True),  # the rendezvous store's
    ("x" * 400 + " Timed out", True),  # found in the whole message, not the line's cut
    ("Connection closed by peer [127.0.0.1]:55199", False),
])
def test_a_collective_that_timed_out_names_the_recipes_timeout(message, hinted):
    line = str(failure(_raised_in_torch_distributed(message), "the run"))
    assert line.startswith("the run stopped: torch.distributed's all_gather raised RuntimeError: ")
    hint = ("; the other processes took longer than run.distributed_timeout_s: raise it if "
            "they were busy rather than hung; KDCORE_TRACEBACK=1 shows the traceback")
    assert line.endswith(hint) is hinted
    # else the other process most likely stopped: the launcher says this line after its
    lost = ("; most likely another process of the run stopped first, and its line says why; "
            "KDCORE_TRACEBACK=1 shows the traceback")
    assert line.endswith(lost) is not hinted
    assert failure(_raised_in_torch_distributed(message), "the run").collective == (
        "torch.distributed's all_gather")
    with pytest.raises(RuntimeError) as elsewhere:  # a timeout outside a collective: no hint
        raise RuntimeError(message)
    assert "distributed_timeout_s" not in str(failure(elsewhere.value, "the run"))
    assert "another process" not in str(failure(elsewhere.value, "the run"))
    assert failure(elsewhere.value, "the run").collective is None


def test_a_traceback_holding_a_byte_that_is_not_utf8_is_saved_escaped(tmp_path):
    """A component's message quoting a name from a non-UTF-8 file system (a lone surrogate)
    made the append to log.txt raise UnicodeEncodeError, a traceback in place of the line."""
    from kdcore.failures import save_traceback

    log = tmp_path / "log.txt"
    log.write_text("the run's log\n", encoding="utf-8")
    try:
        raise ValueError(f"no file {os.fsdecode(b'caf' + bytes([0xE9]))}.png")
    except ValueError as exc:
        save_traceback(exc, log)
    text = log.read_text(encoding="utf-8")
    assert text.startswith("the run's log\nTraceback (most recent call last)")
    assert text.endswith("ValueError: no file caf\\udce9.png\n")


def test_running_out_of_memory_says_so_and_what_needs_less():
    """CUDA's OutOfMemoryError blamed the component whose tensor did not fit ("component 'ce'
    in transfer raised OutOfMemoryError"); the batch's size is the usual cause."""
    import torch

    from kdcore.testing import harness

    class Grows(Component):
        Params = BoomParams

        def on_epoch_start(self, ctx):
            torch.empty(10**15, dtype=torch.uint8)  # the CPU allocator refuses it

    h = harness(Grows, x=torch.zeros(2, 1), noisy_label=torch.tensor([0, 1]))
    with pytest.raises(RuntimeError) as cpu:
        h.component.on_epoch_start(h.ctx)
    line = str(failure(cpu.value, "the run"))
    assert line.startswith("the run stopped: out of memory in component 'grows' (grows) in "
                           "on_epoch_start (RuntimeError: [enforce fail at ")
    assert line.endswith(
        "you tried to allocate 1000000000000000 bytes. Error code 12 (Cannot allocate memory)); "
        'a smaller data.batch_size or model needs less, as does run.precision = "bf16" on a '
        "GPU; --resume continues from the last checkpoint; KDCORE_TRACEBACK=1 shows the "
        "traceback")
    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
    assert str(failure(cuda, "the set-up")) == (
        "the set-up stopped: out of memory (OutOfMemoryError: CUDA out of memory. Tried to "
        'allocate 2.00 GiB.); a smaller data.batch_size or model needs less, as does '
        'run.precision = "bf16" on a GPU; KDCORE_TRACEBACK=1 shows the traceback')
    assert str(failure(MemoryError(), "the run")).startswith(
        "the run stopped: out of memory (MemoryError); a smaller")
    # another RuntimeError of the allocator's code, or one that only mentions memory, is not
    for other in (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0."),
                  RuntimeError("not enough memory for the cache")):
        assert str(failure(other, "the run")).startswith("the run stopped: RuntimeError: ")


def test_a_message_of_exactly_the_limit_is_kept_whole():
    error = failure(RuntimeError("y" * 300), "the set-up")
    assert str(error) == (f"the set-up stopped: RuntimeError: {'y' * 300}; "
                          "KDCORE_TRACEBACK=1 shows the traceback")


@pytest.mark.parametrize(("value", "shown"), [(None, False), ("", False), ("0", False),
                                              ("1", True), ("yes", True)])
def test_which_values_of_kdcore_traceback_show_it(monkeypatch, value, shown):
    from kdcore.failures import shows_traceback

    if value is None:
        monkeypatch.delenv("KDCORE_TRACEBACK", raising=False)
    else:
        monkeypatch.setenv("KDCORE_TRACEBACK", value)
    assert shows_traceback() is shown


def test_the_saved_traceback_is_python_s_own_text_in_utf8_whatever_the_locale(tmp_path,
                                                                            monkeypatch):
    import io
    import traceback

    from kdcore.failures import save_traceback

    log = tmp_path / "log.txt"
    try:
        raise ValueError("élève")
    except ValueError as exc:
        caught = exc
    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: encoding or "ascii")
    save_traceback(caught, log)
    assert log.read_text(encoding="utf-8") == "".join(traceback.format_exception(caught))
    assert str(failure(caught, "the run")).endswith(f"; the traceback is in {log}")


def test_a_run_stopped_by_a_user_error_says_why_in_its_log(tmp_path):
    """A diverged loss ended the console's one line but left log.txt at its last epoch, so a
    batch job's run directory did not say why it stopped."""
    recipe = tiny_recipe(teacher_stage(1), stage("s", 1, ["student"],
                                                 component("ce", weight=3e38),
                                                 component("label_smoothing")))
    path = write_recipe(recipe, tmp_path / "diverges.toml")
    run_dir = tmp_path / "run"
    result = invoke("run", path, "--out", run_dir, "--quiet")
    assert result.exit_code == 2, result.output
    (line,) = _lines(result)
    assert line.startswith("kdcore: error: loss of model 'student' is not finite at stage 's'")
    log = (run_dir / "log.txt").read_text().splitlines()
    assert "teacher 1/1" in log[-2]  # the teacher's epoch, then why the run stopped
    stamp, level, text = log[-1].split(" | ", 2)
    assert level == "ERROR   " and len(stamp) == len("2026-12-03 10:11:33.905")
    assert text == "the run stopped: " + line.removeprefix("kdcore: error: ")
    assert "Traceback" not in "\n".join(log)


def test_the_error_line_is_one_line_in_utf8_and_a_log_that_cannot_be_written_is_no_failure(
        tmp_path, monkeypatch):
    import io

    from kdcore.errors import KdcoreError
    from kdcore.failures import save_error_line

    log = tmp_path / "log.txt"
    log.write_text("the run's log\n", encoding="utf-8")
    # UTF-8 whatever the locale's encoding (ASCII here)
    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: encoding or "ascii")
    save_error_line(KdcoreError(f"two\nlines, {os.fsdecode(b'caf' + bytes([0xE9]))} élève"),
                    log)
    first, second = log.read_text(encoding="utf-8").splitlines()
    assert first == "the run's log"
    assert second.endswith(" | ERROR    | the run stopped: two lines, caf\\udce9 élève")
    save_error_line(KdcoreError("no directory"), tmp_path / "gone" / "log.txt")  # no raise
