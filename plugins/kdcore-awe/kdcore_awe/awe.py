"""AWE: ambiguity-aware weights (AML-KD §1.8).

Reading implemented (the released code's, with its defects D1-D3 as options, fixed by default):

* class prototypes ``mu_c``: the mean un-normalised student feature of the samples labelled c
  (an empty class gets a zero prototype); features come from kdcore's shared eval-mode,
  un-augmented pass (the release uses an augmented pass: a documented deviation);
* ambiguity profile ``a_ic = cos(f_i, mu_c)``;
* learned weights: WeightNet ``Linear(2C, C) -> PReLU -> Linear(C, 1) -> sigmoid`` on
  ``[a_i ; onehot(y_i)]`` (detached), trained jointly with the student by back-propagating the
  weighted loss, with its own SGD optimiser; parameter-free weights: ``sigmoid(a_{i, y_i})``;
* loss weights use prototypes of the current targets (recomputed once per epoch, at its first
  batch, after label propagation); LP seed weights use prototypes of the *selected* labels
  (noisy where the small-loss selection kept a sample, the student's prediction elsewhere) and
  are written at the epoch start to ``awe/seed_weight``, before label propagation reads them.

Our reading, the default of ``recipes/amlkd.toml`` (docs/methods/amlkd.md): nothing learned.
Cosine LP seed weights in both stages, and loss weights of the form ``confidence``: the
samples outside the small-loss selection ranked by label propagation's confidence, 0 for the
least confident rising linearly to 1, selected samples 1 unless the propagation contradicts
their label (then they are ranked with the others, the more confident the contradiction the
lower), divided by the batch mean. The released WeightNet objective shrinks every weight (to
0.001 on Fashion-MNIST).

Release options: ``zero_grad = false`` (D3: WeightNet gradients accumulate over a stage's steps;
our reading: each stage starts them afresh, the network and its optimiser carried over; they are
checkpointed, so a resumed run accumulates as the uninterrupted one), ``batch_mean_weight
= true`` (D2: the loss weight is the batch mean of the weights, so the weighted CE equals
``mean(CE) * mean(w)``), ``seed_alignment = "release_shuffled"`` (D1: seed weights attached to
the wrong samples, as a random permutation).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

import kdcore
from kdcore.context import SCALAR_KINDS, ColumnKind, ColumnName, Role, RunContext, StartHook
from kdcore.losses import one_hot, soft_cross_entropy
from kdcore.validators import (
    all_of,
    below_one,
    between,
    check_decay,
    decay_bound,
    finite_float32,
    finite_non_negative,
    learning_rate,
    softmax_temperature,
)
from kdcore_selection.small_loss import mixture_posterior


class WeightNet(nn.Module):
    """``[a ; onehot(y)] (2C) -> Linear(C) -> PReLU -> Linear(1) -> sigmoid``."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * num_classes, num_classes), nn.PReLU(),
                                 nn.Linear(num_classes, 1))

    def forward(self, ambiguity: torch.Tensor, labels_one_hot: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(torch.cat([ambiguity, labels_one_hot], 1))).squeeze(1)


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int
                     ) -> torch.Tensor:
    """Mean feature per class ``(C, d)``; a class with no sample gets zeros (no division by 0)."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype,
                       device=features.device)
    sums.index_add_(0, labels.long(), features)
    counts = torch.bincount(labels.long(), minlength=num_classes).clamp_min(1)
    return sums / counts.unsqueeze(1).to(features.dtype)


def ambiguity_profile(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``a_ic = cos(f_i, mu_c)`` ``(N, C)``."""
    return F.normalize(features, dim=1) @ F.normalize(prototypes, dim=1).T


def ascending_ranks(values: torch.Tensor) -> torch.Tensor:
    """Each value's rank ``0 .. n-1`` from the smallest (ties by position), as floats."""
    ranks = torch.empty_like(values, dtype=torch.float32)
    ranks[values.argsort(stable=True)] = torch.arange(len(values), dtype=torch.float32,
                                                      device=values.device)
    return ranks


