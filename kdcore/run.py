"""The running training as components and observers see it (:class:`Run`)."""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdcore.component import Component, ModelOutput
from kdcore.errors import RecipeError
from kdcore.ledger import Ledger
from kdcore.models.base import KDModel
from kdcore.plugins import PluginHost
from kdcore.recipe import Recipe, StageConfig
from kdcore.rundata import RunData


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RecipeError(f"got {name!r}, expected auto, cpu, cuda or cuda:N",
                          key="run.device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError("CUDA was asked for but no GPU is available", key="run.device")
    return device


def role_seed(seed: int, role: str) -> int:
    """A seed per role that does not depend on the order the roles are built in."""
    return (seed * 1_000_003 + zlib.crc32(role.encode())) % (2**63)


class Run:
    """A running training: what components and observers may use.

    Attributes:
        recipe: the resolved recipe.
        run_dir: where the history, checkpoints and model weights go.
        device: the training device.
        data: the splits and labels (:class:`kdcore.rundata.RunData`).
        models: every model role of the recipe.
        optimizers: one optimiser per role, created the first time a stage trains it and kept
            across stages (its momentum and the learning-rate schedule span the role's training).
        ledger: the per-sample columns, indexed by training-sample index.
        stage: the current stage's config; ``stage_index`` its position.
        epoch: the epoch within the stage; ``step`` counts optimiser steps over the run,
            ``stage_step`` within the stage; ``steps_per_epoch`` is ``ceil(N / batch_size)``
            (the last, partial batch is never dropped).
        generator: a CPU random generator for components (checkpointed with the run).
        resumed: whether this process continued a checkpoint.
        cache: a dict for expensive results that several components (or stages) may share,
            such as a kNN graph; key entries by what they depend on (``run.model_version``).
            Not checkpointed: an entry must be recomputable.
    """

    def __init__(self, recipe: Recipe, run_dir: Path, host: PluginHost, device: torch.device):
        self.recipe = recipe
        self.run_dir = run_dir
        self.host = host
        self.device = device
        self.data: RunData
        self.models: dict[str, KDModel] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.ledger: Ledger
        self.stage: StageConfig | None = None
        self.stage_index = 0
        self.epoch = 0
        self.step = 0
        self.stage_step = 0
        self.steps_per_epoch = 0
        self.resumed = False
        self._stepped: set[str] = set()
        self.components: list[Component] = []
        self.generator = torch.Generator().manual_seed(recipe.run.seed + 1)
        self._versions: dict[str, int] = defaultdict(int)
        self._feature_cache: dict[tuple[str, str], tuple[int, ModelOutput]] = {}
        self.augmentations: list[tuple[Any, dict[str, Any]]] = []
        self.cache: dict[Any, Any] = {}
        self._epoch_metrics: dict[str, float] = {}
        # set by the engine: writes one array into the history's /data group
        self._write_data: Callable[[str, torch.Tensor], None] | None = None

    # -- facts ------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def trains(self, role: str) -> bool:
        """Whether the current stage trains model ``role``."""
        return self.stage is not None and role in self.stage.train

    def lr(self, role: str) -> float:
        """The current learning rate of ``role`` (its first parameter group)."""
        return float(self.optimizers[role].param_groups[0]["lr"])

    def model_version(self, role: str) -> int:
        """Counts the optimiser steps taken on ``role``: a cache key for its outputs."""
        return self._versions[role]

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """Apply the recipe's ``data.augment`` chain to other inputs (a gold batch, say).

        Args:
            x: a batch of model inputs.
            generator: the random source (default: ``run.generator``, checkpointed).
        """
        gen = self.generator if generator is None else generator
        for fn, params in self.augmentations:
            x = fn(x, gen, **params)
        return x

    def mark_stepped(self, role: str) -> None:
        """Say that a component stepped ``role``'s optimiser itself in this batch (from its
        ``backward`` hook, as an in-turn update order does); the engine then skips that step."""
        self._stepped.add(role)

    def record_data(self, name: str, values: torch.Tensor) -> None:
        """Store ``values`` once in the history's ``/data`` group, beside ``noisy_label`` and
        ``clean_label`` (``History.data(name)`` reads it back), for what does not change from
        epoch to epoch: a per-sample status, a generator's bookkeeping.

        Call it from ``kdcore_run_start``, ``setup`` or ``on_stage_start``; a second call with
        the same name replaces the array (so a resumed run may call it again). Per-sample
        values follow the ledger's rows (the training-sample index).
        """
        if self._write_data is None:
            raise RuntimeError("record_data: this run has no history (not started by the engine)")
        self._write_data(name, values)

    def log_metric(self, name: str, value: float) -> None:
        """Record a number for this epoch's history row (last value wins)."""
        self._epoch_metrics[name] = float(value)

    # -- model calls ------------------------------------------------------------------------

    def forward(self, role: str, x: torch.Tensor) -> ModelOutput:
        """Run ``role`` on ``x``: with gradients if the stage trains it, else without."""
        model = self.models[role]
        if self.trains(role):
            # even when first asked for inside a no_grad block (a selector ranking losses),
            # the cached output must carry the graph the loss terms need
            with torch.enable_grad():
                logits, features = model(x)
        else:
            with torch.no_grad():
                logits, features = model(x)
        return ModelOutput(logits, features)

    @torch.no_grad()
    def features(self, role: str, split: str = "train") -> ModelOutput:
        """Logits ``(N, C)`` and features ``(N, d)`` of ``role`` over a whole split.

        Rows follow the split's sample index (the ledger's rows for ``train``); inputs are not
        augmented; the model runs in eval mode. The result is cached until the model takes
        another optimiser step, so components that need the same pass share one.
        """
        key = (role, split)
        version = self._versions[role]
        hit = self._feature_cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        model = self.models[role]
        was_training = model.training
        model.eval()
        ds = self.data.split(split)
        logits, feats = [], []
        for index in self.data.batches(ds, self.recipe.data.eval_batch_size):
            z, f = model(self.data.inputs(ds, index))
            logits.append(z)
            feats.append(f)
        model.train(was_training)
        out = ModelOutput(torch.cat(logits) if logits else torch.empty(0, self.num_classes),
                          torch.cat(feats) if feats else torch.empty(0, model.feature_dim))
        self._feature_cache[key] = (version, out)
        return out

    def _bump(self, role: str) -> None:
        self._versions[role] += 1
