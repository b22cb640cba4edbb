"""Recipe components and the batch they see.

A component is an object that a recipe names in a stage. It takes part in training through the
*component hooks*, the methods of :class:`Component` below, which the engine calls **in the
recipe's order** (pluggy's fan-out order is registration order, which is not the recipe's; see
:mod:`kdcore.hookspecs` for why the four component kinds are called this way). A component's kind
is the set of hooks it overrides: one object may select, refine, weight and transfer at once
(MLC, for instance, both refines the labels and owns its meta-step).

Per batch the engine calls every ``refine`` first (the targets are then final), then every
``select``, every ``weight`` and every ``transfer``. How results combine, per trained model:

* selection masks multiply (a sample counts for a term only where every selector on that term
  says yes, or with the product of soft scores);
* refinements chain (each maps the previous target to a new one);
* weights multiply;
* transfer terms add, each with its recipe ``weight``; a term is reduced as
  ``sum(mask * weight * loss) / sum(mask)`` over the batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import torch

if TYPE_CHECKING:
    from kdcore.run import Run

PerSample = torch.Tensor | Mapping[str, torch.Tensor]
"""A ``(B,)`` tensor for every model the component applies to, or one tensor per model role."""


@attrs.frozen
class NoParams:
    """The ``Params`` of a component that takes none."""


@attrs.frozen
class ModelOutput:
    """What a model returns for a batch: logits ``(B, C)`` and penultimate features ``(B, d)``."""

    logits: torch.Tensor
    features: torch.Tensor


class Batch:
    """One training mini-batch, as every component hook sees it.

    Attributes:
        index: the stable training-sample index of each row ``(B,)``: the ledger row.
        x: the (augmented) inputs on the run's device.
        noisy_label: the observed, possibly wrong, label ``(B,)``.
        targets: the current soft targets ``(B, C)``; refinement hooks replace them in turn.
        hard_targets: the class indices ``(B,)`` of which ``targets`` are exactly the one-hot
            vectors, when the engine knows that (no refinement yet, epoch-level targets still
            the one-hot labels), else None: a loss may then take the cheaper hard-label kernel
            (:func:`kdcore.losses.soft_cross_entropy`'s ``labels``) with the same values.
        step: the global optimiser step counter of the run.
        scratch: a per-batch dict in which components may leave values for later components.
        records: the per-sample values the engine records for this batch, by ledger column
            (``loss/<term>``, ``logits/<role>``), detached; observers read them in
            ``kdcore_batch_end`` (the ledger itself receives them once, at the epoch end).
    """

    def __init__(
        self,
        run: Run,
        index: torch.Tensor,
        x: torch.Tensor,
        noisy_label: torch.Tensor,
        targets: torch.Tensor | None,
        step: int,
        hard_targets: torch.Tensor | None = None,
        targets_from: torch.Tensor | None = None,
    ):
        self.run = run
        self.index = index
        self.x = x
        self.noisy_label = noisy_label
        # with targets_from (an (N, C) column), the rows are read on first use: a batch whose
        # loss takes the hard labels never gathers them
        self._targets = targets
        self._targets_from = targets_from
        self._targets_version = -1 if targets is None else targets._version
        self._hard_targets = hard_targets
        self.step = step
        self.scratch: dict[str, Any] = {}
        self.records: dict[str, torch.Tensor] = {}
        self._outputs: dict[str, ModelOutput] = {}

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def targets(self) -> torch.Tensor:
        if self._targets is None:
            assert self._targets_from is not None, "a Batch needs targets or targets_from"
            self._targets = self._targets_from[self.index]
            self._targets_version = self._targets._version
        return self._targets

    @targets.setter
    def targets(self, value: torch.Tensor) -> None:
        self._targets = value
        self._hard_targets = None

    @property
    def hard_targets(self) -> torch.Tensor | None:
        # an in-place edit of the targets (their version counter moves) voids the hard labels
        if self._hard_targets is None or (self._targets is not None and
                                          self._targets._version != self._targets_version):
            return None
        return self._hard_targets

    @property
    def num_classes(self) -> int:
        return self.run.num_classes

    def out(self, role: str) -> ModelOutput:
        """Logits and features of model ``role`` on ``batch.x``, computed once per batch.

        A model that the stage trains runs in train mode with gradients; a frozen one runs in
        eval mode without them.
        """
        cached = self._outputs.get(role)
        if cached is None:
            cached = self._outputs[role] = self.forward(role, self.x)
        return cached

    def forward(self, role: str, x: torch.Tensor) -> ModelOutput:
        """Run model ``role`` on other inputs (a mixed or second view); not cached."""
        return self.run.forward(role, x)


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
    ``params`` table is validated against it and the instance is ``self.params``.
    """

    Params: ClassVar[type] = NoParams
    description: ClassVar[str] = ""
    own_terms_only: ClassVar[bool] = False
    """A selector or weighter that also contributes a term (LSH's selective variant) acts on
    its own term only, unless the recipe lists ``terms``."""
    carry_state: ClassVar[bool] = True
    """A component with the same label and ``use`` in the next stage starts from this one's
    ``state_dict`` (a WeightNet trained through warm-up keeps training in stage 2); set False
    to start every stage afresh."""

    def __init__(self, params: Any, spec: ComponentSpec):
        self.params = params
        self.spec = spec

    # -- identity ---------------------------------------------------------------------------

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
        """The component kinds this class implements, by the hooks it overrides."""
        return _kinds(cls)

    @classmethod
    def hooks(cls) -> tuple[str, ...]:
        """Every component hook this class overrides."""
        return _hooks(cls)

    # -- lifecycle --------------------------------------------------------------------------

    def adapt_models(self, run: Run) -> None:
        """Change a model's structure (add a connector layer, say), once per process.

        Called when the run is built, for the components of every stage, before optimisers
        exist and before checkpointed weights are loaded, so that added parameters are trained
        and resumed like the model's own. Called again on resume; must be deterministic.

        Args:
            run: the run, with ``run.models`` built and ``run.data`` loaded.
        """

    def setup(self, run: Run) -> None:
        """Build state (networks, optimisers, tables); called when the stage is built.

        Called on a fresh start and again on resume, before the checkpointed state is loaded
        with :meth:`load_state_dict`, so it must not do once-per-stage work.

        Args:
            run: the running training, with its models, data, ledger and device.
        """

    def on_stage_start(self, run: Run) -> None:
        """Once-per-stage work at the start of the stage (an initial label propagation, say).

        Not called again when a run resumes inside the stage. Called in recipe order.

        Args:
            run: the running training.
        """

    def on_epoch_start(self, run: Run, epoch: int) -> None:
        """Epoch-level work before the first batch (full-dataset passes, LP, lambda updates).

        Called in recipe order, so a selection pass placed before a refinement can feed it.
        Use ``run.features(role)`` for full-set features: it is computed once and shared.

        Args:
            run: the running training.
            epoch: the epoch within the stage, from 0.
        """

    # -- the four component kinds -----------------------------------------------------------

    def select(self, batch: Batch) -> PerSample | None:
        """Sample selection: which samples of the batch each term may learn from.

        Args:
            batch: the current mini-batch.

        Returns:
            A bool or float ``(B,)`` tensor (1 = use), or one per model role; ``None`` to
            abstain. Masks of several selectors multiply. Each is written to the ledger column
            ``select/<name>`` (``select/<name>/<role>`` for per-role masks).
        """
        return None

    def refine(self, batch: Batch, targets: torch.Tensor) -> torch.Tensor:
        """Label refinement: map the batch's current soft targets ``(B, C)`` to new ones.

        The chain starts from the ledger column ``base_target`` (the noisy labels, or what an
        epoch-level refiner such as label propagation wrote there with ``ledger.add``) and runs
        in recipe order; the final targets are written to the ledger column ``target`` (what
        the sample was trained on), tagged with the last refiner. They never feed back into
        ``base_target``, so a batch-level refinement does not compound over epochs. Return
        tensors without a graph unless the
        component itself differentiates through them.

        Args:
            batch: the current mini-batch.
            targets: the targets after the previous refiner (the ledger's at the start).
        """
        return targets

    def weight(self, batch: Batch) -> PerSample | None:
        """Loss weighting: a per-sample weight ``(B,)`` for the terms this component acts on.

        Args:
            batch: the current mini-batch.

        Returns:
            A float ``(B,)`` tensor, or one per model role; ``None`` to abstain. Weights of
            several weighters multiply; each goes to the ledger column ``weight/<name>``.
        """
        return None

    def transfer(self, batch: Batch) -> PerSample | None:
        """Knowledge transfer: this component's loss term, per sample.

        Args:
            batch: the current mini-batch (``batch.out(role)`` gives a model's outputs).

        Returns:
            The per-sample loss ``(B,)`` of the model it serves, or one per model role (a
            mutual term trains several models). The engine applies masks and weights,
            multiplies by the recipe ``weight`` and adds the terms of each model. Per-sample
            losses go to the ledger column ``loss/<name>`` (written once, at the epoch end).
        """
        return None

    # -- optimisation -----------------------------------------------------------------------

    def backward(self, batch: Batch, role: str, loss: torch.Tensor) -> bool:
        """Take over the backward pass of model ``role`` (meta-learning look-ahead steps).

        Called for each trained role (in the stage's ``train`` order) after every loss term
        of the batch was computed, before the engine's single ``backward()`` of the roles no
        component took over, and before any optimiser step. A component that returns True
        must leave the gradients it wants applied in ``.grad`` of the model's parameters; the
        engine then steps the optimiser, unless the component stepped it itself and said so
        with ``run.mark_stepped(role)``. The first component (recipe order) that returns True
        wins. See :func:`kdcore.meta.virtual_sgd_step` for the look-ahead helper.

        Args:
            batch: the current mini-batch.
            role: the model role whose loss this is.
            loss: the model's total loss (with its graph).
        """
        return False

    def on_stage_end(self, run: Run) -> None:
        """After the stage's last epoch, before the best-validation weights are restored
        (undo a freeze, drop a hook, log a stage-level number).

        Args:
            run: the running training.
        """

    def after_step(self, batch: Batch) -> None:
        """Called after the optimisers stepped on this batch (EMA updates, bookkeeping).

        Args:
            batch: the batch just trained on.
        """

    def on_epoch_end(self, run: Run, epoch: int, metrics: dict[str, float]) -> None:
        """After evaluation, in recipe order; add per-epoch numbers to the history row.

        Args:
            run: the running training.
            epoch: the epoch within the stage.
            metrics: this epoch's numbers; entries added here are written to the history.
        """

    # -- checkpoint -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: tensors, numbers, strings, lists, dicts."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, on resume, after :meth:`setup`.

        Args:
            state: the dict this component's ``state_dict`` returned.
        """


KIND_HOOKS: dict[str, str] = {
    "selection": "select",
    "refinement": "refine",
    "weighting": "weight",
    "transfer": "transfer",
}
COMPONENT_HOOKS: tuple[str, ...] = (
    "adapt_models", "setup", "on_stage_start", "on_epoch_start", "select", "refine", "weight",
    "transfer",
    "backward", "after_step", "on_epoch_end", "on_stage_end", "state_dict", "load_state_dict",
)


def _overrides(cls: type, hook: str) -> bool:
    return getattr(cls, hook) is not getattr(Component, hook)


@functools.cache
def _kinds(cls: type) -> tuple[str, ...]:
    # cached: the engine asks for every component on every batch
    return tuple(k for k, hook in KIND_HOOKS.items() if _overrides(cls, hook))


@functools.cache
def _hooks(cls: type) -> tuple[str, ...]:
    return tuple(h for h in COMPONENT_HOOKS if _overrides(cls, h))


ComponentFactory = Callable[[Any, ComponentSpec], Component]
