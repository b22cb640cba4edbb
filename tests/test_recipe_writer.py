"""The TOML writer of resolved recipes (kdcore/recipe/writer.py): whatever plain data a recipe
can hold, what it writes reads back equal with Python's own TOML reader (``tomllib``, the
oracle), since ``--resume`` restarts from the written ``recipe.toml``."""

from __future__ import annotations

import datetime as dt
import math
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kdcore.recipe.writer import dumps_toml

# any text Python can encode as UTF-8 (no lone surrogates), control characters included
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_SCALARS = (st.booleans()
            | st.integers(min_value=-(2**63), max_value=2**63 - 1)
            | st.floats(allow_nan=False)
            | _TEXT
            | st.dates()
            | st.datetimes()
            | st.times())
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=20)
_TABLES = st.dictionaries(_TEXT, _VALUES, max_size=6)


@settings(max_examples=400, deadline=None, derandomize=True)  # the same examples in CI
@given(_TABLES)
def test_written_toml_reads_back_equal(data):
    assert tomllib.loads(dumps_toml(data)) == data


@pytest.mark.parametrize(("data", "text"), [
    ({"a": 1, "b": {"c": "x"}}, 'a = 1\n\n[b]\nc = "x"\n'),
    ({"s": [{"n": 1}, {"n": 2}]}, "[[s]]\nn = 1\n\n[[s]]\nn = 2\n"),
    ({"k": 'q"\\\n\r\t\b\f\x01\x7f'}, 'k = "q\\"\\\\\\n\\r\t\\b\\f\\u0001\\u007f"\n'),
    ({"a b": True, "é": False, "x_y-1": 0.5}, '"a b" = true\n"é" = false\nx_y-1 = 0.5\n'),
    ({"t": math.inf, "u": -math.inf, "e": {}, "l": []}, "t = inf\nu = -inf\ne = {}\nl = []\n"),
    ({"d": dt.date(2024, 1, 2), "m": [[1, 2], {"z": "w"}]},
     'd = 2024-01-02\nm = [[1, 2], {z = "w"}]\n'),
    ({"outer": {"inner": {"v": 1}, "w": 2}}, "[outer]\nw = 2\n\n[outer.inner]\nv = 1\n"),
])
def test_the_written_text(data, text):
    """The form, written out by hand: plain keys before sub-tables, bare keys only where TOML
    allows them (ASCII letters, digits, ``_`` and ``-``), escapes for what a basic string may
    not hold, tabs kept."""
    assert dumps_toml(data) == text


def test_what_toml_cannot_hold_is_refused():
    with pytest.raises(TypeError, match="cannot write"):
        dumps_toml({"x": object()})
