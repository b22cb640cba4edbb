"""Small-loss selection: samples a model fits easily are likely to carry their true label.

Reading implemented (see ``docs/methods/small_loss.md``):

* the ranking loss is the cross-entropy of ``ranking_model`` (default: the model the component
  serves) against the **original noisy labels** (``labels = "noisy"``, as AML-KD's released code
  does) or against the current refined targets (``labels = "targets"``);
* the kept share is ``1 - r``: ``r`` given (``rate``), the realised noise rate of the run
  (``estimate = "oracle"``: what AML-KD's script does, since it passes the true rate), or the
  share of training samples whose noisy label disagrees with ``estimator_model``'s prediction
  (``estimate = "disagreement"``), optionally ramped in over ``ramp_epochs`` (Co-teaching);
* ``scope = "batch"`` ranks inside each training batch as it trains, keeping exactly
  ``floor((1 - r) B)`` samples; ``scope = "pass"`` makes one shuffled pass over the training set
  at the epoch start in batches of ``pass_batch_size`` and ranks inside each (AML-KD); ``scope =
  "dataset"`` ranks the whole training set at once;
* ``mask_loss = false`` records the selection in the ledger (``select/<name>``, with precision
  and recall in the history) without masking any loss term: label refinement reads it instead.
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import torch
import torch.nn.functional as F

import kdcore
from kdcore.losses import soft_cross_entropy
from kdcore.validators import below_one, non_negative


@attrs.frozen
class SmallLossParams:
    """Parameters of ``small_loss`` (see the module docstring for the readings).

    Attributes:
        rate: the noise rate r to assume; None: estimate it (``estimate``).
        estimate: ``oracle`` (the run's realised rate) or ``disagreement`` (estimator model).
        estimator_model: the role whose predictions estimate r under ``disagreement``.
        scope: ``batch``, ``pass`` or ``dataset``.
        pass_batch_size: the ranking batch size of ``scope = "pass"`` (0: the training batch).
        ranking_model: whose loss ranks the samples (default: the served model).
        labels: rank by loss against ``noisy`` labels or current ``targets``.
        ramp_epochs: grow the dropped share linearly from 0 to r over this many epochs.
        mask_loss: mask the served models' loss terms with the selection.
    """

    rate: float | None = attrs.field(default=None, validator=below_one)
    estimate: Literal["oracle", "disagreement"] = "oracle"
    estimator_model: str = "teacher"
    scope: Literal["batch", "pass", "dataset"] = "batch"
    pass_batch_size: int = attrs.field(default=0, validator=non_negative)
    ranking_model: str | None = None
    labels: Literal["noisy", "targets"] = "noisy"
    ramp_epochs: int = attrs.field(default=0, validator=non_negative)
    mask_loss: bool = True


def keep_smallest(losses: torch.Tensor, keep: int) -> torch.Tensor:
    """A bool mask of the ``keep`` smallest entries (ties broken by position)."""
    mask = torch.zeros_like(losses, dtype=torch.bool)
    if keep > 0:
        mask[torch.topk(losses, keep, largest=False, sorted=False).indices] = True
    return mask


def kept_count(size: int, rate: float) -> int:
    """``floor((1 - r) * size)``, robust to float round-off (0.6 * 10 is 5.999...)."""
    return math.floor((1.0 - rate) * size + 1e-9)


class SmallLoss(kdcore.Component):
    """Keep the ``1 - r`` share of samples with the smallest loss."""

    Params = SmallLossParams
    description = "small-loss selection (per batch, per pass or over the whole set)"

    def setup(self, run: kdcore.Run) -> None:
        self.run = run
        self.ranker = self.params.ranking_model or self.model
        for role in (self.ranker, self.params.estimator_model):
            if role == self.params.estimator_model and (
                    self.params.rate is not None or self.params.estimate != "disagreement"):
                continue
            if role not in run.models:
                raise kdcore.RecipeError(f"component '{self.name}': no model role '{role}'")
        self.estimated_rate: float | None = None

    # -- the noise rate ---------------------------------------------------------------------

    def base_rate(self) -> float:
        if self.params.rate is not None:
            return self.params.rate
        if self.estimated_rate is None:
            run = self.run
            noisy = run.ledger["noisy_label"]
            if self.params.estimate == "oracle":
                self.estimated_rate = float((~run.ledger["clean_mask"]).double().mean())
            else:
                pred = run.features(self.params.estimator_model).logits.argmax(1)
                self.estimated_rate = float((pred != noisy).double().mean())
        return self.estimated_rate

    def current_rate(self) -> float:
        r = self.base_rate()
        ramp = self.params.ramp_epochs
        return r * min(1.0, self.run.epoch / ramp) if ramp else r

    # -- epoch-level scopes -----------------------------------------------------------------

    def on_epoch_start(self, run: kdcore.Run, epoch: int) -> None:
        if self.params.estimate == "disagreement":
            self.estimated_rate = None  # the estimator may have trained since: re-estimate
        run.log_metric(f"select/{self.name}/rate", self.current_rate())
        if self.params.scope == "batch":
            return
        losses = self._losses(run.features(self.ranker).logits, torch.arange(
            run.ledger.size, device=run.device))
        rate = self.current_rate()
        if self.params.scope == "dataset":
            mask = keep_smallest(losses, kept_count(len(losses), rate))
        else:
            size = self.params.pass_batch_size or run.recipe.data.batch_size
            mask = torch.zeros_like(losses, dtype=torch.bool)
            order = torch.randperm(len(losses), generator=run.generator).to(losses.device)
            for start in range(0, len(order), size):
                rows = order[start:start + size]
                mask[rows] = keep_smallest(losses[rows], kept_count(len(rows), rate))
        run.ledger.add(f"select/{self.name}", mask, producer=self.name, kind="mask")

    def _losses(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.params.labels == "noisy":
            return F.cross_entropy(logits, self.run.ledger["noisy_label"][index],
                                   reduction="none")
        return soft_cross_entropy(logits, self.run.ledger["target"][index])

    # -- per batch --------------------------------------------------------------------------

    def select(self, batch: kdcore.Batch) -> torch.Tensor | None:
        if self.params.scope == "batch":
            with torch.no_grad():
                losses = self._losses(batch.out(self.ranker).logits.detach(), batch.index)
            mask = keep_smallest(losses, kept_count(len(batch), self.current_rate()))
        else:
            mask = self.run.ledger[f"select/{self.name}"][batch.index]
        if not self.params.mask_loss:
            # record only: the engine writes returned masks, so write it ourselves
            self.run.ledger.write(f"select/{self.name}", batch.index, mask,
                                  producer=self.name, kind="mask")
            return None
        return mask

    def state_dict(self) -> dict[str, object]:
        return {"estimated_rate": self.estimated_rate}

    def load_state_dict(self, state: dict[str, object]) -> None:
        rate = state.get("estimated_rate")
        self.estimated_rate = None if rate is None else float(rate)  # type: ignore[arg-type]
