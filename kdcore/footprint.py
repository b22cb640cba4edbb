"""The memory a run's models hold while they train, reckoned before any is built.

A model whose parameters fit can still not train: its gradients, its optimiser's state and the
best weights a stage keeps are each as large again, for every model of the run at once. Past
the free memory, the kernel's out-of-memory killer ended the run in its first steps with a
SIGKILL (exit 137, no message at all); :func:`check_training_fits` refuses such a recipe
first, under ``kdcore check`` too. The reckoning leaves out activations, evaluation batches and the
components' own state, which :data:`TRAINING_SHARE` leaves room for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

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


def check_training_fits(recipe: Recipe, sizes: Mapping[str, int], device: torch.device) -> None:
    """Refuse a run whose models' training state (:func:`weight_copies` of each role's
    ``sizes``, its parameters' bytes, times :func:`local_processes`) needs more than
    :data:`TRAINING_SHARE` of the memory free on ``device``: a
    :class:`~kdcore.errors.RecipeError` at the largest model's parameters."""
    if not sizes:
        return
    free = devices.free_memory(device)
    copies = {role: weight_copies(recipe, role) for role in sizes}
    processes = local_processes(device)
    need = processes * sum(sizes[r] * sum(c.values()) for r, c in copies.items())
    if free is None or need <= TRAINING_SHARE * free:
        return
    largest = max(sizes, key=lambda r: sizes[r] * sum(copies[r].values()))
    held = ", ".join(f"{n} {what}" for what, n in copies[largest].items() if n)
    shared = f" ({processes} processes on this machine, each its own)" if processes > 1 else ""
    raise RecipeError(
        f"the models' training state needs {byte_size(need)}{shared}; {byte_size(free)} are "
        f"free on {device}, and a run plans for at most {TRAINING_SHARE:.0%} of it: model "
        f"'{largest}' holds {sum(copies[largest].values())} x {byte_size(sizes[largest])} "
        f"({held}); a smaller model, an optimiser with less state or keep = \"last\" takes "
        "less", key=f"models.{largest}.params")


__all__ = ["TRAINING_SHARE", "check_training_fits", "local_processes", "weight_copies"]
