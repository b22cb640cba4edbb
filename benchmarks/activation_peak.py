"""How a training step's peak memory compares with what `kdcore.footprint.saved_per_row`
reckons: the bytes the forward pass saves for its backward pass, which `check` holds to the free
memory as a lower bound.

Each case runs in a fresh process (a process's peak RSS only grows): a model built on the CPU,
one SGD step (momentum 0.9) on 4 rows to warm the allocator and make the optimiser's state, then
one step on the case's batch; the peak RSS growth of that step against ``rows x saved_per_row``
measured on the meta device.

Usage:  .venv/bin/python benchmarks/activation_peak.py
Prints one line per case: the saved bytes, the step's peak growth and their ratio (at least 1
where the reckoning is a lower bound).
"""

from __future__ import annotations

import ast
import gc
import os
import resource
import subprocess
import sys

CASES = [
    ("cnn", 2000, {"channels": [128, 256], "hidden": 64}, (1, 28, 28)),
    ("mlp", 50000, {"hidden": [2048, 2048]}, (784,)),
    ("mlp", 50000, {"hidden": [2048, 2048], "batch_norm": True, "dropout": 0.5}, (784,)),
    ("resnet20", 1000, {}, (3, 32, 32)),
]


def one(arch: str, rows: int, params: dict, shape: tuple[int, ...]) -> str:
    import torch

    from kdcore.footprint import saved_per_row
    from kdcore.models.base import ModelSpec
    from kdcore.models.zoo import MODELS

    torch.manual_seed(0)
    spec = ModelSpec(shape, 10)
    with torch.device("meta"):
        per_row = saved_per_row(MODELS[arch](spec, **params), shape)
    assert per_row is not None
    model = MODELS[arch](spec, **params).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(rows, *shape), torch.randint(0, 10, (rows,))

    def step(n: int) -> None:
        logits, _ = model(x[:n])
        torch.nn.functional.cross_entropy(logits, y[:n]).backward()
        opt.step()
        opt.zero_grad()

    step(4)
    gc.collect()
    start = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    step(rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    saved = per_row * rows
    return (f"{arch} {params} rows {rows}: saved {saved / 2**30:.2f} GiB, step's peak growth "
            f"{(peak - start) / 2**30:.2f} GiB = {(peak - start) / saved:.2f}x")


def main() -> None:
    if len(sys.argv) > 1:  # one case, in this fresh process
        print(one(*ast.literal_eval(sys.argv[1])))
        return
    for case in CASES:
        subprocess.run([sys.executable, __file__, repr(case)], check=True)


if __name__ == "__main__":
    main()
