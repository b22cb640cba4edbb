"""Small-loss selection: samples a model fits easily are likely to carry their true label.

Reading implemented (see ``docs/methods/amlkd.md``):

* the ranking loss is the cross-entropy of ``ranking_model`` (default: the model the component
  serves) against the **original noisy labels** (``labels = "noisy"``, as AML-KD's released code
  does) or against the current refined targets (``labels = "targets"``);
* the kept share is ``1 - r``, optionally ramped in over ``ramp_epochs`` (Co-teaching), with
  ``r`` given (``rate``) or estimated afresh at each epoch start (``estimate``):

  - ``"mixture"`` (the default; DivideMix's reading): fit a 1-D two-component Gaussian mixture
    by EM to the ranking model's per-sample cross-entropy against the noisy labels over the
    whole training set, min-max normalised to [0, 1]; ``r`` is the share of samples whose
    posterior of the high-mean component exceeds 0.5, i.e. the complement of the share
    DivideMix labels clean at its threshold 0.5 (see ``mixture_noise_rate``);
  - ``"oracle"``: the run's realised noise rate, which needs the true labels: what AML-KD's
    released script does (it passes the true rate); for release parity only, never the default;
  - ``"disagreement"``: the share of training samples whose noisy label disagrees with
    ``estimator_model``'s prediction;
  - ``"column"``: the share of training samples whose noisy label disagrees with the class
    labels of the ledger column ``estimate_column``; the AML-KD recipes read
    ``"lp/initial_lp/refined"``, the labels of AML-KD's warm-up label propagation (the
    teacher's predictions propagated over its k-NN graph, the least confident 5% keeping their
    noisy label), so that ``r`` is the share of labels that refinery relabels
    (docs/methods/amlkd.md says why, and how far off it reads);

  each epoch logs ``select/<name>/rate`` (the share dropped that epoch), and, when ``r`` is
  estimated, ``select/<name>/rate_estimate``, and the realised rate
  ``select/<name>/rate_realised`` from the ledger's ``clean_mask``;
* ``scope = "batch"`` ranks inside each training batch as it trains, keeping exactly
  ``floor((1 - r) B)`` samples; ``scope = "pass"`` makes one shuffled pass over the training set
  at the epoch start in batches of ``pass_batch_size`` and ranks inside each (AML-KD); ``scope =
  "dataset"`` ranks the whole training set at once. Under ``batch``, a component that reads
  ``select/<name>`` at an epoch start (AWE's ``selection``, LP's ``keep_selected``) sees the
  previous epoch's batch masks, and, before the first batch has been ranked, every sample kept
  (our reading: nothing is selected away before a selection has run);
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
from kdcore.context import ColumnKind, ColumnName, Role, RunContext, StartHook
from kdcore.losses import soft_cross_entropy
from kdcore.validators import below_one, non_negative


@attrs.frozen
class SmallLossParams:
    """Parameters of ``small_loss`` (see the module docstring for the readings).

    Attributes:
        rate: the noise rate r to assume; None: estimate it (``estimate``).
        estimate: ``mixture`` (two-component loss mixture, the default), ``oracle`` (the run's
            realised rate: needs the true labels), ``disagreement`` (estimator model) or
            ``column`` (the labels of ``estimate_column``).
        estimator_model: the role whose predictions estimate r under ``disagreement`` (used,
            and checked by the plan, only when ``rate`` is None and ``estimate =
            "disagreement"``).
        estimate_column: the ledger column of class labels (kind ``label``) that ``estimate =
            "column"`` compares with the noisy labels; read, and checked by the plan, only
            then.
        scope: ``batch``, ``pass`` or ``dataset``.
        pass_batch_size: the ranking batch size of ``scope = "pass"`` (0: the training batch).
        ranking_model: whose loss ranks the samples (default: the served model).
        labels: rank by loss against ``noisy`` labels or current ``targets``.
        ramp_epochs: grow the dropped share linearly from 0 to r over this many epochs.
        mask_loss: mask the served models' loss terms with the selection.
    """

    rate: float | None = attrs.field(default=None, validator=below_one)
    estimate: Literal["mixture", "oracle", "disagreement", "column"] = "mixture"
    estimator_model: Role = Role("teacher")
    estimate_column: ColumnName = ColumnName("")
    scope: Literal["batch", "pass", "dataset"] = "batch"
    pass_batch_size: int = attrs.field(default=0, validator=non_negative)
    ranking_model: Role | None = None
    labels: Literal["noisy", "targets"] = "noisy"
    ramp_epochs: int = attrs.field(default=0, validator=non_negative)
    mask_loss: bool = True

    def __attrs_post_init__(self) -> None:
        if self.estimate == "column" and not self.estimate_column:
            raise ValueError('estimate "column" needs estimate_column, the ledger column of '
                             'labels to compare the noisy labels with (for example '
                             '"lp/initial_lp/refined" of a label propagation placed before it)')


def keep_smallest(losses: torch.Tensor, keep: int) -> torch.Tensor:
    """A bool mask of the ``keep`` smallest entries (ties broken by position: among equal
    losses the lower positions are kept)."""
    mask = torch.zeros_like(losses, dtype=torch.bool)
    if keep > 0:
        mask[torch.sort(losses, stable=True).indices[:keep]] = True
    return mask


MIXTURE_VAR_FLOOR = 5e-4  # DivideMix's reg_covar, in the normalised loss units
MIXTURE_MAX_ITER = 100
MIXTURE_TOL = 1e-8  # change of the mean log-likelihood that ends EM


def mixture_noise_rate(losses: torch.Tensor, *, max_iter: int = MIXTURE_MAX_ITER,
                       tol: float = MIXTURE_TOL, var_floor: float = MIXTURE_VAR_FLOOR) -> float:
    """The noise rate a two-component 1-D Gaussian mixture over per-sample losses implies.

    The share of samples whose posterior of the high-mean component exceeds 0.5
    (:func:`mixture_posterior`), the complement of DivideMix's clean set at its threshold 0.5.
    Chosen over the mixing weight: both agree when the two loss distributions are Gaussian, but
    clean losses pile up near 0 with a long right tail, which the high-mean component's weight
    partly absorbs (it over-estimates more than the posterior count does). Fewer than two
    finite losses, or all equal, give 0.0 (no evidence of noise). Always in [0, 1].
    """
    noisy = 1.0 - mixture_posterior(losses, max_iter=max_iter, tol=tol, var_floor=var_floor)
    noisy = noisy[torch.isfinite(losses.detach().flatten())]
    return float((noisy > 0.5).double().mean()) if noisy.numel() >= 2 else 0.0


def mixture_posterior(losses: torch.Tensor, *, max_iter: int = MIXTURE_MAX_ITER,
                      tol: float = MIXTURE_TOL, var_floor: float = MIXTURE_VAR_FLOOR
                      ) -> torch.Tensor:
    """Each sample's posterior of the low-loss ("clean") component of a two-component 1-D
    Gaussian mixture over per-sample losses (float64, the losses' shape flattened).

    DivideMix's reading: the losses are min-max normalised to [0, 1]; EM (float64, no
    randomness) starts from the halves below and above the median (means and variances of
    each half, equal weights), floors both variances at ``var_floor`` and stops when the mean
    log-likelihood changes by less than ``tol`` or after ``max_iter`` iterations. Non-finite
    losses are left out of the fit and get 0 (no evidence they are clean); with fewer than
    two finite losses, or all equal, every finite one gets 1.
    """
    flat = losses.detach().flatten().double()
    finite = torch.isfinite(flat)
    out = torch.where(finite, 1.0, 0.0).to(flat)
    x = flat[finite]
    if x.numel() < 2:
        return out
    low, high = x.min(), x.max()
    if float(high - low) <= 1e-12 * max(1.0, float(high.abs())):
        return out
    x = (x - low) / (high - low)
    median = x.quantile(0.5)
    halves = (x[x <= median], x[x > median])
    if halves[1].numel() == 0:  # half or more of the losses equal the maximum
        halves = (x[x < median], x[x >= median])
    mean = torch.stack([h.mean() for h in halves])
    var = torch.stack([h.var(unbiased=False) for h in halves]).clamp_min(var_floor)
    weight = torch.full((2,), 0.5, dtype=x.dtype, device=x.device)
    column = x[:, None]

    def log_joint() -> torch.Tensor:  # log w_k + log N(x | mean_k, var_k), one column per k
        return weight.log() - 0.5 * (torch.log(2 * math.pi * var) + (column - mean) ** 2 / var)

    previous = -math.inf
    for _ in range(max_iter):
        # E step, responsibilities by a stable softmax
        log_p = log_joint()
        log_lik = torch.logsumexp(log_p, dim=1, keepdim=True)
        resp = torch.exp(log_p - log_lik)
        # M step
        mass = resp.sum(0).clamp_min(1e-12)
        weight = mass / mass.sum()
        mean = (resp * column).sum(0) / mass
        var = ((resp * (column - mean) ** 2).sum(0) / mass).clamp_min(var_floor)
        current = float(log_lik.mean())
        if abs(current - previous) < tol:
            break
        previous = current
    out[finite] = torch.softmax(log_joint(), dim=1)[:, int(mean.argmin())]
    return out


def kept_count(size: int, rate: float) -> int:
    """``floor((1 - r) * size)``, robust to float round-off (0.6 * 10 is 5.999...)."""
    return math.floor((1.0 - rate) * size + 1e-9)


def realised_rate(ctx: RunContext) -> float:
    """The share of training labels that differ from the truth (needs the true labels)."""
    return float((~ctx.ledger["clean_mask"]).double().mean())


class SmallLoss(kdcore.Component):
    """Keep the ``1 - r`` share of samples with the smallest loss.

    Writes ``select/<name>`` (a hook column): per batch through ``select``, or at the epoch
    start for the ``pass`` and ``dataset`` scopes and whenever ``mask_loss = false``.
    """

    Params = SmallLossParams
    description = "small-loss selection (per batch, per pass or over the whole set)"

    def __init__(self, params: SmallLossParams, spec: kdcore.ComponentSpec):
        super().__init__(params, spec)
        if params.ranking_model is None and len(self.models) != 1:
            raise ValueError(
                f"component '{self.name}' serves {list(self.models)}: set params.ranking_model "
                "to the role whose losses rank the samples, or its models to one role")

    def roles(self) -> tuple[str, ...]:
        p = self.params
        used = [] if p.ranking_model is None else [p.ranking_model]
        if self.estimates():
            used.append(p.estimator_model)
        return tuple(dict.fromkeys(used))

    def reads(self) -> tuple[str, ...]:
        # the estimate column only when it is read: a recipe that gives ``rate`` or picks
        # another estimate may keep the column an extended recipe named
        p = self.params
        return (p.estimate_column,) if p.rate is None and p.estimate == "column" else ()

    def read_kinds(self) -> dict[str, ColumnKind]:
        return {column: "label" for column in self.reads()}

    def reads_at_start(self) -> dict[str, StartHook]:
        """The estimate column, read for each epoch's rate."""
        return dict.fromkeys(self.reads(), "on_epoch_start")

    def writes_at_start(self) -> dict[str, StartHook]:
        """``select/<name>``, at each epoch start (all kept, before any batch ranked, for the
        ``batch`` scope): a label propagation may read it there."""
        return {f"select/{self.name}": "on_epoch_start"}

    def estimates(self) -> bool:
        """Whether the estimator model is used: no ``rate``, ``estimate = "disagreement"``."""
        return self.params.rate is None and self.params.estimate == "disagreement"

    def setup(self, ctx: RunContext) -> None:
        self.ranker = self.params.ranking_model or self.model
        self.estimated_rate: float | None = None

    # -- the noise rate ---------------------------------------------------------------------

    def base_rate(self, ctx: RunContext) -> float:
        if self.params.rate is not None:
            return self.params.rate
        if self.estimated_rate is None:
            noisy = ctx.ledger["noisy_label"]
            if self.params.estimate == "oracle":
                self.estimated_rate = realised_rate(ctx)
            elif self.params.estimate == "mixture":
                with torch.no_grad():
                    losses = F.cross_entropy(ctx.features(self.ranker).logits, noisy,
                                             reduction="none")
                self.estimated_rate = mixture_noise_rate(losses)
            elif self.params.estimate == "column":
                self.estimated_rate = self._column_disagreement(ctx, noisy)
            else:
                pred = ctx.features(self.params.estimator_model).logits.argmax(1)
                self.estimated_rate = float((pred != noisy).double().mean())
        return self.estimated_rate

    def _column_disagreement(self, ctx: RunContext, noisy: torch.Tensor) -> float:
        column = self.params.estimate_column
        kind = ctx.ledger.kind(column)
        if kind != "label":
            raise kdcore.RecipeError(
                f"component '{self.name}': estimate_column '{column}' holds {kind} values; "
                f"estimate = \"column\" compares class labels (a column of kind label, such "
                f"as lp/<name>/refined)")
        return float((ctx.ledger[column] != noisy).double().mean())

    def current_rate(self, ctx: RunContext) -> float:
        r = self.base_rate(ctx)
        ramp = self.params.ramp_epochs
        return r * min(1.0, ctx.epoch / ramp) if ramp else r

    # -- epoch-level scopes -----------------------------------------------------------------

    def on_epoch_start(self, ctx: RunContext) -> None:
        if self.params.rate is None:
            self.estimated_rate = None  # the models may have trained since: re-estimate
            ctx.log_metric(f"select/{self.name}/rate_estimate", self.base_rate(ctx))
            if "clean_mask" in ctx.ledger:
                ctx.log_metric(f"select/{self.name}/rate_realised", realised_rate(ctx))
        ctx.log_metric(f"select/{self.name}/rate", self.current_rate(ctx))
        if self.params.scope == "batch":
            column = f"select/{self.name}"
            if column not in ctx.ledger:  # read at an epoch start before any batch ranked
                ctx.ledger.add(column, torch.ones(ctx.ledger.size, dtype=torch.bool,
                                                  device=ctx.device), kind="mask")
            return
        losses = self._losses(ctx, ctx.features(self.ranker).logits, torch.arange(
            ctx.ledger.size, device=ctx.device))
        rate = self.current_rate(ctx)
        if self.params.scope == "dataset":
            mask = keep_smallest(losses, kept_count(len(losses), rate))
        else:
            size = self.params.pass_batch_size or ctx.recipe.data.batch_size
            mask = torch.zeros_like(losses, dtype=torch.bool)
            order = torch.randperm(len(losses), generator=ctx.generator).to(losses.device)
            for start in range(0, len(order), size):
                rows = order[start:start + size]
                mask[rows] = keep_smallest(losses[rows], kept_count(len(rows), rate))
        ctx.ledger.add(f"select/{self.name}", mask, kind="mask")

    def _losses(self, ctx: RunContext, logits: torch.Tensor, index: torch.Tensor
                ) -> torch.Tensor:
        if self.params.labels == "noisy":
            return F.cross_entropy(logits, ctx.ledger["noisy_label"][index], reduction="none")
        return soft_cross_entropy(logits, ctx.ledger["target"][index])

    # -- per batch --------------------------------------------------------------------------

    def select(self, ctx: RunContext, batch: kdcore.Batch) -> torch.Tensor | None:
        if self.params.scope == "batch":
            with torch.no_grad():
                losses = self._losses(ctx, batch.out(self.ranker).logits.detach(), batch.index)
            mask = keep_smallest(losses, kept_count(len(batch), self.current_rate(ctx)))
        else:
            mask = ctx.ledger[f"select/{self.name}"][batch.index]
        if not self.params.mask_loss:
            # record only: the engine writes returned masks, so write it ourselves
            ctx.ledger.write(f"select/{self.name}", batch.index, mask, kind="mask")
            return None
        return mask

    def state_dict(self) -> dict[str, object]:
        return {"estimated_rate": self.estimated_rate}

    def load_state_dict(self, state: dict[str, object]) -> None:
        rate = state.get("estimated_rate")
        self.estimated_rate = None if rate is None else float(rate)  # type: ignore[arg-type]
