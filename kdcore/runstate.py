"""The running training's state (:class:`Run`) and the per-component view of it
(:class:`ComponentContext`, an implementation of :class:`kdcore.context.RunContext`)."""

from __future__ import annotations

import contextlib
import functools
import types
import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcore import distributed
from kdcore.context import ModelOutput
from kdcore.errors import RecipeError
from kdcore.history_names import ENGINE_DATA, folder_clash, name_problem
from kdcore.ledger import Ledger
from kdcore.models.base import KDModel
from kdcore.recipe import Recipe, StageConfig
from kdcore.rundata import RunData
from kdcore.tagged_ledger import TaggedLedger


def role_seed(seed: int, role: str) -> int:
    """A seed per role that does not depend on the order the roles are built in."""
    return (seed * 1_000_003 + zlib.crc32(role.encode())) % (2**63)


def component_seed(seed: int, stage_index: int, name: str) -> int:
    """A seed per component placement: its own generator and its ``setup`` draw from it, so
    adding a component to a recipe does not move another one's random numbers."""
    return role_seed(seed, f"{stage_index}/{name}")


class Run:
    """Everything the engine keeps about one running training.

    Components never see this object: they are handed a :class:`ComponentContext`. The engine
    changes the fields; the capability methods are what the contexts forward to.
    """

    def __init__(self, recipe: Recipe, run_dir: Path, device: torch.device,
                 augmentations: list[tuple[Callable[..., torch.Tensor], dict[str, Any]]]):
        self.recipe = recipe
        self.run_dir = run_dir
        self.device = device
        self.data: RunData
        self.models: dict[str, KDModel] = {}
        # each role's parameters its architecture builds frozen (prepare sets it)
        self.fixed_parameters: dict[str, frozenset[str]] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.ledger: Ledger
        self.stage: StageConfig = recipe.stages[0]
        self.stage_index = 0
        self.epoch = 0
        self.step = 0
        self.stage_step = 0
        self.steps_per_epoch = 0
        self.resumed = False
        self.channels_last = False  # image batches in channels-last order (prepare sets it)
        self.generator = torch.Generator().manual_seed(recipe.run.seed + 1)
        self.augmentations = augmentations
        self.cache: dict[Any, Any] = {}
        self.epoch_metrics: dict[str, float] = {}
        self.stepped: set[str] = set()
        self.write_data: Callable[[str, torch.Tensor], None] | None = None
        self.recorded: dict[str, None] = {}  # the names components recorded, in order
        self._history_read = False  # whether ``recorded`` holds those of before a resume
        self._versions: dict[str, int] = defaultdict(int)
        self._feature_cache: dict[tuple[str, str], tuple[int, ModelOutput]] = {}
        self._low_precision = _AUTOCAST_DTYPES.get(recipe.run.precision)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The recipe's ``run.precision`` for model calls (nothing to do in fp32)."""
        if self._low_precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._low_precision)

    def _call(self, model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``model(x)`` in the run's precision; in a distributed run each rank computes its
        share of the rows and every rank gets them all (:mod:`kdcore.distributed`)."""
        if distributed.world().size == 1:
            return model(x) if self._low_precision is None else self._compute(model, x)
        logits, features = distributed.split_call(lambda rows: self._compute(model, rows), x)
        return logits, features

    def _compute(self, model: torch.nn.Module, x: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._low_precision is None:
            return model(x)
        with self.autocast():
            logits, features = model(x)
        # losses and ledger records stay in float32 whatever the models compute in
        return logits.float(), features.float()

    def predict(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``model``'s logits on ``x`` as :meth:`_call` computes them (evaluation)."""
        return self._call(model, x)[0]

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.models)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def trains(self, role: str) -> bool:
        return role in self.stage.train

    def lr(self, role: str) -> float:
        optimizer = self.optimizers.get(role)
        if optimizer is None:
            self.model(role)
            raise KeyError(f"model '{role}' has no optimiser yet: no stage so far trains it")
        return float(optimizer.param_groups[0]["lr"])

    def model(self, role: str) -> torch.nn.Module:
        """Model ``role``; a ``KeyError`` that names the recipe's models when it has none."""
        try:
            return self.models[role]
        except KeyError:
            raise KeyError(f"no model '{role}'; the recipe's models: "
                           f"{', '.join(self.models) or 'none'}") from None

    def model_version(self, role: str) -> int:
        self.model(role)  # not the 0 the counter gives any name
        return self._versions[role]

    def role_epoch(self, role: str) -> int:
        """Epochs ``role`` trained in the stages before this one, plus this stage's epoch
        when it trains ``role``: the epoch count a release script's schedule uses."""
        self.model(role)
        stages = self.recipe.stages[:self.stage_index]
        done = sum(st.epochs for st in stages if role in st.train)
        return done + (self.epoch if role in self.stage.train else 0)

    def bump(self, role: str) -> None:
        """``role``'s weights changed: its cached full-set features are stale."""
        self._versions[role] += 1

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for i, (fn, params) in enumerate(self.augmentations):
            out = fn(x, generator, **params)
            if not (isinstance(out, torch.Tensor) and out.shape == x.shape
                    and out.dtype == x.dtype and out.device == x.device):
                raise augmentation_changed(self.recipe, i, x, out)
            x = out
        return x

    def forward(self, role: str, x: torch.Tensor) -> ModelOutput:
        try:
            model = self.models[role]
        except KeyError:  # free until it happens: this is every batch's model call
            model = self.model(role)
        if role in self.stage.train:
            if torch.is_grad_enabled():
                logits, features = self._call(model, x)
            else:
                # first asked for inside a no_grad block (a selector ranking losses): the
                # cached output must still carry the graph the loss terms need
                with torch.enable_grad():
                    logits, features = self._call(model, x)
        else:
            with torch.no_grad():
                logits, features = self._call(model, x)
        return _model_output((logits, features))

    @torch.no_grad()
    def features(self, role: str, split: str = "train") -> ModelOutput:
        model = self.model(role)
        key = (role, split)
        version = self._versions[role]
        hit = self._feature_cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        was_training = model.training
        model.eval()
        ds = self.data.split(split)
        logits, feats = [], []
        for _, x in self.data.stream(ds, list(self.data.batches(
                ds, self.recipe.data.eval_batch_size))):
            z, f = self._call(model, x)
            logits.append(z)
            feats.append(f)
        model.train(was_training)
        out = ModelOutput(torch.cat(logits) if logits else torch.empty(0, self.num_classes),
                          torch.cat(feats) if feats else torch.empty(0, model.feature_dim))
        self._feature_cache[key] = (version, out)
        return out

    def recorded_names(self) -> dict[str, None]:
        """The names components and plugins recorded in this run, before its resume too
        (read once from the history: a name must not replace a folder of earlier records)."""
        path = self.run_dir / "history.h5"
        if self.resumed and not self._history_read and distributed.is_main() and path.is_file():
            from kdcore.history import History  # read by the process that writes it

            self._history_read = True
            with History(path) as history:
                before = [n for n in history.data_names() if n.split("/")[0] not in ENGINE_DATA]
            self.recorded = {**dict.fromkeys(before), **self.recorded}
        return self.recorded

    def record_data(self, name: str, values: torch.Tensor) -> None:
        if self.write_data is None:
            raise RuntimeError("record_data: this run has no history (not started by the engine)")
        self.write_data(name, values)


