"""Setting a run up from its plan (kdcore/prepare.py), without training: the seeds, the models
(each from its own seed, on the meta device first to see whether it fits), the ledger's first
columns, the memory layout, the refusals of a model that cannot be built and of weights that
do not fit, and a best-validation stage without validation samples."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdcore import hookimpl
from kdcore.errors import KdcoreError, RecipeError
from kdcore.losses import one_hot
from kdcore.models.base import ModelSpec
from kdcore.models.mlp import mlp
from kdcore.plan import build_plan
from kdcore.plugins import PluginHost
from kdcore.prepare import (
    compile_models,
    load_model_checkpoints,
    load_weights_into,
    prepare_run,
)
from kdcore.recipe import recipe_from_dict
from kdcore.runstate import role_seed
from kdcore.testing import component, stage, teacher_stage, tiny_recipe

SOURCE = "/recipes/tiny.toml"


class _Architectures:
    """Architectures whose factories the tests choose."""

    def __init__(self) -> None:
        self.factory = None
        self.calls: list[str] = []  # the device each build ran on

    @hookimpl
    def kdcore_add_models(self):
        def custom(spec, *, width: int = 3):
            self.calls.append(str(torch.empty(0).device))
            return self.factory(spec, width)

        return {"custom": custom}


def _prepare(tmp_path, *stages, plugin=None, models=None, **recipe_fields):
    data = tiny_recipe(*(stages or (teacher_stage(1),)), models=models, train_subset=60,
                       **recipe_fields)
    recipe = recipe_from_dict(data, source=SOURCE)
    host = PluginHost(extra=[plugin] if plugin else [], entry_points=False)
    return prepare_run(build_plan(recipe, host), host, tmp_path)


class _Seq(nn.Sequential):
    """A stack whose last layer is its classifier: ``(logits, features)``, as every kdcore
    architecture returns them."""

    def forward(self, x):
        for layer in list(self)[:-1]:
            x = layer(x)
        return self[-1](x), x


def _custom(**fields):
    return {"student": {"arch": "custom", **fields}}


def _student_stage(**fields):
    return stage("s", 1, ["student"], component("ce"), **fields)


# -- seeds and models -------------------------------------------------------------------------


def test_each_model_starts_from_its_roles_own_seed(tmp_path):
    run = _prepare(tmp_path, seed=7)
    for role, hidden in (("teacher", [32]), ("student", [16])):
        torch.manual_seed(role_seed(7, role))
        fresh = mlp(ModelSpec((64,), 10), hidden=hidden)
        for (name, a), (_, b) in zip(run.models[role].state_dict().items(),
                                     fresh.state_dict().items(), strict=True):
            assert torch.equal(a, b), (role, name)
    alone = _prepare(tmp_path, _student_stage(), seed=7,
                     models={"student": tiny_recipe()["models"]["student"]})
    assert all(torch.equal(a, b) for a, b in zip(alone.models["student"].parameters(),
                                                 run.models["student"].parameters()))


def test_the_global_generator_is_left_seeded_by_the_recipe(tmp_path):
    _prepare(tmp_path, seed=11)
    after = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(after, torch.rand(3))


def test_threads_are_set_only_when_the_recipe_asks(tmp_path, monkeypatch):
    # recorded, not set: a second OpenMP thread in a forked test process (mutmut's) hangs
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    _prepare(tmp_path, run={"threads": 3})
    assert calls == [3]
    _prepare(tmp_path)
    assert calls == [3]


def test_a_model_is_sized_on_the_meta_device_before_it_is_built(tmp_path, monkeypatch):
    plugin = _Architectures()
    plugin.factory = lambda spec, width: _Seq(nn.Linear(spec.input_shape[0], 1000),
                                              nn.Linear(1000, spec.num_classes))
    run = _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom())
    assert plugin.calls == ["meta", "cpu"]
    assert run.models["student"][0].weight.device.type == "cpu"
    # the data's transition matrix and targets fit, 300,040 bytes of weights do not
    monkeypatch.setattr("kdcore.device.free_memory", lambda device: 100_000)
    plugin.calls.clear()
    with pytest.raises(RecipeError) as info:
        _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom())
    assert plugin.calls == ["meta"]  # never built for real
    err = info.value
    assert (err.file, err.key) == (SOURCE, "models.student.params")
    # 64 x 1000 + 1000 x 10 weights and 1000 + 10 biases in float32
    assert err.detail.startswith("model 'student' (its parameters alone) needs 293.0 KiB; "), \
        err.detail
    assert err.detail.endswith("(a smaller model)")


@pytest.mark.parametrize("error", [ValueError("width 0"), TypeError("width 0"),
                                   RuntimeError("width 0")])
def test_a_factory_that_fails_is_blamed_on_the_models_parameters(tmp_path, error):
    plugin = _Architectures()

    def fails(spec, width):
        raise error

    plugin.factory = fails
    with pytest.raises(RecipeError) as info:
        _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom())
    assert (info.value.file, info.value.key, info.value.detail) == (
        SOURCE, "models.student.params", "architecture cannot be built: width 0")


def test_a_factory_may_refuse_in_its_own_words_and_a_bug_is_not_disguised(tmp_path):
    plugin = _Architectures()

    def own(spec, width):
        raise KdcoreError("custom needs images")

    plugin.factory = own
    with pytest.raises(KdcoreError, match="^custom needs images$"):
        _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom())

    def bug(spec, width):
        raise ZeroDivisionError("a bug")

    plugin.factory = bug
    with pytest.raises(ZeroDivisionError):
        _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom())


def test_a_factory_must_return_a_module(tmp_path):
    plugin = _Architectures()
    plugin.factory = lambda spec, width: None
    with pytest.raises(RecipeError) as info:
        _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom())
    assert (info.value.key, info.value.detail) == (
        "models.student.arch", "the architecture of model 'student' returned NoneType None, "
                               "not a torch module (kdcore.KDModel)")


def _convnet(spec, width):
    channels, height, wide = spec.input_shape
    return _Seq(nn.Conv2d(channels, width, 3), nn.Flatten(),
                nn.Linear(width * (height - 2) * (wide - 2), spec.num_classes))


@pytest.mark.parametrize(("setting", "images", "expected"), [
    (True, True, True), (None, True, False), (False, True, False), (True, False, False)])
def test_channels_last_applies_to_image_models_where_asked(tmp_path, setting, images,
                                                           expected):
    plugin = _Architectures()
    plugin.factory = _convnet if images else (
        lambda spec, width: _Seq(nn.Linear(spec.input_shape[0], spec.num_classes)))
    run = _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom(),
                   run={"channels_last": setting},
                   data={"params": {"flatten": not images}})
    assert run.channels_last is expected
    if images:
        weight = run.models["student"][0].weight  # (3, 1, 3, 3): one input channel
        assert weight.stride() == ((9, 1, 3, 1) if expected else (9, 9, 3, 1))


class _LazyNet(nn.Module):
    """An architecture whose first layer learns its input width from the first batch."""

    def __init__(self, spec, width):
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.LazyLinear(width), nn.BatchNorm1d(width))
        self.classifier = nn.Linear(width, spec.num_classes)

    def forward(self, x):
        features = self.trunk(x)
        return self.classifier(features), features


def test_a_lazy_module_gets_its_shapes_from_one_dry_batch_and_its_weights_from_its_seed(
        tmp_path):
    plugin = _Architectures()
    plugin.factory = _LazyNet
    runs = [_prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom(), seed=s)
            for s in (3, 3, 4)]
    model = runs[0].models["student"]
    assert model.trunk[1].weight.shape == (3, 64) and model.training
    norm = model.trunk[2]  # the dry batch ran in evaluation mode: no statistics moved
    assert int(norm.num_batches_tracked) == 0 and torch.equal(norm.running_mean, torch.zeros(3))
    assert torch.equal(model.trunk[1].weight, runs[1].models["student"].trunk[1].weight)
    assert not torch.equal(model.trunk[1].weight, runs[2].models["student"].trunk[1].weight)
    torch.manual_seed(role_seed(3, "student"))
    expected = _LazyNet(ModelSpec((64,), 10), 3)
    expected.eval()
    expected(torch.zeros(1, 64))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), expected.parameters(),
                                                 strict=True))


def test_a_lazy_module_is_sized_on_the_meta_device(tmp_path, monkeypatch):
    plugin = _Architectures()
    plugin.factory = _LazyNet
    monkeypatch.setattr("kdcore.device.free_memory", lambda device: 100_000)
    with pytest.raises(RecipeError) as info:
        _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom(params={
            "width": 1000}))
    assert plugin.calls == ["meta"]  # (64 + 1 + 2 + 10) x 1000 + 10 floats: 300.8 KiB
    assert info.value.detail.startswith("model 'student' (its parameters alone) needs "
                                        "300.8 KiB; ")


class _LazySizedByTensors(_LazyNet):
    """A lazy first layer whose width, and a lazy norm whose statistics, are computed with
    tensors: built with real tensors and sized on the meta device all the same."""

    def __init__(self, spec, width):
        super().__init__(spec, int(torch.tensor(width).item()))
        self.trunk[2] = nn.LazyBatchNorm1d()


def test_a_lazy_module_sized_by_tensors_is_sized_on_the_meta_device(tmp_path, monkeypatch):
    plugin = _Architectures()
    plugin.factory = _LazySizedByTensors
    run = _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom(params={
        "width": 5}), seed=3)
    assert plugin.calls == ["meta", "cpu", "cpu"]
    torch.manual_seed(role_seed(3, "student"))
    expected = _LazySizedByTensors(ModelSpec((64,), 10), 5)
    expected.eval()
    expected(torch.zeros(1, 64))
    assert [p.shape for p in run.models["student"].parameters()] == [
        (5, 64), (5,), (5,), (5,), (10, 5), (10,)]
    assert all(torch.equal(a, b) for a, b in zip(run.models["student"].parameters(),
                                                 expected.parameters(), strict=True))
    monkeypatch.setattr("kdcore.device.free_memory", lambda device: 100_000)
    with pytest.raises(RecipeError) as info:
        _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom(params={
            "width": 1000}))
    assert info.value.detail.startswith("model 'student' (its parameters alone) needs "
                                        "300.8 KiB; "), info.value.detail


def test_a_dry_batch_that_fails_is_blamed_on_the_models_parameters(tmp_path):
    plugin = _Architectures()

    def wrong(spec, width):
        return nn.Sequential(nn.LazyLinear(width), nn.Linear(width + 1, 2))

    plugin.factory = wrong
    with pytest.raises(RecipeError) as info:
        _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom())
    assert info.value.key == "models.student.params"
    assert plugin.calls == ["meta"]  # the sizing's dry batch found it
    detail = info.value.detail  # torch's own words follow
    assert detail.startswith("architecture cannot be built: ") and "[1, 3]" in detail, detail


def test_a_factory_that_fails_only_when_built_for_real_is_named_alike(tmp_path):
    plugin = _Architectures()

    def real_only(spec, width):
        if torch.empty(0).device.type != "meta":
            raise ValueError("no memory for it")
        return _Seq(nn.Linear(spec.input_shape[0], spec.num_classes))

    plugin.factory = real_only
    with pytest.raises(RecipeError) as info:
        _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom())
    assert plugin.calls == ["meta", "cpu"]
    assert (info.value.key, info.value.detail) == ("models.student.params",
                                                   "architecture cannot be built: no memory "
                                                   "for it")
    plugin.factory = lambda spec, width: (_Seq(nn.Linear(spec.input_shape[0], spec.num_classes))
                                          if torch.empty(0).device.type == "meta"
                                          else "a module")
    with pytest.raises(RecipeError) as info:
        _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom())
    assert info.value.detail == ("the architecture of model 'student' returned str 'a module', "
                                 "not a torch module (kdcore.KDModel)")


def test_a_cpu_run_of_several_processes_stays_on_the_cpu(tmp_path, monkeypatch):
    from kdcore import distributed

    monkeypatch.setattr(distributed, "_world", distributed.World(1, 2, 1))
    run = _prepare(tmp_path)
    assert run.device == torch.device("cpu") and run.run_dir == tmp_path


# -- the ledger -------------------------------------------------------------------------------


def test_the_ledger_starts_with_the_labels_and_one_hot_targets(tmp_path):
    run = _prepare(tmp_path)
    data, ledger = run.data, run.ledger
    assert ledger.size == len(data.train) == 60
    assert list(ledger) == ["noisy_label", "clean_label", "clean_mask", "base_target", "target"]
    expected = {
        "noisy_label": (data.train_noisy, "data", "label", False),
        "clean_label": (data.train.y, "data", "label", False),
        "clean_mask": (data.train_noisy == data.train.y, "data", "mask", False),
        "base_target": (one_hot(data.train_noisy, 10), "labels", "target", False),
        "target": (one_hot(data.train_noisy, 10), "labels", "target", True),
    }
    for name, (values, producer, kind, snapshot) in expected.items():
        column = ledger.column(name)
        assert torch.equal(column.data, values), name
        assert (column.producer, column.kind, column.snapshot) == (producer, kind, snapshot)
    assert not torch.equal(ledger["clean_mask"], torch.ones(60, dtype=torch.bool))  # noise
    assert ledger["target"] is not ledger["base_target"]  # a refiner's writes stay its own


# -- a stage that keeps its best validation epoch ---------------------------------------------


@pytest.mark.parametrize(("keep", "epochs", "refused"), [
    ("best_val", 1, True), ("best_val_all", 1, True), ("last", 1, False), ("best_val", 0, False)])
def test_keeping_the_best_validation_epoch_needs_validation_samples(tmp_path, keep, epochs,
                                                                   refused):
    stages = (teacher_stage(1) | {"keep": "last"}, _student_stage(keep=keep) | {"epochs": epochs})
    _prepare(tmp_path, *stages, data={"val_fraction": 0.1})  # with some: accepted
    if not refused:
        _prepare(tmp_path, *stages, data={"val_fraction": 0.0})
        return
    with pytest.raises(RecipeError) as info:
        _prepare(tmp_path, *stages, data={"val_fraction": 0.0})
    assert (info.value.file, info.value.key) == (SOURCE, "stages[1].keep")
    assert info.value.detail == (
        f"'{keep}' keeps the epoch with the best validation accuracy, but the validation split "
        "is empty; use keep = \"last\", or raise data.val_fraction")


def test_a_data_refusal_names_the_recipe_file(tmp_path):
    with pytest.raises(RecipeError) as info:
        _prepare(tmp_path, data={"test_fraction": 0.001})
    assert (info.value.file, info.value.key) == (SOURCE, "data.test_fraction")


# -- weights from a file, compiling -----------------------------------------------------------


def test_checkpoint_weights_are_loaded_into_their_role_only(tmp_path):
    from kdcore.checkpoint import save_weights

    source = _prepare(tmp_path, seed=1)
    path = tmp_path / "teacher.pt"
    save_weights(source.models["teacher"], path)
    models = tiny_recipe()["models"]
    models["teacher"]["checkpoint"] = str(path)
    run = _prepare(tmp_path, seed=2, models=models)
    fresh = _prepare(tmp_path, seed=2)
    load_model_checkpoints(run)
    for a, b in zip(run.models["teacher"].parameters(), source.models["teacher"].parameters()):
        assert torch.equal(a, b)
    for a, b in zip(run.models["student"].parameters(), fresh.models["student"].parameters()):
        assert torch.equal(a, b)


def test_a_role_is_loaded_from_a_whole_run_checkpoint_by_its_name(tmp_path):
    from kdcore.checkpoint import save

    source = _prepare(tmp_path, seed=1)
    path = tmp_path / "ckpt.pt"
    save({"models": {role: m.state_dict() for role, m in source.models.items()}}, path)
    models = tiny_recipe()["models"]
    models["student"]["checkpoint"] = str(path)
    run = _prepare(tmp_path, seed=2, models=models)
    load_model_checkpoints(run)
    for a, b in zip(run.models["student"].parameters(), source.models["student"].parameters()):
        assert torch.equal(a, b)


def test_checkpoint_weights_that_do_not_fit_name_the_role_and_the_file(tmp_path):
    from kdcore.checkpoint import save_weights

    path = tmp_path / "small.pt"
    save_weights(nn.Linear(64, 10), path)
    models = tiny_recipe()["models"]
    models["teacher"]["checkpoint"] = str(path)
    run = _prepare(tmp_path, models=models)
    with pytest.raises(KdcoreError) as info:
        load_model_checkpoints(run)
    assert str(info.value).startswith(f"weights for model 'teacher' from {path} do not fit "
                                      "it: Error(s) in loading state_dict for MLP: ")


def test_a_disabled_roles_checkpoint_is_not_read(tmp_path):
    models = tiny_recipe()["models"]
    models["teacher"] |= {"checkpoint": str(tmp_path / "missing.pt"), "enabled": False}
    run = _prepare(tmp_path, _student_stage(), models=models)
    load_model_checkpoints(run)  # a missing file would be refused
    assert "teacher" not in run.models  # no model to load it into either
    models["teacher"]["enabled"] = True
    with pytest.raises(KdcoreError, match="checkpoint for model 'teacher' not found"):
        load_model_checkpoints(_prepare(tmp_path, _student_stage(), models=models))


def test_weights_that_do_not_fit_are_refused_in_one_line():
    model = nn.Linear(3, 2)
    with pytest.raises(KdcoreError) as info:
        load_weights_into(model, {"weight": torch.zeros(2, 3)}, "teacher", "w.pt")
    assert str(info.value) == ("weights for model 'teacher' from w.pt do not fit it: Error(s) "
                               "in loading state_dict for Linear: Missing key(s) in state_dict: "
                               "\"bias\".")
    many = {f"extra{i}": torch.zeros(1) for i in range(100)} | model.state_dict()
    with pytest.raises(KdcoreError) as info:
        load_weights_into(model, many, "teacher", "w.pt")
    message = str(info.value)
    prefix = "weights for model 'teacher' from w.pt do not fit it: "
    assert message.startswith(prefix) and len(message) == len(prefix) + 300
    assert "\n" not in message
    with pytest.raises(KdcoreError, match="do not fit it"):
        load_weights_into(model, {"weight": "not a tensor", "bias": torch.zeros(2)}, "t", "w")


def test_a_three_line_error_is_joined_and_a_fourth_line_left_out():
    class Picky(nn.Module):
        def load_state_dict(self, state, strict=True, assign=False):
            raise RuntimeError("  one\n two \n\nthree\nfour")

    with pytest.raises(KdcoreError) as info:
        load_weights_into(Picky(), {}, "r", "f")
    assert str(info.value) == "weights for model 'r' from f do not fit it: one two "


def test_models_are_compiled_only_when_the_recipe_asks(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self: compiled.append(self))
    run = _prepare(tmp_path)
    compile_models(run)
    assert compiled == []
    run = _prepare(tmp_path, run={"compile": True})
    compile_models(run)
    assert compiled == [run.models["teacher"], run.models["student"]]


# -- a model that cannot take the data's inputs -------------------------------------------------


class _FixedWidth(nn.Module):
    """Takes inputs of ``width`` features only, as a ViT takes 224 pixels only."""

    def __init__(self, spec, width):
        super().__init__()
        self.trunk, self.classifier = nn.Linear(width, 5), nn.Linear(5, spec.num_classes)

    def forward(self, x):
        features = self.trunk(x)
        return self.classifier(features), features


class _Classes(_FixedWidth):
    """Gives ``width`` logits, whatever the dataset's classes."""

    def __init__(self, spec, width):
        super().__init__(spec, spec.input_shape[0])
        self.classifier = nn.Linear(5, width)


