"""One run in several processes: data parallel training under torchrun.

How a distributed run computes (docs/distributed.md has the user's side):

- **Every rank runs the same program on the same global batch.** The data, the batch order,
  the augmentations, every component's generator and every ledger write are the same on each
  rank; nothing is exchanged to keep them so.
- **Only the models' work is divided.** Each model call (:func:`split_call`, through the run's
  ``forward``, ``features`` and evaluation) computes rows ``rank`` of the global batch cut
  into ``size`` near-equal parts, and gathers the outputs so that every rank holds the whole
  batch's logits and features. Losses, selections, label refinement and component networks
  therefore see exactly what one process would.
- **Gradients.** The gather's backward passes each rank the gradient of its own rows, times
  ``size``; before every optimiser step the gradients are averaged across ranks
  (:func:`average_gradients`). A parameter reached through the gathered rows gets
  ``(size * g_0 + ... + size * g_{size-1}) / size``, the one-process gradient; one reached on
  every rank alike (a component's own network fed the gathered outputs) keeps its value. So
  models and component state stay identical on every rank, and equal, up to the order of
  floating-point sums, to a one-process run at the same global batch.
- **Batch-norm statistics** are each rank's own during an epoch (as in DDP without
  SyncBatchNorm) and averaged across ranks at each epoch's end, before evaluation and the
  checkpoint.

A single process is ``size == 1``: every function here is then the plain computation.
"""

from __future__ import annotations

import contextlib
import math
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import attrs
import torch
from torch import nn


@attrs.frozen
class World:
    """This process's place in the run: ``rank`` of ``size`` processes, ``local_rank`` on its
    machine (the GPU it uses)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    #: how long a collective waits for the other processes before it fails (torch's default
    #: for the backend); none outside a distributed run
    timeout_s: float = math.inf

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0


_SINGLE = World()
_world = _SINGLE
_synced: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()


def world() -> World:
    """This process's :class:`World` (rank 0 of 1 outside a distributed run)."""
    return _world


def is_main() -> bool:
    """Whether this process writes the run's files: always outside a distributed run."""
    return _world.main


def launched() -> bool:
    """Whether torchrun (or another launcher setting ``WORLD_SIZE``) started this process as
    one of several."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


@contextlib.contextmanager
def session(device_type: str, timeout_s: float | None = None) -> Iterator[World]:
    """Join the process group torchrun set up (nccl on CUDA, gloo on the CPU) for the
    duration, averaging every optimiser's gradients before its step; outside torchrun, a
    single process and nothing to do."""
    global _world
    if not launched() or _world.size > 1:
        yield _world
        return
    import torch.distributed as dist

    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = group_timeout(backend, timeout_s)
    dist.init_process_group(backend, timeout=timeout)
    _world = World(dist.get_rank(), dist.get_world_size(),
                   int(os.environ.get("LOCAL_RANK", "0")), timeout.total_seconds())
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    hook = register_optimizer_step_pre_hook(_average_before_step)
    try:
        yield _world
    finally:
        hook.remove()
        _world = _SINGLE
        dist.destroy_process_group()


def group_timeout(backend: str, timeout_s: float | None = None) -> Any:
    """The timeout of a process group's collectives: ``timeout_s`` (``run.distributed_timeout_s``)
    or torch's default for ``backend`` (NCCL's 10 minutes, gloo's 30), passed explicitly so
    that the run knows it."""
    import datetime as dt

    from torch.distributed import constants

    if timeout_s is not None:
        return dt.timedelta(seconds=timeout_s)
    nccl = getattr(constants, "default_pg_nccl_timeout", None)
    return nccl if backend == "nccl" and nccl is not None else constants.default_pg_timeout


def reader_waits(world: World, warn_after_s: float) -> tuple[float, float]:
    """How long rank 0 waits for a reader that holds the history open before it warns, and
    then before it gives up. Its other processes wait in their next collective and fail at the
    group's timeout, so it must give up first, with its own message: a minute before (a
    quarter of the timeout when that is shorter), warning half-way at the latest. In one
    process: the warning after ``warn_after_s``, then no limit."""
    if world.size == 1:
        return warn_after_s, math.inf
    give_up = world.timeout_s - min(60.0, world.timeout_s / 4)
    warn = min(warn_after_s, give_up / 2)
    return warn, give_up - warn


def _average_before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    if optimizer in _synced:
        return
    average_gradients(p for group in optimizer.param_groups for p in group["params"])


def step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
    """One optimiser step, through ``scaler`` when given. In a distributed run the gradients
    are averaged first, so that a step the scaler skips (after an overflow) is skipped on every
    rank alike, and the step itself does not average again. In one process, the step alone:
    this runs every batch."""
    if _world.size > 1:
        average_gradients(p for group in optimizer.param_groups for p in group["params"])
        _synced.add(optimizer)
    try:
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
    finally:
        _synced.discard(optimizer)


def local_gpu() -> torch.device:
    """This process's GPU: ``cuda:<local rank>``.

    Raises:
        KdcoreError: the machine has fewer GPUs than processes.
    """
    from kdcore.errors import KdcoreError

    count = torch.cuda.device_count()
    if _world.local_rank >= count:
        raise KdcoreError(f"process {_world.local_rank} of this machine needs GPU "
                          f"{_world.local_rank}, but it has {count}: start at most {count} "
                          f"processes per machine, or set run.device = \"cpu\"")
    device = torch.device("cuda", _world.local_rank)
    torch.cuda.set_device(device)
    return device


def row_counts(n: int, size: int) -> list[int]:
    """How many of ``n`` rows each rank computes: ``torch.tensor_split``'s near-equal parts."""
    base, extra = divmod(n, size)
    return [base + (r < extra) for r in range(size)]


