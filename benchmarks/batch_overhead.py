"""Where the engine's per-batch time goes, against the plain loop's, segment by segment.

The CE recipe's MLP on Fashion-MNIST (as ``engine_costs.py --arch mlp``): the engine's batch
step (``Trainer._train_batch``, cut into its phases) and the plain loop's, interleaved in
blocks of 50 batches, median over ``--batches`` of each.

With ``--whole``, also the engine's whole batch step (``Trainer._train_batch``: the records,
their grouped evaluation and the finiteness checks included) against the plain step, in
interleaved blocks of 50 batches (median of the blocks' mean per batch), with and without the
per-sample records.

With ``--framework``, instead: the same two steps on a near-null model (digits, an MLP with
one hidden layer of 4, batches of 8, one thread), where the compute is a few operations and
the difference is the engine's own per-batch cost.

With ``--floor``, instead: on that near-null model, the engine's whole step, the plain step, and
the floor between them: the plain step plus only what the engine must keep of a CE batch (the
per-sample loss as a kept ``PerSampleLoss``, the logits record, the loss for the finiteness
check every 32 steps). The engine's cost above the floor is the most that a batch path
bypassing the per-component machinery could save.

With ``--count``, instead: Python-level calls and aten operations per step of the same two
steps on that model (deterministic counts, not times).

Usage:  .venv/bin/python benchmarks/batch_overhead.py [--batches 3000] [--threads 2] [--whole]
        .venv/bin/python benchmarks/batch_overhead.py --framework [--batches 3000]
        .venv/bin/python benchmarks/batch_overhead.py --count [--batches 3000]
Needs Fashion-MNIST (make fashion-mnist).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from engine_costs import ce_recipe
from loguru import logger
from torch.utils._python_dispatch import TorchDispatchMode

import kdcore
from kdcore.checkpointing import Checkpointer
from kdcore.component import Batch
from kdcore.history_writer import HistoryWriter
from kdcore.loop import FINITE_CHECK_EVERY, Trainer
from kdcore.losses import _nll_rows
from kdcore.plan import build_plan
from kdcore.plugins import ObserverBus
from kdcore.prepare import prepare_run
from kdcore.recipe import recipe_from_dict
from kdcore.records import EpochRecords
from kdcore.step import combine
from kdcore.terms import PerSampleLoss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--whole", action="store_true",
                        help="also time the whole Trainer._train_batch against the plain step")
    parser.add_argument("--framework", action="store_true",
                        help="only the whole steps, on a near-null model (the engine's own cost)")
    parser.add_argument("--floor", action="store_true",
                        help="only the engine, floor and plain steps, near-null model")
    parser.add_argument("--count", action="store_true",
                        help="only count Python calls and aten ops per step, near-null model")
    args = parser.parse_args()
    logger.remove()
    torch.set_num_threads(1 if args.framework or args.floor else args.threads)
    host = kdcore.PluginHost()
    if args.floor:
        floor_cost(host, args.batches // 50)
        return
    if args.framework:
        framework_cost(host, args.batches // 50)
        return
    if args.count:
        count_calls(host, args.batches)
        return
    trainer = first_stage_trainer(ce_recipe(1, tempfile.gettempdir(), "mlp", 20000), host)
    run, stage = trainer.run, trainer.current_stage
    hard_source = trainer._hard_source
    model, opt, data = run.models["student"], run.optimizers["student"], run.data
    y = data.train_noisy
    order = torch.randperm(len(y))
    engine: dict[str, list[float]] = defaultdict(list)
    plain: dict[str, list[float]] = defaultdict(list)

    def engine_batch(index: torch.Tensor) -> None:
        t = [time.perf_counter()]
        x = run.augment(data.inputs(data.train, index), trainer.augment_gen)
        base, noisy = run.ledger["base_target"], data.train_noisy[index]
        hard = noisy if hard_source is not None else None
        batch = Batch(index, x, noisy, forward=run.forward, num_classes=run.num_classes,
                      step=run.step, hard_targets=hard, targets_from=base)
        opt.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        result = combine(batch, refiners=stage.refiners, selectors=stage.selectors,
                         weighters=stage.weighters, transfers=stage.transfers,
                         context=trainer.context)
        t.append(time.perf_counter())
        for p in result.losses_per_sample:
            trainer.records.add(p.column, p.producer, index, p.values)
        out = batch.computed("student")
        trainer.records.add("logits/student", "student", index, out.logits.detach())
        loss = result.losses["student"]
        trainer._unchecked.append((run.step, "student", loss.detach(), result.terms["student"]))
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        opt.step()
        run.bump("student")
        t.append(time.perf_counter())
        for name, a, b in zip(("inputs+batch+zero_grad", "forward+loss", "records",
                               "backward", "step"), t, t[1:]):
            engine[name].append(b - a)

    def plain_batch(index: torch.Tensor) -> None:
        t = [time.perf_counter()]
        x, labels = data.inputs(data.train, index), y[index]
        opt.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        logits, _ = model(x)
        loss = F.cross_entropy(logits, labels)
        t.append(time.perf_counter())
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        opt.step()
        t.append(time.perf_counter())
        for name, a, b in zip(("inputs+batch+zero_grad", "forward+loss", "records",
                               "backward", "step"), t, t[1:]):
            plain[name].append(b - a)

    for block in range(args.batches // 50):
        for fn in ((engine_batch, plain_batch) if block % 2 == 0 else (plain_batch, engine_batch)):
            for k in range(50):
                fn(order[((block * 50 + k) * 128) % (len(y) - 128):][:128])
        trainer.records = EpochRecords(trainer.records.group)
        trainer._unchecked, trainer._checked = [], 0
    print(f"{'segment':24s} {'engine us':>10s} {'plain us':>10s} {'diff us':>8s}")
    total_e = total_p = 0.0
    for name in engine:
        e, p = statistics.median(engine[name]) * 1e6, statistics.median(plain[name]) * 1e6
        total_e, total_p = total_e + e, total_p + p
        print(f"{name:24s} {e:10.1f} {p:10.1f} {e - p:8.1f}")
    print(f"{'sum of medians':24s} {total_e:10.1f} {total_p:10.1f} {total_e - total_p:8.1f} "
          f"({total_e / total_p:.3f}x)")
    if args.whole:
        trainer._hard_source = hard_source
        whole_steps(trainer, stage, order, args.batches // 50)


def framework_trainer(host: kdcore.PluginHost) -> Trainer:
    """The trainer of a near-null model: digits, an MLP with one hidden layer of 4, batches
    of 8."""
    recipe = recipe_from_dict({
        "run": {"name": "framework", "seed": 0, "device": "cpu",
                "output_dir": tempfile.gettempdir()},
        "data": {"dataset": "digits", "batch_size": 8,
                 "noise": {"model": "symmetric", "params": {"rate": 0.4}}},
        "models": {"student": {"arch": "mlp", "params": {"hidden": [4]},
                               "optimizer": {"lr": 0.05}}},
        "stages": [{"name": "s", "epochs": 1, "train": ["student"],
                    "components": [{"use": "ce"}]}],
    })
    return first_stage_trainer(recipe, host)


def framework_cost(host: kdcore.PluginHost, blocks: int) -> None:
    """:func:`whole_steps` where the model's compute is next to nothing."""
    trainer = framework_trainer(host)
    n = len(trainer.run.data.train_noisy)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    whole_steps(trainer, trainer.current_stage, order, blocks, batch_size=8)


