"""kdcore.distributed's collectives with several ranks, simulated in one process: one thread per
rank, each with its own :class:`~kdcore.distributed.World`, and torch.distributed's
collectives replaced by an exchange between the threads (sums in rank order). The rows each
rank computes, how they are gathered and differentiated, how gradients, buffers and means are
averaged, are compared with what one process computes; the real thing, gloo between torchrun
workers, is tests/test_distributed.py's slow tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist

from kdcore import distributed
from kdcore.distributed import World

_local = threading.local()


class _ThreadWorld:
    """``distributed._world`` as each thread sees it: that thread's :class:`World`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_local.world, name)


class _Exchange:
    """torch.distributed's collectives between the rank threads."""

    def __init__(self, size: int):
        self.size = size
        self.barrier_ = threading.Barrier(size, timeout=20)
        self.slots: list[Any] = [None] * size
        self.calls: list[str] = []

    def _swap(self, value: Any) -> list[Any]:
        self.slots[_local.world.rank] = value
        self.barrier_.wait()
        values = list(self.slots)
        self.barrier_.wait()  # every rank has read before the next collective writes
        return values

    def _record(self, name: str) -> None:
        if _local.world.rank == 0:
            self.calls.append(name)

    def all_gather(self, parts: list[torch.Tensor], tensor: torch.Tensor) -> None:
        assert all(p.shape == tensor.shape for p in parts)  # gloo's rule: equal shapes
        self._record("all_gather")
        for part, value in zip(parts, self._swap(tensor.clone())):
            part.copy_(value)

    def all_reduce(self, tensor: torch.Tensor) -> None:
        self._record("all_reduce")
        values = self._swap(tensor.clone())
        total = values[0].clone()
        for value in values[1:]:
            total += value
        tensor.copy_(total)

    def broadcast_object_list(self, box: list[Any], src: int = 0) -> None:
        self._record("broadcast")
        box[:] = self._swap(list(box))[src]

    def barrier(self) -> None:
        self._record("barrier")
        self._swap(None)


