"""Observer (plugin) hooks: a plugin whose hook raises is named once and disabled for the
run, other plugins and the run go on; under strict plugins it is an error."""

from __future__ import annotations

import numpy as np
import pytest
from loguru import logger

from kdcore import History, KdcoreError, PluginHost, hookimpl, load_recipe, run_recipe
from kdcore.plugins import ObserverBus
from kdcore.testing import component, run_tiny, stage, tiny_recipe


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


def test_batch_end_observers_find_the_batchs_records_and_the_history_holds_them(tmp_path):
    seen: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]] = []

    class Watch:
        @hookimpl
        def kdcore_batch_end(self, ctx, batch, losses):
            assert set(batch.records) == {"loss/ce", "logits/teacher"}
            seen.append((batch.index.numpy().copy(), batch.noisy_label.numpy().copy(),
                         batch.records["loss/ce"].numpy().copy(),
                         batch.records["logits/teacher"].numpy().copy(), ctx.epoch))

    recipe = tiny_recipe(stage("teacher", 2, ["teacher"], component("ce")), train_subset=256,
                         batch_size=32)
    run_tiny(recipe, tmp_path / "run", plugins=[Watch()])
    assert len(seen) == 2 * 256 // 32
    for _, labels, loss, logits, _ in seen:
        z = logits.astype(np.float64)
        shifted = z - z.max(1, keepdims=True)
        expected = np.log(np.exp(shifted).sum(1)) - shifted[np.arange(len(labels)), labels]
        np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    last = [s for s in seen if s[4] == 1]
    with History(tmp_path / "run") as h:
        column, logit_column = h.column("loss/ce")[-1], h.column("logits/teacher")[-1]
    rows = np.concatenate([s[0] for s in last])
    assert sorted(rows.tolist()) == list(range(len(column)))  # every sample once an epoch
    np.testing.assert_allclose(column[rows], np.concatenate([s[2] for s in last]), rtol=1e-3)
    np.testing.assert_allclose(logit_column[rows], np.concatenate([s[3] for s in last]),
                               rtol=1e-3, atol=1e-3)
