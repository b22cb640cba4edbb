"""One batch's combination rules, as a function of the stage's components and the batch.

Per batch the components are called in recipe order: every ``refine`` first (the targets are
then final), then every ``select``, every ``weight`` and every ``transfer``. Per trained model:

* refinements chain (each maps the previous target to a new one);
* selection masks multiply (a sample counts for a term only where every selector acting on that
  term says yes, or with the product of soft scores);
* weights multiply;
* a term is reduced as ``sum(mask * weight * loss) / max(sum(mask), 1)`` over the batch (a
  plain mean without masks), and the terms add, each times its recipe ``weight``.

:func:`combine` computes all of that and nothing else: no backward pass, no optimiser, no
ledger. It is unit-testable with fake components and contexts (:mod:`kdcore.testing`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import NamedTuple

import torch
from loguru import logger

from kdcore.component import Batch, Component
from kdcore.context import RunContext
from kdcore.diverged import broken_output
from kdcore.errors import KdcoreError
from kdcore.failures import RunFailed
from kdcore.ledger import Ledger
from kdcore.terms import PerSampleLoss


class Produced(NamedTuple):
    """A per-sample tensor a hook returned, bound for a ledger column."""

    column: str
    producer: str
    values: torch.Tensor | PerSampleLoss  # a loss record may be evaluated later


class StepResult:
    """What one batch's components produced (a plain class: one is made per batch).

    Attributes:
        losses: the total loss of each model that got a term (with its graph).
        totals: the same detached where that is already at hand (one term of weight 1: its
            value), else None (:meth:`total` detaches it).
        terms: per role, each term's reduced value (detached), by component name.
        targets: the final refined targets and the refiner that made them (None: no refiner).
        masks, weights: what selectors and weighters returned, one entry per ledger column.
        losses_per_sample: each term's per-sample loss, for the ``loss/<name>`` columns:
            detached values, or a term's kept :class:`~kdcore.terms.PerSampleLoss`
            (:func:`~kdcore.terms.evaluate_rows` gives its values).
    """

    __slots__ = ("losses", "totals", "terms", "targets", "masks", "weights",
                 "losses_per_sample")

    def __init__(self) -> None:
        self.losses: dict[str, torch.Tensor] = {}
        self.totals: dict[str, torch.Tensor | None] = {}
        self.terms: dict[str, dict[str, torch.Tensor]] = {}
        self.targets: tuple[torch.Tensor, str] | None = None
        self.masks: list[Produced] = []
        self.weights: list[Produced] = []
        self.losses_per_sample: list[Produced] = []

    def total(self, role: str) -> torch.Tensor:
        """Model ``role``'s total loss, detached."""
        value = self.totals.get(role)
        return self.losses[role].detach() if value is None else value


# Produced((column, producer, values)) without the named tuple's Python-level __new__: one
# per term of every batch
_produced = functools.partial(tuple.__new__, Produced)

_MAPPINGS = (dict, Mapping)  # dict first: the common case, without the ABC's check

# (component, role, tensor): a mask or weight and the model it applies to
Applied = tuple[Component, str, torch.Tensor]


