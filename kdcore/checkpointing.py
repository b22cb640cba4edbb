"""The run's checkpoint: what it holds, when it is written, how a resume restores it.

A checkpoint is written after the run's first epoch, at every stage boundary and, between
those, at most every ``run.checkpoint_interval_s`` seconds (a run killed before its first
checkpoint has nothing to keep: ``--resume`` starts it again from the beginning). It records:

* ``position``: the stage and epoch to continue at, the history rows committed (the file is
  rolled back to exactly that many on resume) and the optimiser step;
* ``fingerprint``: the resolved recipe (and the ``--set`` overrides) the run started with;
  ``--resume`` with anything else is refused, naming the keys that differ (the data the
  recipe names are compared with the history's per-sample constants: :func:`data_changes`);
* models, optimisers, the ledger, every component's state and generator, plugin-wide state,
  best-validation bookkeeping and every random state the run draws from.

The random states are restored before any component of the resumed stage is set up, and each
component's ``setup`` draws from its own seed, so a resume from any checkpoint ends bit for bit
where the uninterrupted run ends (on the CPU).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from kdcore import checkpoint as ckpt
from kdcore.component import Component
from kdcore.errors import KdcoreError
from kdcore.evaluation import BestKeeper
from kdcore.history import HistoryWriter
from kdcore.plan import StagePlan
from kdcore.plugins import ObserverBus
from kdcore.runstate import ComponentContext, Run

FORMAT = 2


class Trainer(Protocol):
    """What the checkpoint reads from and restores into (:class:`kdcore.loop.Trainer`)."""

    run: Run
    history: HistoryWriter
    bus: ObserverBus
    observer_ctx: ComponentContext
    current_stage: StagePlan
    contexts: dict[int, ComponentContext]
    order_gen: torch.Generator
    augment_gen: torch.Generator
    best: BestKeeper
    carried: dict[str, dict[str, Any]]
    summary: dict[str, Any]
    scaler: torch.amp.GradScaler | None

    def context(self, comp: Component) -> ComponentContext: ...


class Checkpointer:
    """Writes and restores a run's checkpoint in ``run_dir``.

    Args:
        run_dir: the run directory.
        fingerprint: what the run was started with (``{"recipe": ..., "overrides": ...}``).
        interval_s: the least time between two epoch checkpoints.
        background: write on a background thread (CUDA runs).
        writes: write at all (False on the ranks other than 0 of a distributed run, which
            restore from the checkpoint rank 0 wrote).
        keep_current: whether the first write keeps the file it replaces as
            :data:`~kdcore.checkpoint.PREVIOUS` (False when that file is damaged: the run
            resumed from the one before it, which stays).
    """

    def __init__(self, run_dir: Path, fingerprint: Mapping[str, Any], interval_s: float,
                 background: bool, *, writes: bool = True, keep_current: bool = True):
        self.path = run_dir / ckpt.CHECKPOINT
        self.previous = run_dir / ckpt.PREVIOUS
        self.keep_current = keep_current
        self.weights_dir = run_dir / "models"
        self.fingerprint = dict(fingerprint)
        self.interval_s = interval_s
        self.saver = ckpt.BackgroundSaver(background=background)
        self.writes = writes
        self._last = time.monotonic()

    def due(self, *, first_epoch: bool = False) -> bool:
        """Whether an epoch checkpoint is due: after the run's first epoch always, then at
        most every ``interval_s``."""
        return first_epoch or time.monotonic() - self._last >= self.interval_s

    def save(self, trainer: Trainer, stage: int, epoch: int, history_rows: int | None = None
             ) -> None:
        if not self.writes:
            return
        run = trainer.run
        if history_rows is None:
            history_rows = trainer.history.rows()
        state = {
            "format": FORMAT,
            "position": {"stage": stage, "epoch": epoch, "history_rows": history_rows,
                         "step": run.step},
            "fingerprint": self.fingerprint,
            "models": {r: m.state_dict() for r, m in run.models.items()},
            "optimizers": {r: o.state_dict() for r, o in run.optimizers.items()},
            "components": _component_states(trainer.current_stage.components)
            if trainer.contexts else {},
            "generators": {ctx.name: ctx.generator.get_state()
                           for ctx in trainer.contexts.values()},
            "plugins": _plugin_states(trainer.bus, trainer.observer_ctx),
            "ledger": run.ledger.state_dict(),
            "rng": ckpt.rng_state(run.generator, trainer.order_gen, trainer.augment_gen),
            "best": trainer.best.state_dict(),
            "carried": trainer.carried,
            "summary": copy.deepcopy(trainer.summary),
            "scaler": trainer.scaler.state_dict() if trainer.scaler else {},
        }
        for role, sd in state["models"].items():  # an extra state of a plugin's model
            _refuse_unloadable(f"model '{role}' state_dict()", sd)
        for name, got in trainer.carried.items():
            _refuse_unloadable(f"component '{name}' ({got['use']}) state_dict() at the end of "
                               "its stage", got["state"])
        self.saver.save(state, self.path, self.previous if self.keep_current else None)
        self.keep_current = True
        self._last = time.monotonic()

    def save_weights(self, role: str, model: nn.Module) -> None:
        if not self.writes:
            return
        state = ckpt.weights_of(model)
        _refuse_unloadable(f"model '{role}' state_dict()", state)
        ckpt.save(state, self.weights_dir / f"{role}.pt")

    def wait(self) -> None:
        self.saver.wait()

    def restore_run(self, trainer: Trainer, state: Mapping[str, Any]) -> None:
        """What spans stages: models, optimisers, the ledger, bookkeeping, random states.

        Called before the resumed stage's components are set up.
        """
        from kdcore.build import build_optimizer
        from kdcore.prepare import load_weights_into

        run = trainer.run
        models = state["models"]
        missing = sorted(set(run.models) - set(models))
        if missing:
            raise KdcoreError(f"the checkpoint {self.path} holds no weights for model(s) "
                              f"{', '.join(missing)}; start again with --overwrite")
        for role, sd in models.items():
            if role not in run.models:
                raise KdcoreError(f"the checkpoint {self.path} holds a model '{role}' that the "
                                  f"recipe does not define; start again with --overwrite")
            load_weights_into(run.models[role], sd, role, self.path)
        for role, sd in state["optimizers"].items():
            opt = run.optimizers.get(role)
            if opt is None:
                opt = run.optimizers[role] = build_optimizer(
                    run.models[role], run.recipe.models[role].optimizer, role)
            try:
                opt.load_state_dict(sd)
            except (ValueError, KeyError) as exc:
                raise KdcoreError(f"the optimiser state of model '{role}' in {self.path} does "
                                  f"not fit it ({exc}); start again with --overwrite") from None
        run.ledger.load_state_dict(state["ledger"])
        trainer.best.load_state_dict(state["best"])
        trainer.carried = dict(state["carried"])
        trainer.summary = dict(state["summary"])
        if trainer.scaler and state.get("scaler"):
            trainer.scaler.load_state_dict(state["scaler"])
        run.step = int(state["position"]["step"])
        run.resumed = True
        ckpt.set_rng_state(state["rng"], run.generator, trainer.order_gen, trainer.augment_gen)
        trainer.bus.call("kdcore_load_checkpoint_state", ctx=trainer.observer_ctx,
                         states=state["plugins"])

    def restore_stage(self, trainer: Trainer, state: Mapping[str, Any]) -> None:
        """Mid-stage state: each component's own state and generator (after ``setup``)."""
        generators = state["generators"]
        for comp in trainer.current_stage.components:
            if comp.name in state["components"]:
                comp.load_state_dict(state["components"][comp.name])
            if comp.name in generators:
                trainer.context(comp).generator.set_state(generators[comp.name])