class _Draws(_FixedWidth):
    """Draws from the global CPU generator and reads a value back (``.item()``), which the
    meta device cannot: the dry pass leaves both alone."""

    def __init__(self, spec, width):
        super().__init__(spec, spec.input_shape[0])

    def forward(self, x):
        if torch.rand((), device="cpu") < 2 and x.sum().item() >= 0:
            return super().forward(x)
        raise AssertionError("unreachable")


class _SizedByTensors(_Seq):
    """Computes its widths with tensors and reads them back (``.tolist()``), as torchvision's
    RegNet does: the meta device's context cannot build it ("Cannot copy out of meta
    tensor")."""

    def __init__(self, spec, width):
        first, second = (torch.arange(1, 3) * width).tolist()
        super().__init__(nn.Linear(spec.input_shape[0], first), nn.BatchNorm1d(first),
                         nn.Linear(first, second), nn.Linear(second, spec.num_classes))


def test_a_model_that_computes_its_sizes_with_tensors_is_sized_before_it_is_built(
        tmp_path, monkeypatch):
    """It was refused ("architecture cannot be built: Cannot copy out of meta tensor; no
    data!"), though it trains: every torchvision RegNet was."""
    plugin = _Architectures()
    plugin.factory = _SizedByTensors
    run = _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom(params={
        "width": 20}))
    # the meta device's context, then its weights sent there as registered, then for real
    assert plugin.calls == ["meta", "cpu", "cpu"]
    assert [m.weight.shape for m in run.models["student"] if isinstance(m, nn.Linear)] == [
        (20, 64), (40, 20), (10, 40)]
    assert run.models["student"][1].running_mean.device.type == "cpu"
    # sized without its weights: refused with what they need, never built for real
    monkeypatch.setattr("kdcore.device.free_memory", lambda device: 100_000)
    plugin.calls.clear()
    with pytest.raises(RecipeError) as info:
        _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom(params={
            "width": 1000}))
    assert plugin.calls == ["meta", "cpu"]
    # Linear 64->1000, BatchNorm's 2 x 1000, Linear 1000->2000, Linear 2000->10, in float32
    weights = 64 * 1000 + 1000 + 2 * 1000 + 1000 * 2000 + 2000 + 2000 * 10 + 10
    assert info.value.detail.startswith(
        f"model 'student' (its parameters alone) needs {weights * 4 / 2**20:.1f} MiB; "), \
        info.value.detail


