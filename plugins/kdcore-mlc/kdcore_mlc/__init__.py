"""kdcore plugin: MLC meta label correction and KDMLC.

Components:
    mlc: the label-correction network, the look-ahead meta-gradient and the real step of the
        model it serves (MLC's main model; KDMLC's teacher).
    kdmlc_student: KDMLC's student term, learning from MLC's corrected labels and the teacher.
"""

from __future__ import annotations

from collections.abc import Mapping

import kdcore
from kdcore_mlc.kdmlc import KDMLCStudent
from kdcore_mlc.mlc import MLC


@kdcore.hookimpl
def kdcore_add_components() -> Mapping[str, type[kdcore.Component]]:
    return {"mlc": MLC, "kdmlc_student": KDMLCStudent}


@kdcore.hookimpl
def kdcore_configure(recipe: kdcore.Recipe) -> list[str] | None:
    """Catch the recipe mistakes MLC cannot run with before any data is loaded."""
    problems: list[str] = []
    for stage in recipe.stages:
        comps = [c for c in stage.components if c.enabled]
        for comp in comps:
            if comp.use == "mlc":
                if recipe.data.gold_per_class == 0:
                    problems.append(
                        f"stage '{stage.name}': component '{comp.label}' needs a clean gold "
                        f"split: set data.gold_per_class (e.g. 10 on digits, 100 on "
                        f"Fashion-MNIST)")
                for role in comp.models if comp.models is not None else stage.train:
                    model = recipe.models.get(role)
                    if model is not None and model.optimizer.name != "sgd":
                        problems.append(
                            f"stage '{stage.name}': component '{comp.label}' mirrors SGD in its "
                            f"look-ahead; models.{role}.optimizer.name is "
                            f"'{model.optimizer.name}', expected 'sgd'")
            if comp.use == "kdmlc_student" and not any(c.use == "mlc" for c in comps):
                problems.append(f"stage '{stage.name}': component '{comp.label}' needs an 'mlc' "
                                f"component in the same stage (its corrected labels)")
    return problems or None
