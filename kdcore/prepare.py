"""Setting a run up from its plan: data, models, ledger; the same for ``kdcore check``.

:func:`prepare_run` does everything but training. ``kdcore check`` calls it too (then sets up
every stage's components and stops), so whatever could fail while a run is being set up fails
under ``check`` first, with the same message.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kdcore import checkpoint as ckpt
from kdcore import distributed
from kdcore.batching import batches_per_epoch
from kdcore.build import architecture_frozen
from kdcore.device import check_fits, resolve_device
from kdcore.errors import KdcoreError, RecipeError, one_line, shown
from kdcore.footprint import (
    Activations,
    build_on_meta,
    check_training_fits,
    held_per_row,
    meta_cannot_run,
    saved_per_row,
)
from kdcore.ledger import Ledger
from kdcore.losses import one_hot
from kdcore.models.base import ModelSpec
from kdcore.plan import RunPlan
from kdcore.plugins import PluginHost
from kdcore.recipe import Recipe
from kdcore.rundata import RunData, build_run_data
from kdcore.runstate import Run, augmentation_changed, role_seed
from kdcore.torch_state import make_deterministic


def prepare_run(plan: RunPlan, host: PluginHost, run_dir: Path) -> Run:
    """Seed, load and split the data, build the models and the ledger.

    Raises:
        KdcoreError: data that cannot be loaded, a model that cannot be built or would not fit
            in memory, a checkpoint that does not fit its model.
    """
    recipe = plan.recipe
    if recipe.run.threads:
        torch.set_num_threads(recipe.run.threads)
    if recipe.run.deterministic:  # before any kernel runs: cuBLAS reads its workspace setting
        make_deterministic()
    torch.manual_seed(recipe.run.seed)
    device = resolve_device(recipe.run.device)
    if device.type == "cuda" and distributed.world().size > 1:
        device = distributed.local_gpu()  # one GPU per process
    run = Run(recipe, run_dir, device, plan.augmentations)
    try:
        run.data = data = build_run_data(recipe.data, host, recipe.run.seed, device)
    except RecipeError as exc:
        raise exc.at(file=recipe.source) from None
    _check_validation(recipe, len(data.val))
    spec = ModelSpec(tuple(data.train.input_shape), data.num_classes)
    channels_last = recipe.run.channels_last
    if channels_last is None:
        channels_last = device.type == "cuda"
    try:  # every model sized (on the meta device) before any is built
        sized = {role: _check_fits(role, factory, spec, params, device)
                 for role, (factory, params) in plan.models.items()}
        check_training_fits(recipe, {r: size for r, (size, _, _) in sized.items()}, device,
                            _batch_activations(recipe, data, sized))
    except RecipeError as exc:
        raise exc.at(file=recipe.source) from None
    for role, (factory, params) in plan.models.items():
        try:
            model = _build_model(role, factory, spec, params, recipe.run.seed).to(device)
        except RecipeError as exc:
            raise exc.at(file=recipe.source) from None
        if channels_last and len(spec.input_shape) == 3:  # images (C, H, W): conv nets
            model = model.to(memory_format=torch.channels_last)
        run.models[role] = model
        run.fixed_parameters[role] = _check_trainable(recipe, role, model)
    run.channels_last = bool(channels_last) and len(spec.input_shape) == 3
    _check_model_attributes(plan, run)
    _check_batch_norm_batches(recipe, run)
    run.ledger = ledger = Ledger(len(data.train), device)
    ledger.add("noisy_label", data.train_noisy, producer="data", kind="label", snapshot=False)
    ledger.add("clean_label", data.train.y, producer="data", kind="label", snapshot=False)
    ledger.add("clean_mask", data.train_noisy == data.train.y, producer="data", kind="mask",
               snapshot=False)
    # base_target: the epoch-level targets (label propagation writes them); target: what
    # each sample was trained on this epoch, after the batch-level refinement chain
    noisy_one_hot = one_hot(data.train_noisy, data.num_classes)
    ledger.add("base_target", noisy_one_hot, producer="labels", kind="target", snapshot=False)
    ledger.add("target", noisy_one_hot, producer="labels", kind="target")
    return run


def compile_models(run: Run) -> None:
    """``run.compile``: compile each model in place (``nn.Module.compile``), after its
    structure is final and its weights are loaded, so names and checkpoints are unchanged."""
    if run.recipe.run.compile:
        for model in run.models.values():
            model.compile()


def load_model_checkpoints(run: Run) -> None:
    """Load each role's ``checkpoint`` weights (after ``adapt_models``: a saved connector
    fits); weights that do not fit the model are refused with the role and the keys."""
    for role, cfg in run.recipe.models.items():
        if cfg.enabled and cfg.checkpoint:
            load_weights_into(run.models[role], ckpt.load_weights(cfg.checkpoint, role), role,
                              cfg.checkpoint)
            run.models[role].to(run.device)


def load_weights_into(model: nn.Module, state: dict[str, torch.Tensor], role: str,
                      source: str | Path) -> None:
    """``model.load_state_dict(state)``, strict, as one line naming what is missing."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise KdcoreError(f"weights for model '{role}' from {source} do not fit it: "
                          f"{detail[:300]}") from None


