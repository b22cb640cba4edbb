"""Turn plain TOML data into typed attrs objects, with errors that name the key path.

Used for the recipe itself and for every component's ``Params`` class, so that a plugin's
parameters are validated exactly like kdcore's own: unknown keys get a "did you mean", a value of
the wrong type names what was expected, and attrs validators report through the same message.

Annotations understood: ``int``, ``float`` (an integer is accepted and converted), ``bool``,
``str`` and subclasses of ``str`` (a TOML string is converted by calling the type, e.g. an
``enum`` with ``str`` values or a ``Role(str)``), ``Literal``, unions and ``Optional``,
``list``/``tuple``/``dict`` of those (``tuple[int, str]``: that many, each its own type),
attrs classes, and ``typing.Annotated[T, v1, v2, ...]``:
the value is converted as ``T``, then every callable in the metadata is run on it as an attrs
validator ``v(instance, attribute, value)`` with ``instance=None`` and an ``attribute`` of which
only ``.name`` is defined (see :mod:`kdcore.validators`; non-callable metadata is ignored).
That is how a plain function (a noise model, an augmentation, a dataset loader, an
architecture) declares the range of each keyword parameter, checked by :func:`bind_params`
before any data is loaded::

    def symmetric(ctx, *, rate: Annotated[float, unit_interval]) -> torch.Tensor: ...

The metadata is honoured on attrs fields too, in addition to their own ``validator``.
"""

from __future__ import annotations

import enum
import inspect
import types
from collections.abc import Callable, Mapping
from typing import (
    Annotated,
    Any,
    Literal,
    TypeVar,
    Union,
    get_args,
    get_origin,
    get_type_hints,
)

import attrs

from kdcore.errors import RecipeError, did_you_mean
from kdcore.validators import check_annotated

T = TypeVar("T")


