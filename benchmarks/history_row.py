"""The cost of one history row: ``HistoryWriter.append_epoch`` of the MLP benchmark's columns
(``target`` N x C, ``loss/ce`` N, ``logits/student`` N x C; N = 54,000, C = 10) and 16 metrics,
timed alone, outside a run, so that the epoch end's largest share of engine work
(docs/benchmarks.md, sessions 10 and 13) can be read without the training around it.

Usage:  .venv/bin/python benchmarks/history_row.py [--rows 30] [--repeats 3]
Prints the milliseconds per row of each repeat (mean and standard deviation over its rows,
after two untimed rows) and writes benchmarks/results/history_row.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdcore.history_writer import HistoryWriter
from kdcore.ledger import Column

RESULTS = Path(__file__).parent / "results"
N, C, METRICS = 54_000, 10, 16


def columns(gen: torch.Generator) -> dict[str, Column]:
    """One epoch's ledger columns, as the CE recipe writes them (random values: the
    compressor gets no easier input than a run's)."""
    labels = torch.randint(0, C, (N,), generator=gen)
    return {"target": Column(torch.nn.functional.one_hot(labels, C).float(), "ce", "target"),
            "loss/ce": Column(torch.rand(N, generator=gen) * 3, "ce", "value"),
            "logits/student": Column(torch.randn(N, C, generator=gen) * 4, "student", "value")}


def one_repeat(rows: int, seed: int) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        writer = HistoryWriter(Path(tmp) / "history.h5")
        writer.create(recipe_toml="", versions={"kdcore": "0"}, num_classes=C,
                      class_names=[str(k) for k in range(C)],
                      constants={"noisy_label": torch.zeros(N, dtype=torch.int32)},
                      transition_matrix=torch.eye(C))
        metrics = {f"metric/{k}": float(k) for k in range(METRICS)}
        times = []
        for row in range(rows + 2):
            cols = columns(gen)
            t = time.perf_counter()
            writer.append_epoch(stage="student", epoch=row, metrics=metrics, columns=cols)
            times.append(time.perf_counter() - t)
    return times[2:]  # the first rows create the datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = {"n": N, "classes": C, "metrics": METRICS, "rows": args.rows, "repeats": []}
    for rep in range(args.repeats):
        ms = [1000 * t for t in one_repeat(args.rows, rep)]
        summary = {"mean_ms": statistics.mean(ms), "std_ms": statistics.stdev(ms),
                   "min_ms": min(ms), "max_ms": max(ms)}
        out["repeats"].append(summary)
        print(f"repeat {rep}: {summary['mean_ms']:.2f} +- {summary['std_ms']:.2f} ms per row "
              f"(min {summary['min_ms']:.2f}, max {summary['max_ms']:.2f}, {args.rows} rows)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "history_row.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
