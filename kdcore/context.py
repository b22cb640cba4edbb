"""What a component sees of the run: the :class:`RunContext` protocol and the types it names.

A leaf module: it imports nothing of kdcore at run time, so the component base class, the hook
specifications and every plugin can depend on it without tying themselves to the engine.

Every component hook receives a context bound to that component. Its facts are read-only; its
capabilities are explicit: ledger writes through ``ctx.ledger`` are tagged with the component's
name by themselves, ``ctx.generator`` is the component's own random generator (seeded from the
run's seed and the component's place in the recipe, and checkpointed with it), and models,
full-set features, metrics and the shared cache are reached through methods. A component keeps
nothing of the run between calls; what it needs, it asks of the context it is handed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from torch import nn

    from kdcore.recipe import Recipe, StageConfig


class Role(str):
    """A component parameter that names a model role (``teacher: Role = Role("teacher")``).

    The run's plan checks, before anything trains, that every ``Role`` parameter of every
    component names a model the recipe defines and enables.
    """

    __slots__ = ()


class ColumnName(str):
    """A component parameter that names a ledger column the component *reads*
    (``selection: ColumnName = ColumnName("select/small_loss")``; empty: none).

    The run's plan checks, before anything trains, that the column is written by the data or
    by a component placed earlier (an earlier stage, or earlier in the same stage).
    """

    __slots__ = ()


ColumnKind = Literal["label", "target", "mask", "weight", "value", "exact"]
"""How the history stores a column: ``label`` int32, ``target`` float16 ``N x C``, ``mask``
bool, ``weight`` and ``value`` float16, ``exact`` float32."""

SCALAR_KINDS: tuple[ColumnKind, ...] = ("mask", "weight", "value", "exact")
"""The kinds that can hold one number per sample: what a reader of per-sample weights or
scores accepts (``read_kinds() -> {column: SCALAR_KINDS}``; the plan refuses such a reader a
column known to hold a row per sample, :attr:`kdcore.Component.row_columns`)."""

StartHook = Literal["on_stage_start", "on_epoch_start"]
"""The hooks that run before a stage's first batch, in this order (each over every component
of the stage, in recipe order): where a component declares it reads or writes a column before
the batches (:meth:`kdcore.Component.reads_at_start`, :meth:`kdcore.Component.writes_at_start`)."""

BatchHook = Literal["refine", "select", "weight", "transfer", "backward", "after_step"]
"""The hooks of a batch, in the order the engine calls them (each over every component of the
stage, in recipe order): where a component declares it reads or writes a column in the batches
(:meth:`kdcore.Component.reads_in_batch`, :meth:`kdcore.Component.writes_in_batch`)."""


class ModelOutput(NamedTuple):
    """What a model returns for a batch: logits ``(B, C)`` and penultimate features ``(B, d)``.

    A named tuple: built for every model call of every batch, it must cost next to nothing.
    """

    logits: torch.Tensor
    features: torch.Tensor


@runtime_checkable
class LedgerAccess(Protocol):
    """The per-sample ledger as a component sees it: every column readable, writes tagged
    with the component's name (what the history shows as the column's producer)."""

    size: int

    def __getitem__(self, name: str) -> torch.Tensor: ...

    def __contains__(self, name: object) -> bool: ...

    def __iter__(self) -> Iterator[str]: ...

    def read(self, name: str, index: torch.Tensor | None = None) -> torch.Tensor: ...

    def producer(self, name: str) -> str: ...

    def kind(self, name: str) -> ColumnKind: ...

    def add(self, name: str, data: torch.Tensor, *, kind: ColumnKind = "value",
            snapshot: bool = True) -> torch.Tensor: ...

    def write(self, name: str, index: torch.Tensor, values: torch.Tensor, *,
              kind: ColumnKind = "value", snapshot: bool = True) -> None: ...

    def ensure(self, name: str, like: torch.Tensor, *, kind: ColumnKind = "value",
               fill: float | bool = 0, snapshot: bool = True) -> torch.Tensor: ...


@runtime_checkable
class RunContext(Protocol):
    """The running training, as one component (or observer) sees it.

    Facts (read-only):
        recipe: the resolved recipe.
        run_dir: the run directory.
        device: the training device.
        roles: every enabled model role, in recipe order.
        num_classes: C.
        stage, stage_index: the current stage's config and position.
        epoch: the epoch within the stage, from 0.
        step: optimiser steps over the run; ``stage_step`` within the stage;
            ``steps_per_epoch`` is ``ceil(N / batch_size)``, one less where that would leave a
            last batch of one sample (it joins the batch before it: :mod:`kdcore.batching`).
        resumed: whether this process continued a checkpoint.
        data: the splits and labels (:class:`kdcore.rundata.RunData`), read-only.
        models: the models by role (a read-only mapping).
        optimizers: each trained role's optimiser (created when a stage first trains it).

    Capabilities (see each method):
        ledger: the per-sample columns; writes are tagged with the component's name.
        generator: the component's own CPU random generator, checkpointed with the run.
        cache: a dict for expensive results several components share (a kNN graph); key
            entries by what they depend on (``model_version``); not checkpointed.

    A method given a role the recipe has no model for raises a ``KeyError`` that names the
    recipe's models; ``lr`` of a model no stage has trained yet says it has no optimiser.
    """

    recipe: Recipe
    run_dir: Path
    device: torch.device
    roles: tuple[str, ...]
    num_classes: int
    stage: StageConfig
    stage_index: int
    epoch: int
    step: int
    stage_step: int
    steps_per_epoch: int
    resumed: bool
    data: Any
    models: Mapping[str, nn.Module]
    optimizers: Mapping[str, torch.optim.Optimizer]
    ledger: LedgerAccess
    generator: torch.Generator
    cache: dict[Any, Any]

    def trains(self, role: str) -> bool:
        """Whether the current stage trains model ``role``."""
        ...

    def lr(self, role: str) -> float:
        """The current learning rate of ``role``."""
        ...

    def model_version(self, role: str) -> int:
        """Counts the optimiser steps taken on ``role`` (a cache key for its outputs)."""
        ...

    def role_epoch(self, role: str) -> int:
        """Epochs ``role`` trained in earlier stages, plus this stage's epoch when it trains
        ``role`` (a schedule over all of a role's training, as a release script counts)."""
        ...

    def forward(self, role: str, x: torch.Tensor) -> ModelOutput:
        """Run ``role`` on ``x``: with gradients when the stage trains it, else without."""
        ...

    def features(self, role: str, split: str = "train") -> ModelOutput:
        """Logits and features of ``role`` over a whole split (eval mode, no augmentation),
        computed once per model version and shared by every component that asks."""
        ...

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """The recipe's ``data.augment`` chain on other inputs (default: ``self.generator``)."""
        ...

    def log_metric(self, name: str, value: float) -> None:
        """Record a number for this epoch's history row (last value wins)."""
        ...

    def record_data(self, name: str, values: torch.Tensor) -> None:
        """Store an array once in the history's ``/data`` group."""
        ...

    def mark_stepped(self, role: str) -> None:
        """Say that this component stepped ``role``'s optimiser itself in this batch (a
        ``ValueError`` for a role the stage does not train: the engine steps none of those)."""
        ...


class BatchStore:
    """Values that components leave for each other within one batch, keyed by producer.

    A producer is a component's name, or a namespace its plugin owns when several of its
    components share one value (AML-KD's two mixup terms share one mix). A reader names the
    producer it expects, so a missing value is reported with both names instead of a bare
    ``KeyError``. Everything here is dropped when the batch ends.
    """

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[tuple[str, str], Any] = {}

    def put(self, producer: str, key: str, value: Any) -> None:
        self._values[(producer, key)] = value

    def get(self, producer: str, key: str, default: Any = None) -> Any:
        return self._values.get((producer, key), default)

    def require(self, producer: str, key: str) -> Any:
        try:
            return self._values[(producer, key)]
        except KeyError:
            raise KeyError(f"no batch value '{key}' from '{producer}' (is that component "
                           f"placed before this one in the stage?)") from None

    def __contains__(self, item: object) -> bool:
        return item in self._values


__all__ = ["SCALAR_KINDS", "BatchHook", "BatchStore", "ColumnKind", "ColumnName", "LedgerAccess",
           "ModelOutput", "Role", "RunContext", "StartHook"]