def floor_cost(host: kdcore.PluginHost, blocks: int) -> None:
    """The engine's whole step, the floor and the plain step (``--floor``), interleaved."""
    trainer = framework_trainer(host)
    run = trainer.run
    model, opt, data = run.models["student"], run.optimizers["student"], run.data
    y = data.train_noisy
    records, unchecked = EpochRecords(FINITE_CHECK_EVERY), []

    def floor(index: torch.Tensor) -> None:
        labels = y[index]
        opt.zero_grad(set_to_none=True)
        logits, _ = model(data.inputs(data.train, index))
        log_probs = logits.log_softmax(1)
        loss = F.nll_loss(log_probs, labels)  # F.cross_entropy's two ops, as the engine's CE
        records.add("loss/ce", "ce", index, PerSampleLoss(_nll_rows, log_probs.detach(), labels))
        records.add("logits/student", "student", index, logits.detach())
        unchecked.append(loss.detach())
        loss.backward()
        opt.step()
        if len(unchecked) >= FINITE_CHECK_EVERY:
            bool(torch.isfinite(torch.stack(unchecked)).all())
            unchecked.clear()

    engine, _, plain = step_functions(trainer, trainer.current_stage)
    n = len(y)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = defaultdict(list)
    sides = [engine, floor, plain]
    for block in range(blocks):
        for fn in (sides if block % 2 == 0 else sides[::-1]):
            t = time.perf_counter()
            for k in range(50):
                start = ((block * 50 + k) * 8) % (n - 8)
                fn(order[start:start + 8])
            times[fn.__name__].append((time.perf_counter() - t) / 50)
        trainer.records = EpochRecords(trainer.records.group)
        trainer._unchecked, trainer._checked = [], 0
        records = EpochRecords(FINITE_CHECK_EVERY)
    base = statistics.median(times["plain"]) * 1e6
    print(f"{'step (near-null model)':24s} {'us':>10s} {'minus plain':>12s}")
    for name, values in times.items():
        us = statistics.median(values) * 1e6
        print(f"{name:24s} {us:10.1f} {us - base:+12.1f}")