def _build_model(role: str, factory: object, spec: ModelSpec, params: dict[str, object],
                 seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(role_seed(seed, role))
        model = _call_factory(role, factory, spec, params)
    return model


def _call_factory(role: str, factory: object, spec: ModelSpec, params: dict[str, object]
                  ) -> nn.Module:
    try:
        model = factory(spec, **params)  # type: ignore[operator]
        if isinstance(model, nn.Module) and any(
                isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
            _materialise(model, spec)
    except KdcoreError:
        raise
    except (ValueError, TypeError, RuntimeError) as exc:
        raise RecipeError(f"architecture cannot be built: {exc}",
                          key=f"models.{role}.params") from None
    if not isinstance(model, nn.Module):
        raise RecipeError(f"the architecture of model '{role}' returned {shown(model)}, not a "
                          "torch module (kdcore.KDModel)", key=f"models.{role}.arch")
    return model


def _materialise(model: nn.Module, spec: ModelSpec) -> None:
    """Give a lazy module (``nn.LazyLinear``) its shapes with one dry batch, in evaluation
    mode (batch-norm statistics untouched): its size is then known before it is built for real
    (this runs on the meta device too), its weights are drawn from the role's seed like any
    other model's, and its optimiser gets real parameters."""
    training = model.training
    model.eval()
    # on its parameters' device: the meta device where a model built with real tensors is
    # sized (kdcore.footprint.build_on_meta)
    device = next(model.parameters()).device
    with torch.no_grad():
        model(torch.zeros(1, *spec.input_shape, device=device))
    model.train(training)


def _check_model_attributes(plan: RunPlan, run: Run) -> None:
    """Each model a component names has the attributes the component reads of it
    (:attr:`Component.model_attributes`): a plugin's model that is an ``nn.Module`` but no
    ``kdcore.KDModel`` passed ``check``, and MLC's or LSH's set-up stopped on it."""
    for stage in plan.stages:
        for comp in stage.components:
            for role in dict.fromkeys((*comp.models, *comp.roles())):
                model = run.models.get(role)
                missing = [a for a in comp.model_attributes if not hasattr(model, a)]
                if model is not None and missing:
                    raise RecipeError(
                        f"component '{comp.name}' ({comp.spec.use}) reads "
                        f"{', '.join(repr(a) for a in missing)} of model '{role}', which its "
                        f"architecture's {type(model).__name__} does not have; derive it from "
                        "kdcore.KDModel (a classifier nn.Linear, feature_dim, "
                        "forward_features)", file=run.recipe.source, key=f"models.{role}.arch")


def _check_trainable(recipe: Recipe, role: str, model: nn.Module) -> frozenset[str]:
    """The parameters ``role``'s architecture builds frozen, which no stage trains; a model
    with parameters, every one frozen, that a stage trains is refused: it would learn
    nothing."""
    fixed = architecture_frozen(model)
    trained = any(role in stage.train for stage in recipe.stages)
    if trained and fixed and len(fixed) == sum(1 for _ in model.parameters()):
        raise RecipeError(f"model '{role}' is built with every parameter frozen "
                          "(requires_grad = False), so a stage that trains it has nothing to "
                          "learn; take it out of the stage's train list (it can still serve "
                          "as a fixed teacher), or build some of its parameters trainable",
                          file=recipe.source, key=f"models.{role}.arch")
    return fixed


def _check_validation(recipe: Recipe, samples: int) -> None:
    """A stage that keeps its best-validation epoch needs validation samples: without any,
    every epoch's accuracy is NaN and the "best" would be whichever epoch came first."""
    if samples:
        return
    fraction = recipe.data.val_fraction
    why = (f" (data.val_fraction = {fraction:g} is taken of each class and rounded: of classes "
           "this small it rounds to no sample)" if fraction else "")
    for s, stage in enumerate(recipe.stages):
        if stage.keep != "last" and stage.epochs:
            raise RecipeError(
                f"'{stage.keep}' keeps the epoch with the best validation accuracy, but the "
                f"validation split is empty{why}; use keep = \"last\", or raise "
                "data.val_fraction", file=recipe.source, key=f"stages[{s}].keep")


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _check_batch_norm_batches(recipe: Recipe, run: Run) -> None:
    """BatchNorm cannot train on one row ("Expected more than 1 value per channel when
    training"): a trained model with BatchNorm whose smallest batch, or a process's share of
    one, would hold fewer than two rows is refused now rather than at its first such batch."""
    n, size, world = len(run.data.train), recipe.data.batch_size, distributed.world().size
    if not n:
        return
    count = batches_per_epoch(n, size)
    last = n - (count - 1) * size  # a lone batch holds every row, up to size + 1 of them
    smallest = (last if count == 1 else min(size, last)) // world
    if smallest >= 2:
        return
    trained = {role for stage in recipe.stages for role in stage.train}
    for role in sorted(trained & set(run.models)):
        if any(isinstance(m, _BATCH_NORMS) for m in run.models[role].modules()):
            shared = f" shared by {world} processes" if world > 1 else ""
            raise RecipeError(
                f"model '{role}' has BatchNorm layers, which cannot train on fewer than 2 "
                f"rows, and {n} training samples in batches of {size}{shared} give a batch "
                f"{'share ' if world > 1 else ''}of {smallest}; choose another data.batch_size",
                file=recipe.source, key="data.batch_size")


def _batch_activations(recipe: Recipe, data: RunData,
                       sized: dict[str, tuple[int, int | None, int | None]]) -> Activations:
    """The bytes a row of a training and of an evaluation batch holds for each model
    (:func:`_check_fits`), and a process's rows of the largest of each: the splits every epoch
    evaluates (validation and test) are cut in consecutive slices among the processes."""
    evaluated = min(max(len(data.val), len(data.test)), recipe.data.eval_batch_size)
    return Activations(saved={r: saved for r, (_, saved, _) in sized.items()},
                       held={r: held for r, (_, _, held) in sized.items()},
                       train_rows=_largest_batch_share(len(data.train), recipe.data.batch_size),
                       eval_rows=-(-evaluated // distributed.world().size))


def _largest_batch_share(n: int, size: int) -> int:
    """The rows of the largest batch of ``n`` rows a process computes: a lone batch holds
    every row, a last batch of one row joins the one before, and a batch is cut near-equally
    among the processes."""
    count = batches_per_epoch(n, size)
    largest = n if count <= 1 else max(size, n - (count - 1) * size)
    return -(-largest // distributed.world().size)


def _check_fits(role: str, factory: object, spec: ModelSpec, params: dict[str, object],
                device: torch.device) -> tuple[int, int | None, int | None]:
    """Build the model on the meta device (no memory) and refuse one too large to train, or
    one that cannot take the data's inputs; its parameters' bytes, and the bytes a row of a
    training and of an evaluation batch hold (:mod:`kdcore.footprint`)."""
    model = build_on_meta(lambda: _call_factory(role, factory, spec, params))
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    # gradients and optimiser state take as much again
    check_fits(f"model '{role}' (its parameters alone)", size, device, "a smaller model",
               key=f"models.{role}.params")
    _check_takes_inputs(role, model, spec)
    return (size, saved_per_row(model, spec.input_shape),
            held_per_row(model, spec.input_shape))


def _check_takes_inputs(role: str, model: nn.Module, spec: ModelSpec) -> None:
    """A training-mode forward pass of two inputs on the meta device, where shapes propagate
    without memory or arithmetic: a model that cannot take the data's input shape (a ViT's
    fixed 224 pixels, pooling that shrinks 8 pixels to none), or does not return
    ``(logits, features)`` of shapes ``(B, C)`` and ``(B, d)``, is refused now, not at its
    first batch. An operation the meta device cannot run (a ``.item()``, a data-dependent
    shape) leaves the question open: not refused."""
    model.train()
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"), torch.no_grad():
            out = model(torch.zeros(2, *spec.input_shape))
    except KdcoreError:
        raise
    except Exception as exc:  # whatever the architecture raises on these shapes
        if meta_cannot_run(exc):
            return
        raise RecipeError(
            f"model '{role}' cannot take the data's inputs of shape {tuple(spec.input_shape)}: "
            f"{type(exc).__name__}: {one_line(exc).rstrip('.')}; use an architecture made for "
            "inputs of this size, or inputs resized to fit it", key=f"models.{role}.arch"
        ) from None
    if not (isinstance(out, tuple | list) and len(out) == 2
            and all(isinstance(t, torch.Tensor) for t in out)):
        what = (f"{type(out).__name__} of {len(out)}" if isinstance(out, tuple | list)
                else type(out).__name__)
        raise RecipeError(f"model '{role}' returns a {what} for a batch, not (logits, features) "
                          "as kdcore.KDModel does (features: its classifier's input)",
                          key=f"models.{role}.arch")
    logits, features = out
    if tuple(logits.shape) != (2, spec.num_classes):
        raise RecipeError(
            f"model '{role}' gives logits of shape {tuple(logits.shape)} for a batch of 2 "
            f"inputs, not (2, {spec.num_classes}): one per class of the dataset",
            key=f"models.{role}.arch")
    if not logits.is_floating_point():  # the first loss term failed on them, and was blamed
        raise RecipeError(
            f"model '{role}' gives logits of dtype {logits.dtype}; expected floating point "
            "numbers (a softmax is taken of them)", key=f"models.{role}.arch")
    if features.dim() != 2 or len(features) != 2:
        raise RecipeError(
            f"model '{role}' gives features of shape {tuple(features.shape)} for a batch of 2 "
            "inputs, not (2, d): one vector per input, its classifier's input",
            key=f"models.{role}.arch")


def check_augmentations(run: Run) -> None:
    """Each augmentation applied in turn to two training inputs, as a batch meets them: one
    that cannot take these inputs, or returns something of another shape, dtype or device,
    is refused now, naming it (it was the first batch's error, blamed on a loss term)."""
    train = run.data.train
    if not (run.augmentations and len(train)):
        return
    x = run.data.inputs(train, torch.arange(min(2, len(train)), device=run.device))
    generator = torch.Generator().manual_seed(0)  # on the CPU, as the training loop's
    # one that draws from torch's global generators leaves the run's draws as they were
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        for i, (fn, params) in enumerate(run.augmentations):
            try:
                out = fn(x, generator, **params)
            except RecipeError:
                raise
            except KdcoreError as exc:  # its own refusal of these inputs: said where it is set
                raise RecipeError(str(exc), file=run.recipe.source,
                                  key=f"data.augment[{i}]") from None
            except Exception as exc:  # whatever the augmentation raises on these inputs
                raise RecipeError(
                    f"augmentation '{run.recipe.data.augment[i].name}' cannot take the data's "
                    f"inputs ({x.dtype} {tuple(x.shape)}): {type(exc).__name__}: "
                    f"{one_line(exc).rstrip('.')}", file=run.recipe.source,
                    key=f"data.augment[{i}].name") from None
            if not (isinstance(out, torch.Tensor) and out.shape == x.shape
                    and out.dtype == x.dtype and out.device == x.device):
                raise augmentation_changed(run.recipe, i, x, out)
            if out.is_floating_point() and bool(x.isfinite().all()) and not bool(
                    out.isfinite().all()):  # blamed on the loss term the first batch made NaN
                raise RecipeError(
                    f"augmentation '{run.recipe.data.augment[i].name}' made values that are "
                    f"not finite (NaN or infinite) of finite inputs ({x.dtype} "
                    f"{tuple(x.shape)})", file=run.recipe.source, key=f"data.augment[{i}].name")
            x = out


__all__ = ["check_augmentations", "compile_models", "load_model_checkpoints", "load_weights_into",
           "prepare_run"]