def test_every_torchvision_regnet_is_accepted_by_check(tmp_path):
    """The torchvision family that sizes its stages with tensors, on 8x8 images."""
    from click.testing import CliRunner

    from kdcore.cli import main
    from kdcore.testing import write_recipe

    data = tiny_recipe(_student_stage(), models={"student": {
        "arch": "torchvision", "params": {"name": "regnet_x_400mf"}}}, train_subset=60,
        data={"params": {"flatten": False}})
    path = write_recipe(data, tmp_path / "regnet.toml")
    for name in ("regnet_x_400mf", "regnet_y_400mf"):
        result = CliRunner().invoke(main, ["check", str(path), "--set",
                                           f"models.student.params.name={name!r}"])
        assert result.exit_code == 0, result.output


def test_a_model_that_cannot_take_the_inputs_is_refused_before_it_is_built(tmp_path):
    plugin = _Architectures()
    plugin.factory = _FixedWidth
    with pytest.raises(RecipeError) as info:
        _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom())
    assert plugin.calls == ["meta"]
    assert (info.value.file, info.value.key) == (SOURCE, "models.student.arch")
    assert info.value.detail == (
        "model 'student' cannot take the data's inputs of shape (64,): RuntimeError: a and b "
        "must have same reduction dim, but got [2, 64] X [3, 5]; use an architecture made for "
        "inputs of this size, or inputs resized to fit it")
    run = _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom(params={
        "width": 64}))
    assert plugin.calls == ["meta", "meta", "cpu"] and run.models["student"].training