class _AtenCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def count_calls(host: kdcore.PluginHost, batches: int) -> None:
    """Python-level calls (cProfile's count, C functions included) and aten operations per
    step of the engine's and the plain step, on the near-null model: deterministic counts of
    the work whose time the other measures estimate."""
    trainer = framework_trainer(host)
    engine, _, plain = step_functions(trainer, trainer.current_stage)
    rows = [torch.arange(k * 8, k * 8 + 8) for k in range(100)]
    print(f"{'step':10s} {'Python calls':>13s} {'aten ops':>9s}")
    for fn in (engine, plain):
        for k in range(200):  # past the first steps' one-off work (the optimiser's state)
            fn(rows[k % 100])
        profile = cProfile.Profile()
        profile.enable()
        for k in range(batches):
            fn(rows[k % 100])
        profile.disable()
        with _AtenCount() as aten:
            for k in range(batches):
                fn(rows[k % 100])
        calls = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
        print(f"{fn.__name__:10s} {calls / batches:13.1f} {aten.ops / batches:9.1f}")


def first_stage_trainer(recipe: kdcore.Recipe, host: kdcore.PluginHost) -> Trainer:
    """A trainer of ``recipe``'s prepared run, in its first stage, as an epoch would begin."""
    plan = build_plan(recipe, host)
    tmp = Path(tempfile.mkdtemp())
    run = prepare_run(plan, host, tmp)
    trainer = Trainer(plan, run, HistoryWriter(tmp / "h.h5"), ObserverBus(host),
                      Checkpointer(tmp, {}, 1e9, False))
    trainer.enter_stage(plan.stages[0])
    trainer._hard_source = trainer._one_hot_labels()
    return trainer


def step_functions(trainer: Trainer, stage) -> list[Callable[[torch.Tensor], None]]:
    """The engine's whole batch step, the same without its records, and the plain step, each
    taking the batch's rows."""
    run = trainer.run
    model, opt, data = run.models["student"], run.optimizers["student"], run.data
    y = data.train_noisy
    add = EpochRecords.add

    def engine(index: torch.Tensor) -> None:
        trainer._train_batch(stage, index, data.inputs(data.train, index), False)

    def engine_without_records(index: torch.Tensor) -> None:
        EpochRecords.add = lambda *a, **k: None  # type: ignore[method-assign]
        try:
            engine(index)
        finally:
            EpochRecords.add = add  # type: ignore[method-assign]

    def plain(index: torch.Tensor) -> None:
        logits, _ = model(data.inputs(data.train, index))
        loss = F.cross_entropy(logits, y[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return [engine, engine_without_records, plain]


def whole_steps(trainer: Trainer, stage, order: torch.Tensor, blocks: int,
                batch_size: int = 128) -> None:
    """The real batch step against the plain one, interleaved in blocks of 50 batches."""
    y = trainer.run.data.train_noisy
    sides = step_functions(trainer, stage)
    times: dict[str, list[float]] = defaultdict(list)
    for block in range(blocks):
        for fn in (sides if block % 2 == 0 else sides[::-1]):
            t = time.perf_counter()
            for k in range(50):
                start = ((block * 50 + k) * batch_size) % (len(y) - batch_size)
                fn(order[start:start + batch_size])
            times[fn.__name__].append((time.perf_counter() - t) / 50)
        trainer.records = EpochRecords(trainer.records.group)
        trainer._unchecked, trainer._checked = [], 0
    base = statistics.median(times["plain"]) * 1e6
    print(f"\n{'whole step':24s} {'us':>10s} {'minus plain':>12s}")
    for name, values in times.items():
        us = statistics.median(values) * 1e6
        print(f"{name:24s} {us:10.1f} {us - base:+12.1f} ({us / base:.3f}x)")


if __name__ == "__main__":
    main()
