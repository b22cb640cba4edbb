"""The memory a run's models hold while they train, reckoned before any is built.

A model whose parameters fit can still not train: its gradients, its optimiser's state and the
best weights a stage keeps are each as large again, for every model of the run at once; and a
training step holds the activations its forward pass saves for the backward pass, which grow
with the batch. Past the free memory, the kernel's out-of-memory killer ended the run in its
first steps with a SIGKILL (exit 137, no message at all); :func:`check_training_fits` refuses
such a recipe first, under ``kdcore check`` too. The activations are a lower bound, what the
forward pass saves for the backward (a training step's peak on the CPU was 1.15-1.73 times that,
on MLPs, a CNN and a ResNet-20: ``benchmarks/activation_peak.py``); the reckoning leaves out
evaluation batches, the forward passes of models a stage does not train, a component's own
extra passes (mixup's) and its state, which :data:`TRAINING_SHARE` leaves room for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from kdcore import device as devices
from kdcore.errors import RecipeError, byte_size
from kdcore.recipe import Recipe

TRAINING_SHARE = 0.8
"""The share of the free memory the models' weights, gradients, optimiser state and kept
best weights may plan to take; the rest is for what is not reckoned."""


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


def saved_per_row(model: nn.Module, input_shape: Sequence[int]) -> int | None:
    """The bytes ``model``'s training-mode forward pass saves for its backward pass per input
    row, measured on the meta device (no memory, no arithmetic) as the difference of passes of
    4 and 2 rows: what does not grow with the batch (the weights, a ``Linear``'s transposed
    weight) cancels; None where the meta device cannot run the model."""

    def saved(rows: int) -> int:
        found: dict[int, int] = {}  # a tensor saved by two operations counts once

        def pack(t: torch.Tensor) -> torch.Tensor:
            found[id(t)] = t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.zeros(rows, *input_shape))
        return sum(found.values())

    model.train()
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"), torch.enable_grad():
            return max(0, (saved(4) - saved(2)) // 2)
    except Exception:  # an operation the meta device cannot run: the question stays open
        return None


def check_training_fits(recipe: Recipe, sizes: Mapping[str, int], device: torch.device,
                        per_row: Mapping[str, int | None], rows: int) -> None:
    """Refuse a run whose models' training state (:func:`weight_copies` of each role's
    ``sizes``, its parameters' bytes) and the activations of its largest training step (for
    each stage, the roles it trains: their :func:`saved_per_row` bytes ``per_row``, halved by
    a 16-bit ``run.precision``, times ``rows``, a process's rows of a batch), times
    :func:`local_processes`, need more than :data:`TRAINING_SHARE` of the memory free on
    ``device``: a :class:`~kdcore.errors.RecipeError` at the largest model's parameters, or
    at ``data.batch_size`` where the activations take more than the models."""
    if not sizes:
        return
    free = devices.free_memory(device)
    copies = {role: weight_copies(recipe, role) for role in sizes}
    processes = local_processes(device)
    weights = sum(sizes[r] * sum(c.values()) for r, c in copies.items())
    halved = recipe.run.precision != "fp32"  # per_row is measured in 32 bits
    row_bytes = {r: (per_row.get(r) or 0) // (2 if halved else 1) for r in sizes}
    steps = [rows * sum(row_bytes[r] for r in stage.train) for stage in recipe.stages]
    step = max(steps)  # a recipe has at least one stage
    need = processes * (weights + step)
    if free is None or need <= TRAINING_SHARE * free:
        return
    stage = recipe.stages[steps.index(step)] if step else None
    activations = (f" and a training step's activations {byte_size(processes * step)} more (a "
                   f"batch of {rows:,} rows{' per process' * (processes > 1)} in stage "
                   f"'{stage.name}')" if stage else "")
    shared = f" ({processes} processes on this machine, each its own)" if processes > 1 else ""
    said = (f"the models' training state needs {byte_size(processes * weights)}{activations}"
            f"{shared}; {byte_size(free)} are free on {device}, and a run plans for at most "
            f"{TRAINING_SHARE:.0%} of it: ")
    if stage is not None and step > weights:
        role = max(stage.train, key=row_bytes.__getitem__)
        in_bits = f" (in {recipe.run.precision})" if halved else ""
        raise RecipeError(
            f"{said}model '{role}' saves {byte_size(row_bytes[role])} a row{in_bits} for its "
            "backward pass; a smaller data.batch_size or model takes less", key="data.batch_size")
    largest = max(sizes, key=lambda r: sizes[r] * sum(copies[r].values()))
    held = ", ".join(f"{n} {what}" for what, n in copies[largest].items() if n)
    raise RecipeError(
        f"{said}model '{largest}' holds {sum(copies[largest].values())} x "
        f"{byte_size(sizes[largest])} ({held}); a smaller model, an optimiser with less state "
        "or keep = \"last\" takes less", key=f"models.{largest}.params")


__all__ = ["TRAINING_SHARE", "check_training_fits", "local_processes", "saved_per_row",
           "weight_copies"]
