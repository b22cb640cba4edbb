"""kdcore plugin: selective mutual knowledge distillation (SMKD) and deep mutual learning.

Components:
    smkd: selective mutual KD between two or more peers trained together, with a static or
        progressive certainty threshold (specification ``methods/smkd.md``, a reconstruction;
        see the plugin README for the reading implemented).
    dml: deep mutual learning, the "all knowledge" special case of ``smkd``.
"""

from __future__ import annotations

from collections.abc import Mapping

import kdcore
from kdcore_smkd.dml import DML, DMLParams
from kdcore_smkd.smkd import SMKD, SMKDParams

COMPONENTS: dict[str, type[kdcore.Component]] = {"smkd": SMKD, "dml": DML}


@kdcore.hookimpl
def kdcore_add_components() -> Mapping[str, type[kdcore.Component]]:
    return COMPONENTS


@kdcore.hookimpl
def kdcore_configure(recipe: kdcore.Recipe) -> list[str] | None:
    """Every ``smkd``/``dml`` entry needs two or more distinct peers."""
    problems = []
    for s, stage in enumerate(recipe.stages):
        for c, comp in enumerate(stage.components):
            if comp.use not in COMPONENTS or not comp.enabled:
                continue
            peers = list(comp.models if comp.models is not None else stage.train)
            if len(peers) < 2 or len(set(peers)) != len(peers):
                problems.append(
                    f"stages[{s}].components[{c}] ('{comp.label}', use = \"{comp.use}\"): needs "
                    f"two or more distinct peer models, got {peers}; list them in the stage's "
                    f"'train' or the component's 'models'")
    return problems or None


__all__ = ["DML", "SMKD", "DMLParams", "SMKDParams"]
