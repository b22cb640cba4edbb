"""Engine overhead and HDF5 history cost, measured in one run.

1. Overhead: the CE recipe on Fashion-MNIST (flattened, MLP) run by kdcore's engine, against a
   plain hand-written PyTorch loop on the same model initialisation, data, batch size and epochs
   (both evaluate validation and test accuracy every epoch, as the engine does). The two are
   interleaved ``--repeats`` times so that machine load hits both alike; the ratio is
   engine wall time / plain wall time per pair. Each repeat also runs the two epoch by epoch
   (:class:`PlainAlongside`: a plain epoch just before each engine epoch, in the engine's run):
   ``--epochs`` pairs a repeat, each under a second long on the MLP, so that fewer of them
   straddle one of a shared machine's changes of pace than the whole runs' pairs do.
2. History cost: the time spent appending each epoch to history.h5 (N = 60,000 minus the
   validation split, C = 10; columns: target, per-sample CE loss, training logits) as a
   fraction of the epoch's time, and the file size against the same columns as raw float32.

Usage:  .venv/bin/python benchmarks/engine_costs.py [--arch mlp|cnn] [--epochs 5] [--repeats 3]
Needs Fashion-MNIST (make fashion-mnist). Writes benchmarks/results/engine_costs_<arch>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from loguru import logger

import kdcore
from kdcore import history_writer as history_mod
from kdcore import loop as kdcore_loop
from kdcore.engine import run_recipe
from kdcore.plan import build_plan
from kdcore.prepare import prepare_run
from kdcore.recipe import recipe_from_dict
from kdcore.rundata import RunData

RESULTS = Path(__file__).parent / "results"


ARCHS = {
    # the worst case for overhead: about 1.7 ms of compute per batch on 2 cores
    "mlp": ({"flatten": True}, {"arch": "mlp", "params": {"hidden": [256, 128]}}, 0),
    # a small CNN on 28x28 images (uint8, normalised per batch in both loops)
    "cnn": ({"flatten": False}, {"arch": "cnn", "params": {"channels": [16, 32]}}, 10000),
}


def ce_recipe(epochs: int, out: str, arch: str = "mlp", subset: int | None = None,
              device: str = "cpu") -> kdcore.Recipe:
    data_params, model, default_subset = ARCHS[arch]
    subset = default_subset if subset is None else subset
    return recipe_from_dict({
        "run": {"name": "ce-bench", "seed": 0, "device": device, "output_dir": out},
        "data": {"dataset": "fashion_mnist", "params": data_params, "batch_size": 128,
                 "train_subset": subset,
                 "noise": {"model": "symmetric", "params": {"rate": 0.4}}},
        "models": {"student": {**model, "optimizer": {"lr": 0.05}}},
        "stages": [{"name": "student", "epochs": epochs, "train": ["student"],
                    "components": [{"use": "ce"}]}],
    })


def run_engine(recipe: kdcore.Recipe, host: kdcore.PluginHost) -> tuple[float, dict]:
    """The whole ``kdcore run``: plan, data, models, training, history, checkpoints; the
    set-up (data loading, model building) is timed apart, as the plain loop's is not timed."""
    with tempfile.TemporaryDirectory() as tmp:
        appends: list[float] = []
        fit: list[float] = []
        original = history_mod.HistoryWriter.append_epoch
        original_fit = kdcore_loop.Trainer.fit

        def timed(self, **kw):
            t = time.perf_counter()
            row = original(self, **kw)
            appends.append(time.perf_counter() - t)
            return row

        def timed_fit(self, *args, **kw):
            t = time.perf_counter()
            try:
                return original_fit(self, *args, **kw)
            finally:
                fit.append(time.perf_counter() - t)

        history_mod.HistoryWriter.append_epoch = timed
        kdcore_loop.Trainer.fit = timed_fit
        try:
            run_recipe(recipe, out=tmp, host=host, progress=False)
        finally:
            history_mod.HistoryWriter.append_epoch = original
            kdcore_loop.Trainer.fit = original_fit
        with kdcore.History(Path(tmp)) as h:
            epoch_times = h.metric("time/epoch").tolist()
            raw = sum(h.column(c).size * 4 for c in h.column_names())
            columns = h.column_names()
        size = (Path(tmp) / "history.h5").stat().st_size
    return fit[0], {"append_s": appends, "epoch_s": epoch_times, "file_bytes": size,
                    "raw_float32_bytes": raw, "columns": columns}


def plain_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, data: RunData,
                bs: int, gen: torch.Generator) -> None:
    """One epoch of the loop a careful user would write by hand: train, then validation and
    test accuracy."""
    plain_train(model, opt, data, bs, gen)
    plain_evaluate(model, data)


