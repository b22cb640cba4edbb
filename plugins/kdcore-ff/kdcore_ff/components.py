"""F&F's "friends" as kdcore components: warm-up, instance filtering, label correction.

Only the names of these components are verified (spec ``methods/ff.md`` §6.5); what each does
here is our placeholder reading, with its open choices as parameters (see the README).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn

import kdcore
from kdcore import Role
from kdcore.context import ColumnKind, StartHook
from kdcore.losses import one_hot, soft_cross_entropy
from kdcore.validators import below_one, non_negative, positive, unit_interval
from kdcore_ff.ncifar import STATUS_CLEAN, STATUS_CLOSED, STATUS_OPEN, label_classes, run_status


def _role(comp: kdcore.Component, role: str | None) -> str:
    """The role named by a ``model`` parameter, or the single served model (the plan has
    checked that a named role exists)."""
    if role is None:
        if len(comp.models) != 1:
            raise ValueError(
                f"component '{comp.name}' serves {list(comp.models)}: set params.model to the "
                "role whose predictions it uses")
        role = comp.models[0]
    return role


# -- warm-up ------------------------------------------------------------------------------------


@attrs.frozen
class WarmupParams:
    """Parameters of ``ff_warmup``.

    Attributes:
        epochs: the term is active in the stage's first ``epochs`` epochs and then hands over
            (returns no loss) to the stage's other terms; 0: every epoch of the stage.
        classifier_only_epochs: in the stage's first ``classifier_only_epochs`` epochs only the
            served models' ``classifier`` layer trains (the rest is frozen, its batch-norm and
            dropout layers in eval mode): a linear probe on pre-trained features, then full
            fine-tuning.
        labels: ``noisy`` (cross-entropy on the observed labels, whatever earlier refiners
            did) or ``targets`` (on the batch's current targets).
    """

    epochs: int = attrs.field(default=0, validator=non_negative)
    classifier_only_epochs: int = attrs.field(default=0, validator=non_negative)
    labels: Literal["noisy", "targets"] = "noisy"


class Warmup(kdcore.Component):
    """Supervised warm-up on the noisy labels, optionally classifier-only first."""

    Params = WarmupParams
    model_attributes = ("classifier",)
    description = "F&F warm-up (reconstruction): CE for a few epochs, classifier-only first"

    def setup(self, ctx: kdcore.RunContext) -> None:
        self.frozen = False
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def active(self, epoch: int) -> bool:
        return self.params.epochs == 0 or epoch < self.params.epochs

    def on_epoch_start(self, ctx: kdcore.RunContext) -> None:
        frozen = ctx.epoch < self.params.classifier_only_epochs
        if frozen != self.frozen:  # the stage started them trainable (also on resume)
            for role in self.models:
                if ctx.trains(role):
                    self._freeze_trunk(ctx.models[role], frozen)
            self.frozen = frozen
        ctx.log_metric(f"ff/{self.name}/active", float(self.active(ctx.epoch)))
        ctx.log_metric(f"ff/{self.name}/classifier_only", float(frozen))

    def on_stage_end(self, ctx: kdcore.RunContext) -> None:
        # the stage ended while frozen: never touch later stages (the engine makes every
        # parameter of the roles a stage trains trainable again when that stage starts)
        self._remove_hooks()
        self.frozen = False

    def _freeze_trunk(self, model: nn.Module, frozen: bool) -> None:
        head = {id(p) for p in model.classifier.parameters()}
        for p in model.parameters():
            if id(p) not in head:
                p.requires_grad_(not frozen)
        if frozen:
            # ctx.features() and the engine put the whole model back in train mode; a pre-hook
            # keeps the frozen trunk's batch-norm statistics and dropout fixed on every call
            self.handles.append(model.register_forward_pre_hook(self._trunk_eval))
        else:
            self._remove_hooks()
            model.train(True)

    def _trunk_eval(self, model: nn.Module, args: object) -> None:
        if not self.frozen:
            self._remove_hooks()
            return
        for child in model.children():
            if child is not model.classifier:
                child.eval()

    def _remove_hooks(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def transfer(self, ctx: kdcore.RunContext, batch: kdcore.Batch) -> kdcore.PerSample | None:
        if not self.active(ctx.epoch):
            return None
        if self.params.labels == "noisy":
            return {r: F.cross_entropy(batch.out(r).logits, batch.noisy_label, reduction="none")
                    for r in self.models}
        targets = batch.targets.detach()
        return {r: soft_cross_entropy(batch.out(r).logits, targets) for r in self.models}


# -- instance filtering -------------------------------------------------------------------------


@attrs.frozen
class FilterParams:
    """Parameters of ``instance_filter``.

    Attributes:
        model: the role whose eval-mode pass at the epoch start scores the samples (default:
            the served model; set it to use a teacher).
        criterion: ``loss`` (cross-entropy against the label; high = suspicious) or
            ``confidence`` (the model's probability of the label; low = suspicious).
        labels: score against the ``noisy`` labels or the epoch-level ``targets`` (the ledger's
            ``base_target``: what an earlier ``label_correction`` wrote; the noisy labels when
            nothing did). The class of a sample, for ``per_class``, is the argmax of the same.
        rule: ``rate`` drops the ``rate`` most suspicious share; ``threshold`` drops every
            sample whose loss is above ``threshold`` (``criterion = "loss"``) or whose
            confidence is below it (``"confidence"``).
        rate: the share dropped by ``rule = "rate"``.
        oracle_rate: drop the run's realised noise rate instead of ``rate`` (an oracle: it
            reads the true noise mask; for upper-bound experiments only).
        threshold: the cut of ``rule = "threshold"``.
        per_class: rank (``rule = "rate"``) within each class: ``round(rate * n_c)`` of class
            ``c`` are dropped, so small classes are not emptied by their larger losses.
        start_epoch: abstain (no mask) before this epoch of the stage.
        mask_loss: mask the served models' terms; false records the mask only.
    """

    model: Role | None = None
    criterion: Literal["loss", "confidence"] = "loss"
    labels: Literal["noisy", "targets"] = "targets"
    rule: Literal["rate", "threshold"] = "rate"
    rate: float = attrs.field(default=0.2, validator=below_one)
    oracle_rate: bool = False
    threshold: float = 0.5
    per_class: bool = True
    start_epoch: int = attrs.field(default=0, validator=non_negative)
    mask_loss: bool = True


def suspicion(logits: torch.Tensor, targets: torch.Tensor, criterion: str) -> torch.Tensor:
    """Per-sample loss, or confidence, against soft ``targets`` ``(N, C)``."""
    if criterion == "loss":
        return soft_cross_entropy(logits, targets)
    return (F.softmax(logits, dim=1) * targets).sum(dim=1)


def filter_mask(score: torch.Tensor, classes: torch.Tensor, *, criterion: str, rule: str,
                rate: float, threshold: float, per_class: bool) -> torch.Tensor:
    """The kept samples (True) given each sample's ``score`` and class.

    ``rule = "rate"``: the ``round(rate * n)`` most suspicious samples of each class (or of
    all, without ``per_class``) are dropped; the most suspicious have the largest loss or the
    smallest confidence; ties go by index (a stable sort).
    """
    if rule == "threshold":
        return score <= threshold if criterion == "loss" else score >= threshold
    badness = score if criterion == "loss" else -score
    keep = torch.ones_like(score, dtype=torch.bool)
    groups = [classes == c for c in classes.unique()] if per_class else [
        torch.ones_like(keep)]
    for members in groups:
        rows = members.nonzero().squeeze(1)
        drop = round(rate * rows.numel())
        if drop:
            order = torch.sort(badness[rows], descending=True, stable=True).indices
            keep[rows[order[:drop]]] = False
    return keep


class InstanceFilter(kdcore.Component):
    """Drop the samples judged noisy or open-set: per-class small-loss or low-confidence."""

    Params = FilterParams
    description = "F&F instance filtering (reconstruction): per-class small-loss/confidence"
    writes: ClassVar[tuple[str, ...]] = ("ff/{name}/score",)
    column_kinds: ClassVar[Mapping[str, ColumnKind]] = {"ff/{name}/score": "value"}

    def __init__(self, params: Any, spec: kdcore.ComponentSpec):
        super().__init__(params, spec)
        self.ranker = _role(self, params.model)

    @property
    def column(self) -> str:
        return f"select/{self.name}"

    def writes_at_start(self) -> dict[str, StartHook]:
        """Its mask and scores, at each epoch start from ``start_epoch`` on."""
        if self.params.start_epoch:
            return {}
        return {self.column: "on_epoch_start", f"ff/{self.name}/score": "on_epoch_start"}

    def late_writes(self) -> dict[str, int]:
        """With a later ``start_epoch``, its mask and scores are written from that epoch."""
        start = self.params.start_epoch
        return dict.fromkeys((self.column, f"ff/{self.name}/score"), start) if start else {}

    def current_rate(self, ctx: kdcore.RunContext) -> float:
        if not self.params.oracle_rate:
            return self.params.rate
        return float((~ctx.ledger["clean_mask"]).double().mean())

    def on_epoch_start(self, ctx: kdcore.RunContext) -> None:
        if ctx.epoch < self.params.start_epoch:
            return
        p = self.params
        led = ctx.ledger
        logits = ctx.features(self.ranker).logits
        if p.labels == "noisy":
            targets = one_hot(led["noisy_label"], ctx.num_classes)
        else:
            targets = led["base_target"].float()
        score = suspicion(logits, targets, p.criterion)
        rate = self.current_rate(ctx)
        mask = filter_mask(score, targets.argmax(1), criterion=p.criterion, rule=p.rule,
                           rate=rate, threshold=p.threshold, per_class=p.per_class)
        led.add(self.column, mask, kind="mask")
        led.add(f"ff/{self.name}/score", score, kind="value")
        ctx.log_metric(f"ff/{self.name}/rate", rate if p.rule == "rate" else float("nan"))
        ctx.log_metric(f"ff/{self.name}/dropped", float((~mask).double().mean()))

    def select(self, ctx: kdcore.RunContext, batch: kdcore.Batch) -> torch.Tensor | None:
        if ctx.epoch < self.params.start_epoch or not self.params.mask_loss:
            return None
        return ctx.ledger[self.column][batch.index]


# -- label correction ---------------------------------------------------------------------------


@attrs.frozen
class CorrectionParams:
    """Parameters of ``label_correction``.

    Attributes:
        model: the role whose eval-mode predictions correct the labels (default: the served
            model; a teacher works too).
        threshold: a sample is relabelled when the model's top class (over the real labels,
            without the ncifar open-set class) differs from its label with probability
            ``>= threshold``.
        base: ``noisy``: each correction starts again from the noisy labels (a sample the
            model stops disagreeing with gets its noisy label back); ``previous``: from the
            current ``base_target`` (corrections accumulate).
        target: ``hard`` (one-hot of the predicted class) or ``soft`` (the model's
            probabilities) for relabelled samples.
        when: ``epoch_start`` (from ``start_epoch``, every ``every`` epochs) or
            ``stage_start`` (once, with the model as it enters the stage: the warmed-up model).
        start_epoch, every: the schedule of ``when = "epoch_start"``.
    """

    model: Role | None = None
    threshold: float = attrs.field(default=0.9, validator=unit_interval)
    base: Literal["noisy", "previous"] = "noisy"
    target: Literal["hard", "soft"] = "hard"
    when: Literal["epoch_start", "stage_start"] = "epoch_start"
    start_epoch: int = attrs.field(default=0, validator=non_negative)
    every: int = attrs.field(default=1, validator=positive)


def correct_labels(logits: torch.Tensor, current: torch.Tensor, *, num_labels: int,
                   threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which samples to relabel, and to what.

    Args:
        logits: ``(N, C)``; only the first ``num_labels`` columns are real labels.
        current: the labels being corrected ``(N,)``.
        num_labels: K.
        threshold: the least top-class probability that relabels.

    Returns:
        ``(change, predicted, probs)``: the bool mask of relabelled samples, the top class of
        each sample and the probabilities over the ``num_labels`` real labels.
    """
    probs = F.softmax(logits[:, :num_labels].float(), dim=1)
    conf, pred = probs.max(dim=1)
    change = (pred != current) & (conf >= threshold)
    return change, pred, probs