def confidence_weights(confidence: torch.Tensor, selected: torch.Tensor | None, ramp: float,
                       contradicted: torch.Tensor | None = None) -> torch.Tensor:
    """Loss weights from per-sample label confidences: the samples outside ``selected``
    (all of them when None) are ranked by confidence, and the lowest ``ramp`` share of them
    weigh their rank's fraction of that share (0 for the least confident, rising linearly to
    1); every other sample weighs 1.

    ``contradicted`` marks the samples whose noisy label the propagation contradicts (its own
    label is another class). A selected sample so contradicted is ambiguous: it is ranked
    with the unselected ones, and its confidence counts against the label it keeps. Every
    sample's confidence is first turned into its rank fraction ``q`` over all samples (0 for
    the least confident); the unselected are ranked by ``q``, the contradicted selected ones
    by ``1 - q``, so a confident contradiction ranks lowest and a hesitant one near the top.
    Ignored when ``selected`` is None.
    """
    weights = torch.ones_like(confidence, dtype=torch.float32)
    if selected is None:
        ranked, against = torch.ones_like(confidence, dtype=torch.bool), None
    else:
        against = selected & contradicted if contradicted is not None else None
        ranked = ~selected if against is None else ~selected | against
    pool = ranked.nonzero().squeeze(1)
    if len(pool) > 1:
        score = confidence
        if against is not None:  # q and 1 - q in whole ranks: ties stay exact
            q = ascending_ranks(confidence).double()
            score = torch.where(against, len(confidence) - 1 - q, q)
        fraction = ascending_ranks(score[pool]) / (len(pool) - 1)
        weights[pool] = (fraction / ramp).clamp(max=1.0)
    return weights


def _weightnet_decay_converges(instance: AWEParams, attribute: object, value: float) -> None:
    # only a learned loss weight steps the WeightNet (AWE.after_step); at lr 0 it follows the
    # student's rate, which its parameters do not know (the plugin's kdcore_configure checks it)
    if instance.loss_mode == "learned":
        check_decay(instance.lr, value, decay_bound(instance.momentum),
                    f"the WeightNet's SGD with momentum {instance.momentum:g}")