def plain_train(model: torch.nn.Module, opt: torch.optim.Optimizer, data: RunData, bs: int,
                gen: torch.Generator) -> None:
    """The plain loop's training pass over a shuffled epoch."""
    y = data.train_noisy
    model.train()
    perm = torch.randperm(len(y), generator=gen).to(y.device)
    for start in range(0, len(y), bs):
        idx = perm[start:start + bs]
        logits, _ = model(data.inputs(data.train, idx))
        loss = F.cross_entropy(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if y.is_cuda:  # the pass ends when its work does (timed on its own by epoch_phases.py)
        torch.cuda.synchronize()


def plain_evaluate(model: torch.nn.Module, data: RunData) -> None:
    """The plain loop's validation and test accuracy."""
    model.eval()
    with torch.no_grad():
        for split, labels in ((data.val, data.val_noisy), (data.test, data.test.y)):
            pred = torch.cat([model(data.inputs(split, torch.arange(i, min(i + 1024,
                                                                       len(labels)))))[0]
                              .argmax(1) for i in range(0, len(labels), 1024)])
            float((pred == labels).float().mean())
    if data.train_noisy.is_cuda:
        torch.cuda.synchronize()


def plain_optimizer(recipe: kdcore.Recipe, model: torch.nn.Module) -> torch.optim.Optimizer:
    cfg = recipe.models["student"].optimizer
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def run_plain(recipe: kdcore.Recipe, host: kdcore.PluginHost) -> float:
    """The plain loop on the engine's own data and initialisation, every epoch."""
    with tempfile.TemporaryDirectory() as tmp:
        run = prepare_run(build_plan(recipe, host), host, Path(tmp))
    model = run.models["student"]
    opt = plain_optimizer(recipe, model)
    gen = torch.Generator().manual_seed(recipe.run.seed + 2)
    t0 = time.perf_counter()
    for _ in range(recipe.stages[0].epochs):
        plain_epoch(model, opt, run.data, recipe.data.batch_size, gen)
    return time.perf_counter() - t0


class PlainAlongside:
    """An observer plugin that runs one epoch of the plain loop just before each of the
    engine's epochs, on its own copy of the engine's initial model: the two sides interleaved
    epoch by epoch (under a second apart on the MLP) rather than run by run (several seconds),
    so that fewer pairs straddle one of the machine's changes of pace.

    The engine's epoch is the time from the end of one plain epoch to the start of the next
    (or the run's end): its batches, evaluation, records, history row and checkpoint, and the
    next epoch's start (learning rate, component hooks). The run's set-up before its first
    epoch (about a millisecond here) is left out."""

    def __init__(self, recipe: kdcore.Recipe):
        self.recipe = recipe
        self.pairs: list[dict[str, float]] = []
        self._mark: float | None = None

    @kdcore.hookimpl
    def kdcore_run_start(self, ctx: kdcore.RunContext) -> None:
        self.model = copy.deepcopy(ctx.models["student"]).requires_grad_(True)
        self.opt = plain_optimizer(self.recipe, self.model)
        self.data = ctx.data
        self.gen = torch.Generator().manual_seed(self.recipe.run.seed + 2)

    @kdcore.hookimpl
    def kdcore_epoch_start(self, ctx: kdcore.RunContext, epoch: int) -> None:
        t = time.perf_counter()
        if self._mark is not None:
            self.pairs[-1]["engine"] = t - self._mark
        plain_epoch(self.model, self.opt, self.data, self.recipe.data.batch_size, self.gen)
        self._mark = time.perf_counter()
        self.pairs.append({"plain": self._mark - t})

    @kdcore.hookimpl
    def kdcore_run_end(self, ctx: kdcore.RunContext, summary: dict) -> None:
        assert self._mark is not None
        self.pairs[-1]["engine"] = time.perf_counter() - self._mark


def run_alongside(recipe: kdcore.Recipe) -> list[dict[str, float]]:
    """One engine run with the plain loop's epochs interleaved (:class:`PlainAlongside`)."""
    alongside = PlainAlongside(recipe)
    with tempfile.TemporaryDirectory() as tmp:
        run_recipe(recipe, out=tmp, host=kdcore.PluginHost(extra=[alongside]), progress=False)
    return alongside.pairs


def steady_ratios(pairs: list[dict[str, float]], slack: float = 0.10) -> list[float]:
    """The ratios of the pairs in which each side took at most ``slack`` more than its fastest
    run: on a shared machine whose pace changes by half from one minute to the next, a pair
    with one side at each pace says nothing about the engine. Reported beside the median of
    all pairs, never instead of it."""
    fastest = {side: min(p[side] for p in pairs) for side in ("engine", "plain")}
    return [p["engine"] / p["plain"] for p in pairs
            if all(p[side] <= (1 + slack) * fastest[side] for side in fastest)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="mlp")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="where the JSON goes (default: benchmarks/results)")
    parser.add_argument("--subset", type=int, default=None,
                        help="training images (0: all 54,000; default: the arch's own)")
    args = parser.parse_args()
    logger.remove()
    torch.set_num_threads(2)
    host = kdcore.PluginHost()
    # one untimed round of each first: the first optimiser of a process imports torch._dynamo
    # (about 2 s), a one-off cost that must not land on whichever runs first
    warm = ce_recipe(1, tempfile.gettempdir(), args.arch, 5000, args.device)
    run_engine(warm, host)
    run_plain(warm, host)
    pairs, engine_info = [], None
    epoch_pairs: list[dict[str, float]] = []
    for rep in range(args.repeats):
        recipe = ce_recipe(args.epochs, tempfile.gettempdir(), args.arch, args.subset,
                           args.device)
        order = ("engine", "plain") if rep % 2 == 0 else ("plain", "engine")
        times = {}
        for which in order:
            if which == "engine":
                times["engine"], engine_info = run_engine(recipe, host)
            else:
                times["plain"] = run_plain(recipe, host)
        pairs.append(times)
        epochs = run_alongside(recipe)
        epoch_pairs.extend(epochs)
        run_ratio = sum(p["engine"] for p in epochs) / sum(p["plain"] for p in epochs)
        print(f"repeat {rep}: engine {times['engine']:.2f}s plain {times['plain']:.2f}s "
              f"ratio {times['engine'] / times['plain']:.3f}; epoch by epoch: "
              + " ".join(f"{p['engine'] / p['plain']:.3f}" for p in epochs)
              + f" (run {run_ratio:.3f})")
    ratios = [p["engine"] / p["plain"] for p in pairs]
    steady = steady_ratios(pairs)
    epoch_ratios = [p["engine"] / p["plain"] for p in epoch_pairs]
    assert engine_info is not None
    frac = sum(engine_info["append_s"]) / sum(engine_info["epoch_s"])
    out = {
        "epochs": args.epochs, "repeats": args.repeats, "batch_size": 128,
        "arch": args.arch, "model": ARCHS[args.arch][1],
        "train_subset": ARCHS[args.arch][2] if args.subset is None else args.subset,
        "threads": 2, "device": args.device,
        "pairs": pairs, "ratio_mean": statistics.mean(ratios),
        "ratio_std": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
        "ratio_median": statistics.median(ratios),
        # the fastest of each: what the code costs when the machine lets it run undisturbed
        "ratio_of_minima": min(p["engine"] for p in pairs) / min(p["plain"] for p in pairs),
        # the pairs whose two runs both went at the machine's usual pace (see steady_ratios)
        "steady_pairs": len(steady),
        "ratio_median_steady": statistics.median(steady) if steady else None,
        # the same comparison interleaved epoch by epoch (PlainAlongside), one run per repeat
        "epoch_pairs": epoch_pairs,
        "epoch_ratio_median": statistics.median(epoch_ratios),
        "epoch_ratio_quartiles": statistics.quantiles(epoch_ratios, n=4),
        "epoch_ratio_of_sums": (sum(p["engine"] for p in epoch_pairs)
                                / sum(p["plain"] for p in epoch_pairs)),
        "history_append_s": engine_info["append_s"], "epoch_s": engine_info["epoch_s"],
        "history_fraction_of_epoch": frac, "history_columns": engine_info["columns"],
        "history_file_bytes": engine_info["file_bytes"],
        "raw_float32_bytes": engine_info["raw_float32_bytes"],
        "size_ratio_vs_float32": engine_info["file_bytes"] / engine_info["raw_float32_bytes"],
    }
    args.results.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.subset is None else f"_n{args.subset}"
    suffix += "" if args.device == "cpu" else f"_{args.device.replace(':', '')}"
    path = args.results / f"engine_costs_{args.arch}{suffix}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    steady_text = (f"{out['ratio_median_steady']:.3f} over {len(steady)} steady pairs"
                   if steady else "no steady pair")
    print(f"overhead ratio {out['ratio_mean']:.3f} +- {out['ratio_std']:.3f} (median "
          f"{out['ratio_median']:.3f}, ratio of minima {out['ratio_of_minima']:.3f}, median "
          f"{steady_text}); epoch by epoch: median {out['epoch_ratio_median']:.3f} over "
          f"{len(epoch_ratios)} pairs (quartiles {out['epoch_ratio_quartiles'][0]:.3f}-"
          f"{out['epoch_ratio_quartiles'][2]:.3f}), ratio of sums "
          f"{out['epoch_ratio_of_sums']:.3f}; history "
          f"{100 * frac:.2f}% of epoch time; file {out['history_file_bytes'] / 1e6:.2f} MB vs "
          f"{out['raw_float32_bytes'] / 1e6:.2f} MB raw float32 "
          f"({out['size_ratio_vs_float32']:.2f}x)")


if __name__ == "__main__":
    main()