@pytest.fixture
def ranks(monkeypatch) -> Callable[..., list[Any]]:
    """``ranks(size, fn)``: ``fn(rank)`` on each of ``size`` simulated ranks; their results."""
    monkeypatch.setattr(distributed, "_world", _ThreadWorld())
    exchanges: list[_Exchange] = []

    def run(size: int, fn: Callable[[int], Any]) -> list[Any]:
        exchange = _Exchange(size)
        exchanges.append(exchange)
        for name in ("all_gather", "all_reduce", "broadcast_object_list", "barrier"):
            monkeypatch.setattr(dist, name, getattr(exchange, name))
        results: list[Any] = [None] * size
        errors: list[BaseException] = []

        def one(rank: int) -> None:
            _local.world = World(rank, size, rank)
            try:
                results[rank] = fn(rank)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                errors.append(exc)
                exchange.barrier_.abort()

        threads = [threading.Thread(target=one, args=(r,)) for r in range(size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        if errors:
            raise errors[0]
        return results

    run.exchanges = exchanges  # type: ignore[attr-defined]
    return run


def _rows(n: int, size: int, rank: int) -> slice:
    counts = [len(range(n)[r::size]) for r in range(size)]  # near-equal, larger first
    start = sum(counts[:rank])
    return slice(start, start + counts[rank])


@pytest.mark.parametrize("n, size", [(5, 3), (6, 2), (2, 3), (1, 4), (7, 4)])
def test_each_rank_computes_its_rows_in_rank_order(ranks, n, size):
    got = ranks(size, lambda rank: distributed.local_rows(n))
    assert got == [_rows(n, size, r) for r in range(size)]
    assert distributed.row_counts(n, size) == [s.stop - s.start for s in got]


@pytest.mark.parametrize("n, size", [(5, 3), (6, 2), (2, 3)])
def test_gathered_rows_are_the_whole_tensor_on_every_rank(ranks, n, size):
    whole = torch.arange(n * 4, dtype=torch.float32).reshape(n, 2, 2)

    def gathered(rank: int) -> torch.Tensor:
        return distributed.gather_rows(whole[distributed.local_rows(n)], n)

    for out in ranks(size, gathered):
        assert torch.equal(out, whole)


def test_the_gathered_rows_gradient_is_this_ranks_rows_times_the_ranks(ranks):
    n, size = 5, 3
    whole = torch.linspace(-1, 1, n * 3).reshape(n, 3)
    weights = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)

    def grad(rank: int) -> torch.Tensor:
        local = whole[distributed.local_rows(n)].clone().requires_grad_(True)
        out = distributed.gather_rows(local, n)
        assert torch.equal(out.detach(), whole)
        (out * weights).sum().backward()
        return local.grad

    for rank, g in enumerate(ranks(size, grad)):
        # each rank's loss counts every row; the rows' owner takes size times its share, so
        # that averaging the parameters' gradients over the ranks gives one process's
        torch.testing.assert_close(g, weights[_rows(n, size, rank)] * size, rtol=0, atol=0)


@pytest.mark.parametrize("n, size", [(5, 3), (2, 3), (4, 2)])
def test_split_call_gives_every_rank_the_whole_output_from_its_share(ranks, n, size):
    x = torch.linspace(0, 1, n * 4).reshape(n, 4)
    seen: dict[int, int] = {}

    def fn(rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if hasattr(_local, "world"):  # on a rank, not the test's own call
            seen[distributed.world().rank] = rows.shape[0]
        return rows @ torch.ones(4, 3), rows.reshape(-1, 2, 2) * 2

    def mixed(rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fn(rows)
        return rows.sum(1), (rows[:, 0] * 10).long()  # two dtypes: gathered one by one

    for f, collectives in ((fn, ["all_gather"]), (mixed, ["all_gather"] * 2)):
        expected = f(x)
        seen.clear()
        for out in ranks(size, lambda rank, f=f: distributed.split_call(f, x)):
            assert len(out) == len(expected)
            for got, want in zip(out, expected):
                assert got.dtype == want.dtype and torch.equal(got, want)
        assert ranks.exchanges[-1].calls == collectives  # the outputs of one dtype at once
        assert seen == {r: distributed.row_counts(n, size)[r] for r in range(size)}


def test_an_output_the_loss_leaves_unused_sends_no_gradient_back(ranks):
    """A term on features alone (SSL pre-training) left the classifier with no gradient in one
    process and with zeros in two (logits and features were gathered as one tensor, one
    backward), so momentum and weight decay moved it there: 2 processes drifted from 1."""
    n, size = 5, 2
    x = torch.linspace(-1, 1, n * 3).reshape(n, 3)
    weights = torch.arange(n * 4, dtype=torch.float32).reshape(n, 4)

    def grads(rank: int) -> tuple[Any, torch.Tensor]:
        torch.manual_seed(0)
        trunk, head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)

        def model(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = trunk(rows)
            return head(features), features

        logits, features = distributed.split_call(model, x)
        assert logits.shape == (n, 2) and features.shape == (n, 4)
        (features * weights).sum().backward()
        return head.weight.grad, trunk.weight.grad

    torch.manual_seed(0)
    trunk = torch.nn.Linear(3, 4)
    (trunk(x) * weights).sum().backward()
    results = ranks(size, grads)
    for head_grad, _ in results:
        assert head_grad is None  # as in one process: the logits took no part in the loss
    # each rank's rows count size times; averaged over the ranks, one process's gradient
    torch.testing.assert_close(sum(g for _, g in results) / size, trunk.weight.grad)


def test_gradients_are_averaged_and_a_missing_one_counts_as_zero(ranks):
    size = 3

    def averaged(rank: int) -> list[torch.Tensor | None]:
        a = torch.nn.Parameter(torch.zeros(2, 2))
        b = torch.nn.Parameter(torch.zeros(3))
        never = torch.nn.Parameter(torch.zeros(1))  # no gradient on any rank
        frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
        c = torch.nn.Parameter(torch.zeros(2))
        a.grad = torch.full((2, 2), float(rank + 1))
        if rank != 1:
            b.grad = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)
        frozen.grad = torch.full((2,), 7.0 * rank)  # not averaged: not trained
        c.grad = torch.tensor([10.0, -10.0]) * rank
        distributed.average_gradients([a, b, never, frozen, c])
        return [a.grad, b.grad, never.grad, frozen.grad, c.grad]

    for rank, (a, b, never, frozen, c) in enumerate(ranks(size, averaged)):
        torch.testing.assert_close(a, torch.full((2, 2), (1 + 2 + 3) / 3))
        torch.testing.assert_close(b, torch.tensor([1.0, 2.0, 3.0]) * (1 + 3) / 3)  # rank 1: 0
        torch.testing.assert_close(c, torch.tensor([10.0, -10.0]))  # (0 + 1 + 2) / 3
        assert never is None
        torch.testing.assert_close(frozen, torch.full((2,), 7.0 * rank))


def test_a_step_averages_the_gradients_once(ranks):
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    hook = register_optimizer_step_pre_hook(distributed._average_before_step)  # as session()

    def stepped(rank: int) -> torch.Tensor:
        p = torch.nn.Parameter(torch.ones(2))
        opt = torch.optim.SGD([p], lr=1.0)
        p.grad = torch.tensor([1.0, -1.0]) * rank
        distributed.step(opt)
        assert opt not in distributed._synced  # the next step averages again
        plain = torch.nn.Parameter(torch.ones(2))
        other = torch.optim.SGD([plain], lr=1.0)
        plain.grad = torch.tensor([2.0, 0.0]) * rank
        other.step()  # a component's own optimiser: the hook averages
        return torch.stack([p.detach(), plain.detach()])

    try:
        results = ranks(2, stepped)
    finally:
        hook.remove()
    for out in results:
        torch.testing.assert_close(out, torch.tensor([[0.5, 1.5], [0.0, 1.0]]))
    assert ranks.exchanges[-1].calls == ["all_reduce", "all_reduce"]  # one for each step


@pytest.mark.parametrize("size", [3, 2])
def test_means_across_ranks_and_their_gradient(ranks, size):

    def mean(rank: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        t = torch.tensor([1.0, 2.0]) * (rank + 1)
        t.requires_grad_(True)
        u = torch.full((2, 2), float(rank))
        out = distributed.mean_across_ranks([t, u])
        (out[0] * (rank + 1)).sum().backward()
        return [o.detach() for o in out], t.grad

    average = (size + 1) / 2  # of 1 .. size
    for values, grad in ranks(size, mean):
        torch.testing.assert_close(values[0], torch.tensor([1.0, 2.0]) * average)
        torch.testing.assert_close(values[1], torch.full((2, 2), (size - 1) / 2))
        torch.testing.assert_close(grad, torch.full((2,), average))  # the weights' mean
    assert ranks(size, lambda rank: distributed.mean_across_ranks([])) == [[]] * size


def test_buffers_are_averaged_and_integer_ones_left(ranks):
    def buffers(rank: int) -> dict[str, torch.Tensor]:
        bn = torch.nn.BatchNorm1d(2)
        bn.running_mean.fill_(float(rank))
        bn.running_var.fill_(2.0 * rank + 1)
        bn.num_batches_tracked.fill_(rank + 5)
        lin = torch.nn.Linear(2, 2)  # no buffers
        other = torch.nn.BatchNorm1d(3)
        other.running_mean.fill_(6.0 * rank)
        distributed.average_buffers(bn, lin, other)
        return {k: v.clone() for k, v in bn.state_dict().items() if "running" in k
                or "tracked" in k} | {"other": other.running_mean.clone()}

    for rank, got in enumerate(ranks(2, buffers)):
        torch.testing.assert_close(got["running_mean"], torch.full((2,), 0.5))
        torch.testing.assert_close(got["running_var"], torch.full((2,), 2.0))
        torch.testing.assert_close(got["other"], torch.full((3,), 3.0))
        assert int(got["num_batches_tracked"]) == rank + 5
    assert ranks(2, lambda rank: distributed.average_buffers(torch.nn.Linear(1, 1))) == [None] * 2


def test_broadcast_gives_rank_0s_object_and_barrier_waits_for_all(ranks):
    assert ranks(3, lambda rank: distributed.broadcast({"rank": rank})) == [{"rank": 0}] * 3
    assert ranks.exchanges[-1].calls == ["broadcast"]
    arrived: list[int] = []

    def wait(rank: int) -> int:
        arrived.append(rank)
        distributed.barrier()
        return len(arrived)  # every rank arrived before any left

    assert ranks(3, wait) == [3, 3, 3]
    ranks(2, lambda rank: distributed.barrier())
    assert ranks.exchanges[-1].calls == ["barrier"]


def test_one_process_calls_no_collective(ranks):
    ranks(1, lambda rank: (distributed.barrier(), distributed.broadcast(1),
                           distributed.average_buffers(torch.nn.BatchNorm1d(1)),
                           distributed.average_gradients([torch.nn.Parameter(torch.ones(1))])))
    assert ranks.exchanges[-1].calls == []


@pytest.mark.parametrize("value, launched", [("4", True), ("1", False), ("", False),
                                             ("two", False), (None, False)])
def test_launched_by_world_size(monkeypatch, value, launched):
    if value is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", value)
    assert distributed.launched() is launched


def test_the_process_groups_timeout_is_torchs_default_for_its_backend():
    import datetime as dt

    assert distributed.group_timeout("gloo") == dt.timedelta(minutes=30)
    assert distributed.group_timeout("nccl") == dt.timedelta(minutes=10)


def test_a_recipes_timeout_replaces_torchs_default():
    import datetime as dt

    assert distributed.group_timeout("gloo", 20.0) == dt.timedelta(seconds=20)
    assert distributed.group_timeout("nccl", 3600) == dt.timedelta(hours=1)


@pytest.mark.parametrize(("world", "warned", "waits"), [
    (World(), 60.0, (60.0, float("inf"))),               # one process: as long as it takes
    (World(0, 2, 0, 600.0), 60.0, (60.0, 480.0)),        # gives up a minute before the others
    (World(0, 4, 0, 1800.0), 60.0, (60.0, 1680.0)),
    (World(0, 2, 0, 1800.0), 30.0, (30.0, 1710.0)),
    (World(0, 2, 0, 240.0), 60.0, (60.0, 120.0)),        # a minute is a quarter: either way
    (World(0, 2, 0, 100.0), 60.0, (37.5, 37.5)),         # a quarter before; warned half-way
    (World(0, 2, 0, 20.0), 60.0, (7.5, 7.5)),
    (World(0, 2, 0, 20.0), 5.0, (5.0, 10.0)),            # an earlier warning kept
])
def test_rank_0_waits_for_a_reader_less_than_its_other_processes_wait_for_it(world, warned,
                                                                             waits):
    assert distributed.reader_waits(world, warned) == waits
