"""``smkd``: selective mutual knowledge distillation (static or progressive threshold).

See :mod:`kdcore_smkd.losses` for the loss and the plugin README for the reading of the
specification that is implemented and the default of each open choice.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

import kdcore
from kdcore.validators import positive, softmax_temperature, unit_interval
from kdcore_smkd.losses import (
    Certainty,
    EpsilonMode,
    Fallback,
    Form,
    SelfCorrection,
    global_trust,
    selection_mask,
    smkd_loss,
    threshold_at,
)
from kdcore_smkd.mutual import MutualComponent, Order


@attrs.frozen
class SMKDParams:
    """Parameters of ``smkd`` (every open choice of the specification is one of them).

    Attributes:
        certainty: how certain a peer's prediction is: ``entropy`` (``1 - H(p)/log C``) or
            ``max_prob`` (``max_c p_c``).
        schedule: ``static`` (``eta = threshold``) or ``progressive`` (ProSelfLC's sigmoid).
        threshold: the static threshold ``eta_0`` on certainty; above 1 no knowledge is
            selected (independent training), at or below 0 all is (DML).
        direction: the progressive schedule's direction: ``relax`` (``eta = 1 - g(t)``,
            strict early) or ``tighten`` (``eta = g(t)``).
        exp_base: ``B`` of ``g(t) = 1 / (1 + exp(-B (t/Gamma - rho)))``.
        transit: ``rho``, the transit time ratio of ``g(t)``.
        time_unit: ``t`` and ``Gamma`` count optimiser ``step``s within the stage (``Gamma =
            epochs x batches per epoch``) or ``epoch``s.
        fallback: the knowledge of unselected samples: ``uniform`` (label smoothing) or
            ``none`` (plain cross-entropy on the label targets).
        epsilon: the constant mixing weight of the knowledge (``epsilon_mode = "constant"``).
        epsilon_mode: ``constant`` or ``adaptive`` (``eps = g(t) * c_peer``, per sample).
        form: ``target`` (cross-entropy to ``(1 - eps) q + eps k``) or ``kl`` (``(1 - eps)
            CE(q, p) + eps KL(k || p)``); same gradients, values differ by ``eps H(k)``.
        temperature: ``T`` of the peer knowledge (with a ``T^2`` factor); 1 in the reading.
        self_correction: ``none`` or ``proselflc`` (each model's label target is first
            ProSelfLC-corrected with its own prediction: open question 5).
        order: ``simultaneous`` (detached peers, one engine step) or ``in_turn`` (DML's order).
        log_ensemble: log the peers' ensemble accuracy and the better peer's test accuracy.
    """

    certainty: Certainty = "entropy"
    schedule: Literal["static", "progressive"] = "progressive"
    threshold: float = 0.15
    direction: Literal["relax", "tighten"] = "relax"
    exp_base: float = attrs.field(default=10.0, validator=positive)
    transit: float = 0.5
    time_unit: Literal["step", "epoch"] = "step"
    fallback: Fallback = "uniform"
    epsilon: float = attrs.field(default=0.5, validator=unit_interval)
    epsilon_mode: EpsilonMode = "constant"
    form: Form = "target"
    temperature: float = attrs.field(default=1.0, validator=softmax_temperature)
    self_correction: SelfCorrection = "none"
    order: Order = "simultaneous"
    log_ensemble: bool = True


@attrs.frozen
class SMKDContext:
    """The batch's threshold ``eta(t)`` and global trust ``g(t)``."""

    threshold: float
    trust: float


class SMKD(MutualComponent):
    """Selective mutual KD between two or more peers trained together.

    Records each peer's selection mask as ``select/<name>/<role>`` (where that peer's
    knowledge was selected; the mask does not mask any loss) and logs the threshold
    ``select/<name>/threshold`` (epoch mean; ``..._start`` at the epoch's first batch) and the
    global trust ``select/<name>/trust``.
    """

    Params = SMKDParams
    description = "selective mutual KD (static or progressive certainty threshold)"

    def batch_context(self, ctx: kdcore.RunContext, batch: kdcore.Batch) -> SMKDContext:
        p = self.params
        t, total = self.stage_time(ctx, p.time_unit)
        eta = threshold_at(t, total, schedule=p.schedule, threshold=p.threshold,
                           direction=p.direction, exp_base=p.exp_base, transit=p.transit)
        return SMKDContext(eta, global_trust(t, total, p.exp_base, p.transit))

    def selected(self, peer_logits: torch.Tensor, context: SMKDContext) -> torch.Tensor:
        return selection_mask(peer_logits, context.threshold, self.params.certainty)

    def batch_metrics(self, context: SMKDContext) -> dict[str, float]:
        return {f"select/{self.name}/threshold": context.threshold,
                f"select/{self.name}/trust": context.trust}

    def peer_loss(self, batch: kdcore.Batch, role: str, logits: torch.Tensor,
                  peers: list[torch.Tensor], context: SMKDContext) -> torch.Tensor:
        p = self.params
        return smkd_loss(
            logits, peers, batch.targets, threshold=context.threshold, epsilon=p.epsilon,
            epsilon_mode=p.epsilon_mode, trust=context.trust, fallback=p.fallback,
            form=p.form, temperature=p.temperature, certainty_measure=p.certainty,
            self_correction=p.self_correction,
        )
