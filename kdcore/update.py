"""A batch's update of the models, after its hooks: the backward pass and the optimiser steps.

One function, so that the training loop and the component test harness
(:meth:`kdcore.testing.Harness.train`) take a batch's step by the same rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from kdcore import distributed
from kdcore.component import Batch, Component
from kdcore.context import RunContext
from kdcore.runstate import Run
from kdcore.step import StepResult, take_backward, without_gradient


def update_models(run: Run, result: StepResult, batch: Batch, trained: Sequence[str],
                  train: Sequence[str], takers: Sequence[Component],
                  context: Callable[[Component], RunContext],
                  scaler: torch.amp.GradScaler | None, warned: set[str]) -> None:
    """The backward pass of each model in ``trained`` (the roles of ``train``, the stage's
    trained models, that got a loss, in the loss's order), then every optimiser step.

    A loss without gradient is said once per role in ``warned`` (an error when no trained
    model's has one: :func:`kdcore.step.without_gradient`). The first of ``takers`` whose
    ``backward`` returns True takes a model's backward pass; the others' losses are summed and
    go through one backward pass (scaled by ``scaler``). Each model in ``train`` then takes its
    optimiser step (gradients averaged across ranks first), but one a component stepped itself
    (``ctx.mark_stepped``), and counts it (:meth:`Run.bump <kdcore.runstate.Run.bump>`).
    Gradients are the caller's to zero before the batch's hooks."""
    losses = result.losses
    plain: list[torch.Tensor] = []
    for role in trained:
        loss = losses[role]
        if not loss.requires_grad:
            without_gradient(role, result, trained, warned)
        if not takers or not take_backward(takers, context, batch, role, loss):
            plain.append(loss)
    if plain:
        total = torch.stack(plain).sum() if len(plain) > 1 else plain[0]
        (scaler.scale(total) if scaler else total).backward()
    for role in train:
        if role not in run.stepped:  # gradients averaged across ranks first
            distributed.step(run.optimizers[role], scaler)
        run.bump(role)
    if scaler:
        scaler.update()
    run.stepped.clear()
