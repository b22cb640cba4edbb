"""The recipe's declared data flow, checked in stage order before anything trains: every ledger
column a component reads is written before it (by the data, an earlier stage, or a component
placed before it), of the kind it needs, and, where it is read before its stage's first batch
or in a hook of that batch, written by then; every column a component declares can be kept by
the history."""

from __future__ import annotations

import fnmatch
import typing
from collections.abc import Iterable, Sequence
from typing import Protocol

from loguru import logger

from kdcore.component import Component
from kdcore.context import BatchHook, StartHook
from kdcore.errors import RecipeError, did_you_mean
from kdcore.history_names import declared_column_problem
from kdcore.plan_keys import component_key, param_key
from kdcore.recipe import Recipe, StageConfig

DATA_KINDS = {"noisy_label": "label", "clean_label": "label", "clean_mask": "mask",
              "base_target": "target", "target": "target"}
"""The columns every ledger has from the start, and their kinds (for the plan's check of what
a reader needs, :meth:`Component.read_kinds`)."""
DATA_COLUMNS = tuple(DATA_KINDS)
"""Columns every ledger has from the start."""

_START_ORDER: dict[StartHook, int] = {"on_stage_start": 0, "on_epoch_start": 1}
_BATCH_ORDER: dict[BatchHook, int] = {h: i for i, h in enumerate(typing.get_args(BatchHook))}
# a reader that accepts one of these kinds reads one number per sample
_PER_SAMPLE = frozenset({"label", "mask", "weight"})


class Stage(Protocol):
    """What the check needs of a stage's plan (:class:`kdcore.plan.StagePlan`)."""

    index: int
    config: StageConfig
    components: list[Component]


def per_model_losses(components: Iterable[Component]) -> frozenset[str]:
    """The labels of the transfer terms whose per-sample losses the engine records per model,
    ``loss/<name>/<role>``, in every stage of the run: those among ``components`` (every
    stage's) that serve more than one model (the others record ``loss/<name>``). One form per
    label for the whole run: a teacher stage's ``loss/ce`` and a later two-model stage's
    ``loss/ce/<role>`` cannot both be kept by the history (a name is not a column and a folder
    of columns at once; such a recipe had passed ``check`` and stopped the run at its second
    stage's first epoch end)."""
    return frozenset(c.name for c in components if "transfer" in c.kinds() and len(c.models) > 1)


def check_columns(recipe: Recipe, stages: Sequence[Stage]) -> set[str]:
    """Every column a component reads is written before it, in stage order (in its stage's
    first epoch where the reader is of the same stage), of the kind it needs where both the
    reader and the last writer say, and before the stage's first batch where the reader reads
    it then. Returns every column the run writes.

    Raises:
        RecipeError: the first column that breaks one of these rules, naming its reader.
    """
    available: set[str] = set(DATA_COLUMNS)
    kinds: dict[str, tuple[str, str]] = {c: (k, "the data") for c, k in DATA_KINDS.items()}
    never: dict[str, str] = {}  # a column whose writer's schedule starts past its stage: why
    # the columns known to hold a row of numbers per sample (besides those of kind target,
    # which a reader of one number does not take), and who writes them so
    rows: dict[str, str] = {}
    per_role = per_model_losses(c for stage in stages for c in stage.components)
    for stage in stages:
        # per-sample losses and training logits reach the ledger at the end of a stage's first
        # epoch, so they serve later stages
        epoch_end: set[str] = {f"logits/{r}" for r in stage.config.train}
        first = _FirstEpoch(recipe, stage, available)
        for comp in stage.components:
            for column in dict.fromkeys((*comp.reads(), *comp.reads_at_start())):
                if column not in available:
                    why = never.get(column) or (
                        f"{did_you_mean(column, available)}, which nothing placed before it "
                        f"writes; written by then: {', '.join(sorted(available))}")
                    raise RecipeError(
                        f"component '{comp.name}' ({comp.spec.use}) reads ledger column "
                        f"'{column}'{why}", file=recipe.source,
                        key=param_key(recipe, stage.index, comp, column))
            _check_read_kinds(recipe, stage, comp, kinds, rows)
            first.check_reads(comp)
            _check_writes(recipe, stage, comp, available | epoch_end)
            written = _written_in_stage(stage, comp, never)
            available.update(written)
            first.add_writes(comp)
            declared = comp.written_column_kinds()
            row_columns = {template.format(name=comp.name) for template in comp.row_columns}
            for column in written:
                if column in declared:
                    kinds[column] = (declared[column], f"'{comp.name}'")
                else:
                    kinds.pop(column, None)  # rewritten without a declared kind
                if column in row_columns:
                    rows[column] = f"'{comp.name}'"
                else:
                    rows.pop(column, None)
            if "transfer" in comp.kinds():
                epoch_end.update([f"loss/{comp.name}/{r}" for r in comp.models]
                                 if comp.name in per_role else [f"loss/{comp.name}"])
        available |= epoch_end
        # the engine's records: per-sample losses and training logits, as values
        kinds.update({column: ("value", "the engine") for column in epoch_end})
        rows.update({f"logits/{r}": "the engine" for r in stage.config.train})
    return available


