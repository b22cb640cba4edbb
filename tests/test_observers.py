"""Observer (plugin) hooks: a plugin whose hook raises is named once and disabled for the
run, other plugins and the run go on; under strict plugins it is an error."""

from __future__ import annotations

import pytest
from loguru import logger

from kdcore import KdcoreError, PluginHost, hookimpl, load_recipe, run_recipe
from kdcore.plugins import ObserverBus


class Broken:
    """Raises at every epoch end and counts how often it was called."""

    calls = 0

    @hookimpl
    def kdcore_epoch_end(self, ctx, epoch, metrics):
        Broken.calls += 1
        raise RuntimeError("observer bug")


class Counter:
    epochs = 0

    @hookimpl
    def kdcore_epoch_end(self, ctx, epoch, metrics):
        Counter.epochs += 1
        metrics["counter/seen"] = float(Counter.epochs)


@pytest.fixture
def warnings():
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(str(m)), level="WARNING")
    yield seen
    logger.remove(sink)


@pytest.mark.slow
def test_a_raising_observer_is_named_once_and_the_run_goes_on(tiny_recipe, tmp_path, warnings):
    Broken.calls, Counter.epochs = 0, 0
    host = PluginHost(extra=[Broken(), Counter()])
    summary = run_recipe(load_recipe(tiny_recipe), out=str(tmp_path / "run"), host=host)
    assert set(summary) == {"teacher", "student"}
    assert Broken.calls == 1  # disabled after its first failure
    assert Counter.epochs == 4  # the other plugin saw every epoch
    named = [w for w in warnings if "Broken" in w and "kdcore_epoch_end" in w]
    assert len(named) == 1 and "observer bug" in named[0]


def test_the_bus_isolates_per_plugin_and_keeps_pluggy_order():
    order: list[str] = []

    class A:
        @hookimpl
        def kdcore_run_end(self, ctx, summary):
            order.append("a")

    class B:
        @hookimpl
        def kdcore_run_end(self, ctx, summary):
            order.append("b")
            raise ValueError("b fails")

    host = PluginHost(entry_points=False, extra=[A(), B()])
    bus = ObserverBus(host)
    bus.call("kdcore_run_end", ctx=None, summary={})
    bus.call("kdcore_run_end", ctx=None, summary={})
    assert order == ["b", "a", "a"]  # last registered first, as pluggy; b disabled after
    assert bus.disabled == {"B-1"}
    assert not ObserverBus(PluginHost(entry_points=False)).has("kdcore_run_end")
    assert bus.has("kdcore_run_end")


def test_strict_plugins_make_a_raising_observer_an_error():
    host = PluginHost(entry_points=False, extra=[Broken()], strict=True)
    with pytest.raises(KdcoreError, match="Broken.*kdcore_epoch_end.*observer bug"):
        ObserverBus(host).call("kdcore_epoch_end", ctx=None, epoch=0, metrics={})
