"""The plugin host and its registries: what a plugin author meets when a name clashes, a hook
fails or an entry point cannot be imported, and the order in which observers are called."""

from __future__ import annotations

import sys
import types
from importlib import metadata

import pytest

import kdcore
from kdcore import KdcoreError, PluginHost, hookimpl
from kdcore import plugins as plugins_mod
from kdcore.plugins import IN_PROCESS, ObserverBus, active_host, import_object
from kdcore.registry import Registry

# -- the registry -----------------------------------------------------------------------------


def test_a_registry_keeps_each_entry_and_its_provider():
    reg: Registry[int] = Registry("dataset")
    reg.register("b", 2, provider="plug-b")
    reg.register("a", 1)
    assert reg.get("a") == 1 and reg.get("b") == 2
    assert reg.provider("b") == "plug-b" and reg.provider("a") == "?"
    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"]  # sorted, not in order added
    assert len(reg) == 2 and "a" in reg and "c" not in reg and reg.kind == "dataset"


def test_a_name_two_plugins_claim_is_one_line_naming_both():
    reg: Registry[int] = Registry("component")
    reg.register("lp", 1, provider="kdcore-lp")
    with pytest.raises(KdcoreError) as err:
        reg.register("lp", 2, provider="my-lp")
    assert str(err.value) == ("component 'lp' is provided by both 'kdcore-lp' and 'my-lp'; "
                              "uninstall one of them")
    assert reg.get("lp") == 1 and reg.provider("lp") == "kdcore-lp"  # the first one kept


def test_an_unknown_name_suggests_the_closest_and_lists_the_known():
    reg: Registry[int] = Registry("noise model")
    with pytest.raises(KdcoreError) as err:
        reg.get("symmetric")
    assert str(err.value) == "unknown noise model 'symmetric'; known: none"
    for name in ("symmetric", "pairflip", "asymmetric"):
        reg.register(name, 0)
    with pytest.raises(KdcoreError) as err:
        reg.get("symetric")
    assert str(err.value) == ("unknown noise model 'symetric' (did you mean 'symmetric'?); "
                              "known: asymmetric, pairflip, symmetric")


def test_a_name_from_another_codebase_gets_its_hint_not_the_closest_spelling():
    reg: Registry[int] = Registry("noise model", hints={"asym": "class_map or pair_flip"})
    reg.register("symmetric", 0)
    with pytest.raises(KdcoreError) as err:
        reg.get("asym")
    assert str(err.value) == ("unknown noise model 'asym' (use class_map or pair_flip); "
                              "known: symmetric")
    with pytest.raises(KdcoreError) as err:
        reg.get("symetric")  # a misspelling still gets the closest name
    assert "(did you mean 'symmetric'?)" in str(err.value)


def test_the_hosts_noise_models_hint_at_the_models_other_codebases_name_otherwise():
    from kdcore.data.noise import NOISE_HINTS

    host = PluginHost(entry_points=False)
    for name, hint in NOISE_HINTS.items():
        assert name not in host.noise_models
        used = hint.split(",")[0].split(" ")[0]
        assert used in host.noise_models, (name, hint)  # the hint names a model that exists
    with pytest.raises(KdcoreError, match=r"'asymmetric' \(use class_map, .* or pair_flip, "):
        host.noise_models.get("asymmetric")


# -- the host: in-process plugins -------------------------------------------------------------


def z_loader():
    """A dataset loader (never called here)."""


def a_loader():
    """A dataset loader (never called here)."""


class Datasets:
    @hookimpl
    def kdcore_add_datasets(self):
        return {"zeta": z_loader, "alpha": a_loader}


class NoEntries:
    @hookimpl
    def kdcore_add_components(self):
        return None


class Raises:
    @hookimpl
    def kdcore_add_augmentations(self):
        raise ValueError("bad table")


class Clashes:
    @hookimpl
    def kdcore_add_components(self):
        return {"ce": kdcore.Component}


class WrongArgs:
    @hookimpl
    def kdcore_epoch_end(self, ctx, epoch, metrics, extra_argument):
        pass