@attrs.frozen
class AWEParams:
    """Parameters of ``awe``.

    Attributes:
        student: the role whose features define prototypes and ambiguity.
        loss_mode: weights returned for the loss terms: ``learned``, ``cosine``, ``margin``,
            ``loss_posterior``, ``loss_rank``, ``confidence`` or ``none``.
        seed_mode: LP seed weights written to ``awe/seed_weight``: ``learned``, ``cosine``,
            ``margin`` or ``none`` (the release: learned in stage 1, cosine in stage 2;
            ``amlkd.toml``: cosine in both).
        margin_temperature: tau of ``margin``: ``sigmoid((a_{i,y} - max_{c != y} a_ic) / tau)``.
        mean_one: divide the loss weights by their batch mean, so that down-weighting the
            ambiguous samples moves weight to the others instead of shrinking the term.
        selection: the ledger mask column of the small-loss selection (for the selected
            labels of the seed prototypes, and the samples ``confidence`` weights leave at 1),
            written by a component placed before this one; empty: the student's predictions
            everywhere.
        confidence: ``confidence`` mode's ledger column of per-sample label confidences
            (``lp/<name>/confidence`` of an LP component placed before this one).
        propagated: ``confidence`` mode's ledger column of the propagated labels
            (``lp/<name>/label`` of the LP component whose ``confidence`` it reads); a
            selected sample whose noisy label it contradicts is ambiguous and is ranked with
            the unselected ones (:func:`confidence_weights`); empty, or no ``selection``:
            nothing is contradicted.
        ramp: ``confidence`` mode: the share of the samples outside ``selection``, lowest
            confidence first, whose weight rises linearly from 0 to 1 with their rank; the rest
            weigh 1.
        lr: the WeightNet's learning rate, in [0, 10] as a model's; 0 follows the student's
            current learning rate (the release gives both the same settings and schedule).
        momentum, weight_decay: the WeightNet's SGD settings (momentum in [0, 1), weight decay
            >= 0 and a float32 number, as a model's optimiser; where ``loss_mode`` is
            ``learned`` (the only mode that steps the WeightNet), ``lr x weight_decay`` at
            most ``2 (1 + momentum)``, past which the decay alone diverges, with ``lr = 0`` at
            the highest rate the student's schedule reaches by the end of the entry's stage).
        zero_grad: zero the WeightNet's gradients after each step (release: never, D3).
        batch_mean_weight: return the batch mean of the weights for every sample (release D2).
        seed_alignment: ``index`` or ``release_shuffled`` (D1).
    """

    student: Role = Role("student")
    loss_mode: Literal["learned", "cosine", "margin", "loss_posterior", "loss_rank",
                       "confidence", "none"] = "learned"
    seed_mode: Literal["learned", "cosine", "margin", "none"] = "none"
    margin_temperature: float = attrs.field(default=0.1, validator=softmax_temperature)
    mean_one: bool = False
    selection: ColumnName = ColumnName("")
    confidence: ColumnName = ColumnName("")
    propagated: ColumnName = ColumnName("")
    ramp: float = attrs.field(default=1.0, validator=between(0.0, 1.0, include_low=False))
    lr: float = attrs.field(default=0.0, validator=learning_rate)
    momentum: float = attrs.field(default=0.9, validator=below_one)
    weight_decay: float = attrs.field(default=5e-4,
                                      validator=all_of(finite_non_negative, finite_float32,
                                                       _weightnet_decay_converges))
    zero_grad: bool = True
    batch_mean_weight: bool = False
    seed_alignment: Literal["index", "release_shuffled"] = "index"

    def __attrs_post_init__(self) -> None:
        if self.loss_mode == "confidence" and not self.confidence:
            raise ValueError('loss_mode "confidence" needs the confidence column (for example '
                             '"lp/teacher_lp/confidence" of an LP component placed before it)')
        if self.loss_mode == "confidence" and self.selection and \
                self.propagated in (self.selection, self.confidence):
            other, holds = (("selection", "a mask") if self.propagated == self.selection else
                            ("confidence", "one number per sample"))
            raise ValueError(f"propagated and {other} name the same column "
                             f"'{self.propagated}', which cannot hold the propagated labels "
                             f"and the {other} ({holds}) at once")


