"""Writing resolved recipes back as TOML (the run directory's ``recipe.toml``, ``kdcore check``).

What is written must read back to the same data: ``--resume`` restarts from it. So strings
escape every control character, bare keys are ASCII only (TOML's rule, not ``str.isalnum``'s),
and TOML's own date and time values are written in their ISO form.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# characters a TOML basic string may not hold literally (tab is allowed)
_CONTROL = re.compile(r'[\x00-\x08\x0a-\x1f\x7f"\\]')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\b": "\\b", "\f": "\\f"}


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Write plain data as TOML (enough for resolved recipes: tables, arrays of tables)."""
    lines: list[str] = []
    _emit_table(lines, [], data)
    return "\n".join(lines).strip() + "\n"


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    def escape(m: re.Match[str]) -> str:
        c = m.group()
        return _ESCAPES.get(c, f"\\u{ord(c):04x}")

    return f'"{_CONTROL.sub(escape, text)}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # nan and inf are TOML's spelling too
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _emit_table(lines: list[str], prefix: list[str], table: Mapping[str, Any]) -> None:
    plain = {k: v for k, v in table.items()
             if not (isinstance(v, Mapping) and v) and not _is_table_list(v)}
    for key, value in plain.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in table.items():
        if key in plain:
            continue
        path = [*prefix, _toml_key(key)]
        if _is_table_list(value):
            for item in value:
                lines.extend(["", f"[[{'.'.join(path)}]]"])
                _emit_table(lines, path, item)
        else:
            lines.extend(["", f"[{'.'.join(path)}]"])
            _emit_table(lines, path, value)
