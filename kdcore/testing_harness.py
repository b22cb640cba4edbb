"""A component test harness: one component, a real context, data the test gives.

The context is the engine's own (:class:`kdcore.runstate.ComponentContext` over a
:class:`kdcore.runstate.Run`), built around in-memory tensors instead of a recipe's dataset, so a
component behaves here exactly as in a run, and a unit test of its hooks takes milliseconds.
Re-exported by :mod:`kdcore.testing`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from kdcore.batching import batches_per_epoch, epoch_batches
from kdcore.build import architecture_frozen, build_optimizer, set_stage_lr, set_trainable
from kdcore.component import Batch, Component, ComponentSpec
from kdcore.config import structure
from kdcore.data.base import ArrayDataset
from kdcore.dataflow import per_model_losses
from kdcore.hook_writes import HookWrites
from kdcore.ledger import Ledger
from kdcore.losses import one_hot
from kdcore.plan import placed_terms
from kdcore.plugins import PluginHost
from kdcore.recipe import (
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    Recipe,
    ScheduleConfig,
    StageConfig,
)
from kdcore.rundata import RunData
from kdcore.runstate import ComponentContext, Run
from kdcore.step import StepResult, check_outputs, combine
from kdcore.update import update_models


@attrs.define(eq=False)
class Harness:
    """One component, its context and the run behind it, with the components placed beside it
    (``ctx.stage.components`` lists their entries, as a recipe's stage does).

    Attributes:
        component: the component under test.
        ctx: its context (what its hooks are handed).
        run: the run behind the context; set ``run.epoch``, ``run.step`` or ``run.stage`` to
            put the component at another point of training.
        beside: the components :func:`harness` placed after it in the stage (its ``beside``
            entries), in order; every hook of the harness runs theirs too, as a run does.
        contexts: each component's context by name (``ctx`` is the one under test's).
    """

    component: Component
    ctx: ComponentContext
    run: Run
    beside: list[Component] = attrs.field(factory=list, kw_only=True)
    contexts: dict[str, ComponentContext] = attrs.field(factory=dict, kw_only=True)
    _writes: HookWrites | None = attrs.field(default=None, init=False)  # the epoch's, as a run's
    _adapted: bool = attrs.field(default=False, init=False)
    _warned: set[str] = attrs.field(factory=set, init=False)  # roles said to learn nothing
    _optimizer: OptimizerConfig = attrs.field(factory=OptimizerConfig, kw_only=True)
    _seeds: dict[str, int] = attrs.field(factory=dict, kw_only=True)  # each component's
    # the optimisers setup built from the recipe's settings (not one the test set itself)
    _built: dict[str, torch.optim.Optimizer] = attrs.field(factory=dict, init=False)

    def batch(self, index: torch.Tensor | Sequence[int] | None = None,
              x: torch.Tensor | None = None) -> Batch:
        """A batch of the training rows ``index`` (default: all), targets from the ledger's
        ``base_target``, as the engine builds it."""
        run = self.run
        idx = torch.arange(run.ledger.size) if index is None else torch.as_tensor(index)
        inputs = run.data.train.x[idx] if x is None else x
        return Batch(idx, inputs, run.data.train_noisy[idx], forward=run.forward,
                     num_classes=run.num_classes, step=run.step,
                     targets_from=run.ledger["base_target"])

    @property
    def placed(self) -> list[Component]:
        """The stage's components in recipe order: the one under test, then ``beside``."""
        return [self.component, *self.beside]

    def _ctx(self, comp: Component) -> ComponentContext:
        return self.contexts[comp.name]

    def step(self, batch: Batch) -> StepResult:
        """The batch hooks on ``batch`` as a run calls them in a stage of the component and
        those beside it (:func:`kdcore.step.combine`: ``refine``, ``select``, ``weight``,
        ``transfer``): what they return is written to the ledger (``target``,
        ``select/<name>``, ``weight/<name>``) and held to the checks a run makes of it (shapes
        and devices at once; masks in [0, 1], weights not negative and targets distributions,
        which a run checks at the epoch's end, here too); a breach raises the
        :class:`~kdcore.failures.RunFailed` a run would stop with. No backward pass, no
        optimiser step; whether the loss is finite (``result.losses``) is the test's to ask.
        :meth:`epoch_end` fills the rows of the batches a hook abstained on, as a run's
        epoch end does."""
        refiners, selectors, weighters, transfers = self._kinds()
        if self._writes is None:
            self._writes = HookWrites(self.run.ledger)
        writes = self._writes
        writes.index = batch.index
        result = combine(batch, refiners=refiners, selectors=selectors, weighters=weighters,
                         transfers=transfers, context=self._ctx, record=writes.write,
                         abstain=writes.abstained,
                         per_model_losses=per_model_losses(self.placed))
        check_outputs(self.run.ledger, refiners, selectors, weighters)
        return result

    def train(self, batch: Batch) -> StepResult:
        """The batch as a run trains it: the trained models' gradients zeroed, :meth:`step`
        (the batch hooks and the run's checks of what they return), the backward pass (the
        first component's ``backward`` that takes one over), each trained model's optimiser
        step but one a component stepped itself (``ctx.mark_stepped``), ``ctx.step`` and
        ``ctx.stage_step`` moved on by one, then each component's ``after_step``
        (:func:`kdcore.update.update_models`, the training loop's own rules). Call
        :meth:`setup` first: it builds the optimisers."""
        run, placed = self.run, self.placed
        train = run.stage.train
        if missing := [r for r in train if r not in run.optimizers]:
            raise ValueError(f"Harness.train: no optimiser for {', '.join(missing)}; call "
                             "setup() first (it builds them)")
        for role in train:
            run.optimizers[role].zero_grad(set_to_none=True)
        result = self.step(batch)
        update_models(run, result, batch, [r for r in result.losses if r in train], train,
                      [c for c in placed if "backward" in c.hooks()], self._ctx, None,
                      self._warned)
        run.step += 1
        run.stage_step += 1
        for comp in placed:
            comp.after_step(self._ctx(comp), batch)
        return result

    def epoch_end(self, metrics: dict[str, float] | None = None) -> dict[str, float]:
        """The epoch's end as a run's: the rows of the batches a ``select`` or ``weight`` hook
        abstained on hold 1 where it wrote its column this epoch
        (:mod:`kdcore.hook_writes`), then each component's ``on_epoch_end`` with ``metrics``
        (default: none; the engine's evaluation in a run) and what the components logged with
        ``ctx.log_metric`` so far, which is returned with what they added and logged."""
        if self._writes is not None:
            self._writes.settle()
            self._writes = None
        metrics = {} if metrics is None else metrics
        metrics.update(self.run.epoch_metrics)  # as a run's row takes them
        for comp in self.placed:
            comp.on_epoch_end(self._ctx(comp), metrics)
        metrics.update(self.run.epoch_metrics)
        return metrics

    def _kinds(self) -> list[list[Component]]:
        return [[c for c in self.placed if kind in c.kinds()]
                for kind in ("refine", "select", "weight", "transfer")]

    def setup(self) -> Harness:
        """A stage's start as a run's: the first time, ``adapt_models`` (a run calls it before
        any optimiser exists, so that what it adds to a model is trained); the models the
        stage trains in training mode with gradients and the others in evaluation mode
        without; an optimiser in ``h.run.optimizers`` for each trained role that has
        parameters and none yet, built from the recipe's ``models.<role>.optimizer`` (the
        settings :func:`harness` was given); then each component's ``setup`` (the ledger
        read-only, torch's generator seeded as :func:`harness`'s ``seed`` says), then each
        one's ``on_stage_start``. Returns self."""
        run, placed = self.run, self.placed
        if not self._adapted:
            for comp in placed:
                comp.adapt_models(self._ctx(comp))
            self._adapted = True
        train = run.stage.train
        for role, model in run.models.items():
            model.train(role in train)
            fixed = run.fixed_parameters.setdefault(role, architecture_frozen(model))
            set_trainable(model, role in train, fixed)
        for role in train:
            model = run.models.get(role)
            # a stand-in model without parameters gets none (a run would refuse it)
            if role in run.optimizers or model is None or next(model.parameters(), None) is None:
                continue
            cfg = run.recipe.models.get(role)  # a test may have set another recipe
            run.optimizers[role] = build_optimizer(
                model, self._optimizer if cfg is None else cfg.optimizer, role)
            self._built[role] = run.optimizers[role]
        for comp in placed:  # as the loop's setup_stage: torch's generator seeded for each
            ctx = self._ctx(comp)  # alone, the test's own left as it was
            with torch.random.fork_rng(devices=[]), ctx.ledger.frozen("setup"):
                torch.manual_seed(self._seeds[comp.name] + 1)
                comp.setup(ctx)
        for comp in placed:
            comp.on_stage_start(self._ctx(comp))
        return self

    def epoch_start(self, epoch: int = 0) -> None:
        """Move to the first batch of ``epoch`` as a run's first stage does: ``ctx.epoch``;
        ``ctx.step`` and ``ctx.stage_step`` ``epoch x ctx.steps_per_epoch``; the learning rate
        of each optimiser :meth:`setup` built, as the recipe's schedule sets it for the epoch
        (the ``optimizer`` and ``schedule`` settings :func:`harness` was given; an optimiser
        the test set itself keeps its rate); then each component's ``on_epoch_start``."""
        run = self.run
        run.epoch = epoch
        run.step = run.stage_step = epoch * run.steps_per_epoch
        # an optimiser the test set itself keeps its own rate
        scheduled = [r for r, opt in self._built.items()
                     if run.optimizers.get(r) is opt and r in run.recipe.models]
        set_stage_lr(run.optimizers, attrs.evolve(run.recipe, stages=[
            attrs.evolve(run.stage, train=scheduled)]), 0, epoch)
        self._writes = None  # an epoch's abstentions are settled by its own end
        for comp in self.placed:
            comp.on_epoch_start(self._ctx(comp))

    def stage_end(self) -> None:
        """The stage's end as a run's: each component's ``on_stage_end``."""
        for comp in self.placed:
            comp.on_stage_end(self._ctx(comp))

    def fit(self, order: torch.Generator | None = None) -> list[dict[str, float]]:
        """The whole stage as a run trains it after :meth:`setup`: for each of its epochs,
        :meth:`epoch_start`, :meth:`train` on each batch of a shuffle drawn from ``order`` and
        cut as the loop cuts it (:func:`kdcore.batching.epoch_batches` at the recipe's batch
        size), :meth:`epoch_end`; then :meth:`stage_end`. ``order`` defaults to the generator a
        run of seed 0 shuffles its first stage with (``run.seed + 2``). Returns each epoch's
        metrics (:meth:`epoch_end`'s; a run's evaluation is not done); what was logged goes
        into its epoch's only, as into a run's history row, so :attr:`metrics` is empty
        after."""
        run = self.run
        order = torch.Generator().manual_seed(2) if order is None else order
        epochs = []
        for epoch in range(run.stage.epochs):
            self.epoch_start(epoch)
            for rows in epoch_batches(torch.randperm(run.ledger.size, generator=order),
                                      run.recipe.data.batch_size):
                self.train(self.batch(rows))
            epochs.append(self.epoch_end())
            run.epoch_metrics = {}
        self.stage_end()
        return epochs

    @property
    def metrics(self) -> dict[str, float]:
        """What the components logged with ``ctx.log_metric`` this epoch."""
        return self.run.epoch_metrics