def combine(
    batch: Batch,
    *,
    refiners: Sequence[Component],
    selectors: Sequence[Component],
    weighters: Sequence[Component],
    transfers: Sequence[Component],
    context: Callable[[Component], RunContext],
    record: Callable[[Produced, str], None] | None = None,
    abstain: Callable[[str, str], None] | None = None,
    per_model_losses: Collection[str] | None = None,
) -> StepResult:
    """Call the components' batch hooks in recipe order and combine their results.

    Args:
        batch: the batch.
        refiners, selectors, weighters, transfers: the stage's components of each kind, in
            recipe order.
        context: the context handed to a component's hooks.
        record: called with each target, mask and weight as soon as it is produced, and its
            column kind (the engine writes them to the ledger then, so a later hook of the
            same batch reads this batch's values there).
        abstain: called with each column a ``select`` or ``weight`` hook could have written
            but abstained on (returned None, or a mapping without that model) and its
            component's name: the engine writes the identity there (:mod:`kdcore.hook_writes`).
        per_model_losses: the labels of the terms whose per-sample losses are recorded per
            model, ``loss/<name>/<role>``, the others' as ``loss/<name>`` (the run's plan
            decides it once, :attr:`kdcore.plan.RunPlan.per_model_losses`); None: per model
            where a term was given for more than one model in this batch.
    """
    result = StepResult()
    if refiners:
        targets = batch.targets
        for comp in refiners:
            shape = targets.shape
            device = targets.device
            targets = comp.refine(context(comp), batch, targets)
            if not (isinstance(targets, torch.Tensor) and targets.shape == shape
                    and not targets.is_complex() and targets.device == device):
                says = f"component '{comp.name}' ({comp.spec.use}) refine returned"
                if isinstance(targets, torch.Tensor) and targets.shape == shape:
                    raise _unreal(says, targets, device)
                raise RunFailed(f"{says} {_described(targets)}; expected targets of shape "
                                f"{tuple(shape)}")
        batch.targets = targets
        result.targets = (targets, refiners[-1].name)
        if record is not None:
            record(Produced("target", refiners[-1].name, targets), "target")
    masks = (_collect(batch, selectors, "select", context, result.masks, record, "mask",
                      abstain) if selectors else [])
    weights = (_collect(batch, weighters, "weight", context, result.weights, record, "weight",
                        abstain) if weighters else [])
    for comp in transfers:
        out = comp.transfer(context(comp), batch)
        if out is None:
            continue
        spec = comp.spec
        name = spec.name
        per_role = out if isinstance(out, _MAPPINGS) else {r: out for r in spec.models}
        for role, loss in per_role.items():
            record: torch.Tensor | PerSampleLoss | None = None
            if role not in spec.models:
                raise _misreturned(comp, "transfer", role, loss, len(batch))
            if isinstance(loss, PerSampleLoss):
                if (masks or weights) and _acts_on(comp, role, masks, weights):
                    values = loss.values()
                    term = reduce_term(comp, role, values, masks, weights)
                    record = values.detach()
                else:  # the fused mean; the values are computed for the record later
                    term, record = loss.mean(), loss.kept()
            else:
                if not (isinstance(loss, torch.Tensor) and loss.shape in ((), (len(batch),))
                        and loss.is_floating_point() and loss.device == batch.index.device):
                    # (B, k): a mean over k; on another device: a traceback in the backward
                    raise _misreturned_term(comp, loss, len(batch), batch.index.device)
                term = reduce_term(comp, role, loss, masks, weights)
                if loss.dim() == 1:
                    record = loss.detach()
            if record is not None:
                several = (len(per_role) > 1 if per_model_losses is None
                           else name in per_model_losses)
                col = f"loss/{name}/{role}" if several else f"loss/{name}"
                result.losses_per_sample.append(_produced((col, name, record)))
            value = term.detach()
            result.terms.setdefault(role, {})[name] = value
            losses, totals = result.losses, result.totals
            if spec.weight == 1.0:
                weighted = term
            else:
                weighted, value = spec.weight * term, None
            if role in losses:
                losses[role] = losses[role] + weighted
                totals[role] = None
            else:
                losses[role], totals[role] = weighted, value
    return result


def without_gradient(role: str, result: StepResult, trained: Sequence[str],
                     warned: set[str]) -> None:
    """Model ``role``'s loss has no gradient: every term it got was computed from detached
    tensors (``relational_kd`` with ``detach_student``, say). When no trained model's loss has
    one, nothing can learn (and the backward pass would fail): an error naming the terms.
    Beside a model that learns, ``role`` learns nothing from this batch: said once per role."""
    why = (f"model '{role}' got a loss without gradient (its terms: "
           f"{', '.join(result.terms[role])}; each was computed from detached tensors)")
    if not any(result.losses[r].requires_grad for r in trained):
        raise KdcoreError(f"{why}, as did every model the stage trains, so none can learn; "
                          "give them a term with a gradient (ce, say)" if len(trained) > 1 else
                          f"{why}, so it cannot learn; give it a term with a gradient (ce, say)")
    if role not in warned:
        warned.add(role)
        logger.warning(f"{why}: it learns nothing from such a batch (said once)")


