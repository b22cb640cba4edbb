"""The process-wide torch settings a run changes, and keeping them for its caller.

``run.deterministic`` asks for the same numbers from the same seed on a GPU too. On the CPU
torch's kernels give the same result for the same inputs every time, so a run is reproduced by
its seed, and resumed, bit for bit, whatever this says. On CUDA several kernels do not by
default: cuDNN may pick a convolution algorithm whose sums run in another order, the atomics of
scatter and index additions add in the order threads arrive, and cuBLAS may split a product by
the streams' workspaces. ``run.deterministic = true`` asks torch for its deterministic kernels
(:func:`torch.use_deterministic_algorithms`, warn-only: an operation with none warns, naming
itself, instead of stopping the run), turns cuDNN's autotuner off, and fixes cuBLAS's workspace
(``CUBLAS_WORKSPACE_CONFIG``, where the environment does not set it), at some cost in speed on
a GPU. ``false`` leaves torch as the process has it (torch's defaults: the fastest kernels).

These are settings of the whole process: :func:`torch_state_kept` gives the caller of a run
back what it had, as it does the random states and the thread count.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from kdcore import distributed

# cuBLAS's documented setting for reproducible products: eight 4 MiB workspaces
CUBLAS_WORKSPACE_CONFIG = ":4096:8"
_CUBLAS = "CUBLAS_WORKSPACE_CONFIG"


def make_deterministic() -> None:
    """Torch's deterministic kernels for the rest of the process (until
    :func:`torch_state_kept` restores the caller's settings)."""
    os.environ.setdefault(_CUBLAS, CUBLAS_WORKSPACE_CONFIG)  # read when cuBLAS runs a product
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


@contextlib.contextmanager
def torch_state_kept(device: torch.device) -> Iterator[None]:
    """Torch's random states (the CPU's and ``device``'s), thread count and determinism
    settings as the block found them: a run seeds the generators, sets ``run.threads`` and
    ``run.deterministic``, which must not carry over into the program that called
    :func:`kdcore.run_recipe` (a notebook's next draws, a grid's next run)."""
    threads = torch.get_num_threads()
    algorithms = (torch.are_deterministic_algorithms_enabled(),
                  torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    cublas = os.environ.get(_CUBLAS)
    # a torchrun worker has no caller to keep the GPU's state for, and reading it now, before
    # the worker picks its GPU, would put a CUDA context of every worker on GPU 0
    gpu = device.type == "cuda" and not distributed.launched()
    with torch.random.fork_rng(devices=[device] if gpu else []):
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(algorithms[0], warn_only=algorithms[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
            if cublas is None:
                os.environ.pop(_CUBLAS, None)
            else:
                os.environ[_CUBLAS] = cublas


__all__ = ["CUBLAS_WORKSPACE_CONFIG", "make_deterministic", "torch_state_kept"]
