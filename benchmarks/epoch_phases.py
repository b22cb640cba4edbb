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
import copy
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from engine_costs import ce_recipe, plain_optimizer
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


class PlainPhases:
    """One plain epoch before each engine epoch, its training and evaluation timed apart."""

    def __init__(self, recipe: kdcore.Recipe, spent: dict[str, float]):
        self.recipe, self.spent = recipe, spent

    @kdcore.hookimpl
    def kdcore_run_start(self, ctx: kdcore.RunContext) -> None:
        self.model = copy.deepcopy(ctx.models["student"]).requires_grad_(True)
        self.opt = plain_optimizer(self.recipe, self.model)
        self.data = ctx.data
        self.gen = torch.Generator().manual_seed(self.recipe.run.seed + 2)

    @kdcore.hookimpl
    def kdcore_epoch_start(self, ctx: kdcore.RunContext, epoch: int) -> None:
        model, opt, data, bs = self.model, self.opt, self.data, self.recipe.data.batch_size
        y = data.train_noisy
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(y), generator=self.gen)
        for start in range(0, len(y), bs):
            idx = perm[start:start + bs]
            logits, _ = model(data.inputs(data.train, idx))
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        t1 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            for split, labels in ((data.val, data.val_noisy), (data.test, data.test.y)):
                pred = torch.cat([model(data.inputs(split, torch.arange(
                    i, min(i + 1024, len(labels)))))[0].argmax(1)
                    for i in range(0, len(labels), 1024)])
                float((pred == labels).float().mean())
        t2 = time.perf_counter()
        self.spent["plain_train"] += t1 - t0
        self.spent["plain_evaluate"] += t2 - t1


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
