"""The models' training state reckoned before they are built (kdcore.footprint): a recipe whose
models fit one by one but cannot train together is refused by ``check``, where the run had been
killed by the kernel's out-of-memory killer (exit 137, no message)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from kdcore.cli import main
from kdcore.errors import RecipeError
from kdcore.footprint import (
    TRAINING_SHARE,
    Activations,
    check_training_fits,
    held_per_row,
    local_processes,
    saved_per_row,
    weight_copies,
)
from kdcore.recipe import recipe_from_dict
from kdcore.testing import component, stage, tiny_recipe, write_recipe


def _recipe(*stages, student=None, teacher=None):
    data = tiny_recipe(*stages)
    data["models"]["student"].update(student or {})
    data["models"]["teacher"].update(teacher or {})
    return recipe_from_dict(data)


CE = component("ce")
NONE = Activations()  # no batch: the models' state alone
CPU = torch.device("cpu")


def _saved(saved, rows):
    return Activations(saved=saved, train_rows=rows)


def _refused(recipe, sizes, activations):
    """The :class:`RecipeError` ``check_training_fits`` refuses with, on the CPU."""
    with pytest.raises(RecipeError) as info:
        check_training_fits(recipe, sizes, CPU, activations)
    return info.value


def _student(recipe, saved, rows):
    """A student of 1,000 bytes of parameters, saving ``saved`` bytes a row of ``rows``."""
    check_training_fits(recipe, {"student": 1_000}, torch.device("cpu"),
                        _saved({"student": saved}, rows))


@pytest.mark.parametrize(("optimizer", "keeps", "copies"), [
    ({"name": "sgd", "momentum": 0.9}, ["last"], [1, 1, 1, 0]),
    ({"name": "sgd", "momentum": 0.0}, ["last"], [1, 1, 0, 0]),  # no momentum buffer
    ({"name": "adam", "momentum": 0.0}, ["last"], [1, 1, 2, 0]),  # two moments
    ({"name": "adamw", "momentum": 0.0}, ["best_val"], [1, 1, 2, 1]),
    # a best_val stage's kept weights go at its end; best_val_all's stay to the run's end
    ({"name": "sgd"}, ["best_val", "best_val", "last"], [1, 1, 1, 1]),
    ({"name": "sgd"}, ["best_val_all", "best_val_all", "best_val"], [1, 1, 1, 2]),
    ({"name": "sgd"}, ["best_val_all", "last"], [1, 1, 1, 1]),
])
def test_what_a_trained_role_holds(optimizer, keeps, copies):
    stages = [stage(f"s{i}", 1, ["student"], CE, keep=keep) for i, keep in enumerate(keeps)]
    recipe = _recipe(*stages, student={"optimizer": {"lr": 0.1, **optimizer}})
    assert list(weight_copies(recipe, "student").values()) == copies
    assert list(weight_copies(recipe, "student")) == ["weights", "gradients",
                                                      "optimiser state", "kept best weights"]
    # the teacher no stage trains: its weights only, whatever its optimiser
    assert weight_copies(recipe, "teacher") == {"weights": 1}


def test_the_processes_that_share_the_memory(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert local_processes(torch.device("cpu")) == 1
    for value, expected in (("3", 3), ("0", 1), ("x", 1)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", value)
        assert local_processes(torch.device("cpu")) == expected
        assert local_processes(torch.device("cuda", 1)) == 1  # a GPU is its process's own


def _free(monkeypatch, n):
    monkeypatch.setattr("kdcore.device.free_memory", lambda device: n)


def _refused_a_byte_short(monkeypatch, recipe, free):
    """``check`` accepts ``recipe`` with ``free`` bytes free and refuses it with one byte
    less, in one line: that line."""
    _free(monkeypatch, free)
    result = CliRunner().invoke(main, ["check", str(recipe)])
    assert result.exit_code == 0, result.output
    _free(monkeypatch, free - 1)
    result = CliRunner().invoke(main, ["check", str(recipe)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    return result.output.strip().splitlines()[-1]


def test_the_run_plans_for_its_share_of_the_free_memory(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    recipe = _recipe(stage("s", 1, ["student"], CE, keep="best_val"))  # student: 4 copies
    sizes = {"teacher": 1_000, "student": 5_000}  # 1,000 + 4 x 5,000 = 21,000 bytes
    assert TRAINING_SHARE == 0.8
    _free(monkeypatch, 26_250)  # 0.8 x 26,250 = 21,000: just enough
    check_training_fits(recipe, sizes, CPU, NONE)
    _free(monkeypatch, None)  # unknown: nothing refused
    check_training_fits(recipe, sizes, CPU, NONE)
    check_training_fits(recipe, {}, CPU, NONE)
    _free(monkeypatch, 26_249)
    info = _refused(recipe, sizes, NONE)
    assert info.key == "models.student.params"
    assert info.detail == (
        "the models' training state needs 20.5 KiB; 25.6 KiB are free on cpu, and a run plans "
        "for at most 80% of it: model 'student' holds 4 x 4.9 KiB (1 weights, 1 gradients, 1 "
        "optimiser state, 1 kept best weights); a smaller model, an optimiser with less state "
        "or keep = \"last\" takes less")
    # the largest share is named, not the largest model: 4 x 1,000 > 1 x 3,000
    _free(monkeypatch, 100)
    info = _refused(recipe, {"teacher": 3_000, "student": 1_000}, NONE)
    assert info.key == "models.student.params"
    info = _refused(recipe, {"teacher": 5_000, "student": 1_000}, NONE)
    assert info.key == "models.teacher.params"
    assert "model 'teacher' holds 1 x 4.9 KiB (1 weights);" in info.detail


def test_processes_on_one_machine_each_hold_their_own(monkeypatch):
    recipe = _recipe(stage("s", 1, ["student"], CE))  # student: 3 copies, keep last
    # 0.8 x 30,000 = 24,000 on either, each asked of its own device's memory
    monkeypatch.setattr("kdcore.device.free_memory",
                        lambda device: {"cpu": 30_000, "cuda": 30_000}[device.type])
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    check_training_fits(recipe, {"student": 4_000}, torch.device("cpu"), NONE)  # 2 x 12,000
    check_training_fits(recipe, {"student": 8_000}, torch.device("cuda"), NONE)  # its own GPU
    # 2 x 3 x 4,001 = 24,006 bytes
    with pytest.raises(RecipeError, match=r"^models\.student\.params: the models' training state "
                                          r"needs 23\.4 KiB \(2 processes on this machine, each "
                                          r"its own\); "):
        check_training_fits(recipe, {"student": 4_001}, torch.device("cpu"), NONE)


def test_models_that_fit_one_by_one_but_not_together_are_refused_by_check(tmp_path,
                                                                         monkeypatch):
    """Through the command line: each model's parameters alone fit in half the free memory,
    their training state together does not; the run had been killed mid-set-up."""
    data = tiny_recipe(stage("t", 1, ["teacher"], CE), stage("s", 1, ["student"], CE))
    # 64 inputs, 10 classes, float32: 4 x (64 x 1000 + 1000 + 1000 x 10 + 10) = 300,040 bytes
    data["models"]["teacher"]["params"] = {"hidden": [1000]}
    data["models"]["student"]["params"] = {"hidden": [900]}  # 4 x 67,510 = 270,040 bytes
    data["data"]["eval_batch_size"] = 8  # evaluation holds less than a training step
    recipe = write_recipe(data, tmp_path / "r.toml")
    # each fits alone in half the free memory (300,040 < 0.5 x 2,478,280); both train with
    # SGD's momentum, keep last: 3 x (300,040 + 270,040) = 1,710,240 bytes, and the teacher's
    # stage, the larger step, saves 64 rows x 4 x (64 + 1000) = 272,384 bytes: 1,982,624
    # 0.8 x 2,478,280 = 1,982,624: just enough
    assert _refused_a_byte_short(monkeypatch, recipe, 2_478_280) == (
        f"kdcore: error: {recipe}: models.teacher.params: the models' training state needs "
        "1.6 MiB and a training step's activations 266.0 KiB more (a batch of 64 rows in "
        "stage 't'); 2.4 MiB are free on cpu, and a run plans for at most 80% of it: model "
        "'teacher' holds 3 x 293.0 KiB (1 weights, 1 gradients, 1 optimiser state); a smaller "
        "model, an optimiser with less state or keep = \"last\" takes less")


def _mlp(hidden, inputs=64):
    from kdcore.models.base import ModelSpec
    from kdcore.models.mlp import mlp

    with torch.device("meta"):
        return mlp(ModelSpec((inputs,), 10), hidden=hidden)


@pytest.mark.parametrize("hidden", [[7], [512, 512], [100, 30, 9]])
def test_what_an_mlp_saves_for_its_backward_pass_per_row(hidden):
    """By hand: the first Linear saves its input row, each hidden ReLU its output (the next
    Linear's input: the same tensor, counted once); 4 bytes each in float32. The weights
    (and the transposed weights each Linear saves) do not grow with the batch."""
    assert saved_per_row(_mlp(hidden, 784), (784,)) == 4 * (784 + sum(hidden))


def test_a_model_the_meta_device_cannot_run_leaves_its_activations_unknown():
    class Counts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.linear(x) * float(x.sum()), x  # .item() on meta: not implemented

    assert saved_per_row(Counts(), (4,)) is None


def test_a_model_that_saves_nothing_per_row_saves_0_bytes():
    frozen = _mlp([8], 4)
    frozen.requires_grad_(False)  # nothing to differentiate: no graph, nothing saved
    assert saved_per_row(frozen, (4,)) == 0
    assert type(saved_per_row(_mlp([8], 4), (4,))) is int  # whole bytes


def test_a_training_steps_activations_are_reckoned_per_stage(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    # stage a trains the student alone, stage b both: b's step is the larger
    recipe = _recipe(stage("a", 1, ["student"], CE), stage("b", 1, ["teacher", "student"], CE))
    sizes = {"teacher": 1_000, "student": 2_000}  # 3 x 1,000 + 3 x 2,000 = 9,000 bytes
    per_row = {"teacher": 30, "student": 70}  # b: 50 rows x 100 = 5,000 bytes
    _free(monkeypatch, 17_500)  # 0.8 x 17,500 = 14,000 = 9,000 + 5,000: just enough
    check_training_fits(recipe, sizes, CPU, _saved(per_row, 50))
    _free(monkeypatch, 17_499)
    info = _refused(recipe, sizes, _saved(per_row, 50))
    # the models' state is the larger part: named as before, the activations beside it
    assert info.key == "models.student.params"
    assert info.detail.startswith(
        "the models' training state needs 8.8 KiB and a training step's activations 4.9 KiB "
        "more (a batch of 50 rows in stage 'b'); 17.1 KiB are free on cpu, and a run plans "
        "for at most 80% of it: model 'student' holds 3 x 2.0 KiB ")
    # 100 rows: 10,000 bytes of activations, past the models' 9,000: the batch is named
    info = _refused(recipe, sizes, _saved(per_row, 100))
    assert info.key == "data.batch_size"
    assert info.detail == (
        "the models' training state needs 8.8 KiB and a training step's activations 9.8 KiB "
        "more (a batch of 100 rows in stage 'b'); 17.1 KiB are free on cpu, and a run plans "
        "for at most 80% of it: model 'student' saves 70 bytes a row for its backward pass; a "
        "smaller data.batch_size or model takes less")
    # as much as the models: the models are named
    info = _refused(recipe, sizes, _saved(per_row, 90))
    assert info.key == "models.student.params"
    # unknown activations (a model the meta device cannot run) count as none
    unknown = {"teacher": None, "student": None}
    check_training_fits(recipe, sizes, CPU, Activations(saved=unknown, held=unknown,
                                                        train_rows=10**9, eval_rows=10**9))


def test_activations_in_16_bits_are_half_and_each_process_holds_its_own(monkeypatch):
    recipe = _recipe(stage("s", 1, ["student"], CE))  # student: 3 copies, keep last
    data = tiny_recipe(stage("s", 1, ["student"], CE), run={"precision": "bf16"})
    half = recipe_from_dict(data)
    _free(monkeypatch, 10_000)  # 0.8 x 10,000 = 8,000
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    # 2 x (3 x 1,000 + 10 x 100) = 8,000 in 32 bits; in 16: 2 x (3,000 + 10 x 50) = 7,000
    _student(recipe, 100, 10)
    _student(half, 110, 18)
    # 2 x (3,000 + 18 x 55) = 7,980: fits; 19 rows do not
    info = _refused(half, {"student": 1_000}, _saved({"student": 110}, 19))
    # an odd number of bytes a row: 111 // 2 = 55 in 16 bits, so again 18 rows fit, 19 do not
    _student(half, 111, 18)
    with pytest.raises(RecipeError):
        _student(half, 111, 19)
    assert info.detail == (
        "the models' training state needs 5.9 KiB and a training step's activations 2.0 KiB "
        "more (a batch of 19 rows per process in stage 's') (2 processes on this machine, each "
        "its own); 9.8 KiB are free on cpu, and a run plans for at most 80% of it: model "
        "'student' holds 3 x 1000 bytes (1 weights, 1 gradients, 1 optimiser state); a smaller "
        "model, an optimiser with less state or keep = \"last\" takes less")
    # activations past the models' state: the batch is named, its bytes in 16 bits
    info = _refused(half, {"student": 1_000}, _saved({"student": 110}, 60))  # 12,600 bytes
    assert info.key == "data.batch_size"
    assert info.detail.endswith(": model 'student' saves 55 bytes a row (in bf16) for its "
                                "backward pass; a smaller data.batch_size or model takes less")


@pytest.mark.parametrize(("batch_size", "eval_batch_size", "said"), [
    # a CNN of 128 and 256 channels on Fashion-MNIST's images in batches of 20,000 passed check
    # and was killed by the out-of-memory killer at its first step (exit 137, no message)
    (300, 8, "data.batch_size: the models' training state needs 888.4 KiB and a training "
             "step's activations 1.2 MiB more (a batch of 300 rows in stage 's'); 2.6 MiB are "
             "free on cpu, and a run plans for at most 80% of it: model 'student' saves 4.2 KiB "
             "a row for its backward pass; a smaller data.batch_size or model takes less"),
    # one of 512 and 512 channels with data.eval_batch_size 20,000 trained its epoch and was
    # killed evaluating its 10,000 test images at once; digits' test split: 359 images
    (8, 300, "data.eval_batch_size: the models' training state needs 888.4 KiB and an "
             "evaluation batch's activations 1.2 MiB more (a batch of 300 rows); 2.6 MiB are "
             "free on cpu, and a run plans for at most 80% of it: model 'student' holds 4.2 KiB "
             "a row at once in its largest layer; a smaller data.eval_batch_size or model takes "
             "less"),
])
def test_a_batch_whose_activations_do_not_fit_is_refused_by_check(tmp_path, monkeypatch,
                                                                   batch_size, eval_batch_size,
                                                                   said):
    """Through the command line, on digits, the free memory faked. The student: 3 x 4 x (64 x
    1000 + 1000 + 1000 x 10 + 10) = 900,120 bytes of state, the teacher's weights 4 x (64 x 32 +
    32 + 32 x 10 + 10) = 9,640; a training batch of 300 rows saves, and an evaluation batch of
    300 holds at its largest layer, 300 x 4 x (64 + 1000) = 1,276,800 bytes (the other batch,
    of 8 rows, 34,048): 2,186,560 in all, 0.8 x 2,733,200."""
    data = tiny_recipe(stage("s", 1, ["student"], CE), batch_size=batch_size, train_subset=300,
                       data={"eval_batch_size": eval_batch_size})
    data["models"]["student"]["params"] = {"hidden": [1000]}
    recipe = write_recipe(data, tmp_path / "r.toml")
    assert _refused_a_byte_short(monkeypatch, recipe, 2_733_200) == (
        f"kdcore: error: {recipe}: {said}")


@pytest.mark.parametrize(("n", "size", "world"), [
    (300, 64, 1), (300, 300, 1), (301, 300, 1), (129, 64, 1), (128, 64, 1), (10, 64, 1),
    (300, 64, 2), (129, 64, 3), (7, 4, 4), (1, 64, 1)])
def test_the_largest_batch_a_process_computes(monkeypatch, n, size, world):
    """Against the engine's own cut of an epoch into batches and of a batch among the
    processes (near-equal parts, torch.tensor_split)."""
    from kdcore import distributed
    from kdcore.batching import epoch_batches
    from kdcore.prepare import _largest_batch_share

    monkeypatch.setattr(distributed, "_world", distributed.World(rank=0, size=world))
    parts = [len(part) for batch in epoch_batches(torch.arange(n), size)
             for part in torch.tensor_split(batch, world)]
    assert _largest_batch_share(n, size) == max(parts)


@pytest.mark.parametrize(("hidden", "inputs"), [([7], 784), ([512, 512], 784), ([100, 30, 9], 784),
                                                ([2000], 4)])
def test_what_an_mlp_holds_at_once_per_row_in_evaluation(hidden, inputs):
    """By hand: the largest of its Linear layers' input and output widths added, 4 bytes
    each (the flattened input is a view of the input, the in-place ReLU's output the Linear's:
    no memory of their own)."""
    widths = [inputs, *hidden, 10]
    assert held_per_row(_mlp(hidden, inputs), (inputs,)) == 4 * max(
        a + b for a, b in zip(widths, widths[1:]))


def test_an_evaluation_batch_is_one_models_at_a_time_halved_in_16_bits(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    recipe = _recipe(stage("s", 1, ["student"], CE))  # student: 3 copies
    data = tiny_recipe(stage("s", 1, ["student"], CE), run={"precision": "bf16"})
    half = recipe_from_dict(data)
    sizes = {"teacher": 1_000, "student": 1_000}  # 1,000 + 3 x 1,000 = 4,000 bytes
    held = {"teacher": 101, "student": 40}  # the teacher's rows, alone: 20 x 101 = 2,020
    _free(monkeypatch, 7_525)  # 0.8 x 7,525 = 6,020 = 4,000 + 2,020: just enough
    check_training_fits(recipe, sizes, CPU, Activations(held=held, eval_rows=20))
    info = _refused(recipe, sizes, Activations(held=held, eval_rows=21))
    assert info.key == "models.student.params"  # 4,000 bytes of state: the larger part
    assert info.detail.startswith(
        "the models' training state needs 3.9 KiB and an evaluation batch's activations 2.1 "
        "KiB more (a batch of 21 rows); 7.3 KiB are free on cpu, ")
    # in 16 bits: 101 // 2 = 50 bytes a row; 40 rows (2,000) fit, 41 do not
    check_training_fits(half, sizes, CPU, Activations(held=held, eval_rows=40))
    with pytest.raises(RecipeError):
        check_training_fits(half, sizes, CPU, Activations(held=held, eval_rows=41))
    # as much as the models' state: the models are named; past it, the evaluation batch
    _free(monkeypatch, 100)
    info = _refused(half, sizes, Activations(held=held, eval_rows=80))
    assert info.key == "models.student.params"
    info = _refused(half, sizes, Activations(held=held, eval_rows=81))
    assert info.key == "data.eval_batch_size"
    assert info.detail.endswith(
        ": model 'teacher' holds 50 bytes a row (in bf16) at once in its largest layer; a "
        "smaller data.eval_batch_size or model takes less")


def test_a_layer_that_returns_several_tensors_holds_each():
    class Pair(torch.nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pair, self.classifier = Pair(), torch.nn.Linear(6, 2)

        def forward(self, x):
            a, b = self.pair(x)
            return self.classifier(a + b), a

    with torch.device("meta"):  # as a run sizes its models
        model = Model()
    # the pair's input and its two outputs: 3 x 6 floats a row, past the classifier's 6 + 2
    assert held_per_row(model, (6,)) == 3 * 6 * 4
    assert type(held_per_row(model, (6,))) is int


# -- building on the meta device --------------------------------------------------------------


def _sized_by_tensors():
    """Widths computed with tensors and read back, as torchvision's RegNet computes them."""
    first, second = (torch.arange(1, 3) * 3).tolist()
    return torch.nn.Sequential(torch.nn.Linear(4, first), torch.nn.BatchNorm1d(first),
                               torch.nn.Linear(first, second))