def test_an_in_process_plugin_provides_its_entries_and_is_listed_as_in_process():
    host = PluginHost(entry_points=False, extra=[Datasets(), NoEntries()])
    assert host.datasets.get("alpha") is a_loader
    assert host.datasets.provider("zeta") == "Datasets-0"  # its class and place in `extra`
    info = host.infos["Datasets-0"]
    assert (info.name, info.distribution, info.version, info.error) == (
        "Datasets-0", IN_PROCESS, "", None)
    assert info.provides == {"datasets": ["alpha", "zeta"]} and info.hooks == [
        "kdcore_add_datasets"]
    assert host.infos["NoEntries-1"].provides == {}  # a hook that returns None provides none
    assert host.name_of(host.pm.get_plugin("Datasets-0")) == "Datasets-0"
    assert host.name_of(object()) == "?"
    # kdcore's own baselines, registered as a plugin of distribution kdcore
    assert host.infos["builtin"].distribution == "kdcore"
    assert "ce" in host.components and host.components.provider("ce") == "builtin"
    assert host.hook is host.pm.hook


def test_each_registry_names_its_kind_as_messages_say_it():
    host = PluginHost(entry_points=False)
    kinds = {attr: getattr(host, attr).kind for attr in plugins_mod.REGISTRY_HOOKS}
    assert kinds == {"components": "component", "datasets": "dataset",
                     "noise_models": "noise model", "models": "architecture",
                     "augmentations": "augmentation", "loggers": "logger"}
    assert host.strict is False and PluginHost(entry_points=False, strict=True).strict is True
    with pytest.raises(KdcoreError, match="^unknown architecture 'mlpp' \\(did you mean 'mlp'"):
        host.models.get("mlpp")


def test_a_module_plugin_is_named_by_its_module():
    module = types.ModuleType("my_plugin_module")
    module.kdcore_add_datasets = hookimpl(lambda: {"mine": a_loader})
    host = PluginHost(entry_points=False, extra=[module])
    assert host.datasets.provider("mine") == "my_plugin_module"
    assert host.infos["my_plugin_module"].provides == {"datasets": ["mine"]}


def test_a_registry_hook_that_raises_skips_its_plugin_with_one_warning(warnings):
    host = PluginHost(entry_points=False, extra=[Raises(), Datasets()])
    assert warnings == ["plugin 'Raises-0' (in-process) skipped: kdcore_add_augmentations "
                        "failed: ValueError('bad table')"]
    assert host.infos["Raises-0"].error == ("kdcore_add_augmentations failed: "
                                            "ValueError('bad table')")
    assert "alpha" in host.datasets  # the other plugin loaded
    with pytest.raises(KdcoreError) as err:
        PluginHost(entry_points=False, extra=[Raises()], strict=True)
    assert str(err.value) == ("plugin 'Raises-0' (in-process): kdcore_add_augmentations "
                              "failed: ValueError('bad table')")


def test_a_name_clash_between_plugins_is_an_error_even_without_strict():
    with pytest.raises(KdcoreError) as err:
        PluginHost(entry_points=False, extra=[Clashes()])
    assert str(err.value) == ("component 'ce' is provided by both 'builtin' and 'Clashes-0'; "
                              "uninstall one of them")


def test_a_plugin_pluggy_refuses_is_skipped_with_the_first_line_of_why(warnings):
    host = PluginHost(entry_points=False, extra=[WrongArgs(), Datasets()])
    (warning,) = warnings
    assert warning.startswith("plugin 'WrongArgs-0' (in-process) skipped: failed to register: ")
    assert "\n" not in warning and "kdcore_epoch_end" in warning
    assert host.infos["WrongArgs-0"].error.startswith("failed to register: ")
    assert host.infos["WrongArgs-0"].hooks == []
    assert host.pm.get_plugin("WrongArgs-0") is None and "alpha" in host.datasets


def test_an_object_with_no_hook_is_unregistered_and_named():
    host = PluginHost(entry_points=False, extra=[object()])
    assert host.pm.get_plugin("object-0") is None
    assert host.infos["object-0"].error.startswith("implements no kdcore hook")


class Misspelt:
    """A plugin whose hooks kdcore does not define: pluggy kept it and never called them."""

    @hookimpl
    def kdcore_add_component(self):
        return {"mine": kdcore.Component}

    @hookimpl
    def kdcore_epoch_ends(self, ctx, epoch, metrics):
        pass

    @hookimpl
    def kdcore_add_datasets(self):
        return {"mine": lambda: None}


class Later:
    """A hook of a later kdcore, marked optional, beside one of this kdcore."""

    @hookimpl(optionalhook=True)
    def kdcore_of_the_future(self):
        pass

    @hookimpl
    def kdcore_add_datasets(self):
        return {"later": lambda: None}