def _component_states(components: Sequence[Component]) -> dict[str, Any]:
    states = {}
    for comp in components:
        states[comp.name] = state = comp.state_dict()
        _refuse_unloadable(f"component '{comp.name}' ({comp.spec.use}) state_dict()", state)
    return states


def _plugin_states(bus: ObserverBus, ctx: Any) -> dict[str, Any]:
    """Each plugin's ``kdcore_checkpoint_state``; one whose state would not read back is
    disabled, like a plugin whose hook raises, and its state left out."""
    states = {}
    for name, state in bus.call("kdcore_checkpoint_state", ctx=ctx):
        problem = ckpt.unloadable_message("returned a state that", state)
        if problem is None:
            states[name] = state
        else:
            bus.refuse(name, "kdcore_checkpoint_state", problem)
    return states


def _refuse_unloadable(owner: str, state: Any) -> None:
    from kdcore.failures import RunFailed

    problem = ckpt.unloadable_message(owner, state)
    if problem is not None:  # found now, not by the resume that could not read the file
        raise RunFailed(problem)


def carried_states(components: Sequence[Component]) -> dict[str, dict[str, Any]]:
    """What a stage's components leave the next stage: each one's ``use`` and state."""
    return {c.name: {"use": c.spec.use, "state": c.state_dict()} for c in components}


def continue_states(components: Sequence[Component], carried: Mapping[str, Any]) -> None:
    """A component with the label and ``use`` of one of the previous stage (and
    ``carry_state``) starts from that one's state (a WeightNet keeps training)."""
    for comp in components:
        got = carried.get(comp.name)
        if comp.carry_state and got and got["use"] == comp.spec.use:
            comp.load_state_dict(got["state"])


class _EntersStages(Protocol):
    def enter_stage(self, stage: StagePlan) -> None: ...


def rehearse_stages(trainer: _EntersStages, stages: Sequence[StagePlan]) -> None:
    """Set up ``stages``' components in turn, each continuing its namesake of the stage before
    from the state that one has after its set-up: a refusal of theirs (LP's ``k``, an empty
    meta split, a carried network that does not fit the next stage's settings) comes before
    anything trains, in ``kdcore check`` and in the run alike. The training loop sets each
    stage up again when it runs it."""
    previous: StagePlan | None = None
    for stage in stages:
        trainer.enter_stage(stage)
        if previous is not None:
            continue_states(stage.components, carried_states(previous.components))
        previous = stage