@pytest.mark.parametrize("width", [3, 11])
def test_a_model_whose_logits_are_not_one_per_class_is_refused(tmp_path, width):
    plugin = _Architectures()
    plugin.factory = _Classes
    with pytest.raises(RecipeError) as info:
        _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom(params={
            "width": width}))
    assert (info.value.key, info.value.detail) == (
        "models.student.arch", f"model 'student' gives logits of shape (2, {width}) for a batch "
        "of 2 inputs, not (2, 10): one per class of the dataset")
    assert _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom(params={
        "width": 10})).models["student"].classifier.out_features == 10


def test_what_the_meta_device_cannot_run_leaves_a_model_accepted_and_the_generator_alone(
        tmp_path):
    plugin = _Architectures()
    plugin.factory = _Draws
    run = _prepare(tmp_path, _student_stage(), plugin=plugin, models=_custom(), seed=5)
    assert plugin.calls == ["meta", "cpu"]
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # the dry pass's draw was put back
    logits, _ = run.models["student"](torch.zeros(2, 64))
    assert logits.shape == (2, 10)


class _Returns(nn.Module):
    """Returns what ``shape`` makes of its logits and features: the KDModel contract broken."""

    def __init__(self, spec, width):
        super().__init__()
        self.classifier, self.width = nn.Linear(spec.input_shape[0], spec.num_classes), width

    def forward(self, x):
        logits = self.classifier(x)
        return {0: logits, 1: (logits, x, x), 2: (logits, x.reshape(len(x), 8, 8)),
                3: (logits, x[:1]), 4: [logits, x], 5: (logits, "x"),
                6: (logits.long(), x), 7: (logits.to(torch.bool), x),
                8: (logits.double(), x)}[self.width]