def local_rows(n: int) -> slice:
    """The rows of an ``n``-row batch this rank computes."""
    counts = row_counts(n, _world.size)
    start = sum(counts[:_world.rank])
    return slice(start, start + counts[_world.rank])


class _GatheredRows(torch.autograd.Function):
    """Every rank's rows, gathered already (``whole``, in rank order; several outputs may have
    shared one collective), tied to this rank's ``local`` rows; backward: this rank's rows of
    the gradient, times the number of ranks (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, whole: torch.Tensor, counts: list[int]
                ) -> torch.Tensor:
        rank = _world.rank
        ctx.rows = slice(sum(counts[:rank]), sum(counts[:rank + 1]))
        ctx.size = _world.size
        return whole.clone()  # an output of its own, not the input handed back

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad[ctx.rows] * ctx.size, None, None


def _all_gather_rows(local: torch.Tensor, counts: list[int]) -> torch.Tensor:
    import torch.distributed as dist

    most = max(counts)
    padded = local.detach().contiguous()
    if padded.shape[0] < most:  # all_gather takes equal shapes
        pad = padded.new_zeros((most - padded.shape[0], *padded.shape[1:]))
        padded = torch.cat([padded, pad])
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:c] for part, c in zip(parts, counts)])


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n``-row tensor of which this rank holds rows :func:`local_rows` (``local``), on
    every rank; differentiable as described in the module docstring."""
    if _world.size == 1:
        return local
    counts = row_counts(n, _world.size)
    whole = _all_gather_rows(local, counts)
    return _GatheredRows.apply(local, whole, counts) if local.requires_grad else whole


def split_call(fn: Callable[[torch.Tensor], Sequence[torch.Tensor]], x: torch.Tensor
               ) -> tuple[torch.Tensor, ...]:
    """``fn(x)`` with the rows divided among the ranks and the outputs gathered: each rank
    computes its part, every rank gets the whole. ``fn`` must treat rows independently (a
    model in eval mode; in training mode, batch-norm statistics are the part's)."""
    if _world.size == 1:
        return tuple(fn(x))
    n = x.shape[0]
    outs = tuple(fn(x[local_rows(n)]))
    if len({o.dtype for o in outs}) > 1:
        return tuple(gather_rows(o, n) for o in outs)
    # one collective for all the outputs (logits and features): each one waits for the
    # slowest rank
    widths = [math.prod(o.shape[1:]) for o in outs]
    counts = row_counts(n, _world.size)
    # widths given, not -1: a rank whose share is empty (fewer rows than ranks) has 0 rows
    whole = _all_gather_rows(torch.cat([o.reshape(o.shape[0], w) for o, w in zip(outs, widths)],
                                       dim=1), counts)
    # each output its own backward: one the loss leaves unused (the logits of a term on
    # features alone) sends no gradient, so the layers only it reaches keep none, as in one
    # process (a gradient of zeros had let momentum and weight decay move them)
    return tuple(_GatheredRows.apply(o, part.reshape(n, *o.shape[1:]), counts)
                 if o.requires_grad else part.reshape(n, *o.shape[1:])
                 for part, o in zip(whole.split(widths, dim=1), outs))


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Average the gradients of ``params`` across ranks in one collective. A parameter with a
    gradient on any rank gets one everywhere (zero where a rank had none); one with none on
    every rank keeps none, as in a single process."""
    if _world.size == 1:
        return
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    if not params:
        return
    grads = [p.grad.detach().reshape(-1) if p.grad is not None
             else torch.zeros(p.numel(), device=p.device, dtype=p.dtype) for p in params]
    flags = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype,
                         device=grads[0].device)
    flat = torch.cat([*grads, flags])
    dist.all_reduce(flat)
    flat /= _world.size
    offset = 0
    for p, flag in zip(params, flat[-len(params):].tolist()):
        part = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
        if flag > 0:
            if p.grad is None:
                p.grad = part.clone()
            else:
                p.grad.copy_(part)


class _SumAcrossRanks(torch.autograd.Function):
    """The sum over the ranks; its gradient is the sum of theirs (differentiable again)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _SumAcrossRanks.apply(grad)


def mean_across_ranks(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The mean of each of ``tensors`` over the ranks, differentiable (one collective).

    For a component that takes gradients of a model's parameters itself
    (``torch.autograd.grad``): each rank gets only its rows' share of them, times the number
    of ranks (see the module docstring); their mean is the one-process gradient, and
    everything computed from it is the same on every rank. A look-ahead step passes its
    ``create_graph`` gradients through this before using them."""
    tensors = list(tensors)
    if _world.size == 1 or not tensors:
        return tensors
    flat = _SumAcrossRanks.apply(torch.cat([t.reshape(-1) for t in tensors])) / _world.size
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]),
                                                tensors)]


def average_buffers(*models: nn.Module) -> None:
    """Average the ``models``' floating-point buffers (batch-norm running statistics) across
    ranks, in one collective."""
    if _world.size == 1:
        return
    import torch.distributed as dist

    buffers = [b for model in models for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.detach().reshape(-1).float() for b in buffers])
    dist.all_reduce(flat)
    flat /= _world.size
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a Python object; small)."""
    if _world.size == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank."""
    if _world.size > 1:
        import torch.distributed as dist

        dist.barrier()


__all__ = ["World", "average_buffers", "average_gradients", "barrier", "broadcast",
           "gather_rows", "is_main", "launched", "local_rows", "mean_across_ranks", "row_counts",
           "session", "split_call", "step", "world"]
