"""attrs validators for component and recipe parameters, shared by kdcore and its plugins.

Each one names the field and the accepted range in its message, which the recipe loader turns
into "file: key path: message". ``None`` passes every one of them, so an optional field
(``rate: float | None = attrs.field(default=None, validator=unit_interval)``) needs no wrapper;
a required field's type already rejects ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def positive(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """``value > 0`` (NaN fails)."""
    if value is not None and not value > 0:
        raise ValueError(f"'{attribute.name}' must be positive, got {value!r}")


def non_negative(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """``value >= 0`` (NaN fails)."""
    if value is not None and not value >= 0:
        raise ValueError(f"'{attribute.name}' must be >= 0, got {value!r}")


def between(low: float, high: float, *, include_low: bool = True, include_high: bool = True,
            what: str = "") -> Validator:
    """A validator of ``low <= value <= high``, each end open or closed; ``what`` adds a word
    on the meaning to the message (``"smallest / largest class"``)."""
    left, right = ("[" if include_low else "("), ("]" if include_high else ")")

    def _fmt(x: float) -> str:
        return str(int(x)) if math.isfinite(x) and float(x).is_integer() else str(x)

    span = f"{left}{_fmt(low)}, {_fmt(high)}{right}" + (f" ({what})" if what else "")

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None:
            return
        above = value >= low if include_low else value > low
        below = value <= high if include_high else value < high
        if not (above and below):
            raise ValueError(f"'{attribute.name}' must be in {span}, got {value!r}")

    return check


unit_interval = between(0.0, 1.0)
"""``0 <= value <= 1``: a probability, a mixing weight."""

below_one = between(0.0, 1.0, include_high=False)
"""``0 <= value < 1``: a rate, a fraction that cannot be everything."""
