"""Optimisers and learning-rate schedules of the model roles."""

from __future__ import annotations

import math

import torch
from torch import nn

from kdcore.recipe import ModelConfig, OptimizerConfig


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    # every parameter, trainable now or not: a stage freezes a role by requires_grad, and a
    # frozen parameter has no gradient, so the optimiser leaves it alone
    params = list(model.parameters())
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def scheduled_lr(cfg: ModelConfig, epoch: int, epochs: int) -> float:
    """The learning rate at a role's ``epoch``-th training epoch out of ``epochs``.

    Epochs count over every stage that trains the role, so a schedule spans warm-up and later
    stages alike. A pure function: nothing needs checkpointing.
    """
    base = cfg.optimizer.lr
    sched = cfg.schedule
    if sched.name == "multistep":
        return base * sched.gamma ** sum(epoch >= m for m in sched.milestones)
    if sched.name == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    return base
