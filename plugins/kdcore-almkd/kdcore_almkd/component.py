"""The ``almkd`` component: a per-sample lambda table mixing CE and KD, learned by meta-gradient.

Reading implemented (``methods/almkd.md`` section 4; every reconstruction is listed in the
plugin's README):

* a **transfer** component: it computes the student's whole per-sample loss
  ``sum_k w_ik l_ik`` itself (``l_i0`` soft CE on the batch's current targets, ``l_im`` the
  ``T^2 KL`` term of teacher ``m``; teachers frozen). The engine takes the batch mean, as the
  released code does, so no separate ``ce`` or ``hinton_kd`` entry belongs in the stage;
* the weights ``w`` ``(N, M + 1)`` live in the ledger column ``weight/<name>`` (kind
  ``weight``), rows = sample index, snapshotted into the history every epoch; the term order is
  ``[CE, teachers in recipe order]``;
* ``preset = "amal"`` (default, the AAAI code): ``M + 1`` free weights per sample, init
  ``lambda0`` for each teacher and ``1 - lambda0`` for CE, clip ``[1e-7, 2 - 1e-7]``, 5
  repetitions, step 1500 (at a batch of 128, scaled by ``|B| / 128`` otherwise), meta
  objective the CE of one validation batch of 1000;
  ``preset = "almkd"`` (the 2022 code): one ``lambda_i in [0, 1]`` with
  ``w_i = [1 - lambda_i, lambda_i]``, init ``U(0, 1)``, 10 repetitions, step 2000, objective
  ``0.75 L_val + 0.25 L_chunk`` on the whole validation set;
* the update (``on_epoch_start`` of epochs ``e >= warm_epochs`` with ``e % select_every == 0``)
  runs over the eval-mode logits and features of the whole training set (``ctx.features``),
  in a shuffled order cut into batches and chunks of ``grad_fit`` batches, against the clean
  ``gold`` split (``data.gold_per_class``). See :mod:`kdcore_almkd.mixing` for the closed form.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import torch

import kdcore
from kdcore import Role
from kdcore.config import structure
from kdcore.losses import one_hot
from kdcore.validators import (
    all_of,
    finite_non_negative,
    float32,
    non_negative,
    positive,
    softmax_temperature,
    unit_interval,
)
from kdcore_almkd.mixing import (
    REFERENCE_BATCH_SIZE,
    Mixing,
    UpdateConfig,
    effective_step,
    effective_weights,
    mixed_loss,
    num_parameters,
    update_lambdas,
)

# -- parameters ---------------------------------------------------------------------------------


def _teachers(instance: object, attribute: attrs.Attribute, value: tuple[Role, ...]) -> None:
    if not value:
        raise ValueError(f"'{attribute.name}' must name at least one teacher role")
    if len(set(value)) != len(value):
        raise ValueError(f"'{attribute.name}' names a role twice: {list(value)!r}")


@attrs.frozen
class Settings:
    """The preset's values with the recipe's overrides applied (see :class:`AlmKDParams`)."""

    mixing: Mixing
    init: Literal["constant", "uniform"]
    lambda0: float
    lambda_min: float
    lambda_max: float
    repetitions: int
    step: float
    val_weight: float
    val_batch: int


PRESETS: dict[str, dict[str, Any]] = {
    # AMAL, durgas16/AMAL HEAD (KD/LearnMultiLambdaMeta.py)
    "amal": {"mixing": "free", "init": "constant", "lambda0": 0.9, "lambda_min": 1e-7,
             "lambda_max": 2.0 - 1e-7, "repetitions": 5, "step": 1500.0, "val_weight": 1.0,
             "val_batch": 1000},
    # ALM-KD, the 2022 history (getLambda/LearnLambdaMeta.py, get_lambdas)
    "almkd": {"mixing": "convex", "init": "uniform", "lambda0": 0.5, "lambda_min": 1e-7,
              "lambda_max": 1.0 - 1e-7, "repetitions": 10, "step": 2000.0, "val_weight": 0.75,
              "val_batch": 0},
}


@attrs.frozen
class AlmKDParams:
    """Parameters of ``almkd``; every ``None`` takes the preset's value.

    Attributes:
        teachers: the frozen teacher roles, in the order of the table's columns 1..M (several:
            AMAL multi-teacher; a role of the student's architecture: self-distillation).
        temperature: T of the KD terms ``T^2 KL(softmax(t/T) || softmax(s/T))``.
        preset: ``amal`` (default) or ``almkd``; fills the knobs below.
        mixing: ``free`` (``M + 1`` independent weights per sample) or ``convex`` (one
            ``lambda``, weights ``[1 - lambda, lambda / M, ...]``).
        init: ``constant`` (teachers ``lambda0``, CE ``1 - lambda0``; convex: ``lambda0``) or
            ``uniform`` (every parameter ``U(0, 1)`` from the component's generator).
        lambda0: the constant initial teacher weight (float32: at most 3.4e38, or inf).
        lambda_min, lambda_max: the clip interval of every parameter (float32 numbers; inf:
            no bound on that side).
        repetitions: update steps per chunk.
        step: the multiplier of the meta-gradient:
            ``lambda <- clip(lambda - step * dJ/dlambda)`` where ``dJ/dlambda = -eta <g, U>``
            already carries the learning rate ``eta`` (ALM-KD's
            ``lambda + 2000 eta <g_KD - g_CE, u>`` is ``step = 2000``); finite.
        val_weight: ``a`` in the meta objective ``J = a L_val + (1 - a) L_chunk``.
        val_batch: meta-split rows per chunk (cycled in a shuffled order); 0: all of them.
        grad_fit: training batches per chunk.
        select_every: R; the table is re-learned at epochs ``e`` with ``e % R == 0``.
        warm_epochs: no update before this epoch of the stage (default: R).
        batch_size: the ``|B|`` of the update pass's ``1/|B|`` gradients (0: the recipe's
            ``data.batch_size``).
        reference_batch_size: the ``|B|`` at which ``step`` holds (128, the released code's);
            an update pass at ``|B|`` uses ``step * |B| / reference_batch_size``
            (:func:`kdcore_almkd.mixing.effective_step`). Set it to ``|B|`` to use ``step`` as
            given.
        shuffle: visit the training set in a random order (the component's generator) during
            updates.
        meta_split: ``gold`` (clean, ``data.gold_per_class``) or ``val`` (its labels are noisy
            unless ``data.noise.apply_to_val = false``).
    """

    teachers: tuple[Role, ...] = attrs.field(default=(Role("teacher"),), validator=_teachers)
    temperature: float = attrs.field(default=4.0, validator=softmax_temperature)
    preset: Literal["amal", "almkd"] = "amal"
    mixing: Literal["free", "convex"] | None = None
    init: Literal["constant", "uniform"] | None = None
    lambda0: float | None = attrs.field(default=None, validator=all_of(non_negative, float32))
    lambda_min: float | None = attrs.field(default=None, validator=float32)
    lambda_max: float | None = attrs.field(default=None, validator=float32)
    repetitions: int | None = attrs.field(default=None, validator=positive)
    step: float | None = attrs.field(default=None, validator=finite_non_negative)
    val_weight: float | None = attrs.field(default=None, validator=unit_interval)
    val_batch: int | None = attrs.field(default=None, validator=non_negative)
    grad_fit: int = attrs.field(default=2, validator=positive)
    select_every: int = attrs.field(default=10, validator=positive)
    warm_epochs: int | None = attrs.field(default=None, validator=non_negative)
    batch_size: int = attrs.field(default=0, validator=non_negative)
    reference_batch_size: int = attrs.field(default=REFERENCE_BATCH_SIZE, validator=positive)
    shuffle: bool = True
    meta_split: Literal["gold", "val"] = "gold"

    def __attrs_post_init__(self) -> None:
        self.settings()  # cross-field checks, reported through the recipe's error path

    def settings(self) -> Settings:
        """The preset with every explicitly given knob in place of its value."""
        values = dict(PRESETS[self.preset])
        for key in values:
            given = getattr(self, key)
            if given is not None:
                values[key] = given
        s = Settings(**values)
        if not s.lambda_min < s.lambda_max:
            raise ValueError(f"'lambda_min' must be below lambda_max ({s.lambda_max!r}), "
                             f"got {s.lambda_min!r}")
        if s.mixing == "convex":
            if s.lambda_min < 0:
                raise ValueError(f"'lambda_min' must be >= 0 with convex mixing, got "
                                 f"{s.lambda_min!r}")
            if s.lambda_max > 1:
                raise ValueError(f"'lambda_max' must be <= 1 with convex mixing, got "
                                 f"{s.lambda_max!r}")
        return s

    @property
    def first_update(self) -> int:
        return self.select_every if self.warm_epochs is None else self.warm_epochs


# -- recipe checks --------------------------------------------------------------------------------


def recipe_problems(recipe: kdcore.Recipe, use: str = "almkd") -> list[str]:
    """Role and data problems of every ``almkd`` entry of a recipe, before anything trains.

    (Whether each teacher names a model the recipe defines is the plan's check of the
    ``teachers`` parameter, a tuple of ``Role``.)
    """
    problems: list[str] = []
    for s, stage in enumerate(recipe.stages):
        for c, comp in enumerate(stage.components):
            if comp.use != use or not comp.enabled:
                continue
            key = f"stages[{s}].components[{c}]"
            try:
                params = structure(AlmKDParams, comp.params, f"{key}.params")
            except kdcore.RecipeError:
                continue  # reported with its key path when the stage's components are built
            served = list(comp.models if comp.models is not None else stage.train)
            if len(served) != 1:
                problems.append(f"{key}: '{comp.label}' serves {served}; it mixes the losses "
                                f"of exactly one student (set 'models')")
            for teacher in params.teachers:
                if teacher in served:
                    problems.append(f"{key}.params.teachers: '{teacher}' is the student itself; "
                                    f"for self-distillation add a role of the same architecture")
                elif teacher in stage.train:
                    problems.append(f"{key}.params.teachers: teacher '{teacher}' is trained in "
                                    f"stage '{stage.name}'; teachers must be frozen (train them "
                                    f"in an earlier stage)")
            if params.meta_split == "gold" and recipe.data.gold_per_class == 0:
                problems.append(f"{key}.params.meta_split: the lambda update needs a clean "
                                f"meta split; set data.gold_per_class (e.g. 10 on digits)")
    return problems


# -- the component --------------------------------------------------------------------------------


def kd_share(weights: torch.Tensor) -> torch.Tensor:
    """``sum_m w_m / sum_k w_k`` per row: the share of the loss mix given to the teachers."""
    return weights[:, 1:].sum(dim=1) / weights.sum(dim=1).clamp_min(1e-12)


class AlmKD(kdcore.Component):
    """ALM-KD / AMAL: per-sample CE/KD mixing weights learned through a last-layer look-ahead."""

    Params = AlmKDParams
    description = "ALM-KD / AMAL: per-sample meta-learned mixing of the CE and KD terms"
    writes = ("weight/{name}",)  # the table: a transfer component's column, written by itself
    column_kinds = {"weight/{name}": "weight"}
    row_columns = ("weight/{name}",)  # (N, M + 1): a weight per term and sample

    @property
    def column(self) -> str:
        """The ledger column of the weight table."""
        return f"weight/{self.name}"

    @property
    def student(self) -> str:
        """The student role, the one model it serves (checked by ``kdcore_configure``)."""
        return self.model

    def lr_roles(self) -> tuple[str, ...]:
        """Its update pass steps with the student's learning rate."""
        return (self.student,)

    def reads(self) -> tuple[str, ...]:
        # the update's CE targets and the clean/noisy split of the epoch metrics
        return (*super().reads(), "target", "clean_mask")

    # -- lifecycle ------------------------------------------------------------------------------

    def setup(self, ctx: kdcore.RunContext) -> None:
        self.settings = self.params.settings()
        if len(self.models) != 1:
            raise kdcore.RecipeError(f"component '{self.name}' serves {list(self.models)}; it "
                                     f"mixes the losses of exactly one student (set 'models')")
        if any(self.due(e) for e in range(ctx.stage.epochs)):  # an update will need it
            self._check_meta_split(ctx)
        self.device = ctx.device  # where a table loaded from a checkpoint goes
        self.lam: torch.Tensor | None = None
        self.updates = 0

    def _check_meta_split(self, ctx: kdcore.RunContext) -> None:
        """At set-up too, so that ``kdcore check`` refuses what the first update would."""
        split = self.params.meta_split
        if len(ctx.data.split(split)) == 0:
            raise kdcore.RecipeError(
                f"component '{self.name}': the '{split}' split is empty; set "
                f"data.gold_per_class (or data.val_fraction) so the lambda update has data")

    def on_stage_start(self, ctx: kdcore.RunContext) -> None:
        # the engine may have handed over the table of the previous stage's component of the
        # same label (``carry_state``); start afresh only without one of the right shape
        shape = (ctx.ledger.size, num_parameters(self.settings.mixing, len(self.params.teachers)))
        if self.lam is None or tuple(self.lam.shape) != shape:
            self.lam = self.initial_lambdas(ctx)
            self.updates = 0
        self._publish(ctx)

    def initial_lambdas(self, ctx: kdcore.RunContext) -> torch.Tensor:
        """The parameter table ``(N, P)`` at the start of the stage (clipped to the bounds)."""
        s = self.settings
        n, m = ctx.ledger.size, len(self.params.teachers)
        p = num_parameters(s.mixing, m)
        if s.init == "uniform":
            lam = torch.rand(n, p, generator=ctx.generator)
        elif s.mixing == "convex":
            lam = torch.full((n, 1), s.lambda0)
        else:
            lam = torch.full((n, p), s.lambda0)
            lam[:, 0] = 1.0 - s.lambda0  # 1 - max_m lambda_m with every teacher at lambda0
        return lam.clamp(s.lambda_min, s.lambda_max).to(ctx.device)

    def weights(self) -> torch.Tensor:
        """The effective per-term weights ``(N, M + 1)``."""
        if self.lam is None:
            raise RuntimeError(f"component '{self.name}' has no lambda table yet")
        return effective_weights(self.lam, self.settings.mixing, len(self.params.teachers))

    def _publish(self, ctx: kdcore.RunContext) -> None:
        ctx.ledger.add(self.column, self.weights(), kind="weight")

    # -- the update -----------------------------------------------------------------------------

    def due(self, epoch: int) -> bool:
        """Whether the table is re-learned at the start of ``epoch`` (within the stage)."""
        return epoch >= self.params.first_update and epoch % self.params.select_every == 0

    def on_epoch_start(self, ctx: kdcore.RunContext) -> None:
        due = self.due(ctx.epoch)
        if due:
            self.update(ctx)
        ctx.log_metric(f"{self.column}/updated", float(due))

    def update(self, ctx: kdcore.RunContext) -> None:
        """Re-learn the table: one chunked look-ahead pass over the training set."""
        s, p = self.settings, self.params
        split = p.meta_split
        meta = ctx.data.split(split)
        self._check_meta_split(ctx)
        student = ctx.features(self.student)
        val = ctx.features(self.student, split=split)
        labels = meta.y if split == "gold" else ctx.data.val_noisy
        val_targets = one_hot(labels, ctx.num_classes, val.logits.dtype).to(val.logits.device)
        n = ctx.ledger.size
        order = (torch.randperm(n, generator=ctx.generator) if p.shuffle
                 else torch.arange(n))
        if s.val_batch == 0 or s.val_batch >= len(meta):
            val_batches = [torch.arange(len(meta))]
        else:
            val_batches = list(torch.split(torch.randperm(len(meta), generator=ctx.generator),
                                           s.val_batch))
        cfg = self.update_config(ctx)
        self.lam, stats = update_lambdas(
            self.lam, cfg, logits=student.logits, features=student.features,
            targets=ctx.ledger["target"].to(student.logits.dtype),
            teacher_logits=[ctx.features(t).logits for t in p.teachers],
            val_logits=val.logits, val_features=val.features, val_targets=val_targets,
            order=order.to(ctx.device), val_batches=val_batches)
        self.updates += 1
        self._publish(ctx)
        ctx.log_metric(f"{self.column}/meta_loss_first", stats.objective_first)
        ctx.log_metric(f"{self.column}/meta_loss_last", stats.objective_last)
        ctx.log_metric(f"{self.column}/step", cfg.step)

    def update_config(self, ctx: kdcore.RunContext) -> UpdateConfig:
        """The settings of an update pass now: the preset's step scaled to the pass's ``|B|``."""
        s, p = self.settings, self.params
        batch = p.batch_size or ctx.recipe.data.batch_size
        return UpdateConfig(
            mixing=s.mixing, temperature=p.temperature, lr=ctx.lr(self.student),
            step=effective_step(s.step, batch, p.reference_batch_size),
            repetitions=s.repetitions, bounds=(s.lambda_min, s.lambda_max),
            val_weight=s.val_weight, batch_size=batch, grad_fit=p.grad_fit)

    # -- per batch ------------------------------------------------------------------------------

    def transfer(self, ctx: kdcore.RunContext, batch: kdcore.Batch) -> torch.Tensor:
        w = ctx.ledger.read(self.column, batch.index)
        teachers = [batch.out(t).logits.detach() for t in self.params.teachers]
        return mixed_loss(batch.out(self.student).logits, batch.targets.detach(), teachers, w,
                          self.params.temperature)

    def on_epoch_end(self, ctx: kdcore.RunContext, metrics: dict[str, float]) -> None:
        w = ctx.ledger[self.column].double()
        share = kd_share(w)
        clean = ctx.ledger["clean_mask"].bool()
        col = self.column
        metrics[f"{col}/kd_share"] = float(share.mean())
        nan = float("nan")
        metrics[f"{col}/kd_share_clean"] = float(share[clean].mean()) if clean.any() else nan
        metrics[f"{col}/kd_share_noisy"] = float(share[~clean].mean()) if (~clean).any() else nan
        metrics[f"{col}/ce"] = float(w[:, 0].mean())
        for m, teacher in enumerate(self.params.teachers, 1):
            metrics[f"{col}/{teacher}"] = float(w[:, m].mean())

    # -- checkpoint -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"lam": None if self.lam is None else self.lam.cpu(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lam = state.get("lam")
        self.lam = None if lam is None else torch.as_tensor(lam).to(self.device)
        self.updates = int(state.get("updates", 0))
