"""Where an epoch's time goes: the engine's phases beside the plain loop's training and evaluation.

The CE recipe's MLP on Fashion-MNIST, as ``engine_costs.py --arch mlp``: in each engine run an
observer plugin runs one epoch of the plain loop (``engine_costs.plain_epoch``'s work, its
training and its evaluation timed apart) just before each engine epoch, and the engine's phases
are timed by wrapping the functions that do them. Printed per repeat: milliseconds per epoch,
averaged over the run's epochs.

Engine phases: ``batches`` (every ``Trainer._train_batch``; the inputs are gathered outside it,
as ``inputs``, which also counts the plain loop's gathers), ``evaluate``, ``history``
(``append_epoch``), ``checkpoint`` (``Checkpointer.save``: after the first epoch only, so a
third of it per epoch in a 3-epoch run), ``records`` (their write to the ledger at the epoch
end), ``finite`` (the finiteness checks), ``ledger_metrics``, ``train_metrics``.
``engine_epoch`` is the engine's whole epoch, the plain epoch run inside it taken out.

Usage:  .venv/bin/python benchmarks/epoch_phases.py [--epochs 3] [--repeats 3]
Needs Fashion-MNIST (make fashion-mnist).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from engine_costs import PlainAlongside, ce_recipe, plain_evaluate, plain_train
from loguru import logger

import kdcore
from kdcore import checkpointing, history_writer, loop, records, rundata
from kdcore.engine import run_recipe

PHASES: dict[str, tuple[object, str]] = {
    "batches": (loop.Trainer, "_train_batch"),
    "inputs": (rundata.RunData, "inputs"),
    "evaluate": (loop, "evaluate"),
    "history": (history_writer.HistoryWriter, "append_epoch"),
    "checkpoint": (checkpointing.Checkpointer, "save"),
    "records": (records.EpochRecords, "write"),
    "finite": (loop.Trainer, "_check_finite"),
    "ledger_metrics": (loop, "ledger_metrics"),
    "train_metrics": (loop.Trainer, "_train_metrics"),
    "epoch": (loop.Trainer, "_run_epoch"),
}


@contextmanager
def timed_phases(spent: dict[str, float]) -> Iterator[None]:
    """Each of :data:`PHASES` wrapped to add its time to ``spent``; unwrapped afterwards."""
    originals = [(owner, name, getattr(owner, name)) for owner, name in PHASES.values()]

    def wrap(key: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t
        return timed

    for key, (owner, name, fn) in zip(PHASES, originals):
        setattr(owner, name, wrap(key, fn))
    try:
        yield
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)


class PlainPhases(PlainAlongside):
    """One plain epoch before each engine epoch, its training and evaluation timed apart."""

    def __init__(self, recipe: kdcore.Recipe, spent: dict[str, float]):
        super().__init__(recipe)
        self.spent = spent

    @kdcore.hookimpl
    def kdcore_epoch_start(self, ctx: kdcore.RunContext, epoch: int) -> None:
        t0 = time.perf_counter()
        plain_train(self.model, self.opt, self.data, self.recipe.data.batch_size, self.gen)
        t1 = time.perf_counter()
        plain_evaluate(self.model, self.data)
        self.spent["plain_train"] += t1 - t0
        self.spent["plain_evaluate"] += time.perf_counter() - t1

    @kdcore.hookimpl
    def kdcore_run_end(self, ctx: kdcore.RunContext, summary: dict) -> None:
        pass  # the engine's side is timed by its phases here


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logger.remove()
    torch.set_num_threads(2)
    for rep in range(args.repeats + 1):  # the first, untimed, pays the process's one-off costs
        recipe = ce_recipe(args.epochs, tempfile.gettempdir(), "mlp", 0 if rep else 5000)
        spent: dict[str, float] = defaultdict(float)
        with timed_phases(spent), tempfile.TemporaryDirectory() as tmp:
            run_recipe(recipe, out=tmp, host=kdcore.PluginHost(extra=[PlainPhases(recipe, spent)]),
                       progress=False)
        if rep == 0:
            continue
        spent["engine_epoch"] = spent.pop("epoch") - spent["plain_train"] - spent["plain_evaluate"]
        print(f"repeat {rep} (ms per epoch): " + ", ".join(
            f"{k} {1e3 * v / args.epochs:.1f}" for k, v in sorted(spent.items())), flush=True)


if __name__ == "__main__":
    main()
