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

import zlib
from typing import Any, Literal

import attrs
import torch

import kdcore
from kdcore.losses import soft_cross_entropy
from kdcore.meta import named_trainable
from kdcore.validators import non_negative, positive
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
        meta_lr: the learning rate of the LCN's Adam (AMSGrad, weight decay 0, eps 1e-8).
        cls_dim: the label-embedding size e.
        hidden: the LCN's hidden width (128 in MLC).
        skip: the skip-link LCN: ``y = (1 - a) softmax + a onehot(noisy)``.
        gradient_steps: K, the meta step is taken every K iterations with the discounted sum of
            the meta-gradients since the last one (1: every iteration, no discount).
        gold_batch_size: rows per gold batch (0: the recipe's ``data.batch_size``, as MLC).
        augment_gold: apply the recipe's ``data.augment`` to the gold batches too (MLC's
            training transform augments gold and noisy images alike).
    """

    method: Literal["hmlc_K_mix", "hmlc_K"] = "hmlc_K_mix"
    meta_lr: float = attrs.field(default=3e-4, validator=positive)
    cls_dim: int = attrs.field(default=128, validator=positive)
    hidden: int = attrs.field(default=128, validator=positive)
    skip: bool = False
    gradient_steps: int = attrs.field(default=1, validator=positive)
    gold_batch_size: int = attrs.field(default=0, validator=non_negative)
    augment_gold: bool = True


@attrs.frozen
class GoldBatch:
    """One gold batch, split: G for the meta loss, C (or None) for the main model's loss."""

    index: torch.Tensor
    meta_x: torch.Tensor
    meta_y: torch.Tensor
    clean_x: torch.Tensor | None
    clean_y: torch.Tensor | None


def component_seed(seed: int, name: str) -> int:
    """A seed for a component's own initialisation, independent of what else the run builds."""
    return (seed * 1_000_003 + zlib.crc32(name.encode()) + 7) % (2**63)


