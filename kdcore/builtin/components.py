"""The baselines every paper compares with: CE, Hinton KD, label smoothing, all-samples."""

from __future__ import annotations

import attrs
import torch

from kdcore.component import Batch, Component, PerSample, TransferTerm
from kdcore.context import Role, RunContext
from kdcore.losses import cross_entropy_term, kd_kl, smooth_targets
from kdcore.validators import softmax_temperature, unit_interval


class CrossEntropy(Component):
    """Cross-entropy of each served model against the batch's current (refined) targets."""

    description = "cross-entropy on the current soft targets"

    def transfer(self, ctx: RunContext, batch: Batch) -> TransferTerm:
        labels = batch.hard_targets
        targets = batch.targets.detach() if labels is None else None  # None: never gathered
        return {r: cross_entropy_term(batch.out(r).logits, targets, labels) for r in self.models}


@attrs.frozen
class HintonKDParams:
    """Args:
        teacher: the model role whose softened outputs are distilled.
        temperature: T; the term is ``T^2 KL(p_t^T || p_s^T)``.
    """

    teacher: Role = Role("teacher")
    temperature: float = attrs.field(default=4.0, validator=softmax_temperature)


class HintonKD(Component):
    """Hinton et al. (2015) knowledge distillation from a teacher role's logits."""

    Params = HintonKDParams
    learns_from = ("teacher",)
    description = "Hinton KD: T^2 KL(softmax(t/T) || softmax(s/T))"

    def transfer(self, ctx: RunContext, batch: Batch) -> PerSample:
        teacher = batch.out(self.params.teacher).logits.detach()
        return {r: kd_kl(batch.out(r).logits, teacher, self.params.temperature)
                for r in self.models}


@attrs.frozen
class LabelSmoothingParams:
    """Args:
        epsilon: the mass moved to the uniform distribution.
    """

    epsilon: float = attrs.field(default=0.1, validator=unit_interval)


class LabelSmoothing(Component):
    """Label smoothing as a refinement: ``(1 - eps) q + eps / C`` (Szegedy et al. 2016)."""

    Params = LabelSmoothingParams
    description = "label smoothing of the current targets"

    def refine(self, ctx: RunContext, batch: Batch, targets: torch.Tensor) -> torch.Tensor:
        return smooth_targets(targets, self.params.epsilon)


class AllSamples(Component):
    """Selects every sample: the no-selection baseline, explicit in the history."""

    description = "select every sample"

    def select(self, ctx: RunContext, batch: Batch) -> PerSample:
        return torch.ones(len(batch), dtype=torch.bool, device=batch.index.device)


COMPONENTS: dict[str, type[Component]] = {
    "ce": CrossEntropy,
    "hinton_kd": HintonKD,
    "label_smoothing": LabelSmoothing,
    "all_samples": AllSamples,
}
