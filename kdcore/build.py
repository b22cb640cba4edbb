"""Optimisers and learning-rate schedules of the model roles."""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from kdcore.errors import RecipeError
from kdcore.recipe import OptimizerConfig, Recipe


def architecture_frozen(model: nn.Module) -> frozenset[str]:
    """The parameters ``model`` is built with frozen (``requires_grad = False``: a backbone an
    architecture keeps fixed under a trained head), which no stage trains."""
    return frozenset(name for name, p in model.named_parameters() if not p.requires_grad)


def set_trainable(model: nn.Module, trained: bool, fixed: Collection[str] = ()) -> None:
    """A stage that trains a role trains its parameters but the ``fixed`` ones (its
    architecture's frozen ones, :func:`architecture_frozen`); a role the stage does not train
    is frozen whole. A stage had set every parameter of a trained role trainable, undoing an
    architecture's own freeze."""
    for name, p in model.named_parameters():
        p.requires_grad_(trained and name not in fixed)


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, role: str) -> torch.optim.Optimizer:
    """The optimiser of ``role``'s ``model`` as ``cfg`` says, built as a stage that trains the
    role first starts (so by ``kdcore check``'s rehearsal of the stages).

    Raises:
        RecipeError: the model has no parameters (torch's "optimizer got an empty parameter
            list" was a traceback).
    """
    # every parameter, trainable now or not: a stage freezes a role by requires_grad, and a
    # frozen parameter has no gradient, so the optimiser leaves it alone
    params = list(model.parameters())
    if not params:
        raise RecipeError(f"model '{role}' has no parameters, so a stage that trains it has "
                          "nothing to learn; take it out of the stage's train list (it can "
                          "still serve as a fixed teacher)", key=f"models.{role}.arch")
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def set_stage_lr(optimizers: dict[str, torch.optim.Optimizer], recipe: Recipe, stage: int,
                 epoch: int) -> None:
    """Each optimiser of the roles stage ``stage`` trains at its scheduled rate for the stage's
    ``epoch``-th epoch (:meth:`~kdcore.recipe.ModelConfig.lr_at`, counting the role's epochs
    of earlier stages)."""
    stages = recipe.stages
    for role in stages[stage].train:
        done = sum(st.epochs for st in stages[:stage] if role in st.train)
        total = sum(st.epochs for st in stages if role in st.train)
        lr = recipe.models[role].lr_at(done + epoch, total)
        for group in optimizers[role].param_groups:
            group["lr"] = lr
