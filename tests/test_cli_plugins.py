"""What ``kdcore plugins`` prints (kdcore/cli_plugins.py), line by line, for a plugin written
here: its origin, what it provides, its hooks, a failed plugin's reason, and with ``--verbose``
each component's kinds, description and parameters read from its ``Params`` docstring."""

from __future__ import annotations

from typing import Any, Literal, Optional

import attrs
import pytest

import kdcore
from kdcore import Component, hookimpl
from kdcore.cli_plugins import (
    component_description,
    component_params,
    details,
    param_docs,
    print_plugins,
)
from kdcore.plugins import PluginHost, PluginInfo

# -- docstrings -------------------------------------------------------------------------------


@pytest.mark.parametrize(("doc", "expected"), [
    (None, {}),
    ("", {}),
    ("One line.", {}),
    # every section title that holds parameters, in any case
    *(((f"X.\n\n{title}:\n    a: one.\n"), {"a": "one."})
      for title in ("Args", "Arguments", "attributes", "PARAMETERS", "Params")),
    # other sections end one and hold no parameters
    *(((f"X.\n\nArgs:\n    a: one.\n{title}:\n    b: two.\n"), {"a": "one."})
      for title in ("Returns", "Raises", "Yields", "Note", "Notes", "Example", "Examples",
                    "See also", "Warning", "Warnings")),
    # a line less indented than the section's entries ends it
    ("Args:\n    a: one\n  more: not an entry\n    b: two\n", {"a": "one"}),
    # a deeper line continues the entry; a blank line does not end the section
    ("Args:\n    a: one\n        two\n\n    b: three\n", {"a": "one two", "b": "three"}),
    # types in parentheses, several names, *args and **kwargs, an entry without text
    ("Args:\n    a (int, optional): x\n    b, c: y\n    *rest: z\n    **kw: w\n    d:\n",
     {"a": "x", "b": "y", "c": "y", "rest": "z", "kw": "w", "d": ""}),
    # tabs count as the indentation they expand to
    ("Args:\n\ta: one\n\t\tmore\n", {"a": "one more"}),
    # a continuation before any entry, and a line that is no entry, are skipped
    ("Args:\n    not an entry\n    a: one\n", {"a": "one"}),
    # the section's entries must start at its first line's indentation
    ("Args:\n    a: one\n      b: two\n", {"a": "one b: two"}),
    # a title in the middle of text is not a section
    ("Text mentioning Args: here.\n    a: one\n", {}),
    # what comes before the first section is no parameter, even in the entries' form
    ("Note: see below.\n\nArgs:\n    a: one.\n", {"a": "one."}),
    # a continuation line that reads as a section's name without its colon continues
    ("Args:\n    a: kept as\n        notes\n    b: two\n", {"a": "kept as notes", "b": "two"}),
    # text between two parameter sections ends the first, not the reading
    ("Args:\n    a: one\nText.\nAttributes:\n    b: two\n", {"a": "one", "b": "two"}),
    # names are kept whole, only the stars of *args and **kwargs dropped
    ("Args:\n    X_train: inputs\n", {"X_train": "inputs"}),
])
def test_param_docs_reads_the_parameter_sections_of_a_docstring(doc, expected):
    assert param_docs(doc) == expected


# -- a component's parameters -----------------------------------------------------------------


@attrs.define
class _Params:
    """The parameters.

    Attributes:
        rate: the share kept.
        names: which ones.
    """

    rate: float = 0.5
    names: list[str] = attrs.Factory(lambda: ["a"])
    scale: Any = attrs.Factory(lambda self: self.rate * 2, takes_self=True)
    mode: Literal["x"] = "x"
    needed: int = attrs.field(kw_only=True)


class _Comp(Component):
    """Keeps the small-loss samples.

    More text.
    """

    Params = _Params

    def select(self, ctx, batch):
        return None


def test_component_params_name_type_default_and_doc():
    assert component_params(_Comp) == [
        {"name": "rate", "type": "float", "default": "0.5", "doc": "the share kept."},
        {"name": "names", "type": "list[str]", "default": "['a']", "doc": "which ones."},
        {"name": "scale", "type": "Any", "default": "(computed)", "doc": ""},
        {"name": "mode", "type": "Literal['x']", "default": "'x'", "doc": ""},
        {"name": "needed", "type": "int", "default": "required", "doc": ""},
    ]

    @attrs.define
    class Untyped:
        value = attrs.field(default=None)

    class Old(Component):
        Params = Untyped

    assert component_params(Old) == [{"name": "value", "type": "?", "default": "None",
                                      "doc": ""}]


@pytest.mark.parametrize(("tp", "shown"), [
    (int, "int"), (list[int], "list[int]"), (Optional[int], "Optional[int]"),  # noqa: UP045
    (int | None, "int | None"), (Any, "Any"), (Literal["x"], "Literal['x']")])
def test_a_type_given_as_an_object_is_shown_in_full(tp, shown):
    """A plugin module without ``from __future__ import annotations``: types, not text."""
    params = attrs.make_class("P", {"x": attrs.field(type=tp, default=None)})
    comp = type("C", (Component,), {"Params": params})
    assert component_params(comp)[0]["type"] == shown


