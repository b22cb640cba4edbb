"""``kdcore run --nproc N``: start a run's worker processes on this machine through PyTorch's
elastic launcher, exactly as ``torchrun --standalone --nproc-per-node N -m kdcore run ...``
would (several machines: run torchrun itself; docs/distributed.md)."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from kdcore.errors import KdcoreError

# OMP threads per worker when the user set none: torchrun's own default, without its banner
DEFAULT_THREADS = "1"


def launch(nproc: int, kdcore_args: Sequence[str]) -> None:
    """Run ``python -m kdcore <kdcore_args>`` in ``nproc`` processes and wait for them.

    Raises:
        KdcoreError: a worker failed (its own message is above, on stderr).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise KdcoreError(f"--nproc must be at least 1, got {nproc}")
    threads = os.environ.get("OMP_NUM_THREADS")
    # the workers inherit it; this process gets its own value back (it may go on computing)
    os.environ["OMP_NUM_THREADS"] = threads or DEFAULT_THREADS
    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "--module",
         "kdcore", *kdcore_args])
    # the elastic agent logs each worker's exit at ERROR with a multi-line report; the
    # worker has already said why in one line
    quiet = [logging.getLogger(name) for name in ("torch.distributed.elastic",
                                                  "torch.distributed.run")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as exc:
        ranks = ", ".join(str(r) for r in sorted(exc.failures))
        codes = sorted({f.exitcode for f in exc.failures.values()})
        raise KdcoreError(f"worker process(es) {ranks} of {nproc} failed (exit code "
                          f"{', '.join(map(str, codes))}); their messages are above") from None
    except SignalException as exc:  # the launcher stopped its workers and then itself
        if exc.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise KdcoreError(f"stopped by {signal.Signals(exc.sigval).name}; continue with "
                          f"--resume") from None
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)


def check_gpus(device: str, nproc: int) -> None:
    """Refuse more processes than GPUs when the run is on CUDA (one GPU per process).

    Raises:
        KdcoreError: ``nproc`` exceeds this machine's GPUs.
    """
    import torch

    from kdcore.device import resolve_device

    if resolve_device(device).type != "cuda":
        return
    count = torch.cuda.device_count()
    if nproc > count:
        raise KdcoreError(f"--nproc {nproc}: a CUDA run takes one GPU per process and this "
                          f"machine has {count}; use --nproc {count}, or set "
                          f"run.device = \"cpu\" for CPU processes")


def worker_args(recipe: Path, overrides: Sequence[str], out: str | None, resume: bool,
                overwrite: bool, quiet: bool, progress: bool | None, plugins: Sequence[str],
                strict_plugins: bool) -> list[str]:
    """The ``kdcore`` arguments of each worker of ``run --nproc``: the same run."""
    args = ["run", str(recipe)]
    if progress is not None:
        args.append("--progress" if progress else "--no-progress")
    for value in overrides:
        args += ["--set", value]
    for plugin in plugins:
        args += ["--plugin", plugin]
    if out is not None:
        args += ["--out", out]
    args += ["--resume"] * resume + ["--overwrite"] * overwrite + ["--quiet"] * quiet
    return args + ["--strict-plugins"] * strict_plugins


__all__ = ["check_gpus", "launch", "worker_args"]