class AWE(kdcore.Component):
    """Ambiguity-aware per-sample weights for loss terms and LP seeds.

    Reads ``selection`` (a parameter) and writes ``awe/seed_weight`` (unless ``seed_mode`` is
    ``none``) besides its ``weight`` hook's ``weight/<name>``.
    """

    Params = AWEParams
    description = "ambiguity-aware weights (learned WeightNet or parameter-free cosine)"
    writes = ("awe/seed_weight",)
    column_kinds = {"awe/seed_weight": "weight"}

    def written_columns(self) -> tuple[str, ...]:
        """``awe/seed_weight`` only where ``seed_mode`` makes seed weights, and the ``weight``
        hook's columns only where ``loss_mode`` weights a term: with ``none`` a label
        propagation reading them had passed ``kdcore check`` and failed at its stage's first
        epoch."""
        p = self.params
        unwritten = {"awe/seed_weight"} if p.seed_mode == "none" else set()
        if p.loss_mode == "none":
            unwritten.update((f"weight/{self.name}", *(f"weight/{self.name}/{r}"
                                                        for r in self.models)))
        return tuple(c for c in super().written_columns() if c not in unwritten)

    def lr_roles(self) -> tuple[str, ...]:
        """With ``lr = 0`` the WeightNet follows the student's learning rate."""
        return () if self.params.lr else (self.params.student,)

    def reads_at_start(self) -> dict[str, StartHook]:
        """The seed weights need ``selection`` at each epoch start."""
        p = self.params
        if p.seed_mode == "none" or not p.selection:
            return {}
        return {p.selection: "on_epoch_start"}

    def writes_at_start(self) -> dict[str, StartHook]:
        """The seed weights, at each epoch start."""
        return ({} if self.params.seed_mode == "none" else
                {"awe/seed_weight": "on_epoch_start"})

    def read_kinds(self) -> dict[str, ColumnKind | tuple[ColumnKind, ...]]:
        """``selection`` is a mask, ``confidence`` one number per sample, and ``propagated``
        (read only with both of them in ``confidence`` mode) labels."""
        p = self.params
        out: dict[str, ColumnKind | tuple[ColumnKind, ...]] = {}
        if p.confidence:
            out[p.confidence] = SCALAR_KINDS
        if p.selection:  # after confidence: a column read as both must be a mask
            out[p.selection] = "mask"
        if p.loss_mode == "confidence" and p.propagated and p.selection:
            out[p.propagated] = "label"
        return out

    def setup(self, ctx: RunContext) -> None:
        self.net = WeightNet(ctx.num_classes).to(ctx.device)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=self.params.lr or 0.05,
                                         momentum=self.params.momentum,
                                         weight_decay=self.params.weight_decay)
        self._prototypes: torch.Tensor | None = None
        self._prototype_key: tuple[int, int] | None = None
        self._epoch_weights: torch.Tensor | None = None
        self._epoch_key: tuple[int, int] | None = None

    # -- per epoch: LP seed weights ---------------------------------------------------------

    def on_epoch_start(self, ctx: RunContext) -> None:
        self._prototypes = None  # loss prototypes follow this epoch's refined labels
        if self.params.seed_mode == "none":
            return
        feats = ctx.features(self.params.student)
        labels = self.selected_labels(ctx, feats.logits)
        protos = class_prototypes(feats.features, labels, ctx.num_classes)
        amb = ambiguity_profile(feats.features, protos)
        with torch.no_grad():
            weights = self._weights(amb, labels, self.params.seed_mode, ctx.num_classes)
        if self.params.seed_alignment == "release_shuffled":
            weights = weights[torch.randperm(len(weights), generator=ctx.generator).to(
                weights.device)]
        ctx.ledger.add("awe/seed_weight", weights, kind="weight")

    def selected_labels(self, ctx: RunContext, student_logits: torch.Tensor) -> torch.Tensor:
        pred = student_logits.argmax(1)
        if not self.params.selection:
            return pred
        mask = ctx.ledger[self.params.selection].bool()
        return torch.where(mask, ctx.ledger["noisy_label"], pred)

    def _weights(self, amb: torch.Tensor, labels: torch.Tensor, mode: str, num_classes: int
                 ) -> torch.Tensor:
        if mode == "learned":
            was = self.net.training
            self.net.train(torch.is_grad_enabled())
            out = self.net(amb.detach(), one_hot(labels, num_classes))
            self.net.train(was)
            return out
        own = amb.gather(1, labels.long().unsqueeze(1)).squeeze(1)
        if mode == "margin":
            other = amb.scatter(1, labels.long().unsqueeze(1), float("-inf")).amax(1)
            return torch.sigmoid((own - other) / self.params.margin_temperature)
        return torch.sigmoid(own)

    # -- per batch: loss weights ------------------------------------------------------------

    def loss_prototypes(self, ctx: RunContext) -> torch.Tensor:
        """Prototypes of the current targets, computed once per epoch (after LP ran)."""
        key = (ctx.epoch, ctx.stage_index)
        if self._prototypes is None or self._prototype_key != key:
            feats = ctx.features(self.params.student).features
            labels = ctx.ledger["base_target"].argmax(1)
            self._prototypes = class_prototypes(feats, labels, ctx.num_classes)
            self._prototype_key = key
        return self._prototypes

    def epoch_weights(self, ctx: RunContext) -> torch.Tensor:
        """The per-sample weights of the epoch-level modes, computed once per epoch (after LP
        ran, at the epoch's first batch):

        * ``loss_posterior``: the posterior of the low-loss component of a two-component
          mixture over the student's losses on the current targets (eval-mode pass):
          DivideMix's clean probability, on the refined labels;
        * ``loss_rank``: 1 for the smallest of those losses, falling linearly to 0 for the
          largest;
        * ``confidence``: see :func:`confidence_weights`.
        """
        key = (ctx.epoch, ctx.stage_index)
        if self._epoch_weights is None or self._epoch_key != key:
            p = self.params
            if p.loss_mode == "confidence":
                selected = ctx.ledger[p.selection].bool() if p.selection else None
                contradicted = (ctx.ledger[p.propagated] != ctx.ledger["noisy_label"]
                                if p.propagated and selected is not None else None)
                self._epoch_weights = confidence_weights(ctx.ledger[p.confidence].float(),
                                                         selected, p.ramp, contradicted)
            else:
                logits = ctx.features(p.student).logits
                losses = soft_cross_entropy(logits, ctx.ledger["base_target"].to(logits.dtype))
                if p.loss_mode == "loss_rank":
                    self._epoch_weights = 1.0 - ascending_ranks(losses) / max(len(losses) - 1, 1)
                else:
                    self._epoch_weights = mixture_posterior(losses).to(logits.dtype)
            self._epoch_key = key
        return self._epoch_weights

    def weight(self, ctx: RunContext, batch: kdcore.Batch) -> torch.Tensor | None:
        if self.params.loss_mode == "none":
            return None
        if self.params.loss_mode in ("loss_posterior", "loss_rank", "confidence"):
            w = self.epoch_weights(ctx)[batch.index]
            if self.params.mean_one:
                w = w / w.mean().clamp_min(torch.finfo(w.dtype).tiny)
            return w
        feats = batch.out(self.params.student).features.detach()
        amb = ambiguity_profile(feats, self.loss_prototypes(ctx))
        w = self._weights(amb, batch.targets.argmax(1), self.params.loss_mode, ctx.num_classes)
        if self.params.mean_one:
            w = w / w.mean().clamp_min(torch.finfo(w.dtype).tiny)
        if self.params.batch_mean_weight:
            w = w.mean().expand(len(batch))
        return w

    def after_step(self, ctx: RunContext, batch: kdcore.Batch) -> None:
        if self.params.loss_mode != "learned":
            return
        lr = self.params.lr or ctx.lr(self.params.student)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        if self.params.zero_grad:
            self.optimizer.zero_grad(set_to_none=True)

    # -- checkpoint -------------------------------------------------------------------------

    def on_stage_start(self, ctx: RunContext) -> None:
        # a stage's accumulation (D3) starts afresh, as each stage's new WeightNet's did
        # before the gradients were state: what a stage carries over is the network and its
        # optimiser, not the gradients the previous stage left (load_state_dict restored them)
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, object]:
        state: dict[str, object] = {"net": self.net.state_dict(),
                                    "optimizer": self.optimizer.state_dict()}
        if not self.params.zero_grad:  # D3: accumulated gradients are state, or a run
            # resumed mid-stage had started them from 0 and trained on another way
            state["grads"] = [None if p.grad is None else p.grad.detach().clone()
                              for p in self.net.parameters()]
        return state

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.net.load_state_dict(state["net"])  # type: ignore[arg-type]
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        for group in self.optimizer.param_groups:  # this stage's settings, not the saved ones
            # (torch restores them: a stage continuing one with weight_decay 10 had used it)
            group["momentum"] = self.params.momentum
            group["weight_decay"] = self.params.weight_decay
        grads = state.get("grads") or [None] * len(list(self.net.parameters()))
        for p, grad in zip(self.net.parameters(), grads):  # type: ignore[call-overload]
            p.grad = None if grad is None else grad.to(p.device).clone()