def harness(
    cls: type[Component],
    params: Mapping[str, Any] | None = None,
    *,
    x: torch.Tensor,
    noisy_label: torch.Tensor,
    clean_label: torch.Tensor | None = None,
    num_classes: int | None = None,
    models: Mapping[str, nn.Module] | None = None,
    train: Sequence[str] = ("student",),
    serves: Sequence[str] | None = None,
    name: str | None = None,
    terms: Sequence[str] = (),
    weight: float = 1.0,
    seed: int = 0,
    optimizer: Mapping[str, Any] | None = None,
    schedule: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    epochs: int = 1,
    beside: Sequence[Mapping[str, Any]] = (),
    plugins: Sequence[Any] = (),
) -> Harness:
    """Build ``cls`` with ``params`` (validated like a recipe's) in a context over ``x``.

    Args:
        cls: the component class.
        params: its parameters, as a recipe table.
        x: the training inputs ``(N, ...)``.
        noisy_label, clean_label: the observed and the true labels (default: the noisy ones).
        num_classes: C (default: the largest label + 1).
        models: the models by role (default: none; hooks that run a model need them).
        train: the roles the stage trains.
        serves: the roles the component serves (default: ``train``).
        name, terms, weight: as in a recipe's component entry.
        seed: the component's seed, as a run's ``component_seed(run.seed, stage index,
            name)``: its generator (``ctx.generator``) starts from it and its ``setup`` draws
            from torch's generator seeded with ``seed + 1`` (the test's own random state is
            left as it was), so that the harness draws what a run of the component would.
        optimizer: the trained roles' optimiser settings, as a recipe's
            ``models.<role>.optimizer`` table (default: the recipe's defaults, SGD); the
            context's recipe holds them under ``models``, and :meth:`Harness.setup` builds
            the optimisers.
        schedule: their learning-rate schedule, as a recipe's ``models.<role>.schedule``
            table (default: constant), which :meth:`Harness.epoch_start` follows.
        batch_size, epochs: the recipe's ``data.batch_size`` (default: the recipe's default)
            and the stage's epochs: what ``ctx.steps_per_epoch`` (the batches of ``x``) and a
            schedule over the stage are computed from.
        beside: components placed after it in the stage, each a recipe's component entry
            (:func:`kdcore.testing.component`: ``use``, ``name``, ``params``, ``models``,
            ``terms``, ``weight``; ``models`` defaults to ``train``), ``use`` an installed
            component's name or a :class:`~kdcore.Component` class, plus ``seed`` (default 0),
            as ``seed`` above; one with ``enabled = false`` is left out, as a run leaves it: a
            ``ce`` beside a selection, say, so that ``train`` has a loss.
        plugins: in-process plugins whose components a ``beside`` entry's ``use`` may name,
            besides the installed ones (as :func:`kdcore.testing.run_tiny`'s).
    """
    clean = noisy_label if clean_label is None else clean_label
    c = int(num_classes or int(max(noisy_label.max(), clean.max())) + 1)
    label = name or cls.__name__.lower()
    comp = cls(structure(cls.Params, dict(params or {}), "params"),
               ComponentSpec(label, label, tuple(serves or train),
                             placed_terms(cls, terms, label), weight))
    beside = [e for e in beside if e.get("enabled", True)]  # as a recipe's disabled entry
    # the registry of installed components costs milliseconds: built only to resolve a name
    named = any(isinstance(e.get("use"), str) for e in beside)
    host = PluginHost(extra=list(plugins)) if named else None
    others = [_placed(entry, f"beside[{i}]", train, host) for i, entry in enumerate(beside)]
    if len(names := [label, *(o.name for o, _ in others)]) != len(set(names)):
        raise ValueError(f"harness: the stage's components need distinct names, got {names}")
    entries = [{"use": p.spec.use, "name": p.name, "models": list(p.spec.models),
                "terms": list(e.get("terms", ())), "weight": p.spec.weight,
                "params": dict(e.get("params") or {})}  # as the recipe's entries read
               for p, e in [(comp, {"terms": terms, "params": params}),
                            *((o, e) for (o, _), e in zip(others, beside))]]
    stage = structure(StageConfig, {"name": "stage", "epochs": epochs, "train": list(train),
                                    "components": entries}, "stages")
    opt = structure(OptimizerConfig, {} if optimizer is None else optimizer, "optimizer")
    sched = structure(ScheduleConfig, {} if schedule is None else schedule, "schedule")
    configs = {role: ModelConfig(optimizer=opt, schedule=sched)
               for role in (*(models or {}), *train)}
    data = structure(DataConfig, {} if batch_size is None else {"batch_size": batch_size}, "data")
    run = Run(Recipe(data=data, models=configs, stages=[stage]), Path("."), torch.device("cpu"),
              [])
    run.steps_per_epoch = batches_per_epoch(len(x), data.batch_size) if train else 0
    empty = ArrayDataset(x[:0], clean[:0], c)
    train_split = ArrayDataset(x, clean, c)
    run.data = RunData(train=train_split, val=empty, test=empty, gold=empty,
                       train_noisy=noisy_label, val_noisy=clean[:0],
                       train_source=torch.arange(len(x)), transition=torch.eye(c),
                       noise_rate=float((noisy_label != clean).double().mean()),
                       num_classes=c, class_names=tuple(map(str, range(c))),
                       device=torch.device("cpu"))
    run.models.update(models or {})
    run.ledger = ledger = Ledger(len(x))
    ledger.add("noisy_label", noisy_label, producer="data", kind="label", snapshot=False)
    ledger.add("clean_label", clean, producer="data", kind="label", snapshot=False)
    ledger.add("clean_mask", noisy_label == clean, producer="data", kind="mask", snapshot=False)
    ledger.add("base_target", one_hot(noisy_label, c), producer="labels", kind="target",
               snapshot=False)
    ledger.add("target", one_hot(noisy_label, c), producer="labels", kind="target")
    run.write_data = lambda n, v: None
    seeds = {label: seed, **{o.name: s for o, s in others}}
    contexts = {p.name: ComponentContext(run, p.name, torch.Generator().manual_seed(seeds[p.name]),
                                         frozenset(p.written_columns()))
                for p in [comp, *(o for o, _ in others)]}
    return Harness(comp, contexts[label], run, beside=[o for o, _ in others], contexts=contexts,
                   optimizer=opt, seeds=seeds)


_ENTRY_KEYS = frozenset({"use", "name", "params", "models", "terms", "weight", "enabled",
                         "seed"})


def _placed(entry: Mapping[str, Any], where: str, train: Sequence[str], host: Any
            ) -> tuple[Component, int]:
    """The component of a ``beside`` entry, and its seed."""
    if unknown := sorted(set(entry) - _ENTRY_KEYS):
        raise ValueError(f"harness: {where} has no key {', '.join(map(repr, unknown))} (it "
                         f"takes {', '.join(sorted(_ENTRY_KEYS))})")
    if "use" not in entry:
        raise ValueError(f"harness: {where} names no component; give its 'use'")
    use = entry["use"]
    cls = host.components.get(use) if isinstance(use, str) else use
    name = entry.get("name") or (use if isinstance(use, str) else cls.__name__.lower())
    spec = ComponentSpec(name, use if isinstance(use, str) else name,
                         tuple(entry.get("models") or train),
                         placed_terms(cls, entry.get("terms", ()), name),
                         float(entry.get("weight", 1.0)))
    return (cls(structure(cls.Params, dict(entry.get("params") or {}), f"{where}.params"),
                spec), int(entry.get("seed", 0)))
