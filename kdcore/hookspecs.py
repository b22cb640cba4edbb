"""Every hook of kdcore, grouped by phase, each with its contract.

* **Plugin hooks** (the ``kdcore_*`` functions) are pluggy hook specifications. A plugin module
  or object implements them with ``@kdcore.hookimpl``; every implementation is called (fan-out,
  in pluggy's order: the last registered first). They fill registries, observe the run and save
  plugin-wide state; their order must never matter. An implementation that raises is isolated
  like a plugin that fails to import: named once in a warning and disabled for the rest of the
  run (an error under ``--strict-plugins``).
* **Component hooks** (the methods of :class:`ComponentHooks`, which :class:`kdcore.Component`
  implements as no-ops) are called by the engine on the components that the recipe names, **in
  the recipe's order**, because a refinement chain, or a selection pass that feeds label
  propagation, depends on order and pluggy's fan-out cannot express it.

Hooks that run during training get a :class:`~kdcore.context.RunContext` (``ctx``), bound to
the component (ledger writes tagged with its name, its own generator) or to the observers.

A component instance is created once per run by the plan, per stage that names it; ``setup``
builds its state when its stage starts (again on resume, and once before the first stage
trains, so its refusals come first); the next stage's component of the same label and ``use``
starts from that state (``carry_state``; rehearsed before anything trains, too). Plugins
register under the group ``kdcore``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

from kdcore.component import COMPONENT_HOOKS, Component, PerSample, TransferTerm

if TYPE_CHECKING:
    import torch

    from kdcore.component import Batch
    from kdcore.context import RunContext
    from kdcore.recipe import Recipe, StageConfig

PROJECT = "kdcore"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# -- Registries: each called once, when plugins are loaded. ---------------------------------


@hookspec
def kdcore_add_components() -> Mapping[str, type[Component]]:
    """Contribute recipe components.

    Returns:
        A mapping from the name a recipe uses (``use = "name"``) to a :class:`kdcore.Component`
        subclass. Results of all plugins are merged; a name claimed twice is an error that
        names both plugins.
    """


@hookspec
def kdcore_add_datasets() -> Mapping[str, Callable[..., Any]]:
    """Contribute dataset loaders.

    Returns:
        Name -> a function of keyword-only, annotated parameters (``data.params``, checked by
        ``kdcore check``) returning :class:`kdcore.DatasetSplits`. Merged like components.
    """


@hookspec
def kdcore_add_noise_models() -> Mapping[str, Callable[..., Any]]:
    """Contribute label-noise models.

    Returns:
        Name -> ``fn(ctx: NoiseContext, **params) -> noisy labels`` drawing only from
        ``ctx.generator``. Merged likewise.
    """


@hookspec
def kdcore_add_models() -> Mapping[str, Callable[..., Any]]:
    """Contribute architectures: name -> ``fn(spec: ModelSpec, **params) -> KDModel`` returning
    ``(logits, features)``."""


@hookspec
def kdcore_add_augmentations() -> Mapping[str, Callable[..., Any]]:
    """Contribute batch augmentations.

    Returns:
        Name -> ``fn(x, generator, **params) -> x`` on a float image batch. Merged likewise.
    """


@hookspec
def kdcore_add_loggers() -> Mapping[str, Callable[..., Any]]:
    """Contribute loggers, which a recipe chooses by name (``run.loggers``).

    Returns:
        Name -> ``factory(log_dir: Path, recipe) -> observer``, called as each run process
        starts; the observer implements observer hooks (``@hookimpl``), runs after the
        plugins', isolated like them, and writes under ``log_dir`` (``<run_dir>/logs/<name>``).
    """


# -- Run set-up ----------------------------------------------------------------------------


@hookspec
def kdcore_configure(recipe: Recipe) -> list[str] | None:
    """Check a resolved recipe before anything runs (by ``kdcore check`` and by every run).

    Called once per plan, on the read, extended and overridden recipe, before any component.

    Args:
        recipe: the resolved, typed recipe (read-only).

    Returns:
        Problems as one-line messages (the first ends the run with exit code 2), or None. All
        plugins' problems are collected.
    """


# -- Observers: every implementation is called; order does not matter; results are ignored.


@hookspec
def kdcore_run_start(ctx: RunContext) -> None:
    """The run's data, models and ledger exist; training is about to start (or resume).

    Args: ``ctx``, the run (``ctx.resumed`` says whether it continues a checkpoint).
    """


@hookspec
def kdcore_stage_start(ctx: RunContext, stage: StageConfig) -> None:
    """A stage's components are set up (and ran ``on_stage_start``); its first epoch is next.

    Args:
        ctx: the run.
        stage: the stage's config.
    """


@hookspec
def kdcore_epoch_start(ctx: RunContext, epoch: int) -> None:
    """Called after the components' ``on_epoch_start``, before the first batch.

    Args:
        ctx: the run.
        epoch: the epoch within the stage, from 0.
    """


@hookspec
def kdcore_batch_end(ctx: RunContext, batch: Batch, losses: Mapping[str, torch.Tensor]) -> None:
    """After the optimiser steps and the components' ``after_step`` of one batch.

    Args:
        ctx: the run.
        batch: the batch just trained on (``batch.records`` holds its per-sample records).
        losses: the total loss of each trained model role.
    """


@hookspec
def kdcore_epoch_end(ctx: RunContext, epoch: int, metrics: dict[str, float]) -> None:
    """After evaluation and the components' ``on_epoch_end``, before the history row.

    Args:
        ctx: the run.
        epoch: the epoch within the stage, from 0.
        metrics: this epoch's numbers; an observer may add its own (they are written too).
    """


@hookspec
def kdcore_stage_end(ctx: RunContext, stage: StageConfig) -> None:
    """After a stage's last epoch (and after the best-validation weights were restored).

    Args:
        ctx: the run.
        stage: the stage that ended.
    """


@hookspec
def kdcore_run_end(ctx: RunContext, summary: dict[str, Any]) -> None:
    """Training finished, after the last stage.

    Args:
        ctx: the run.
        summary: best-validation and last-epoch accuracies per model role (also written to
            ``summary.json``); an observer may add entries.
    """


# -- Checkpoint state of plugins (components save theirs through their own state_dict). ----


@hookspec
def kdcore_checkpoint_state(ctx: RunContext) -> dict[str, Any] | None:
    """Plugin-wide state to store in each checkpoint.

    Called whenever a checkpoint is written (after the run's first epoch, at stage boundaries,
    every ``run.checkpoint_interval_s``). Args: ``ctx``, the run.

    Returns:
        Tensors, numbers, strings, lists and dicts only (checkpoints load with
        ``weights_only=True``), or None. Stored under the plugin's registered name. A state
        that would not read back (a NumPy value, a class of the plugin's) disables the plugin.
    """


@hookspec
def kdcore_load_checkpoint_state(ctx: RunContext, states: Mapping[str, dict[str, Any]]) -> None:
    """Restore plugin-wide state on resume, before the resumed stage's components are set up.

    Args:
        ctx: the run being resumed.
        states: what every plugin returned from ``kdcore_checkpoint_state``, by plugin name;
            take your own entry.
    """


# -- Component hooks: called on the recipe's components, in recipe order. ------------------


class ComponentHooks(Protocol):
    """The contract of every component hook (:class:`kdcore.Component` implements each as a
    no-op; override the ones your component takes part in)."""

    def adapt_models(self, ctx: RunContext) -> None:
        """Change a model's structure (add a connector layer), once per process.

        When: as the run is set up, for every stage's components, before optimisers exist and
        before checkpointed weights are loaded, so added parameters are trained and resumed
        like the model's own. Called again on resume; must be deterministic. May change:
        ``ctx.models[role]`` in place. Order: stage by stage, recipe order.

        Args:
            ctx: the run, with its models built and its data loaded.
        """

    def setup(self, ctx: RunContext) -> None:
        """Build the component's state (networks, optimisers, tables).

        When: at the start of its stage (on resume too, before ``load_state_dict``), and for
        every stage from the one the run starts (or resumes) in once before that one trains,
        so that a refusal (a ``RecipeError``: a split too small) stops the run before any
        training, as ``kdcore check`` does. So it must build its state afresh on every call
        and not do once-per-stage work. It runs under the component's own seed (``torch``
        draws are the same in every process), at its stage's start (``ctx.epoch`` 0). Order:
        recipe order. May read: the models, the data, the ledger; must not write it (it raises).

        Args: ``ctx``, the run.
        """

    def on_stage_start(self, ctx: RunContext) -> None:
        """Once-per-stage work at the start of the stage (an initial label propagation).

        When: after every component's ``setup`` (and carried state), before the first epoch
        (``ctx.epoch`` 0, ``ctx.steps_per_epoch`` the stage's); not called again when a run
        resumes inside the stage. Order: recipe order. May write: its declared columns.

        Args: ``ctx``, the run.
        """

    def on_epoch_start(self, ctx: RunContext) -> None:
        """Epoch-level work before the first batch (full-dataset passes, LP, lambda updates).

        When: at every epoch's start (``ctx.epoch``), after the learning rates were set.
        Order: recipe order, so a selection pass placed before a refinement feeds it. Use
        ``ctx.features(role)`` for full-set features: computed once, shared. May write: its
        declared ledger columns (``base_target`` for an epoch-level refiner), named again in
        ``writes_at_start``; what it reads here is in ``reads_at_start`` (``check`` holds both).

        Args: ``ctx``, the run.
        """

    def refine(self, ctx: RunContext, batch: Batch, targets: torch.Tensor) -> torch.Tensor:
        """Label refinement: map the batch's current soft targets ``(B, C)`` to new ones.

        When: first in every batch. Combine: refinements chain in recipe order, starting from
        the ledger column ``base_target``; the final targets become ``batch.targets`` and are
        written to the column ``target``, tagged with the last refiner. They never feed back
        into ``base_target``. Return tensors without a graph unless the component itself
        differentiates through them.

        Args:
            ctx: the run.
            batch: the current mini-batch.
            targets: the targets after the previous refiner.
        """
        ...

    def select(self, ctx: RunContext, batch: Batch) -> PerSample | None:
        """Sample selection: which samples of the batch each term may learn from.

        When: after every ``refine``. Returns a bool or float ``(B,)`` tensor (1 = use; a soft
        score weights), per model role, or None to abstain (the batch's rows of the column then
        hold 1, once the hook wrote it that epoch). Combine: masks multiply, per term it acts
        on (``terms``; default its models' terms). Written to ``select/<name>[/<role>]``.

        Args:
            ctx: the run.
            batch: the current mini-batch.
        """
        ...

    def weight(self, ctx: RunContext, batch: Batch) -> PerSample | None:
        """Loss weighting: a per-sample weight ``(B,)`` for the terms this component acts on.

        When: after every ``select``. Returns a float tensor, non-negative and finite, one per
        role, or None (abstains as ``select``). Combine: multiply. Written to ``weight/<name>``.

        Args:
            ctx: the run.
            batch: the current mini-batch.
        """
        ...

    def transfer(self, ctx: RunContext, batch: Batch) -> TransferTerm | None:
        """Knowledge transfer: this component's loss term, per sample.

        When: after every ``weight``. Returns the per-sample loss ``(B,)`` of the models it
        serves, or one per role (a mutual term trains several), or a scalar; a per-sample loss
        may be given as a :class:`~kdcore.terms.PerSampleLoss` (its function and inputs), which
        costs no more than a hand-written loop's fused loss. Combine: each is reduced as
        ``sum(mask * weight * loss) / max(sum(mask), 1)`` (a plain mean where no mask or weight
        acts on it: a ``PerSampleLoss``'s own ``mean``), times its recipe ``weight``, and the
        terms of a model add. Per-sample losses go to ``loss/<name>[/<role>]`` at the epoch end.

        Args:
            ctx: the run.
            batch: the current mini-batch (``batch.out(role)`` gives a model's outputs).
        """
        ...

    def backward(self, ctx: RunContext, batch: Batch, role: str, loss: torch.Tensor) -> bool:
        """Take over the backward pass of model ``role`` (meta-learning look-ahead steps).

        When: for each trained role with a loss, after every term was computed, before the
        engine's single ``backward()`` of the other roles. Returns True or False (None: False).
        Combine: the first in recipe order to return True wins (declared in ``backward_roles``:
        the plan refuses two takers of one role, the engine an undeclared one); it leaves the
        gradients in ``.grad``; the engine steps the optimiser unless ``ctx.mark_stepped(role)``.

        Args:
            ctx: the run.
            batch: the current mini-batch.
            role: the model role whose loss this is.
            loss: the model's total loss (with its graph).
        """
        ...

    def after_step(self, ctx: RunContext, batch: Batch) -> None:
        """After the optimisers stepped on this batch (EMA updates, bookkeeping).

        When: after every optimiser step of the batch (``ctx.step`` already counts it),
        before ``kdcore_batch_end``. Order: recipe order.

        Args:
            ctx: the run.
            batch: the batch just trained on.
        """

    def on_epoch_end(self, ctx: RunContext, metrics: dict[str, float]) -> None:
        """After evaluation, in recipe order, before ``kdcore_epoch_end``.

        May add entries to ``metrics`` (one number each; they are written to the history
        row); replacing one already there is refused.

        Args:
            ctx: the run.
            metrics: this epoch's numbers.
        """

    def on_stage_end(self, ctx: RunContext) -> None:
        """After the stage's last epoch, before the best-validation weights are restored
        (undo a freeze, drop a hook, log a stage-level number). Order: recipe order.

        Args: ``ctx``, the run.
        """

    def state_dict(self) -> dict[str, Any]:
        """What an exact resume needs, taken at each checkpoint and stage end (for the next
        stage's namesake): tensors, numbers, strings, lists, dicts (a NumPy value stops the run)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned: on resume after ``setup``, and at a stage's
        start for a carried state, which is rehearsed before anything trains (the namesake's
        state after ``setup``): a ``RecipeError`` for a state that does not fit this
        component's settings then stops the run before training, and ``kdcore check``.

        Args:
            state: the dict ``state_dict`` returned.
        """


__all__ = ["COMPONENT_HOOKS", "PROJECT", "ComponentHooks", "hookimpl", "hookspec"]
