"""Find, load and list plugins; one broken plugin never takes kdcore down.

Plugins are found through the entry-point group ``kdcore`` (kdcore's own baselines are
registered the same way). A plugin that fails to import or to register is named in one warning
and skipped; ``strict=True`` makes that an error instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import importlib
import importlib.metadata as md
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs
import pluggy
from loguru import logger

from kdcore import hookspecs
from kdcore.component import Component
from kdcore.errors import PLUGIN_FAILURES, KdcoreError, exception_text, one_line, shown
from kdcore.registry import Registry

ENTRY_POINT_GROUP = "kdcore"
# the distribution name of a plugin object handed to the host in this process (--plugin)
IN_PROCESS = "in-process"
REGISTRY_HOOKS = {
    "components": "kdcore_add_components",
    "datasets": "kdcore_add_datasets",
    "noise_models": "kdcore_add_noise_models",
    "models": "kdcore_add_models",
    "augmentations": "kdcore_add_augmentations",
    "loggers": "kdcore_add_loggers",
}


@attrs.define
class PluginInfo:
    """What ``kdcore plugins`` shows for one plugin."""

    name: str
    distribution: str
    version: str
    provides: dict[str, list[str]] = attrs.Factory(dict)
    hooks: list[str] = attrs.Factory(list)
    error: str | None = None


class PluginHost:
    """The plugin manager and the registries it filled.

    Args:
        strict: raise on a plugin that fails to load instead of warning.
        extra: plugin objects or modules to register besides the entry points (tests,
            notebooks, programmatic use).
        entry_points: look up the ``kdcore`` entry-point group (off only in tests).
    """

    def __init__(self, *, strict: bool = False, extra: Iterable[Any] = (),
                 entry_points: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.strict = strict
        self.infos: dict[str, PluginInfo] = {}
        self.components: Registry[type[Component]] = Registry("component")
        self.datasets: Registry[Any] = Registry("dataset")
        from kdcore.data.noise import NOISE_HINTS  # (the built-in plugin imports it anyway)

        self.noise_models: Registry[Any] = Registry("noise model", hints=NOISE_HINTS)
        self.models: Registry[Any] = Registry("architecture")
        self.augmentations: Registry[Any] = Registry("augmentation")
        self.loggers: Registry[Any] = Registry("logger")
        if entry_points:
            self._load_entry_points()
        if "builtin" not in self.infos:  # running from a source tree without installed metadata
            from kdcore import builtin

            self._register(builtin, "builtin", "kdcore", _version("kdcore"))
        for i, plugin in enumerate(extra):
            name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{i}"
            self._register(plugin, name, IN_PROCESS, "")
        self._fill_registries()

    # -- loading ----------------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if ep.name in self.infos:
                continue
            try:
                plugin = ep.load()
            except PLUGIN_FAILURES as exc:  # any import-time failure of third-party code
                self._fail(ep.name, dist, version, f"failed to import {ep.value}: "
                           f"{exception_text(exc, quoted=True)}")
                continue
            self._register(plugin, ep.name, dist, version)

    def _register(self, plugin: Any, name: str, dist: str, version: str) -> None:
        if isinstance(plugin, type):  # named where its instance belongs: hooks are methods
            try:
                plugin = plugin()
            except PLUGIN_FAILURES as exc:  # the plugin's own constructor
                self._fail(name, dist, version, f"is a class, and making one without arguments "
                                                f"failed ({type(exc).__name__}: "
                                                f"{exception_text(exc)}); name "
                                                "an instance of it")
                return
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # pluggy validation errors, duplicate names
            # pluggy's message may list every plugin over several lines: its first line says it
            self._fail(name, dist, version, f"failed to register: {one_line(exc)}")
            return
        callers = self.pm.get_hookcallers(plugin) or []
        hooks = sorted(h.name for h in callers)
        unknown = sorted(c.name for c in callers if not c.has_spec() and not all(
            i.optionalhook for i in c.get_hookimpls() if i.plugin is plugin))
        if not hooks or unknown:  # `--plugin os` or a wrong attribute: a typo, not a plugin
            self.pm.unregister(name=name)
            self._fail(name, dist, version, _unknown_hooks(unknown) if unknown else
                       "implements no kdcore hook (a @kdcore.hookimpl function or method "
                       "named kdcore_*)")
            return
        self.infos[name] = PluginInfo(name, dist, version, hooks=hooks)

    def _fail(self, name: str, dist: str, version: str, message: str) -> None:
        if self.strict:
            raise KdcoreError(f"plugin '{name}' ({dist}): {message}")
        where = f"{dist} {version}" if version else dist
        logger.warning(f"plugin '{name}' ({where}) skipped: {message}")
        self.infos[name] = PluginInfo(name, dist, version, error=message)

    def _fill_registries(self) -> None:
        for attr, hook_name in REGISTRY_HOOKS.items():
            registry: Registry[Any] = getattr(self, attr)
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                name = self.pm.get_name(impl.plugin) or "?"
                info = self.infos[name]
                try:
                    entries = impl.function() or {}
                except KdcoreError:
                    raise
                except PLUGIN_FAILURES as exc:
                    self._fail(name, info.distribution, info.version,
                               f"{hook_name} failed: {exception_text(exc, quoted=True)}")
                    continue
                problem = _unusable_entry(attr, entries)
                if problem:  # nothing of it registered: not half a plugin
                    self._fail(name, info.distribution, info.version, f"{hook_name} {problem}")
                    continue
                for key, obj in entries.items():
                    registry.register(key, obj, provider=name)
                if entries:  # a hook that returns nothing provides nothing to list
                    self.infos[name].provides.setdefault(attr, []).extend(sorted(entries))

    # -- use --------------------------------------------------------------------------------

    @property
    def hook(self) -> Any:
        """pluggy's hook relay (the engine calls observers through :class:`ObserverBus`)."""
        return self.pm.hook

    def versions(self) -> dict[str, str]:
        """Distribution and version of every loaded plugin (for the history)."""
        out = {"kdcore": _version("kdcore")}
        for info in self.infos.values():
            if info.error is None and info.distribution != IN_PROCESS:
                out[info.distribution] = info.version
        return out

    @contextlib.contextmanager
    def activate(self) -> Iterator[PluginHost]:
        """Make this host :func:`active_host` for the ``with`` block (the engine does so while
        it builds the data and trains)."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def name_of(self, plugin: Any) -> str:
        return self.pm.get_name(plugin) or "?"

    def configure_problems(self, recipe: Any) -> list[str]:
        """What the plugins' ``kdcore_configure`` find wrong with ``recipe``. One that raises,
        or returns anything but a list of messages (a string was read letter by letter), is
        named in a warning and its check skipped, as a failing observer is (an error under
        ``--strict-plugins``): a broken plugin stops no recipe it has no say in."""
        bus = ObserverBus(self)
        problems: list[str] = []
        for name, found in bus.call("kdcore_configure", recipe=recipe):
            if isinstance(found, list | tuple) and all(isinstance(p, str) for p in found):
                problems += found
            else:
                bus.refuse(name, "kdcore_configure", f"returned {shown(found)}, not a list of "
                                                     "messages")
        return problems


def _unknown_hooks(names: list[str]) -> str:
    """Why a plugin implementing hooks kdcore does not define is skipped: pluggy would keep
    it and never call them (``kdcore_add_component`` for ``kdcore_add_components``, and every
    component it meant to add was an "unknown component")."""
    known = [n for n in dir(hookspecs) if n.startswith("kdcore_")]
    said = []
    for hook in names:
        close = difflib.get_close_matches(hook, known, n=1)
        said.append(f"'{hook}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return (f"implements {', '.join(said)}, which kdcore does not define (kdcore/hookspecs.py "
            "lists its hooks; mark one of a later kdcore @kdcore.hookimpl(optionalhook=True))")


def _unusable_entry(registry: str, entries: Any) -> str | None:
    """What in a registry hook's result no recipe could use, or None: a result that is not a
    mapping, a name that is not a non-empty string (a recipe names entries in TOML), a
    component that is not a :class:`Component` subclass, anything else not callable."""
    if not isinstance(entries, Mapping):
        return f"returned {shown(entries)}, not a mapping of names"
    for key, obj in entries.items():
        if not isinstance(key, str) or not key:
            return f"gave the name {shown(key)}; a name is a non-empty string"
        if registry == "components":
            if not (isinstance(obj, type) and issubclass(obj, Component)):
                return f"gave '{key}': {_kind(obj)}, not a kdcore.Component subclass"
            problem = _params_problem(obj.Params)
            if problem:
                return f"gave '{key}', whose Params {problem}"
        elif not callable(obj):
            return f"gave '{key}': {_kind(obj)}, not a function"
    return None


def _params_problem(params: Any) -> str | None:
    """Why a component's ``Params`` could not take a recipe's table, or None: a recipe's
    ``params`` are structured into an attrs class by its annotations (:mod:`kdcore.config`)."""
    if not (isinstance(params, type) and attrs.has(params)):
        return (f"is {_kind(params)}, not an attrs class (declare it with @attrs.frozen, as "
                "docs/plugins.md shows)")
    try:
        typing.get_type_hints(params)
    except Exception as exc:  # noqa: BLE001 - a name the annotations use is not importable
        return f"has annotations that cannot be read ({type(exc).__name__}: {one_line(exc)})"
    return None


def _kind(obj: Any) -> str:
    """A refused entry as a message names it: a function or class by its name."""
    if isinstance(obj, type):
        return f"type {obj.__name__}"
    if isinstance(obj, types.FunctionType):
        return f"function {obj.__name__}"
    return shown(obj)


class ObserverBus:
    """Calls a broadcast hook on every plugin, isolating each one.

    A plugin whose implementation raises is named once, in one warning, and no hook of it is
    called again for the rest of the run, as if it had failed to import; under ``strict`` the
    failure is an error instead. Runs that use none of its components go on unharmed.

    Args:
        host: the plugins.
        strict: raise :class:`KdcoreError` at the first failure.
        context: the ``ctx`` handed to a plugin, by the plugin's name (default: the ``ctx``
            the caller passes, to every plugin).
        extra: ``(name, observer)`` pairs called after the plugins, in this order, and
            isolated like them: the run's loggers (:func:`kdcore.loggers.start_loggers`).
            An observer implements observer hooks with ``@kdcore.hookimpl``; its name is
            ``logger:<name>`` in warnings and in the ledger.
    """

    def __init__(self, host: PluginHost, *, strict: bool | None = None,
                 context: Callable[[str], Any] | None = None,
                 extra: Iterable[tuple[str, Any]] = ()):
        self.host = host
        self.strict = host.strict if strict is None else strict
        self.disabled: set[str] = set()
        # each plugin's own ``ctx`` (its ledger writes tagged with its name), when given
        self.context = context
        self.extra: pluggy.PluginManager | None = None
        for name, observer in extra:
            if self.extra is None:
                self.extra = pluggy.PluginManager(hookspecs.PROJECT)
                self.extra.add_hookspecs(hookspecs)
            try:
                self.extra.register(observer, name=f"logger:{name}")
            except Exception as exc:  # pluggy's validation of its hook signatures
                self._fail(f"logger:{name}", "registration", exc)

    def _impls(self, hook_name: str) -> Iterator[tuple[str, Any]]:
        """``(name, hookimpl)`` of every enabled implementation, plugins first."""
        for pm in (self.host.pm, self.extra):
            if pm is None:
                continue
            # pluggy calls the last registered first; keep that order among the plugins
            impls = getattr(pm.hook, hook_name).get_hookimpls()
            for impl in reversed(impls) if pm is self.host.pm else impls:
                name = pm.get_name(impl.plugin) or "?"
                if name not in self.disabled:
                    yield name, impl

    def has(self, hook_name: str) -> bool:
        """Whether any enabled plugin implements ``hook_name``."""
        return any(True for _ in self._impls(hook_name))

    def call(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call ``hook_name`` on each enabled plugin (in pluggy's order), then on each extra
        observer; returns ``(plugin name, result)`` for each one that returned something
        other than None."""
        out: list[tuple[str, Any]] = []
        for name, impl in self._impls(hook_name):
            args = kwargs
            if self.context is not None and "ctx" in kwargs:
                args = {**kwargs, "ctx": self.context(name)}
            try:
                result = impl.function(*(args[a] for a in impl.argnames))
            except KdcoreError:
                raise
            except PLUGIN_FAILURES as exc:  # third-party code: isolate it
                self._fail(name, hook_name, exc)
                continue
            if result is not None:
                out.append((name, result))
        return out

    def _fail(self, name: str, hook_name: str, exc: BaseException) -> None:
        self.refuse(name, hook_name, f"raised {exception_text(exc, quoted=True)}")

    def refuse(self, name: str, hook_name: str, what_it_did: str) -> None:
        """Name plugin ``name`` once and call none of its hooks again (an error under
        ``strict``)."""
        info = self.host.infos.get(name)
        dist = f" ({info.distribution})" if info else ""
        what = "logger" if name.startswith("logger:") and not info else "plugin"
        called = name.removeprefix("logger:") if what == "logger" else name
        message = f"{what} '{called}'{dist}: {hook_name} {what_it_did}"
        if self.strict:
            raise KdcoreError(message)
        logger.warning(f"{message}; the {what} is disabled for the rest of this run")
        self.disabled.add(name)


_ACTIVE: contextvars.ContextVar[PluginHost | None] = contextvars.ContextVar(
    "kdcore_active_host", default=None)


def active_host() -> PluginHost:
    """The plugin host of the run being built or trained.

    Dataset loaders and noise models are plain functions that are not handed the run; one that
    delegates to another registered loader, noise model or augmentation (a generator built on
    any dataset, a noise model that adds to ``symmetric``) finds it here, in the same
    registries the run uses, in-process plugins included; so do components.
    Outside a run: a host of the installed plugins, built once per process.
    """
    host = _ACTIVE.get()
    return host if host is not None else _installed_host()


@functools.cache
def _installed_host() -> PluginHost:
    return PluginHost()


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "unknown"


def import_object(path: str) -> Any:
    """Import ``module:attr`` or ``module`` (for ``--plugin`` on the command line)."""
    module, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module)
        return getattr(obj, attr) if attr else obj
    except (ImportError, AttributeError) as exc:
        raise KdcoreError(f"cannot import plugin '{path}': {exc}") from None
    except PLUGIN_FAILURES as exc:  # the module itself fails: a syntax error, a sys.exit
        raise KdcoreError(f"cannot import plugin '{path}': {type(exc).__name__}: "
                          f"{exception_text(exc)}") from None
