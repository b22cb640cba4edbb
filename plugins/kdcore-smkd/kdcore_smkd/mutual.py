"""What every mutual-learning component shares: peers, update order, records, ensembles.

A mutual component serves two or more model roles (its ``models``, by default the roles the
stage trains) and returns one per-sample loss per trained peer, each computed against the
*detached* predictions of the other peers. Two update orders:

* ``simultaneous``: every peer's loss uses the other peers' predictions on the batch as they
  were before any step; the engine then steps every optimiser.
* ``in_turn`` (DML's official order): the component takes over the backward passes
  (:meth:`kdcore.Component.backward`). Peers are stepped in the order of ``models``: the first
  peer's loss is back-propagated and its optimiser stepped here, its predictions on the batch
  are recomputed, and the next peer's gradient is taken against the updated predictions, and so
  on; the engine steps the last peer. Each peer is stepped exactly once per batch (the
  component clears the gradients of the peers it stepped, so the engine's own step of those
  optimisers changes nothing).

In ``in_turn`` order a peer's loss is computed before the earlier peers step, but its gradient
is taken against their updated predictions: the loss term is wrapped in an autograd function
whose backward re-evaluates the loss with the refreshed peers, so the engine's reduction
(masks, weights, the recipe weight) still applies unchanged. The reported loss value (history
``train/<role>/<name>``) is the one before the earlier peers stepped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F

import kdcore
from kdcore.context import BatchHook
from kdcore.metrics import accuracy

Order = Literal["simultaneous", "in_turn"]

TURN_KEY = "in_turn"
"""The key of a batch's :class:`_Turn` in ``batch.store``, under the component's name."""


class _Turn:
    """The in-turn state of one batch: peer predictions, pending losses, who stepped."""

    def __init__(self, comp: MutualComponent, ctx: kdcore.RunContext, batch: kdcore.Batch,
                 context: Any, peer_logits: dict[str, torch.Tensor], learners: list[str]):
        self.comp = comp
        self.ctx = ctx
        self.batch = batch
        self.context = context
        self.peer_logits = dict(peer_logits)
        self.learners = learners
        self.pending: dict[str, torch.Tensor] = {}
        self.done = 0
        self.stepped: list[str] = []

    def loss(self, role: str, logits: torch.Tensor) -> torch.Tensor:
        peers = [z for r, z in self.peer_logits.items() if r != role]
        return self.comp.peer_loss(self.batch, role, logits, peers, self.context)

    def offer(self, role: str, loss: torch.Tensor) -> None:
        """Take over ``role``'s backward; run every turn whose predecessors are done."""
        self.pending[role] = loss
        ctx = self.ctx
        while self.done < len(self.learners) and self.learners[self.done] in self.pending:
            current = self.learners[self.done]
            last = self.done == len(self.learners) - 1
            # another component's graph may serve every peer (a learned weighter's weights):
            # kept until the last peer's pass has gone through it too
            self.pending.pop(current).backward(retain_graph=not last)
            if not last:  # the engine steps the last one
                optimizer = ctx.optimizers[current]
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                ctx.mark_stepped(current)  # the engine skips its own step of this peer
                self.stepped.append(current)
                self.peer_logits[current] = self._recompute(current)
            self.done += 1

    def _recompute(self, role: str) -> torch.Tensor:
        """The stepped peer's logits on the batch, leaving its buffers (BN statistics) as
        they were, so that one batch updates them once."""
        model = self.ctx.models[role]
        buffers = [b.clone() for b in model.buffers()]
        with torch.no_grad():
            logits = model(self.batch.x)[0].detach()
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        return logits

    @property
    def finished(self) -> bool:
        return self.done == len(self.learners)


