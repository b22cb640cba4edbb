"""The memory a run's models hold while they train, reckoned before any is built.

A model whose parameters fit can still not train: its gradients, its optimiser's state and the
best weights a stage keeps are each as large again, for every model of the run at once; a
training step holds the activations its forward pass saves for the backward pass, and an
evaluation batch its largest layer's input and output, both growing with the batch. Past the
free memory, the kernel's out-of-memory killer ended the run with a SIGKILL (exit 137, no
message at all), at its first step or, for an evaluation batch, after its first epoch had
trained; :func:`check_training_fits` refuses such a recipe first, under ``kdcore check`` too.
The activations are lower bounds (a training step's peak on the CPU was 1.15-1.73 times what
its forward pass saves, on MLPs, a CNN and a ResNet-20: ``benchmarks/activation_peak.py``);
the reckoning leaves out the training set's feature passes (label propagation's), the forward
passes of models a stage does not train, a component's own extra passes (mixup's) and its
state, which :data:`TRAINING_SHARE` leaves room for.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import attrs
import torch
from torch import nn

from kdcore import device as devices
from kdcore.errors import RecipeError, byte_size
from kdcore.recipe import Recipe

TRAINING_SHARE = 0.8
"""The share of the free memory the models' weights, gradients, optimiser state and kept
best weights may plan to take; the rest is for what is not reckoned."""


Built = TypeVar("Built")


def meta_cannot_run(exc: BaseException) -> bool:
    """Whether ``exc`` says that the meta device could not run an operation (a ``.item()``, a
    ``.tolist()``, a data-dependent shape), rather than that the model is wrong."""
    return isinstance(exc, NotImplementedError) or "meta" in str(exc).lower()


def build_on_meta(build: Callable[[], Built]) -> Built:
    """``build()`` with its weights on the meta device, taking no memory: built in the meta
    device's context, where every tensor is meta. A model that computes its layers' sizes with
    tensors (torchvision's RegNet: ``torch.arange(depth) ... .tolist()``) cannot be built
    there ("Cannot copy out of meta tensor"), and was refused though it trains; it is built
    again with real tensors, each parameter and buffer sent to the meta device as it is
    registered (the weights' own memory is then never written)."""
    try:
        with torch.device("meta"):
            return build()
    except Exception as exc:  # whatever the builder raises; its own error is raised again
        if not meta_cannot_run(exc):
            raise
    with _weights_to_meta():
        return build()


@contextlib.contextmanager
def _weights_to_meta() -> Iterator[None]:
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if isinstance(param, nn.UninitializedParameter):  # a lazy module's: shaped on meta
            param = nn.UninitializedParameter(param.requires_grad, device="meta")
        elif param is not None:
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register_parameter(module, name, param)

    def buffer(module: nn.Module, name: str, tensor: torch.Tensor | None,
               persistent: bool = True) -> None:
        if isinstance(tensor, nn.UninitializedBuffer):
            tensor = nn.UninitializedBuffer(device="meta")
        elif tensor is not None:
            tensor = tensor.to("meta")
        register_buffer(module, name, tensor, persistent)

    nn.Module.register_parameter = parameter  # type: ignore[method-assign]
    nn.Module.register_buffer = buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


def weight_copies(recipe: Recipe, role: str) -> dict[str, int]:
    """What a run holds of tensors as large as ``role``'s parameters, by what they are: the
    weights; where a stage trains the role, their gradients and the optimiser's state (SGD's
    momentum buffer, none without momentum; Adam's two moments); and the best weights kept: one
    where a stage that trains the role keeps ``"best_val"`` (each stage's until its end), one
    more for ``"best_val_all"`` (the best over every stage, to the run's end)."""
    training = [st for st in recipe.stages if role in st.train]
    if not training:
        return {"weights": 1}
    opt = recipe.models[role].optimizer
    state = 2 if opt.name in ("adam", "adamw") else int(opt.momentum > 0)
    kept = (any(st.keep == "best_val" for st in training)
            + any(st.keep == "best_val_all" for st in training))
    return {"weights": 1, "gradients": 1, "optimiser state": state, "kept best weights": kept}


def local_processes(device: torch.device) -> int:
    """The run's processes that share ``device``'s memory: on a CPU, every process of the run
    on this machine (torchrun's ``LOCAL_WORLD_SIZE``); a GPU is one process's own."""
    if device.type == "cuda":
        return 1
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _storages(found: dict[int, Any], t: torch.Tensor) -> None:
    """Add ``t``'s storage to ``found`` by its identity: a tensor saved twice, or a view of
    another (a flattened input, an in-place ReLU's output), holds no memory of its own. The
    storages are kept in ``found``, so that no identity is reused while it is counted."""
    storage = t.untyped_storage()  # one object per storage, views and all, while it lives
    found[id(storage)] = storage


def saved_per_row(model: nn.Module, input_shape: Sequence[int]) -> int | None:
    """The bytes ``model``'s training-mode forward pass saves for its backward pass per input
    row, measured on the meta device (no memory, no arithmetic) as the difference of passes of
    4 and 2 rows: what does not grow with the batch (the weights, a ``Linear``'s transposed
    weight) cancels; None where the meta device cannot run the model."""

    def saved(rows: int) -> int:
        found: dict[int, Any] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            _storages(found, t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.zeros(rows, *input_shape))
        return sum(storage.nbytes() for storage in found.values())

    model.train()
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"), torch.enable_grad():
            return max(0, (saved(4) - saved(2)) // 2)
    except Exception:  # an operation the meta device cannot run: the question stays open
        return None


def held_per_row(model: nn.Module, input_shape: Sequence[int]) -> int | None:
    """The bytes ``model``'s evaluation forward pass (eval mode, no gradient) holds at once per
    input row at its largest layer: the storages of the layer's input and its output (one that
    is both, an in-place ReLU's, once), measured on the meta device as :func:`saved_per_row`
    is, layer by layer from passes of 4 and 2 rows; None where the meta device cannot run the
    model."""

    def held(rows: int) -> list[int]:
        sizes: list[int] = []

        def hook(module: nn.Module, inputs: tuple[object, ...], output: object) -> None:
            outputs = output if isinstance(output, tuple | list) else (output,)
            found: dict[int, Any] = {}
            for t in (*inputs, *outputs):
                if isinstance(t, torch.Tensor):
                    _storages(found, t)
            sizes.append(sum(storage.nbytes() for storage in found.values()))

        layers = [m for m in model.modules() if next(m.children(), None) is None]
        handles = [m.register_forward_hook(hook) for m in layers]
        try:
            model(torch.zeros(rows, *input_shape))
        finally:
            for handle in handles:
                handle.remove()
        return sizes

    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"), torch.no_grad():
            two, four = held(2), held(4)
    except Exception:  # an operation the meta device cannot run: the question stays open
        return None
    return max((b - a) // 2 for a, b in zip(two, four))  # a model is a layer at least


@attrs.frozen
class Activations:
    """What a run's batches hold beside its models, for :func:`check_training_fits`.

    Attributes:
        saved: per role, the bytes a training batch's row saves for the backward pass
            (:func:`saved_per_row`; None: unknown, counted as none).
        held: per role, the bytes an evaluation batch's row holds at once
            (:func:`held_per_row`).
        train_rows, eval_rows: a process's rows of the largest training batch, and of the
            largest evaluation batch (of the validation and test splits).
    """

    saved: Mapping[str, int | None] = attrs.Factory(dict)
    held: Mapping[str, int | None] = attrs.Factory(dict)
    train_rows: int = 0
    eval_rows: int = 0


def check_training_fits(recipe: Recipe, sizes: Mapping[str, int], device: torch.device,
                        activations: Activations) -> None:
    """Refuse a run whose models' training state (:func:`weight_copies` of each role's
    ``sizes``, its parameters' bytes) and the activations of its largest batch (for each
    stage, the roles it trains: their ``saved`` bytes a row times ``train_rows``; or one
    model's evaluation batch, ``held`` times ``eval_rows``; halved by a 16-bit
    ``run.precision``), times :func:`local_processes`, need more than :data:`TRAINING_SHARE`
    of the memory free on ``device``: a :class:`~kdcore.errors.RecipeError` at the largest
    part, the model's parameters, ``data.batch_size`` or ``data.eval_batch_size``."""
    if not sizes:
        return
    free = devices.free_memory(device)
    copies = {role: weight_copies(recipe, role) for role in sizes}
    processes = local_processes(device)
    weights = sum(sizes[r] * sum(c.values()) for r, c in copies.items())
    halved = recipe.run.precision != "fp32"  # a row's bytes are measured in 32 bits
    saved = {r: (activations.saved.get(r) or 0) // (2 if halved else 1) for r in sizes}
    held = {r: (activations.held.get(r) or 0) // (2 if halved else 1) for r in sizes}
    steps = [activations.train_rows * sum(saved[r] for r in stage.train)
             for stage in recipe.stages]
    step = max(steps)  # a recipe has at least one stage
    evaluated = max(held, key=held.__getitem__)
    evaluation = activations.eval_rows * held[evaluated]
    need = processes * (weights + max(step, evaluation))
    if free is None or need <= TRAINING_SHARE * free:
        return
    per_process = " per process" * (processes > 1)
    stage = recipe.stages[steps.index(step)]
    if evaluation > step:
        batch = (f" and an evaluation batch's activations {byte_size(processes * evaluation)} "
                 f"more (a batch of {activations.eval_rows:,} rows{per_process})")
    else:
        batch = (f" and a training step's activations {byte_size(processes * step)} more (a "
                 f"batch of {activations.train_rows:,} rows{per_process} in stage "
                 f"'{stage.name}')" if step else "")
    shared = f" ({processes} processes on this machine, each its own)" if processes > 1 else ""
    said = (f"the models' training state needs {byte_size(processes * weights)}{batch}"
            f"{shared}; {byte_size(free)} are free on {device}, and a run plans for at most "
            f"{TRAINING_SHARE:.0%} of it: ")
    in_bits = f" (in {recipe.run.precision})" if halved else ""
    if evaluation > max(step, weights):
        raise RecipeError(
            f"{said}model '{evaluated}' holds {byte_size(held[evaluated])} a row{in_bits} at "
            "once in its largest layer; a smaller data.eval_batch_size or model takes less",
            key="data.eval_batch_size")
    if step > weights:
        role = max(stage.train, key=saved.__getitem__)
        raise RecipeError(
            f"{said}model '{role}' saves {byte_size(saved[role])} a row{in_bits} for its "
            "backward pass; a smaller data.batch_size or model takes less", key="data.batch_size")
    largest = max(sizes, key=lambda r: sizes[r] * sum(copies[r].values()))
    held_copies = ", ".join(f"{n} {what}" for what, n in copies[largest].items() if n)
    raise RecipeError(
        f"{said}model '{largest}' holds {sum(copies[largest].values())} x "
        f"{byte_size(sizes[largest])} ({held_copies}); a smaller model, an optimiser with less "
        "state or keep = \"last\" takes less", key=f"models.{largest}.params")


__all__ = ["TRAINING_SHARE", "Activations", "check_training_fits", "held_per_row",
           "local_processes", "saved_per_row", "weight_copies"]
