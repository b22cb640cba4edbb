"""MLC, meta label correction (Zheng, Awadallah & Dumais, AAAI 2021), as one kdcore component.

Reading implemented (from microsoft/MLC, see ``README.md`` of this package):

* ``refine``: the LCN corrects each sample's **noisy** label from the main model's detached
  penultimate feature; the corrected soft label ``y^c`` (detached) becomes the batch's target
  and lands in the ledger column ``target`` (incoming targets of earlier refiners are ignored:
  the LCN reads the noisy label, as MLC does);
* ``transfer``: the main model's ``L_tr`` (a scalar: masks and weights of selectors and
  weighters do not act on it), with ``y^c`` keeping its graph to the LCN, plus, for
  ``hmlc_K_mix``, cross-entropy on the clean half C of the gold batch;
* ``backward`` (the served model only): the look-ahead of :mod:`kdcore_mlc.lookahead` on the
  role's whole loss (every transfer term on it, each with its recipe weight), the proxy
  meta-gradient into the LCN, K-step accumulation, an AMSGrad step every K iterations; then the
  real step's gradient is ``g_tr`` computed with the LCN **before** its update, as in MLC.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import attrs
import torch

import kdcore
from kdcore.context import BatchHook, StartHook
from kdcore.device import check_fits
from kdcore.losses import soft_cross_entropy
from kdcore.meta import named_trainable
from kdcore.validators import MAX_BATCH_SIZE, all_of, between, learning_rate, positive
from kdcore_mlc.gold import GoldCycler
from kdcore_mlc.lcn import LabelCorrectionNet
from kdcore_mlc.lookahead import MetaAccumulator, clean_gradient, lookahead
from kdcore_mlc.losses import mlc_training_loss


@attrs.frozen
class MLCParams:
    """Parameters of ``mlc`` (defaults: MLC's README runs).

    Attributes:
        method: ``hmlc_K_mix`` splits each gold batch into a meta half G (first half) and a
            clean half C added to the main model's loss; ``hmlc_K`` uses the whole gold batch
            as G and no clean data in the loss.
        meta_lr: the learning rate of the LCN's Adam (AMSGrad, weight decay 0, eps 1e-8), in
            (0, 10] as a model's.
        cls_dim: the label-embedding size e.
        hidden: the LCN's hidden width (128 in MLC).
        skip: the skip-link LCN: ``y = (1 - a) softmax + a onehot(noisy)``.
        gradient_steps: K, the meta step is taken every K iterations with the discounted sum of
            the meta-gradients since the last one (1: every iteration, no discount).
        gold_batch_size: rows per gold batch (0: the recipe's ``data.batch_size``, as MLC); at
            most ``kdcore.validators.MAX_BATCH_SIZE``, as ``data.batch_size`` (``10**12`` passed
            and its first batch's indices took the machine's memory).
        augment_gold: apply the recipe's ``data.augment`` to the gold batches too (MLC's
            training transform augments gold and noisy images alike).
    """

    method: Literal["hmlc_K_mix", "hmlc_K"] = "hmlc_K_mix"
    meta_lr: float = attrs.field(default=3e-4, validator=all_of(positive, learning_rate))
    cls_dim: int = attrs.field(default=128, validator=positive)
    hidden: int = attrs.field(default=128, validator=positive)
    skip: bool = False
    gradient_steps: int = attrs.field(default=1, validator=positive)
    gold_batch_size: int = attrs.field(default=0, validator=between(0, MAX_BATCH_SIZE))
    augment_gold: bool = True


@attrs.frozen
class GoldBatch:
    """One gold batch, split: G for the meta loss, C (or None) for the main model's loss."""

    index: torch.Tensor
    meta_x: torch.Tensor
    meta_y: torch.Tensor
    clean_x: torch.Tensor | None
    clean_y: torch.Tensor | None


class MLC(kdcore.Component):
    """MLC on the model it serves: LCN-corrected labels, look-ahead meta-gradient, real step.

    What it leaves in ``batch.store`` under its label, for the components after it (KDMLC's
    student) and for observers: ``yc`` (the corrected labels, with their graph to the LCN),
    ``features`` (the detached main-model features the LCN read), ``gold`` (this iteration's
    :class:`GoldBatch`), ``gold_index``, ``labels_after_meta_step`` (a function returning
    ``y^c`` from the LCN after this iteration's meta update) and, after its backward,
    ``virtual`` (``w'``, where the real step must land).
    """

    Params = MLCParams
    model_attributes = ("feature_dim",)
    description = "MLC meta label correction (label-correction network + look-ahead meta step)"
    writes = ("loss/{name}",)  # its L_tr is a scalar: it records the per-sample part itself
    column_kinds = {"loss/{name}": "value"}
    compiled = ("its look-ahead takes gradients of the model's gradients (create_graph), and "
                "torch.compile's backward has no double backward")

    def writes_at_start(self) -> dict[str, StartHook]:
        """None: ``loss/<name>`` is written in the batches."""
        return {}

    def writes_in_batch(self) -> dict[str, BatchHook]:
        """``loss/<name>`` in ``transfer`` (not in ``backward``, the last batch hook it
        overrides)."""
        return {**super().writes_in_batch(), f"loss/{self.name}": "transfer"}

    def __init__(self, params: MLCParams, spec: kdcore.ComponentSpec):
        super().__init__(params, spec)
        if len(self.models) != 1:
            raise ValueError(
                f"component '{self.name}' serves {list(self.models)}: MLC corrects the labels "
                "of one main model; set its models to that role (a student distilled from it "
                "takes kdmlc_student)")

    # -- lifecycle --------------------------------------------------------------------------

    def setup(self, ctx: kdcore.RunContext) -> None:
        role = self.model
        p = self.params
        if not ctx.trains(role):
            raise kdcore.RecipeError(
                f"component '{self.name}' serves '{role}', which stage '{ctx.stage.name}' does "
                f"not train; MLC trains its main model (list it in the stage's train)")
        if not isinstance(ctx.optimizers.get(role), torch.optim.SGD):
            raise kdcore.RecipeError(
                f"component '{self.name}': the look-ahead mirrors SGD only; set "
                f"models.{role}.optimizer.name = \"sgd\"")
        gold = len(ctx.data.gold)
        if gold == 0:
            raise kdcore.RecipeError(
                f"component '{self.name}' needs a clean gold split: set data.gold_per_class "
                f"(e.g. 10 on digits, 100 on Fashion-MNIST)")
        size = p.gold_batch_size or ctx.recipe.data.batch_size
        if p.method == "hmlc_K_mix" and size < 2:
            raise kdcore.RecipeError(f"component '{self.name}': hmlc_K_mix splits the gold "
                                     f"batch in two and needs gold_batch_size >= 2")
        model = ctx.models[role]
        shape = (model.feature_dim, ctx.num_classes, p.cls_dim, p.hidden, p.skip)
        check_fits(f"component '{self.name}': its label-correction network (its parameters "
                   "alone)", 4 * LabelCorrectionNet.parameter_count(*shape), ctx.device,
                   "lower its hidden or cls_dim")
        # setup runs under the component's own seed: the LCN's initial weights depend only on
        # the run seed and this component's placement
        self.lcn = LabelCorrectionNet(*shape).to(ctx.device)
        self.meta_optimizer = torch.optim.Adam(self.lcn.parameters(), lr=p.meta_lr,
                                               weight_decay=0.0, eps=1e-8, amsgrad=True)
        self.gold = GoldCycler(gold, size)
        self.accumulator = MetaAccumulator(p.gradient_steps)
        self.meta_steps = 0
        self._meta_done_step = -1
        self._reset_stats()

    def on_epoch_start(self, ctx: kdcore.RunContext) -> None:
        self._reset_stats()

    def _reset_stats(self) -> None:
        self._stats: dict[str, float] = {"iters": 0, "meta_loss": 0.0, "gamma": 0.0,
                                         "gammas": 0, "skip_a": 0.0, "skip_n": 0}

    # -- what this batch's later readers get ---------------------------------------------------

    def corrected(self, batch: kdcore.Batch) -> torch.Tensor:
        """This batch's corrected labels ``y^c`` (detached), as ``refine`` computed them."""
        return batch.store.require(self.name, "yc").detach()

    def features(self, batch: kdcore.Batch) -> torch.Tensor:
        """The detached main-model features of this batch that the LCN read."""
        return batch.store.require(self.name, "features")

    @torch.no_grad()
    def corrected_after_meta_step(self, batch: kdcore.Batch) -> torch.Tensor:
        """``y^c`` of this batch from the LCN as it is after this iteration's meta update.

        Raises:
            kdcore.KdcoreError: the meta update of this batch has not happened yet.
        """
        if self._meta_done_step != batch.step:
            raise kdcore.KdcoreError(
                f"component '{self.name}': labels after the meta step were asked for before "
                f"the meta step of step {batch.step} (the model '{self.model}' must be trained "
                f"with '{self.name}' taking over its backward)")
        y, _ = self.lcn.correct(self.features(batch), batch.noisy_label)
        return y

    def gold_batch(self, ctx: kdcore.RunContext, batch: kdcore.Batch) -> GoldBatch:
        """This iteration's gold batch (drawn once per training batch, then shared through
        ``batch.store``), from the component's own generator."""
        cached = batch.store.get(self.name, "gold")
        if cached is not None:
            return cached
        data = ctx.data
        index = self.gold.next(ctx.generator)
        rows = index.to(data.gold.y.device)
        x = data.inputs(data.gold, rows)
        if self.params.augment_gold:
            x = ctx.augment(x)  # the component's own generator
        y = data.gold.y[rows]
        if self.params.method == "hmlc_K_mix":
            half = len(index) // 2
            gold = GoldBatch(index, x[:half], y[:half], x[half:], y[half:])
        else:
            gold = GoldBatch(index, x, y, None, None)
        batch.store.put(self.name, "gold", gold)
        batch.store.put(self.name, "gold_index", index)
        return gold

    # -- the component hooks ----------------------------------------------------------------

    def refine(self, ctx: kdcore.RunContext, batch: kdcore.Batch,
               targets: torch.Tensor) -> torch.Tensor:
        features = batch.out(self.model).features.detach()
        y, a = self.lcn.correct(features, batch.noisy_label)
        store = batch.store
        store.put(self.name, "features", features)
        store.put(self.name, "yc", y)
        store.put(self.name, "labels_after_meta_step",
                  functools.partial(self.corrected_after_meta_step, batch))
        # drawn here, before any transfer, so every reader of this batch finds it
        self.gold_batch(ctx, batch)
        if a is not None:
            self._stats["skip_a"] += float(a.detach().sum())
            self._stats["skip_n"] += len(a)
        return y.detach()

    def transfer(self, ctx: kdcore.RunContext, batch: kdcore.Batch) -> torch.Tensor:
        role = self.model
        y = batch.store.require(self.name, "yc")
        logits = batch.out(role).logits
        gold = self.gold_batch(ctx, batch)
        clean_logits = None
        if gold.clean_x is not None:
            clean_logits = batch.forward(role, gold.clean_x).logits
        ctx.ledger.write(f"loss/{self.name}", batch.index,
                         soft_cross_entropy(logits.detach(), y.detach()), kind="value")
        return mlc_training_loss(logits, y, clean_logits, gold.clean_y)

    def backward_roles(self) -> tuple[str, ...]:
        return (self.model,)

    def backward(self, ctx: kdcore.RunContext, batch: kdcore.Batch, role: str,
                 loss: torch.Tensor) -> bool:
        if role != self.model:
            return False
        model = ctx.models[role]
        gold = self.gold_batch(ctx, batch)
        g0 = None
        if self.params.gradient_steps > 1:
            g0 = clean_gradient(model, gold.meta_x, gold.meta_y)
        step = lookahead(model, loss, ctx.optimizers[role], gold.meta_x, gold.meta_y,
                         list(self.lcn.parameters()), g0=g0)
        if self.accumulator.add(step.meta_grads, step.gamma):
            for param, grad in zip(self.lcn.parameters(), self.accumulator.value or [],
                                   strict=True):
                param.grad = None if grad is None else grad.clone()
            self.meta_optimizer.step()
            self.meta_optimizer.zero_grad(set_to_none=True)
            self.accumulator.reset()
            self.meta_steps += 1
        grads = dict(zip(step.names, step.grads, strict=True))
        for name, param in named_trainable(model).items():
            param.grad = grads.get(name)
        self._meta_done_step = batch.step
        batch.store.put(self.name, "virtual", step.virtual)  # w': what the real step must give
        st = self._stats
        st["iters"] += 1
        st["meta_loss"] += step.meta_loss
        if step.gamma is not None:
            st["gamma"] += step.gamma
            st["gammas"] += 1
        return True  # the gradients are in .grad: the engine steps the SGD optimiser

    def on_epoch_end(self, ctx: kdcore.RunContext, metrics: dict[str, float]) -> None:
        st = self._stats
        prefix = f"mlc/{self.name}"
        if st["iters"]:
            metrics[f"{prefix}/meta_loss"] = st["meta_loss"] / st["iters"]
        if st["gammas"]:
            metrics[f"{prefix}/gamma"] = st["gamma"] / st["gammas"]
        if st["skip_n"]:
            metrics[f"{prefix}/skip_a"] = st["skip_a"] / st["skip_n"]
        metrics[f"{prefix}/meta_steps"] = float(self.meta_steps)
        metrics[f"{prefix}/gold_passes"] = float(self.gold.passes)

    # -- checkpoint -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "lcn": {k: v.detach().cpu().clone() for k, v in self.lcn.state_dict().items()},
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "accumulator": self.accumulator.state_dict(),
            "gold": self.gold.state_dict(),
            "meta_steps": self.meta_steps,
            "role": self.model,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # also called when a later stage's component of the same label continues this one
        # (kdcore's carry_state): the saved LCN must fit this stage's main model
        saved = state["lcn"]
        shapes = {k: tuple(v.shape) for k, v in saved.items()}
        fits = shapes == {k: tuple(v.shape) for k, v in self.lcn.state_dict().items()}
        perm = state["gold"]["perm"]
        if not fits or (perm is not None and len(perm) != self.gold.size):
            raise kdcore.RecipeError(
                f"component '{self.name}' continues the state of an earlier '{self.name}' "
                f"(which served '{state.get('role')}'), but its label-correction network or "
                f"gold split does not fit this stage's (serving '{self.model}'); give it "
                f"another name to start a new one")
        self.lcn.load_state_dict(saved)
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        for group in self.meta_optimizer.param_groups:  # this stage's meta_lr
            group["lr"] = self.params.meta_lr
        self.accumulator.load_state_dict(state["accumulator"],
                                         next(self.lcn.parameters()).device)
        self.gold.load_state_dict(state["gold"])
        self.meta_steps = int(state["meta_steps"])
