"""Reading recipes: TOML files, ``extends``, merging, ``--set`` overrides, consistency checks.

A recipe may ``extends = "other.toml"`` (a path relative to itself) and override keys; tables
merge key by key, and lists of tables whose entries carry a ``name`` (stages, components) merge
entry by entry, matched by name (each inherited entry takes at most one), the others appended;
a table holding ``__replace__ = true`` replaces the inherited table (or list entry) whole
instead (a noise model or architecture with other parameters than the base's). ``--set
key.path=value`` overrides apply after that, with list entries addressed by index or by name
(``stages.student.components.kd.weight=0``). A disabled entry may share its name with an
enabled one; the name then means the enabled entry, in a merge and in an override alike.
Nothing in a recipe is evaluated as code.

Reading never ends in a traceback: whatever the bytes of a file or an override, the outcome is a
:class:`~kdcore.errors.RecipeError` naming the file and the key, or a typed :class:`Recipe`.
Before anything walks the data recursively (merging, type checks), :func:`check_plain` bounds
its nesting depth, and refuses what no key accepts: NUL bytes and text that is not UTF-8,
integers beyond TOML's 64 bits, and NaN.
"""

from __future__ import annotations

import copy
import math
import os
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from typing import Any

import attrs

from kdcore.config import structure
from kdcore.errors import LONG_INTEGER, KdcoreError, RecipeError, did_you_mean, shown
from kdcore.recipe.rules import check_consistency
from kdcore.recipe.schema import Recipe
from kdcore.validators import Param, no_nul

MAX_DEPTH = 32
"""Tables and arrays nest at most this deep (a shipped recipe needs 6)."""

MAX_EXTENDS = 32
"""The longest chain of ``extends`` followed."""

_INT64 = (-(2**63), 2**63 - 1)

MAX_RECIPE_BYTES = 1 << 20
"""The largest recipe or grid file read (1 MiB)."""


# -- reading ---------------------------------------------------------------------------------


_BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark
_LONG_INTEGER = f"{LONG_INTEGER}; no recipe value needs one"


