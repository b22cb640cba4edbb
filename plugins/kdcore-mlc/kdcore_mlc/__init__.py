"""kdcore plugin: MLC meta label correction and KDMLC.

Components:
    mlc: the label-correction network, the look-ahead meta-gradient and the real step of the
        model it serves (MLC's main model; KDMLC's teacher).
    kdmlc_student: KDMLC's student term, learning from MLC's corrected labels and the teacher.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import kdcore
from kdcore.config import structure
from kdcore_mlc.kdmlc import KDMLCStudent, KDMLCStudentParams, find_corrector
from kdcore_mlc.mlc import MLC, MLCParams

P = TypeVar("P")


@kdcore.hookimpl
def kdcore_add_components() -> Mapping[str, type[kdcore.Component]]:
    return {"mlc": MLC, "kdmlc_student": KDMLCStudent}


def _params(cls: type[P], comp: Any, key: str) -> P | None:
    """``comp``'s params structured as ``cls``, or None when they are invalid (the plan then
    reports them with their key path)."""
    try:
        return structure(cls, comp.params, f"{key}.params")
    except kdcore.RecipeError:
        return None


@kdcore.hookimpl
def kdcore_configure(recipe: kdcore.Recipe) -> list[str] | None:
    """Catch the recipe mistakes MLC and KDMLC cannot run with before any data is loaded.

    (Whether ``kdmlc_student``'s ``teacher`` names a model the recipe defines is the plan's
    check of its ``Role`` parameter.)
    """
    problems: list[str] = []
    for s, stage in enumerate(recipe.stages):
        for c, comp in enumerate(stage.components):
            if not comp.enabled:
                continue
            key = f"stages[{s}].components[{c}]"
            served = comp.models if comp.models is not None else stage.train
            if comp.use == "mlc":
                if recipe.data.gold_per_class == 0:
                    problems.append(
                        f"stage '{stage.name}': component '{comp.label}' needs a clean gold "
                        f"split: set data.gold_per_class (e.g. 10 on digits, 100 on "
                        f"Fashion-MNIST)")
                for role in served:
                    model = recipe.models.get(role)
                    if model is not None and model.optimizer.name != "sgd":
                        problems.append(
                            f"stage '{stage.name}': component '{comp.label}' mirrors SGD in its "
                            f"look-ahead; models.{role}.optimizer.name is "
                            f"'{model.optimizer.name}', expected 'sgd'")
            if comp.use != "kdmlc_student":
                continue
            params = _params(KDMLCStudentParams, comp, key)
            if params is None:
                continue
            if not any(x.enabled and x.use == "mlc" for x in stage.components):
                problems.append(f"stage '{stage.name}': component '{comp.label}' needs an 'mlc' "
                                f"component in the same stage (its corrected labels)")
                continue
            found = find_corrector(stage, params.corrector)
            if isinstance(found, str):
                problems.append(f"{key}: component '{comp.label}' {found}")
                continue
            main = list(found.models if found.models is not None else stage.train)
            for role in served:
                if role in main:
                    problems.append(f"{key}: component '{comp.label}' serves '{role}', the main "
                                    f"model of '{found.label}'; it is for a student")
            if params.clean_half:
                mlc = _params(MLCParams, found, "corrector")
                if mlc is not None and mlc.method != "hmlc_K_mix":
                    problems.append(f"{key}: component '{comp.label}': clean_half needs the gold "
                                    f"batch's clean half (method = \"hmlc_K_mix\" on "
                                    f"'{found.label}')")
    return problems or None
