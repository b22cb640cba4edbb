"""Structuring plain data into typed attrs objects (kdcore/config.py), annotation by annotation:
what each accepts and converts to, and the whole message of each refusal (the words that say
what was expected are written out here by hand)."""

from __future__ import annotations

import enum
import typing
from typing import Annotated, Any, Literal

import attrs
import pytest

from kdcore.config import bind_params, keyword_params, structure, unstructure
from kdcore.errors import RecipeError
from kdcore.validators import positive


@attrs.frozen
class Inner:
    n: int = 0


class Color(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class Tag(str):
    """A str subclass, as ``Role`` is."""


@attrs.frozen
class Everything:
    i: int = 0
    f: float = 0.0
    b: bool = False
    s: str = ""
    lit: Literal["a", "b"] = "a"
    opt: int | None = None
    none_first: None | int = None
    union: int | str = 0
    lst: list[int] = attrs.Factory(list)
    any_list: typing.List = attrs.Factory(list)  # noqa: UP006 (a bare typing.List, on purpose)
    tup: tuple[int, ...] = ()
    pair: tuple[float, str] = (0.0, "")
    single: tuple[int] = (0,)
    table: dict[str, int] = attrs.Factory(dict)
    any_table: dict[str, Any] = attrs.Factory(dict)
    inner: Inner = attrs.Factory(Inner)
    color: Color = Color.RED
    tag: Tag = Tag("")
    count: Annotated[int, positive] = 1
    count_or_name: Annotated[int, positive] | str = 1
    anything: Any = None
    raw: bytes = b""
    tables: list[dict[str, int]] = attrs.Factory(list)
    inner_or_none: Inner | None = None
    bare: dict = attrs.Factory(dict)
    colors: list[Color] = attrs.Factory(list)
    fs: list[str] = attrs.Factory(list)
    nums: list[float] = attrs.Factory(list)


@pytest.mark.parametrize(("data", "field", "value"), [
    ({"f": 3}, "f", 3.0),
    ({"tup": [1, 2]}, "tup", (1, 2)),
    ({"pair": [1, "a"]}, "pair", (1.0, "a")),
    ({"single": [3]}, "single", (3,)),
    ({"lst": [4]}, "lst", [4]),
    ({"any_list": ["x", 1]}, "any_list", ["x", 1]),
    ({"union": "x"}, "union", "x"),
    ({"union": 7}, "union", 7),
    ({"opt": None}, "opt", None),
    ({"opt": 2}, "opt", 2),
    ({"none_first": 5}, "none_first", 5),
    ({"table": {"k": 1}}, "table", {"k": 1}),
    ({"any_table": {"k": [1]}}, "any_table", {"k": [1]}),
    ({"inner": {"n": 3}}, "inner", Inner(3)),
    ({"color": "blue"}, "color", Color.BLUE),
    ({"count_or_name": "all"}, "count_or_name", "all"),
    ({"anything": [{"x": 1}]}, "anything", [{"x": 1}]),
    ({"raw": b"\x01"}, "raw", b"\x01"),
    ({"bare": {"k": [1]}}, "bare", {"k": [1]}),
    ({"tables": [{"a": 1}]}, "tables", [{"a": 1}]),
])
def test_accepted_values_and_what_they_become(data, field, value):
    got = getattr(structure(Everything, data, "p"), field)
    assert got == value and type(got) is type(value)


def test_a_str_subclass_value_becomes_that_class():
    tag = structure(Everything, {"tag": "t"}).tag
    assert tag == "t" and type(tag) is Tag


@pytest.mark.parametrize(("data", "key", "detail"), [
    ({"i": "1"}, "p.i", "got '1', expected an integer"),
    ({"i": True}, "p.i", "got True, expected an integer"),
    ({"f": "x"}, "p.f", "got 'x', expected a number"),
    ({"b": 1}, "p.b", "got 1, expected true or false"),
    ({"s": 1}, "p.s", "got 1, expected a string"),
    ({"lit": "c"}, "p.lit", "got 'c', expected 'a' or 'b'"),
    ({"opt": "x"}, "p.opt", "got 'x', expected an integer or nothing"),
    ({"none_first": "x"}, "p.none_first", "got 'x', expected nothing or an integer"),
    ({"union": 1.5}, "p.union", "got 1.5, expected an integer or a string"),
    ({"lst": 1}, "p.lst", "got 1, expected a list of integers"),
    ({"lst": [1, "x"]}, "p.lst[1]", "got 'x', expected an integer"),
    ({"any_list": 1}, "p.any_list", "got 1, expected a list"),
    ({"tup": ["x"]}, "p.tup[0]", "got 'x', expected an integer"),
    ({"pair": [1.5]}, "p.pair", "got [1.5], expected a list of 2: a number, a string"),
    ({"pair": [1.5, "a", "b"]}, "p.pair",
     "got [1.5, 'a', 'b'], expected a list of 2: a number, a string"),
    ({"pair": ["a", 1.5]}, "p.pair[0]", "got 'a', expected a number"),
    ({"pair": [1.5, 2]}, "p.pair[1]", "got 2, expected a string"),
    ({"single": [1, 2]}, "p.single", "got [1, 2], expected a list of 1: an integer"),
    ({"table": []}, "p.table", "got [], expected a table"),
    ({"table": {"k": "v"}}, "p.table.k", "got 'v', expected an integer"),
    ({"inner": 3}, "p.inner", "got 3, expected a table"),
    ({"inner": {"m": 1}}, "p.inner.m", "unknown key 'm'; expected one of: n"),
    ({"color": "green"}, "p.color", "got 'green', expected 'red' or 'blue'"),
    ({"color": 1}, "p.color", "got 1, expected 'red' or 'blue'"),
    ({"tag": 1}, "p.tag", "got 1, expected a Tag (a string)"),
    ({"count": 0}, "p.count", "'count' must be positive, got 0"),
    ({"count_or_name": 0}, "p.count_or_name", "'count_or_name' must be positive, got 0"),
    ({"raw": "x"}, "p.raw", "got 'x', expected bytes"),
    ({"tables": 1}, "p.tables", "got 1, expected a list of tables"),
    ({"fs": "a"}, "p.fs", "got 'a', expected a list of strings"),
    ({"nums": 0.5}, "p.nums", "got 0.5, expected a list of numbers"),
    ({"colors": "red"}, "p.colors", "got 'red', expected a list, each 'red' or 'blue'"),
    ({"inner_or_none": 1}, "p.inner_or_none", "got 1, expected a table or nothing"),
    ({"bare": 1}, "p.bare", "got 1, expected a table"),
    ({"coutn": 1}, "p.coutn", "unknown key 'coutn' (did you mean 'count'?); expected one of: "
                              "any_list, any_table, anything, b, bare, color, colors, count, "
                              "count_or_name, f, fs, i, inner, inner_or_none, lit, lst, "
                              "none_first, nums, opt, pair, raw, s, single, table, tables, tag, "
                              "tup, union"),
])
def test_refusals_name_the_key_and_what_was_expected(data, key, detail):
    with pytest.raises(RecipeError) as info:
        structure(Everything, data, "p")
    assert (info.value.key, info.value.detail) == (key, detail)


class _Marker:
    """An annotation with no ``__name__``: described by its text."""

    def __call__(self, *args):  # typing accepts only callables as annotations
        return None

    def __repr__(self):
        return "a marker"


MARKER = _Marker()


@attrs.frozen
class Odd:
    weird: MARKER = None  # type: ignore[valid-type]


def test_a_type_without_a_name_is_described_by_its_text():
    with pytest.raises(RecipeError) as info:
        structure(Odd, {"weird": 1})
    assert info.value.detail == "got 1, expected a marker"


def test_a_table_is_required_at_the_top():
    with pytest.raises(RecipeError) as info:
        structure(Inner, [1], "here")
    assert (info.value.key, info.value.detail) == ("here", "got [1], expected a table")
    with pytest.raises(RecipeError) as info:
        structure(Inner, 5)
    assert (info.value.key, info.value.detail) == (None, "got 5, expected a table")
    assert structure(Inner, Inner(4)) == Inner(4)  # already built: as it is


@attrs.frozen
class Needs:
    first: int
    second: int
    _hidden: str = attrs.field(default="", alias="shown")
    third: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    fourth: int = attrs.field(default=0)

    @fourth.validator
    def _check(self, attribute, value):
        if value == 7:
            raise ValueError("fourth can't be 7")
        if value > 5:
            raise ValueError("fourth is too large")


def test_required_keys_aliases_and_validators():
    with pytest.raises(RecipeError) as info:
        structure(Needs, {"second": 1}, "t")
    assert (info.value.key, info.value.detail) == ("t.first", "missing required key 'first'")
    with pytest.raises(RecipeError) as info:
        structure(Needs, {}, "")
    assert (info.value.key, info.value.detail) == ("first", "missing required key 'first'")
    built = structure(Needs, {"first": 1, "second": 2, "shown": "x"})
    assert built._hidden == "x"
    assert unstructure(built) == {"first": 1, "second": 2, "shown": "x", "third": 0,
                                  "fourth": 0}
    with pytest.raises(RecipeError) as info:
        structure(Needs, {"first": 1, "second": 2, "third": -1}, "t")
    assert (info.value.key, info.value.detail) == ("t.third", "'third' must be >= 0: -1")
    with pytest.raises(RecipeError) as info:  # a message that names no field: the table's key
        structure(Needs, {"first": 1, "second": 2, "fourth": 6}, "t")
    assert (info.value.key, info.value.detail) == ("t", "fourth is too large")
    with pytest.raises(RecipeError) as info:
        structure(Needs, {"first": 1, "second": 2, "fourth": 6})
    assert info.value.key is None
    with pytest.raises(RecipeError) as info:  # a quote, but not a name first: the table's key
        structure(Needs, {"first": 1, "second": 2, "fourth": 7}, "t")
    assert (info.value.key, info.value.detail) == ("t", "fourth can't be 7")


def test_unstructure_drops_nothing_but_none():
    @attrs.frozen
    class Holder:
        inner: Inner
        items: list[Any]
        table: dict[str, Any]
        gone: int | None = None

    plain = unstructure(Holder(Inner(2), [Inner(1), (1, 2)], {"a": None, "b": Inner(0)}))
    assert plain == {"inner": {"n": 2}, "items": [{"n": 1}, [1, 2]], "table": {"b": {"n": 0}}}


def _loader(x, *, size: Annotated[int, positive], name: str = "n", scale: float = 1.0,
            loose=None):
    return x


def test_bind_params_checks_keyword_parameters():
    assert bind_params(_loader, {"size": 2, "scale": 3}, "data.params") == {"size": 2,
                                                                           "scale": 3.0}
    assert bind_params(_loader, {"size": 1, "loose": [1]}) == {"size": 1, "loose": [1]}
    cases = [
        ({"sise": 1}, "data.params.sise",
         "unknown key 'sise' (did you mean 'size'?); expected one of: loose, name, scale, size"),
        ({}, "data.params.size", "missing required key 'size'"),
        ({"size": 0}, "data.params.size", "'size' must be positive, got 0"),
        ({"size": 1, "x": 1}, "data.params.x",
         "unknown key 'x'; expected one of: loose, name, scale, size"),
    ]
    for data, key, detail in cases:
        with pytest.raises(RecipeError) as info:
            bind_params(_loader, data, "data.params")
        assert (info.value.key, info.value.detail) == (key, detail)
    with pytest.raises(RecipeError) as info:
        bind_params(lambda x: x, {"a": 1})
    assert (info.value.key, info.value.detail) == ("a", "unknown key 'a'; expected one of: none")


def test_bind_params_takes_unresolvable_annotations_as_any():
    def fn(*, size: NoSuchType = 1):  # noqa: F821 (never resolvable, on purpose)
        return size

    assert bind_params(fn, {"size": "anything"}) == {"size": "anything"}


def test_keyword_params_are_the_keyword_only_ones_with_their_defaults():
    import inspect

    assert keyword_params(_loader) == {"size": inspect.Parameter.empty, "name": "n",
                                       "scale": 1.0, "loose": None}