def read_last(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """The run's last checkpoint (:func:`read`); where it cannot be read (damaged on disk) but
    the one kept before it (:data:`~kdcore.checkpoint.PREVIOUS`) can, that one, with why the
    last could not be (else None). Nothing is moved: the resumed run's first checkpoint
    replaces the damaged one, without keeping it (``Checkpointer(keep_current=False)``).

    Raises:
        KdcoreError: the last checkpoint's error, where the one before it cannot be read either.
    """
    try:
        return read(run_dir / ckpt.CHECKPOINT), None
    except KdcoreError as exc:
        previous = run_dir / ckpt.PREVIOUS
        if not previous.is_file():
            raise
        try:
            state = read(previous)
        except KdcoreError:
            raise exc from None
        return state, str(exc).removesuffix("; start again with --overwrite")


def read(path: Path) -> dict[str, Any]:
    """A checkpoint written by :class:`Checkpointer`, or one line saying why it cannot be
    resumed from."""
    try:
        state = ckpt.load(path)
    except KdcoreError as exc:  # truncated, damaged or not a checkpoint at all
        raise KdcoreError(f"{str(exc).rstrip('.')}; start again with --overwrite") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise KdcoreError(f"{path} is not a checkpoint of this kdcore version (format "
                          f"{FORMAT}); start again with --overwrite")
    needed = ("position", "fingerprint", "models", "optimizers", "components", "generators",
              "plugins", "ledger", "rng", "best", "carried", "summary")
    missing = [k for k in needed if k not in state]
    position = state.get("position")
    if missing or not isinstance(position, dict) or not all(
            isinstance(position.get(k), int) and position[k] >= 0
            for k in ("stage", "epoch", "history_rows", "step")):
        what = f"lacks {', '.join(missing)}" if missing else "has no valid position"
        raise KdcoreError(f"the checkpoint {path} {what}; start again with --overwrite")
    # the containers the restore walks (their contents are checked where they are loaded)
    kinds = {"fingerprint": dict, "models": dict, "optimizers": dict, "components": dict,
             "generators": dict, "plugins": dict, "ledger": dict, "rng": dict, "best": dict,
             "carried": dict, "summary": dict}
    wrong = [k for k, kind in kinds.items() if not isinstance(state[k], kind)]
    if not wrong and not isinstance(state["fingerprint"].get("recipe"), dict):
        wrong = ["fingerprint"]
    if wrong:
        raise KdcoreError(f"the checkpoint {path} is damaged (wrong type of "
                          f"{', '.join(wrong)}); start again with --overwrite")
    return state


def data_changes(history: Path, num_classes: int, class_names: Sequence[str],
                 constants: Mapping[str, torch.Tensor]) -> list[str]:
    """What differs between the data a resumed run has built and the data its history was
    started with: the classes, and each per-sample constant in ``/data`` (the training split's
    size and order, its true and observed labels, the digest of its inputs). Empty when nothing
    does.

    The recipe's fingerprint cannot see this: a dataset folder that gained an image, a label
    file edited, or images re-made with another crop between the run and its resume, give the
    same recipe and other data (which ran on to an IndexError in the first batch, or trained on
    silently).
    """
    from kdcore.history import History
    from kdcore.history_layout import FILE_SIZE, INPUT_DIGEST

    with History(history) as saved:
        if saved.num_classes != num_classes:
            return [f"{num_classes} classes, the run's {saved.num_classes}"]
        changes = []
        if saved.class_names and saved.class_names != list(class_names):
            changes.append("the class names")
        names = set(saved.data_names())
        for name, values in constants.items():
            if name not in names:  # a history from before kdcore kept it
                continue
            was, now = saved.data(name), values.cpu().numpy()
            if was.shape != now.shape:
                return [*changes, f"{len(now)} training samples, the run's {len(was)}"]
            if not np.array_equal(was, now):
                what = {INPUT_DIGEST: "the inputs differ",
                        FILE_SIZE: "the image files differ in size"}.get(name, f"{name} differs")
                changes.append(f"{what} at {int((was != now).sum())} of {len(now)} samples")
    return changes


def differing_keys(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """The dotted key paths at which two plain data trees differ."""
    if isinstance(saved, Mapping) and isinstance(now, Mapping):
        out: list[str] = []
        for key in sorted(set(saved) | set(now), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved or key not in now:
                out.append(path)
            else:
                out += differing_keys(saved[key], now[key], path)
        return out
    if isinstance(saved, list) and isinstance(now, list) and len(saved) == len(now):
        out = []
        for i, (a, b) in enumerate(zip(saved, now)):
            out += differing_keys(a, b, f"{prefix}[{i}]")
        return out
    return [] if _same(saved, now) else [prefix or "(root)"]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    return type(a) is type(b) and a == b