def take_backward(takers: Sequence[Component], context: Callable[[Component], RunContext],
                  batch: Batch, role: str, loss: torch.Tensor) -> bool:
    """Whether a component took over model ``role``'s backward pass: the first of ``takers``
    (in recipe order) whose ``backward`` returns True. One that takes a role its
    ``backward_roles()`` does not name is refused: the plan's check that no two components
    take one role (``kdcore check``) relies on that declaration."""
    for comp in takers:
        taken = comp.backward(context(comp), batch, role, loss)
        if isinstance(taken, str | bytes | Mapping | Sequence) or (
                isinstance(taken, torch.Tensor) and (taken.numel() != 1
                                                     or taken.dtype != torch.bool)):
            # "no" was true: the model went without its backward pass and never trained
            raise RunFailed(f"component '{comp.name}' ({comp.spec.use}) backward returned "
                            f"{_described(taken)}; expected True (it ran the backward pass "
                            f"of '{role}' itself) or False")
        if taken:
            if role not in comp.backward_roles():
                raise KdcoreError(
                    f"component '{comp.name}' ({comp.spec.use}) took over the backward pass of "
                    f"'{role}', which its backward_roles() does not name "
                    f"({', '.join(comp.backward_roles()) or 'none'}); a component that takes "
                    "over a backward pass declares the roles it takes (docs/plugins.md)")
            return True
    return False


def hook_columns(selectors: Sequence[Component], weighters: Sequence[Component]
                 ) -> frozenset[str]:
    """The ledger columns the ``select`` and ``weight`` hooks of these components write: an
    epoch's own, unlike a column a component keeps itself (ALM-KD's ``weight/<name>`` table)."""
    return frozenset(f"{hook}/{comp.name}{role}" for comps, hook in ((selectors, "select"),
                                                                     (weighters, "weight"))
                     for comp in comps for role in ("", *(f"/{r}" for r in comp.models)))


def _collect(batch: Batch, comps: Sequence[Component], hook: str,
             context: Callable[[Component], RunContext], produced: list[Produced],
             record: Callable[[Produced, str], None] | None, kind: str,
             abstain: Callable[[str, str], None] | None) -> list[Applied]:
    out: list[Applied] = []
    for comp in comps:
        result = getattr(comp, hook)(context(comp), batch)
        prefix = f"{hook}/{comp.name}"
        if result is None:
            if abstain is not None:  # every column it could have written
                for column in (prefix, *(f"{prefix}/{r}" for r in comp.models)):
                    abstain(column, comp.name)
            continue
        # one tensor serves every model of the component (one column), or one per role
        mapping = isinstance(result, _MAPPINGS)
        if comp.per_model_results is not None and mapping != comp.per_model_results:
            raise RunFailed(f"component '{comp.name}' ({comp.spec.use}) {hook} returned "
                            f"{'one value per model' if mapping else 'one value'}, but its "
                            f"class declares per_model_results = {not mapping}")
        if mapping:
            if abstain is not None and len(result) < len(comp.models):
                for r in comp.models:
                    if r not in result:  # a model left out: abstained for it
                        abstain(f"{prefix}/{r}", comp.name)
            per_role = ((f"{prefix}/{r}", r, v) for r, v in result.items())
        else:
            per_role = ((prefix, r, result) for r in comp.models)
        for column, role, value in per_role:
            if not (isinstance(value, torch.Tensor) and value.shape == (len(batch),)
                    and role in comp.models and not value.is_complex()
                    and value.device == batch.index.device):  # a (B, 1) mask: each mean a sum
                raise _misreturned(comp, hook, role, value, len(batch), batch.index.device)
            out.append((comp, role, value))
            if produced and produced[-1].column == column:
                continue  # the shared tensor, already recorded
            item = Produced(column, comp.name, value)
            produced.append(item)
            if record is not None:
                record(item, kind)
    return out


def _described(value: object) -> str:
    return (f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
            else f"a {type(value).__name__}")


def _misreturned(comp: Component, hook: str, role: str, value: object, size: int,
                 device: torch.device | None = None) -> RunFailed:
    says = f"component '{comp.name}' ({comp.spec.use}) {hook} returned"
    if role not in comp.models:
        return RunFailed(f"{says} a value for model '{role}', which it does not serve (it "
                         f"serves {', '.join(comp.models)})")
    if isinstance(value, torch.Tensor) and value.shape == (size,):
        return _unreal(says, value, device)
    return RunFailed(f"{says} {_described(value)}; expected one value per sample, shape ({size},)")


def _unreal(says: str, value: torch.Tensor, device: torch.device | None) -> RunFailed:
    """A value of the right shape but complex, or on another device than the run's."""
    if value.is_complex():
        return RunFailed(f"{says} complex numbers ({value.dtype}); expected real ones")
    return RunFailed(f"{says} a tensor on device '{value.device}'; expected it on the run's "
                     f"device '{device}'")


