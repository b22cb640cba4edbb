"""kdcore plugin: ALM-KD / AMAL adaptive loss mixing.

Components:
    almkd: a per-sample table of weights on the label CE and each teacher's KD term, learned by
        a closed-form last-layer look-ahead against a clean validation batch (``preset = "amal"``
        for AMAL, ``preset = "almkd"`` for the single-lambda ALM-KD).
"""

from __future__ import annotations

from collections.abc import Mapping

import kdcore
from kdcore_almkd.component import AlmKD, AlmKDParams, recipe_problems


@kdcore.hookimpl
def kdcore_add_components() -> Mapping[str, type[kdcore.Component]]:
    return {"almkd": AlmKD}


@kdcore.hookimpl
def kdcore_configure(recipe: kdcore.Recipe) -> list[str] | None:
    return recipe_problems(recipe) or None


__all__ = ["AlmKD", "AlmKDParams", "recipe_problems"]
