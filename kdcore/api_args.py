"""The Python API's arguments checked where they come in: one :class:`KdcoreError` naming the
argument, rather than a string iterated character by character (``seeds="10"`` ran seeds 1
and 0), a value passed on until it fails deep inside a run, or a traceback."""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any

from kdcore.errors import KdcoreError, shown


def _items(value: Any, name: str, example: str) -> list[Any]:
    if isinstance(value, list | tuple):
        return list(value)
    raise KdcoreError(f"{name} takes a list, such as {example}, not {shown(value)}")


def strings(value: Any, name: str, example: str) -> list[str]:
    """A list or tuple of strings (``overrides``)."""
    items = _items(value, name, example)
    for item in items:
        if not isinstance(item, str):
            raise KdcoreError(f"{name} takes strings, such as {example}; got {shown(item)}")
    return items


def seeds(value: Any) -> list[int] | None:
    """``None`` or a list or tuple of integers."""
    if value is None:
        return None
    items = _items(value, "seeds", "[0, 1, 2]")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise KdcoreError(f"seeds takes integers; got {shown(item)}")
    return items


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise KdcoreError(f"{name} takes True or False, not {shown(value)}")
    return value


def epoch_row(value: Any, rows: int) -> int:
    """One of a history's ``rows`` epoch rows, negative counting from the end (as a list
    index); numpy integers are taken, a bool or a float is not (``True`` was row 1, ``1.5`` an
    h5py error)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise KdcoreError(f"epoch takes an epoch row, an integer (negative counts from the end), "
                          f"not {shown(value)}")
    if not -rows <= value < rows:
        raise KdcoreError(f"epoch row {value} out of range: the history has {rows} rows")
    return int(value)


def name(value: Any, what: str) -> str:
    """The name of something a history holds (a metric, a column): a string."""
    if not isinstance(value, str):
        raise KdcoreError(f"a {what} is named by a string, not {shown(value)}")
    return value


def callback(value: Any, name: str) -> Any:
    """``None`` or something to call (``echo``)."""
    if value is not None and not callable(value):
        raise KdcoreError(f"{name} takes a function (print, say) or None, not {shown(value)}")
    return value


def count(value: Any, name: str) -> int:
    """A positive integer (``jobs``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KdcoreError(f"{name} takes a positive integer, not {shown(value)}")
    return value


def path(value: Any, name: str) -> Path:
    """A non-empty path given as a string or a path object (an empty one would be the
    current directory)."""
    if isinstance(value, str | os.PathLike) and str(os.fspath(value)) != "":
        return Path(os.fspath(value))
    raise KdcoreError(f"{name} takes a path (a string or a pathlib.Path), not {shown(value)}")


def plugins(value: Any) -> list[Any]:
    """In-process plugin objects; a string names one as ``--plugin`` does (``module:attr``)."""
    from kdcore.plugins import import_object

    return [import_object(p) if isinstance(p, str) else p
            for p in _items(value, "plugins", "[MyPlugin()]")]


def variants(value: Any, variant: type) -> list[Any]:
    """``"name:key=value;..."`` strings, ``(name, [overrides])`` pairs or ``variant`` objects
    (:class:`kdcore.grid.Variant`, given: the grid imports the engine, which reads histories,
    which use this module)."""
    items = _items(value, "variants", "['lr-high:models.student.optimizer.lr=0.1']")
    for item in items:
        if isinstance(item, str | variant):
            continue
        if (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                and not isinstance(item[1], str) and isinstance(item[1], list | tuple)
                and all(isinstance(s, str) for s in item[1])):
            continue
        raise KdcoreError("variants takes 'name:key=value;...' strings, (name, [overrides]) "
                          f"pairs or kdcore.grid.Variant objects; got {shown(item)}")
    return items


def recipe(value: Any, function: str) -> Any:
    """A resolved :class:`kdcore.Recipe` (a path is ``kdcore.run``'s, not ``function``'s)."""
    from kdcore.recipe import Recipe

    if isinstance(value, Recipe):
        return value
    hint = ("; kdcore.run takes a recipe file or recipe data as they are (kdcore.load_recipe "
            "reads a file into a Recipe)" if isinstance(value, str | os.PathLike | dict) else "")
    raise KdcoreError(f"{function} takes a kdcore.Recipe, not {shown(value)}{hint}")


def host(value: Any, function: str, required: bool = False) -> Any:
    """A :class:`kdcore.PluginHost`, or None where ``function`` builds the installed one."""
    from kdcore.plugins import PluginHost

    if isinstance(value, PluginHost) or (value is None and not required):
        return value
    what = "a kdcore.PluginHost" + ("" if required else " or None")
    raise KdcoreError(f"{function}'s host takes {what}, not {shown(value)}")