def _misreturned_term(comp: Component, value: object, size: int, device: torch.device
                      ) -> RunFailed:
    if isinstance(value, torch.Tensor) and value.shape in ((), (size,)):
        if value.is_floating_point():  # on another device
            return _unreal(f"component '{comp.name}' ({comp.spec.use}) transfer returned",
                           value, device)
        return RunFailed(f"component '{comp.name}' ({comp.spec.use}) transfer returned a loss "
                         f"of dtype {value.dtype}; expected floating point (a mean and a "
                         "backward pass of integers, booleans or complex numbers are not "
                         "defined)")
    return RunFailed(f"component '{comp.name}' ({comp.spec.use}) transfer returned "
                     f"{_described(value)}; expected a loss: a scalar, or one value per "
                     f"sample, shape ({size},)")


def check_outputs(ledger: Ledger, refiners: Sequence[Component],
                  selectors: Sequence[Component], weighters: Sequence[Component]) -> None:
    """At an epoch's end, what the stage's batch hooks wrote: masks in [0, 1], weights not
    negative, refined targets distributions (non-negative rows summing to 1); else one line
    naming the component (a mask of -1 had turned training into gradient ascent). Also called
    when a loss turns out not finite, so that a NaN mask is blamed on its selector rather than
    on the term it made NaN."""
    # an infinite weight made the loss infinite, and the divergence was blamed on the term
    for comps, hook, high, interval in ((selectors, "select", 1.0, "[0, 1]"),
                                        (weighters, "weight", math.inf, "[0, inf)")):
        for comp in comps:
            for column in (f"{hook}/{comp.name}", *(f"{hook}/{comp.name}/{r}"
                                                    for r in comp.models)):
                data = ledger[column] if column in ledger else None
                # integers too: a weight of -1 as an int64 had trained by gradient ascent
                if data is None or data.dtype == torch.bool or bool(
                        ((data >= 0) & (data <= high) & (data < math.inf)).all()):
                    continue
                if bool(data.isnan().any()):
                    raise broken_output(comp, f"{hook} returned NaN; a {hook} must lie in "
                                              f"{interval}")
                raise broken_output(comp, f"{hook} returned values outside {interval} (from "
                                          f"{float(data.min()):g} to {float(data.max()):g}); a "
                                          f"{hook} must lie there")
    if refiners and "target" in ledger:
        t = ledger["target"].float()
        sums = t.sum(1)
        if t.numel() and not (bool((t >= -1e-3).all()) and bool(((sums - 1).abs() < 1e-2).all())):
            comp = refiners[-1]
            if bool(t.isnan().any()):
                raise broken_output(comp, "refine made targets that hold NaN; each row must be "
                                          "non-negative and sum to 1")
            raise broken_output(comp, f"refine made targets that are not distributions (entries "
                                      f"from {float(t.min()):g}, rows summing to "
                                      f"{float(sums.min()):g} .. {float(sums.max()):g}); each "
                                      "row must be non-negative and sum to 1")


def _applies(src: Component, role: str, term: Component, r: str) -> bool:
    """Whether the mask or weight ``src`` gave for model ``r`` acts on ``term``'s ``role``."""
    return r == role and (not src.spec.terms or term.name in src.spec.terms)


def _acts_on(comp: Component, role: str, masks: Sequence[Applied],
             weights: Sequence[Applied]) -> bool:
    return any(_applies(src, role, comp, r) for src, r, _ in (*masks, *weights))


def reduce_term(comp: Component, role: str, per_sample: torch.Tensor,
                masks: Sequence[Applied], weights: Sequence[Applied]) -> torch.Tensor:
    """``sum(mask * weight * loss) / max(sum(mask), 1)`` over the batch for one term and role.

    A mask or weight applies when it was given for ``role`` and its component acts on this
    term (its ``terms`` are empty or name it). A scalar term is returned as it is.
    """
    if per_sample.dim() == 0:
        return per_sample
    if not masks and not weights:
        return per_sample.mean()
    mask = None
    for src, r, m in masks:
        if _applies(src, role, comp, r):
            m = m.to(per_sample.dtype)
            mask = m if mask is None else mask * m
    weight = None
    for src, r, w in weights:
        if _applies(src, role, comp, r):
            weight = w if weight is None else weight * w
    value = per_sample if weight is None else per_sample * weight
    if mask is None:
        return value.mean()
    return (value * mask).sum() / mask.sum().clamp_min(1.0)


__all__ = ["Produced", "StepResult", "check_outputs", "combine", "reduce_term",
           "without_gradient"]
