"""benchmarks/engine_costs.py: its steady-pace ratio (the pairs in which both runs went at the
machine's usual pace, reported beside the median of all pairs), and its plain loop run epoch by
epoch beside the engine's, doing the same work."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("engine_costs",
                                              ROOT / "benchmarks" / "engine_costs.py")
engine_costs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(engine_costs)


def test_a_pair_with_either_side_slowed_is_left_out_and_the_rest_kept_in_order():
    pairs = [{"engine": 2.08, "plain": 2.00},   # steady
             {"engine": 3.10, "plain": 2.02},   # the engine ran at the slow pace
             {"engine": 2.12, "plain": 3.00},   # the plain loop did
             {"engine": 2.25, "plain": 2.18},   # both just within 10% of their fastest
             {"engine": 2.05, "plain": 1.99}]
    ratios = engine_costs.steady_ratios(pairs)
    assert ratios == [2.08 / 2.00, 2.25 / 2.18, 2.05 / 1.99]
    assert engine_costs.steady_ratios(pairs, slack=0.02) == [2.08 / 2.00, 2.05 / 1.99]
    assert engine_costs.steady_ratios([{"engine": 1.0, "plain": 1.0}]) == [1.0]


def test_the_plain_loop_alongside_the_engine_trains_the_same_weights_and_times_each_epoch(
        tmp_path):
    import torch

    import kdcore
    from kdcore.recipe import recipe_from_dict

    recipe = recipe_from_dict({
        "run": {"name": "alongside", "seed": 3, "device": "cpu", "output_dir": str(tmp_path)},
        "data": {"dataset": "digits", "batch_size": 64,
                 "noise": {"model": "symmetric", "params": {"rate": 0.4}}},
        "models": {"student": {"arch": "mlp", "params": {"hidden": [16]},
                               "optimizer": {"lr": 0.05, "momentum": 0.9}}},
        "stages": [{"name": "s", "epochs": 3, "train": ["student"],
                    "components": [{"use": "ce"}]}],
    })
    initial, final = {}, {}

    class Keep:
        @kdcore.hookimpl
        def kdcore_run_start(self, ctx):
            initial.update({k: v.clone() for k, v in ctx.models["student"].state_dict().items()})

        @kdcore.hookimpl
        def kdcore_run_end(self, ctx, summary):
            final.update(ctx.models["student"].state_dict())

    alongside = engine_costs.PlainAlongside(recipe)
    kdcore.run_recipe(recipe, out=str(tmp_path / "run"), progress=False,
                      host=kdcore.PluginHost(extra=[alongside, Keep()]))
    assert len(alongside.pairs) == 3
    assert all(p["engine"] > 0 and p["plain"] > 0 for p in alongside.pairs)
    # the same work on both sides: the hand-written loop, from a copy of the engine's initial
    # model, on the same batches in the same order, ends with the engine's weights exactly
    plain = alongside.model.state_dict()
    assert final.keys() == plain.keys() == initial.keys()
    assert all(torch.equal(final[k], plain[k]) for k in final)
    assert not any(torch.equal(final[k], initial[k]) for k in final)  # both trained


def test_the_history_row_benchmark_times_each_row_after_the_first_two(monkeypatch):
    spec_row = importlib.util.spec_from_file_location("history_row",
                                                      ROOT / "benchmarks" / "history_row.py")
    history_row = importlib.util.module_from_spec(spec_row)
    spec_row.loader.exec_module(history_row)
    monkeypatch.setattr(history_row, "N", 300)  # the shape, not the size, is under test
    appended = []
    original = history_row.HistoryWriter.append_epoch

    def counted(self, **kw):
        appended.append(kw["epoch"])
        assert kw["columns"]["logits/student"].data.shape == (300, history_row.C)
        return original(self, **kw)

    monkeypatch.setattr(history_row.HistoryWriter, "append_epoch", counted)
    times = history_row.one_repeat(3, seed=0)
    assert appended == [0, 1, 2, 3, 4] and len(times) == 3 and all(t > 0 for t in times)
