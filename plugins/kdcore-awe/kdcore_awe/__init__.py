"""kdcore plugin: ambiguity-aware weight estimation (AWE) of AML-KD.

Component ``awe``: per-sample weights from how close a sample's feature is to its label's class
prototype compared with the others, as loss weights (a weighting component) and as label
propagation seed weights (the ledger column ``awe/seed_weight``).
"""

from __future__ import annotations

from collections.abc import Mapping

import kdcore
from kdcore.config import structure
from kdcore.validators import check_decay, decay_bound
from kdcore_awe.awe import AWE, AWEParams, WeightNet, ambiguity_profile, class_prototypes

__all__ = ["AWE", "WeightNet", "ambiguity_profile", "class_prototypes"]


@kdcore.hookimpl
def kdcore_add_components() -> Mapping[str, type[kdcore.Component]]:
    return {"awe": AWE}


@kdcore.hookimpl
def kdcore_configure(recipe: kdcore.Recipe) -> list[str] | None:
    """An ``awe`` entry that learns its loss weights with ``lr = 0`` steps its WeightNet at its
    student's learning rate, which its parameters do not know: at the highest rate the
    student's schedule reaches by the end of the entry's stage, the WeightNet's weight decay
    alone must not diverge (its parameters' own check covers ``lr > 0``)."""
    problems = []
    for s, stage in enumerate(recipe.stages):
        for c, comp in enumerate(stage.components):
            if comp.use != "awe" or not comp.enabled:
                continue
            try:
                params = structure(AWEParams, comp.params, "params")
            except kdcore.RecipeError:  # the plan says what is wrong with them, and where
                continue
            model = recipe.models.get(params.student)
            if params.loss_mode != "learned" or params.lr or model is None or not model.enabled:
                continue  # no step of the WeightNet, its own rate, or a role the plan refuses
            epochs = sum(st.epochs for st in recipe.stages[:s + 1] if params.student in st.train)
            try:
                check_decay(model.highest_lr(epochs), params.weight_decay,
                            decay_bound(params.momentum),
                            f"the WeightNet's SGD with momentum {params.momentum:g} at the "
                            f"learning rate of '{params.student}', which lr = 0 follows")
            except ValueError as exc:
                problems.append(f"stages[{s}].components[{c}] ('{comp.label}', use = \"awe\"): "
                                f"{exc}")
    return problems or None