@pytest.mark.parametrize(("width", "detail"), [
    (0, "model 'student' returns a Tensor for a batch, not (logits, features) as kdcore.KDModel "
        "does (features: its classifier's input)"),
    (1, "model 'student' returns a tuple of 3 for a batch, not (logits, features) as "
        "kdcore.KDModel does (features: its classifier's input)"),
    (5, "model 'student' returns a tuple of 2 for a batch, not (logits, features) as "
        "kdcore.KDModel does (features: its classifier's input)"),
    (2, "model 'student' gives features of shape (2, 8, 8) for a batch of 2 inputs, not (2, d): "
        "one vector per input, its classifier's input"),
    (3, "model 'student' gives features of shape (1, 64) for a batch of 2 inputs, not (2, d): "
        "one vector per input, its classifier's input"),
    (4, None),  # a list of the two is taken as the pair
    (6, "model 'student' gives logits of dtype torch.int64; expected floating point numbers (a "
        "softmax is taken of them)"),
    (7, "model 'student' gives logits of dtype torch.bool; expected floating point numbers (a "
        "softmax is taken of them)"),
    (8, None),  # float64: a softmax takes them
])
def test_a_model_that_does_not_return_logits_and_features_is_refused(tmp_path, width, detail):
    plugin = _Architectures()
    plugin.factory = _Returns
    models = _custom(params={"width": width})
    if detail is None:
        assert _prepare(tmp_path, _student_stage(), plugin=plugin, models=models).models
        return
    with pytest.raises(RecipeError) as info:
        _prepare(tmp_path, _student_stage(), plugin=plugin, models=models)
    assert (info.value.key, info.value.detail) == ("models.student.arch", detail)
    assert plugin.calls == ["meta"]


