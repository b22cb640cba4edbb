"""Every hook of kdcore, grouped by phase.

Two kinds of hook exist, and this module documents both:

* **Plugin hooks** (the ``kdcore_*`` functions below) are pluggy hook specifications. A plugin
  module or object implements them with ``@kdcore.hookimpl``; pluggy calls every
  implementation (fan-out, in pluggy's order). They fill registries, observe the run and save
  plugin-wide state. Their order must never matter.
* **Component hooks** are the methods of :class:`kdcore.Component` (``select``, ``refine``,
  ``weight``, ``transfer`` and the lifecycle methods). The engine calls them on the components
  that the recipe names, **in the recipe's order**, because a refinement chain or a selection
  pass that feeds label propagation depends on order and pluggy's LIFO fan-out cannot express
  it. They are listed at the end of this module (``COMPONENT_HOOKS``) and documented on the
  class.

Register a plugin under the entry-point group ``kdcore`` (see ``docs/plugins.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

from kdcore.component import COMPONENT_HOOKS, Component

if TYPE_CHECKING:
    from kdcore.component import Batch
    from kdcore.recipe import Recipe, StageConfig
    from kdcore.run import Run

PROJECT = "kdcore"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# ------------------------------------------------------------------------------------------
# Registries: called once when plugins are loaded.
# ------------------------------------------------------------------------------------------


@hookspec
def kdcore_add_components() -> Mapping[str, type[Component]]:
    """Contribute recipe components.

    Called once after plugins are loaded.

    Returns:
        A mapping from the name a recipe uses (``use = "name"``) to a :class:`kdcore.Component`
        subclass. Results of all plugins are merged; a name claimed twice is an error that
        names both plugins.
    """


@hookspec
def kdcore_add_datasets() -> Mapping[str, Callable[..., Any]]:
    """Contribute dataset loaders.

    Returns:
        Name -> a function taking keyword-only, annotated parameters (the recipe's
        ``data.params``) and returning :class:`kdcore.DatasetSplits`. Merged like components.
    """


@hookspec
def kdcore_add_noise_models() -> Mapping[str, Callable[..., Any]]:
    """Contribute label-noise models.

    Returns:
        Name -> ``fn(ctx: NoiseContext, **params) -> noisy labels``; ``ctx.generator`` is the
        only source of randomness it may use. Merged like components.
    """


@hookspec
def kdcore_add_models() -> Mapping[str, Callable[..., Any]]:
    """Contribute architectures.

    Returns:
        Name -> ``fn(spec: ModelSpec, **params) -> KDModel``; the model returns
        ``(logits, features)``. Merged like components.
    """


@hookspec
def kdcore_add_augmentations() -> Mapping[str, Callable[..., Any]]:
    """Contribute batch augmentations.

    Returns:
        Name -> ``fn(x, generator, **params) -> x`` acting on a float image batch. Merged like
        components.
    """


# ------------------------------------------------------------------------------------------
# Run set-up
# ------------------------------------------------------------------------------------------


@hookspec
def kdcore_configure(recipe: Recipe) -> list[str] | None:
    """Check a resolved recipe before anything runs.

    Called once per run after the recipe is read, extended and overridden, and after every
    component's parameters were validated by its own ``Params`` class.

    Args:
        recipe: the resolved, typed recipe (read-only).

    Returns:
        Problems as one-line messages (they end the run with exit code 2), or None. All
        plugins' problems are collected.
    """


# ------------------------------------------------------------------------------------------
# Lifecycle observers: every implementation is called; order does not matter.
# ------------------------------------------------------------------------------------------


@hookspec
def kdcore_run_start(run: Run) -> None:
    """The run's data, models and ledger exist; training is about to start (or resume).

    Args:
        run: the run (``run.resumed`` says whether it continues a checkpoint).
    """


@hookspec
def kdcore_stage_start(run: Run, stage: StageConfig) -> None:
    """A stage's components are built and set up; its first epoch is next.

    Args:
        run: the run; ``run.components`` are the stage's components in recipe order.
        stage: the stage's config.
    """


@hookspec
def kdcore_epoch_start(run: Run, epoch: int) -> None:
    """Called after the components' ``on_epoch_start``, before the first batch.

    Args:
        run: the run.
        epoch: the epoch within the stage, from 0.
    """


@hookspec
def kdcore_batch_end(run: Run, batch: Batch, losses: Mapping[str, float]) -> None:
    """After the optimiser steps of one batch.

    Args:
        run: the run.
        batch: the batch just trained on.
        losses: the total loss of each trained model role.
    """


@hookspec
def kdcore_epoch_end(run: Run, epoch: int, metrics: dict[str, float]) -> None:
    """After evaluation, before the history row is written.

    Args:
        run: the run.
        epoch: the epoch within the stage, from 0.
        metrics: this epoch's numbers; an observer may add its own (they are written too).
    """


@hookspec
def kdcore_stage_end(run: Run, stage: StageConfig) -> None:
    """After a stage's last epoch (and after the best-validation weights were restored).

    Args:
        run: the run.
        stage: the stage that ended.
    """


@hookspec
def kdcore_run_end(run: Run, summary: dict[str, Any]) -> None:
    """Training finished, after the last stage.

    Args:
        run: the run.
        summary: best-validation and last-epoch accuracies per model role (also written to
            ``summary.json``); an observer may add entries.
    """


# ------------------------------------------------------------------------------------------
# Checkpoint state of plugins (components save theirs through their own state_dict).
# ------------------------------------------------------------------------------------------


@hookspec
def kdcore_checkpoint_state(run: Run) -> dict[str, Any] | None:
    """Plugin-wide state to store in each checkpoint, at every epoch end.

    Args:
        run: the run.

    Returns:
        Tensors, numbers, strings, lists and dicts only (checkpoints load with
        ``weights_only=True``), or None. Stored under the plugin's registered name.
    """


@hookspec
def kdcore_load_checkpoint_state(run: Run, states: Mapping[str, dict[str, Any]]) -> None:
    """Restore plugin-wide state on resume, after the components' states.

    Args:
        run: the run being resumed.
        states: what every plugin returned from ``kdcore_checkpoint_state``, by plugin name;
            take your own entry.
    """


__all__ = ["COMPONENT_HOOKS", "PROJECT", "hookimpl", "hookspec"]
