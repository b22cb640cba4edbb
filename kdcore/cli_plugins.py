"""What ``kdcore plugins`` prints: every plugin, what it provides, and with ``--verbose`` each
component's description and parameters (name, type, default, the one-line doc of the Params
class docstring's ``Args:`` / ``Attributes:`` section)."""

from __future__ import annotations

import re
from typing import Any

import attrs
import click

_SECTIONS = {"args", "arguments", "attributes", "parameters", "params"}
_OTHER_SECTIONS = {"returns", "raises", "yields", "note", "notes", "example", "examples",
                   "see also", "warning", "warnings"}
_ENTRY = re.compile(r"^(\*{0,2}\w+(?:\s*,\s*\w+)*)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def param_docs(doc: str | None) -> dict[str, str]:
    """``name -> one-line doc`` from a Google-style docstring's ``Args:`` and ``Attributes:``
    sections (continuation lines joined)."""
    out: dict[str, str] = {}
    lines = (doc or "").expandtabs().splitlines()
    in_section, indent = False, None
    current: list[str] | None = None
    for line in lines:
        text = line.strip()
        here = len(line) - len(line.lstrip())
        header = text.rstrip(":").lower() if text.endswith(":") else None
        if header in _SECTIONS or header in _OTHER_SECTIONS:
            in_section, indent, current = header in _SECTIONS, None, None
            continue
        if not in_section or not text:
            continue
        if indent is None:
            indent = here
        if here < indent:
            in_section, current = False, None
            continue
        match = _ENTRY.match(text) if here == indent else None
        if match:  # "name: doc", "name (type): doc", or "a, b: doc" for several
            current = [n.strip().lstrip("*") for n in match.group(1).split(",")]
            for n in current:
                out[n] = match.group(2).strip()
        elif current is not None:
            for n in current:
                out[n] = f"{out[n]} {text}".strip()
    return out


def _type_name(tp: Any) -> str:
    """A parameter's type as written: the annotation's text (``from __future__ import
    annotations``), a class's name, or a generic in full (``list[int]``, not ``list``)."""
    if tp is None:
        return "?"
    if isinstance(tp, str):
        return tp
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _default(field: Any) -> str:
    default = field.default
    if default is attrs.NOTHING:
        return "required"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return "(computed)" if default.takes_self else repr(default.factory())
    return repr(default)


def component_params(cls: type) -> list[dict[str, str]]:
    """Each parameter of a component class: ``name``, ``type``, ``default``, ``doc``."""
    params = getattr(cls, "Params", None)
    if params is None or not attrs.has(params):
        return []
    docs = param_docs(params.__doc__)
    return [{"name": f.name, "type": _type_name(f.type), "default": _default(f),
             "doc": docs.get(f.name, "")} for f in attrs.fields(params)]


def component_description(cls: type) -> str:
    text = getattr(cls, "description", "") or ""
    if not text and cls.__doc__:
        text = cls.__doc__.strip().splitlines()[0]
    return text


def details(host: Any, names: list[str]) -> list[dict[str, Any]]:
    """``--verbose`` data for the components ``names``."""
    out = []
    for name in names:
        cls = host.components.get(name)
        out.append({"name": name, "kinds": list(cls.kinds()),
                    "description": component_description(cls),
                    "params": component_params(cls), "learns_from": list(cls.learns_from)})
    return out


def print_plugins(host: Any, verbose: bool) -> None:
    for info in host.infos.values():
        origin = " ".join(filter(None, (info.distribution, info.version)))
        click.echo(f"{info.name}  ({origin})")
        if info.error:
            click.echo(f"  FAILED: {info.error}")
            continue
        for kind, names in sorted(info.provides.items()):
            if kind == "components":
                parts = [f"{n} [{'+'.join(host.components.get(n).kinds()) or 'lifecycle'}]"
                         for n in names]
            else:
                parts = list(names)
            click.echo(f"  {kind}: {', '.join(parts)}")
        click.echo(f"  hooks: {', '.join(info.hooks)}")
        if not verbose:
            continue
        for comp in details(host, info.provides.get("components", [])):
            kinds = "+".join(comp["kinds"]) or "lifecycle"
            click.echo(f"  component {comp['name']} [{kinds}]: {comp['description']}")
            if comp["learns_from"]:  # the plan refuses an entry serving one of these models
                click.echo(f"    learns from the models in: "
                           f"{', '.join('params.' + n for n in comp['learns_from'])}")
            if not comp["params"]:
                click.echo("    (no parameters)")
            for p in comp["params"]:
                doc = f"  {p['doc']}" if p["doc"] else ""
                click.echo(f"    {p['name']}: {p['type']} = {p['default']}{doc}")
