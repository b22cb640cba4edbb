"""``dml``: deep mutual learning (Zhang et al., CVPR 2018).

Each peer ``k`` minimises ``CE(q, p_k) + R_{j != k} T^2 KL(p_j^T || p_k^T)`` with the other
peers detached (temperature 1 and weight 1 in the paper and its code). It is the
"all knowledge" special case of ``smkd``, exactly:

    smkd(threshold <= 0, epsilon = 0.5, form = "kl")     = 0.5 * dml(peer_reduction = "mean")
    smkd(threshold <= 0, epsilon = 0.5, form = "target") = 0.5 * dml(peer_reduction = "mean")
                                                           + 0.5 * mean_j T^2 H(p_j^T)

per sample (the extra term is a constant of the trained model, so the gradients are exactly
half of DML's); for two peers ``sum`` and ``mean`` agree. The plugin's tests check both.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch

import kdcore
from kdcore.validators import softmax_temperature
from kdcore_smkd.losses import dml_loss
from kdcore_smkd.mutual import MutualComponent, Order


@attrs.frozen
class DMLParams:
    """Parameters of ``dml``.

    Attributes:
        temperature: ``T`` of the KL terms (with a ``T^2`` factor); DML uses 1.
        peer_reduction: ``sum`` of the peers' KL terms (the official code) or their ``mean``
            (the paper's Eq. 9); the same for two peers.
        order: ``simultaneous`` (detached peers, one engine step) or ``in_turn`` (the official
            code's order: each peer steps against the others' latest predictions).
        log_ensemble: log the peers' ensemble accuracy and the better peer's test accuracy.
    """

    temperature: float = attrs.field(default=1.0, validator=softmax_temperature)
    peer_reduction: Literal["sum", "mean"] = "sum"
    order: Order = "simultaneous"
    log_ensemble: bool = True


class DML(MutualComponent):
    """Deep mutual learning between two or more peers trained together.

    Every peer's knowledge is used, so the recorded masks ``select/<name>/<role>`` are all
    true (their precision is the share of clean labels), as for ``smkd`` at threshold 0.
    """

    Params = DMLParams
    description = "deep mutual learning: CE + KL(p_peer || p_self)"

    def peer_loss(self, batch: kdcore.Batch, role: str, logits: torch.Tensor,
                  peers: list[torch.Tensor], context: object) -> torch.Tensor:
        return dml_loss(logits, peers, batch.targets, temperature=self.params.temperature,
                        peer_reduction=self.params.peer_reduction)
