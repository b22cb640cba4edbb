"""kdcore.validators: the shared parameter checks, their bounds and their messages."""

from __future__ import annotations

import math

import attrs
import pytest

from kdcore.validators import below_one, between, non_negative, positive, unit_interval


@attrs.frozen
class P:
    pos: float | None = attrs.field(default=1.0, validator=positive)
    nonneg: float = attrs.field(default=0.0, validator=non_negative)
    unit: float = attrs.field(default=1.0, validator=unit_interval)
    rate: float = attrs.field(default=0.0, validator=below_one)
    ratio: float = attrs.field(default=1.0, validator=between(0.0, 1.0, include_low=False,
                                                               what="smallest / largest"))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("pos", 0.0, "'pos' must be positive, got 0.0"),
    ("pos", math.nan, "'pos' must be positive"),
    ("nonneg", -1, "'nonneg' must be >= 0, got -1"),
    ("unit", 1.5, "'unit' must be in [0, 1], got 1.5"),
    ("rate", 1.0, "'rate' must be in [0, 1), got 1.0"),
    ("ratio", 0.0, "'ratio' must be in (0, 1] (smallest / largest), got 0.0"),
])
def test_out_of_range_is_named(field, value, message):
    with pytest.raises(ValueError) as err:
        P(**{field: value})
    assert message in str(err.value)


def test_bounds_and_none_pass():
    P(pos=None, nonneg=0, unit=0.0, rate=0.999, ratio=1.0)
    P(unit=1.0, ratio=1e-9)