def test_a_component_without_attrs_params_has_none():
    class Plain(Component):
        Params = dict

    class Bare(Component):
        Params = None

    assert component_params(Plain) == [] and component_params(Bare) == []
    assert component_params(type("NotAComponent", (), {})) == []


def test_the_description_is_the_attribute_or_the_docstrings_first_line():
    assert component_description(_Comp) == "Keeps the small-loss samples."

    class Described(_Comp):
        """Not this."""

        description = "This one."

    class Undocumented(Component):
        pass

    Undocumented.__doc__ = None
    assert component_description(Described) == "This one."
    assert component_description(Undocumented) == ""
    # any class: one without the attribute falls back to its docstring
    assert component_description(type("Other", (), {"__doc__": "Its doc.\n\nMore."})) == \
        "Its doc."


# -- the listing ------------------------------------------------------------------------------


class _Plugin:
    @hookimpl
    def kdcore_add_components(self):
        return {"keep_small": _Comp, "quiet": _Quiet, "both": _Both}

    @hookimpl
    def kdcore_add_noise_models(self):
        return {"flip_all": lambda ctx: ctx.labels, "flip_none": lambda ctx: ctx.labels}

    @hookimpl
    def kdcore_epoch_end(self, ctx, epoch, metrics):
        pass


class _Quiet(Component):
    """Does nothing per batch."""


class _Both(Component):
    """Selects and weights."""

    def select(self, ctx, batch):
        return None

    def weight(self, ctx, batch):
        return None


class _Augmenting:
    @hookimpl
    def kdcore_add_augmentations(self):
        return {"nothing": lambda x, generator: x}


def _listing(capsys, verbose):
    host = PluginHost(extra=[_Plugin(), _Augmenting()], entry_points=False)
    failed = PluginInfo("failed", "some-dist", "1.2", error="ImportError: nope")
    host.infos = {"failed": failed, "_Plugin-0": host.infos["_Plugin-0"],
                  "_Augmenting-1": host.infos["_Augmenting-1"]}
    print_plugins(host, verbose)
    return capsys.readouterr().out.splitlines()


def test_the_listing_shows_origin_provisions_and_hooks(capsys):
    assert _listing(capsys, False) == [
        "failed  (some-dist 1.2)",
        "  FAILED: ImportError: nope",
        "_Plugin-0  (in-process)",
        "  components: both [select+weight], keep_small [select], quiet [lifecycle]",
        "  noise_models: flip_all, flip_none",
        "  hooks: kdcore_add_components, kdcore_add_noise_models, kdcore_epoch_end",
        "_Augmenting-1  (in-process)",
        "  augmentations: nothing",
        "  hooks: kdcore_add_augmentations",
    ]


def test_the_verbose_listing_adds_each_components_parameters(capsys):
    lines = _listing(capsys, True)
    assert lines[:6] == _listing(capsys, False)[:6]
    assert lines[6:] == [
        "  component both [select+weight]: Selects and weights.",
        "    (no parameters)",
        "  component keep_small [select]: Keeps the small-loss samples.",
        "    rate: float = 0.5  the share kept.",
        "    names: list[str] = ['a']  which ones.",
        "    scale: Any = (computed)",
        "    mode: Literal['x'] = 'x'",
        "    needed: int = required",
        "  component quiet [lifecycle]: Does nothing per batch.",
        "    (no parameters)",
        "_Augmenting-1  (in-process)",
        "  augmentations: nothing",
        "  hooks: kdcore_add_augmentations",
    ]


def test_details_are_the_json_listings_data():
    host = PluginHost(extra=[_Plugin()], entry_points=False)
    (keep, quiet) = details(host, ["keep_small", "quiet"])
    assert keep["name"] == "keep_small" and keep["kinds"] == ["select"]
    assert keep["description"] == "Keeps the small-loss samples."
    assert keep["params"][0] == {"name": "rate", "type": "float", "default": "0.5",
                                 "doc": "the share kept."}
    assert quiet == {"name": "quiet", "kinds": [], "description": "Does nothing per batch.",
                     "params": [], "learns_from": []}


def test_a_component_that_learns_from_models_says_which_parameters_name_them(capsys):
    host = PluginHost(entry_points=False)
    assert details(host, ["hinton_kd"])[0]["learns_from"] == ["teacher"]
    print_plugins(host, verbose=True)
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  component hinton_kd "))
    assert lines[at + 1] == "    learns from the models in: params.teacher"
    ce = next(i for i, line in enumerate(lines) if line.startswith("  component ce "))
    assert "learns from" not in lines[ce + 1]

    class TwoTeachers(kdcore.Component):
        learns_from = ("first", "second")

    class Plugin:
        @kdcore.hookimpl
        def kdcore_add_components(self):
            return {"two": TwoTeachers}

    print_plugins(PluginHost(extra=[Plugin()], entry_points=False), verbose=True)
    assert "  component two [lifecycle]: \n    learns from the models in: params.first, " \
           "params.second\n" in capsys.readouterr().out