class MLC(kdcore.Component):
    """MLC on the model it serves: LCN-corrected labels, look-ahead meta-gradient, real step."""

    Params = MLCParams
    description = "MLC meta label correction (label-correction network + look-ahead meta step)"

    # -- lifecycle --------------------------------------------------------------------------

    def setup(self, run: kdcore.Run) -> None:
        self.run = run
        role = self.model
        p = self.params
        if role not in run.models:
            raise kdcore.RecipeError(f"component '{self.name}': no model role '{role}'")
        if not run.trains(role):
            raise kdcore.RecipeError(
                f"component '{self.name}' serves '{role}', which stage '{run.stage.name}' does "
                f"not train; MLC trains its main model (list it in the stage's train)")
        if not isinstance(run.optimizers.get(role), torch.optim.SGD):
            raise kdcore.RecipeError(
                f"component '{self.name}': the look-ahead mirrors SGD only; set "
                f"models.{role}.optimizer.name = \"sgd\"")
        gold = len(run.data.gold)
        if gold == 0:
            raise kdcore.RecipeError(
                f"component '{self.name}' needs a clean gold split: set data.gold_per_class "
                f"(e.g. 10 on digits, 100 on Fashion-MNIST)")
        size = p.gold_batch_size or run.recipe.data.batch_size
        if p.method == "hmlc_K_mix" and size < 2:
            raise kdcore.RecipeError(f"component '{self.name}': hmlc_K_mix splits the gold "
                                     f"batch in two and needs gold_batch_size >= 2")
        model = run.models[role]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(component_seed(run.recipe.run.seed, self.name))
            self.lcn = LabelCorrectionNet(model.feature_dim, run.num_classes, p.cls_dim,
                                          p.hidden, p.skip)
        self.lcn.to(run.device)
        self.meta_optimizer = torch.optim.Adam(self.lcn.parameters(), lr=p.meta_lr,
                                               weight_decay=0.0, eps=1e-8, amsgrad=True)
        self.gold = GoldCycler(gold, size)
        self.accumulator = MetaAccumulator(p.gradient_steps)
        self.meta_steps = 0
        self._meta_done_step = -1
        self._reset_stats()

    def on_epoch_start(self, run: kdcore.Run, epoch: int) -> None:
        self._reset_stats()

    def _reset_stats(self) -> None:
        self._stats: dict[str, float] = {"iters": 0, "meta_loss": 0.0, "gamma": 0.0,
                                         "gammas": 0, "skip_a": 0.0, "skip_n": 0}

    # -- helpers other components use --------------------------------------------------------

    def _key(self, what: str) -> str:
        return f"{self.name}/{what}"

    def corrected(self, batch: kdcore.Batch) -> torch.Tensor:
        """This batch's corrected labels ``y^c`` (detached), as ``refine`` computed them."""
        return batch.scratch[self._key("yc")].detach()

    def features(self, batch: kdcore.Batch) -> torch.Tensor:
        """The detached main-model features of this batch that the LCN read."""
        return batch.scratch[self._key("features")]

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

    def gold_batch(self, batch: kdcore.Batch) -> GoldBatch:
        """This iteration's gold batch (drawn once per training batch, then shared)."""
        key = self._key("gold")
        cached = batch.scratch.get(key)
        if cached is not None:
            return cached
        run = self.run
        data = run.data
        index = self.gold.next(run.generator)
        rows = index.to(data.gold.y.device)
        x = data.inputs(data.gold, rows)
        if self.params.augment_gold:
            x = run.augment(x, run.generator)
        y = data.gold.y[rows]
        if self.params.method == "hmlc_K_mix":
            half = len(index) // 2
            gold = GoldBatch(index, x[:half], y[:half], x[half:], y[half:])
        else:
            gold = GoldBatch(index, x, y, None, None)
        batch.scratch[key] = gold
        batch.scratch[self._key("gold_index")] = index
        return gold

    # -- the component hooks ----------------------------------------------------------------

    def refine(self, batch: kdcore.Batch, targets: torch.Tensor) -> torch.Tensor:
        features = batch.out(self.model).features.detach()
        y, a = self.lcn.correct(features, batch.noisy_label)
        batch.scratch[self._key("features")] = features
        batch.scratch[self._key("yc")] = y
        if a is not None:
            self._stats["skip_a"] += float(a.detach().sum())
            self._stats["skip_n"] += len(a)
        return y.detach()

    def transfer(self, batch: kdcore.Batch) -> torch.Tensor:
        role = self.model
        y = batch.scratch[self._key("yc")]
        logits = batch.out(role).logits
        gold = self.gold_batch(batch)
        clean_logits = None
        if gold.clean_x is not None:
            clean_logits = batch.forward(role, gold.clean_x).logits
        self.run.ledger.write(f"loss/{self.name}", batch.index,
                              soft_cross_entropy(logits.detach(), y.detach()),
                              producer=self.name, kind="value")
        return mlc_training_loss(logits, y, clean_logits, gold.clean_y)

    def backward(self, batch: kdcore.Batch, role: str, loss: torch.Tensor) -> bool:
        if role != self.model:
            return False
        run = self.run
        model = run.models[role]
        gold = self.gold_batch(batch)
        g0 = None
        if self.params.gradient_steps > 1:
            g0 = clean_gradient(model, gold.meta_x, gold.meta_y)
        step = lookahead(model, loss, run.optimizers[role], gold.meta_x, gold.meta_y,
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
        batch.scratch[self._key("virtual")] = step.virtual  # w': what the real step must give
        st = self._stats
        st["iters"] += 1
        st["meta_loss"] += step.meta_loss
        if step.gamma is not None:
            st["gamma"] += step.gamma
            st["gammas"] += 1
        return True

    def on_epoch_end(self, run: kdcore.Run, epoch: int, metrics: dict[str, float]) -> None:
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
        self.accumulator.load_state_dict(state["accumulator"], self.run.device)
        self.gold.load_state_dict(state["gold"])
        self.meta_steps = int(state["meta_steps"])