def read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file; a missing, unreadable or malformed file is a :class:`RecipeError`.

    The data is checked by :func:`check_plain` before it is returned.
    """
    name = str(path)
    if "\0" in name:
        raise RecipeError(f"the recipe path {name!r} contains a NUL byte")
    try:
        kind = path.stat().st_mode
        if stat.S_ISDIR(kind):
            raise RecipeError(f"recipe path is a directory: {path}")
        if not stat.S_ISREG(kind):  # a FIFO would block, /dev/zero never ends
            raise RecipeError(f"recipe path is not a regular file: {path}")
        with path.open("rb") as fh:
            raw = fh.read(MAX_RECIPE_BYTES + 1)
        if len(raw) > MAX_RECIPE_BYTES:
            raise RecipeError(f"larger than {MAX_RECIPE_BYTES >> 20} MiB; a recipe is a few "
                              "kilobytes of TOML", file=name)
        bom = len(_BOM) if raw.startswith(_BOM) else 0  # as Notepad writes it: dropped
        data = tomllib.loads(raw[bom:].decode("utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"malformed TOML: {exc}", file=name) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {bom + exc.start}); "
            "TOML files must be UTF-8", file=name) from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively
        raise RecipeError("malformed TOML: arrays or tables nested too deeply for the reader",
                          file=name) from None
    except ValueError:  # the one tomllib lets through: int() of a decimal too long to read
        raise RecipeError(f"malformed TOML: {_LONG_INTEGER}", file=name) from None
    except OSError as exc:
        raise RecipeError(f"cannot read recipe: {exc.strerror or exc}", file=name) from None
    try:
        check_plain(data)
    except RecipeError as exc:
        raise exc.at(file=name) from None
    return data


def check_plain(data: Any, key: str = "") -> None:
    """Refuse what no recipe key accepts, before anything recurses into ``data``.

    Raises:
        RecipeError: nesting deeper than :data:`MAX_DEPTH`, a string or key with a NUL byte
            or with text that is not UTF-8 (a command-line argument decoded with surrogate
            escapes), an integer outside [-2**63, 2**63 - 1] (TOML's own limit), or NaN.
    """
    # an explicit stack: the depth check must not itself recurse past Python's limit
    stack: list[tuple[Any, str, int]] = [(data, key, 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, Mapping) or (isinstance(value, list) and value):
            if depth >= MAX_DEPTH:
                raise RecipeError(f"nested more than {MAX_DEPTH} tables or arrays deep",
                                  key=where or None)
        if isinstance(value, Mapping):
            for k, v in value.items():
                sub = _join(where, str(k))
                _check_text(k, sub)
                stack.append((v, sub, depth + 1))
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
            raise RecipeError(f"the integer {value} is outside TOML's 64-bit range "
                              f"[-2**63, 2**63 - 1]", key=where or None)
        elif isinstance(value, float) and math.isnan(value):
            raise RecipeError("NaN is not a value any recipe key accepts", key=where or None)


def _check_text(text: Any, where: str) -> None:
    if not isinstance(text, str):
        return
    try:
        no_nul(None, Param(where.rsplit(".", 1)[-1] or "value"), text)
        text.encode("utf-8")
    except UnicodeEncodeError:  # a ValueError too: caught first
        raise RecipeError(f"{text!r} is not valid UTF-8 text", key=where or None) from None
    except ValueError as exc:
        raise RecipeError(str(exc), key=where or None) from None


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe's data with every ``extends`` merged in (the base first)."""
    if "\0" in str(path):
        raise RecipeError(f"the recipe path {str(path)!r} contains a NUL byte")
    try:
        path = Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on older Pythons
        raise RecipeError(f"cannot read recipe: {exc}", file=str(path)) from None
    data = read_toml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    where = {"file": str(path), "key": "extends"}
    if not isinstance(parent, str):
        raise RecipeError(f"got {parent!r}, expected a file path", **where)
    chain = (*_seen, path)
    try:
        base_path = (path.parent / parent).resolve()
        is_dir, is_file, exists = base_path.is_dir(), base_path.is_file(), base_path.exists()
    except (OSError, RuntimeError) as exc:  # a name too long, a symlink loop
        raise RecipeError(f"cannot read {parent!r}: {exc}", **where) from None
    if base_path in chain:
        cycle = " -> ".join(p.name for p in (*chain, base_path))
        raise RecipeError(f"recipe extends itself in a cycle: {cycle}", **where)
    if len(chain) > MAX_EXTENDS:
        raise RecipeError(f"more than {MAX_EXTENDS} recipes extend one another", **where)
    if is_dir:
        raise RecipeError(f"{parent!r} is a directory ({base_path}), not a recipe file",
                          **where)
    if not is_file:  # a FIFO or a device is read no more than a missing file
        what = "is not a regular file" if exists else "no such recipe file"
        raise RecipeError(f"{parent!r}: {what} ({base_path})", **where)
    return merge(load_raw(base_path, chain), data)


REPLACE = "__replace__"
"""In a table of a recipe that extends another: take this table as it is, merge nothing."""


def merge(base: Any, over: Any, key: str = "") -> Any:
    """Deep-merge ``over`` into ``base`` (see the module docstring for lists of tables);
    ``key`` is where ``over`` stands in the recipe, for messages."""
    if isinstance(over, Mapping) and REPLACE in over:
        return strip_replace(over, key)
    if isinstance(base, Mapping) and isinstance(over, Mapping):
        # copies throughout: the result shares nothing with either input
        out = {k: merge(v, over[k], _join(key, str(k))) if k in over else copy.deepcopy(v)
               for k, v in base.items()}
        out.update((k, copy.deepcopy(v)) for k, v in over.items() if k not in base)
        return out
    if _named_list(base) and _named_list(over):
        out_list = [copy.deepcopy(item) for item in base]
        names = [_entry_name(item) for item in base]
        merged: set[int] = set()  # each of the base's entries takes one entry of `over`
        for j, item in enumerate(over):
            i = _named_position(out_list, names, _entry_name(item), merged)
            if i is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[i] = merge(out_list[i], item, f"{key}[{j}]")
                merged.add(i)
        return out_list
    return copy.deepcopy(over)


def strip_replace(data: Any, key: str = "") -> Any:
    """``data`` without its ``__replace__`` markers (each must be ``true``)."""
    if isinstance(data, Mapping):
        marker = data.get(REPLACE, True)
        if marker is not True:
            raise RecipeError(f"got {marker!r}, expected true (the only value it takes)",
                              key=_join(key, REPLACE))
        return {k: strip_replace(v, _join(key, str(k))) for k, v in data.items() if k != REPLACE}
    if isinstance(data, list):
        return [strip_replace(v, f"{key}[{i}]") for i, v in enumerate(data)]
    return copy.deepcopy(data)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _entry_name(item: Mapping[str, Any]) -> Any:
    return item.get("name", item.get("use"))


def _named_position(entries: Sequence[Any], names: Sequence[Any], name: Any,
                    taken: Set[int] = frozenset()) -> int | None:
    """The position among the first ``len(names)`` of ``entries`` (``names``: their names) of
    the entry that ``name`` addresses, ``taken`` positions left out; None if no entry has it.
    A disabled entry may share its name with an enabled one: the name then means the enabled
    one, wherever the two stand; otherwise the first of that name."""
    found = [i for i, other in enumerate(names) if other == name and i not in taken]
    for i in found:
        entry = entries[i]
        if not (isinstance(entry, Mapping) and entry.get("enabled") is False):
            return i
    return found[0] if found else None


def _named_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, Mapping) and _entry_name(v) is not None for v in value)
    )


# -- overrides -------------------------------------------------------------------------------


