"""Every hook is documented: when it is called, its arguments and its return."""

from __future__ import annotations

import inspect

import pytest

from kdcore import hookspecs
from kdcore.component import COMPONENT_HOOKS, Component

PLUGIN_HOOKS = [
    name for name, fn in vars(hookspecs).items()
    if name.startswith("kdcore_") and callable(fn)
]


def test_plugin_hooks_exist():
    assert {"kdcore_add_components", "kdcore_epoch_end", "kdcore_checkpoint_state"} <= set(
        PLUGIN_HOOKS)


@pytest.mark.parametrize("name", PLUGIN_HOOKS)
def test_plugin_hook_is_documented(name):
    fn = getattr(hookspecs, name)
    doc = inspect.getdoc(fn) or ""
    assert len(doc.split()) >= 8, f"{name} has no real docstring"
    for arg in inspect.signature(fn).parameters:
        assert arg in doc, f"{name}: argument '{arg}' is not documented"
    returns = inspect.signature(fn).return_annotation
    if returns not in ("None", None):
        assert "Returns" in doc or "return" in doc.lower(), f"{name}: return not documented"


@pytest.mark.parametrize("name", COMPONENT_HOOKS)
def test_component_hook_contract_is_stated(name):
    """Each component hook's contract lives in hookspecs.ComponentHooks (pytest's style: one
    module states every hook), with the base class's exact signature."""
    spec = getattr(hookspecs.ComponentHooks, name)
    doc = inspect.getdoc(spec) or ""
    assert len(doc.split()) >= 12, f"ComponentHooks.{name} states no real contract"
    params = list(inspect.signature(spec).parameters)
    assert params == list(inspect.signature(getattr(Component, name)).parameters)
    for arg in params[1:]:
        assert arg in doc, f"ComponentHooks.{name}: argument '{arg}' is not documented"


def test_every_hookspec_is_registered_with_pluggy():
    from kdcore.plugins import PluginHost

    host = PluginHost(entry_points=False)
    for name in PLUGIN_HOOKS:
        assert hasattr(host.hook, name)


def test_kinds_are_derived_from_overridden_hooks():
    class Both(Component):
        def select(self, ctx, batch):
            return None

        def transfer(self, ctx, batch):
            return None

    assert Both.kinds() == ("select", "transfer")
    assert Component.kinds() == ()