# -- what a component reads of a model -------------------------------------------------------


class _ReadsHead:
    """A component that reads a model's ``feature_dim`` and ``classifier``, as MLC and LSH do."""

    from kdcore import hookimpl

    @hookimpl
    def kdcore_add_components(self):
        import kdcore

        class ReadsHead(kdcore.Component):
            description = "test component that reads what kdcore.KDModel has"
            model_attributes = ("classifier", "feature_dim")

            def transfer(self, ctx, batch):
                return torch.zeros(len(batch))

        return {"reads_head": ReadsHead}


def test_a_model_without_what_a_component_reads_of_it_is_refused_before_set_up(tmp_path):
    """A plugin's model that is an nn.Module returning (logits, features) but no
    kdcore.KDModel passed check; MLC's and LSH's set-up then stopped with an AttributeError
    ("'Net' object has no attribute 'feature_dim'", exit 1)."""
    plugin = _Architectures()
    plugin.factory = lambda spec, width: _Seq(nn.Linear(64, width), nn.Linear(width, 10))

    def prepared(models, *components):
        data = tiny_recipe(stage("s", 1, ["student"], component("ce"), *components),
                           models=models, train_subset=60)
        host = PluginHost(extra=[plugin, _ReadsHead()], entry_points=False)
        return prepare_run(build_plan(recipe_from_dict(data, source=SOURCE), host), host,
                           tmp_path)

    prepared(_custom())  # nothing reads it: a plain module serves
    with pytest.raises(RecipeError) as info:
        prepared(_custom(), component("reads_head"))
    assert (info.value.file, info.value.key, info.value.detail) == (
        SOURCE, "models.student.arch", "component 'reads_head' (reads_head) reads "
        "'classifier', 'feature_dim' of model 'student', which its architecture's _Seq does "
        "not have; derive it from kdcore.KDModel (a classifier nn.Linear, feature_dim, "
        "forward_features)")
    # a kdcore.KDModel has both
    mlp_student = {"student": tiny_recipe()["models"]["student"]}
    prepared(mlp_student, component("reads_head"))
