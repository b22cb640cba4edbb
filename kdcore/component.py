"""Recipe components (the batch they see is :class:`kdcore.batch.Batch`).

A component is an object that a recipe names in a stage. It takes part in training through the
*component hooks*, the methods of :class:`Component` below, which the engine calls **in the
recipe's order**; :mod:`kdcore.hookspecs` states each hook's contract (when it runs, what it may
read and change, how several results combine). Every hook is handed the component's
:class:`~kdcore.context.RunContext`; a component keeps nothing of the run between calls.

A component's kinds are the four words used everywhere for the same four ideas: its hooks
``select``, ``refine``, ``weight`` and ``transfer``; the ledger columns they fill,
``select/<name>``, ``target``, ``weight/<name>`` and ``loss/<name>`` (a transfer term's
per-sample loss); and the kinds ``kdcore plugins`` lists.

A component declares what it depends on, so that ``kdcore check`` can verify a recipe's wiring
before anything trains: the model roles it uses (parameters typed :class:`~kdcore.Role`, plus
:meth:`Component.roles`), the ledger columns it reads (parameters typed
:class:`~kdcore.ColumnName`, plus :meth:`Component.reads`) and those it writes besides its hooks'
own (:attr:`Component.writes`), which of them it reads or writes before its stage's first
batch (:meth:`Component.reads_at_start`, :meth:`Component.writes_at_start`) or in which hook
of a batch (:meth:`Component.reads_in_batch`, :meth:`Component.writes_in_batch`), and which it
writes only from a later epoch (:meth:`Component.late_writes`).
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import attrs
import torch

from kdcore.batch import Batch
from kdcore.context import BatchHook, ColumnKind, ColumnName, Role, RunContext, StartHook
from kdcore.terms import PerSampleLoss

PerSample = torch.Tensor | Mapping[str, torch.Tensor]
"""A ``(B,)`` tensor for every model the component applies to, or one tensor per model role."""

TransferTerm = torch.Tensor | PerSampleLoss | Mapping[str, torch.Tensor | PerSampleLoss]
"""What ``transfer`` returns: as :data:`PerSample`, and a term may be a
:class:`~kdcore.terms.PerSampleLoss` instead of its values."""


@attrs.frozen
class NoParams:
    """The ``Params`` of a component that takes none."""


@attrs.frozen
class ComponentSpec:
    """How a recipe placed a component: its label, the models it serves and its terms.

    Attributes:
        name: the label that tags everything the component produces (unique in the stage).
        use: the registered component name.
        models: the model roles it applies to (default: the models the stage trains).
        terms: for selectors and weighters, the transfer terms they act on (empty: all terms
            of their models).
        weight: for transfer components, the factor on their loss term.
    """

    name: str
    use: str
    models: tuple[str, ...]
    terms: tuple[str, ...] = ()
    weight: float = 1.0


class Component:
    """Base class of recipe components; override the hooks your component takes part in.

    Subclasses set ``Params`` to an attrs class (frozen, with validators); the recipe's
    ``params`` table is validated against it and the instance is ``self.params``. The plan
    creates one instance per stage that names it, once per run; :meth:`setup` builds its state
    when its stage starts (again on resume).
    """

    Params: ClassVar[type] = NoParams
    description: ClassVar[str] = ""
    writes: ClassVar[tuple[str, ...]] = ()
    """Ledger columns the component writes itself (``"awe/seed_weight"``, ``"base_target"``),
    besides those its hooks fill (``select/<name>``, ``weight/<name>``, ``loss/<name>``,
    ``target``). ``{name}`` is replaced by the component's label."""
    column_kinds: ClassVar[Mapping[str, ColumnKind]] = {}
    """The kind of some of the ``writes`` columns, by the same template
    (``{"lp/{name}/label": "label"}``), for the plan to check against what readers need
    (:meth:`read_kinds`); a column left out has no declared kind."""
    row_columns: ClassVar[tuple[str, ...]] = ()
    """The ``writes`` columns that hold a row of numbers per sample (``N x k``: ALM-KD's
    per-term weights), by the same template: the plan refuses them to a reader of one number
    per sample (one whose :meth:`read_kinds` accepts a ``label``, ``mask`` or ``weight``)."""
    per_model_results: ClassVar[bool | None] = None
    """How the ``select`` and ``weight`` hooks return: True, a mapping of one value per model
    (columns ``select/<name>/<role>``); False, one value for every model served
    (``select/<name>``, which a reader of one model's column reads too); None, either. Declared,
    the plan refuses a reader of a column the form never writes, and the run a hook that
    returns the other form."""
    own_terms_only: ClassVar[bool] = False
    """A selector or weighter that also contributes a term (LSH's selective variant) acts on
    its own term only, unless the recipe lists ``terms``."""
    learns_from: ClassVar[tuple[str, ...]] = ()
    """The parameters (typed :class:`~kdcore.Role`, or tuples of them) that name the models
    whose detached outputs the served models learn from; the plan refuses a recipe in which
    the component serves one of them (a model distilled from itself gets no gradient)."""
    carry_state: ClassVar[bool] = True
    """A component with the same label and ``use`` in the next stage starts from this one's
    ``state_dict`` (a WeightNet trained through warm-up keeps training in stage 2); set False
    to start every stage afresh."""
    distributed: ClassVar[bool | str] = True
    """Whether the component computes the same in a distributed run (``kdcore run --nproc``).
    True for anything computed from hook arguments, ``ctx.forward`` and ``ctx.features``
    (every rank sees the whole batch; :mod:`kdcore.distributed`); gradients a component takes
    of a model's parameters itself go through :func:`kdcore.distributed.mean_across_ranks`.
    A component that cannot run in several processes sets this to a sentence saying why, and
    the run refuses more than one process with it."""

    compiled: ClassVar[bool | str] = True
    """Whether the component works on models that ``run.compile`` compiled. One that takes
    gradients of a model's gradients (a look-ahead meta step, MLC's) cannot: a compiled
    model's backward has no double backward. It sets this to a sentence saying why, and
    ``check`` refuses ``run.compile`` with it."""

    model_attributes: ClassVar[tuple[str, ...]] = ()
    """What it reads of the models it names besides their ``(logits, features)``: attributes
    of :class:`kdcore.KDModel` (``"classifier"``, ``"feature_dim"``, ``"forward_features"``).
    ``check`` refuses a model without one (the set-up stopped with an AttributeError)."""

    def __init__(self, params: Any, spec: ComponentSpec):
        self.params = params
        self.spec = spec

    # -- identity and declarations ----------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def models(self) -> tuple[str, ...]:
        return self.spec.models

    @property
    def model(self) -> str:
        """The single model role this component serves (an error if it serves several)."""
        if len(self.spec.models) != 1:
            raise ValueError(f"component '{self.name}' serves {self.spec.models}; name one")
        return self.spec.models[0]

    @classmethod
    def kinds(cls) -> tuple[str, ...]:
        """The component kinds this class implements (``select``, ``refine``, ``weight``,
        ``transfer``), by the hooks it overrides."""
        return _kinds(cls)

    @classmethod
    def hooks(cls) -> tuple[str, ...]:
        """Every component hook this class overrides."""
        return _hooks(cls)

    def roles(self) -> tuple[str, ...]:
        """The model roles this component uses besides the ones it serves: by default every
        parameter typed :class:`~kdcore.Role` (a tuple of them too). Override to drop roles
        that a parameter setting leaves unused."""
        return tuple(_typed_values(self.params, Role))

    def reads(self) -> tuple[str, ...]:
        """The ledger columns this component reads that the data does not provide: by
        default every non-empty parameter typed :class:`~kdcore.ColumnName`."""
        return tuple(v for v in _typed_values(self.params, ColumnName) if v)

    def read_kinds(self) -> dict[str, ColumnKind | tuple[ColumnKind, ...]]:
        """The kind that some of the columns this component reads must have (``{column:
        kind}`` or ``{column: (kind, ...)}`` for any of several, a subset of :meth:`reads`);
        the plan refuses a recipe where the column's writer declares another kind. By
        default none is required."""
        return {}

    def reads_at_start(self) -> dict[str, StartHook]:
        """The columns of :meth:`reads` this component reads before its stage's first batch,
        each with the first hook that reads it (``on_stage_start`` or ``on_epoch_start``). The
        plan refuses a recipe where such a column is written only later: by a ``select`` or
        ``weight`` hook of the same stage (its batches come after), or in ``on_epoch_start``
        where it is read in ``on_stage_start``. By default none (every read is a batch's)."""
        return {}

    def writes_at_start(self) -> dict[str, StartHook]:
        """The columns of :meth:`written_columns` this component has written before its
        stage's first batch, each with the hook that writes it. By default its own
        :attr:`writes`, from ``on_stage_start``; none of its hooks' columns (a hook writes in
        the batches). Override where a column is written later, or a hook's column earlier
        (a selector that ranks the whole training set at the epoch start)."""
        written = self.written_columns()
        return {c: "on_stage_start" for c in (w.format(name=self.name) for w in self.writes)
                if c in written}

    def late_writes(self) -> dict[str, int]:
        """The columns of :meth:`written_columns` this component first writes only at a later
        epoch of its stage, each with that epoch (from 0; an epoch schedule that starts later:
        F&F's ``start_epoch``). No component of the same stage may read them, at its start or
        in its batches; later stages may, where the stage reaches that epoch. By default
        none."""
        return {}

    def reads_in_batch(self) -> dict[str, BatchHook]:
        """The columns of :meth:`reads` this component reads in the batches, each with the
        first batch hook that reads it. The plan refuses a recipe where such a column is
        written in the same stage, and not before its first batch, only by a later hook of the
        batch (a mask SMKD writes in its ``transfer``, read by a ``weight`` hook): the stage's
        first batch would not have it. By default every column of :meth:`reads` not read at the
        start, in the first batch hook this component overrides (none if it overrides none)."""
        first = next((h for h in BATCH_HOOKS if _overrides(type(self), h)), None)
        at_start = self.reads_at_start()
        return {} if first is None else {c: first for c in self.reads() if c not in at_start}

    def writes_in_batch(self) -> dict[str, BatchHook]:
        """The columns of :meth:`written_columns` this component writes in the batches, each
        with the batch hook that writes it first. By default its hooks' columns in their
        hooks (``target`` in ``refine``), and every other column it neither has written at
        the start nor writes only from a later epoch in the last batch hook it overrides.
        Override where that is later than the truth (SMKD writes its per-peer masks in
        ``transfer``, not in its ``backward``), so that a reader in between is not refused."""
        out: dict[str, BatchHook] = {}
        written = self.written_columns()
        for hook in ("select", "weight"):
            if hook in self.kinds():
                out.update(dict.fromkeys(
                    (c for c in (f"{hook}/{self.name}",
                                 *(f"{hook}/{self.name}/{r}" for r in self.models))
                     if c in written), hook))
        if "refine" in self.kinds():
            out["target"] = "refine"
        last = next((h for h in reversed(BATCH_HOOKS) if _overrides(type(self), h)), None)
        if last is not None:
            before = {**self.writes_at_start(), **self.late_writes()}
            out.update({c: last for c in written if c not in out and c not in before})
        return out

    def written_column_kinds(self) -> dict[str, ColumnKind]:
        """The declared kind of each column this component writes: ``mask`` for its
        ``select`` hook's columns, ``weight`` for its ``weight`` hook's, ``target`` for
        ``target``, and :attr:`column_kinds` for the others (a column missing here has no
        declared kind)."""
        hook_kinds: dict[str, ColumnKind] = {"select": "mask", "weight": "weight"}
        out: dict[str, ColumnKind] = {
            template.format(name=self.name): kind for template, kind in self.column_kinds.items()}
        for column in self.written_columns():
            head = column.split("/", 1)[0]
            if column == "target":
                out[column] = "target"
            elif head in hook_kinds and column.split("/")[1:2] == [self.name]:
                out[column] = hook_kinds[head]
        return out

    def written_columns(self) -> tuple[str, ...]:
        """Every ledger column this component may write (its hooks' and :attr:`writes`)."""
        kinds = self.kinds()
        out = [w.format(name=self.name) for w in self.writes]
        for hook in ("select", "weight"):
            if hook in kinds:
                shared = () if self.per_model_results else (f"{hook}/{self.name}",)
                out += [*shared, *(f"{hook}/{self.name}/{r}" for r in self.models)]
        if "refine" in kinds:
            out.append("target")
        return tuple(dict.fromkeys(out))

    # -- lifecycle --------------------------------------------------------------------------

    def adapt_models(self, ctx: RunContext) -> None:
        """Change a model's structure (add a connector layer, say), once per process."""

    def setup(self, ctx: RunContext) -> None:
        """Build state (networks, optimisers, tables) when the stage starts or resumes."""

    def on_stage_start(self, ctx: RunContext) -> None:
        """Once-per-stage work at the start of the stage (an initial label propagation)."""

    def on_epoch_start(self, ctx: RunContext) -> None:
        """Epoch-level work before the first batch (full-dataset passes, LP, lambda updates)."""

    # -- the four component kinds -----------------------------------------------------------

    def select(self, ctx: RunContext, batch: Batch) -> PerSample | None:
        """Which samples of the batch each term may learn from: a bool or float ``(B,)``
        tensor (1 = use), or a mapping of one per model role (:attr:`per_model_results`
        says which), or None to abstain."""
        return None

    def refine(self, ctx: RunContext, batch: Batch, targets: torch.Tensor) -> torch.Tensor:
        """Map the batch's current soft targets ``(B, C)`` to new ones."""
        return targets

    def weight(self, ctx: RunContext, batch: Batch) -> PerSample | None:
        """A per-sample weight ``(B,)`` for the terms this component acts on, a mapping of
        one per model role (as :meth:`select`), or None."""
        return None

    def transfer(self, ctx: RunContext, batch: Batch) -> TransferTerm | None:
        """This component's loss term per sample ``(B,)``, or one per model role."""
        return None

    # -- optimisation -----------------------------------------------------------------------

    def backward(self, ctx: RunContext, batch: Batch, role: str, loss: torch.Tensor) -> bool:
        """Take over the backward pass of model ``role``; True when it did."""
        return False

    def lr_roles(self) -> tuple[str, ...]:
        """The models whose learning rate this component follows (``ctx.lr``), as the
        parameters decide (AWE's WeightNet with ``lr = 0``): the plan refuses one that no stage
        up to the component's trains, since it has no optimiser then (the run had stopped at
        the first call). Default: none."""
        return ()

    def gradient_free_roles(self) -> tuple[str, ...]:
        """The served models whose term from this component carries no gradient, as the
        parameters decide (computed from detached outputs only: ``relational_kd`` with
        ``detach_student``). The plan refuses a stage whose trained models get only such terms:
        none could learn (the run had stopped at the stage's first batch). Default: none."""
        return ()

    def backward_roles(self) -> tuple[str, ...]:
        """The model roles whose backward pass :meth:`backward` takes over, as the parameters
        decide (a trained role among them): the plan refuses two components of a stage that
        would take the same one, since the first in recipe order wins it. Default: none."""
        return ()

    def after_step(self, ctx: RunContext, batch: Batch) -> None:
        """After the optimisers stepped on this batch (EMA updates, bookkeeping)."""

    def on_epoch_end(self, ctx: RunContext, metrics: dict[str, float]) -> None:
        """After evaluation; entries added to ``metrics`` are written to the history."""

    def on_stage_end(self, ctx: RunContext) -> None:
        """After the stage's last epoch, before the best-validation weights are restored."""

    # -- checkpoint -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: tensors, numbers, strings, lists, dicts (checked
        at each checkpoint: one that would not read back, a NumPy scalar, stops the run)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, on resume, after :meth:`setup`."""


KINDS: tuple[str, ...] = ("select", "refine", "weight", "transfer")  # each its hook's name
BATCH_HOOKS: tuple[BatchHook, ...] = typing.get_args(BatchHook)  # in the order a batch calls them
COMPONENT_HOOKS: tuple[str, ...] = (
    "adapt_models", "setup", "on_stage_start", "on_epoch_start", "select", "refine", "weight",
    "transfer", "backward", "after_step", "on_epoch_end", "on_stage_end", "state_dict",
    "load_state_dict",
)


def _overrides(cls: type, hook: str) -> bool:
    return getattr(cls, hook) is not getattr(Component, hook)


@functools.cache
def _kinds(cls: type) -> tuple[str, ...]:
    return tuple(k for k in KINDS if _overrides(cls, k))


@functools.cache
def _hooks(cls: type) -> tuple[str, ...]:
    return tuple(h for h in COMPONENT_HOOKS if _overrides(cls, h))


@functools.cache
def _typed_fields(cls: type, kind: type) -> tuple[str, ...]:
    """The attrs fields of ``cls`` annotated with ``kind`` (alone, optional or in a tuple)."""
    if not attrs.has(cls):
        return ()
    hints = typing.get_type_hints(cls)
    return tuple(f.name for f in attrs.fields(cls) if _mentions(hints.get(f.name), kind))


def _mentions(tp: Any, kind: type) -> bool:
    if tp is kind:
        return True
    return any(_mentions(a, kind) for a in typing.get_args(tp))


def _typed_values(params: Any, kind: type) -> Iterable[str]:
    for field in _typed_fields(type(params), kind):
        value = getattr(params, field)
        if isinstance(value, str):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, str))


ComponentFactory = Callable[[Any, ComponentSpec], Component]