def test_a_plugin_with_a_hook_kdcore_does_not_define_is_skipped_naming_the_closest(warnings):
    host = PluginHost(entry_points=False, extra=[Misspelt(), Later()])
    message = ("implements 'kdcore_add_component' (did you mean 'kdcore_add_components'?), "
               "'kdcore_epoch_ends' (did you mean 'kdcore_epoch_end'?), which kdcore does not "
               "define (kdcore/hookspecs.py lists its hooks; mark one of a later kdcore "
               "@kdcore.hookimpl(optionalhook=True))")
    assert warnings == [f"plugin 'Misspelt-0' (in-process) skipped: {message}"]
    assert host.infos["Misspelt-0"].error == message
    assert host.pm.get_plugin("Misspelt-0") is None and "mine" not in host.datasets
    assert "later" in host.datasets and host.infos["Later-1"].error is None
    assert "kdcore_of_the_future" in host.infos["Later-1"].hooks
    with pytest.raises(KdcoreError) as err:
        PluginHost(entry_points=False, extra=[Misspelt()], strict=True)
    assert str(err.value) == f"plugin 'Misspelt-0' (in-process): {message}"
    assert plugins_mod._unknown_hooks(["zzz_qqq"]) == (
        "implements 'zzz_qqq', which kdcore does not define (kdcore/hookspecs.py lists its "
        "hooks; mark one of a later kdcore @kdcore.hookimpl(optionalhook=True))")


def test_versions_name_each_loaded_distribution_but_not_in_process_or_failed_ones():
    host = PluginHost(entry_points=False, extra=[Datasets(), Raises()])
    host.infos["fake"] = plugins_mod.PluginInfo("fake", "kdcore-fake", "1.2")
    host.infos["broken"] = plugins_mod.PluginInfo("broken", "kdcore-broken", "3", error="x")
    versions = host.versions()
    assert versions["kdcore-fake"] == "1.2"
    assert set(versions) == {"kdcore", "kdcore-fake"}  # builtin's distribution is kdcore
    assert versions["kdcore"] == plugins_mod._version("kdcore")
    assert plugins_mod._version("no-such-distribution-kdcore") == "unknown"


# -- the host: entry points -------------------------------------------------------------------


class FakeDist:
    def __init__(self, name: str, version: str):
        self.name, self.version = name, version


class FakeEntryPoint:
    def __init__(self, name: str, value: str, load, dist: FakeDist | None):
        self.name, self.value, self._load, self.dist = name, value, load, dist

    def load(self):
        return self._load()


def _recorded(log: list[str], name: str, make):
    """An entry point's ``load`` that notes its name in ``log`` and returns ``make()``."""
    def load():
        log.append(name)
        return make()
    return load


def _fail_import():
    raise ImportError("no module named 'torch_extra'")


def _entry_points(monkeypatch, eps):
    groups: list[str] = []

    def entry_points(*, group):
        groups.append(group)
        return eps
    monkeypatch.setattr(metadata, "entry_points", entry_points)
    return groups


def test_entry_points_load_in_name_order_and_a_failing_import_is_one_warning(monkeypatch,
                                                                             warnings):
    order: list[str] = []
    groups = _entry_points(monkeypatch, [
        FakeEntryPoint("ab-broken", "kdcore_c:plugin", _fail_import,
                       FakeDist("kdcore-c", "0.3")),
        FakeEntryPoint("b-data", "kdcore_b", _recorded(order, "b-data", Datasets),
                       FakeDist("kdcore-b", "2.0")),
        FakeEntryPoint("a-none", "kdcore_a", _recorded(order, "a-none", NoEntries), None),
    ])
    host = PluginHost()
    assert groups == ["kdcore"]
    assert order == ["a-none", "b-data"]
    assert host.infos["a-none"].distribution == "?" and host.infos["a-none"].version == "?"
    assert host.infos["b-data"].distribution == "kdcore-b"
    assert host.datasets.provider("alpha") == "b-data"
    assert warnings == ["plugin 'ab-broken' (kdcore-c 0.3) skipped: failed to import "
                        "kdcore_c:plugin: ImportError(\"no module named 'torch_extra'\")"]
    assert host.versions()["kdcore-b"] == "2.0"
    # the source tree's baselines are registered when no entry point named builtin is
    assert host.infos["builtin"].distribution == "kdcore"
    with pytest.raises(KdcoreError) as err:
        PluginHost(strict=True)
    info = host.infos["ab-broken"]
    assert (info.name, info.distribution, info.version, info.hooks) == (
        "ab-broken", "kdcore-c", "0.3", [])
    assert str(err.value) == ("plugin 'ab-broken' (kdcore-c): failed to import "
                              "kdcore_c:plugin: ImportError(\"no module named 'torch_extra'\")")