def _written_in_stage(stage: Stage, comp: Component, never: dict[str, str]) -> list[str]:
    """``comp``'s written columns but those its schedule would write from an epoch past its
    stage's last (said once, a warning: the schedule never starts), which join ``never``."""
    epochs = stage.config.epochs
    past = {c: e for c, e in comp.late_writes().items() if e >= epochs}
    if past:
        start = min(past.values())
        has = f"{epochs} epoch{'s' if epochs > 1 else ''}"
        why = (f", which '{comp.name}' ({comp.spec.use}) writes only from epoch {start} of "
               f"stage '{stage.config.name}' on (counted from 0), and that stage has {has}")
        never.update(dict.fromkeys(past, why))
        logger.warning(f"component '{comp.name}' ({comp.spec.use}) would write "
                       f"{', '.join(sorted(past))} from epoch {start} of stage "
                       f"'{stage.config.name}' on (counted from 0), and that stage has {has}: "
                       "its schedule never starts there")
    return [c for c in comp.written_columns() if c not in past]


def _check_read_kinds(recipe: Recipe, stage: Stage, comp: Component,
                      kinds: dict[str, tuple[str, str]], rows: dict[str, str]) -> None:
    """The kind a reader needs is the last writer's; and a reader of one number per sample
    (a label, mask or weight) gets no column of rows (the engine's ``logits/<role>`` read
    as LP seed weights had passed ``check`` and stopped the run at a shape mismatch)."""
    for column, need in comp.read_kinds().items():
        needs = (need,) if isinstance(need, str) else tuple(need)
        have, writer = kinds.get(column, (needs[0], ""))
        if have not in needs:
            raise RecipeError(
                f"component '{comp.name}' ({comp.spec.use}) reads ledger column "
                f"'{column}' as a column of kind {_either(needs)}, but {writer} "
                f"writes it as kind {have}", file=recipe.source,
                key=param_key(recipe, stage.index, comp, column))
        if column in rows and not _PER_SAMPLE.isdisjoint(needs):
            raise RecipeError(
                f"component '{comp.name}' ({comp.spec.use}) reads ledger column "
                f"'{column}' as one number per sample (a column of kind {_either(needs)}), "
                f"but {rows[column]} writes a row of numbers per sample there",
                file=recipe.source, key=param_key(recipe, stage.index, comp, column))