_BRACKETED = re.compile(r"\[([^\[\]]*)\]")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=VALUE"`` -> (["a", "b", "c"], value); VALUE is read as TOML, else a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"override {text!r} is not of the form key.path=value")
    path = key.split(".")
    if not all(path):
        raise RecipeError(f"override {text!r}: the key path has an empty part", key=key)
    if any(_BRACKETED.search(part) for part in path):  # the Python or jq way of indexing
        dotted = _BRACKETED.sub(r".\1", key)
        raise RecipeError(f"list entries are addressed with a dot, by index or by name, not "
                          f"with brackets: write {dotted}", key=key)
    raw = raw.strip()
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return path, raw
    except RecursionError:
        raise RecipeError("the value nests arrays or tables too deeply", key=key) from None
    except ValueError:
        raise RecipeError(f"the value is {_LONG_INTEGER}", key=key) from None
    # "1\nother = 2" parses, but as more than one value: take the text as it is
    return path, parsed["v"] if parsed.keys() == {"v"} else raw


def apply_override(data: dict[str, Any], path: Sequence[str], value: Any) -> None:
    """Set ``value`` at ``path``; list entries are addressed by index or by name. A table
    replaces the one there whole, so ``__replace__ = true`` in it (as a recipe that extends
    another writes it) is taken and changes nothing."""
    if path and path[0] in ("extends", "source"):  # merged (or set) before any override
        raise RecipeError(f"{path[0]} cannot be set with an override; write a recipe file that "
                          "extends the other instead", key=path[0])
    value = strip_replace(value, ".".join(path))
    node: Any = data
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        where = ".".join(path[: depth + 1])
        if isinstance(node, list):
            i = _list_position(node, part, where)
            if last:
                node[i] = value
            else:
                node = node[i]
            continue
        if not isinstance(node, dict):
            raise RecipeError(
                f"cannot set a key inside {'.'.join(path[:depth])} = {node!r}, which is not a "
                "table", key=where)
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def _list_position(node: list[Any], part: str, where: str) -> int:
    sign, digits = (part[0], part[1:]) if part[:1] == "-" else ("", part)
    names = [_entry_name(x) if isinstance(x, Mapping) else None for x in node]
    if digits.isascii() and digits.isdigit():
        # 19 digits and more: past any list (and, past 4,300, past what int() reads)
        i = int(sign + digits) if len(digits.lstrip("0")) < 19 else None
        if i is not None and -len(node) <= i < len(node):
            if part in names and names[i] != part:
                raise RecipeError(
                    f"'{part}' is both an index and the name of entry {names.index(part)}; "
                    "rename the entry so that its name is not a number", key=where)
            return i % len(node)
        position = _named_position(node, names, part)
        if position is not None:
            return position
        raise RecipeError(f"index {sign}{digits} out of range (length {len(node)})", key=where)
    position = _named_position(node, names, part)
    if position is not None:
        return position
    known = [str(n) for n in names if n is not None]
    raise RecipeError(
        f"no entry named '{part}'{did_you_mean(part, known)}; "
        f"entries: {', '.join(known) or 'none (address them by index)'}",
        key=where,
    )


# -- typing and consistency ------------------------------------------------------------------


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read, extend, override and type-check a recipe file.

    Component parameters are checked later, by the plugin that owns each component (see
    :func:`kdcore.build.build_components`), because only it knows their types.
    """
    if not isinstance(path, str | os.PathLike):
        raise RecipeError(f"load_recipe takes a recipe file's path, not {shown(path)}")
    if isinstance(overrides, str | bytes):  # iterated, "run.seed=1" became the override "r"
        raise RecipeError(f"load_recipe's overrides take a list, such as ['run.seed=1'], not "
                          f"{shown(overrides)}")
    try:
        data = strip_replace(load_raw(path))
    except RecipeError as exc:
        raise exc.at(file=str(path)) from None
    for text in overrides:
        try:
            key_path, value = parse_override(text)
            apply_override(data, key_path, value)
        except RecipeError as exc:
            raise exc.at(file=str(path)) from None
    return recipe_from_dict(data, source=str(path))


def recipe_from_dict(data: Mapping[str, Any], source: str | None = None) -> Recipe:
    """Type-check plain recipe data (already extended and overridden)."""
    try:
        check_plain(data)
        if "source" in data:  # kdcore's record of the file a recipe came from, not a key
            raise RecipeError("'source' is not a recipe key", key="source")
        recipe = structure(Recipe, dict(data))
        recipe = attrs.evolve(recipe, source=source)
        check_consistency(recipe)
    except RecipeError as exc:
        raise exc.at(file=source) from None
    return recipe


def resolved_now(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved recipe saved by a run (its checkpoint's or ``recipe.toml``) as this version
    of kdcore resolves it, so that a key added since the run (``run.history_skip``), at its
    default, is no difference from a run of now; the recipe as saved where it no longer
    resolves (a comparison then names what changed)."""
    try:
        return recipe_from_dict(saved).to_dict()
    except (KdcoreError, ValueError, TypeError, KeyError):
        return dict(saved)