class LabelCorrection(kdcore.Component):
    """Relabel the samples a model confidently assigns to another class (epoch level)."""

    Params = CorrectionParams
    description = "F&F label correction (reconstruction): confident disagreements relabelled"
    writes: ClassVar[tuple[str, ...]] = ("base_target", "lc/{name}/label",
                                         "lc/{name}/confidence")
    column_kinds: ClassVar[Mapping[str, ColumnKind]] = {
        "base_target": "target", "lc/{name}/label": "label", "lc/{name}/confidence": "value"}

    def __init__(self, params: Any, spec: kdcore.ComponentSpec):
        super().__init__(params, spec)
        self.role = _role(self, params.model)

    def writes_at_start(self) -> dict[str, StartHook]:
        """Its columns, when it corrects: at the stage's start, or at each epoch start from
        ``start_epoch`` on."""
        p = self.params
        if p.when == "stage_start":
            return super().writes_at_start()
        if p.start_epoch:
            return {}
        return dict.fromkeys(super().writes_at_start(), "on_epoch_start")

    def late_writes(self) -> dict[str, int]:
        """With ``when = "epoch_start"`` and a later ``start_epoch``, its label and confidence
        columns are written from that epoch (``base_target`` is the data's)."""
        p = self.params
        if p.when == "epoch_start" and p.start_epoch:
            return dict.fromkeys((f"lc/{self.name}/label", f"lc/{self.name}/confidence"),
                                 p.start_epoch)
        return {}

    def on_stage_start(self, ctx: kdcore.RunContext) -> None:
        if self.params.when == "stage_start":
            self.correct(ctx)

    def on_epoch_start(self, ctx: kdcore.RunContext) -> None:
        p = self.params
        if p.when == "epoch_start" and ctx.epoch >= p.start_epoch and \
                (ctx.epoch - p.start_epoch) % p.every == 0:
            self.correct(ctx)

    def refine(self, ctx: kdcore.RunContext, batch: kdcore.Batch,
               targets: torch.Tensor) -> torch.Tensor:
        return targets  # the work is epoch-level, in base_target, which the batch starts from

    def correct(self, ctx: kdcore.RunContext) -> None:
        p = self.params
        led = ctx.ledger
        num_classes = ctx.num_classes
        num_labels = label_classes(ctx)
        noisy = led["noisy_label"]
        start = one_hot(noisy, num_classes) if p.base == "noisy" else led["base_target"].float()
        change, pred, probs = correct_labels(ctx.features(self.role).logits, start.argmax(1),
                                             num_labels=num_labels, threshold=p.threshold)
        if p.target == "hard":
            new_rows = one_hot(pred, num_classes)
        else:
            new_rows = F.pad(probs, (0, num_classes - num_labels))
        target = torch.where(change[:, None], new_rows.to(start.dtype), start)
        led.add("base_target", target, kind="target", snapshot=False)
        label = target.argmax(1)
        led.add(f"lc/{self.name}/label", label, kind="label")
        led.add(f"lc/{self.name}/confidence", probs.max(1).values)
        self._log(ctx, label, noisy, change)

    def _log(self, ctx: kdcore.RunContext, label: torch.Tensor, noisy: torch.Tensor,
             change: torch.Tensor) -> None:
        status = run_status(ctx)
        clean = ctx.ledger["clean_label"]
        moved = label != noisy

        def share(a: torch.Tensor, b: torch.Tensor) -> float:
            n = int(b.sum())
            return int((a & b).sum()) / n if n else float("nan")

        name = f"lc/{self.name}"
        ctx.log_metric(f"{name}/changed", float(change.double().mean()))
        ctx.log_metric(f"{name}/relabelled", float(moved.double().mean()))
        ctx.log_metric(f"{name}/precision", share(label == clean, moved))
        ctx.log_metric(f"{name}/closed_fixed", share(label == clean, status == STATUS_CLOSED))
        ctx.log_metric(f"{name}/clean_broken", share(moved, status == STATUS_CLEAN))
        if bool((status == STATUS_OPEN).any()):
            ctx.log_metric(f"{name}/open_relabelled", share(moved, status == STATUS_OPEN))
