"""The recipe key paths that the plan's messages point at: a component's entry, its parameter."""

from __future__ import annotations

import attrs

from kdcore.component import Component
from kdcore.recipe import Recipe


def component_key(recipe: Recipe, s: int, comp: Component) -> str:
    """``stages[s].components[c]``: the entry of stage ``s`` that placed ``comp``."""
    # the enabled entry: a disabled one may carry the same label
    c = next(c for c, entry in enumerate(recipe.stages[s].components)
             if entry.enabled and entry.label == comp.name)
    return f"stages[{s}].components[{c}]"


def param_key(recipe: Recipe, s: int, comp: Component, value: str) -> str:
    """The key path of the parameter of ``comp`` that holds ``value`` (its params table when
    no single field does: a role or column named by an override of ``roles``/``reads``)."""
    base = f"{component_key(recipe, s, comp)}.params"
    if attrs.has(type(comp.params)):
        for field in attrs.fields(type(comp.params)):
            held = getattr(comp.params, field.name)
            if held == value or (isinstance(held, (list, tuple)) and value in held):
                return f"{base}.{field.alias or field.name}"
    return base


__all__ = ["component_key", "param_key"]