def test_the_first_entry_point_of_a_name_wins(monkeypatch):
    loaded: list[str] = []
    _entry_points(monkeypatch, [
        FakeEntryPoint("same", "one", _recorded(loaded, "one", Datasets), FakeDist("d1", "1")),
        FakeEntryPoint("same", "two", _recorded(loaded, "two", NoEntries), FakeDist("d2", "2")),
        FakeEntryPoint("then", "three", _recorded(loaded, "three", NoEntries),
                       FakeDist("d3", "3")),
    ])
    host = PluginHost()
    assert loaded == ["one", "three"] and host.infos["same"].distribution == "d1"


def test_an_installed_builtin_entry_point_is_not_registered_twice(monkeypatch):
    from kdcore import builtin

    _entry_points(monkeypatch, [
        FakeEntryPoint("builtin", "kdcore.builtin", lambda: builtin, FakeDist("kdcore", "9"))])
    host = PluginHost()
    assert host.infos["builtin"].version == "9"  # the entry point's, not the source tree's
    assert host.components.provider("ce") == "builtin"


# -- the active host --------------------------------------------------------------------------


def test_the_active_host_is_the_runs_inside_activate_and_the_installed_one_outside():
    host = PluginHost(entry_points=False)
    outside = active_host()
    assert isinstance(outside, PluginHost) and "ce" in outside.components
    assert outside is not host and outside is active_host()  # built once per process
    with host.activate() as same:
        assert same is host and active_host() is host
        inner = PluginHost(entry_points=False)
        with inner.activate():
            assert active_host() is inner
        assert active_host() is host
    assert active_host() is outside
    with pytest.raises(RuntimeError), host.activate():
        raise RuntimeError("a failing run still gives the host back")
    assert active_host() is outside


# -- import_object ----------------------------------------------------------------------------


def test_import_object_reads_module_and_attribute():
    assert import_object("kdcore.plugins:IN_PROCESS") == IN_PROCESS
    assert import_object("kdcore.registry") is sys.modules["kdcore.registry"]


@pytest.mark.parametrize(("path", "line"), [
    ("no_such_module_kdcore", "cannot import plugin 'no_such_module_kdcore': No module named "
                              "'no_such_module_kdcore'"),
    ("kdcore.plugins:nothing", "cannot import plugin 'kdcore.plugins:nothing': module "
                               "'kdcore.plugins' has no attribute 'nothing'"),
])
def test_import_object_refuses_with_one_line(path, line):
    with pytest.raises(KdcoreError) as err:
        import_object(path)
    assert str(err.value) == line


