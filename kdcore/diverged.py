"""Telling a component's divergence from its bug, when what it returned breaks its contract; and
the message of a loss that is no longer finite.

A weight of NaN from AWE's learned WeightNet trained at too large a rate is the user's setting,
as a NaN loss is, not a plugin's bug: the component's own learned state (its ``state_dict``)
holds non-finite values by then. Such a breach is :class:`~kdcore.errors.TrainingDiverged`
(exit 2); any other stays :class:`~kdcore.failures.RunFailed` (exit 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from kdcore.component import Component
from kdcore.errors import KdcoreError, TrainingDiverged
from kdcore.failures import RunFailed


def non_finite(state: Any, path: str = "") -> str | None:
    """The dotted path of the first floating-point tensor in ``state`` (nested mappings and
    sequences, as a ``state_dict`` holds them) with a NaN or infinite value; None if none."""
    if isinstance(state, torch.Tensor):
        floating = state.is_floating_point() or state.is_complex()
        return path if floating and not bool(torch.isfinite(state).all()) else None
    if isinstance(state, Mapping):
        items: Any = state.items()
    elif isinstance(state, Sequence) and not isinstance(state, str | bytes):
        items = enumerate(state)
    else:
        return None
    for key, value in items:
        found = non_finite(value, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def broken_output(comp: Component, what: str) -> KdcoreError:
    """The error for ``comp``'s output that broke its contract, ``what`` saying how ("weight
    returned NaN; ..."): :class:`TrainingDiverged` when the component's learned state is not
    finite (naming where), else :class:`RunFailed`."""
    line = f"component '{comp.name}' ({comp.spec.use}) {what}"
    try:
        where = non_finite(comp.state_dict())
    except Exception:  # a plugin's state_dict that fails says nothing either way
        where = None
    if where is None:
        return RunFailed(line)
    return TrainingDiverged(f"{line}; its own learned state diverged ('{where}' is not "
                            "finite in its state_dict): lower the learning rate or weight decay "
                            "it trains with; the history and the last checkpoint hold every "
                            "completed epoch")


def loss_diverged(role: str, where: str, step: int, terms: Mapping[str, torch.Tensor],
                  before: tuple[int, Mapping[str, torch.Tensor]] | None,
                  components: Sequence[Component]) -> TrainingDiverged:
    """The error for model ``role``'s loss, not finite at ``step`` (``where``: its stage and
    epoch), of the terms ``terms`` (by the name of the component in ``components`` that gave
    each): every term that is not finite, each with its component, and ``before``, the terms
    of the model's last finite loss in the epoch (its step and its terms), with their weights:
    the term that grew to it is the divergence's cause, which the first term that is not
    finite need not be (a feature term that grew without bound made the CE of the next step
    NaN too, and CE was named)."""
    specs = {c.name: c.spec for c in components}
    bad = [name for name, value in terms.items() if not bool(torch.isfinite(value))]
    if bad:
        cause = f"term{'s' * (len(bad) > 1)} " + ", ".join(
            f"'{name}' (component '{specs[name].use}')" for name in bad)
    else:
        cause = "every term is finite, their sum times the components' weights is not (a " \
                "weight too large?)"
    if before is not None:
        last, values = before
        cause += f"; its last finite loss, at step {last}, had " + ", ".join(
            f"{name} = {float(value):.3g}" + (
                f" (weight {specs[name].weight:g})" if specs[name].weight != 1.0 else "")
            for name, value in values.items())
    return TrainingDiverged(f"loss of model '{role}' is not finite at {where}, step {step}: "
                            f"{cause}; the history and the last checkpoint hold every "
                            "completed epoch")
