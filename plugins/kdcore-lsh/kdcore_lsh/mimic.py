"""LSH feature mimicking: the ``l2``, ``lsh``, ``lshl2`` and ``lshl2_s`` transfer components.

Reading implemented (specification ``methods/lsh.md``, see the package README):

* the mimicked teacher feature is its classifier input (``batch.out(teacher).features``); the
  student's is its classifier input too, which is the connector output when
  :func:`~kdcore_lsh.connector.attach_connector` gave it one (sizes differ, or
  ``force_connector``);
* ``l2``: ``||f_s - f_t||^2 / D`` per sample; ``lsh``: the mean over the ``N`` hash functions of
  the BCE of the student's projections ``W f_s + b`` on the teacher's bits ``1[W f_t + b > 0]``;
  ``lshl2``: their sum; ``lshl2_s``: ``lshl2`` averaged only over the samples whose teacher
  argmax equals the label (``correct_against``);
* ``W`` is drawn once per stage from ``N(0, sigma^2)`` with the component's own generator
  (``ctx.generator``; ``sigma``: the standard deviation of the teacher's classifier weight unless
  given) and frozen; ``b`` is 0, or minus the mean or the median of ``W f_t`` over the training
  set, from ``ctx.features(teacher)``: eval mode and **un-augmented** inputs, where the release
  passes the augmented training loader (a deliberate deviation: the pass is shared with other
  components and deterministic);
* ``W``, ``b`` and ``sigma`` are component state, checkpointed for exact resume; a component
  with the same label and ``use`` in the next stage keeps them (kdcore's ``carry_state``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs
import torch

import kdcore
from kdcore import Role
from kdcore.device import check_fits
from kdcore.validators import all_of, finite_float32, positive
from kdcore_lsh import functional as lshf
from kdcore_lsh.connector import attach_connector


@attrs.frozen
class MimicParams:
    """Parameters of ``l2``, ``lsh`` and ``lshl2``.

    ``l2`` has no projection and ignores the hash parameters; it accepts them so that a recipe
    that sets them can swap ``use`` between the four components (an ablation from the command
    line).

    Attributes:
        teacher: the model role whose features are mimicked (frozen in the usual recipe).
        force_connector: give the student a ``Linear(D, D)`` connector even when its feature
            size already equals the teacher's ``D`` (the release's ``force_2FC``).
        num_hashes: ``N``, the number of hash functions; None: ``32 * D`` (the release's CIFAR
            default; its ImageNet and multi-label scripts use 2048).
        sigma: the standard deviation of the entries of ``W``, a float32 number (``1e300``
            made every projection infinite at the stage's first step); None: the standard
            deviation of the teacher's classifier weight, read at the start of the stage.
        bias: ``"median"`` (every bit is 1 on half the training set; the CIFAR default),
            ``"mean"`` (centred projections) or ``"zero"`` (the ImageNet script).
        bias_update: ``"once"`` at the start of the stage (the release: its teacher is frozen)
            or ``"epoch"``: again at every epoch start, for a teacher that trains meanwhile.
    """

    teacher: Role = Role("teacher")
    force_connector: bool = False
    num_hashes: int | None = attrs.field(default=None, validator=positive)
    sigma: float | None = attrs.field(default=None, validator=all_of(positive, finite_float32))
    bias: Literal["median", "mean", "zero"] = "median"
    bias_update: Literal["once", "epoch"] = "once"


@attrs.frozen
class SelectiveParams(MimicParams):
    """Parameters of ``lshl2_s``: those of the other three, and one more.

    Attributes:
        correct_against: the label that decides "the teacher is correct": ``"targets"``, the
            argmax of the batch's current targets **after** every refinement of the stage (LP
            labels, say), or ``"noisy"``, the observed noisy label. The release compares with
            the dataset label, which in a noisy-label setting is the noisy one.
    """

    correct_against: Literal["targets", "noisy"] = "targets"


class FeatureMimic(kdcore.Component):
    """Base of the feature-mimicking terms; ``terms_used`` says which of L2 and LSH are summed."""

    Params: ClassVar[type] = MimicParams
    learns_from = ("teacher",)
    # the connector (connector.py) replaces a student's classifier and wraps forward_features
    model_attributes = ("classifier", "feature_dim", "forward_features")
    terms_used: ClassVar[tuple[str, ...]] = ("l2",)

    def __init__(self, params: Any, spec: kdcore.ComponentSpec):
        super().__init__(params, spec)
        self.device = torch.device("cpu")
        self.dim = 0
        self.projection: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self.sigma: float | None = None

    @property
    def uses_lsh(self) -> bool:
        return "lsh" in self.terms_used

    # -- structure --------------------------------------------------------------------------

    def adapt_models(self, ctx: kdcore.RunContext) -> None:
        dim = ctx.models[self.params.teacher].feature_dim
        for role in self.models:
            attach_connector(ctx, role, dim, force=self.params.force_connector, owner=self.name)

    def setup(self, ctx: kdcore.RunContext) -> None:
        self.device = ctx.device  # where load_state_dict puts W and b
        self.dim = ctx.models[self.params.teacher].feature_dim
        for role in self.models:
            have = ctx.models[role].feature_dim
            if have != self.dim:  # adapt_models ran for every stage's components: cannot happen
                raise kdcore.KdcoreError(
                    f"component '{self.name}': model '{role}' has {have} features, the teacher "
                    f"{self.dim}, and no connector")
        if self.uses_lsh:  # refused now, by `kdcore check`, not when a later stage draws W
            hashes = self.params.num_hashes or 32 * self.dim
            # W (N x D) and a batch's projections of student and teacher, with a gradient
            size = 4 * hashes * (self.dim + 3 * ctx.recipe.data.batch_size)
            check_fits(f"component '{self.name}': num_hashes = {hashes} (the projection and a "
                       "batch's projections)", size, ctx.device, "lower it")

    # -- the projection ---------------------------------------------------------------------

    def on_stage_start(self, ctx: kdcore.RunContext) -> None:
        if not self.uses_lsh:
            return
        num_hashes = self.params.num_hashes or 32 * self.dim
        if self.projection is not None and tuple(self.projection.shape) == (num_hashes, self.dim):
            return  # carried over from the previous stage (same label and use): keep W and b
        teacher = ctx.models[self.params.teacher]
        if self.params.sigma is not None:
            sigma = float(self.params.sigma)
        else:
            sigma = float(teacher.classifier.weight.detach().std())
        self.sigma = sigma
        self.projection = lshf.draw_projection(num_hashes, self.dim, sigma, ctx.generator).to(
            ctx.device)
        self.bias = self.compute_bias(ctx)

    def compute_bias(self, ctx: kdcore.RunContext) -> torch.Tensor:
        """The bias of the chosen kind from the teacher's features over the training set."""
        assert self.projection is not None
        kind = self.params.bias
        if kind == "zero":
            return torch.zeros(self.projection.shape[0], device=self.projection.device)
        features = ctx.features(self.params.teacher).features.to(self.projection.device)
        if kind == "mean":
            return lshf.mean_bias(features, self.projection)
        return lshf.median_bias(features, self.projection)

    def on_epoch_start(self, ctx: kdcore.RunContext) -> None:
        if not self.uses_lsh:
            return
        if self.params.bias_update == "epoch" and ctx.epoch > 0 and self.params.bias != "zero":
            self.bias = self.compute_bias(ctx)
        assert self.projection is not None
        ctx.log_metric(f"lsh/{self.name}/sigma", float(self.sigma or 0.0))
        ctx.log_metric(f"lsh/{self.name}/num_hashes", float(self.projection.shape[0]))

    # -- the loss ---------------------------------------------------------------------------

    def per_sample(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The per-sample loss of this component's terms for features ``(B, D)``."""
        loss = None
        if "l2" in self.terms_used:
            loss = lshf.l2_loss(student, teacher)
        if self.uses_lsh:
            assert self.projection is not None and self.bias is not None
            term = lshf.lsh_loss(student, teacher, self.projection, self.bias)
            loss = term if loss is None else loss + term
        assert loss is not None
        return loss

    def transfer(self, ctx: kdcore.RunContext, batch: kdcore.Batch) -> dict[str, torch.Tensor]:
        teacher = batch.out(self.params.teacher).features.detach()
        return {role: self.per_sample(batch.out(role).features, teacher) for role in self.models}

    # -- checkpoint -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        if self.projection is None:
            return {}
        assert self.bias is not None
        return {"projection": self.projection.cpu(), "bias": self.bias.cpu(),
                "sigma": self.sigma}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        device = self.device
        self.projection = torch.as_tensor(state["projection"]).to(device)
        self.bias = torch.as_tensor(state["bias"]).to(device)
        self.sigma = float(state["sigma"])


class L2Mimic(FeatureMimic):
    """L2 feature mimicking: ``||f_s - f_t||^2 / D`` per sample."""

    description = "feature mimicking: element-wise MSE to the teacher's penultimate feature"


class LSHMimic(FeatureMimic):
    """LSH feature mimicking: BCE of the student's projections on the teacher's hash bits."""

    terms_used = ("lsh",)
    description = "feature mimicking: BCE on the teacher's random-projection hash bits"


class LSHL2Mimic(FeatureMimic):
    """LSHL2: the L2 and the LSH terms added (the method's main loss)."""

    terms_used = ("l2", "lsh")
    description = "feature mimicking: L2 + LSH"


class SelectiveLSHL2Mimic(LSHL2Mimic):
    """LSHL2_S: LSHL2 averaged only over the samples the teacher classifies correctly.

    The mask is a selection (ledger column ``select/<name>``) that acts on this component's own
    term only (``own_terms_only``; a recipe entry may list other ``terms``), so it never masks
    the CE term. The engine runs every refinement before any selection, so with
    ``correct_against = "targets"`` the test uses the batch's final, refined targets.
    """

    Params = SelectiveParams
    description = "feature mimicking: L2 + LSH on the samples the teacher gets right"
    own_terms_only = True

    def correct(self, batch: kdcore.Batch) -> torch.Tensor:
        """The bool mask ``argmax teacher == label`` for ``batch`` (see ``correct_against``)."""
        logits = batch.out(self.params.teacher).logits.detach()
        labels = batch.noisy_label if self.params.correct_against == "noisy" else batch.targets
        return lshf.teacher_correct(logits, labels.detach())

    def select(self, ctx: kdcore.RunContext, batch: kdcore.Batch) -> torch.Tensor:
        return self.correct(batch)


COMPONENTS: dict[str, type[kdcore.Component]] = {
    "l2": L2Mimic,
    "lsh": LSHMimic,
    "lshl2": LSHL2Mimic,
    "lshl2_s": SelectiveLSHL2Mimic,
}

__all__ = [
    "COMPONENTS", "FeatureMimic", "L2Mimic", "LSHL2Mimic", "LSHMimic", "MimicParams",
    "SelectiveLSHL2Mimic", "SelectiveParams",
]
