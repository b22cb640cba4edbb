"""Engine images/s against a bare DistributedDataParallel loop: CIFAR ResNet-20, N processes.

Both sides train the same ResNet-20 (kdcore's ``resnet20``, same initialisation) with cross-
entropy on the same generated CIFAR-10-shaped images (``kdcore.testing.write_cifar10``; the
machine has no network), at the same global batch, in N processes started by torchrun (gloo on
the CPU, nccl on GPUs), and evaluate validation and test accuracy every epoch:

- **engine**: ``kdcore run RECIPE --nproc N``. An epoch is timed from one epoch's start to the
  next (history row and checkpoint included).
- **bare**: this file under torchrun (``--bare``). It wraps the model in
  ``DistributedDataParallel``, gives each rank its part of each global batch of a random
  permutation, and evaluates each rank's part of the validation and test sets.

images/s = training images / epoch seconds. Each run's figure is its fastest epoch after the
first (warm-up): on a shared machine other work only ever slows an epoch down, so the fastest
one is the closest to the code's own speed (the mean over epochs is recorded too). The two sides
alternate ``--repeats`` times so that slow spells hit both alike; the ratio is per pair.

Usage:  .venv/bin/python benchmarks/ddp_throughput.py [--nproc 2] [--device cpu|cuda]
            [--train 2560] [--epochs 4] [--repeats 3]
Writes benchmarks/results/ddp_throughput_<device>.json (or --results DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BATCH = 128
VAL_FRACTION = 0.1


# -- the engine side's epoch timer (loaded in each worker through --plugin) ------------------

def _timer_plugin() -> object:
    import kdcore

    class Timer:
        starts: list[float] = []

        @kdcore.hookimpl
        def kdcore_epoch_start(self, ctx: object, epoch: int) -> None:
            self.starts.append(time.perf_counter())

        @kdcore.hookimpl
        def kdcore_run_end(self, ctx: object, summary: object) -> None:
            from kdcore import distributed

            if distributed.is_main():
                ends = [*self.starts[1:], time.perf_counter()]
                Path(os.environ["KDCORE_BENCH_TIMES"]).write_text(json.dumps(
                    [b - a for a, b in zip(self.starts, ends)]))

    return Timer()


def __getattr__(name: str) -> object:  # ``--plugin ddp_throughput:TIMER``
    if name == "TIMER":
        return _timer_plugin()
    raise AttributeError(name)


# -- the recipe ------------------------------------------------------------------------------

def recipe_toml(root: Path, epochs: int, device: str, out: Path) -> str:
    from kdcore.recipe import recipe_from_dict

    recipe = recipe_from_dict({
        # the default checkpoint interval: a checkpoint after the first epoch, then every 5 min
        "run": {"name": "ddp-bench", "seed": 0, "device": device, "output_dir": str(out)},
        "data": {"dataset": "cifar10", "params": {"root": str(root)}, "batch_size": BATCH,
                 "eval_batch_size": 500, "val_fraction": VAL_FRACTION,
                 "noise": {"model": "symmetric", "params": {"rate": 0.4}}},
        "models": {"student": {"arch": "resnet20", "params": {"width": 16},
                               "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9,
                                             "weight_decay": 5e-4}}},
        "stages": [{"name": "student", "epochs": epochs, "train": ["student"],
                    "components": [{"use": "ce"}]}],
    })
    return recipe.to_toml()


# -- the bare side (one torchrun worker) ---------------------------------------------------------

def bare_worker(recipe_path: Path, epochs: int, times_path: Path, device_type: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from kdcore import PluginHost, load_recipe
    from kdcore.plan import build_plan
    from kdcore.prepare import prepare_run

    rank_local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(rank_local)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    # the engine's own data and model (same splits, noise, initialisation), nothing else of it
    recipe = load_recipe(recipe_path)
    host = PluginHost()
    run = prepare_run(build_plan(recipe, host), host, Path(tempfile.mkdtemp()))
    device = torch.device(device_type, rank_local) if device_type == "cuda" else run.device
    model = run.models["student"].to(device)
    data = run.data
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x_train = data.inputs(data.train, slice(None)).to(device)
    y_train = data.train_noisy.to(device)
    gen = torch.Generator().manual_seed(2)
    n = len(y_train)
    times = []
    for _ in range(epochs):
        dist.barrier()
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, BATCH):
            rows = order[start:start + BATCH].tensor_split(size)[rank]
            opt.zero_grad(set_to_none=True)
            logits, _ = ddp(x_train[rows])
            F.cross_entropy(logits, y_train[rows]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for split, labels in ((data.val, data.val_noisy), (data.test, data.test.y)):
                xs = data.inputs(split, slice(None)).to(device).tensor_split(size)[rank]
                ys = labels.to(device).tensor_split(size)[rank]
                right = torch.zeros((), device=device)
                for part, ypart in zip(xs.split(500), ys.split(500)):
                    right += (model(part)[0].argmax(1) == ypart).sum()
                dist.all_reduce(right)
        dist.barrier()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        times_path.write_text(json.dumps(times))
    dist.destroy_process_group()


# -- the driver ----------------------------------------------------------------------------------

def _torchrun(nproc: int, args: list[str], env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def measure(nproc: int, device: str, n_train: int, epochs: int, repeats: int) -> dict:
    from kdcore.testing import write_cifar10

    work = Path(tempfile.mkdtemp(prefix="ddp-bench-"))
    root = write_cifar10(work / "data", n_train=n_train, n_test=n_train // 5)
    recipe = work / "recipe.toml"
    recipe.write_text(recipe_toml(root, epochs, device, work / "runs"))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    train_images = n_train - round(n_train * VAL_FRACTION)
    pairs = []
    for i in range(repeats):
        times_engine = work / f"engine-{i}.json"
        _torchrun(nproc, ["-m", "kdcore", "run", str(recipe), "--out", str(work / f"run-{i}"),
                          "-q", "--plugin", "ddp_throughput:TIMER"],
                  {**env, "KDCORE_BENCH_TIMES": str(times_engine)})
        times_bare = work / f"bare-{i}.json"
        _torchrun(nproc, [str(Path(__file__).resolve()), "--bare", str(recipe),
                          "--epochs", str(epochs), "--times", str(times_bare),
                          "--device", device], env)
        engine = json.loads(times_engine.read_text())[1:]
        bare = json.loads(times_bare.read_text())[1:]
        pair = {"engine_images_s": train_images / min(engine),
                "bare_images_s": train_images / min(bare),
                "engine_images_s_over_mean_epoch": train_images / statistics.mean(engine),
                "bare_images_s_over_mean_epoch": train_images / statistics.mean(bare),
                "engine_epoch_s": engine, "bare_epoch_s": bare}
        pair["ratio"] = pair["engine_images_s"] / pair["bare_images_s"]
        print(f"pair {i + 1}/{repeats}: engine {pair['engine_images_s']:.1f} images/s, bare "
              f"DDP {pair['bare_images_s']:.1f} images/s, ratio {pair['ratio']:.3f}", flush=True)
        pairs.append(pair)
    ratios = [p["ratio"] for p in pairs]
    return {
        "nproc": nproc, "device": device, "arch": "resnet20", "global_batch": BATCH,
        "train_images": train_images, "epochs_timed": epochs - 1, "pairs": pairs,
        "ratio_median": statistics.median(ratios),
        "ratio_mean": statistics.mean(ratios),
        "ratio_sd": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
        "ratio_min": min(ratios), "ratio_max": max(ratios),
        "engine_images_s_mean": statistics.mean(p["engine_images_s"] for p in pairs),
        "bare_images_s_mean": statistics.mean(p["bare_images_s"] for p in pairs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--train", type=int, default=2560, help="generated training images")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--bare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--times", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare_worker(args.bare, args.epochs, args.times, args.device)
        return
    t0 = time.time()
    result = measure(args.nproc, args.device, args.train, args.epochs, args.repeats)
    result["wall_s"] = round(time.time() - t0, 1)
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"ddp_throughput_{args.device}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"engine/bare ratio median {result['ratio_median']:.3f}, mean "
          f"{result['ratio_mean']:.3f} +- {result['ratio_sd']:.3f} (min {result['ratio_min']:.3f}, "
          f"max {result['ratio_max']:.3f}); engine {result['engine_images_s_mean']:.1f} "
          f"images/s, bare {result['bare_images_s_mean']:.1f}; written to {path}")


if __name__ == "__main__":
    main()
