"""``--plugin`` objects that are not plugins, and plugins that cannot register: one line under
``--strict-plugins``, listed as failed without it."""

from __future__ import annotations

import dataclasses

import attrs
import pytest
from click.testing import CliRunner

from kdcore.cli import main
from tests.cli_helpers import one_line_error


def test_a_plugin_that_cannot_register_is_one_line_under_strict_plugins():
    result = CliRunner().invoke(main, ["plugins", "--plugin", "kdcore_almkd",
                                       "--strict-plugins"], catch_exceptions=False)
    line = one_line_error(result, "failed to register")
    assert line.startswith("kdcore: error: plugin 'kdcore_almkd' (in-process): "), line


@pytest.mark.parametrize("plugin", ["builtins:None", "os", "sys:modules"])
def test_an_object_that_implements_no_hook_is_not_a_plugin(plugin):
    one_line_error(CliRunner().invoke(main, ["plugins", "--plugin", plugin, "--strict-plugins"],
                                      catch_exceptions=False), "implements no kdcore hook")
    result = CliRunner().invoke(main, ["plugins", "--plugin", plugin], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "(in-process)\n  FAILED: implements no kdcore hook" in result.output
    # the warning is kdcore's one line, not loguru's default record (level, module, line)
    (warning,) = [line for line in result.output.splitlines() if "skipped" in line]
    assert warning.endswith("(in-process) skipped: implements no kdcore hook (a "
                            "@kdcore.hookimpl function or method named kdcore_*)")
    assert "WARNING" not in warning and "kdcore.plugins:" not in warning


# -- what a plugin's hooks return -----------------------------------------------------------------


class _Configure:
    """``kdcore_configure`` returning ``found`` (or raising it, an exception)."""

    def __init__(self, found):
        self.found = found

    from kdcore import hookimpl

    @hookimpl
    def kdcore_configure(self, recipe):
        if isinstance(self.found, Exception):
            raise self.found
        return self.found


def _check_with(plugin, *flags):
    from pathlib import Path

    from kdcore.plugins import PluginHost

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "ce.toml"
    host = PluginHost(extra=[plugin], strict="--strict-plugins" in flags)
    return host, recipe


@pytest.mark.parametrize(("found", "said"), [
    ("lr too high", "returned str 'lr too high', not a list of messages"),
    ([1, 2], "returned list [1, 2], not a list of messages"),
    ({"lr": "too high"}, "returned dict {'lr': 'too high'}, not a list of messages"),
    (ValueError("oops"), "raised ValueError('oops')"),
])
def test_a_configure_hook_that_fails_or_returns_no_list_of_messages_is_named_and_skipped(
        found, said, warnings):
    """A string was read letter by letter ('ce.toml: l', exit 2), integers were messages, and
    an exception stopped every recipe with exit 1, whatever plugins it used."""
    import kdcore
    from kdcore.plan import build_plan

    host, path = _check_with(_Configure(found))
    build_plan(kdcore.load_recipe(path), host)  # the recipe is sound: the plugin is skipped
    (line,) = [m for m in warnings if "kdcore_configure" in m]
    assert line == (f"plugin '_Configure-0' (in-process): kdcore_configure {said}; the plugin "
                    "is disabled for the rest of this run")
    strict = kdcore.plugins.PluginHost(extra=[_Configure(found)], strict=True)
    with pytest.raises(kdcore.KdcoreError) as err:
        build_plan(kdcore.load_recipe(path), strict)
    assert str(err.value) == f"plugin '_Configure-0' (in-process): kdcore_configure {said}"


def test_a_configure_hooks_messages_refuse_the_recipe_in_order():
    import kdcore
    from kdcore.plan import build_plan

    host, path = _check_with(_Configure(("lr too high", "and the seed is odd")))
    with pytest.raises(kdcore.RecipeError) as err:
        build_plan(kdcore.load_recipe(path), host)
    assert str(err.value) == f"{path}: lr too high"
    host, path = _check_with(_Configure(None))
    build_plan(kdcore.load_recipe(path), host)


def _registering(hook, entries):
    """A plugin object whose only hook is the registry ``hook``, returning ``entries``."""
    from kdcore import hookimpl

    plugin = type("Registers", (), {hook: hookimpl(lambda self: entries)})
    return plugin()


def _nothing(*args, **kwargs):
    return None


@dataclasses.dataclass
class _DataclassParams:
    size: int = 3


@attrs.frozen
class _UnreadableParams:
    size: NotAName = 3  # noqa: F821 - the point: a name that is not importable


def _with_params(params):
    import kdcore

    return type("WithParams", (kdcore.Component,), {"Params": params})


@pytest.mark.parametrize(("hook", "entries", "said"), [
    ("kdcore_add_components", {"good": None, "weird": _nothing},
     "gave 'weird': function _nothing, not a kdcore.Component subclass"),
    ("kdcore_add_components", {"weird": int}, "gave 'weird': type int, not a kdcore.Component "
                                               "subclass"),
    # a recipe's params failed where a recipe used them: NotAnAttrsClassError, NameError,
    # TypeError, each "the set-up stopped" blamed on no plugin
    ("kdcore_add_components", {"good": None, "dc": _with_params(_DataclassParams)},
     "gave 'dc', whose Params is type _DataclassParams, not an attrs class (declare it with "
     "@attrs.frozen, as docs/plugins.md shows)"),
    ("kdcore_add_components", {"n": _with_params(5)},
     "gave 'n', whose Params is int 5, not an attrs class (declare it with @attrs.frozen, as "
     "docs/plugins.md shows)"),
    ("kdcore_add_components", {"u": _with_params(_UnreadableParams)},
     "gave 'u', whose Params has annotations that cannot be read (NameError: name 'NotAName' "
     "is not defined)"),
    ("kdcore_add_models", {"good": _nothing, 5: _nothing},
     "gave the name int 5; a name is a non-empty string"),
    ("kdcore_add_datasets", {"": _nothing}, "gave the name str ''; a name is a non-empty string"),
    ("kdcore_add_noise_models", {"good": _nothing, "x": 5},
     "gave 'x': int 5, not a function"),
    ("kdcore_add_augmentations", ["crop"], "returned list ['crop'], not a mapping of names"),
    ("kdcore_add_loggers", "tensorboard", "returned str 'tensorboard', not a mapping of names"),
])
def test_a_registry_hook_that_gives_what_no_recipe_can_use_skips_the_plugin(
        hook, entries, said, warnings):
    """A function given as a component failed where a recipe used it ('function' object has
    no attribute 'Params', exit 1); a number as a noise model, or a name that is not a
    string, was registered and listed. None of the plugin's entries is registered."""
    import kdcore
    from kdcore.plugins import REGISTRY_HOOKS, PluginHost

    class Good(kdcore.Component):
        pass

    entries = ({k: (Good if v is None else v) for k, v in entries.items()}
               if isinstance(entries, dict) else entries)
    host = PluginHost(extra=[_registering(hook, entries)])
    (line,) = [m for m in warnings if "skipped" in m]
    assert line == f"plugin 'Registers-0' (in-process) skipped: {hook} {said}"
    registry = getattr(host, {v: k for k, v in REGISTRY_HOOKS.items()}[hook])
    assert "good" not in registry.names()
    with pytest.raises(kdcore.KdcoreError) as err:
        PluginHost(extra=[_registering(hook, entries)], strict=True)
    assert str(err.value) == f"plugin 'Registers-0' (in-process): {hook} {said}"
