"""kdcore.config: plain TOML data bound to annotated functions and attrs classes."""

from __future__ import annotations

import enum
from typing import Annotated

import attrs
import pytest

from kdcore.config import bind_params, structure
from kdcore.errors import RecipeError
from kdcore.validators import between, each, positive, unit_interval


def loader(*, root: str, size: Annotated[int, positive] = 32, flatten: bool = False):
    return root, size, flatten


def noise(ctx, *, rate: Annotated[float, unit_interval],
          hidden: list[Annotated[int, positive]] = (),
          scale: Annotated[float, positive] | None = None):
    return rate


def test_missing_required_keyword_names_the_key():
    with pytest.raises(RecipeError) as err:
        bind_params(loader, {"flatten": True}, "data.params")
    assert str(err.value) == "data.params.root: missing required key 'root'"
    assert bind_params(loader, {"root": "/data"}, "data.params") == {"root": "/data"}


def test_positional_parameters_are_not_recipe_keys():
    # ``ctx`` is the noise model's input, not a parameter; it is neither required nor settable
    assert bind_params(noise, {"rate": 0.5}) == {"rate": 0.5}
    with pytest.raises(RecipeError, match="unknown key 'ctx'"):
        bind_params(noise, {"rate": 0.5, "ctx": 1})


@pytest.mark.parametrize(("data", "key", "message"), [
    ({"rate": 1.5}, "p.rate", "'rate' must be in [0, 1], got 1.5"),
    ({"rate": "high"}, "p.rate", "got 'high', expected a number"),
    ({"rate": 0.1, "hidden": [4, 0]}, "p.hidden[1]", "'hidden[1]' must be positive, got 0"),
    ({"rate": 0.1, "scale": -2}, "p.scale", "'scale' must be positive, got -2.0"),
    ({"rate": 0.1, "scale": "x"}, "p.scale", "expected a number or nothing"),
])
def test_annotated_validators_run_when_binding(data, key, message):
    with pytest.raises(RecipeError) as err:
        bind_params(noise, data, "p")
    assert err.value.key == key
    assert message in str(err.value)


def test_annotated_values_are_converted_first():
    assert bind_params(noise, {"rate": 1, "scale": 2}) == {"rate": 1.0, "scale": 2.0}
    assert bind_params(loader, {"root": "r", "size": 8}) == {"root": "r", "size": 8}


@attrs.frozen
class Params:
    k: Annotated[int, between(1, 100)] = 10
    sizes: Annotated[list[int], each(positive)] = attrs.Factory(list)
    alpha: float = attrs.field(default=0.5, validator=unit_interval)


@pytest.mark.parametrize(("data", "key", "message"), [
    ({"k": 0}, "c.params.k", "'k' must be in [1, 100], got 0"),
    ({"sizes": [1, -3]}, "c.params.sizes", "'sizes[1]' must be positive, got -3"),
    ({"alpha": 2.0}, "c.params.alpha", "'alpha' must be in [0, 1]"),
])
def test_annotated_attrs_fields_are_checked_beside_their_validators(data, key, message):
    with pytest.raises(RecipeError) as err:
        structure(Params, data, "c.params")
    assert err.value.key == key
    assert message in str(err.value)
    assert structure(Params, {"k": 100, "sizes": [2]}) == Params(k=100, sizes=[2])


class Role(str):
    """A model role: an identifier."""

    def __new__(cls, value: str) -> Role:
        if not value.isidentifier():
            raise ValueError("a role is an identifier")
        return super().__new__(cls, value)


class Mode(enum.StrEnum):
    FAST = "fast"
    SLOW = "slow"


@attrs.frozen
class WithRoles:
    teacher: Role = Role("teacher")
    peers: list[Role] = attrs.Factory(list)
    mode: Mode = Mode.FAST


def test_str_subclasses_convert_toml_strings():
    p = structure(WithRoles, {"teacher": "big", "peers": ["a", "b"], "mode": "slow"})
    assert type(p.teacher) is Role and p.teacher == "big"
    assert all(type(x) is Role for x in p.peers)
    assert p.mode is Mode.SLOW


@pytest.mark.parametrize(("data", "message"), [
    ({"teacher": "not a role"}, "expected a Role (a string) (a role is an identifier)"),
    ({"teacher": 3}, "got 3, expected a Role (a string)"),
    ({"mode": "medium"}, "got 'medium', expected 'fast' or 'slow'"),
])
def test_str_subclass_refusals_say_what_was_expected(data, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        structure(WithRoles, data)


def test_an_integer_beyond_any_float_is_a_type_error_not_an_overflow():
    @attrs.frozen
    class F:
        x: float = 0.0

    with pytest.raises(RecipeError, match="expected a number"):
        structure(F, {"x": 10**400})
