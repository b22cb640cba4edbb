"""AML-KD's loss pieces (§1.9), as transfer components.

* ``mixup_ce``: ``lam CE(z(x~)/T, y) + (1 - lam) CE(z(x~)/T, y_pi)`` with
  ``x~ = lam x + (1 - lam) x_pi``, ``lam ~ Beta(a, a)`` drawn once per batch (used as drawn, no
  ``max(lam, 1 - lam)``) and ``y`` the batch's current targets. The release evaluates this CE on
  temperature-scaled logits (T = 4): what runs is kept as the default, ``temperature = 1``
  gives plain mixup.
* ``mixup_kd``: ``T^2 KL(softmax(t(x~)/T) || softmax(z(x~)/T))`` on the same mixed batch; the
  release weights it 0.9 (set ``weight = 0.9`` in the recipe).
* ``relational_kd``: ``MSE(G_s, G_t)`` of within-batch cosine Gram matrices of clean-view
  features (weight 0.5 in the release). The release detaches the student's features, which makes
  it a no-op (D4); ``detach_student = true`` reproduces that.

``mixup_ce`` and ``mixup_kd`` share one mixed batch (and one student forward on it) through
``batch.store`` under the namespace ``kdcore_amlkd.mixup`` (:data:`MIXUP`), as the release
computes both from one mix.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F

import kdcore
from kdcore.context import Role, RunContext
from kdcore.losses import kd_kl, soft_cross_entropy
from kdcore.validators import between, softmax_temperature


@attrs.frozen
class MixupParams:
    """Attributes:
        beta: the Beta(beta, beta) parameter of the mixing coefficient (release: 4), in
            [1e-6, 1e6]: torch samples Beta in float32, where a smaller or larger value
            underflows to 0 or overflows (beyond that range the coefficient is 0 or 1, or 1/2,
            to float32 precision anyway).
        temperature: the temperature of the mixup CE (release: 4) or of the KD term (4).
        teacher: the teacher role (``mixup_kd``; ``mixup_ce`` ignores it).
    """

    beta: float = attrs.field(default=4.0, validator=between(1e-6, 1e6))
    temperature: float = attrs.field(default=4.0, validator=softmax_temperature)
    teacher: Role = Role("teacher")


@attrs.frozen
class Mix:
    """One mixed batch: inputs, coefficient and permutation."""

    x: torch.Tensor
    lam: float
    perm: torch.Tensor


MIXUP = "kdcore_amlkd.mixup"
"""The batch-store namespace of the mix (and the outputs on it) that the mixup terms share."""


def mixup_batch(ctx: RunContext, batch: kdcore.Batch, beta: float) -> Mix:
    """The batch's mixed inputs, drawn once per batch and shared by every mixup component.

    The coefficient comes from torch's global generator and the permutation from the
    ``ctx.generator`` of the first mixup component of the batch: both are checkpointed, so
    resumed runs draw the same mixes.
    """
    mix = batch.store.get(MIXUP, "mix")
    if mix is None:
        lam = float(torch.distributions.Beta(beta, beta).sample())
        perm = torch.randperm(len(batch), generator=ctx.generator).to(batch.x.device)
        mix = Mix(lam * batch.x + (1 - lam) * batch.x[perm], lam, perm)
        batch.store.put(MIXUP, "mix", mix)
    return mix


def _mixed_out(batch: kdcore.Batch, role: str, mix: Mix) -> kdcore.ModelOutput:
    key = f"out/{role}"
    out = batch.store.get(MIXUP, key)
    if out is None:
        out = batch.forward(role, mix.x)
        batch.store.put(MIXUP, key, out)
    return out


class MixupCE(kdcore.Component):
    """Mixup cross-entropy against the batch's targets, at a temperature."""

    Params = MixupParams
    description = "mixup CE at temperature (AML-KD)"

    def roles(self) -> tuple[str, ...]:
        return ()  # the shared parameters name a teacher that this term does not use

    def transfer(self, ctx: RunContext, batch: kdcore.Batch) -> kdcore.PerSample:
        mix = mixup_batch(ctx, batch, self.params.beta)
        y = batch.targets.detach()
        out = {}
        for role in self.models:
            z = _mixed_out(batch, role, mix).logits / self.params.temperature
            out[role] = mix.lam * soft_cross_entropy(z, y) + (1 - mix.lam) * soft_cross_entropy(
                z, y[mix.perm])
        return out


class MixupKD(kdcore.Component):
    """Hinton KD on the mixed inputs (teacher frozen)."""

    Params = MixupParams
    learns_from = ("teacher",)
    description = "KD on mixup inputs (AML-KD)"

    def transfer(self, ctx: RunContext, batch: kdcore.Batch) -> kdcore.PerSample:
        mix = mixup_batch(ctx, batch, self.params.beta)
        teacher = _mixed_out(batch, self.params.teacher, mix).logits.detach()
        return {r: kd_kl(_mixed_out(batch, r, mix).logits, teacher, self.params.temperature)
                for r in self.models}


def gram_mse(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """``mean((G_s - G_t)^2)`` of the ``B x B`` cosine Gram matrices."""
    s = F.normalize(student_features, dim=1)
    t = F.normalize(teacher_features, dim=1)
    return ((s @ s.T - t @ t.T) ** 2).mean()


@attrs.frozen
class RelationalParams:
    """Attributes:
        teacher: the teacher role.
        detach_student: the release's no-op (D4): no gradient reaches the student.
    """

    teacher: Role = Role("teacher")
    detach_student: bool = False


class RelationalKD(kdcore.Component):
    """Similarity-preserving relational term on clean-view features (a batch-level scalar)."""

    Params = RelationalParams
    learns_from = ("teacher",)
    description = "relational Gram-matrix MSE (AML-KD, optional)"

    def gradient_free_roles(self) -> tuple[str, ...]:
        """With ``detach_student``, every served model's term is the release's no-op."""
        return tuple(self.models) if self.params.detach_student else ()

    def transfer(self, ctx: RunContext, batch: kdcore.Batch) -> kdcore.PerSample:
        teacher = batch.out(self.params.teacher).features.detach()
        out = {}
        for role in self.models:
            f = batch.out(role).features
            out[role] = gram_mse(f.detach() if self.params.detach_student else f, teacher)
        return out