class _FirstEpoch:
    """When a stage's first epoch has each column, as its components are placed in order:
    before its first batch (and from which start hook), from a hook of its first batch on, or
    only from a later epoch. A reader of the same stage finds it missing otherwise (a label
    propagation reading a selector's column at its first epoch's start, a column written from
    a later ``start_epoch``, or AWE's ``weight`` hook reading a mask SMKD writes in its
    ``transfer``, had passed ``check`` and stopped the run there)."""

    def __init__(self, recipe: Recipe, stage: Stage, available: set[str]):
        self.recipe, self.stage = recipe, stage
        # an earlier stage's columns are all there at the stage's start; else the hook that
        # writes one first, and its component
        self.at_start: dict[str, tuple[StartHook, Component | None]] = dict.fromkeys(
            available, ("on_stage_start", None))
        self.present = set(available)  # there in the first epoch (by its batches, at least)
        self.late: dict[str, Component] = {}  # written only from a later epoch, and by whom
        self.writers: dict[str, Component] = {}  # this stage's last writer of each column
        # a column written in the batches: the first batch hook that writes it, and whose
        self.in_batch: dict[str, tuple[BatchHook, Component]] = {}

    def check_reads(self, comp: Component) -> None:
        for column in dict.fromkeys((*comp.reads(), *comp.reads_at_start())):
            if column in self.late:
                writer = self.late[column]
                self._refuse(comp, column, f", which '{writer.name}' ({writer.spec.use}) writes "
                                           f"only from epoch {writer.late_writes()[column]} of "
                                           f"stage '{self.stage.config.name}' on (counted from 0)")
        for column, hook in comp.reads_at_start().items():
            have = self.at_start.get(column)
            if have is not None and _START_ORDER[have[0]] <= _START_ORDER[hook]:
                continue  # (an earlier stage's columns always are: they have no writer here)
            written, writer = have or (None, self.writers[column])
            when = ("only from the stage's batches on" if written is None else
                    f"in {written}, which runs after every component's {hook}")
            self._refuse(comp, column, f" in {hook}, before stage '{self.stage.config.name}' "
                                       f"trains its first batch, but '{writer.name}' "
                                       f"({writer.spec.use}) writes it {when}")

        for column, hook in comp.reads_in_batch().items():
            have = self.in_batch.get(column)
            if column in self.at_start or have is None or (
                    _BATCH_ORDER[have[0]] <= _BATCH_ORDER[hook]):
                continue  # (a column no writer says when it writes is taken on trust)
            written, writer = have
            self._refuse(comp, column, f" in its {hook} hook, but '{writer.name}' "
                                       f"({writer.spec.use}) writes it in its {written} hook, "
                                       f"which runs after every {hook} hook of a batch, so "
                                       f"the first batch of stage '{self.stage.config.name}' "
                                       "does not have it yet")

    def add_writes(self, comp: Component) -> None:
        later = comp.late_writes()
        for column in comp.written_columns():
            self.writers[column] = comp
            if column not in later:
                self.present.add(column)
                self.late.pop(column, None)
            elif column not in self.present:
                self.late.setdefault(column, comp)
        for column, hook in comp.writes_in_batch().items():
            have = self.in_batch.get(column)
            if column not in later and (have is None or
                                        _BATCH_ORDER[hook] < _BATCH_ORDER[have[0]]):
                self.in_batch[column] = (hook, comp)
        for column, hook in comp.writes_at_start().items():
            # a hook's one column for every model it serves reads as each model's too
            shared = column in (f"select/{comp.name}", f"weight/{comp.name}")
            for name in (column, *(f"{column}/{r}" for r in comp.models if shared)):
                have = self.at_start.get(name)
                if name not in later and (have is None or
                                          _START_ORDER[hook] < _START_ORDER[have[0]]):
                    self.at_start[name] = (hook, comp)

    def _refuse(self, comp: Component, column: str, why: str) -> None:
        raise RecipeError(
            f"component '{comp.name}' ({comp.spec.use}) reads ledger column '{column}'{why}; "
            "read a column written by then, or this one in a later stage",
            file=self.recipe.source, key=param_key(self.recipe, self.stage.index, comp, column))


def _check_writes(recipe: Recipe, stage: Stage, comp: Component, before: set[str]) -> None:
    """Each column in ``comp``'s ``writes`` can be kept by the history beside the others."""
    for column in dict.fromkeys(w.format(name=comp.name) for w in comp.writes):
        problem = declared_column_problem(
            column, before | set(comp.written_columns()) - {column}, recipe.models)
        if problem:
            raise RecipeError(f"component '{comp.name}' ({comp.spec.use}) declares a ledger "
                              f"column it cannot write: {problem}", file=recipe.source,
                              key=f"{component_key(recipe, stage.index, comp)}.use")


def check_history_skip(recipe: Recipe, written: set[str]) -> None:
    """Warn of a ``run.history_skip`` pattern that matches no column the recipe writes: a
    misspelt one would leave the history as large as before, unnoticed."""
    for pattern in recipe.run.history_skip:
        if not any(fnmatch.fnmatchcase(column, pattern) for column in written):
            logger.warning(f"run.history_skip: '{pattern}' matches none of the columns this "
                           f"recipe writes: {', '.join(sorted(written))}")


def _either(kinds: Sequence[str]) -> str:
    return kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} or {kinds[-1]}"


__all__ = ["DATA_COLUMNS", "DATA_KINDS", "Stage", "check_columns", "check_history_skip",
           "per_model_losses"]