class _Refused(RecipeError):
    """A value of the right type that an ``Annotated`` validator refused."""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        return _type_name(get_args(tp)[0])
    if isinstance(tp, type) and issubclass(tp, enum.Enum) and issubclass(tp, str):
        return " or ".join(repr(m.value) for m in tp)
    if isinstance(tp, type) and issubclass(tp, str) and tp is not str:
        return f"a {tp.__name__} (a string)"
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        if _fixed_length(tp):
            return f"a list of {len(args)}: {', '.join(_type_name(a) for a in args)}"
        if not args:
            return "a list"
        item = _type_name(args[0])
        plural = {"an integer": "integers", "a number": "numbers", "a string": "strings",
                  "a table": "tables"}
        return f"a list of {plural[item]}" if item in plural else f"a list, each {item}"
    if origin in (dict, Mapping):
        return "a table"
    if tp is type(None):
        return "nothing"
    if attrs.has(tp):
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert it (int -> float, list -> tuple)."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Annotated:
        value = _convert(get_args(tp)[0], value, key)
        try:
            check_annotated(value, _last_part(key), tp)
        except (ValueError, TypeError) as exc:
            raise _Refused(str(exc), key=key or None) from None
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise RecipeError(f"got {value!r}, expected {_type_name(tp)}", key=key)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except _Refused:  # the type fitted and a validator said no: that is the message
                raise
            except RecipeError:
                continue
        raise RecipeError(f"got {value!r}, expected {_type_name(tp)}", key=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"got {value!r}, expected {_type_name(tp)}", key=key)
        args = get_args(tp)  # tuple[T, ...] is (T, Ellipsis): its elements are T too
        if _fixed_length(tp):  # tuple[int, str]: this many, each of its own type
            if len(value) != len(args):
                raise RecipeError(f"got {value!r}, expected {_type_name(tp)}", key=key)
            return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        elem = args[0] if args else Any
        items = [_convert(elem, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise RecipeError(f"got {value!r}, expected a table", key=key)
        args = get_args(tp)
        if len(args) == 2 and args[1] is not Any:
            return {k: _convert(args[1], v, _join(key, str(k))) for k, v in value.items()}
        return dict(value)
    if attrs.has(tp):
        return structure(tp, value, key)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an integer beyond any float
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool or tp is str:
        if isinstance(value, tp):
            return value
    elif isinstance(tp, type) and issubclass(tp, str):
        if isinstance(value, str):
            return _str_subclass(tp, value, key)
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise RecipeError(f"got {value!r}, expected {_type_name(tp)}", key=key)


def _fixed_length(tp: Any) -> bool:
    """``tuple[int, str]`` (not ``tuple[int, ...]``, ``tuple`` or ``list[int]``)."""
    args = get_args(tp)
    return get_origin(tp) is tuple and bool(args) and args[-1] is not Ellipsis


def _str_subclass(tp: type[str], value: str, key: str) -> str:
    """A TOML string as the ``str`` subclass ``tp`` (a role name, a ``str`` enum)."""
    if isinstance(value, tp):
        return value
    try:
        return tp(value)
    except (ValueError, TypeError) as exc:
        detail = "" if issubclass(tp, enum.Enum) else f" ({exc})"
        raise RecipeError(f"got {value!r}, expected {_type_name(tp)}{detail}", key=key) from None


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _last_part(key: str) -> str:
    """The name a validator's message uses: the last part of the key path."""
    return key.rsplit(".", 1)[-1] or "value"


def structure(cls: type[T], data: Any, key: str = "") -> T:
    """Build the attrs class ``cls`` from a TOML table.

    Args:
        cls: an attrs class whose field annotations say what each key accepts.
        data: the table (a dict) read from TOML.
        key: the key path of ``data`` in the recipe, for messages.

    Raises:
        RecipeError: an unknown or missing key, a wrong type, or a failed attrs validator.
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise RecipeError(f"got {data!r}, expected a table", key=key or None)
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in attrs.fields(cls)}
    aliases = {f.alias or f.name: f.name for f in fields.values()}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in aliases:
            raise RecipeError(
                f"unknown key '{name}'{did_you_mean(name, aliases)}; "
                f"expected one of: {', '.join(sorted(aliases))}",
                key=_join(key, name),
            )
        field = fields[aliases[name]]
        kwargs[field.alias or field.name] = _convert(hints[field.name], value, _join(key, name))
    missing = [
        a for a, n in aliases.items() if fields[n].default is attrs.NOTHING and a not in kwargs
    ]
    if missing:
        raise RecipeError(f"missing required key '{missing[0]}'", key=_join(key, missing[0]))
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        bad = _validator_key(exc)
        raise RecipeError(str(exc), key=_join(key, bad) if bad else key or None) from None


def _validator_key(exc: Exception) -> str | None:
    """attrs' built-in validators name the attribute as the first word in quotes."""
    text = str(exc)
    if text.startswith("'") and "'" in text[1:]:
        return text[1 : text.index("'", 1)]
    return None


def bind_params(fn: Callable[..., Any], data: Mapping[str, Any], key: str = "") -> dict[str, Any]:
    """Check ``data`` against the annotated keyword parameters of ``fn``.

    Registries of datasets, noise models and architectures hold plain functions; their
    keyword-only parameters (with annotations and defaults) are what a recipe may set. Each
    value is converted and checked by its annotation, ``Annotated`` validators included (see
    the module docstring), so a bad value is refused before the function is ever called.

    Returns:
        the converted values of the keys in ``data`` (defaults are left to ``fn``).

    Raises:
        RecipeError: an unknown key, a keyword-only parameter without a default that ``data``
            does not set, a value of the wrong type, or a value its validators refuse.
    """
    sig = inspect.signature(fn)
    try:
        hints = get_type_hints(fn, include_extras=True)
    except Exception:  # annotations that cannot be resolved are taken as Any
        hints = {}
    params = {
        n: p for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY
    }
    out: dict[str, Any] = {}
    for name, value in data.items():
        if name not in params:
            raise RecipeError(
                f"unknown key '{name}'{did_you_mean(name, params)}; "
                f"expected one of: {', '.join(sorted(params)) or 'none'}",
                key=_join(key, name),
            )
        out[name] = _convert(hints.get(name, Any), value, _join(key, name))
    for name, p in params.items():
        if p.default is p.empty and name not in out:
            raise RecipeError(f"missing required key '{name}'", key=_join(key, name))
    return out


def keyword_params(fn: Callable[..., Any]) -> dict[str, Any]:
    """The keyword parameters of ``fn`` and their defaults (``inspect.Parameter.empty``: none)."""
    return {
        n: p.default
        for n, p in inspect.signature(fn).parameters.items()
        if p.kind is p.KEYWORD_ONLY
    }


def unstructure(obj: Any) -> Any:
    """The inverse of :func:`structure`: plain dicts and lists, ready for TOML or JSON."""
    if attrs.has(type(obj)):
        return {
            (f.alias or f.name): unstructure(getattr(obj, f.name))
            for f in attrs.fields(type(obj))
            if getattr(obj, f.name) is not None
        }
    if isinstance(obj, Mapping):
        return {k: unstructure(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [unstructure(v) for v in obj]
    return obj


__all__ = ["bind_params", "keyword_params", "structure", "unstructure"]