def test_a_model_the_meta_devices_context_cannot_build_gets_its_weights_on_meta():
    from kdcore.footprint import build_on_meta

    register = torch.nn.Module.register_parameter, torch.nn.Module.register_buffer
    with pytest.raises(RuntimeError, match="meta"), torch.device("meta"):
        _sized_by_tensors()
    model = build_on_meta(_sized_by_tensors)
    assert [t.device.type for t in (*model.parameters(), *model.buffers())] == ["meta"] * 9
    assert [p.shape for p in model.parameters()] == [(3, 4), (3,), (3,), (3,), (6, 3), (6,)]
    assert all(p.requires_grad for p in model.parameters())
    assert (torch.nn.Module.register_parameter, torch.nn.Module.register_buffer) == register
    # a frozen parameter stays frozen, an absent bias absent
    frozen = build_on_meta(lambda: _frozen(_sized_by_tensors()))
    assert [p.requires_grad for p in frozen.parameters()] == [False, True, True, True, True]
    # the registration is the module's own again, after a build that fails there too
    with pytest.raises(ValueError, match="no meta"):
        build_on_meta(_fails_on_meta_twice)
    assert (torch.nn.Module.register_parameter, torch.nn.Module.register_buffer) == register
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"


def _frozen(model):
    first, _, last = model
    frozen = torch.nn.Linear(4, 3, bias=False)
    frozen.weight.requires_grad_(False)
    return torch.nn.Sequential(frozen, first, last)


def _fails_on_meta_twice():
    raise ValueError("no meta here" if torch.empty(0).device.type == "cpu" else "meta")


def test_a_builder_that_fails_for_its_own_reason_is_not_built_twice():
    from kdcore.footprint import build_on_meta

    calls = []

    def fails():
        calls.append(torch.empty(0).device.type)
        raise ValueError("width 0")

    with pytest.raises(ValueError, match="width 0"):
        build_on_meta(fails)
    assert calls == ["meta"]
    # what the meta device cannot run is retried with real tensors
    calls.clear()

    def reads_back():
        calls.append(torch.empty(0).device.type)
        return torch.nn.Linear(int(torch.tensor(2).item()), 1)

    assert build_on_meta(reads_back).weight.device.type == "meta"
    assert calls == ["meta", "cpu"]
