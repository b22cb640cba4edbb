"""Stages -> epochs -> batches: the training loop, which knows no method by name.

Per stage it sets up the stage's components (built once per run by the plan), runs its epochs,
and at each epoch's end evaluates, writes the history row and checkpoints
(:mod:`kdcore.checkpointing`); per batch it hands the components to
:func:`kdcore.step.combine`, then runs the backward pass and the optimiser steps.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from typing import Any

import torch
from loguru import logger

from kdcore import distributed, interrupts, step
from kdcore.batching import batches_per_epoch, epoch_batches
from kdcore.build import build_optimizer, set_stage_lr, set_trainable
from kdcore.checkpointing import Checkpointer, carried_states, continue_states, rehearse_stages
from kdcore.component import Batch, Component
from kdcore.diverged import loss_diverged
from kdcore.epoch_line import epoch_line
from kdcore.errors import RecipeError
from kdcore.evaluation import (
    BestKeeper,
    EpochMetrics,
    confusion_on_test,
    evaluate,
    ledger_metrics,
)
from kdcore.history import HistoryWriter
from kdcore.hook_writes import HookWrites
from kdcore.losses import one_hot
from kdcore.plan import RunPlan, StagePlan
from kdcore.plugins import ObserverBus
from kdcore.records import EpochRecords
from kdcore.runstate import ComponentContext, Run, component_seed
from kdcore.step import check_outputs, combine
from kdcore.update import update_models

# Steps between two checks that the losses are finite: each check waits for the device (every
# step would stall a GPU); a divergence is still reported with its exact step and term.
FINITE_CHECK_EVERY = 32
# an epoch's own columns besides the select and weight hooks' (step.hook_columns): an epoch
# row holds one only if the epoch wrote it (a selector that abstained, an untrained model: not)
EPOCH_RECORDS = ("loss/", "logits/")


class Trainer:
    """Trains a prepared run through its plan's stages.

    Args:
        plan: the run's plan.
        run: the prepared run (:func:`kdcore.prepare.prepare_run`).
        history: the history writer (created, or rolled back on resume).
        bus: the observer hooks.
        checkpointer: saves and restores the run's state.
        progress: show a progress bar over batches.
    """

    def __init__(self, plan: RunPlan, run: Run, history: HistoryWriter, bus: ObserverBus,
                 checkpointer: Checkpointer, *, progress: bool = False):
        self.plan, self.run, self.history, self.bus = plan, run, history, bus
        self.ckpt, self.progress = checkpointer, progress
        self.gradient_free: set[str] = set()  # roles warned of a loss without gradient
        self.nan_logits: set[str] = set()  # roles warned of NaN logits in evaluation
        seed = plan.recipe.run.seed
        self.order_gen = torch.Generator().manual_seed(seed + 2)
        self.augment_gen = torch.Generator().manual_seed(seed + 3)
        # fp16 (CUDA only) scales the loss so that small gradients survive float16
        self.scaler = (torch.amp.GradScaler(run.device.type)
                       if plan.recipe.run.precision == "fp16" else None)
        self.best = BestKeeper(frozenset(
            r for st in plan.recipe.stages if st.keep == "best_val_all" for r in st.train))
        self.summary: dict[str, Any] = {}
        self.carried: dict[str, dict[str, Any]] = {}
        self.observer_ctx = ComponentContext(run, "observer", run.generator)
        observers: dict[str, ComponentContext] = {}

        def observer(name: str) -> ComponentContext:  # a plugin's writes carry its name
            ctx = observers.get(name)
            if ctx is None:
                ctx = observers[name] = ComponentContext(run, name, run.generator)
            return ctx

        bus.context = observer
        self.contexts: dict[int, ComponentContext] = {}  # id(component) -> its context
        self.records = EpochRecords(FINITE_CHECK_EVERY)
        self.hook_columns = step.hook_columns([c for s in plan.stages for c in s.selectors],
                                              [c for s in plan.stages for c in s.weighters])
        # (step, role, loss, {term: value}) of the epoch's steps; those from _checked on are
        # not yet checked to be finite
        self._unchecked: list[tuple[int, str, torch.Tensor, dict[str, torch.Tensor]]] = []
        self._checked = 0
        self.hook_writes = HookWrites(run.ledger)  # what batch hooks return or abstain on
        self._epoch_times: dict[int, list[float]] = {}  # stage -> epoch seconds, this process
        self.rows_total = sum(s.epochs for s in plan.recipe.stages)  # the history's at the end
        self._hard_source: tuple[torch.Tensor, tuple[int, int]] | None = None
        self._hard_labels: torch.Tensor | None = None  # the labels _hard_source matched
        self.current_stage: StagePlan = plan.stages[0]
        self._logit_columns: list[tuple[str, str]] = []  # (role, its column) the stage trains
        self._stored: dict[str, Any] | None = None  # frozen roles read from run.features

    # -- contexts -----------------------------------------------------------------------------

    def context(self, comp: Component) -> ComponentContext:
        return self.contexts[id(comp)]

    def bind_stage(self, stage: StagePlan) -> None:
        """Give each of the stage's components its context and its own generator."""
        seed = self.plan.recipe.run.seed
        self.contexts = {
            id(c): ComponentContext(
                self.run, c.name,
                torch.Generator().manual_seed(component_seed(seed, stage.index, c.name)),
                frozenset(c.written_columns()))
            for c in stage.components
        }

    def setup_stage(self, stage: StagePlan) -> None:
        """``setup`` of every component, each under its own seed: what it draws (a network's
        initial weights) depends on nothing that ran before, so a resumed run builds the same."""
        seed = self.plan.recipe.run.seed
        for comp in stage.components:
            ctx = self.context(comp)
            with torch.random.fork_rng(devices=_rng_devices(self.run.device)), \
                    ctx.ledger.frozen("setup"):
                torch.manual_seed(component_seed(seed, stage.index, comp.name) + 1)
                comp.setup(ctx)

    # -- the run ------------------------------------------------------------------------------

    def fit(self, position: dict[str, int], state: dict[str, Any] | None) -> dict[str, Any]:
        """Run every stage from ``position``; ``state`` is the checkpoint to continue from."""
        first = int(position["stage"])
        rehearse_stages(self, self.plan.stages[first:])  # as `kdcore check` sets them up
        self.bus.call("kdcore_run_start", ctx=self.observer_ctx)
        for s in range(first, len(self.plan.stages)):
            start = int(position["epoch"]) if s == first else 0
            self._run_stage(self.plan.stages[s], start, state if s == first else None)
        self.bus.call("kdcore_run_end", ctx=self.observer_ctx, summary=self.summary)
        return self.summary

    def enter_stage(self, stage: StagePlan) -> None:
        """Make ``stage`` current: its models trainable (the others frozen), an optimiser for
        each role it trains, its components bound to their contexts and set up."""
        run, cfg = self.run, stage.config
        run.stage, run.stage_index = cfg, stage.index
        # the stage's own position from the start: its setup and on_stage_start must not see
        # the previous stage's last epoch or step count
        run.epoch, run.stage_step = 0, 0
        bs = self.plan.recipe.data.batch_size
        run.steps_per_epoch = batches_per_epoch(len(run.data.train), bs) if cfg.train else 0
        self.current_stage = stage
        for role, model in run.models.items():
            model.train(role in cfg.train)
            set_trainable(model, role in cfg.train, run.fixed_parameters.get(role, ()))
        for role in cfg.train:
            if role not in run.optimizers:
                try:
                    run.optimizers[role] = build_optimizer(
                        run.models[role], self.plan.recipe.models[role].optimizer, role)
                except RecipeError as exc:
                    raise exc.at(file=self.plan.recipe.source) from None
        self.bind_stage(stage)
        self._logit_columns = [(role, f"logits/{role}") for role in cfg.train]
        models = self.plan.recipe.models
        self._stored = {r: functools.partial(run.features, r, "train") for r in run.models
                        if models[r].cache_outputs and r not in cfg.train} or None
        self.setup_stage(stage)

    def _run_stage(self, stage: StagePlan, start_epoch: int, state: dict[str, Any] | None
                   ) -> None:
        run, s, cfg = self.run, stage.index, stage.config
        self.enter_stage(stage)
        run.epoch, run.stage_step = start_epoch, start_epoch * run.steps_per_epoch
        if state is not None and start_epoch > 0:
            self.ckpt.restore_stage(self, state)
        if start_epoch == 0:
            continue_states(stage.components, self.carried)
            for comp in stage.components:
                comp.on_stage_start(self.context(comp))
        self.bus.call("kdcore_stage_start", ctx=self.observer_ctx, stage=cfg)
        for epoch in range(start_epoch, cfg.epochs):
            self._run_epoch(stage, epoch)
        for comp in stage.components:
            comp.on_stage_end(self.context(comp))
        for role in cfg.train:
            kept = self.best.kept_state(s, cfg, role)
            if kept is not None:
                run.models[role].load_state_dict(kept[2])
                run.bump(role)
                logger.info(f"stage '{cfg.name}': {role} restored to its best-validation "
                            f"epoch {kept[1] + 1} (stage '{kept[0]}')")
            if role in cfg.eval_roles and cfg.epochs:  # per class, with the kept weights
                matrix = self.best.kept_confusion(s, cfg, role)
                if matrix is None:  # resumed from a checkpoint of an older kdcore
                    matrix = confusion_on_test(run.models[role], run.data,
                                               self.plan.recipe.data.eval_batch_size, run.predict)
                run.record_data(f"test_confusion/{cfg.name}/{role}", matrix)
        self.best.release(s)
        for role in cfg.train:
            summary = self.best.summary(s, cfg, role)
            if summary is not None:
                self.summary[role] = summary
            self.ckpt.save_weights(role, run.models[role])
        self.bus.call("kdcore_stage_end", ctx=self.observer_ctx, stage=cfg)
        self.carried = carried_states(stage.components)  # the next stage continues them
        self.contexts = {}
        if s + 1 < len(self.plan.stages):  # after the last stage, summary.json marks the end
            self.ckpt.save(self, s + 1, 0)

    def _run_epoch(self, stage: StagePlan, epoch: int) -> None:
        run, cfg = self.run, stage.config
        run.epoch = epoch
        t0 = time.perf_counter()
        marks = run.ledger.marks(EPOCH_RECORDS, self.hook_columns)  # which this epoch writes
        set_stage_lr(run.optimizers, self.plan.recipe, stage.index, epoch)
        for comp in stage.components:
            comp.on_epoch_start(self.context(comp))
        self.bus.call("kdcore_epoch_start", ctx=self.observer_ctx, epoch=epoch)
        self._hard_source = self._one_hot_labels()
        self.hook_writes.start()
        n, bs = len(run.data.train), self.plan.recipe.data.batch_size
        order = torch.randperm(n, generator=self.order_gen).to(run.device)
        rows = epoch_batches(order, bs)
        batches: Any = run.data.stream(run.data.train, rows)
        if self.progress:
            from tqdm import tqdm

            batches = tqdm(batches, total=len(rows), leave=False,
                           desc=f"{cfg.name} {epoch + 1}/{cfg.epochs}")
        count = 0
        if cfg.train:
            observes = self.bus.has("kdcore_batch_end")
            for index, x in batches:
                self._train_batch(stage, index, x, observes)
                count += 1
                interrupts.check()  # a stop whose exception Python dropped stops here
            self.hook_writes.settle()
            self._check_finite()
            self.records.write(run.ledger)
            check_outputs(run.ledger, stage.refiners, stage.selectors, stage.weighters)
        if not stage.refiners:
            # no batch-level refiner: the epoch-level targets are what every sample trained on
            run.ledger.mirror("target", "base_target", kind="target")
        metrics = self._train_metrics(count)
        distributed.average_buffers(*(run.models[r] for r in cfg.train))  # BN statistics
        confusions: dict[str, torch.Tensor] = {}
        metrics.update(evaluate(run.models, cfg.eval_roles, run.data,
                                self.plan.recipe.data.eval_batch_size, run.predict, confusions,
                                self.nan_logits))
        for role in cfg.train:
            if role in cfg.eval_roles:
                self.best.update(stage.index, cfg, role, epoch, metrics, run.models[role],
                                 confusions[role])
        stale = run.ledger.unwritten(marks)  # not this epoch's: no row, no metrics
        metrics.update(ledger_metrics(run.ledger, skip=stale))
        for role in cfg.train:
            metrics[f"lr/{role}"] = run.lr(role)
        metrics.take_logged(run.epoch_metrics)
        for comp in stage.components:
            comp.on_epoch_end(self.context(comp), metrics)
        metrics.take_logged(run.epoch_metrics)  # what on_epoch_end logged, for the observers
        self.bus.call("kdcore_epoch_end", ctx=self.observer_ctx, epoch=epoch, metrics=metrics)
        metrics.take_logged(run.epoch_metrics)
        metrics["time/epoch"] = time.perf_counter() - t0
        kept = self.plan.recipe.run.kept_in_history
        columns = {n: c for n, c in run.ledger.items() if kept(n) and n not in stale}
        row = self.history.append_epoch(stage=cfg.name, epoch=epoch, metrics=metrics,
                                        columns=columns, rows_total=self.rows_total)
        run.epoch_metrics = {}  # what on_stage_start logged went into this first row
        self._log_epoch(stage, epoch, metrics)
        if epoch + 1 < cfg.epochs and self.ckpt.due(first_epoch=row == 0):
            self.ckpt.save(self, stage.index, epoch + 1, history_rows=row + 1)

    # -- one batch ----------------------------------------------------------------------------

    def _train_batch(self, stage: StagePlan, index: torch.Tensor, inputs: torch.Tensor,
                     observes: bool) -> None:
        run = self.run
        data = run.data
        x = run.augment(inputs, self.augment_gen) if run.augmentations else inputs
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        base, noisy = run.ledger["base_target"], data.train_noisy[index]
        src = self._hard_source
        hard = noisy if src is not None and src[0] is base and src[1] == (
            base._version, data.train_noisy._version) else None
        batch = Batch(index, x, noisy, forward=run.forward, num_classes=data.num_classes,
                      step=run.step, hard_targets=hard, targets_from=base, stored=self._stored)
        trained_roles = stage.config.train
        for role in trained_roles:
            run.optimizers[role].zero_grad(set_to_none=True)
        writes = self.hook_writes
        writes.index = index
        result = combine(batch, refiners=stage.refiners, selectors=stage.selectors,
                         weighters=stage.weighters, transfers=stage.transfers,
                         context=self.context, record=writes.write, abstain=writes.abstained,
                         per_model_losses=self.plan.per_model_losses)
        records = self.records
        # each term's loss, and each trained model's logits (training dynamics, as Dataset
        # Cartography records them)
        for column, producer, values in result.losses_per_sample + [
                (column, role, out.logits.detach()) for role, column in self._logit_columns
                if (out := batch.computed(role)) is not None]:
            if observes:  # the batch's values for kdcore_batch_end
                batch.records[column] = records.evaluate(column, producer, values)
            records.add(column, producer, index, values)
        losses = result.losses
        trained = [r for r in losses if r in trained_roles]
        for role in trained:  # summed per term at the epoch end, checked every few steps
            self._unchecked.append((run.step, role, result.total(role), result.terms[role]))
        update_models(run, result, batch, trained, trained_roles, stage.backward, self.context,
                      self.scaler, self.gradient_free)
        if len(self._unchecked) - self._checked >= FINITE_CHECK_EVERY:
            self._check_finite()
        run.step += 1
        run.stage_step += 1
        for comp in stage.after_step:
            comp.after_step(self.context(comp), batch)
        if observes:
            self.bus.call("kdcore_batch_end", ctx=self.observer_ctx, batch=batch,
                          losses={r: losses[r] for r in trained})

    def _train_metrics(self, batches: int) -> dict[str, float]:
        """Each model's total loss and every term, averaged over the epoch's batches."""
        self._check_finite()
        sums: dict[str, list[torch.Tensor]] = defaultdict(list)
        for _, role, loss, terms in self._unchecked:
            sums[f"train/{role}/loss"].append(loss)
            for term, value in terms.items():
                sums[f"train/{role}/{term}"].append(value)
        self._unchecked, self._checked = [], 0  # a component's on_epoch_end only adds to it
        return EpochMetrics({k: float(torch.stack(v).sum()) / max(batches, 1)
                             for k, v in sums.items()})

    def _check_finite(self) -> None:
        """Raise :class:`TrainingDiverged` at the first unchecked non-finite loss, naming why
        (or RunFailed naming the selector, weighter or refiner whose output made it NaN)."""
        window = self._unchecked[self._checked:]
        self._checked = len(self._unchecked)
        if not window or bool(torch.isfinite(torch.stack([w[2] for w in window])).all()):
            return
        at = next(i for i, w in enumerate(window) if not bool(torch.isfinite(w[2])))
        step, role, _, terms = window[at]
        stage = self.current_stage  # a NaN mask, weight or target is its producer's fault
        check_outputs(self.run.ledger, stage.refiners, stage.selectors, stage.weighters)
        # every earlier step of the window was finite, as were the windows before it
        before = next(((w[0], w[3]) for w in reversed(
            self._unchecked[:len(self._unchecked) - len(window) + at]) if w[1] == role), None)
        raise loss_diverged(role, f"stage '{self.run.stage.name}' epoch {self.run.epoch}",
                            step, terms, before, stage.components)

    def _one_hot_labels(self) -> tuple[torch.Tensor, tuple[int, int]] | None:
        """``(base_target, (its version, the noisy labels' version))`` when the base targets
        are exactly the one-hot noisy labels; batches then carry those labels as
        ``hard_targets`` until either tensor is replaced or edited in place."""
        base = self.run.ledger["base_target"]
        noisy = self.run.data.train_noisy
        versions, known = (base._version, noisy._version), self._hard_source
        if known is not None and known[0] is base and known[1] == versions and (
                self._hard_labels is noisy):
            return known  # the same tensors, unchanged since last epoch's comparison
        if not torch.equal(base, one_hot(noisy, base.shape[1], base.dtype)):
            return None
        self._hard_labels = noisy
        return base, versions

    def _log_epoch(self, stage: StagePlan, epoch: int, metrics: dict[str, float]) -> None:
        self._epoch_times.setdefault(stage.index, []).append(metrics["time/epoch"])
        logger.info(epoch_line(self.plan.recipe, stage.index, epoch, metrics,
                               self._epoch_times))


def _rng_devices(device: torch.device) -> list[Any]:
    return [device] if device.type == "cuda" else []