class _DeferredLoss(torch.autograd.Function):
    """The loss value now; its gradient against the peers as they are at backward time."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, turn: _Turn, role: str) -> torch.Tensor:
        ctx.turn, ctx.role = turn, role
        ctx.save_for_backward(logits)
        return turn.loss(role, logits.detach())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (logits,) = ctx.saved_tensors
        with torch.enable_grad():
            z = logits.detach().requires_grad_(True)
            value = ctx.turn.loss(ctx.role, z)
            (dz,) = torch.autograd.grad(value, z, grad)
        return dz, None, None


class MutualComponent(kdcore.Component):
    """Base class of ``smkd`` and ``dml`` (subclasses set ``Params`` with ``order`` and
    ``log_ensemble`` and implement :meth:`peer_loss` and :meth:`batch_context`)."""

    def __init__(self, params: Any, spec: kdcore.ComponentSpec):
        super().__init__(params, spec)
        peers = self.models
        if len(peers) < 2 or len(set(peers)) != len(peers):
            # also reported by the plugin's kdcore_configure, with the recipe's key path
            raise ValueError(
                f"component '{self.name}' needs two or more distinct peer models, got "
                f"{list(peers)}; train them together (stage 'train') or name them in 'models'")
        self._sums: dict[str, float] = {}
        self._count = 0

    def written_columns(self) -> tuple[str, ...]:
        """Besides the hooks' own: each peer's selection mask ``select/<name>/<role>``,
        written from ``transfer`` (the roles are the recipe's, so not a class attribute)."""
        own = tuple(f"select/{self.name}/{role}" for role in self.models)
        return tuple(dict.fromkeys((*super().written_columns(), *own)))

    def writes_in_batch(self) -> dict[str, BatchHook]:
        """The per-peer masks are written in ``transfer`` (not in ``backward``, the last batch
        hook the class overrides)."""
        own = dict.fromkeys((f"select/{self.name}/{role}" for role in self.models), "transfer")
        return {**super().writes_in_batch(), **own}

    def setup(self, ctx: kdcore.RunContext) -> None:
        self._sums = {}
        self._count = 0

    # -- what subclasses provide ------------------------------------------------------------

    def batch_context(self, ctx: kdcore.RunContext, batch: kdcore.Batch) -> Any:
        """Per-batch values shared by the peers' losses (a threshold, a trust)."""
        return None

    def peer_loss(self, batch: kdcore.Batch, role: str, logits: torch.Tensor,
                  peers: list[torch.Tensor], context: Any) -> torch.Tensor:
        """The per-sample loss of ``role`` (logits with graph) given the detached peers."""
        raise NotImplementedError  # abstract: smkd and dml define their loss

    def selected(self, peer_logits: torch.Tensor, context: Any) -> torch.Tensor:
        """Where a peer's knowledge is selected (bool ``(B,)``), for the ledger."""
        return torch.ones(peer_logits.shape[0], dtype=torch.bool, device=peer_logits.device)

    def batch_metrics(self, context: Any) -> dict[str, float]:
        """Numbers averaged over the epoch's batches and logged (``<key>`` -> value)."""
        return {}

    # -- time within the stage --------------------------------------------------------------

    @staticmethod
    def stage_time(ctx: kdcore.RunContext, unit: Literal["step", "epoch"] = "step"
                   ) -> tuple[int, int]:
        """``(t, Gamma)``: the optimiser step within the stage and the stage's total steps
        (``epochs x ctx.steps_per_epoch``), or the epoch and the number of epochs."""
        epochs = ctx.stage.epochs if ctx.stage is not None else 1
        if unit == "epoch":
            return ctx.epoch, epochs
        per_epoch = max(1, ctx.steps_per_epoch)
        return ctx.stage_step, epochs * per_epoch

    # -- the component hooks ----------------------------------------------------------------

    def on_epoch_start(self, ctx: kdcore.RunContext) -> None:
        self._sums = {}
        self._count = 0

    def transfer(self, ctx: kdcore.RunContext, batch: kdcore.Batch
                 ) -> Mapping[str, torch.Tensor] | None:
        context = self.batch_context(ctx, batch)
        peer_logits = {r: batch.out(r).logits.detach() for r in self.models}
        self._record(ctx, batch, peer_logits, context)
        learners = [r for r in self.models if ctx.trains(r)]
        if not learners:
            return None
        if self.params.order == "simultaneous":
            out = {}
            for role in learners:
                peers = [z for r, z in peer_logits.items() if r != role]
                out[role] = self.peer_loss(batch, role, batch.out(role).logits, peers, context)
            return out
        turn = _Turn(self, ctx, batch, context, peer_logits, learners)
        batch.store.put(self.name, TURN_KEY, turn)
        return {r: _DeferredLoss.apply(batch.out(r).logits, turn, r) for r in learners}

    def backward_roles(self) -> tuple[str, ...]:
        return tuple(self.models) if self.params.order == "in_turn" else ()

    def backward(self, ctx: kdcore.RunContext, batch: kdcore.Batch, role: str,
                 loss: torch.Tensor) -> bool:
        turn = batch.store.get(self.name, TURN_KEY)
        if turn is None or role not in turn.learners:
            return False
        turn.offer(role, loss)
        return True

    def on_epoch_end(self, ctx: kdcore.RunContext, metrics: dict[str, float]) -> None:
        if not self.params.log_ensemble:
            return
        # the spec leaves open which model is reported: log the ensemble and the better peer
        data = ctx.data
        for split, labels in (("val", data.val_noisy), ("test", data.test.y)):
            if labels.numel() == 0:
                continue
            probs = sum(F.softmax(ctx.features(r, split).logits, dim=1) for r in self.models)
            metrics[f"ensemble/{self.name}/{split}_acc"] = accuracy(
                probs.argmax(1), labels.to(probs.device))
        scored = [(metrics[f"val/{r}/acc"], -i, r) for i, r in enumerate(self.models)
                  if f"val/{r}/acc" in metrics and f"test/{r}/acc" in metrics]
        if scored:
            _, neg_i, best = max(scored)
            metrics[f"better/{self.name}/test_acc"] = metrics[f"test/{best}/acc"]
            metrics[f"better/{self.name}/peer"] = float(-neg_i)

    # -- records ----------------------------------------------------------------------------

    def _record(self, ctx: kdcore.RunContext, batch: kdcore.Batch,
                peer_logits: dict[str, torch.Tensor], context: Any) -> None:
        """Each peer's selection mask into the ledger (not masking any loss), and the
        epoch means of the batch metrics."""
        for role, z in peer_logits.items():
            ctx.ledger.write(f"select/{self.name}/{role}", batch.index,
                             self.selected(z, context), kind="mask")
        values = self.batch_metrics(context)
        if not values:
            return
        if self._count == 0:
            for key, value in values.items():
                ctx.log_metric(f"{key}_start", value)
        self._count += 1
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
            ctx.log_metric(key, self._sums[key] / self._count)