def test_a_module_that_fails_at_import_is_named_with_its_error(tmp_path, monkeypatch):
    (tmp_path / "kdcore_test_boom.py").write_text("raise ValueError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(KdcoreError) as err:
        import_object("kdcore_test_boom:plugin")
    assert str(err.value) == ("cannot import plugin 'kdcore_test_boom:plugin': ValueError: "
                              "boom at import")


class _ClassMade(kdcore.Component):
    description = "registered by a plugin named as a class"


class _ClassPlugin:
    @hookimpl
    def kdcore_add_components(self):
        return {"class_made": _ClassMade}


class _NeedsArguments(_ClassPlugin):
    def __init__(self, size):
        self.size = size


def test_a_class_given_as_a_plugin_is_made_into_its_plugin():
    """``--plugin mod:MyPlugin`` (or an entry point, or ``extra``) registered the class, whose
    hooks then failed for want of ``self`` ("kdcore_add_components() missing 1 required
    positional argument")."""
    assert import_object(f"{__name__}:_ClassPlugin") is _ClassPlugin
    assert PluginHost(extra=[_ClassPlugin]).components.get("class_made") is _ClassMade
    host = PluginHost(extra=[_NeedsArguments])
    assert host.infos["_NeedsArguments"].error == (
        "is a class, and making one without arguments failed (TypeError: _NeedsArguments."
        "__init__() missing 1 required positional argument: 'size'); name an instance of it")
    with pytest.raises(KdcoreError, match=r"^plugin '_NeedsArguments' \(in-process\): is a "
                                          r"class, and making one"):
        PluginHost(extra=[_NeedsArguments], strict=True)
    host._register(_NeedsArguments, "by_entry_point", "kdcore-thing", "1.2")  # as one loads
    assert (host.infos["by_entry_point"].distribution, host.infos["by_entry_point"].version) == (
        "kdcore-thing", "1.2")


# -- the observer bus -------------------------------------------------------------------------


def _observer(name: str, calls: list, result=None, exc: Exception | None = None):
    class Observer:
        @hookimpl
        def kdcore_run_end(self, ctx, summary):
            calls.append((name, ctx, dict(summary)))
            if exc is not None:
                raise exc
            return result

    Observer.__name__ = name
    return Observer()


def test_the_bus_calls_plugins_in_pluggys_order_then_the_extra_observers_in_theirs():
    calls: list = []
    host = PluginHost(entry_points=False, extra=[_observer("p", calls, result=1),
                                                 _observer("q", calls)])
    bus = ObserverBus(host, extra=[("x", _observer("x", calls, result="x")),
                                   ("y", _observer("y", calls, result=0))])
    out = bus.call("kdcore_run_end", ctx="C", summary={"s": 1})
    assert [c[0] for c in calls] == ["q", "p", "x", "y"]  # pluggy: the last registered first
    assert all(c[1:] == ("C", {"s": 1}) for c in calls)
    assert out == [("p-0", 1), ("logger:x", "x"), ("logger:y", 0)]  # None left out, 0 kept
    assert bus.has("kdcore_run_end") and not bus.has("kdcore_batch_end")
    assert bus.strict is False


def test_each_plugin_gets_its_own_context_when_the_bus_has_a_context_factory():
    calls: list = []
    host = PluginHost(entry_points=False, extra=[_observer("p", calls)])
    bus = ObserverBus(host, context=lambda name: f"ctx of {name}",
                      extra=[("csv", _observer("x", calls))])
    bus.call("kdcore_run_end", ctx="shared", summary={})
    assert [c[1] for c in calls] == ["ctx of p-0", "ctx of logger:csv"]

    class Configure:  # a hook without ctx is called with the caller's arguments as they are
        @hookimpl
        def kdcore_configure(self, recipe):
            return [f"saw {recipe}"]

    bus = ObserverBus(PluginHost(entry_points=False, extra=[Configure()]),
                      context=lambda name: pytest.fail("no ctx to replace"))
    assert bus.call("kdcore_configure", recipe="r") == [("Configure-0", ["saw r"])]


def test_a_raising_observer_is_disabled_after_one_warning(warnings):
    calls: list = []
    host = PluginHost(entry_points=False, extra=[_observer("p", calls, exc=ValueError("v")),
                                                 _observer("q", calls)])
    bus = ObserverBus(host, extra=[("csv", _observer("x", calls, exc=OSError("disk")))])
    for _ in range(3):
        bus.call("kdcore_run_end", ctx=None, summary={})
    assert [c[0] for c in calls] == ["q", "p", "x", "q", "q"]
    assert warnings == [
        "plugin 'p-0' (in-process): kdcore_run_end raised ValueError('v'); the plugin is "
        "disabled for the rest of this run",
        "logger 'csv': kdcore_run_end raised OSError('disk'); the logger is disabled for the "
        "rest of this run"]
    assert bus.disabled == {"p-0", "logger:csv"}
    assert bus.has("kdcore_run_end")
    assert not ObserverBus(PluginHost(entry_points=False, extra=[_observer("p", [])]),
                           extra=[]).disabled


def test_a_plugin_named_logger_is_still_called_a_plugin(warnings):
    host = PluginHost(entry_points=False)
    host.infos["logger:mine"] = plugins_mod.PluginInfo("logger:mine", "kdcore-mine", "1")
    ObserverBus(host)._fail("logger:mine", "kdcore_run_end", ValueError("v"))
    assert warnings == ["plugin 'logger:mine' (kdcore-mine): kdcore_run_end raised "
                        "ValueError('v'); the plugin is disabled for the rest of this run"]


def test_strict_makes_the_first_failure_an_error_and_kdcore_errors_pass_through():
    calls: list = []
    host = PluginHost(entry_points=False, extra=[_observer("p", calls, exc=ValueError("v")),
                                                 _observer("q", calls)])
    with pytest.raises(KdcoreError) as err:
        ObserverBus(host, strict=True).call("kdcore_run_end", ctx=None, summary={})
    assert str(err.value) == "plugin 'p-0' (in-process): kdcore_run_end raised ValueError('v')"
    assert [c[0] for c in calls] == ["q", "p"]
    strict_host = PluginHost(entry_points=False, strict=True)
    assert ObserverBus(strict_host).strict is True
    assert ObserverBus(strict_host, strict=False).strict is False
    # a KdcoreError is the plugin's own one-line refusal: it ends the run, isolated by no one
    calls.clear()
    host = PluginHost(entry_points=False, extra=[_observer("p", calls,
                                                           exc=KdcoreError("stop: bad"))])
    bus = ObserverBus(host)
    with pytest.raises(KdcoreError, match="^stop: bad$"):
        bus.call("kdcore_run_end", ctx=None, summary={})
    assert bus.disabled == set()


def test_an_extra_observer_pluggy_refuses_is_named_as_a_logger(warnings):
    class BadLogger:
        @hookimpl
        def kdcore_run_end(self, ctx, summary, unknown):
            pass

    calls: list = []
    bus = ObserverBus(PluginHost(entry_points=False),
                      extra=[("bad", BadLogger()), ("good", _observer("g", calls))])
    (warning,) = warnings
    assert warning.startswith("logger 'bad': registration raised PluginValidationError(")
    assert warning.endswith("; the logger is disabled for the rest of this run")
    bus.call("kdcore_run_end", ctx=None, summary={})
    assert [c[0] for c in calls] == ["g"]
    with pytest.raises(KdcoreError, match="^logger 'bad': registration raised "):
        ObserverBus(PluginHost(entry_points=False), strict=True, extra=[("bad", BadLogger())])


def test_kdcore_exports_the_hookimpl_marker_of_its_project():
    assert kdcore.hookimpl.project_name == plugins_mod.hookspecs.PROJECT


class MoreAugmentations:
    @hookimpl
    def kdcore_add_augmentations(self):
        return {"my_flip": z_loader}


def test_a_failing_registry_hook_does_not_stop_the_next_plugins_entries(warnings):
    host = PluginHost(entry_points=False, extra=[Raises(), MoreAugmentations()])
    assert host.augmentations.get("my_flip") is z_loader
    assert host.infos["MoreAugmentations-1"].provides == {"augmentations": ["my_flip"]}
    assert len(warnings) == 1


def test_an_installed_plugin_that_fails_is_named_with_its_distribution_and_version(
        monkeypatch, warnings):
    _entry_points(monkeypatch, [
        FakeEntryPoint("a-raises", "kdcore_a", Raises, FakeDist("kdcore-a", "1.5")),
        FakeEntryPoint("b-args", "kdcore_b", WrongArgs, FakeDist("kdcore-b", "2.5")),
        FakeEntryPoint("c-none", "kdcore_c", object, FakeDist("kdcore-c", "3.5")),
    ])
    host = PluginHost()
    assert [w.split(" skipped: ")[0] for w in warnings] == [
        "plugin 'b-args' (kdcore-b 2.5)", "plugin 'c-none' (kdcore-c 3.5)",
        "plugin 'a-raises' (kdcore-a 1.5)"]  # registering first, then the registries filled
    for name, version in (("a-raises", "1.5"), ("b-args", "2.5"), ("c-none", "3.5")):
        info = host.infos[name]
        assert (info.name, info.version) == (name, version) and info.error


class UnusableAugmentations:
    @hookimpl
    def kdcore_add_augmentations(self):
        return {"my_crop": "crop"}


def test_an_unusable_registry_entry_names_the_installed_plugin_and_spares_the_next(
        monkeypatch, warnings):
    _entry_points(monkeypatch, [
        FakeEntryPoint("a-unusable", "kdcore_a", UnusableAugmentations,
                       FakeDist("kdcore-a", "1.5")),
        FakeEntryPoint("b-good", "kdcore_b", MoreAugmentations, FakeDist("kdcore-b", "2.5")),
    ])
    host = PluginHost()
    assert warnings == ["plugin 'a-unusable' (kdcore-a 1.5) skipped: kdcore_add_augmentations "
                        "gave 'my_crop': str 'crop', not a function"]
    assert host.augmentations.get("my_flip") is z_loader and "my_crop" not in host.augmentations


class _Finds:
    def __init__(self, *found):
        self.found = list(found)

    @hookimpl
    def kdcore_configure(self, recipe):
        return self.found


def test_every_plugins_configure_messages_are_kept_in_pluggys_order():
    """The last registered is called first, as pluggy calls every hook."""
    host = PluginHost(entry_points=False, extra=[_Finds("a1"), _Finds(), _Finds("c1", "c2")])
    assert host.configure_problems("recipe") == ["c1", "c2", "a1"]