def augmentation_changed(recipe: Recipe, index: int, x: torch.Tensor, out: Any) -> RecipeError:
    """Why augmentation ``index`` of ``recipe`` gave ``out`` for ``x`` that the model cannot
    take: the hook returns a batch of ``x``'s shape, dtype and device (a model, a loss or a
    ledger write failed on it, blamed on whatever met it first)."""
    given = (f"{out.dtype} {tuple(out.shape)} on {out.device}" if isinstance(out, torch.Tensor)
             else type(out).__name__)
    return RecipeError(
        f"augmentation '{recipe.data.augment[index].name}' returned {given} for a batch of "
        f"{x.dtype} {tuple(x.shape)} on {x.device}; an augmentation returns a batch of the "
        "same shape, dtype and device", file=recipe.source, key=f"data.augment[{index}].name")


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# ModelOutput((logits, features)) without the named tuple's Python-level __new__: built for
# every model call of every batch
_model_output = functools.partial(tuple.__new__, ModelOutput)


class ComponentContext:
    """One component's :class:`~kdcore.context.RunContext`: the run's facts read through,
    ledger writes tagged with the component's name, and the component's own generator.

    Args:
        run: the run.
        name: the producer name that tags the ledger writes.
        generator: the component's own generator.
        writes: the columns it may write (None: any, for observers).
    """

    def __init__(self, run: Run, name: str, generator: torch.Generator,
                 writes: frozenset[str] | None = None):
        self._run = run
        self.name = name
        self._owner = "plugin" if writes is None else "component"  # for messages
        self.generator = generator
        self.ledger = TaggedLedger(run.ledger, name, writes)
        self.models: Mapping[str, KDModel] = types.MappingProxyType(run.models)
        self.optimizers: Mapping[str, torch.optim.Optimizer] = types.MappingProxyType(
            run.optimizers)

    # facts, read through so they follow the run
    recipe = property(lambda self: self._run.recipe)
    run_dir = property(lambda self: self._run.run_dir)
    device = property(lambda self: self._run.device)
    roles = property(lambda self: self._run.roles)
    num_classes = property(lambda self: self._run.num_classes)
    stage = property(lambda self: self._run.stage)
    stage_index = property(lambda self: self._run.stage_index)
    epoch = property(lambda self: self._run.epoch)
    step = property(lambda self: self._run.step)
    stage_step = property(lambda self: self._run.stage_step)
    steps_per_epoch = property(lambda self: self._run.steps_per_epoch)
    resumed = property(lambda self: self._run.resumed)
    data = property(lambda self: self._run.data)
    cache = property(lambda self: self._run.cache)

    def trains(self, role: str) -> bool:
        return self._run.trains(role)

    def lr(self, role: str) -> float:
        return self._run.lr(role)

    def model_version(self, role: str) -> int:
        return self._run.model_version(role)

    def role_epoch(self, role: str) -> int:
        return self._run.role_epoch(role)

    def forward(self, role: str, x: torch.Tensor) -> ModelOutput:
        return self._run.forward(role, x)

    def features(self, role: str, split: str = "train") -> ModelOutput:
        return self._run.features(role, split)

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        return self._run.augment(x, self.generator if generator is None else generator)

    def log_metric(self, name: str, value: float) -> None:
        self._run.epoch_metrics[name] = float(value)

    def record_data(self, name: str, values: torch.Tensor) -> None:
        """The run's ``record_data``, refusing in one line naming the component what would
        replace the engine's arrays (the labels resume and ``inspect`` read), or a folder of
        another record, or could not be stored (h5py's words, exit 1)."""
        from kdcore.failures import RunFailed

        problem = name_problem(name)
        other = None if problem else folder_clash(name, self._run.recorded_names())
        if problem:
            problem = f"record_data's name {problem}"
        elif name.split("/")[0] in ENGINE_DATA:
            problem = (f"record_data's name '{name}' is the engine's ({', '.join(ENGINE_DATA)}); "
                       "record under a name of your own")
        elif other is not None:
            problem = (f"record_data's names '{other}' and '{name}' cannot both be kept: a name "
                       "with '/' is a folder of arrays")
        elif not isinstance(values, torch.Tensor | np.ndarray):
            problem = (f"record_data takes a tensor or a numpy array, not "
                       f"{type(values).__name__} (for '{name}')")
        if problem:
            raise RunFailed(f"{self._owner} '{self.name}': {problem}")
        self._run.recorded[name] = None
        self._run.record_data(name, values)

    def mark_stepped(self, role: str) -> None:
        if not self._run.trains(role):  # the engine would have stepped nothing: a slip
            self._run.model(role)
            raise ValueError(f"mark_stepped('{role}'): this stage does not train model "
                             f"'{role}'")
        self._run.stepped.add(role)
