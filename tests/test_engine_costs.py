"""benchmarks/engine_costs.py's steady-pace ratio: the pairs in which both runs went at the
machine's usual pace, reported beside the median of all pairs."""

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
